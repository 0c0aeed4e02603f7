//! Every metric the worker exports: its name, help, unit and buckets, and
//! the one function that records it. Recorded through the `metrics` facade,
//! which does nothing until a recorder is installed ([`install`], when the
//! operations listener is on), and rendered in Prometheus' text format by
//! `metrics-exporter-prometheus` at `/metrics`.
//!
//! Labels have bounded values only: outcomes, error kinds, event types and
//! payload versions are fixed sets; no endpoint id, URL or clinic (one
//! series per endpoint would grow with the customers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use uuid::Uuid;

use crate::decision::Outcome;
use crate::payload::EVENT_TYPES;

pub const ATTEMPTS: &str = "clinic_webhooks_attempts_total";
pub const ATTEMPT_DURATION: &str = "clinic_webhooks_attempt_duration_seconds";
pub const EVENT_TO_SUCCESS: &str = "clinic_webhooks_event_to_success_seconds";
pub const DELIVERIES: &str = "clinic_webhooks_deliveries";
pub const OLDEST_DUE_AGE: &str = "clinic_webhooks_oldest_due_delivery_age_seconds";
pub const ENDPOINTS: &str = "clinic_webhooks_endpoints";
pub const CLAIMS: &str = "clinic_webhooks_claims_total";
pub const CLAIM_DURATION: &str = "clinic_webhooks_claim_duration_seconds";
pub const CLAIM_BATCH: &str = "clinic_webhooks_claim_batch_size";
pub const LOG_WRITES: &str = "clinic_webhooks_log_writes_total";
pub const LOG_WRITE_DURATION: &str = "clinic_webhooks_log_write_duration_seconds";
pub const LOG_WRITE_BATCH: &str = "clinic_webhooks_log_write_batch_size";
pub const POOL_CONNECTIONS: &str = "clinic_webhooks_db_pool_connections";

/// Seconds: from a millisecond to the whole request timeout and beyond.
const SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Event to success spans retries too: up to hours.
const LATENCY: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    7200.0,
];
const BATCH: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Whether a recorder is installed: until then, recording skips building
/// labels (a call's event type and version) for nobody.
static ENABLED: AtomicBool = AtomicBool::new(false);

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the Prometheus recorder for this process and describes every
/// metric; returns the handle that renders them.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in [
        (ATTEMPT_DURATION, &SECONDS[..]),
        (CLAIM_DURATION, &SECONDS[..]),
        (LOG_WRITE_DURATION, &SECONDS[..]),
        (EVENT_TO_SUCCESS, &LATENCY[..]),
        (CLAIM_BATCH, &BATCH[..]),
        (LOG_WRITE_BATCH, &BATCH[..]),
    ] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)?;
    }
    let handle = builder.install_recorder()?;
    describe();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(handle)
}

fn describe() {
    describe_counter!(
        ATTEMPTS,
        "HTTP calls made by this process, counted once logged, by outcome, error kind, event type and payload version"
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "Duration of each HTTP call, connect to the end of the response body"
    );
    describe_histogram!(
        EVENT_TO_SUCCESS,
        Unit::Seconds,
        "From the event's row being written in the application's transaction to the 2xx that delivered it, retries included"
    );
    describe_gauge!(
        DELIVERIES,
        "Deliveries in the queue by state (pending, due, delivering), sampled every few seconds"
    );
    describe_gauge!(
        OLDEST_DUE_AGE,
        Unit::Seconds,
        "How long the oldest due delivery has been due (0 when none is)"
    );
    describe_gauge!(
        ENDPOINTS,
        "Endpoints by status: enabled (and not failing), failing (enabled, failing since a time), disabled"
    );
    describe_counter!(CLAIMS, "Claim statements run, by result (ok, error)");
    describe_histogram!(
        CLAIM_DURATION,
        Unit::Seconds,
        "Duration of each claim statement"
    );
    describe_histogram!(CLAIM_BATCH, "Deliveries each claim took");
    describe_counter!(
        LOG_WRITES,
        "Log writes (batches of attempt results), by result (ok, error)"
    );
    describe_histogram!(
        LOG_WRITE_DURATION,
        Unit::Seconds,
        "Duration of each log write, commit included"
    );
    describe_histogram!(LOG_WRITE_BATCH, "Attempt results in each log write");
    describe_gauge!(
        POOL_CONNECTIONS,
        "Database connections of the worker's pools, by pool (main, claims) and state (idle, in_use)"
    );
}

/// One call, its labels resolved when it is made (no allocation), recorded
/// once it is logged: `Attempt::new(…)` then `.record()`.
pub struct Attempt {
    outcome: Outcome,
    error_kind: &'static str,
    event_type: &'static str,
    version: &'static str,
    duration: Duration,
    event_id: Uuid,
}

impl Attempt {
    pub fn new(
        outcome: Outcome,
        error_kind: Option<&'static str>,
        event_type: &str,
        version: &str,
        duration: Duration,
        event_id: Uuid,
    ) -> Self {
        Self {
            outcome,
            error_kind: error_kind.unwrap_or(""),
            event_type: known(event_type, &EVENT_TYPES),
            version: known(version, &VERSIONS),
            duration,
            event_id,
        }
    }

    /// Counts the call and times it; for a 2xx, also the time since its
    /// event's row was written.
    pub fn record(self) {
        if !enabled() {
            return;
        }
        counter!(
            ATTEMPTS,
            "outcome" => self.outcome.as_str(),
            "error_kind" => self.error_kind,
            "event_type" => self.event_type,
            "version" => self.version
        )
        .increment(1);
        histogram!(ATTEMPT_DURATION).record(self.duration.as_secs_f64());
        if self.outcome == Outcome::Succeeded
            && let Some(written) = written_at(self.event_id)
        {
            let waited = SystemTime::now()
                .duration_since(written)
                .unwrap_or_default();
            histogram!(EVENT_TO_SUCCESS).record(waited.as_secs_f64());
        }
    }
}

/// The label values of `version`: the schema allows these only (the
/// endpoints' version check); those of `event_type` are EVENT_TYPES.
const VERSIONS: [&str; 2] = ["1.0", "2.0"];

/// `value` as one of `known` (a label without an allocation per call), or
/// "other": a label never takes an unbounded value.
fn known(value: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .unwrap_or("other")
}

/// When an event's row was written: the time its version 7 id carries (to
/// the millisecond). None for an id of another version.
fn written_at(event_id: Uuid) -> Option<SystemTime> {
    if event_id.get_version_num() != 7 {
        return None;
    }
    let (seconds, nanos) = event_id.get_timestamp()?.to_unix();
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// A batch statement (a claim, a log write): counted by result, timed, and
/// its rows when it succeeded.
fn batch(
    total: &'static str,
    duration_of: &'static str,
    rows_of: &'static str,
    ok: bool,
    duration: Duration,
    rows: usize,
) {
    if !enabled() {
        return;
    }
    counter!(total, "result" => if ok { "ok" } else { "error" }).increment(1);
    histogram!(duration_of).record(duration.as_secs_f64());
    if ok {
        histogram!(rows_of).record(rows as f64);
    }
}

pub fn claim(ok: bool, duration: Duration, rows: usize) {
    batch(CLAIMS, CLAIM_DURATION, CLAIM_BATCH, ok, duration, rows);
}

pub fn log_write(ok: bool, duration: Duration, rows: usize) {
    batch(
        LOG_WRITES,
        LOG_WRITE_DURATION,
        LOG_WRITE_BATCH,
        ok,
        duration,
        rows,
    );
}

/// What one sample of the queue found (`sql/worker/queue_gauges.sql`).
#[derive(Debug, Clone, Copy)]
pub struct QueueSample {
    pub pending: i64,
    pub due: i64,
    pub delivering: i64,
    pub oldest_due_age_s: f64,
    pub endpoints_enabled: i64,
    pub endpoints_failing: i64,
    pub endpoints_disabled: i64,
}

pub fn queue(sample: &QueueSample) {
    gauge!(DELIVERIES, "state" => "pending").set(sample.pending as f64);
    gauge!(DELIVERIES, "state" => "due").set(sample.due as f64);
    gauge!(DELIVERIES, "state" => "delivering").set(sample.delivering as f64);
    gauge!(OLDEST_DUE_AGE).set(sample.oldest_due_age_s);
    gauge!(ENDPOINTS, "status" => "enabled").set(sample.endpoints_enabled as f64);
    gauge!(ENDPOINTS, "status" => "failing").set(sample.endpoints_failing as f64);
    gauge!(ENDPOINTS, "status" => "disabled").set(sample.endpoints_disabled as f64);
}

pub fn pool(name: &'static str, size: u32, idle: usize) {
    let idle = idle as f64;
    gauge!(POOL_CONNECTIONS, "pool" => name, "state" => "idle").set(idle);
    gauge!(POOL_CONNECTIONS, "pool" => name, "state" => "in_use").set(f64::from(size) - idle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v7_id_gives_its_time_and_another_id_none() {
        let id: Uuid = "0193a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b"
            .parse()
            .expect("uuid");
        assert_eq!(
            written_at(id),
            Some(UNIX_EPOCH + Duration::from_millis(0x0193_a1b2_c3d4))
        );
        assert_eq!(written_at(Uuid::new_v4()), None);
    }
}
