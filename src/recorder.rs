//! Writes attempt results in batches (group commit): handlers hand their
//! result to one task, which writes everything waiting in one statement
//! (`sql/worker/record_attempts.sql`) and then acknowledges each handler. A
//! handler finishes only after its result is durable, so a crash can repeat a
//! call (at-least-once) but never lose one.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::db::{Connectivity, is_transient};
use crate::decision::Outcome;
use crate::delivery::CallRecord;
use crate::instruments;

/// One finished call and what happens to its delivery next.
#[derive(Debug)]
pub struct AttemptResult {
    pub delivery_id: i64,
    pub endpoint_id: i64,
    /// The event, logged with the call so that the log's lists read the log alone.
    pub event_id: Uuid,
    pub event_type: String,
    pub attempt: i32,
    pub call: CallRecord,
    pub outcome: Outcome,
    /// For `Retrying`: the delay before the next attempt.
    pub retry_in: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
#[error("the result recorder has stopped")]
pub struct RecorderStopped;

type Pending = (AttemptResult, oneshot::Sender<()>);

/// Handle used by delivery handlers.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    /// Hands the result over (waiting while the recorder's queue is full);
    /// the returned `Committed` resolves once it is durable.
    pub async fn submit(&self, result: AttemptResult) -> Result<Committed, RecorderStopped> {
        let (done, committed) = oneshot::channel();
        self.tx
            .send((result, done))
            .await
            .map_err(|_| RecorderStopped)?;
        Ok(Committed(committed))
    }
}

/// A submitted result, until it is committed.
pub struct Committed(oneshot::Receiver<()>);

impl Committed {
    pub async fn wait(self) -> Result<(), RecorderStopped> {
        self.0.await.map_err(|_| RecorderStopped)
    }
}

/// How long a write waits for more results to join it. Only the log and
/// the next event of a lane wait; the receiver already has its request.
const BATCH_GATHER: Duration = Duration::from_millis(5);

/// How the recorder writes.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub worker: String,
    /// Most results in one statement.
    pub batch: usize,
    /// Statements in flight at once, each on its own connection: their
    /// commits share WAL flushes (group commit) instead of queueing for them.
    pub writers: usize,
    pub disable_after: Duration,
}

/// Starts the recorder task; it ends when every `Recorder` is dropped and
/// what was sent to it is written. After each write it wakes the claimer: a
/// finished delivery may have unblocked the next event of its lane, or freed
/// a bulkhead slot.
pub fn spawn(
    pool: PgPool,
    config: RecorderConfig,
    wake: Arc<Notify>,
    connectivity: Arc<Connectivity>,
) -> (Recorder, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Pending>(config.batch * 2);
    let task = tokio::spawn(async move {
        let writers = Arc::new(Semaphore::new(config.writers.max(1)));
        let batch_size = config.batch;
        let writer_of = Arc::new(Writer {
            pool,
            config,
            connectivity,
        });
        let mut in_flight = JoinSet::new();
        loop {
            // Wait for a free writer first, so that results keep gathering
            // into the next batch while every writer is busy.
            let Ok(writer) = writers.clone().acquire_owned().await else {
                break;
            };
            let mut batch = Vec::with_capacity(batch_size);
            if rx.recv_many(&mut batch, batch_size).await == 0 {
                break;
            }
            // A write costs about the same for one row as for dozens, and the
            // receiver already has its request: gather for a moment.
            let deadline = tokio::time::Instant::now() + BATCH_GATHER;
            while batch.len() < batch_size {
                let room = batch_size - batch.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            let (writer_of, wake) = (writer_of.clone(), wake.clone());
            in_flight.spawn(async move {
                let started = std::time::Instant::now();
                writer_of.write_with_retry(&batch).await;
                tracing::debug!(
                    rows = batch.len(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "recorded"
                );
                drop(writer);
                wake.notify_one();
                for (_, done) in batch {
                    // The handler may have been cancelled; nothing to tell it then.
                    let _ = done.send(());
                }
            });
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
    });
    (Recorder { tx }, task)
}

/// `sqlx::query_file!` of a statement whose first eighteen parameters are
/// the arrays of [`Columns`], then `extra`. Checked against the SQL at
/// compile time: the number, order and types of its parameters (`as
/// &[Option<_>]`: those arrays may hold NULLs).
macro_rules! with_columns {
    ($file:literal, $c:expr, $($extra:expr),+) => {
        sqlx::query_file!(
            $file,
            &$c.delivery_id,
            &$c.endpoint_id,
            &$c.attempt,
            &$c.started_at,
            &$c.duration_ms,
            &$c.url,
            &$c.request_headers as &[Option<String>],
            &$c.request_body as &[Option<String>],
            &$c.response_status as &[Option<i16>],
            &$c.response_headers as &[Option<String>],
            &$c.response_body as &[Option<String>],
            &$c.response_truncated,
            &$c.outcome as &[&str],
            &$c.error_kind as &[Option<&str>],
            &$c.error as &[Option<String>],
            &$c.retry_in_s as &[Option<f64>],
            &$c.event_id,
            &$c.event_type,
            $($extra),+
        )
    };
}

/// Writes batches of results.
struct Writer {
    pool: PgPool,
    config: RecorderConfig,
    connectivity: Arc<Connectivity>,
}

impl Writer {
    /// Writes a batch, retrying transient errors until the database is
    /// back. A batch the database refuses for another reason is written row
    /// by row, so one bad row cannot take the others with it.
    async fn write_with_retry(&self, batch: &[Pending]) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let began = Instant::now();
            let written = self.write(batch).await;
            instruments::log_write(written.is_ok(), began.elapsed(), batch.len());
            match written {
                Ok(late) => {
                    self.connectivity.ok();
                    warn_late(&late);
                    return;
                }
                Err(err) if is_transient(&err) => {
                    self.connectivity.failed("recording attempts", &err, began);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(err) if batch.len() > 1 => {
                    tracing::warn!(error = %err, rows = batch.len(),
                        "recording a batch of attempts failed; writing them one by one");
                    for one in batch.chunks(1) {
                        Box::pin(self.write_with_retry(one)).await;
                    }
                    return;
                }
                Err(err) => {
                    // The delivery stays leased; when the lease expires it is sent again.
                    let (r, _) = &batch[0];
                    tracing::error!(error = %err, delivery_id = r.delivery_id, attempt = r.attempt,
                        "the database refused an attempt record; the delivery will be retried after its lease");
                    return;
                }
            }
        }
    }

    /// One statement for the whole batch, and a second for the results
    /// that moved nothing, if any; returns the (delivery, attempt) of the
    /// results that came after their delivery was taken back.
    async fn write(&self, batch: &[Pending]) -> Result<Vec<(i64, i32)>, sqlx::Error> {
        let mut c = Columns::default();
        for (r, _) in batch {
            c.push(r);
        }
        let unmoved = with_columns!(
            "sql/worker/record_attempts.sql",
            c,
            &self.config.worker,
            self.config.disable_after.as_secs_f64()
        )
        .fetch_all(&self.pool)
        .await?;
        if unmoved.is_empty() {
            return Ok(Vec::new());
        }
        let unmoved: HashSet<(i64, i32)> = unmoved
            .into_iter()
            .map(|r| (r.delivery_id, r.attempt))
            .collect();
        let mut c = Columns::default();
        for (r, _) in batch {
            if unmoved.contains(&(r.delivery_id, r.attempt)) {
                c.push(r);
            }
        }
        let late = with_columns!(
            "sql/worker/record_late_attempts.sql",
            c,
            &self.config.worker
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(late
            .into_iter()
            .map(|r| (r.delivery_id, r.attempt))
            .collect())
    }
}

/// For the operator: this worker lost these deliveries before it could
/// record their results (it was stalled, or cut off from the database, for
/// longer than its lease, or taken for gone). Another worker sent them
/// again; these results are in the log as 'late' and changed nothing.
fn warn_late(late: &[(i64, i32)]) {
    if late.is_empty() {
        return;
    }
    let shown: Vec<String> = late
        .iter()
        .take(10)
        .map(|(delivery, attempt)| format!("{delivery}/{attempt}"))
        .collect();
    tracing::warn!(
        late = late.len(),
        deliveries = %shown.join(" "),
        "results came after this worker had lost their deliveries (stalled or cut off past the lease); logged as late, changed nothing; the deliveries were taken over"
    );
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The parallel arrays of `sql/worker/record_attempts.sql`, one element per call.
#[derive(Default)]
struct Columns {
    delivery_id: Vec<i64>,
    endpoint_id: Vec<i64>,
    attempt: Vec<i32>,
    started_at: Vec<f64>,
    duration_ms: Vec<f64>,
    url: Vec<String>,
    request_headers: Vec<Option<String>>,
    request_body: Vec<Option<String>>,
    response_status: Vec<Option<i16>>,
    response_headers: Vec<Option<String>>,
    response_body: Vec<Option<String>>,
    response_truncated: Vec<bool>,
    outcome: Vec<&'static str>,
    error_kind: Vec<Option<&'static str>>,
    error: Vec<Option<String>>,
    retry_in_s: Vec<Option<f64>>,
    event_id: Vec<Uuid>,
    event_type: Vec<String>,
}

impl Columns {
    fn push(&mut self, r: &AttemptResult) {
        let call = &r.call;
        let response = call.response.as_ref();
        self.delivery_id.push(r.delivery_id);
        self.endpoint_id.push(r.endpoint_id);
        self.attempt.push(r.attempt);
        self.started_at.push(epoch_seconds(call.started_at));
        self.duration_ms.push(call.duration.as_secs_f64() * 1000.0);
        self.url.push(call.url.clone());
        self.request_headers
            .push(call.request.as_ref().map(|r| r.headers.to_string()));
        self.request_body
            .push(call.request.as_ref().map(|r| r.body.clone()));
        self.response_status
            .push(response.map(|r| i16::try_from(r.status).unwrap_or(i16::MAX)));
        self.response_headers
            .push(response.map(|r| r.headers.to_string()));
        // PostgreSQL text cannot hold NUL; the log keeps the rest of the body.
        self.response_body
            .push(response.map(|r| r.body.replace('\0', "\u{FFFD}")));
        self.response_truncated
            .push(response.is_some_and(|r| r.truncated));
        self.outcome.push(r.outcome.as_str());
        self.error_kind
            .push(call.failure.as_ref().map(|f| f.kind.as_str()));
        self.error
            .push(call.failure.as_ref().map(|f| f.message.clone()));
        self.retry_in_s.push(r.retry_in.map(|d| d.as_secs_f64()));
        self.event_id.push(r.event_id);
        self.event_type.push(r.event_type.clone());
    }
}
