//! Signed delivery to a real receiver, the retry rules, and the log.

use std::sync::Arc;
use std::time::Duration;

use clinic_webhooks_test_support::{Receiver, Reply};
use serde_json::Value;
use sqlx::PgPool;

use crate::support::{self, InProcessWorker, TestDb};

/// event_type, clinic_code, response_status, outcome, request_headers,
/// request_body, response_headers, response_body
type DetailRow = (String, String, i16, String, Value, String, Value, String);

#[derive(Debug, sqlx::FromRow)]
struct LogRow {
    attempt: i32,
    response_status: Option<i16>,
    outcome: String,
    error_kind: Option<String>,
    error: Option<String>,
    retry_delay_s: Option<f64>,
    delivery_state: String,
}

async fn log_rows(pool: &PgPool) -> Vec<LogRow> {
    sqlx::query_as(
        "SELECT attempt, response_status, outcome::text, error_kind, error,
                extract(epoch FROM next_attempt_at - called_at)::float8 AS retry_delay_s,
                delivery_state::text
           FROM webhooks.delivery_log ORDER BY attempt_id",
    )
    .fetch_all(pool)
    .await
    .expect("log")
}

const FINISHED: &str =
    "SELECT count(*) FROM webhooks.deliveries WHERE state IN ('succeeded', 'failed')";

#[tokio::test]
async fn a_visit_reaches_v1_and_v2_endpoints_signed_and_logged() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, _| {
        Reply::status(200)
            .header("x-receiver", "yes")
            .body("thanks")
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let v1 = support::endpoint(&db.pool, 1, &receiver.url("/v1"), "1.0").await;
    let v2 = support::endpoint(&db.pool, 1, &receiver.url("/v2"), "2.0").await;
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    support::visit(&db.pool, 1, 10).await;

    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").expect("id"))
        .collect();
    assert_eq!(ids[0], ids[1], "one event id for every endpoint");
    for r in &got {
        let endpoint = if r.path == "/v1" { v1 } else { v2 };
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            r.header("user-agent")
                .expect("ua")
                .starts_with("clinic-webhooks/")
        );
        let ts = r.header("webhook-timestamp").expect("timestamp");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        assert!((now - ts.parse::<i64>().expect("int")).abs() < 60);
        support::verify_signature(r, &support::secret_of(&db.pool, endpoint).await);
    }
    support::wait_for_scalar(&db.pool, FINISHED, 2, Duration::from_secs(10)).await;

    // The log: one row per call, and the detail is exactly what was sent and received.
    let rows: Vec<DetailRow> = sqlx::query_as(
        "SELECT event_type, clinic_code, response_status, outcome::text,
                request_headers, request_body, response_headers, response_body
           FROM webhooks.delivery_log_detail ORDER BY endpoint_id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("detail");
    assert_eq!(rows.len(), 2);
    for (
        i,
        (event_type, clinic_code, status, outcome, req_headers, req_body, resp_headers, resp_body),
    ) in rows.into_iter().enumerate()
    {
        let sent = got
            .iter()
            .find(|r| r.path == if i == 0 { "/v1" } else { "/v2" })
            .expect("request");
        assert_eq!(event_type, "visit.created");
        assert_eq!(clinic_code, "c1");
        assert_eq!(status, 200);
        assert_eq!(outcome, "succeeded");
        assert_eq!(req_body.as_bytes(), &sent.body[..], "the exact body sent");
        assert_eq!(
            req_headers["webhook-signature"].as_str(),
            sent.header("webhook-signature")
        );
        assert_eq!(resp_headers["x-receiver"], "yes");
        assert_eq!(resp_body, "thanks");
    }
    worker.stop().await;
}

#[tokio::test]
async fn retryable_failures_are_retried_with_the_same_webhook_id() {
    let db = TestDb::new().await;
    // 500, then 429 with Retry-After: 1, then 200.
    let receiver = Receiver::start(Arc::new(|_, n| match n {
        0 => Reply::status(500).body("boom"),
        1 => Reply::status(429).header("retry-after", "1"),
        _ => Reply::status(200),
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    support::visit(&db.pool, 1, 10).await;
    support::wait_for_scalar(&db.pool, FINISHED, 1, Duration::from_secs(15)).await;

    let got = receiver.requests();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id"))
    );
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "a retry sends the same body"
    );
    let rows = log_rows(&db.pool).await;
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[0].attempt, rows[0].outcome.as_str()), (1, "retrying"));
    assert_eq!(rows[0].response_status, Some(500));
    assert_eq!(rows[0].error_kind.as_deref(), Some("status"));
    let delay = rows[0].retry_delay_s.expect("next attempt time");
    assert!((0.15..0.5).contains(&delay), "schedule delay {delay}");
    assert_eq!((rows[1].attempt, rows[1].outcome.as_str()), (2, "retrying"));
    let delay = rows[1].retry_delay_s.expect("next attempt time");
    assert!(
        (0.95..1.5).contains(&delay),
        "Retry-After honoured: {delay}"
    );
    assert!(
        got[2].at.duration_since(got[1].at) >= Duration::from_millis(900),
        "the third call waited for Retry-After"
    );
    assert_eq!(
        (rows[2].attempt, rows[2].outcome.as_str()),
        (3, "succeeded")
    );
    assert_eq!(rows[2].delivery_state, "succeeded");
    worker.stop().await;
}

#[tokio::test]
async fn the_last_attempt_fails_for_good_and_other_4xx_are_final() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|r, _| match r.path.as_str() {
        "/down" => Reply::status(503),
        "/moved" => Reply::status(302).header("location", "http://127.0.0.1:9/elsewhere"),
        _ => Reply::status(400).body("bad request"),
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let down = support::endpoint(&db.pool, 1, &receiver.url("/down"), "2.0").await;
    let moved = support::endpoint(&db.pool, 1, &receiver.url("/moved"), "2.0").await;
    let bad = support::endpoint(&db.pool, 1, &receiver.url("/bad"), "2.0").await;
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    support::visit(&db.pool, 1, 10).await;
    support::wait_for_scalar(&db.pool, FINISHED, 3, Duration::from_secs(15)).await;

    let outcomes = |endpoint: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>, String)>(
                "SELECT outcome::text, error_kind, delivery_state::text FROM webhooks.delivery_log
                 WHERE endpoint_id = $1 ORDER BY attempt",
            )
            .bind(endpoint)
            .fetch_all(&pool)
            .await
            .expect("log")
        }
    };
    // Schedule of two retries: three attempts, then failed.
    let down = outcomes(down).await;
    assert_eq!(
        down.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["retrying", "retrying", "failed"]
    );
    assert!(down.iter().all(|r| r.2 == "failed"));
    // A redirect is not followed, and is final.
    assert_eq!(
        outcomes(moved).await,
        [(
            "failed".to_owned(),
            Some("redirect".to_owned()),
            "failed".to_owned()
        )]
    );
    assert_eq!(
        outcomes(bad).await,
        [(
            "failed".to_owned(),
            Some("status".to_owned()),
            "failed".to_owned()
        )]
    );
    assert_eq!(
        receiver
            .requests()
            .iter()
            .filter(|r| r.path == "/elsewhere")
            .count(),
        0
    );
    worker.stop().await;
}

#[tokio::test]
async fn transport_failures_are_retryable_with_machine_readable_kinds() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, _| {
        Reply::status(200).delay(Duration::from_secs(4))
    }))
    .await
    .expect("receiver");
    let dead_port = support::unused_port();
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/slow"), "2.0").await;
    support::endpoint(
        &db.pool,
        1,
        &format!("http://127.0.0.1:{dead_port}/gone"),
        "2.0",
    )
    .await;
    // A name that never resolves (RFC 2606), and TLS spoken to a server
    // that answers plain HTTP.
    support::endpoint(&db.pool, 1, "http://receiver.invalid/hook", "2.0").await;
    support::endpoint(
        &db.pool,
        1,
        &receiver.url("/tls").replace("http://", "https://"),
        "2.0",
    )
    .await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "1h")]),
    );
    support::visit(&db.pool, 1, 10).await;
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.attempts",
        4,
        Duration::from_secs(15),
    )
    .await;
    let mut kinds: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT error_kind, outcome::text FROM webhooks.attempts ORDER BY error_kind",
    )
    .fetch_all(&db.pool)
    .await
    .expect("attempts");
    kinds.sort();
    assert_eq!(
        kinds,
        [
            (Some("connect".to_owned()), "retrying".to_owned()),
            (Some("dns".to_owned()), "retrying".to_owned()),
            (Some("timeout".to_owned()), "retrying".to_owned()),
            (Some("tls".to_owned()), "retrying".to_owned()),
        ]
    );
    worker.stop().await;
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let db = TestDb::new().await;
    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/literal"), "2.0").await;
    let port = receiver
        .url("")
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();
    support::endpoint(
        &db.pool,
        1,
        &format!("http://localhost:{port}/named"),
        "2.0",
    )
    .await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__HTTP__ALLOW_PRIVATE_TARGETS", "false")]),
    );
    support::visit(&db.pool, 1, 10).await;
    support::wait_for_scalar(&db.pool, FINISHED, 2, Duration::from_secs(10)).await;
    let rows = log_rows(&db.pool).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.outcome, "failed");
        assert_eq!(row.error_kind.as_deref(), Some("refused_target"));
        assert!(
            row.error
                .as_deref()
                .unwrap_or("")
                .contains("allow_private_targets"),
            "{row:?}"
        );
    }
    assert_eq!(receiver.count(), 0, "nothing reached the private address");
    worker.stop().await;
}

#[tokio::test]
async fn large_response_bodies_are_truncated_in_the_log() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, _| {
        Reply::status(200).body("x".repeat(200_000))
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/big"), "2.0").await;
    let worker = InProcessWorker::start(
        &db,
        support::settings(&[("CLINIC_WEBHOOKS__HTTP__MAX_RESPONSE_BODY", "1000")]),
    );
    support::visit(&db.pool, 1, 10).await;
    support::wait_for_scalar(&db.pool, FINISHED, 1, Duration::from_secs(10)).await;
    let (len, truncated, outcome): (i32, bool, String) = sqlx::query_as(
        "SELECT length(response_body), response_truncated, outcome::text FROM webhooks.attempts",
    )
    .fetch_one(&db.pool)
    .await
    .expect("attempt");
    assert_eq!(
        (len, truncated, outcome.as_str()),
        (1000, true, "succeeded")
    );
    worker.stop().await;
}
