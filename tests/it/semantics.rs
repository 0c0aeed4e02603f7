//! Delivery semantics: a durable retry schedule, ordered lanes, bulkheads,
//! fairness between first attempts and retries.

use std::sync::Arc;
use std::time::Duration;

use clinic_webhooks_test_support::{Received, Receiver, Reply};

use crate::support::{self, InProcessWorker, TestDb};

/// `type` and `data.id` of a received v2 body.
fn what(r: &Received) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    (
        v["type"].as_str().expect("type").to_owned(),
        v["data"]["id"].as_str().expect("id").to_owned(),
    )
}

#[tokio::test]
async fn the_retry_schedule_survives_a_restart_of_every_worker() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, _| Reply::status(503)))
        .await
        .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/down"), "2.0").await;
    let long = [("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "1h,2h")];
    let worker = InProcessWorker::start(&db, support::settings(&long));
    support::visit(&db.pool, 1, 10).await;
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'pending' AND attempts = 1",
        1,
        Duration::from_secs(10),
    )
    .await;
    worker.stop().await;
    let due_before: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM next_attempt_at)::float8 FROM webhooks.deliveries",
    )
    .fetch_one(&db.pool)
    .await
    .expect("due");

    // A new worker neither resends early nor forgets the attempt count.
    let worker = InProcessWorker::start(&db, support::settings(&long));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (attempts, due_after): (i32, f64) = sqlx::query_as(
        "SELECT attempts, extract(epoch FROM next_attempt_at)::float8 FROM webhooks.deliveries",
    )
    .fetch_one(&db.pool)
    .await
    .expect("row");
    assert_eq!(attempts, 1);
    assert_eq!(due_after, due_before);
    assert_eq!(receiver.count(), 1);
    // Its time comes (aged with SQL, not slept): the second attempt goes out.
    sqlx::query("UPDATE webhooks.deliveries SET next_attempt_at = now()")
        .execute(&db.pool)
        .await
        .expect("age");
    receiver.wait_for(2, Duration::from_secs(10)).await;
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE attempts = 2 AND state = 'pending'",
        1,
        Duration::from_secs(10),
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn lanes_keep_each_subjects_order_while_other_subjects_flow() {
    let db = TestDb::new().await;
    // Visit 1's first call fails once; everything else succeeds.
    let receiver = Receiver::start(Arc::new(|r, _| {
        if r.path == "/ordered" && what(r) == ("visit.created".to_owned(), "1".to_owned()) {
            static FAILED: std::sync::Once = std::sync::Once::new();
            let mut first = false;
            FAILED.call_once(|| first = true);
            if first {
                return Reply::status(500);
            }
        }
        Reply::status(200)
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/ordered"), "2.0").await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "1s")]),
    );
    sqlx::query(
        "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at)
         VALUES (1, 1, 10, now(), now()), (2, 1, 10, now(), now())",
    )
    .execute(&db.pool)
    .await
    .expect("visits");
    sqlx::query("UPDATE clinic.visits SET status = 30")
        .execute(&db.pool)
        .await
        .expect("start");
    sqlx::query("UPDATE clinic.visits SET status = 50")
        .execute(&db.pool)
        .await
        .expect("end");
    let got = receiver.wait_for(7, Duration::from_secs(15)).await;
    let order: Vec<(String, String)> = got.iter().map(what).collect();
    let of = |id: &str| -> Vec<&str> {
        order
            .iter()
            .filter(|(_, v)| v == id)
            .map(|(t, _)| t.as_str())
            .collect()
    };
    // Visit 1: its created is retried, and nothing of visit 1 overtakes it.
    assert_eq!(
        of("1"),
        [
            "visit.created",
            "visit.created",
            "visit.updated",
            "visit.ended"
        ]
    );
    assert_eq!(of("2"), ["visit.created", "visit.updated", "visit.ended"]);
    // Visit 2 did not wait for visit 1's retry.
    let v2_done = got
        .iter()
        .position(|r| what(r) == ("visit.ended".to_owned(), "2".to_owned()))
        .expect("visit 2 ended");
    let v1_retry = got
        .iter()
        .enumerate()
        .filter(|(_, r)| what(r) == ("visit.created".to_owned(), "1".to_owned()))
        .map(|(i, _)| i)
        .nth(1)
        .expect("retry");
    assert!(
        v2_done < v1_retry,
        "visit 2 flowed while visit 1 waited: {order:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn unordered_endpoints_let_later_events_overtake_a_retry() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|r, _| {
        if what(r).0 == "visit.created" {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let id = support::endpoint(&db.pool, 1, &receiver.url("/unordered"), "2.0").await;
    sqlx::query("UPDATE webhooks.endpoints SET ordered = false WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .expect("unordered");
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "1h")]),
    );
    let visit = support::visit(&db.pool, 1, 10).await;
    sqlx::query("UPDATE clinic.visits SET status = 30 WHERE id = $1")
        .bind(visit)
        .execute(&db.pool)
        .await
        .expect("start");
    let got = receiver
        .wait_until(Duration::from_secs(10), |r| {
            r.iter().any(|x| what(x).0 == "visit.updated")
        })
        .await;
    assert!(got.iter().any(|x| what(x).0 == "visit.updated"));
    worker.stop().await;
}

#[tokio::test]
async fn a_hanging_endpoint_cannot_take_the_capacity_of_a_healthy_one() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|r, _| {
        if r.path == "/hangs" {
            Reply::status(200).delay(Duration::from_secs(30))
        } else {
            Reply::status(200)
        }
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let hangs = support::endpoint(&db.pool, 1, &receiver.url("/hangs"), "2.0").await;
    support::max_in_flight(&db.pool, hangs, 4).await;
    support::endpoint(&db.pool, 1, &receiver.url("/healthy"), "2.0").await;
    // Two workers with eight slots each: without the bulkhead, the hanging
    // endpoint would take every slot; the cap holds across both processes.
    let few_slots = [("CLINIC_WEBHOOKS__WORKER__CONCURRENCY", "8")];
    let worker = InProcessWorker::start(&db, support::settings(&few_slots));
    let second = InProcessWorker::start(&db, support::settings(&few_slots));
    for _ in 0..30 {
        support::visit(&db.pool, 1, 10).await;
    }
    let got = receiver
        .wait_until(Duration::from_secs(10), |r| {
            r.iter().filter(|x| x.path == "/healthy").count() >= 30
        })
        .await;
    assert_eq!(got.iter().filter(|x| x.path == "/healthy").count(), 30);
    let hanging_calls = got.iter().filter(|x| x.path == "/hangs").count();
    assert!(
        hanging_calls <= 4,
        "bulkhead: {hanging_calls} calls in flight to the hanging endpoint"
    );
    worker.stop().await;
    second.stop().await;
}

/// `worker.concurrency` is the number of requests in flight in a process:
/// with 3 slots and a receiver that answers after 300 ms, no 4 requests
/// arrive within 250 ms of each other. (A slot is freed when its call is
/// over and its result queued for the log; the log write is not a request.)
#[tokio::test]
async fn worker_concurrency_bounds_the_requests_in_flight() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, _| {
        Reply::status(200).delay(Duration::from_millis(300))
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let id = support::endpoint(&db.pool, 1, &receiver.url("/slow"), "2.0").await;
    support::max_in_flight(&db.pool, id, 100).await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__WORKER__CONCURRENCY", "3")]),
    );
    support::visits(&db.pool, 1, 10, 9).await;
    let got = receiver.wait_for(9, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 9);
    let mut at: Vec<_> = got.iter().map(|r| r.at).collect();
    at.sort();
    for w in at.windows(4) {
        assert!(
            w[3] - w[0] >= Duration::from_millis(250),
            "4 requests within {:?}: more than 3 in flight",
            w[3] - w[0]
        );
    }
    worker.stop().await;
}

/// Holds back every write to the log (`webhooks.attempts`) until the
/// returned transaction is rolled back; reads go on.
async fn block_the_log(pool: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE webhooks.attempts IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("block writes to the log");
    tx
}

/// Three visits delivered by a worker with `concurrency` slots to an
/// endpoint with a bulkhead of `max_in_flight` whose receiver answers after
/// `answer_after`, while the log is blocked: waits for the three calls,
/// checks that none is logged yet and that each is once the log is
/// writable, and returns the calls as the receiver saw them.
async fn three_calls_while_the_log_is_blocked(
    concurrency: &str,
    max_in_flight: i32,
    answer_after: Duration,
) -> Vec<Received> {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(move |_, _| Reply::status(200).delay(answer_after)))
        .await
        .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let id = support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;
    support::max_in_flight(&db.pool, id, max_in_flight).await;
    let log_blocked = block_the_log(&db.pool).await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__WORKER__CONCURRENCY", concurrency)]),
    );
    support::visits(&db.pool, 1, 10, 3).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "three calls while the log is blocked");
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks.attempts")
        .fetch_one(&db.pool)
        .await
        .expect("count attempts");
    assert_eq!(logged, 0, "the log writes wait for the lock");

    log_blocked.rollback().await.expect("unblock the log");
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        3,
        Duration::from_secs(10),
    )
    .await;
    worker.stop().await;
    got
}

/// A call frees its slot once its result is queued for the log, not when
/// the log write commits: with 1 slot and the log blocked, all 3 calls are
/// made; nothing is lost, and each is logged once the log is writable.
#[tokio::test]
async fn a_call_frees_its_slot_before_its_log_write_commits() {
    three_calls_while_the_log_is_blocked("1", 100, Duration::ZERO).await;
}

/// An endpoint's bulkhead bounds requests in flight, not results waiting
/// for the log: with `max_in_flight = 1` and the log blocked, the three
/// calls are all made, one at a time; each is logged once the log is
/// writable.
#[tokio::test]
async fn a_finished_call_leaves_the_bulkhead_before_its_log_write_commits() {
    let got = three_calls_while_the_log_is_blocked("8", 1, Duration::from_millis(300)).await;
    let mut at: Vec<_> = got.iter().map(|r| r.at).collect();
    at.sort();
    for w in at.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(250),
            "2 requests within {:?}: more than 1 in flight",
            w[1] - w[0]
        );
    }
}

/// Under a trickle of single-event commits, a claim that found work is
/// followed by the next one no sooner than 2 ms later (`queue::PACE`), so
/// claims carry several deliveries instead of one claim per commit. With
/// the log blocked, every claimed delivery keeps its claim's lease, which
/// is the claim transaction's start plus `worker.lease`: one distinct
/// lease time per claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_under_a_trickle_of_commits_are_paced() {
    let db = TestDb::new().await;
    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let id = support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;
    support::max_in_flight(&db.pool, id, 1000).await;
    let log_blocked = block_the_log(&db.pool).await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__WORKER__CONCURRENCY", "1000")]),
    );
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    support::visit(&pool, 1, 10).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let got = receiver.wait_for(400, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 400);
    let claims: Vec<f64> = sqlx::query_scalar(
        "SELECT DISTINCT extract(epoch FROM lease_expires_at)::float8
           FROM webhooks.deliveries ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("lease times");
    let mut gaps_ms: Vec<f64> = claims.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect();
    gaps_ms.sort_by(f64::total_cmp);
    // The gaps are measured in the database, a little after each claim's
    // start in the worker, so a few may come out shorter than 2 ms; without
    // pacing, a tenth of them are under 1.7 ms here (1.2 – 1.7 ms).
    let p10 = gaps_ms[gaps_ms.len() / 10];
    assert!(
        p10 >= 1.9,
        "{} claims for 400 commits, a tenth of them less than {p10:.2} ms apart",
        claims.len()
    );

    log_blocked.rollback().await.expect("unblock the log");
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        400,
        Duration::from_secs(20),
    )
    .await;
    worker.stop().await;
}

const CLAIM: &str = include_str!("../../sql/worker/claim_deliveries.sql");

/// The worker's claim: up to `limit` deliveries for `worker`, in `tx`.
async fn claim(tx: &mut sqlx::PgConnection, worker: &str, limit: i32) -> usize {
    claim_ids(tx, worker, limit, &[]).await.len()
}

/// The same, telling the claim which of `worker`'s calls are over but not
/// yet logged (delivery id, attempt); returns the claimed (id, attempt).
async fn claim_ids(
    tx: &mut sqlx::PgConnection,
    worker: &str,
    limit: i32,
    finished: &[(i64, i32)],
) -> Vec<(i64, i32)> {
    use sqlx::Row;
    let (ids, attempts): (Vec<i64>, Vec<i32>) = finished.iter().copied().unzip();
    sqlx::query(CLAIM)
        .bind(limit)
        .bind(worker)
        .bind(60.0_f64)
        .bind(ids)
        .bind(attempts)
        .fetch_all(tx)
        .await
        .expect("claim")
        .iter()
        // By position: the statement names its columns "delivery_id!", "attempt!".
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// A delivery whose call is over counts against its endpoint's bulkhead no
/// longer, once its worker says so, although it stays `delivering` until
/// its result is logged. The attempt number fences a stale report, and
/// another worker's report frees nothing.
#[tokio::test]
async fn finished_calls_leave_the_bulkhead_but_stay_delivering() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    let id = support::endpoint(&db.pool, 1, "http://127.0.0.1:9/hook", "2.0").await;
    support::max_in_flight(&db.pool, id, 2).await;
    support::visits(&db.pool, 1, 10, 10).await;
    let mut conn = db.pool.acquire().await.expect("connection");

    let first = claim_ids(&mut conn, "a", 100, &[]).await;
    assert_eq!(first.len(), 2, "the bulkhead of 2 is full");
    assert!(claim_ids(&mut conn, "a", 100, &[]).await.is_empty());
    // A stale attempt number frees nothing, nor does a report of calls
    // leased to another worker (these are a's, not b's).
    let stale: Vec<_> = first.iter().map(|&(d, n)| (d, n - 1)).collect();
    assert!(claim_ids(&mut conn, "a", 100, &stale).await.is_empty());
    assert!(claim_ids(&mut conn, "b", 100, &first).await.is_empty());
    // Worker a's two calls are over: two more may go, and only two.
    let second = claim_ids(&mut conn, "a", 100, &first).await;
    assert_eq!(second.len(), 2);
    let all: Vec<_> = first.iter().chain(&second).copied().collect();
    assert_eq!(claim_ids(&mut conn, "a", 100, &first).await.len(), 0);
    assert_eq!(claim_ids(&mut conn, "a", 100, &all).await.len(), 2);
    let delivering: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhooks.deliveries WHERE state = 'delivering'")
            .fetch_one(&mut *conn)
            .await
            .expect("count");
    assert_eq!(delivering, 6, "finished calls stay delivering until logged");
    // Another worker, with no finished calls of its own, counts every
    // delivering row as in flight.
    assert!(
        claim_ids(&mut conn, "c", 100, &[]).await.is_empty(),
        "the bulkhead of 2 is over-full"
    );
    sqlx::query("UPDATE webhooks.endpoints SET max_in_flight = 7")
        .execute(&mut *conn)
        .await
        .expect("widen the bulkhead");
    assert_eq!(
        claim_ids(&mut conn, "c", 100, &[]).await.len(),
        1,
        "one slot left of 7 with 6 delivering"
    );
}

#[tokio::test]
async fn one_claimer_per_endpoint_and_it_sees_every_earlier_claim() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    let id = support::endpoint(&db.pool, 1, "http://127.0.0.1:9/hook", "2.0").await;
    support::max_in_flight(&db.pool, id, 5).await;
    support::visits(&db.pool, 1, 10, 20).await;

    // Worker A's claim fills the bulkhead and holds the endpoint's claim
    // lock until A commits ...
    let mut a = db.pool.begin().await.expect("begin a");
    assert_eq!(claim(&mut a, "a", 100).await, 5);
    // ... so worker B, meanwhile, claims nothing ...
    let mut b = db.pool.begin().await.expect("begin b");
    assert_eq!(claim(&mut b, "b", 100).await, 0);
    b.commit().await.expect("commit b");
    a.commit().await.expect("commit a");
    // ... and after A commits, B's claim sees A's five in flight: the
    // bulkhead is full, nothing more is handed out.
    let mut b = db.pool.begin().await.expect("begin b again");
    assert_eq!(claim(&mut b, "b", 100).await, 0);
    b.commit().await.expect("commit b again");
    let in_flight: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhooks.deliveries WHERE state = 'delivering'")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(in_flight, 5);
}

#[tokio::test]
async fn a_claim_locks_only_endpoints_with_due_work_and_no_more_than_it_can_fill() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    for i in 0..6 {
        support::endpoint(&db.pool, 1, &format!("http://127.0.0.1:9/{i}"), "2.0").await;
    }
    support::visit(&db.pool, 1, 10).await;
    // Two endpoints have nothing due: they must not be locked.
    sqlx::query("DELETE FROM webhooks.deliveries WHERE endpoint_id IN (SELECT id FROM webhooks.endpoints ORDER BY id LIMIT 2)")
        .execute(&db.pool)
        .await
        .expect("delete");
    let advisory_locks =
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()";

    let mut tx = db.pool.begin().await.expect("begin");
    let claimed = claim(&mut tx, "w", 2).await;
    assert_eq!(claimed, 2);
    let locks: i64 = sqlx::query_scalar(advisory_locks)
        .fetch_one(&mut *tx)
        .await
        .expect("locks");
    assert_eq!(
        locks, 2,
        "a claim of 2 locks 2 of the 4 endpoints with due work"
    );
    tx.rollback().await.expect("rollback");

    let mut tx = db.pool.begin().await.expect("begin");
    assert_eq!(claim(&mut tx, "w", 100).await, 4);
    let locks: i64 = sqlx::query_scalar(advisory_locks)
        .fetch_one(&mut *tx)
        .await
        .expect("locks");
    assert_eq!(locks, 4, "endpoints without due work are not locked");
    tx.commit().await.expect("commit");
}

/// Rows of `webhooks.deliveries` this transaction fetched through indexes;
/// fails if it scanned the table.
async fn queue_rows_read(tx: &mut sqlx::PgConnection) -> i64 {
    let (fetched, scanned): (i64, i64) = sqlx::query_as(
        "SELECT idx_tup_fetch, seq_tup_read FROM pg_stat_xact_user_tables
          WHERE schemaname = 'webhooks' AND relname = 'deliveries'",
    )
    .fetch_one(tx)
    .await
    .expect("this transaction's reads of webhooks.deliveries");
    assert_eq!(scanned, 0, "no sequential scan of the queue");
    fetched
}

/// A queue table's statistics are always stale: the planner saw it empty, and
/// now thousands of deliveries are due. A claim must still read only what it
/// takes (plus the bulkhead count), not every due delivery: the claim runs
/// back to back under load, so a plan that scans the backlog makes every
/// claim as slow as the backlog is long.
#[tokio::test]
async fn a_claim_reads_what_it_takes_not_the_whole_backlog_even_on_stale_statistics() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    let id = support::endpoint(&db.pool, 1, "http://127.0.0.1:9/hook", "2.0").await;
    support::max_in_flight(&db.pool, id, 100).await;
    sqlx::query("ANALYZE webhooks.deliveries")
        .execute(&db.pool)
        .await
        .expect("analyze the empty queue");
    support::visits(&db.pool, 1, 10, 3000).await;

    let mut tx = db.pool.begin().await.expect("begin");
    // Five claims, so that PL/pgSQL has settled on its cached plans.
    for _ in 0..5 {
        assert_eq!(claim(&mut tx, "w", 10).await, 10);
    }
    let fetched = queue_rows_read(&mut tx).await;
    assert!(
        fetched < 600,
        "5 claims of 10 from 3,000 due deliveries fetched {fetched} rows"
    );
    tx.rollback().await.expect("rollback");
}

/// PL/pgSQL keeps a claim's plan for the session. A worker that started on
/// an empty queue planned on an empty table; when the queue has grown, a
/// claim must still use its indexes (here: the probe for due retries, with
/// 3,000 retries not yet due).
#[tokio::test]
async fn a_claim_stays_on_its_indexes_after_planning_on_an_empty_queue() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, "http://127.0.0.1:9/hook", "2.0").await;
    let mut worker = db.pool.acquire().await.expect("the worker's session");
    for _ in 0..8 {
        assert_eq!(claim(&mut worker, "w", 10).await, 0);
    }
    support::visits(&db.pool, 1, 10, 3000).await;
    sqlx::query(
        "UPDATE webhooks.deliveries SET attempts = 1, next_attempt_at = now() + interval '1 hour'",
    )
    .execute(&db.pool)
    .await
    .expect("make them retries, not yet due");

    let mut tx = sqlx::Connection::begin(&mut *worker).await.expect("begin");
    assert_eq!(claim(&mut tx, "w", 10).await, 0);
    let fetched = queue_rows_read(&mut tx).await;
    assert!(
        fetched < 100,
        "a claim with nothing due fetched {fetched} rows"
    );
    tx.rollback().await.expect("rollback");
}

#[tokio::test]
async fn first_attempts_go_before_a_backlog_of_retries() {
    let db = TestDb::new().await;
    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let id = support::endpoint(&db.pool, 1, &receiver.url("/one-at-a-time"), "2.0").await;
    support::max_in_flight(&db.pool, id, 1).await;
    // Twenty deliveries that already failed once and are due again ...
    support::visits(&db.pool, 1, 10, 20).await;
    sqlx::query("UPDATE webhooks.deliveries SET attempts = 1, next_attempt_at = now() - interval '1 minute'")
        .execute(&db.pool)
        .await
        .expect("make them retries");
    // ... and one fresh event.
    let fresh = support::visit(&db.pool, 1, 10).await;
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    let got = receiver.wait_for(21, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 21);
    assert_eq!(
        what(&got[0]).1,
        fresh.to_string(),
        "the first attempt went first"
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_event_whose_transaction_did_not_notify_is_still_delivered() {
    let db = TestDb::new().await;
    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__WORKER__POLL_INTERVAL", "300ms")]),
    );
    // T holds the notifier slot and stays open ...
    let mut t = db.pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (1, 1, 10, now(), now())",
    )
    .execute(&mut *t)
    .await
    .expect("insert in T");
    // ... so U commits without a NOTIFY of its own.
    sqlx::query(
        "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (2, 1, 10, now(), now())",
    )
    .execute(&db.pool)
    .await
    .expect("insert in U");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        what(&got[0]).1,
        "2",
        "U's event arrived while T was still open"
    );
    t.commit().await.expect("commit T");
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(what(&got[1]).1, "1");
    worker.stop().await;
}

const RECORD: &str = include_str!("../../sql/worker/record_attempts.sql");
const RECORD_LATE: &str = include_str!("../../sql/worker/record_late_attempts.sql");

/// Records worker `worker`'s successful call `(delivery, attempt)` to
/// `endpoint` as the recorder does: the batch statement, then the one for
/// results that moved nothing. Returns how many results it reports late.
async fn record_success(
    pool: &sqlx::PgPool,
    worker: &str,
    endpoint: i64,
    (delivery, attempt): (i64, i32),
) -> usize {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let (event_id, event_type): (uuid::Uuid, String) = sqlx::query_as(
        "SELECT ev.id, ev.type FROM webhooks.deliveries d
           JOIN webhooks.events ev ON ev.id = d.event_id WHERE d.id = $1",
    )
    .bind(delivery)
    .fetch_one(pool)
    .await
    .expect("the delivery's event");
    let bind = |sql: &'static str| {
        sqlx::query(sql)
            .bind(vec![delivery])
            .bind(vec![endpoint])
            .bind(vec![attempt])
            .bind(vec![now])
            .bind(vec![1.0_f64])
            .bind(vec!["http://127.0.0.1:9/hook"])
            .bind(vec![Some("{}")])
            .bind(vec![Some("{}")])
            .bind(vec![Some(200_i16)])
            .bind(vec![Some("{}")])
            .bind(vec![Some("")])
            .bind(vec![false])
            .bind(vec!["succeeded"])
            .bind(vec![None::<&str>])
            .bind(vec![None::<&str>])
            .bind(vec![None::<f64>])
            .bind(vec![event_id])
            .bind(vec![event_type.clone()])
            .bind(worker)
    };
    let unmoved = bind(RECORD)
        .bind(3600.0_f64)
        .fetch_all(pool)
        .await
        .expect("record")
        .len();
    if unmoved == 0 {
        return 0;
    }
    bind(RECORD_LATE)
        .fetch_all(pool)
        .await
        .expect("record late")
        .len()
}

/// A batch written again (the database went away before acknowledging a
/// commit that did take place) changes nothing: still one row per call, no
/// result reported late.
#[tokio::test]
async fn recording_a_batch_twice_logs_each_call_once() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    let id = support::endpoint(&db.pool, 1, "http://127.0.0.1:9/hook", "2.0").await;
    support::visit(&db.pool, 1, 10).await;
    let mut conn = db.pool.acquire().await.expect("connection");
    let claimed = claim_ids(&mut conn, "a", 10, &[]).await;
    assert_eq!(claimed.len(), 1);
    drop(conn);

    assert_eq!(record_success(&db.pool, "a", id, claimed[0]).await, 0);
    assert_eq!(
        record_success(&db.pool, "a", id, claimed[0]).await,
        0,
        "not late"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks.attempts")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    // Another worker's result for the same attempt is late, and logged.
    assert_eq!(record_success(&db.pool, "b", id, claimed[0]).await, 1);
}
