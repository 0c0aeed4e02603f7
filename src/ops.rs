//! The operations listener, off unless `ops.listen` is set: `/healthz` (the
//! process is alive), `/readyz` (the database answers, its migrations are
//! the ones this binary expects, the worker claims, and its LISTEN
//! connection is up; 503 with the reasons otherwise) and `/metrics`
//! (Prometheus text format, see [`crate::instruments`]). Served by axum.
//! Beside it, a sampler sets the queue and pool gauges every few seconds,
//! with one statement over the queue (never a count over the history).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::instruments::{self, QueueSample};

/// How often the queue and pool gauges are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How long /readyz waits for the database.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What /readyz knows of the worker: its claims and its LISTEN connection.
pub struct Readiness {
    started: Instant,
    /// Milliseconds after `started` when the last claim succeeded
    /// (`NEVER` before the first).
    last_claim_ok_ms: AtomicU64,
    last_claim_failed: AtomicBool,
    /// The claimer waits for a free slot: every slot is busy, so it does
    /// not claim, and that is no fault.
    waiting_for_slots: AtomicBool,
    /// Shutting down: draining, claiming no more.
    stopping: AtomicBool,
    listening: Arc<AtomicBool>,
    /// A claim older than this, while slots are free, means the claimer is stuck.
    stale_after: Duration,
}

const NEVER: u64 = u64::MAX;

impl Readiness {
    /// `listening`: the presence connection's flag. The claimer claims at
    /// least every `poll_interval` while it has free slots.
    pub fn new(listening: Arc<AtomicBool>, poll_interval: Duration) -> Self {
        Self {
            started: Instant::now(),
            last_claim_ok_ms: AtomicU64::new(NEVER),
            last_claim_failed: AtomicBool::new(false),
            waiting_for_slots: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            listening,
            stale_after: (poll_interval * 10).max(Duration::from_secs(30)),
        }
    }

    pub fn claimed(&self, ok: bool) {
        if ok {
            let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(NEVER - 1);
            self.last_claim_ok_ms.store(ms, Ordering::Relaxed);
        }
        self.last_claim_failed.store(!ok, Ordering::Relaxed);
    }

    pub fn waiting_for_slots(&self, waiting: bool) {
        self.waiting_for_slots.store(waiting, Ordering::Relaxed);
    }

    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Waits until the worker listens and has claimed once.
    pub async fn ready(&self) {
        while !self.worker_problems().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Why the worker is not ready, if it is not (database checks aside).
    fn worker_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.stopping.load(Ordering::Relaxed) {
            problems.push("stopping: draining requests in flight, claiming no more".to_owned());
        }
        if !self.listening.load(Ordering::Relaxed) {
            problems.push("the LISTEN connection is down (reconnecting)".to_owned());
        }
        let last = self.last_claim_ok_ms.load(Ordering::Relaxed);
        if self.last_claim_failed.load(Ordering::Relaxed) {
            problems.push("the last claim failed".to_owned());
        } else if last == NEVER {
            problems.push("no claim has succeeded yet".to_owned());
        } else if !self.waiting_for_slots.load(Ordering::Relaxed) {
            let age = self
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(last));
            if age > self.stale_after {
                problems.push(format!("no claim for {}s with free slots", age.as_secs()));
            }
        }
        problems
    }
}

#[derive(Clone)]
struct Ops {
    pool: PgPool,
    readiness: Arc<Readiness>,
    metrics: PrometheusHandle,
    expected_migration: i64,
}

/// The process's Prometheus recorder: installed once, by the first listener.
fn metrics_handle() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| instruments::install().map_err(|e| e.to_string()))
        .clone()
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("ops.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("installing the metrics recorder: {0}")]
    Metrics(String),
}

/// The listener and the sampler, running until `stop`.
pub struct OpsServer {
    pub addr: SocketAddr,
    server: JoinHandle<()>,
    sampler: JoinHandle<()>,
}

impl OpsServer {
    pub async fn stopped(self) {
        let _ = self.server.await;
        let _ = self.sampler.await;
    }
}

/// Binds `addr` and serves until `stop`; samples the gauges of `pool` (the
/// main pool) and `claims` (the claim pool) meanwhile.
pub async fn start(
    addr: SocketAddr,
    pool: PgPool,
    claims: PgPool,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> Result<OpsServer, OpsError> {
    let metrics = metrics_handle().map_err(OpsError::Metrics)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| OpsError::Bind { addr, source })?;
    let addr = listener.local_addr().unwrap_or(addr);
    let ops = Ops {
        pool: pool.clone(),
        readiness,
        metrics: metrics.clone(),
        expected_migration: crate::db::latest_migration(),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(ops);
    let shutdown = stop.clone();
    let server = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(error = %err, "the operations listener stopped");
        }
    });
    let sampler = tokio::spawn(sample(pool, claims, metrics, stop));
    tracing::info!(%addr, "operations listener: /healthz /readyz /metrics");
    Ok(OpsServer {
        addr,
        server,
        sampler,
    })
}

/// Tells systemd the service's state (`READY=1`, `STOPPING=1`) when it
/// started this process as `Type=notify` (`NOTIFY_SOCKET` is set);
/// otherwise does nothing.
pub fn notify_systemd(state: &str) {
    let Some(socket_path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
        let path = socket_path.as_encoded_bytes();
        match path.strip_prefix(b"@") {
            // An abstract socket (Linux): '@' stands for the leading NUL.
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            _ => socket.send_to(state.as_bytes(), &socket_path),
        }
    });
    if let Err(err) = sent {
        tracing::warn!(error = %err, state, "could not notify systemd");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    let mut problems = Vec::new();
    let applied = tokio::time::timeout(
        DATABASE_CHECK_TIMEOUT,
        sqlx::query_file_scalar!("sql/worker/applied_migration.sql").fetch_one(&ops.pool),
    )
    .await;
    let applied = match applied {
        Err(_) => {
            problems.push(format!(
                "the database did not answer within {}s",
                DATABASE_CHECK_TIMEOUT.as_secs()
            ));
            None
        }
        Ok(Err(err)) => {
            problems.push(format!("the database: {err}"));
            None
        }
        Ok(Ok(version)) => Some(version.unwrap_or(0)),
    };
    if let Some(version) = applied
        && version < ops.expected_migration
    {
        problems.push(format!(
            "the database's migrations are behind: at {version}, this binary expects {} (run `clinic-webhooks migrate`)",
            ops.expected_migration
        ));
    }
    problems.extend(ops.readiness.worker_problems());
    let ready = problems.is_empty();
    let body = json!({
        "ready": ready,
        "problems": problems,
        "migration": applied,
        "expected_migration": ops.expected_migration,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
}

async fn render_metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.metrics.render(),
    )
}

/// Every `SAMPLE_INTERVAL`: the queue's gauges (one statement), the pools'
/// gauges, and the exporter's upkeep.
async fn sample(pool: PgPool, claims: PgPool, metrics: PrometheusHandle, stop: CancellationToken) {
    loop {
        match sqlx::query_file_as!(QueueSample, "sql/worker/queue_gauges.sql")
            .fetch_one(&pool)
            .await
        {
            Ok(sample) => instruments::queue(&sample),
            // The worker's own outage logging reports a lost database.
            Err(err) => tracing::debug!(error = %err, "sampling the queue's gauges failed"),
        }
        instruments::pool("main", pool.size(), pool.num_idle());
        instruments::pool("claims", claims.size(), claims.num_idle());
        metrics.run_upkeep();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SAMPLE_INTERVAL) => {}
        }
    }
}
