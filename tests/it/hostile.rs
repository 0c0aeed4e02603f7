//! Hostile receivers, each a raw TCP server on 127.0.0.1 that misbehaves in
//! one way, beside a healthy one, all sent to by one real worker process:
//! every attempt ends within the timeout, the log keeps a truncated, valid
//! record with a clear error kind, the healthy endpoint is served
//! throughout, and the worker's memory stays bounded.

use std::time::Duration;

use clinic_webhooks_test_support::Receiver;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::raw_http::{read_request, reset};
use crate::support::{self, TestDb};

/// `http.timeout` in this test.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The worker's peak resident memory must stay under this (README,
/// "Guarantees"): a 1 GiB body and 1 MB of headers are not buffered.
const PEAK_RSS_BOUND_KIB: u64 = 96 * 1024;

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// 200 with a 1 GiB body, streamed as fast as it goes.
    HugeBody,
    /// 200, then one body byte every 100 ms, forever.
    Trickle,
    /// About 1 MB of response headers.
    HugeHeaders,
    /// 500 with invalid UTF-8 in a header and NUL and invalid UTF-8 in the body.
    BadBytes,
    /// A NUL byte inside a header value.
    NulInHeader,
    /// 200 and part of the body, then a connection reset.
    ResetMidBody,
    /// The request is read, then the connection is reset without an answer.
    ResetBeforeAnswer,
    /// Bytes that are not HTTP.
    NotHttp,
    /// Accepts, reads, never answers.
    Silent,
}

impl Misbehaviour {
    const ALL: [Self; 9] = [
        Self::HugeBody,
        Self::Trickle,
        Self::HugeHeaders,
        Self::BadBytes,
        Self::NulInHeader,
        Self::ResetMidBody,
        Self::ResetBeforeAnswer,
        Self::NotHttp,
        Self::Silent,
    ];

    /// What the log must say: outcome, error kind, response status,
    /// whether the body is marked truncated.
    fn expected(self) -> (&'static str, Option<&'static str>, Option<i16>, bool) {
        match self {
            Self::HugeBody | Self::Trickle | Self::ResetMidBody => {
                ("succeeded", None, Some(200), true)
            }
            Self::BadBytes => ("retrying", Some("status"), Some(500), false),
            Self::HugeHeaders | Self::NulInHeader | Self::ResetBeforeAnswer | Self::NotHttp => {
                ("retrying", Some("protocol"), None, false)
            }
            Self::Silent => ("retrying", Some("timeout"), None, false),
        }
    }
}

async fn serve(listener: TcpListener, how: Misbehaviour) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(misbehave(stream, how));
    }
}

async fn misbehave(mut stream: TcpStream, how: Misbehaviour) {
    let _ = read_request(&mut stream).await;
    match how {
        Misbehaviour::HugeBody => {
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'a'; 64 * 1024];
            for _ in 0..(1 << 14) {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
        Misbehaviour::Trickle => {
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            loop {
                if stream.write_all(b"1\r\nx\r\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Misbehaviour::HugeHeaders => {
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..10_000 {
                head.push_str(&format!("x-junk-{i}: {}\r\n", "a".repeat(90)));
            }
            head.push_str("content-length: 0\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
        }
        Misbehaviour::BadBytes => {
            let body: &[u8] = b"broken \x00 body \xff\xfe end";
            let mut response = format!(
                "HTTP/1.1 500 Oops\r\nx-bad: café\r\nconnection: close\r\ncontent-length: {}\r\n",
                body.len()
            )
            .into_bytes();
            // Not UTF-8 in a header value (obs-text, which HTTP allows).
            response.extend_from_slice(b"x-latin1: \xe9t\xe9\r\n\r\n");
            response.extend_from_slice(body);
            // A complete answer: without `connection: close` the next round
            // would come on this connection, which is never read again.
            let _ = stream.write_all(&response).await;
        }
        Misbehaviour::NulInHeader => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nx-nul: a\x00b\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
        Misbehaviour::ResetMidBody => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            reset(stream);
            return;
        }
        Misbehaviour::ResetBeforeAnswer => {
            reset(stream);
            return;
        }
        Misbehaviour::NotHttp => {
            let _ = stream
                .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 this is not http\r\n\r\n")
                .await;
        }
        Misbehaviour::Silent => {}
    }
    // Keep the connection open until the worker gives up on it.
    tokio::time::sleep(Duration::from_secs(30)).await;
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn hostile_responses_end_within_the_timeout_with_a_clear_kind_and_bounded_memory() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    let healthy = Receiver::ok().await.expect("receiver");
    let healthy_id = support::endpoint(&db.pool, 1, &healthy.url("/ok"), "2.0").await;
    let mut endpoints = Vec::new();
    for how in Misbehaviour::ALL {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(serve(listener, how));
        endpoints.push((support::endpoint(&db.pool, 1, &url, "2.0").await, how));
    }
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let mut worker = support::spawn_binary(
        &db,
        &[
            ("CLINIC_WEBHOOKS__HTTP__TIMEOUT", timeout.as_str()),
            ("CLINIC_WEBHOOKS__WORKER__LEASE", "10s"),
            ("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "1h"),
        ],
    );
    let rounds = 3;
    for round in 1..=rounds {
        support::visit(&db.pool, 1, 10).await;
        // The healthy endpoint is served while the others hang and misbehave.
        let got = healthy.wait_for(round, Duration::from_millis(1500)).await;
        assert_eq!(
            got.len(),
            round,
            "the healthy endpoint waited on the hostile ones"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let calls = i64::try_from(rounds * (Misbehaviour::ALL.len() + 1)).expect("count");
    support::wait_for_scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.attempts",
        calls,
        TIMEOUT * 3 + Duration::from_secs(5),
    )
    .await;
    let peak = peak_rss_kib(worker.id());
    eprintln!(
        "the worker's peak RSS with hostile receivers: {} MiB",
        peak / 1024
    );

    for (id, how) in &endpoints {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            String,
            Option<String>,
            Option<i16>,
            bool,
            f64,
            Option<String>,
            Option<serde_json::Value>,
            Option<String>,
        )> = sqlx::query_as(
            "SELECT outcome::text, error_kind, response_status, response_truncated,
                        duration_ms, response_body, response_headers, error
                   FROM webhooks.attempts WHERE endpoint_id = $1",
        )
        .bind(id)
        .fetch_all(&db.pool)
        .await
        .expect("attempts");
        assert_eq!(rows.len(), rounds, "{how:?}");
        let (outcome, kind, status, truncated) = how.expected();
        for (o, k, s, t, ms, body, headers, error) in rows {
            assert_eq!(
                (o.as_str(), k.as_deref(), s, t),
                (outcome, kind, status, truncated),
                "{how:?}: {error:?}"
            );
            assert!(
                ms < (TIMEOUT + Duration::from_secs(1)).as_secs_f64() * 1000.0,
                "{how:?} took {ms} ms"
            );
            if let Some(body) = &body {
                assert!(body.len() <= 16384, "{how:?}: the logged body is bounded");
                assert!(!body.contains('\0'), "{how:?}");
            }
            if matches!(how, Misbehaviour::BadBytes) {
                assert!(
                    body.as_deref().is_some_and(|b| b.contains('\u{FFFD}')),
                    "{body:?}"
                );
                let headers = headers.expect("headers");
                assert_eq!(headers["x-bad"], "café");
                assert_eq!(headers["x-latin1"], "\u{FFFD}t\u{FFFD}");
            }
        }
    }
    let healthy_ok: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhooks.attempts WHERE endpoint_id = $1 AND outcome = 'succeeded'",
    )
    .bind(healthy_id)
    .fetch_one(&db.pool)
    .await
    .expect("healthy");
    assert_eq!(healthy_ok, i64::try_from(rounds).expect("rounds"));
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "peak RSS {} MiB over the bound",
        peak / 1024
    );
    support::signal(&worker, "TERM");
    support::wait_exit(&mut worker, Duration::from_secs(15))
        .await
        .expect("stopped");
}
