//! Receiver chaos: thousands of events, two worker processes, and receivers
//! that answer each request with a random one of 200, 500, 429 with
//! `Retry-After`, a hang past the timeout, a connection reset, or a slow
//! body, under a short retry schedule. At the end every delivery is
//! succeeded or finally failed, and the two sides reconcile exactly: for
//! each (event, endpoint) the receiver's requests and the log's rows are the
//! same calls, in the same order, each row saying what the receiver did.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::raw_http::{RawRequest, read_request, reset};
use crate::support::{self, TestDb};

const EVENTS: i64 = 1500;
/// `http.timeout`; a hang lasts longer.
const TIMEOUT: Duration = Duration::from_secs(1);
const SCHEDULE: &str = "100ms,100ms,200ms,200ms,300ms";
const ATTEMPTS_AT_MOST: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ok,
    ServerError,
    TooMany,
    Hang,
    Reset,
    SlowBody,
}

impl Answer {
    /// Half succeed at once; a delivery fails finally when all six of its
    /// attempts fail (about 1 in 64).
    fn pick(rng: &mut fastrand::Rng) -> Self {
        match rng.u8(0..100) {
            0..50 => Self::Ok,
            50..65 => Self::ServerError,
            65..75 => Self::TooMany,
            75..80 => Self::Hang,
            80..90 => Self::Reset,
            _ => Self::SlowBody,
        }
    }

    /// What the log must say about a call answered so: outcome class,
    /// response status, error kind.
    fn logged(self) -> (bool, Option<i16>, Option<&'static str>) {
        match self {
            Self::Ok | Self::SlowBody => (true, Some(200), None),
            Self::ServerError => (false, Some(500), Some("status")),
            Self::TooMany => (false, Some(429), Some("status")),
            Self::Hang => (false, None, Some("timeout")),
            Self::Reset => (false, None, Some("protocol")),
        }
    }
}

/// A raw HTTP/1.1 server: one request per connection.
struct Chaos {
    rng: Mutex<fastrand::Rng>,
    /// (webhook-id, path) → what each request got, in arrival order.
    seen: Mutex<BTreeMap<(String, String), Vec<Answer>>>,
}

impl Chaos {
    async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(self.clone().answer(stream));
        }
    }

    async fn answer(self: Arc<Self>, mut stream: TcpStream) {
        let Some(RawRequest {
            path,
            webhook_id: Some(id),
        }) = read_request(&mut stream).await
        else {
            return;
        };
        let answer = Answer::pick(&mut self.rng.lock().unwrap_or_else(PoisonError::into_inner));
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((id, path))
            .or_default()
            .push(answer);
        let head = |status: &str, extra: &str, length: usize| {
            format!(
                "HTTP/1.1 {status}\r\nconnection: close\r\n{extra}content-length: {length}\r\n\r\n"
            )
        };
        match answer {
            Answer::Ok => {
                let _ = stream.write_all(head("200 OK", "", 2).as_bytes()).await;
                let _ = stream.write_all(b"ok").await;
            }
            Answer::ServerError => {
                let body = "<html>down</html>";
                let _ = stream
                    .write_all(
                        (head("500 Internal Server Error", "", body.len()) + body).as_bytes(),
                    )
                    .await;
            }
            Answer::TooMany => {
                let _ = stream
                    .write_all(head("429 Too Many Requests", "retry-after: 1\r\n", 0).as_bytes())
                    .await;
            }
            Answer::Hang => {
                tokio::time::sleep(TIMEOUT * 3).await;
                return;
            }
            Answer::Reset => {
                reset(stream);
                return;
            }
            Answer::SlowBody => {
                let body = b"slowly, but all of it";
                let _ = stream
                    .write_all(head("200 OK", "", body.len()).as_bytes())
                    .await;
                for byte in body {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = stream.shutdown().await;
    }
}

/// One call in the log, with its delivery's final state.
#[derive(Debug, sqlx::FromRow)]
struct LogRow {
    event: String,
    endpoint: i64,
    attempt: i32,
    outcome: String,
    status: Option<i16>,
    kind: Option<String>,
    state: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_at_the_receivers_reconciles_exactly_with_the_log() {
    let seed = fastrand::u64(..);
    eprintln!("chaos seed {seed}");
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    let chaos = Arc::new(Chaos {
        rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        seen: Mutex::new(BTreeMap::new()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(chaos.clone().serve(listener));
    let mut paths = BTreeMap::new();
    for (path, version) in [("/v1", "1.0"), ("/v2", "2.0")] {
        let id = support::endpoint(&db.pool, 1, &format!("{base}{path}"), version).await;
        support::max_in_flight(&db.pool, id, 100).await;
        paths.insert(id, path.to_owned());
    }
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let env = [
        ("CLINIC_WEBHOOKS__HTTP__TIMEOUT", timeout.as_str()),
        ("CLINIC_WEBHOOKS__RETRY__SCHEDULE", SCHEDULE),
        ("CLINIC_WEBHOOKS__RETRY__MAX_RETRY_AFTER", "2s"),
        ("CLINIC_WEBHOOKS__HEALTH__DISABLE_AFTER", "1h"),
        // Nobody reads the workers' piped output here: keep it small.
        ("CLINIC_WEBHOOKS__LOG__LEVEL", "error"),
    ];
    let mut workers = [
        support::spawn_binary(
            &db,
            &[&env[..], &[("CLINIC_WEBHOOKS__WORKER__NAME", "chaos-a")]].concat(),
        ),
        support::spawn_binary(
            &db,
            &[&env[..], &[("CLINIC_WEBHOOKS__WORKER__NAME", "chaos-b")]].concat(),
        ),
    ];
    support::visits(&db.pool, 1, 10, EVENTS).await;
    let deliveries = EVENTS * 2;
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries WHERE state IN ('succeeded', 'failed')",
        deliveries,
        Duration::from_secs(120),
    )
    .await;
    for worker in &workers {
        support::signal(worker, "TERM");
    }
    for worker in &mut workers {
        support::wait_exit(worker, Duration::from_secs(15))
            .await
            .expect("stopped");
    }

    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks.deliveries")
        .fetch_one(&db.pool)
        .await
        .expect("deliveries");
    assert_eq!(total, deliveries, "one delivery per event and endpoint");
    // The log, per (event, endpoint), in attempt order.
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT d.event_id::text AS event, d.endpoint_id AS endpoint, a.attempt,
                a.outcome::text AS outcome, a.response_status AS status, a.error_kind AS kind,
                d.state::text AS state
           FROM webhooks.attempts a JOIN webhooks.deliveries d ON d.id = a.delivery_id
          ORDER BY d.id, a.attempt",
    )
    .fetch_all(&db.pool)
    .await
    .expect("log");
    let mut logged: BTreeMap<(String, String), Vec<LogRow>> = BTreeMap::new();
    for row in rows {
        logged
            .entry((row.event.clone(), paths[&row.endpoint].clone()))
            .or_default()
            .push(row);
    }
    let seen = chaos
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        logged.keys().collect::<Vec<_>>(),
        "the same (event, endpoint) pairs on both sides"
    );
    assert_eq!(seen.len(), usize::try_from(deliveries).expect("count"));
    let (mut calls, mut failed) = (0, 0);
    for (key, answers) in &seen {
        let rows = &logged[key];
        assert_eq!(
            answers.len(),
            rows.len(),
            "{key:?}: {answers:?} vs {rows:?}"
        );
        assert!(rows.len() <= ATTEMPTS_AT_MOST, "{key:?}");
        calls += rows.len();
        for (i, (answer, row)) in answers.iter().zip(rows).enumerate() {
            let attempt = row.attempt;
            assert_eq!(attempt, i32::try_from(i + 1).expect("attempt"), "{key:?}");
            let (success, want_status, want_kind) = answer.logged();
            assert_eq!(
                (row.status, row.kind.as_deref()),
                (want_status, want_kind),
                "{key:?} attempt {attempt}: the receiver did {answer:?}"
            );
            let want_outcome = match (success, i + 1 == ATTEMPTS_AT_MOST) {
                (true, _) => "succeeded",
                (false, true) => "failed",
                (false, false) => "retrying",
            };
            assert_eq!(
                row.outcome, want_outcome,
                "{key:?} attempt {attempt}: {answer:?}"
            );
        }
        let last = rows.last().expect("a row");
        assert_eq!(
            last.outcome, last.state,
            "{key:?}: the delivery ends as its last call"
        );
        failed += usize::from(last.state == "failed");
    }
    eprintln!(
        "chaos: {deliveries} deliveries, {calls} calls, {failed} finally failed, every call on both sides"
    );
}
