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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
        .to_string();
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
