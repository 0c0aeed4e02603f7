//! The apalis worker and what runs beside it: the LISTEN task that wakes the
//! claimer, the lease-recovery loop, the result recorder, and graceful
//! shutdown (stop claiming, drain in-flight calls within a deadline, hand back
//! unstarted claims).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db;
use crate::decision::RetryPolicy;
use crate::delivery::{ClientError, Sender};
use crate::pipeline::Pipeline;
use crate::queue::{self, CHANNEL, Claimer, Job, QueueError};
use crate::recorder::{self, RecorderConfig};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("apalis worker: {0}")]
    Apalis(#[from] apalis_core::error::WorkerError),
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
    let (recorder, recorder_task) = recorder::spawn(
        pool.clone(),
        RecorderConfig {
            worker: name.clone(),
            batch: settings.worker.record_batch,
            // The main pool's other users: LISTEN holds a connection, lease
            // recovery takes one now and then. (Claims have their own pool.)
            writers: (settings.database.max_connections as usize)
                .saturating_sub(2)
                .clamp(1, 4),
            disable_after: settings.health.disable_after,
        },
        wake.clone(),
    );
    let background = CancellationToken::new();
    let listener = tokio::spawn(listen(pool.clone(), wake.clone(), background.clone()));
    let leases = tokio::spawn(recover_leases(
        pool.clone(),
        (settings.worker.lease / 4).clamp(Duration::from_secs(1), Duration::from_secs(15)),
        background.clone(),
    ));

    let claimer = Claimer::new(
        db::claim_pool(&pool),
        name.clone(),
        settings.worker.lease,
        settings.worker.poll_interval,
        settings.worker.concurrency,
        wake,
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
    tracing::info!(worker = %name, concurrency = settings.worker.concurrency, "worker started");

    let stop = shutdown.clone();
    // Boxed where its type is concrete: rustc cannot prove the apalis
    // worker's future `Send` through the generic layers otherwise, and then
    // no caller could spawn `run`.
    let running: ApalisRun = Box::pin(worker.run_until(async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    }));
    let deadline = async {
        shutdown.cancelled().await;
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
    let _ = listener.await;
    let _ = leases.await;
    // Every Recorder handle is gone with the worker; wait for the last writes.
    if tokio::time::timeout(Duration::from_secs(10), recorder_task)
        .await
        .is_err()
    {
        tracing::warn!("the last attempt results were not written within 10s");
    }
    tracing::info!(worker = %name, "worker stopped");
    result
}

type ApalisRun = Pin<Box<dyn Future<Output = Result<(), apalis_core::error::WorkerError>> + Send>>;

/// The apalis handler: one delivery through the pipeline.
async fn handle(job: Job, pipeline: Data<Arc<Pipeline>>) -> Result<(), BoxDynError> {
    pipeline.deliver(job).await?;
    Ok(())
}

/// Wakes the claimer on every NOTIFY; reconnects after a database restart
/// (the poll interval covers what was missed meanwhile).
async fn listen(pool: PgPool, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => {
                    wake.notify_one();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            got = listener.recv() => match got {
                                Ok(_) => wake.notify_one(),
                                Err(err) => {
                                    tracing::warn!(error = %err, "LISTEN connection lost; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "LISTEN failed"),
            },
            Err(err) => tracing::warn!(error = %err, "LISTEN connection failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Periodically takes back deliveries whose worker vanished.
async fn recover_leases(pool: PgPool, every: Duration, stop: CancellationToken) {
    loop {
        match sqlx::query_file_scalar!("sql/worker/recover_expired_leases.sql")
            .fetch_one(&pool)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(recovered = n, "took back deliveries whose lease expired"),
            Err(err) => tracing::warn!(error = %err, "recovering expired leases failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
