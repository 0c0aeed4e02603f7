//! Partition maintenance and retention of the history (the attempt log,
//! finished deliveries, events): every
//! `retention.interval` each worker calls `webhooks.run_maintenance`, which
//! does the work in exactly one of them at a time (an advisory lock; the
//! others return at once) and reports what it created and dropped.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;

/// Runs maintenance once; returns the database's report.
pub async fn run_once(pool: &PgPool, retention: &RetentionSettings) -> Result<Value, sqlx::Error> {
    let ahead = i32::try_from(retention.ahead).unwrap_or(i32::MAX);
    sqlx::query_file_scalar!(
        "sql/worker/run_maintenance.sql",
        retention.keep.as_secs_f64(),
        retention.partition.as_secs_f64(),
        ahead
    )
    .fetch_one(pool)
    .await
}

/// Logs a report: what was dropped and created at info, rows in the default
/// partitions for want of a partition as a warning, nothing when there was
/// nothing to do.
pub fn log_report(report: &Value) {
    if report["ran"] != Value::Bool(true) {
        tracing::debug!(%report, "maintenance ran elsewhere");
        return;
    }
    let dropped = report["dropped"].as_array().map_or(0, Vec::len);
    let created = report["created"].as_array().map_or(0, Vec::len);
    if dropped > 0 || created > 0 {
        tracing::info!(
            dropped = %report["dropped"],
            dropped_rows_estimate = %report["dropped_rows_estimate"],
            created = %report["created"],
            events_kept_for_live_deliveries = %report["events_kept_for_live_deliveries"],
            keep = %report["keep"],
            "history maintenance: partitions past retention dropped, partitions ahead created"
        );
    }
    let stray = &report["rows_in_default"];
    let strays: i64 = ["attempts", "deliveries", "events"]
        .iter()
        .filter_map(|history| stray[history].as_i64())
        .sum();
    if strays > 0 {
        tracing::warn!(
            rows = %stray,
            "rows are in the default partitions (webhooks.*_default): no partition covered \
             their time; maintenance moves them into their partition once it exists"
        );
    }
}

/// After a failed run (a lock not granted within the run's `lock_timeout`,
/// the database away), the next try comes this soon rather than a whole
/// `retention.interval` later.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Runs maintenance at once and then every `retention.interval` until `stop`.
pub async fn schedule(pool: PgPool, retention: RetentionSettings, stop: CancellationToken) {
    loop {
        let next = match run_once(&pool, &retention).await {
            Ok(report) => {
                log_report(&report);
                retention.interval
            }
            // The database's own outage logging covers a lost connection;
            // this names what did not get done.
            Err(err) => {
                let retry_in = RETRY_AFTER_FAILURE.min(retention.interval);
                tracing::warn!(error = %err, ?retry_in, "history maintenance failed");
                retry_in
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(next) => {}
        }
    }
}
