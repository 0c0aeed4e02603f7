//! The worker's standing connection. On it the worker holds its presence
//! lock for as long as it runs (`webhooks.register_worker`): the other
//! workers know it is alive by that lock, and take its deliveries back
//! within seconds once it is free, i.e. once the process is gone and
//! PostgreSQL has ended its session. On the same connection it LISTENs for
//! the triggers' wake-ups.
//!
//! The connection has a pool of its own (of one), so the session-level lock
//! never lands on a connection shared with other work. When the connection
//! is lost (a database restart), it reconnects with backoff, takes its lock
//! again (`webhooks.resume_worker`) and listens again; the claimer's poll
//! interval covers the wake-ups missed meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::{Connectivity, is_transient};
use crate::queue::CHANNEL;

/// The presence of one worker process.
pub struct Presence {
    /// `webhooks.workers.id`; changes only if the worker was forgotten while
    /// its connection was lost and had to register again.
    id: Arc<AtomicI32>,
    listening: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Presence {
    /// Registers worker `name` and starts holding its presence lock and
    /// listening. Fails when the database cannot be reached or another
    /// running process has the same name.
    pub async fn start(
        options: &PgConnectOptions,
        name: &str,
        wake: Arc<Notify>,
        connectivity: Arc<Connectivity>,
        stop: CancellationToken,
    ) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.clone().application_name("clinic-webhooks-presence"));
        let mut listener = connect(&pool).await?;
        let id = register(&mut listener, name).await?;
        listener.listen(CHANNEL).await?;
        let id = Arc::new(AtomicI32::new(id));
        let listening = Arc::new(AtomicBool::new(true));
        let standing = Standing {
            pool,
            name: name.to_owned(),
            id: id.clone(),
            listening: listening.clone(),
            wake,
            connectivity,
        };
        let task = tokio::spawn(standing.run(listener, stop));
        Ok(Self {
            id,
            listening,
            task,
        })
    }

    pub fn id(&self) -> i32 {
        self.id.load(Ordering::Relaxed)
    }

    /// Whether the LISTEN connection (and with it the presence lock) is up.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// The flag behind `is_listening`, for readiness.
    pub fn listening(&self) -> Arc<AtomicBool> {
        self.listening.clone()
    }

    /// Waits for the task to end (after its stop token was cancelled); the
    /// lock goes with the connection.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

struct Standing {
    pool: PgPool,
    name: String,
    id: Arc<AtomicI32>,
    listening: Arc<AtomicBool>,
    wake: Arc<Notify>,
    connectivity: Arc<Connectivity>,
}

impl Standing {
    async fn run(self, mut listener: PgListener, stop: CancellationToken) {
        // Whatever committed while we set up.
        self.wake.notify_one();
        loop {
            let lost = tokio::select! {
                () = stop.cancelled() => return,
                got = listener.try_recv() => match got {
                    Ok(Some(_)) => {
                        self.wake.notify_one();
                        continue;
                    }
                    Ok(None) => sqlx::Error::Io(std::io::ErrorKind::ConnectionAborted.into()),
                    Err(err) => err,
                },
            };
            self.listening.store(false, Ordering::Relaxed);
            self.connectivity
                .failed("the presence and LISTEN connection", &lost, Instant::now());
            drop(listener);
            listener = match self.reconnect(&stop).await {
                Some(listener) => listener,
                None => return,
            };
            self.listening.store(true, Ordering::Relaxed);
            self.connectivity.ok();
            self.wake.notify_one();
        }
    }

    /// Connects again, takes the presence lock again and listens again,
    /// retrying with backoff until it works or the worker stops.
    async fn reconnect(&self, stop: &CancellationToken) -> Option<PgListener> {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            let began = Instant::now();
            match self.resume().await {
                Ok(listener) => return Some(listener),
                Err(err) if is_transient(&err) => {
                    self.connectivity
                        .failed("the presence and LISTEN connection", &err, began);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "taking the presence lock again failed; retrying");
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn resume(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = connect(&self.pool).await?;
        let id = self.id.load(Ordering::Relaxed);
        match sqlx::query_file!("sql/worker/resume_worker.sql", id)
            .execute(&mut listener)
            .await
        {
            Ok(_) => {}
            // Forgotten while away (its deliveries were taken back and it
            // held nothing): it registers anew.
            Err(err) if is_no_data_found(&err) => {
                let id = register(&mut listener, &self.name).await?;
                self.id.store(id, Ordering::Relaxed);
                tracing::warn!(worker = %self.name, id, "this worker was taken for gone while its connection was lost; registered again");
            }
            Err(err) => return Err(err),
        }
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is reported (`Ok(None)`), not silently replaced: a
    // new session would not hold the presence lock.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    Ok(listener)
}

async fn register(listener: &mut PgListener, name: &str) -> Result<i32, sqlx::Error> {
    sqlx::query_file_scalar!("sql/worker/register_worker.sql", name)
        .fetch_one(listener)
        .await
}

fn is_no_data_found(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "P0002")
}
