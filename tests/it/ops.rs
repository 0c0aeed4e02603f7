//! The operator surface, through the real binary: the operations listener
//! (/healthz, /readyz, /metrics checked against the log), readiness for
//! systemd (sd_notify), `status --json`, test sends from SQL and the CLI,
//! the demo, the systemd unit, and the deployment roles.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clinic_webhooks_test_support::{Receiver, Reply};
use serde_json::Value;
use sqlx::PgPool;

use crate::support::{self, TestDb, unused_port};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_clinic-webhooks"))
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// A count.
async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    support::scalar(pool, sql).await
}

/// The value of every sample of `name` whose labels include `labels`, summed.
fn sample_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            let wanted = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Waits until `check` holds of the scraped metrics.
async fn wait_metrics(url: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = get(url).await;
        if check(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{what}:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_ops_listener_serves_health_readiness_and_metrics_that_match_the_log() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|r, n| match (r.path.as_str(), n) {
        ("/flaky", 0) => Reply::status(500),
        ("/slow", _) => Reply::status(200).delay(Duration::from_secs(3)),
        _ => Reply::status(200),
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/ok"), "2.0").await;
    support::endpoint(&db.pool, 1, &receiver.url("/flaky"), "1.0").await;
    // Disabled, with two test sends waiting: due, but never claimed.
    let parked = support::endpoint(&db.pool, 1, &receiver.url("/parked"), "2.0").await;
    sqlx::query("UPDATE webhooks.endpoints SET enabled = false WHERE id = $1")
        .bind(parked)
        .execute(&db.pool)
        .await
        .expect("disable");
    for _ in 0..2 {
        sqlx::query("SELECT webhooks.send_test($1)")
            .bind(parked)
            .execute(&db.pool)
            .await
            .expect("send_test");
    }

    let port = unused_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = support::spawn_binary(
        &db,
        &[
            ("CLINIC_WEBHOOKS__OPS__LISTEN", &listen),
            ("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "200ms"),
            ("CLINIC_WEBHOOKS__RETRY__JITTER", "0"),
            ("CLINIC_WEBHOOKS__WORKER__SHUTDOWN_TIMEOUT", "10s"),
        ],
    );
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match reqwest::get(format!("{base}/readyz")).await {
            Ok(r) if r.status() == 200 => break,
            _ => {
                assert!(Instant::now() < deadline, "never ready");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        get(&format!("{base}/healthz")).await,
        (200, "ok\n".to_owned())
    );
    let (_, ready) = get(&format!("{base}/readyz")).await;
    let ready: Value = serde_json::from_str(&ready).expect("readyz is JSON");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["migration"], ready["expected_migration"], "{ready}");

    support::visits(&db.pool, 1, 10, 10).await;
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        20,
        Duration::from_secs(15),
    )
    .await;

    // The counters, once the last result is logged, against the log.
    let url = format!("{base}/metrics");
    let metrics = wait_metrics(&url, "every call counted", |m| {
        sample_sum(m, "clinic_webhooks_attempts_total", &[]) >= 21.0
    })
    .await;
    let logged: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT a.outcome::text, e.version, count(*) FROM webhooks.attempts a
           JOIN webhooks.endpoints e ON e.id = a.endpoint_id GROUP BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .expect("log");
    let by_log: HashMap<(String, String), i64> = logged
        .into_iter()
        .map(|(outcome, version, n)| ((outcome, version), n))
        .collect();
    assert_eq!(by_log.get(&("retrying".into(), "1.0".into())), Some(&1));
    for ((outcome, version), n) in &by_log {
        let counted = sample_sum(
            &metrics,
            "clinic_webhooks_attempts_total",
            &[
                ("outcome", outcome),
                ("version", version),
                ("event_type", "visit.created"),
            ],
        );
        assert_eq!(counted, *n as f64, "{outcome} {version}:\n{metrics}");
    }
    let calls = scalar(&db.pool, "SELECT count(*) FROM webhooks.attempts").await as f64;
    assert_eq!(
        sample_sum(
            &metrics,
            "clinic_webhooks_attempt_duration_seconds_count",
            &[]
        ),
        calls
    );
    assert_eq!(
        sample_sum(
            &metrics,
            "clinic_webhooks_attempts_total",
            &[("outcome", "retrying"), ("error_kind", "status")]
        ),
        1.0
    );
    assert_eq!(
        sample_sum(
            &metrics,
            "clinic_webhooks_event_to_success_seconds_count",
            &[]
        ),
        20.0
    );
    assert!(
        sample_sum(
            &metrics,
            "clinic_webhooks_claims_total",
            &[("result", "ok")]
        ) >= 1.0
    );
    assert!(sample_sum(&metrics, "clinic_webhooks_log_write_batch_size_sum", &[]) >= calls);
    assert!(
        metrics.contains("# TYPE clinic_webhooks_attempt_duration_seconds histogram"),
        "{metrics}"
    );
    // No label names an endpoint or a URL.
    assert!(!metrics.contains("endpoint_id") && !metrics.contains("127.0.0.1"));

    // The gauges, from the sampler (every 5 s).
    let metrics = wait_metrics(&url, "the queue sampled", |m| {
        sample_sum(m, "clinic_webhooks_deliveries", &[("state", "pending")]) == 2.0
    })
    .await;
    assert_eq!(
        sample_sum(&metrics, "clinic_webhooks_deliveries", &[("state", "due")]),
        2.0
    );
    assert_eq!(
        sample_sum(
            &metrics,
            "clinic_webhooks_endpoints",
            &[("status", "disabled")]
        ),
        1.0
    );
    assert_eq!(
        sample_sum(
            &metrics,
            "clinic_webhooks_endpoints",
            &[("status", "enabled")]
        ),
        2.0
    );
    assert!(
        sample_sum(
            &metrics,
            "clinic_webhooks_oldest_due_delivery_age_seconds",
            &[]
        ) > 0.0
    );
    assert!(
        sample_sum(
            &metrics,
            "clinic_webhooks_db_pool_connections",
            &[("pool", "main")]
        ) >= 1.0
    );

    // Draining: not ready, with the reason; then a clean exit.
    support::endpoint(&db.pool, 1, &receiver.url("/slow"), "2.0").await;
    support::visit(&db.pool, 1, 10).await;
    receiver
        .wait_until(Duration::from_secs(10), |r| {
            r.iter().any(|x| x.path == "/slow")
        })
        .await;
    support::signal(&child, "TERM");
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stopping"), "{body}");
    let exit = support::wait_exit(&mut child, Duration::from_secs(20)).await;
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

/// Under systemd (`Type=notify`) the worker says READY=1 once it listens
/// and has claimed, and STOPPING=1 when it starts to drain.
#[tokio::test]
async fn the_worker_notifies_systemd_when_ready_and_when_stopping() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("cw-notify-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut child = support::spawn_binary(&db, &[("NOTIFY_SOCKET", path.to_str().expect("path"))]);
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 within 15 s");
    assert_eq!(&buf[..n], b"READY=1");
    support::signal(&child, "TERM");
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(
        support::wait_exit(&mut child, Duration::from_secs(15))
            .await
            .is_some_and(|s| s.success())
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn cli(db: &TestDb, args: &[&str]) -> std::process::Output {
    support::cli(&db.url, args)
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `send-test` sends an example event of the type asked for, rendered and
/// signed like any other and marked as a test in the log; `status --json`
/// reports the queue per endpoint; bad input gets a clear message.
#[tokio::test]
async fn send_test_and_status_json_through_the_cli() {
    let db = TestDb::new().await;
    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let endpoint = support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;
    let parked = support::endpoint(&db.pool, 1, &receiver.url("/parked"), "1.0").await;
    sqlx::query(
        "UPDATE webhooks.endpoints SET enabled = false, disabled_reason = 'paused by the admin' WHERE id = $1",
    )
    .bind(parked)
    .execute(&db.pool)
    .await
    .expect("disable");

    let out = stdout(&cli(
        &db,
        &[
            "send-test",
            "--endpoint",
            &endpoint.to_string(),
            "--event",
            "visit.invoice.processed",
        ],
    ));
    assert!(out.contains("test event"), "{out}");
    stdout(&cli(&db, &["send-test", "--endpoint", &parked.to_string()]));

    let status: Value =
        serde_json::from_str(&stdout(&cli(&db, &["status", "--json"]))).expect("status is JSON");
    let rows = status["endpoints"].as_array().expect("endpoints");
    let row = |id: i64| {
        rows.iter()
            .find(|r| r["endpoint_id"] == id)
            .unwrap_or_else(|| panic!("endpoint {id} in {status}"))
    };
    assert_eq!(row(endpoint)["pending"], 1, "{status}");
    assert_eq!(row(parked)["pending"], 1, "{status}");
    assert_eq!(row(parked)["due"], 1, "{status}");
    assert_eq!(row(parked)["enabled"], false);
    assert_eq!(row(parked)["disabled_reason"], "paused by the admin");
    assert_eq!(row(parked)["blocked_lanes"], 0);
    assert!(row(parked)["oldest_due_s"].is_i64(), "{status}");
    let table = stdout(&cli(&db, &["status"]));
    assert!(table.contains("paused by the admin"), "{table}");

    let worker = support::InProcessWorker::start(&db, support::settings(&[]));
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    worker.stop().await;
    let body: Value = serde_json::from_slice(&got[0].body).expect("JSON body");
    assert_eq!(body["type"], "visit.invoice.processed");
    assert_eq!(body["version"], "2.0");
    assert_eq!(body["data"]["invoice"]["currency"], "USD", "{body}");
    let secret = support::secret_of(&db.pool, endpoint).await;
    support::verify_signature(&got[0], &secret);
    let (test, event_type): (bool, String) = sqlx::query_as(
        "SELECT test, event_type FROM webhooks.delivery_log_detail WHERE endpoint_id = $1",
    )
    .bind(endpoint)
    .fetch_one(&db.pool)
    .await
    .expect("logged");
    assert_eq!(
        (test, event_type.as_str()),
        (true, "visit.invoice.processed")
    );

    for (args, message) in [
        (
            vec!["send-test", "--endpoint", "999999"],
            "no endpoint with id 999999",
        ),
        (
            vec!["send-test", "--endpoint", "1", "--event", "visit.exploded"],
            "unknown event type visit.exploded",
        ),
    ] {
        let out = cli(&db, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "{stderr}"
        );
    }
}

/// The README's first command: exits 0 within a minute, having shown every
/// request with its signature checked, the retried failure, and the log;
/// and again on the same database.
#[tokio::test]
async fn the_demo_runs_twice_and_exits_zero() {
    let db = TestDb::new().await;
    for run in 1..=2 {
        let started = Instant::now();
        let out = cli(&db, &["demo"]);
        let text = stdout(&out);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "run {run} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            text.matches("signature verified").count(),
            13,
            "run {run}:\n{text}"
        );
        assert!(text.contains("→ 503"), "run {run}:\n{text}");
        assert!(!text.contains("SIGNATURE INVALID"), "run {run}:\n{text}");
        assert!(text.contains("all 12 delivered"), "run {run}:\n{text}");
        assert!(text.contains("(13 rows)"), "run {run}:\n{text}");
        assert!(text.contains("psql -h"), "run {run}:\n{text}");
        for event in clinic_webhooks::payload::EVENT_TYPES {
            assert!(text.contains(event), "run {run}: {event}:\n{text}");
        }
    }
}

/// The unit file passes `systemd-analyze verify` (with ExecStart pointing
/// at this build's binary), where systemd is installed.
#[test]
fn the_systemd_unit_verifies() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit is not verified here");
        return;
    };
    assert!(version.status.success());
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/clinic-webhooks.service"),
    )
    .expect("unit");
    let unit = unit.replace(
        "/usr/local/bin/clinic-webhooks",
        binary().to_str().expect("path"),
    );
    let dir = std::env::temp_dir().join(format!("cw-unit-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("clinic-webhooks.service");
    std::fs::write(&path, unit).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about other units on this machine are not ours to judge.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("clinic-webhooks.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The demo never runs on a database in use: its worker would deliver
/// every endpoint's work with the demo's short retry schedule.
#[tokio::test]
async fn the_demo_refuses_a_database_with_other_endpoints() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, "https://receiver.example/hook", "2.0").await;
    let out = cli(&db, &["demo"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("endpoint(s) of other clinics"), "{stderr}");
    let visits: i64 = scalar(&db.pool, "SELECT count(*) FROM clinic.visits").await;
    assert_eq!(visits, 0, "nothing was written");
}
