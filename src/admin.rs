//! Operator commands over SQL: `status` and `redeliver`. The statements are
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

#[derive(Debug)]
pub struct EndpointStatus {
    pub endpoint_id: i64,
    pub clinic_id: i64,
    pub version: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub pending: i64,
    pub due_now: i64,
    pub delivering: i64,
    pub failed: i64,
    pub oldest_pending_s: Option<i64>,
}

pub async fn status(pool: &PgPool) -> Result<Vec<EndpointStatus>> {
    Ok(sqlx::query_file_as!(EndpointStatus, "sql/admin/status.sql")
        .fetch_all(pool)
        .await?)
}

/// Renders `status` as a table for a terminal.
pub fn format_status(rows: &[EndpointStatus]) -> String {
    let mut out = format!(
        "{:>8} {:>7} {:>4} {:>8} {:>8} {:>8} {:>10} {:>8} {:>10}  {}\n",
        "endpoint",
        "clinic",
        "ver",
        "enabled",
        "pending",
        "due now",
        "delivering",
        "failed",
        "oldest(s)",
        "disabled reason"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>8} {:>7} {:>4} {:>8} {:>8} {:>8} {:>10} {:>8} {:>10}  {}\n",
            r.endpoint_id,
            r.clinic_id,
            r.version,
            r.enabled,
            r.pending,
            r.due_now,
            r.delivering,
            r.failed,
            r.oldest_pending_s
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            r.disabled_reason.as_deref().unwrap_or("")
        ));
    }
    out
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
