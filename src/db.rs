//! Connections and migrations. Our migration bookkeeping lives in our own
//! schema (`webhooks._sqlx_migrations`), so it never touches the app's tables.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL is not valid: {0}")]
    Url(#[source] sqlx::Error),
    #[error("connecting to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error(
        "the database has migration {0} applied, which this build does not have: it was \
         migrated by a newer clinic-webhooks (run that one), or by a pre-release build whose \
         migrations were since squashed (start from a new database)"
    )]
    UnknownMigration(i64),
    #[error("applying migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// The embedded migrations, with bookkeeping in schema `webhooks`.
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.create_schema("webhooks");
    migrator.dangerous_set_table_name("webhooks._sqlx_migrations");
    migrator
}

/// The newest migration this binary carries.
pub fn latest_migration() -> i64 {
    migrator()
        .migrations
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// Where a URL points, without its password, for messages.
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options: PgConnectOptions = url.parse().map_err(DbError::Url)?;
    open(options.application_name("clinic-webhooks"), max_connections).await
}

/// A small pool for claims only, on the same server as `main`, whose
/// sessions use `synchronous_commit = off`: a claim lost in a server crash is
/// harmless (the delivery is still pending, or its lease expires and it is
/// sent again), so claims need not wait for the WAL flush. Everything that
/// must be durable (the attempt log, delivery outcomes) uses the main pool.
/// Connects lazily; errors surface, and are retried, where it is used.
pub fn claim_pool(main: &PgPool) -> PgPool {
    let options = (*main.connect_options())
        .clone()
        .application_name("clinic-webhooks-claimer")
        .options([("synchronous_commit", "off")]);
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options)
}

/// How long opening the first connection may take before `connect` gives up.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn open(options: PgConnectOptions, max_connections: u32) -> Result<PgPool> {
    let target = describe(&options);
    // One plain connection first: the pool would retry a refused connection
    // until its timeout and then report only that it timed out, where the
    // operator needs the cause (refused, unknown host, bad password) now.
    let first = tokio::time::timeout(FIRST_CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| DbError::Connect {
            target: target.clone(),
            source: sqlx::Error::PoolTimedOut,
        })?
        .map_err(|source| DbError::Connect {
            target: target.clone(),
            source,
        })?;
    let _ = first.close().await;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { target, source })
}

pub async fn migrate(pool: &PgPool) -> Result<()> {
    migrator().run(pool).await.map_err(|err| match err {
        sqlx::migrate::MigrateError::VersionMissing(version) => DbError::UnknownMigration(version),
        other => DbError::Migrate(other),
    })
}

/// True for errors worth retrying after a pause: the connection or server
/// went away, or the transaction lost a serialization/deadlock race.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // serialization_failure, deadlock_detected, admin/crash shutdown,
            // cannot_connect_now, connection exceptions
            Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006")
        ),
        _ => false,
    }
}

/// Where the worker's parts report the outcome of their database work, so
/// that an outage is logged once when it starts and once when it ends (with
/// its length), not once per failed attempt of every part. A failure of work
/// that began before the database last answered says nothing new (it waited
/// out the outage, e.g. for a pool connection), and neither does one within
/// [`SETTLE`] of an answer (a connection broken by a restart that is found
/// out on its first use afterwards): an outage is logged once failures
/// outlast that. Errors that are not transient are the caller's to log.
#[derive(Debug, Default)]
pub struct Connectivity {
    state: Mutex<ConnectivityState>,
}

/// How long after the database last answered a failure is not yet taken
/// for an outage.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct ConnectivityState {
    /// The first failure since the database last answered.
    failing_since: Option<Instant>,
    /// Whether the outage was logged (and its end must be).
    logged: bool,
    last_ok: Option<Instant>,
}

impl Connectivity {
    fn state(&self) -> std::sync::MutexGuard<'_, ConnectivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A transient failure of `what` (e.g. "claiming deliveries"), work
    /// that began at `began`.
    pub fn failed(&self, what: &str, err: &sqlx::Error, began: Instant) {
        let mut state = self.state();
        let now = Instant::now();
        let stale = state.last_ok.is_some_and(|ok| began < ok);
        if !stale {
            state.failing_since.get_or_insert(now);
        }
        let settling = state
            .last_ok
            .is_some_and(|ok| now.duration_since(ok) < SETTLE);
        if state.logged || stale || settling {
            tracing::debug!(error = %err, what, "a database call failed");
            return;
        }
        state.logged = true;
        let cause = match err {
            sqlx::Error::PoolTimedOut => {
                "no connection could be opened within 10s (refused or unreachable)".to_owned()
            }
            other => other.to_string(),
        };
        tracing::warn!(error = %cause, what,
            "lost the database; every part of the worker retries with backoff, and keeps what it has to write");
    }

    /// Database work succeeded.
    pub fn ok(&self) {
        let mut state = self.state();
        state.last_ok = Some(Instant::now());
        let since = state.failing_since.take();
        if std::mem::take(&mut state.logged) {
            let outage = since.map(|t| t.elapsed()).unwrap_or_default();
            tracing::info!(?outage, "the database is reachable again");
        }
    }
}
