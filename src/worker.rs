//! The apalis worker and what runs beside it: its presence (the lock that
//! tells other workers it is alive, and the LISTEN that wakes the claimer),
//! the recovery loop that takes back what dead or stalled workers held, the
//! result recorder, and graceful shutdown (stop claiming, drain in-flight
//! calls within a deadline, hand back unstarted claims).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::{self, Connectivity, is_transient};
use crate::decision::RetryPolicy;
use crate::delivery::{ClientError, Sender};
use crate::maintenance;
use crate::ops::{self, Readiness};
use crate::pipeline::Pipeline;
use crate::presence::Presence;
use crate::queue::{self, Claimer, Job, QueueError};
use crate::recorder::{self, RecorderConfig};

/// How often every worker looks for deliveries to take back.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// How long a worker's presence lock must have been free before its
/// deliveries are taken back: time for a worker whose connection dropped
/// to take its lock again. A dead worker's deliveries are sent again within
/// about RECOVERY_INTERVAL + PRESENCE_GRACE + RECOVERY_INTERVAL.
pub const PRESENCE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("apalis worker: {0}")]
    Apalis(#[from] apalis_core::error::WorkerError),
    #[error("registering this worker: {0}")]
    Register(#[source] sqlx::Error),
    #[error(transparent)]
    Ops(crate::config::ConfigError),
    #[error(transparent)]
    OpsListener(#[from] ops::OpsError),
}

/// A unique name per process: apalis and our leases need one (a restarted
/// process must not inherit a dead one's identity).
pub fn worker_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

/// Runs until `shutdown` is cancelled, then drains and returns.
pub async fn run(
    settings: &Settings,
    pool: PgPool,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let name = worker_name(&settings.worker.name);
    let sender = Sender::new(&settings.http)?;
    let wake = Arc::new(Notify::new());
    let connectivity = Arc::new(Connectivity::default());
    let background = CancellationToken::new();
    let presence = Presence::start(
        &pool.connect_options(),
        &name,
        wake.clone(),
        connectivity.clone(),
        background.clone(),
    )
    .await
    .map_err(WorkerError::Register)?;
    let (recorder, recorder_task) = recorder::spawn(
        pool.clone(),
        RecorderConfig {
            worker: name.clone(),
            batch: settings.worker.record_batch,
            // The main pool's other users are the recovery loop and log
            // maintenance, a connection now and then each. (Claims and
            // presence have pools of their own.)
            writers: (settings.database.max_connections as usize)
                .saturating_sub(1)
                .clamp(1, 4),
            disable_after: settings.health.disable_after,
        },
        wake.clone(),
        connectivity.clone(),
    );
    let recovery = tokio::spawn(recover_lost_deliveries(
        pool.clone(),
        name.clone(),
        wake.clone(),
        connectivity.clone(),
        background.clone(),
    ));
    let maintenance = tokio::spawn(maintenance::schedule(
        pool.clone(),
        settings.retention.clone(),
        background.clone(),
    ));

    let readiness = Arc::new(Readiness::new(
        presence.listening(),
        settings.worker.poll_interval,
    ));
    let claim_pool = db::claim_pool(&pool);
    let ops = match start_ops(settings, &pool, &claim_pool, &readiness, &background).await {
        Ok(ops) => ops,
        Err(err) => {
            // Presence, recovery and maintenance run already: stop them.
            background.cancel();
            return Err(err);
        }
    };
    let claimer = Claimer::new(
        claim_pool,
        name.clone(),
        &settings.worker,
        wake,
        connectivity,
        readiness.clone(),
    );
    let pipeline = Arc::new(Pipeline {
        sender,
        policy: RetryPolicy {
            schedule: settings.retry.schedule.clone(),
            jitter: settings.retry.jitter,
            max_retry_after: settings.retry.max_retry_after,
        },
        recorder,
    });
    let worker = WorkerBuilder::new(name.clone())
        .backend(queue::backend(claimer.clone())?)
        .data(pipeline)
        .build(handle);
    tracing::info!(worker = %name, id = presence.id(), concurrency = settings.worker.concurrency, "worker started");

    let stop = shutdown.clone();
    // Boxed where its type is concrete: rustc cannot prove the apalis
    // worker's future `Send` through the generic layers otherwise, and then
    // no caller could spawn `run`.
    let running: ApalisRun = Box::pin(worker.run_until(async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    }));
    let ready = readiness.clone();
    let notify_ready = tokio::spawn(async move {
        ready.ready().await;
        ops::notify_systemd("READY=1");
    });
    let draining = readiness.clone();
    let deadline = async {
        shutdown.cancelled().await;
        draining.stopping();
        ops::notify_systemd("STOPPING=1");
        tracing::info!("stopping: no new claims; waiting for requests in flight");
        tokio::time::sleep(settings.worker.shutdown_timeout).await;
    };
    let result = tokio::select! {
        result = running => result.map_err(WorkerError::from),
        () = deadline => {
            tracing::warn!(timeout = ?settings.worker.shutdown_timeout,
                "requests still in flight at the shutdown deadline; their leases will expire and they will be sent again");
            Ok(())
        }
    };

    match claimer.release_unstarted().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            released = n,
            "handed back claimed deliveries that never started"
        ),
        Err(err) => {
            tracing::warn!(error = %err, "could not hand back unstarted deliveries; their leases will expire")
        }
    }
    background.cancel();
    notify_ready.abort();
    let _ = recovery.await;
    let _ = maintenance.await;
    if let Some(ops) = ops {
        ops.stopped().await;
    }
    // Every Recorder handle is gone with the worker; wait for the last writes.
    if tokio::time::timeout(Duration::from_secs(10), recorder_task)
        .await
        .is_err()
    {
        tracing::warn!("the last attempt results were not written within 10s");
    }
    if let Err(err) = sqlx::query_file!("sql/worker/deregister_worker.sql", &name)
        .execute(&pool)
        .await
    {
        tracing::warn!(error = %err, "could not remove this worker from webhooks.workers; another worker will");
    }
    presence.stopped().await;
    tracing::info!(worker = %name, "worker stopped");
    result
}

/// The operations listener, when `ops.listen` asks for one.
async fn start_ops(
    settings: &Settings,
    pool: &PgPool,
    claim_pool: &PgPool,
    readiness: &Arc<Readiness>,
    stop: &CancellationToken,
) -> Result<Option<ops::OpsServer>, WorkerError> {
    let Some(addr) = settings.ops.listen_addr().map_err(WorkerError::Ops)? else {
        return Ok(None);
    };
    let server = ops::start(
        addr,
        pool.clone(),
        claim_pool.clone(),
        readiness.clone(),
        stop.clone(),
    )
    .await?;
    Ok(Some(server))
}

type ApalisRun = Pin<Box<dyn Future<Output = Result<(), apalis_core::error::WorkerError>> + Send>>;

/// The apalis handler: one delivery through the pipeline.
async fn handle(job: Job, pipeline: Data<Arc<Pipeline>>) -> Result<(), BoxDynError> {
    pipeline.deliver(job).await?;
    Ok(())
}

/// Once a second, takes back the deliveries of workers that are gone and
/// those whose lease expired, and wakes the claimer to send them again.
async fn recover_lost_deliveries(
    pool: PgPool,
    name: String,
    wake: Arc<Notify>,
    connectivity: Arc<Connectivity>,
    stop: CancellationToken,
) {
    loop {
        let began = Instant::now();
        match sqlx::query_file!(
            "sql/worker/recover_lost_deliveries.sql",
            &name,
            PRESENCE_GRACE.as_secs_f64()
        )
        .fetch_one(&pool)
        .await
        {
            Ok(taken) => {
                connectivity.ok();
                if taken.worker_lost > 0 || taken.lease_expired > 0 {
                    tracing::warn!(
                        worker_lost = taken.worker_lost,
                        lease_expired = taken.lease_expired,
                        "took back deliveries of workers that are gone or silent past their lease; sending them again"
                    );
                    wake.notify_one();
                }
            }
            Err(err) if is_transient(&err) => {
                connectivity.failed("recovering lost deliveries", &err, began)
            }
            Err(err) => tracing::warn!(error = %err, "recovering lost deliveries failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RECOVERY_INTERVAL) => {}
        }
    }
}
