//! Recovery guarantees, with real worker processes: a worker that dies
//! gives its deliveries back within seconds (to another worker, or to
//! itself restarted), and they stop counting against the endpoint's
//! bulkhead; a worker that stalls loses its work after its lease, and its
//! late result is fenced out and logged as late, once.

use std::collections::BTreeSet;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clinic_webhooks_test_support::{Received, Receiver, Reply};

use crate::support::{self, InProcessWorker, TestDb};

/// The bound the README's "Guarantees" states for a dead worker's deliveries.
const RESENT_WITHIN: Duration = Duration::from_secs(5);

fn webhook_ids(requests: &[Received]) -> BTreeSet<String> {
    requests
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

/// Waits until the worker processes have registered (their presence locks
/// are held), so that the one about to be killed is known to be alive.
async fn wait_for_workers(db: &TestDb, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks.workers")
            .fetch_one(&db.pool)
            .await
            .expect("count workers");
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} workers did not register");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn stdout_of(child: &mut Child) -> String {
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
    }
    out
}

async fn stop(child: &mut Child) -> String {
    support::signal(child, "TERM");
    support::wait_exit(child, Duration::from_secs(15))
        .await
        .expect("the worker stopped");
    stdout_of(child)
}

/// 16 calls hang at the receiver and fill the endpoint's bulkhead (16) with
/// worker A's leases while 34 more deliveries wait; A is killed. The other
/// worker, B, sends A's 16 again and the 34 behind them within seconds, long
/// before A's 30 s leases would have expired.
#[tokio::test]
async fn a_killed_worker_s_deliveries_go_to_the_other_worker_within_seconds() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, n| {
        if n < 16 {
            Reply::status(200).delay(Duration::from_secs(20))
        } else {
            Reply::status(200)
        }
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;
    let env = [("CLINIC_WEBHOOKS__WORKER__LEASE", "30s")];
    let mut a = support::spawn_binary(&db, &env);
    wait_for_workers(&db, 1).await;
    support::visits(&db.pool, 1, 10, 50).await;
    let held = receiver.wait_for(16, Duration::from_secs(15)).await;
    assert_eq!(held.len(), 16, "worker A holds a full bulkhead");
    let mut b = support::spawn_binary(&db, &env);
    wait_for_workers(&db, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.count(),
        16,
        "B waits: the bulkhead is full of A's calls"
    );

    a.kill().expect("SIGKILL");
    let killed = Instant::now();
    a.wait().expect("reaped");
    let all = receiver
        .wait_until(RESENT_WITHIN, |r| webhook_ids(&r[16..]).len() == 50)
        .await;
    let elapsed = killed.elapsed();
    eprintln!(
        "a dead worker's 16 deliveries and the 34 behind them arrived {elapsed:?} after the kill"
    );
    assert!(
        elapsed < RESENT_WITHIN,
        "after {elapsed:?} only {} of 50 arrived",
        webhook_ids(&all[16..]).len()
    );
    assert!(webhook_ids(&all[16..]).is_superset(&webhook_ids(&held)));
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        50,
        Duration::from_secs(5),
    )
    .await;

    // The log: A's 16 lost attempts, taken back by B and named for what
    // happened, and the first attempt used no place in the retry schedule.
    let b_name: String = sqlx::query_scalar("SELECT name FROM webhooks.workers")
        .fetch_one(&db.pool)
        .await
        .expect("B is the one worker left");
    let lost: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT error_kind, worker, error FROM webhooks.attempts WHERE outcome = 'abandoned'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("abandoned attempts");
    assert_eq!(lost.len(), 16);
    for (kind, worker, error) in &lost {
        assert_eq!(kind, "worker_lost");
        assert_eq!(worker, &b_name, "the row names the worker that took over");
        assert!(error.contains("is gone"), "{error}");
    }
    let retries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhooks.deliveries WHERE attempts - retry_base <> 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("schedule positions");
    assert_eq!(retries, 0, "a lost attempt uses no place in the schedule");
    let out = stop(&mut b).await;
    assert!(out.contains("took back deliveries"), "{out}");
}

/// The same worker, restarted at once after a SIGKILL, sends what the dead
/// process held within seconds.
#[tokio::test]
async fn a_killed_worker_restarted_sends_its_deliveries_again_within_seconds() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, n| {
        if n < 10 {
            Reply::status(200).delay(Duration::from_secs(20))
        } else {
            Reply::status(204)
        }
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;
    let mut first = support::spawn_binary(&db, &[]);
    support::visits(&db.pool, 1, 10, 10).await;
    let held = receiver.wait_for(10, Duration::from_secs(15)).await;
    assert_eq!(held.len(), 10);

    first.kill().expect("SIGKILL");
    let killed = Instant::now();
    first.wait().expect("reaped");
    let mut second = support::spawn_binary(&db, &[]);
    let all = receiver
        .wait_until(RESENT_WITHIN + Duration::from_secs(1), |r| r.len() >= 20)
        .await;
    let elapsed = killed.elapsed();
    eprintln!("a restarted worker sent the 10 lost deliveries {elapsed:?} after the kill");
    assert_eq!(all.len(), 20, "each lost call sent once more");
    assert_eq!(webhook_ids(&all[..10]), webhook_ids(&all[10..]));
    assert!(
        elapsed < RESENT_WITHIN + Duration::from_secs(1),
        "{elapsed:?} (includes the restart)"
    );
    // The log tells the story: the lost attempts, then the successful ones.
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        10,
        Duration::from_secs(5),
    )
    .await;
    let story: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT outcome::text, error_kind, count(*) FROM webhooks.attempts GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("story");
    assert_eq!(
        story,
        [
            ("abandoned".to_owned(), Some("worker_lost".to_owned()), 10),
            ("succeeded".to_owned(), None, 10)
        ]
    );
    stop(&mut second).await;
}

/// Worker A stalls (SIGSTOP) with a call in flight; worker B takes the
/// delivery over when A's lease expires and delivers it. When A wakes
/// (SIGCONT), its result is fenced out: the delivery stays succeeded, the
/// receiver gets nothing more, the log has one row per HTTP call (A's late
/// one in place of the 'abandoned' row, B's success), and A says so.
#[tokio::test]
async fn a_stalled_worker_loses_its_work_after_its_lease_and_its_late_result_is_fenced() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, n| {
        if n == 0 {
            Reply::status(503).delay(Duration::from_millis(500))
        } else {
            Reply::status(200)
        }
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;
    let env = [
        ("CLINIC_WEBHOOKS__HTTP__TIMEOUT", "2s"),
        ("CLINIC_WEBHOOKS__WORKER__LEASE", "7s"),
    ];
    let mut a = support::spawn_binary(&db, &env);
    wait_for_workers(&db, 1).await;
    let a_name: String = sqlx::query_scalar("SELECT name FROM webhooks.workers")
        .fetch_one(&db.pool)
        .await
        .expect("A's name");
    support::visit(&db.pool, 1, 10).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    support::signal(&a, "STOP");
    let stopped = Instant::now();
    let mut b = support::spawn_binary(&db, &env);

    // B takes over after A's lease (7 s) and delivers.
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        1,
        Duration::from_secs(15),
    )
    .await;
    let took_over = stopped.elapsed();
    eprintln!(
        "a stalled worker's delivery was taken over and delivered {took_over:?} after SIGSTOP"
    );
    assert!(
        took_over >= Duration::from_secs(6),
        "not before the lease: {took_over:?}"
    );
    let abandoned: (String, String) = sqlx::query_as(
        "SELECT error_kind, worker FROM webhooks.attempts WHERE outcome = 'abandoned'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the lost attempt");
    assert_eq!(abandoned.0, "lease_expired");
    assert_ne!(abandoned.1, a_name, "named for the worker that took over");

    support::signal(&a, "CONT");
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.attempts WHERE outcome = 'late'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let rows: Vec<(i32, String, Option<String>, String)> = sqlx::query_as(
        "SELECT attempt, outcome::text, error_kind, worker FROM webhooks.attempts ORDER BY attempt",
    )
    .fetch_all(&db.pool)
    .await
    .expect("the log");
    assert_eq!(rows.len(), 2, "one row per HTTP call: {rows:?}");
    assert_eq!((rows[0].0, rows[0].1.as_str()), (1, "late"));
    assert_eq!(rows[0].3, a_name, "the late call is A's");
    assert!(rows[0].2.is_some(), "what A's call met is kept");
    assert_eq!((rows[1].0, rows[1].1.as_str()), (2, "succeeded"));
    let (state, next): (String, Option<String>) = sqlx::query_as(
        "SELECT d.state::text, (SELECT a.next_attempt_at::text FROM webhooks.attempts a
                                 WHERE a.outcome = 'late') FROM webhooks.deliveries d",
    )
    .fetch_one(&db.pool)
    .await
    .expect("delivery");
    assert_eq!(state, "succeeded", "the fence held");
    assert_eq!(next, None, "a late result schedules nothing");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 2, "nothing was sent again");
    let a_out = stop(&mut a).await;
    assert!(
        a_out.contains("logged as late"),
        "A says it lost the lease:\n{a_out}"
    );
    stop(&mut b).await;
}

/// Two processes cannot share a configured worker name: leases and the
/// presence lock need one name per process.
#[tokio::test]
async fn a_second_worker_with_the_same_name_is_refused() {
    let db = TestDb::new().await;
    let named = [("CLINIC_WEBHOOKS__WORKER__NAME", "clinic-worker-1")];
    let first = InProcessWorker::start(&db, support::settings(&named));
    wait_for_workers(&db, 1).await;
    let err = clinic_webhooks::worker::run(
        &support::settings(&named),
        db.pool.clone(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("the name is taken");
    assert!(
        err.to_string()
            .contains("a worker named clinic-worker-1 is running already"),
        "{err}"
    );
    first.stop().await;
    // Once the first has stopped, the name is free again.
    let again = InProcessWorker::start(&db, support::settings(&named));
    wait_for_workers(&db, 1).await;
    again.stop().await;
}
