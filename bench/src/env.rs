//! The bench's private database and what the scenarios share: fixtures,
//! resetting between runs, waiting for deliveries, and server counters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};

use clinic_webhooks::db;
use clinic_webhooks_test_support::{Received, Receiver, drop_stale_databases, unix_now};

/// Databases left behind by a bench that was killed are dropped after this long.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The one clinic and member every bench visit belongs to.
pub const CLINIC_ID: i64 = 1;
pub const MEMBER_ID: i64 = 1;

/// One visit, as the main app inserts it (a prepared statement per connection).
pub const INSERT_ONE_VISIT: &str =
    "INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
     VALUES ($1, $2, now(), now() + interval '15 minutes')";
pub const INSERT_ONE_VISIT_RETURNING: &str =
    "INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
     VALUES ($1, $2, now(), now() + interval '15 minutes') RETURNING id";

/// A fresh database `cw_bench_<time>_<random>` on the given server.
pub struct BenchDb {
    pub name: String,
    /// The URL of the bench database (may carry a password: never print it).
    pub url: String,
    admin_url: String,
    pub pool: PgPool,
}

/// `admin_url` with its database swapped for `database`.
fn url_for(admin_url: &str, database: &str) -> Result<String> {
    let mut url = url::Url::parse(admin_url).context("--database-url is not a valid URL")?;
    url.set_path(&format!("/{database}"));
    Ok(url.to_string())
}

impl BenchDb {
    /// Creates, migrates and seeds the database.
    pub async fn create(admin_url: &str) -> Result<Self> {
        let mut admin = PgConnection::connect(admin_url)
            .await
            .context("connecting to the PostgreSQL server given by --database-url")?;
        if let Err(err) = drop_stale_databases(&mut admin, "cw_bench_", STALE_AFTER).await {
            tracing::debug!(error = %err, "could not look for stale bench databases");
        }
        let name = format!("cw_bench_{}_{:08x}", unix_now(), fastrand::u32(..));
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await.ok();
        let url = url_for(admin_url, &name)?;
        let created = Self {
            pool: db::connect(&url, 4).await?,
            name,
            url,
            admin_url: admin_url.to_owned(),
        };
        if let Err(err) = created.prepare().await {
            created.drop_database().await.ok();
            return Err(err);
        }
        Ok(created)
    }

    async fn prepare(&self) -> Result<()> {
        db::migrate(&self.pool).await?;
        sqlx::query(
            "INSERT INTO clinic.clinics (id, code, name) VALUES ($1, 'bench', 'Bench clinic')",
        )
        .bind(CLINIC_ID)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO clinic.users (id, clinic_id, role, source) VALUES ($1, $2, 'patient', 'signup')",
        )
        .bind(MEMBER_ID)
        .bind(CLINIC_ID)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops the database, ending any session still in it.
    pub async fn drop_database(&self) -> Result<()> {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        admin
            .execute(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await
            .with_context(|| format!("dropping database {}", self.name))?;
        admin.close().await.ok();
        Ok(())
    }

    /// The server's TCP port (to tell the worker's database connections apart).
    pub fn port(&self) -> u16 {
        self.pool.connect_options().get_port()
    }

    /// A new connection of its own (an app client).
    pub async fn client(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }

    /// Empties the queue, the log, the endpoints and the app's visits.
    /// Every worker must be stopped (TRUNCATE waits for their locks).
    pub async fn reset(&self) -> Result<()> {
        sqlx::query(
            "TRUNCATE webhooks.attempts, webhooks.deliveries, webhooks.events, webhooks.endpoints,
                      clinic.invoices, clinic.visit_notes, clinic.visits",
        )
        .execute(&self.pool)
        .await
        .context("resetting the bench database")?;
        Ok(())
    }

    /// Empties the queue and the log, keeping the endpoints.
    pub async fn clear_queue(&self) -> Result<()> {
        sqlx::query("TRUNCATE webhooks.attempts, webhooks.deliveries, webhooks.events")
            .execute(&self.pool)
            .await
            .context("emptying the bench queue")?;
        Ok(())
    }

    /// A checkpoint, so that every measured run starts from the same state
    /// (and no scheduled checkpoint lands inside a short run). Needs a
    /// superuser or pg_checkpoint; skipped without.
    pub async fn checkpoint(&self) {
        if let Err(err) = sqlx::query("CHECKPOINT").execute(&self.pool).await {
            tracing::debug!(error = %err, "CHECKPOINT refused; continuing without");
        }
    }

    /// `n` enabled v2 endpoints at `<receiver>/ep1` .. `/epN`; returns the paths.
    pub async fn endpoints(
        &self,
        receiver: &Receiver,
        n: i64,
        max_in_flight: i32,
    ) -> Result<Vec<String>> {
        let base = receiver.url("");
        let rows: Vec<(i64,)> = sqlx::query_as(
            "INSERT INTO webhooks.endpoints (clinic_id, url, version, max_in_flight, description)
             SELECT $1, $2 || '/ep' || g, '2.0', $4, 'bench'
               FROM generate_series(1, $3::bigint) g
             RETURNING id",
        )
        .bind(CLINIC_ID)
        .bind(&base)
        .bind(n)
        .bind(max_in_flight)
        .fetch_all(&self.pool)
        .await
        .context("adding the bench endpoints")?;
        Ok((1..=rows.len()).map(|i| format!("/ep{i}")).collect())
    }

    /// `n` visits in one INSERT statement (one transaction).
    pub async fn insert_visits(&self, n: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
             SELECT $1, $2, now() + g * interval '1 minute', now() + g * interval '1 minute' + interval '15 minutes'
               FROM generate_series(1, $3::bigint) g",
        )
        .bind(CLINIC_ID)
        .bind(MEMBER_ID)
        .bind(n)
        .execute(&self.pool)
        .await
        .context("inserting visits")?;
        Ok(())
    }

    /// Turns the webhook triggers on `clinic.visits` off or on (the baseline).
    pub async fn visit_triggers(&self, enabled: bool) -> Result<()> {
        let sql = if enabled {
            "ALTER TABLE clinic.visits ENABLE TRIGGER USER"
        } else {
            "ALTER TABLE clinic.visits DISABLE TRIGGER USER"
        };
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Deliveries not yet finished (pending or delivering).
    pub async fn unfinished(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM webhooks.deliveries WHERE state IN ('pending', 'delivering')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// How the deliveries and the log stand.
    pub async fn tally(&self) -> Result<Tally> {
        let (deliveries, succeeded, failed, attempts, repeated): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM webhooks.deliveries),
                        (SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'),
                        (SELECT count(*) FROM webhooks.deliveries WHERE state = 'failed'),
                        (SELECT count(*) FROM webhooks.attempts),
                        (SELECT count(*) FROM webhooks.deliveries WHERE attempts > 1)",
            )
            .fetch_one(&self.pool)
            .await?;
        let per_worker: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT worker, count(*) FROM webhooks.attempts GROUP BY worker ORDER BY worker",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Tally {
            deliveries,
            succeeded,
            failed,
            attempts,
            repeated,
            per_worker: per_worker
                .into_iter()
                .map(|(w, n)| (w.unwrap_or_default(), n))
                .collect(),
        })
    }

    /// Sessions of this database that LISTEN (one per running worker).
    pub async fn listeners(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND backend_type = 'client backend'
                AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Waits until exactly `n` workers listen (they are up, or gone).
    pub async fn wait_listeners(&self, n: i64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.listeners().await?;
            if got == n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("waited {timeout:?} for {n} listening worker(s), saw {got}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Event id (the webhook-id) → visit id, for visit.created events.
    pub async fn visit_of_event(&self) -> Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id::text, (snapshot->>'id')::bigint FROM webhooks.events WHERE type = 'visit.created'",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn counters(&self) -> Result<Counters> {
        let (lsn, xid): (String, i64) = sqlx::query_as(
            "SELECT pg_current_wal_insert_lsn()::text,
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counters { lsn, xid })
    }

    /// WAL bytes and transaction ids since `start` (server-wide).
    pub async fn since(&self, start: &Counters) -> Result<ServerDelta> {
        let (wal_bytes, xid): (i64, i64) = sqlx::query_as(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)::bigint,
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        )
        .bind(&start.lsn)
        .fetch_one(&self.pool)
        .await?;
        Ok(ServerDelta {
            wal_bytes,
            write_xacts: xid - start.xid,
        })
    }

    /// The server's version and the settings that matter here.
    pub async fn server(&self) -> Result<Server> {
        let setting = |name: &'static str| async move {
            sqlx::query_scalar::<_, String>("SELECT current_setting($1)")
                .bind(name)
                .fetch_one(&self.pool)
                .await
        };
        Ok(Server {
            version: sqlx::query_scalar("SELECT version()")
                .fetch_one(&self.pool)
                .await?,
            fsync: setting("fsync").await?,
            synchronous_commit: setting("synchronous_commit").await?,
            wal_sync_method: setting("wal_sync_method").await?,
            shared_buffers: setting("shared_buffers").await?,
            max_wal_size: setting("max_wal_size").await?,
            shared_preload_libraries: setting("shared_preload_libraries").await?,
            target: db::describe(&self.url.parse()?),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Tally {
    pub deliveries: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// Rows in webhooks.attempts (the log).
    pub attempts: i64,
    /// Deliveries that took more than one attempt.
    pub repeated: i64,
    /// Attempts logged per worker name.
    pub per_worker: Vec<(String, i64)>,
}

#[derive(Debug, Clone)]
pub struct Counters {
    lsn: String,
    xid: i64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerDelta {
    pub wal_bytes: i64,
    /// Transaction ids assigned: transactions that wrote something.
    pub write_xacts: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub target: String,
    pub version: String,
    pub fsync: String,
    pub synchronous_commit: String,
    pub wal_sync_method: String,
    pub shared_buffers: String,
    pub max_wal_size: String,
    pub shared_preload_libraries: String,
}

/// Waits until the receiver has seen `arrivals` requests in all and then
/// until no delivery is pending or in flight (the log is written); returns
/// when that was seen. The receiver is polled first because it is free; the
/// database only for the tail.
pub async fn wait_delivered(
    db: &BenchDb,
    receiver: &Receiver,
    arrivals: usize,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    while receiver.count() < arrivals {
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?}: the receiver saw {} of {arrivals} requests",
                receiver.count()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let left = db.unfinished().await?;
        if left == 0 {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?}: {left} deliveries still unfinished");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Requests received more than once for the same (webhook-id, path).
pub fn duplicates(requests: &[Received]) -> usize {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for r in requests {
        *seen
            .entry((r.header("webhook-id").unwrap_or(""), r.path.as_str()))
            .or_default() += 1;
    }
    seen.values().map(|n| n - 1).sum()
}
