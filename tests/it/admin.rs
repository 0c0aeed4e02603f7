//! What DBAs and operators do: redeliver from SQL and the CLI, replay an old
//! event to a newer endpoint, endpoint health, the health views, and the
//! named SQL files run with the real psql client.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clinic_webhooks_test_support::{Receiver, Reply};
use uuid::Uuid;

use crate::support::{self, InProcessWorker, TestDb, scalar};

/// A receiver that fails with 500 until `heal` is set.
async fn flaky() -> (Receiver, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let receiver = Receiver::start(Arc::new(move |_, _| {
        if h.load(Ordering::SeqCst) {
            Reply::status(200)
        } else {
            Reply::status(500)
        }
    }))
    .await
    .expect("receiver");
    (receiver, healthy)
}

#[tokio::test]
async fn failed_deliveries_are_redelivered_from_sql_with_the_same_webhook_id() {
    let db = TestDb::new().await;
    let (receiver, healthy) = flaky().await;
    support::clinic_with_patient(&db.pool).await;
    let endpoint = support::endpoint(&db.pool, 1, &receiver.url("/flaky"), "2.0").await;
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    for _ in 0..3 {
        support::visit(&db.pool, 1, 10).await;
    }
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'failed'",
        3,
        Duration::from_secs(15),
    )
    .await;
    healthy.store(true, Ordering::SeqCst);

    // One delivery.
    let first: i64 = scalar(&db.pool, "SELECT min(id) FROM webhooks.deliveries").await;
    let queued: Option<i64> = sqlx::query_scalar("SELECT webhooks.redeliver($1)")
        .bind(first)
        .fetch_one(&db.pool)
        .await
        .expect("redeliver");
    assert_eq!(queued, Some(first));
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        1,
        Duration::from_secs(10),
    )
    .await;
    // The log shows it as a fourth attempt of the same delivery.
    let attempts: Vec<(i32, String)> = sqlx::query_as(
        "SELECT attempt, outcome::text FROM webhooks.delivery_log WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(first)
    .fetch_all(&db.pool)
    .await
    .expect("log");
    assert_eq!(attempts.last(), Some(&(4, "succeeded".to_owned())));
    let ids: Vec<String> = receiver
        .requests()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    let event: Uuid = sqlx::query_scalar("SELECT event_id FROM webhooks.deliveries WHERE id = $1")
        .bind(first)
        .fetch_one(&db.pool)
        .await
        .expect("event");
    assert_eq!(
        ids.iter().filter(|id| **id == event.to_string()).count(),
        4,
        "every call of the delivery carried its event id"
    );

    // Bulk recovery of the rest, the way Svix calls it.
    let recovered: i32 =
        sqlx::query_scalar("SELECT webhooks.recover($1, now() - interval '1 hour')")
            .bind(endpoint)
            .fetch_one(&db.pool)
            .await
            .expect("recover");
    assert_eq!(recovered, 2);
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        3,
        Duration::from_secs(10),
    )
    .await;
    let missing = sqlx::query("SELECT webhooks.redeliver(999999)")
        .execute(&db.pool)
        .await
        .expect_err("unknown delivery");
    assert!(
        missing.to_string().contains("no delivery with id 999999"),
        "{missing}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_old_event_is_replayed_to_a_newer_endpoint_in_its_version() {
    let db = TestDb::new().await;
    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::clinic(&db.pool, 2, "other").await;
    support::endpoint(&db.pool, 1, &receiver.url("/v1"), "1.0").await;
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    sqlx::query(
        "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at, status)
         VALUES (5, 1, 10, to_timestamp(1546950546), to_timestamp(1546951446), 40)",
    )
    .execute(&db.pool)
    .await
    .expect("visit");
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // The visit changes afterwards: the replay must still send the old snapshot.
    sqlx::query("UPDATE clinic.visits SET provider_id = 10 WHERE id = 5")
        .execute(&db.pool)
        .await
        .expect("update");
    receiver.wait_for(2, Duration::from_secs(10)).await;

    let v2 = support::endpoint(&db.pool, 1, &receiver.url("/v2-later"), "2.0").await;
    let event: Uuid = scalar(
        &db.pool,
        "SELECT id FROM webhooks.events WHERE type = 'visit.created'",
    )
    .await;
    let queued: Vec<i64> = sqlx::query_scalar("SELECT webhooks.redeliver_event($1, $2)")
        .bind(event)
        .bind(v2)
        .fetch_all(&db.pool)
        .await
        .expect("replay");
    assert_eq!(queued.len(), 1);
    let got = receiver
        .wait_until(Duration::from_secs(10), |r| {
            r.iter().any(|x| x.path == "/v2-later")
        })
        .await;
    let replay = got
        .iter()
        .find(|r| r.path == "/v2-later")
        .expect("replayed");
    assert_eq!(
        replay.header("webhook-id"),
        Some(event.to_string().as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&replay.body).expect("json");
    assert_eq!(body["version"], "2.0");
    assert_eq!(body["clinic_code"], "c1");
    assert_eq!(body["data"]["status"], "cancelled");
    assert_eq!(body["data"]["start"], 1546950546);
    assert_eq!(
        body["data"]["provider_id"],
        serde_json::Value::Null,
        "as of the change"
    );

    // Never to another clinic's endpoint.
    let foreign = support::endpoint(&db.pool, 2, &receiver.url("/foreign"), "2.0").await;
    let err = sqlx::query("SELECT webhooks.redeliver_event($1, $2)")
        .bind(event)
        .bind(foreign)
        .execute(&db.pool)
        .await
        .expect_err("cross-clinic replay");
    assert!(err.to_string().contains("belongs to clinic 2"), "{err}");
    worker.stop().await;
}

#[tokio::test]
async fn a_410_disables_at_once_and_a_long_failure_streak_disables_keeping_deliveries() {
    let db = TestDb::new().await;
    let gone = Receiver::start(Arc::new(|_, _| Reply::status(410)))
        .await
        .expect("receiver");
    let (flaky, healthy) = flaky().await;
    support::clinic_with_patient(&db.pool).await;
    let gone_id = support::endpoint(&db.pool, 1, &gone.url("/gone"), "2.0").await;
    let flaky_id = support::endpoint(&db.pool, 1, &flaky.url("/flaky"), "2.0").await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[
            ("CLINIC_WEBHOOKS__HEALTH__DISABLE_AFTER", "1s"),
            (
                "CLINIC_WEBHOOKS__RETRY__SCHEDULE",
                "300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms",
            ),
        ]),
    );
    support::visit(&db.pool, 1, 10).await;
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.endpoints WHERE NOT enabled",
        2,
        Duration::from_secs(15),
    )
    .await;
    let reasons: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, disabled_reason FROM webhooks.endpoints ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("reasons");
    assert_eq!(
        reasons[0],
        (gone_id, "the endpoint answered 410 Gone".to_owned())
    );
    assert_eq!(reasons[1].0, flaky_id);
    assert!(
        reasons[1].1.starts_with("every delivery failed since"),
        "{reasons:?}"
    );

    // Disabled: the flaky endpoint's delivery is kept, pending, and not attempted.
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = $1 AND state = 'pending'",
    )
    .bind(flaky_id)
    .fetch_one(&db.pool)
    .await
    .expect("pending");
    assert_eq!(pending, 1);
    let calls_while_disabled = flaky.count();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(flaky.count(), calls_while_disabled);

    // Re-enabled by an admin: it resumes and succeeds.
    healthy.store(true, Ordering::SeqCst);
    sqlx::query("UPDATE webhooks.endpoints SET enabled = true WHERE id = $1")
        .bind(flaky_id)
        .execute(&db.pool)
        .await
        .expect("enable");
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let (reason, failing): (Option<String>, Option<f64>) = sqlx::query_as(
        "SELECT disabled_reason, extract(epoch FROM failing_since)::float8 FROM webhooks.endpoints WHERE id = $1",
    )
    .bind(flaky_id)
    .fetch_one(&db.pool)
    .await
    .expect("endpoint");
    assert_eq!((reason, failing), (None, None));
    worker.stop().await;
}

#[tokio::test]
async fn health_views_show_stuck_deliveries_blocked_lanes_and_rates() {
    let db = TestDb::new().await;
    let (receiver, _healthy) = flaky().await;
    support::clinic_with_patient(&db.pool).await;
    let endpoint = support::endpoint(&db.pool, 1, &receiver.url("/flaky"), "2.0").await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "1h")]),
    );
    let visit = support::visit(&db.pool, 1, 10).await;
    sqlx::query("UPDATE clinic.visits SET status = 30 WHERE id = $1")
        .bind(visit)
        .execute(&db.pool)
        .await
        .expect("update");
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.attempts",
        1,
        Duration::from_secs(10),
    )
    .await;
    worker.stop().await;

    let (subject, waiting, status): (String, i64, Option<i16>) =
        sqlx::query_as("SELECT subject, waiting, head_last_status FROM webhooks.blocked_lanes")
            .fetch_one(&db.pool)
            .await
            .expect("blocked lane");
    assert_eq!(
        (subject, waiting, status),
        (format!("visit:{visit}"), 1, Some(500))
    );

    let (calls, rate): (i64, Option<f64>) = sqlx::query_as(
        "SELECT calls_1h, success_rate_1h::float8 FROM webhooks.endpoint_health WHERE endpoint_id = $1",
    )
    .bind(endpoint)
    .fetch_one(&db.pool)
    .await
    .expect("health");
    assert_eq!(calls, 1);
    assert_eq!(rate, Some(0.0));

    let (pending, oldest): (i64, Option<f64>) = sqlx::query_as(
        "SELECT pending, extract(epoch FROM oldest_pending_age)::float8 FROM webhooks.queue_overview WHERE endpoint_id = $1",
    )
    .bind(endpoint)
    .fetch_one(&db.pool)
    .await
    .expect("overview");
    assert_eq!(pending, 2);
    assert!(oldest.is_some_and(|s| s >= 0.0));

    // A lease that ran out (aged with SQL) shows as stuck.
    sqlx::query(
        "UPDATE webhooks.deliveries SET state = 'delivering', leased_by = 'gone-worker',
                lease_expires_at = now() - interval '1 minute' WHERE id = (SELECT min(id) FROM webhooks.deliveries)",
    )
    .execute(&db.pool)
    .await
    .expect("age lease");
    let stuck: String = scalar(&db.pool, "SELECT leased_by FROM webhooks.stuck_deliveries").await;
    assert_eq!(stuck, "gone-worker");
}

fn psql(db: &TestDb, args: &[&str]) -> String {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &db.url])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_named_sql_files_run_in_psql_and_the_cli_redelivers() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, n| {
        if n == 0 {
            Reply::status(400)
        } else {
            Reply::status(200)
        }
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/hook"), "1.0").await;
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    support::visit(&db.pool, 1, 10).await;
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'failed'",
        1,
        Duration::from_secs(10),
    )
    .await;

    let list = psql(
        &db,
        &[
            "-v",
            "clinic_id=1",
            "-v",
            "limit=10",
            "-f",
            "sql/log/calls_by_clinic.sql",
        ],
    );
    assert!(
        list.contains("visit.created") && list.contains("|400|"),
        "{list}"
    );
    // The worker logs each call with its event, which the lists read.
    let unlabelled: i64 = scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.attempts a JOIN webhooks.deliveries d ON d.id = a.delivery_id
          WHERE a.event_id IS DISTINCT FROM d.event_id OR a.event_type IS DISTINCT FROM 'visit.created'",
    )
    .await;
    assert_eq!(unlabelled, 0);
    let by_type = psql(
        &db,
        &[
            "-v",
            "clinic_id=1",
            "-v",
            "event_type='visit.created'",
            "-v",
            "limit=10",
            "-f",
            "sql/log/calls_by_event_type.sql",
        ],
    );
    assert_eq!(
        by_type.matches("|400|").count(),
        list.matches("|400|").count(),
        "{by_type}"
    );
    let (attempt, called_at): (i64, String) = sqlx::query_as(
        "SELECT id, started_at::text FROM webhooks.attempts ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the last call");
    let detail = psql(
        &db,
        &[
            "-v",
            &format!("attempt_id={attempt}"),
            "-v",
            &format!("called_at='{called_at}'"),
            "-f",
            "sql/log/call_detail.sql",
        ],
    );
    assert!(
        detail.contains("webhook-signature") && detail.contains(r#""version":"1.0""#),
        "{detail}"
    );
    let event: Uuid = scalar(&db.pool, "SELECT id FROM webhooks.events").await;
    let history = psql(
        &db,
        &[
            "-v",
            &format!("event_id='{event}'"),
            "-f",
            "sql/log/delivery_history.sql",
        ],
    );
    assert!(history.contains("failed"), "{history}");
    for file in [
        "sql/admin/status.sql",
        "sql/health/stuck_deliveries.sql",
        "sql/health/blocked_lanes.sql",
    ] {
        psql(&db, &["-f", file]);
    }
    psql(
        &db,
        &["-v", "clinic_id=1", "-f", "sql/health/endpoint_health.sql"],
    );

    // The CLI, against the same database.
    let cli = |args: &[&str]| support::cli(&db.url, args);
    let delivery: i64 = scalar(&db.pool, "SELECT id FROM webhooks.deliveries").await;
    let out = cli(&["redeliver", "--delivery", &delivery.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued again"));
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let out = cli(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["redeliver", "--event", "not-a-uuid"]);
    assert!(!out.status.success(), "a bad argument is an error");
    // What the database refuses reaches the operator as its message.
    let out = cli(&["redeliver", "--delivery", "999999"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no delivery with id 999999") && !stderr.contains("database:"),
        "{stderr}"
    );
    let out = cli(&["redeliver", "--endpoint", "1", "--since", "banana"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("banana"), "{stderr}");
    worker.stop().await;
}

/// The admin panel's read-only role reads the log, the health views and the
/// endpoint settings, and nothing that holds a secret or changes anything.
#[tokio::test]
async fn the_reader_role_reads_the_log_but_no_secret_and_changes_nothing() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, "http://127.0.0.1:9/hook", "2.0").await;
    support::visit(&db.pool, 1, 10).await;

    let mut conn = db.pool.acquire().await.expect("connection");
    sqlx::query("SET ROLE clinic_webhooks_reader")
        .execute(&mut *conn)
        .await
        .expect("the migration creates clinic_webhooks_reader");
    for allowed in [
        "SELECT count(*) FROM webhooks.delivery_log",
        "SELECT count(*) FROM webhooks.delivery_log_detail",
        "SELECT count(*) FROM webhooks.queue_overview",
        "SELECT count(*) FROM webhooks.endpoint_health",
        "SELECT count(url) FROM webhooks.endpoints",
    ] {
        sqlx::query(allowed)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{allowed}: {e}"));
    }
    for refused in [
        "SELECT secret FROM webhooks.endpoints",
        "SELECT count(*) FROM webhooks.deliveries",
        "SELECT count(*) FROM webhooks.attempts",
        "SELECT count(*) FROM webhooks.claim_deliveries(10, 'reader', 60, '{}', '{}')",
        "SELECT webhooks.redeliver(1)",
        "UPDATE webhooks.endpoints SET enabled = false",
    ] {
        let err = sqlx::query(refused)
            .execute(&mut *conn)
            .await
            .expect_err(refused);
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{refused}: {err}");
    }
    sqlx::query("RESET ROLE")
        .execute(&mut *conn)
        .await
        .expect("reset");
    let pending: i64 = scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'pending'",
    )
    .await;
    assert_eq!(pending, 1, "nothing was claimed through the reader role");
}
