//! Operator commands over SQL: `status`, `redeliver` and `send-test`. The statements are
//! the files under `sql/admin`, the same ones a DBA runs with psql, checked
//! against the schema at compile time.

use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The database refused the request with a message for the operator:
    /// no such delivery, event or endpoint, an endpoint of another clinic,
    /// a time that does not parse.
    #[error("{0}")]
    Refused(String),
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
}

pub type Result<T, E = AdminError> = std::result::Result<T, E>;

impl From<sqlx::Error> for AdminError {
    fn from(err: sqlx::Error) -> Self {
        let refused = err.as_database_error().and_then(|db| {
            let code = db.code()?;
            // no_data_found (raised by the redelivery functions),
            // check_violation, and data exceptions (class 22: a bad time).
            (code == "P0002" || code == "23514" || code.starts_with("22"))
                .then(|| db.message().to_owned())
        });
        match refused {
            Some(message) => Self::Refused(message),
            None => Self::Database(err),
        }
    }
}

/// One endpoint's line of `status` (`sql/admin/status.sql`).
#[derive(Debug, serde::Serialize)]
pub struct EndpointStatus {
    pub endpoint_id: i64,
    pub clinic_id: i64,
    pub url: String,
    pub version: String,
    pub enabled: bool,
    pub pending: i64,
    pub due: i64,
    pub in_flight: i64,
    pub failed: i64,
    /// Seconds the oldest due delivery has been due.
    pub oldest_due_s: Option<i64>,
    /// RFC 3339, UTC.
    pub failing_since: Option<String>,
    pub disabled_reason: Option<String>,
    pub blocked_lanes: i64,
}

pub async fn status(pool: &PgPool) -> Result<Vec<EndpointStatus>> {
    Ok(sqlx::query_file_as!(EndpointStatus, "sql/admin/status.sql")
        .fetch_all(pool)
        .await?)
}

/// `status` as one JSON document, for scripts and monitoring.
pub fn status_json(rows: &[EndpointStatus]) -> serde_json::Value {
    serde_json::json!({ "endpoints": rows })
}

/// Renders `status` as a table for a terminal.
pub fn format_status(rows: &[EndpointStatus]) -> String {
    let mut out = format!(
        "{:>8} {:>7} {:>4} {:>7} {:>8} {:>6} {:>9} {:>7} {:>10} {:>7}  {:<20}  {}\n",
        "endpoint",
        "clinic",
        "ver",
        "enabled",
        "pending",
        "due",
        "in flight",
        "failed",
        "oldest due",
        "blocked",
        "failing since",
        "disabled reason"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>8} {:>7} {:>4} {:>7} {:>8} {:>6} {:>9} {:>7} {:>10} {:>7}  {:<20}  {}\n",
            r.endpoint_id,
            r.clinic_id,
            r.version,
            r.enabled,
            r.pending,
            r.due,
            r.in_flight,
            r.failed,
            r.oldest_due_s
                .map_or_else(|| "-".to_owned(), |s| format!("{s}s")),
            r.blocked_lanes,
            r.failing_since.as_deref().unwrap_or("-"),
            r.disabled_reason.as_deref().unwrap_or("")
        ));
    }
    out
}

/// Sends endpoint `endpoint` a test event of `event_type` (its first
/// subscribed type when `None`); returns the event id (the webhook-id).
pub async fn send_test(pool: &PgPool, endpoint: i64, event_type: Option<&str>) -> Result<Uuid> {
    Ok(
        sqlx::query_file_scalar!("sql/admin/send_test.sql", endpoint, event_type)
            .fetch_one(pool)
            .await?,
    )
}

/// What to send again.
#[derive(Debug, Clone)]
pub enum Redelivery {
    Delivery(i64),
    Event {
        id: Uuid,
        endpoint: Option<i64>,
    },
    /// Everything that failed for an endpoint since a time, given as a
    /// PostgreSQL timestamptz literal (`2026-11-27 08:00+00`, `yesterday`).
    Recover {
        endpoint: i64,
        since: String,
    },
}

/// Queues the redelivery and says what was queued.
pub async fn redeliver(pool: &PgPool, what: &Redelivery) -> Result<String> {
    Ok(match what {
        Redelivery::Delivery(id) => {
            let queued = sqlx::query_file_scalar!("sql/admin/redeliver_delivery.sql", id)
                .fetch_one(pool)
                .await?;
            match queued {
                Some(id) => format!("delivery {id} queued again"),
                None => format!("delivery {id} is in flight right now; left alone"),
            }
        }
        Redelivery::Event { id, endpoint } => {
            let queued: Vec<i64> =
                sqlx::query_file_scalar!("sql/admin/redeliver_event.sql", id, *endpoint)
                    .fetch_all(pool)
                    .await?;
            format!(
                "event {id}: {} deliveries queued {:?}",
                queued.len(),
                queued
            )
        }
        Redelivery::Recover { endpoint, since } => {
            let n = sqlx::query_file_scalar!("sql/admin/recover_endpoint.sql", endpoint, since)
                .fetch_one(pool)
                .await?;
            format!("endpoint {endpoint}: {n} failed deliveries since {since} queued again")
        }
    })
}
