//! Database outages, on a private cluster of the test's own (its own port,
//! never the shared server): stopped with `-m fast` and crashed with `-m
//! immediate` for about 10 s each while the worker delivers. The worker
//! process survives both, logs each outage once, and every delivery
//! committed before or after arrives; none is left stuck.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clinic_webhooks::config::EmbeddedSettings;
use clinic_webhooks::embedded::{self, Cluster, StopMode};
use clinic_webhooks_test_support::{Receiver, Reply, worker_command};
use sqlx::PgPool;

use crate::support;

const OUTAGE: Duration = Duration::from_secs(10);
/// From the database's return to the last delivery: the claimer's and the
/// recorder's backoff (at most 5 s) plus a connection's reconnect.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(15);

struct Private {
    settings: EmbeddedSettings,
    cluster: Cluster,
}

impl Private {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("cw-outage-{:08x}", fastrand::u32(..)));
        let port = support::unused_port();
        let settings = EmbeddedSettings {
            data_dir: dir.join("pg"),
            port,
            bin_dir: String::new(),
            os_user: "postgres".to_owned(),
        };
        let cluster = Self::ensure(&settings).await;
        Self { settings, cluster }
    }

    async fn ensure(settings: &EmbeddedSettings) -> Cluster {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || {
            embedded::ensure_running(&s).expect("start the private cluster")
        })
        .await
        .expect("join")
    }

    async fn outage(&mut self, mode: StopMode) -> Instant {
        self.cluster
            .stop_with(mode)
            .expect("stop the private cluster");
        tokio::time::sleep(OUTAGE).await;
        self.cluster = Self::ensure(&self.settings).await;
        Instant::now()
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = self.cluster.stop_with(StopMode::Immediate);
        if let Some(dir) = self.settings.data_dir.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn insert_visits(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
         SELECT 1, 10, now(), now() FROM generate_series(1, $1)",
    )
    .bind(n)
    .execute(pool)
    .await
    .expect("insert visits");
}

fn distinct_ids(receiver: &Receiver) -> usize {
    receiver
        .requests()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect::<BTreeSet<_>>()
        .len()
}

async fn wait_delivered(receiver: &Receiver, n: usize, within: Duration) -> Duration {
    let started = Instant::now();
    receiver
        .wait_until(within, |r| {
            r.iter()
                .filter_map(|x| x.header("webhook-id"))
                .collect::<BTreeSet<_>>()
                .len()
                >= n
        })
        .await;
    assert_eq!(distinct_ids(receiver), n, "deliveries arrived");
    started.elapsed()
}

fn still_running(child: &mut Child) {
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the worker process survived"
    );
}

#[tokio::test]
async fn the_worker_survives_a_fast_stop_and_a_crash_of_the_database() {
    let mut db = Private::start().await;
    let url = db.cluster.url();
    let pool = clinic_webhooks::db::connect(&url, 4)
        .await
        .expect("connect");
    clinic_webhooks::db::migrate(&pool).await.expect("migrate");
    // Calls take a moment, so that some are in flight when the database goes.
    let receiver = Receiver::start(Arc::new(|_, _| {
        Reply::status(200).delay(Duration::from_millis(300))
    }))
    .await
    .expect("receiver");
    support::clinic_with_patient(&pool).await;
    sqlx::query(
        "INSERT INTO webhooks.endpoints (clinic_id, url, max_in_flight) VALUES (1, $1, 50)",
    )
    .bind(receiver.url("/hook"))
    .execute(&pool)
    .await
    .expect("endpoint");
    let mut worker = worker_command(
        std::path::Path::new(env!("CARGO_BIN_EXE_clinic-webhooks")),
        &url,
        &[
            ("CLINIC_WEBHOOKS__WORKER__POLL_INTERVAL", "200ms"),
            ("CLINIC_WEBHOOKS__LOG__LEVEL", "info"),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn the worker");

    let mut expected = 0;
    for mode in [StopMode::Fast, StopMode::Immediate] {
        insert_visits(&pool, 20).await;
        expected += 20;
        wait_delivered(&receiver, expected, Duration::from_secs(15)).await;
        // Committed just before the outage: some of these are in flight.
        insert_visits(&pool, 20).await;
        expected += 20;
        receiver
            .wait_for(receiver.count() + 1, Duration::from_secs(5))
            .await;
        let back = db.outage(mode).await;
        still_running(&mut worker);
        // Committed after it.
        insert_visits(&pool, 20).await;
        expected += 20;
        wait_delivered(&receiver, expected, CATCH_UP_WITHIN).await;
        let catch_up = back.elapsed();
        eprintln!("{mode:?}: from the database's return to the last delivery: {catch_up:?}");
        assert!(catch_up < CATCH_UP_WITHIN, "{mode:?}: {catch_up:?}");
    }
    // Nothing stuck: every delivery is finished (the last answers are on
    // their way: the receiver counts a request when it arrives).
    support::wait_for_scalar(
        &pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state IN ('pending', 'delivering')",
        0,
        Duration::from_secs(5),
    )
    .await;
    still_running(&mut worker);

    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    support::wait_exit(&mut worker, Duration::from_secs(15))
        .await
        .expect("the worker stopped");
    let mut out = String::new();
    if let Some(mut stdout) = worker.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
    }
    let lost = out.matches("lost the database").count();
    let back = out.matches("the database is reachable again").count();
    assert_eq!(
        (lost, back),
        (2, 2),
        "each outage logged once, start and end:\n{out}"
    );
    pool.close().await;
}
