//! The real binary as an operator runs it: graceful stop on SIGTERM, a
//! database restart, and the embedded default database. (SIGKILL and
//! SIGSTOP: `recovery`.)

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

#[tokio::test]
async fn the_worker_rides_out_a_database_restart() {
    use clinic_webhooks::config::EmbeddedSettings;
    use clinic_webhooks::embedded;

    // A private cluster of our own, so restarting it disturbs no other test.
    let dir = std::env::temp_dir().join(format!("cw-restart-{:08x}", fastrand::u32(..)));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let embedded_settings = EmbeddedSettings {
        data_dir: dir.join("pg"),
        port,
        bin_dir: String::new(),
        os_user: "postgres".to_owned(),
    };
    let start = {
        let s = embedded_settings.clone();
        move || embedded::ensure_running(&s).expect("start the private cluster")
    };
    let cluster = tokio::task::spawn_blocking(start.clone())
        .await
        .expect("join");
    let pool = clinic_webhooks::db::connect(&cluster.url(), 4)
        .await
        .expect("connect");
    clinic_webhooks::db::migrate(&pool).await.expect("migrate");

    // The first call is still in flight when the database goes away.
    let receiver = Receiver::start(Arc::new(|_, n| {
        if n == 0 {
            Reply::status(200).delay(Duration::from_millis(1500))
        } else {
            Reply::status(200)
        }
    }))
    .await
    .expect("receiver");
    sqlx::query("INSERT INTO clinic.clinics (id, code, name) VALUES (1, 'c1', 'c1')")
        .execute(&pool)
        .await
        .expect("clinic");
    sqlx::query("INSERT INTO clinic.users (id, clinic_id, role, source) VALUES (10, 1, 'patient', 'signup')")
        .execute(&pool)
        .await
        .expect("user");
    sqlx::query("INSERT INTO webhooks.endpoints (clinic_id, url) VALUES (1, $1)")
        .bind(receiver.url("/hook"))
        .execute(&pool)
        .await
        .expect("endpoint");
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = {
        let settings = support::settings(&[]);
        let pool = pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            clinic_webhooks::worker::run(&settings, pool, stop)
                .await
                .expect("worker survived");
        })
    };
    support::visit(&pool, 1, 10).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;

    // Restart while the call is in flight (fast shutdown ends every session).
    cluster.stop().expect("stop the cluster");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cluster = tokio::task::spawn_blocking(start).await.expect("join");

    // The in-flight result is recorded once the database is back, and new
    // events flow again (LISTEN reconnected or the poll caught them).
    support::visit(&pool, 1, 10).await;
    support::wait_for_scalar(
        &pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state = 'succeeded'",
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(receiver.count(), 2, "each delivery sent once");
    stop.cancel();
    worker.await.expect("worker stopped");
    pool.close().await;
    cluster.stop().expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}
