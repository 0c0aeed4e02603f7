//! Our queue under apalis: `webhooks.deliveries` is claimed in batches by one
//! call of `webhooks.claim_deliveries` (`sql/worker/claim_deliveries.sql`),
//! woken by LISTEN/NOTIFY, and fed to the apalis worker through apalis-core's
//! custom backend.
//!
//! Capacity is a semaphore of `worker.concurrency` slots. The claimer takes
//! free slots first and claims at most that many deliveries, so nothing is
//! ever claimed that cannot start at once: a claimed delivery never waits in a
//! local buffer while its lease runs out.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use apalis_core::backend::custom::{BackendBuilder, BuildError};
use apalis_core::task::Task;
use futures::stream::{BoxStream, StreamExt};
use futures::{Sink, sink};
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::config::WorkerSettings;
use crate::db::{Connectivity, is_transient};
use crate::instruments;
use crate::ops::Readiness;

/// The NOTIFY channel the triggers and redelivery functions signal.
pub const CHANNEL: &str = "clinic_webhooks";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("deliveries are enqueued by the database triggers, not pushed from the worker")]
    PushUnsupported,
    #[error("building the apalis backend: {0}")]
    Build(#[from] BuildError),
}

/// One claimed delivery, with what is needed to render, sign and send it:
/// the columns of `sql/worker/claim_deliveries.sql`, checked against it at
/// compile time.
#[derive(Clone)]
pub struct ClaimedDelivery {
    pub delivery_id: i64,
    /// The attempt number this claim starts (also the lease's fencing token).
    pub attempt: i32,
    /// Position in the retry schedule (restarts at a redelivery).
    pub schedule_position: i32,
    pub event_id: Uuid,
    pub event_type: String,
    pub created: i64,
    pub clinic_code: Option<String>,
    pub snapshot: String,
    pub endpoint_id: i64,
    pub url: String,
    pub version: String,
    pub secret: String,
}

// Keeps the secret (and the payload) out of every log line.
impl std::fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("delivery_id", &self.delivery_id)
            .field("attempt", &self.attempt)
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("endpoint_id", &self.endpoint_id)
            .finish_non_exhaustive()
    }
}

/// The apalis task: a claimed delivery holding one capacity slot until its
/// call is done and its result handed to the recorder.
pub struct Job {
    pub delivery: ClaimedDelivery,
    slot: OwnedSemaphorePermit,
    finished: FinishedCalls,
}

impl Job {
    /// The call is over and its result is queued for the log: frees the
    /// capacity slot, and until the returned guard is dropped (once the
    /// result is committed) tells this process's claims that the delivery,
    /// though still `delivering`, is no request in flight for its
    /// endpoint's bulkhead.
    pub fn call_over(self) -> CallOver {
        drop(self.slot);
        let key = (self.delivery.delivery_id, self.delivery.attempt);
        self.finished.insert(key);
        CallOver {
            finished: self.finished,
            key,
        }
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.delivery.fmt(f)
    }
}

/// A finished call whose result is not yet committed (see `Job::call_over`).
pub struct CallOver {
    finished: FinishedCalls,
    key: (i64, i32),
}

impl Drop for CallOver {
    fn drop(&mut self) {
        self.finished.remove(self.key);
    }
}

/// This process's calls that are over but not yet logged, as (delivery id,
/// attempt): the claim leaves them out of the endpoints' in-flight counts.
/// The attempt makes a stale entry harmless: it can only match a row that is
/// no longer delivering or has moved on to a later attempt.
#[derive(Clone)]
struct FinishedCalls {
    calls: Arc<Mutex<HashSet<(i64, i32)>>>,
    /// The claimer waits on this when its last claim came back short, maybe
    /// for want of bulkhead room that a finished call has just freed.
    wake: Arc<Notify>,
}

impl FinishedCalls {
    fn insert(&self, key: (i64, i32)) {
        self.lock().insert(key);
        self.wake.notify_one();
    }

    fn remove(&self, key: (i64, i32)) {
        self.lock().remove(&key);
    }

    /// The claim's two parallel arrays.
    fn arrays(&self) -> (Vec<i64>, Vec<i32>) {
        self.lock().iter().copied().unzip()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(i64, i32)>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Buffer = Arc<Mutex<VecDeque<(ClaimedDelivery, OwnedSemaphorePermit)>>>;

/// Claims deliveries for one worker process.
#[derive(Clone)]
pub struct Claimer {
    /// A pool whose sessions commit asynchronously: losing a claim in a
    /// server crash is harmless (the delivery stays pending, or its lease
    /// expires), so a claim need not wait for the WAL flush.
    pool: PgPool,
    worker: String,
    lease: Duration,
    slots: Arc<Semaphore>,
    concurrency: usize,
    wake: Arc<Notify>,
    /// Claimed but not yet handed to apalis (handed back on shutdown).
    buffer: Buffer,
    finished: FinishedCalls,
    pacing: Pacing,
    connectivity: Arc<Connectivity>,
    readiness: Arc<Readiness>,
}

/// How soon to look again after a claim that found work. The triggers let
/// only one concurrent transaction NOTIFY (`webhooks.wake_workers`); a
/// transaction that committed just after the notifier is found by this
/// second look instead of waiting for the poll interval.
const LINGER: Duration = Duration::from_millis(10);

/// Under a trickle of single-event commits faster than claims, every
/// NOTIFY would start a claim of one or two deliveries, and the claims'
/// fixed cost (two statements, a commit) would compete with the app's own
/// writes. So a claim that follows a short one that found work starts no
/// sooner than `PACE` after it. A commit that comes after a quiet spell of
/// `PACE` (any rate below 1 / `PACE`) is claimed at once.
const PACE: Duration = Duration::from_millis(2);

/// How long a busy claimer waits for more free slots (see `take_free_slots`).
const SLOT_GATHER: Duration = Duration::from_millis(2);

/// When to claim next, from what the last claim found: the claimer's pacing
/// policy, without a clock of its own.
#[derive(Debug, Clone)]
struct Pacing {
    poll_interval: Duration,
    last: Option<LastClaim>,
}

#[derive(Debug, Clone, Copy)]
struct LastClaim {
    started: Instant,
    wanted: usize,
    claimed: usize,
}

/// What the claimer does before its next claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Claim at once: the last claim was full, so more is probably due.
    Now,
    /// Wait for a wake-up (a NOTIFY, a finished call, a result written) or
    /// `patience`, whichever comes first; then not before `not_before`.
    Wait {
        patience: Duration,
        not_before: Option<Instant>,
    },
}

impl Pacing {
    fn new(poll_interval: Duration) -> Self {
        Self {
            poll_interval,
            last: None,
        }
    }

    fn claimed(&mut self, started: Instant, wanted: usize, claimed: usize) {
        self.last = Some(LastClaim {
            started,
            wanted,
            claimed,
        });
    }

    /// A claim failed: try again (after the caller's backoff) at once.
    fn failed(&mut self) {
        self.last = None;
    }

    fn next(&self) -> Next {
        match self.last {
            None => Next::Now,
            Some(last) if last.claimed >= last.wanted => Next::Now,
            // Short, but found work: more may have committed just behind it.
            Some(last) if last.claimed > 0 => Next::Wait {
                patience: LINGER.min(self.poll_interval),
                not_before: Some(last.started + PACE),
            },
            Some(_) => Next::Wait {
                patience: self.poll_interval,
                not_before: None,
            },
        }
    }
}

impl Claimer {
    /// Claims for `worker` with `settings`' lease, poll interval and
    /// concurrency; reports to `connectivity` and `readiness`.
    pub fn new(
        pool: PgPool,
        worker: String,
        settings: &WorkerSettings,
        wake: Arc<Notify>,
        connectivity: Arc<Connectivity>,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self {
            pool,
            worker,
            lease: settings.lease,
            slots: Arc::new(Semaphore::new(settings.concurrency)),
            concurrency: settings.concurrency,
            finished: FinishedCalls {
                calls: Arc::default(),
                wake: wake.clone(),
            },
            wake,
            buffer: Arc::default(),
            pacing: Pacing::new(settings.poll_interval),
            connectivity,
            readiness,
        }
    }

    /// Waits for the next delivery; never ends and never fails: database
    /// errors are logged and retried, so the worker outlives a database restart.
    async fn next_job(&mut self) -> Job {
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some((delivery, slot)) = self.pop_buffered() {
                return Job {
                    delivery,
                    slot,
                    finished: self.finished.clone(),
                };
            }
            if let Next::Wait {
                patience,
                not_before,
            } = self.pacing.next()
            {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(patience) => {}
                }
                if let Some(at) = not_before {
                    tokio::time::sleep_until(at.into()).await;
                }
            }
            self.readiness.waiting_for_slots(true);
            let slots = self.take_free_slots().await;
            self.readiness.waiting_for_slots(false);
            let wanted = slots.len();
            let started = Instant::now();
            let claimed = self.claim(wanted).await;
            self.readiness.claimed(claimed.is_ok());
            instruments::claim(
                claimed.is_ok(),
                started.elapsed(),
                claimed.as_ref().map_or(0, Vec::len),
            );
            match claimed {
                Ok(rows) => {
                    tracing::debug!(
                        wanted,
                        claimed = rows.len(),
                        ms = started.elapsed().as_secs_f64() * 1000.0,
                        "claim"
                    );
                    backoff = Duration::from_millis(100);
                    self.connectivity.ok();
                    self.pacing.claimed(started, wanted, rows.len());
                    let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
                    buffer.extend(rows.into_iter().zip(slots));
                }
                Err(err) => {
                    if is_transient(&err) {
                        self.connectivity
                            .failed("claiming deliveries", &err, started);
                    } else {
                        tracing::warn!(error = %err, retry_in = ?backoff, "claiming deliveries failed");
                    }
                    self.pacing.failed();
                    drop(slots);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn pop_buffered(&self) -> Option<(ClaimedDelivery, OwnedSemaphorePermit)> {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    /// At least one slot (waiting for it), plus every other slot free now.
    /// When most slots are busy, waits up to `SLOT_GATHER` for a worthwhile batch:
    /// a claim costs about a millisecond of database work however many rows
    /// it takes, so claiming one delivery at a time under load would make
    /// the claims, not the receivers, the limit.
    async fn take_free_slots(&self) -> Vec<OwnedSemaphorePermit> {
        let mut slots = Vec::new();
        // The semaphore is never closed, so acquiring only waits.
        if let Ok(first) = self.slots.clone().acquire_owned().await {
            slots.push(first);
        }
        self.take_free_now(&mut slots);
        let worthwhile = (self.concurrency / 2).clamp(1, 128);
        let deadline = tokio::time::Instant::now() + SLOT_GATHER;
        while slots.len() < worthwhile {
            match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                Ok(Ok(slot)) => {
                    slots.push(slot);
                    self.take_free_now(&mut slots);
                }
                _ => break,
            }
        }
        slots
    }

    fn take_free_now(&self, slots: &mut Vec<OwnedSemaphorePermit>) {
        while let Ok(slot) = self.slots.clone().try_acquire_owned() {
            slots.push(slot);
        }
    }

    /// One round trip, one transaction: `webhooks.claim_deliveries` locks
    /// the endpoints with due work that nobody else is claiming for, then
    /// claims from them. The claim pool's sessions commit asynchronously
    /// (see `db::claim_pool`).
    async fn claim(&self, limit: usize) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
        let (finished_ids, finished_attempts) = self.finished.arrays();
        sqlx::query_file_as!(
            ClaimedDelivery,
            "sql/worker/claim_deliveries.sql",
            i32::try_from(limit).unwrap_or(i32::MAX),
            &self.worker,
            self.lease.as_secs_f64(),
            &finished_ids,
            &finished_attempts,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Hands back what was claimed but never started (on shutdown).
    pub async fn release_unstarted(&self) -> Result<u64, sqlx::Error> {
        let ids: Vec<i64> = self
            .buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .map(|(d, _)| d.delivery_id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query_file!("sql/worker/release_unstarted.sql", &ids, &self.worker)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

type JobStream = BoxStream<'static, Result<Option<Task<Job>>, QueueError>>;
type JobSink = Pin<Box<dyn Sink<Task<Job>, Error = QueueError> + Send>>;

/// The apalis backend over our queue. Its stream only ever yields tasks; it
/// ends when the worker stops polling it (shutdown).
pub fn backend(
    claimer: Claimer,
) -> Result<apalis_core::backend::custom::CustomBackend<Job, Claimer, JobStream, JobSink>, QueueError>
{
    let backend = BackendBuilder::new()
        .database(claimer)
        .fetcher(|claimer: &mut Claimer, _: &(), _| {
            futures::stream::unfold(claimer.clone(), |mut claimer| async move {
                let job = claimer.next_job().await;
                Some((Ok(Some(Task::new(job))), claimer))
            })
            .boxed()
        })
        .sink(|_: &mut Claimer, _: &()| {
            Box::pin(sink::unfold((), |(), _task: Task<Job>| async {
                Err::<(), QueueError>(QueueError::PushUnsupported)
            })) as JobSink
        })
        .build()?;
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(1);

    fn after(wanted: usize, claimed: usize) -> (Instant, Next) {
        let mut pacing = Pacing::new(POLL);
        let started = Instant::now();
        pacing.claimed(started, wanted, claimed);
        (started, pacing.next())
    }

    #[test]
    fn the_first_claim_and_a_full_claim_go_at_once() {
        assert_eq!(Pacing::new(POLL).next(), Next::Now);
        assert_eq!(after(64, 64).1, Next::Now);
    }

    #[test]
    fn a_short_claim_that_found_work_lingers_and_is_paced() {
        let (started, next) = after(64, 3);
        assert_eq!(
            next,
            Next::Wait {
                patience: LINGER,
                not_before: Some(started + PACE)
            }
        );
    }

    #[test]
    fn an_empty_claim_waits_for_a_wake_up_or_the_poll_interval() {
        assert_eq!(
            after(64, 0).1,
            Next::Wait {
                patience: POLL,
                not_before: None
            }
        );
    }

    #[test]
    fn a_poll_interval_shorter_than_the_linger_wins() {
        let mut pacing = Pacing::new(Duration::from_millis(3));
        pacing.claimed(Instant::now(), 64, 1);
        let Next::Wait { patience, .. } = pacing.next() else {
            panic!("a short claim waits");
        };
        assert_eq!(patience, Duration::from_millis(3));
    }

    #[test]
    fn after_a_failed_claim_the_next_goes_at_once() {
        let mut pacing = Pacing::new(POLL);
        pacing.claimed(Instant::now(), 64, 0);
        pacing.failed();
        assert_eq!(pacing.next(), Next::Now);
    }
}
