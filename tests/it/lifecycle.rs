//! The real binary as an operator runs it: graceful stop on SIGTERM and the
//! embedded default database. (SIGKILL and SIGSTOP: `recovery`; database
//! outages: `outages`.)

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clinic_webhooks_test_support::{Receiver, Reply};

use crate::support::{self, TestDb};

const FAST_LEASES: &[(&str, &str)] = &[
    ("CLINIC_WEBHOOKS__HTTP__TIMEOUT", "3s"),
    ("CLINIC_WEBHOOKS__WORKER__LEASE", "8s"),
];

async fn clinic_with_endpoint(db: &TestDb, receiver: &Receiver) {
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;
}

#[tokio::test]
async fn sigterm_drains_requests_in_flight_and_exits_zero() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Arc::new(|_, _| {
        Reply::status(200).delay(Duration::from_millis(1500))
    }))
    .await
    .expect("receiver");
    clinic_with_endpoint(&db, &receiver).await;
    let mut child = support::spawn_binary(&db, FAST_LEASES);
    for _ in 0..3 {
        support::visit(&db.pool, 1, 10).await;
    }
    let in_flight = receiver.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(in_flight.len(), 3, "three requests in flight");

    support::signal(&child, "TERM");
    let status = support::wait_exit(&mut child, Duration::from_secs(10))
        .await
        .expect("exited within 10s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    // The three calls in flight were finished and recorded, not abandoned.
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state::text FROM webhooks.deliveries ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("states");
    assert_eq!(states, ["succeeded", "succeeded", "succeeded"]);
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
        .expect("read");
    assert!(stdout.contains("SIGTERM received"), "{stdout}");
    assert!(stdout.contains("worker stopped"), "{stdout}");
}

#[tokio::test]
async fn the_embedded_default_needs_no_database_configuration() {
    let dir = std::env::temp_dir().join(format!("cw-embedded-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = support::unused_port().to_string();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_clinic-webhooks"))
            .args(args)
            .current_dir(&dir)
            .env_remove("DATABASE_URL")
            .env_remove("CLINIC_WEBHOOKS__DATABASE__URL")
            .env("CLINIC_WEBHOOKS__EMBEDDED__PORT", &port)
            .stdin(Stdio::null())
            .output()
            .expect("run clinic-webhooks")
    };
    let out = run(&["migrate"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("using the embedded PostgreSQL"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "psql -h 127.0.0.1 -p {port} -U postgres clinic_webhooks"
        )),
        "{stdout}"
    );
    assert!(dir.join(".clinic-webhooks/postgres/PG_VERSION").exists());
    // Reused on the next command, and stopped again after it.
    let out = run(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("endpoint"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad configuration stops `run` at once, with a message that names the key
/// or the problem: no hang, no panic, exit status 1.
#[tokio::test]
async fn bad_configuration_stops_run_quickly_with_a_clear_message() {
    let closed_port = support::unused_port();
    let unreachable = format!("postgres://postgres@127.0.0.1:{closed_port}/postgres");
    let target = format!("127.0.0.1:{closed_port}");
    let db = TestDb::new().await;
    // (the environment, what the message must say)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "5s,banana")],
            vec!["retry.schedule", "item 2", "\"banana\"", "not a duration"],
        ),
        (
            vec![("CLINIC_WEBHOOKS__HTTP__TIMEUOT", "5s")],
            vec!["unknown field", "timeuot"],
        ),
        (
            vec![("CLINIC_WEBHOOKS__HTTP__TIMEOUT", "soon")],
            vec!["http.timeout"],
        ),
        (
            vec![("CLINIC_WEBHOOKS__WORKER__CONCURRENCY", "-3")],
            vec!["worker.concurrency"],
        ),
        (
            vec![
                ("DATABASE_URL", unreachable.as_str()),
                ("CLINIC_WEBHOOKS__DATABASE__URL", unreachable.as_str()),
            ],
            vec!["connection refused", &target],
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://"),
                ("CLINIC_WEBHOOKS__DATABASE__URL", "mysql://db/x"),
            ],
            vec!["database.url", "\"mysql\""],
        ),
    ];
    for (env, expected) in cases {
        let started = std::time::Instant::now();
        let mut command = clinic_webhooks_test_support::worker_command(
            std::path::Path::new(env!("CARGO_BIN_EXE_clinic-webhooks")),
            &db.url,
            &env,
        );
        command.env_remove("RUST_BACKTRACE");
        let out = tokio::task::spawn_blocking(move || command.output().expect("run"))
            .await
            .expect("join");
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {stderr}");
        assert!(took < Duration::from_secs(5), "{env:?} took {took:?}");
        assert!(!stderr.contains("panicked"), "{env:?}: {stderr}");
        for part in expected {
            assert!(
                stderr.to_lowercase().contains(&part.to_lowercase()),
                "{env:?}: {part:?} not in {stderr}"
            );
        }
    }
}
