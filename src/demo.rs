//! `clinic-webhooks demo`: the first five minutes. On the configured (or
//! embedded) database it starts a receiver on 127.0.0.1, makes a demo
//! clinic with a v1 and a v2 endpoint pointing at it (that address alone is
//! allowed past the private-network guard), runs a worker in this process,
//! and plays a patient's sign-up and a visit's whole life through the real
//! tables and triggers. Each request is printed as it lands, with its
//! signature checked; the receiver fails one request once, so a retry shows
//! too. Then the log as a DBA sees it, and how to look further.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::signing::SigningKey;
use crate::{db, worker};

/// The demo clinic's code; a second run replaces its endpoints.
const CLINIC_CODE: &str = "demo-clinic";
/// Every event reaches both endpoints: 6 events.
const EVENTS: usize = 6;
const ENDPOINTS: usize = 2;
/// The whole demo, waiting included, must end well within a minute.
const PATIENCE: Duration = Duration::from_secs(40);
/// The event whose first request to the v2 endpoint the receiver fails.
const FAILS_ONCE: &str = "visit.note.signed_and_sent";

/// One request as the demo's receiver saw it.
struct Landed {
    path: String,
    event_type: String,
    version: String,
    verified: bool,
    status: u16,
}

struct Receiver {
    /// Endpoint path ("/v1", "/v2") → its signing key.
    keys: Vec<(String, SigningKey)>,
    /// Whether the one request it fails has been failed already.
    failed_once: AtomicBool,
    landed: mpsc::UnboundedSender<Landed>,
}

/// Runs the demo; `explore` is the psql command that opens this database.
pub async fn run(settings: &Settings, pool: PgPool, explore: &str) -> Result<()> {
    db::migrate(&pool).await?;
    refuse_a_database_in_use(&pool).await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("starting the demo's receiver on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let (clinic, endpoints) = demo_clinic(&pool, addr).await?;
    println!(
        "demo: a receiver listens on http://{addr}; clinic {CLINIC_CODE} (id {clinic}) has a v1 endpoint ({}) and a v2 endpoint ({}) pointing at it\n",
        endpoints[0].0, endpoints[1].0
    );

    let (landed, mut arrivals) = mpsc::unbounded_channel();
    let receiver = Arc::new(Receiver {
        keys: endpoints
            .iter()
            .map(|(_, path, secret)| Ok((path.clone(), SigningKey::from_secret(secret)?)))
            .collect::<Result<_, crate::signing::SigningError>>()?,
        failed_once: AtomicBool::new(false),
        landed,
    });
    let stop = CancellationToken::new();
    let server = {
        let app = Router::new().fallback(receive).with_state(receiver);
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    };

    let mut settings = settings.clone();
    settings.http.allowed_targets = vec![addr];
    settings.retry.schedule = vec![Duration::from_secs(2), Duration::from_secs(5)];
    settings.retry.jitter = 0.0;
    settings.worker.name = format!("demo-{}", std::process::id());
    settings.ops.listen = String::new();
    let worker = {
        let (settings, pool, stop) = (settings.clone(), pool.clone(), stop.clone());
        tokio::spawn(async move { worker::run(&settings, pool, stop).await })
    };

    play(&pool, clinic).await?;
    println!(
        "the app wrote a sign-up and a visit's life; the triggers queued {EVENTS} events for {ENDPOINTS} endpoints:\n"
    );

    let expected = EVENTS * ENDPOINTS;
    let started = Instant::now();
    let mut succeeded = 0;
    let mut progress_shown = false;
    while succeeded < expected {
        if started.elapsed() > PATIENCE {
            stop.cancel();
            bail!(
                "only {succeeded} of {expected} deliveries arrived within {}s; see `clinic-webhooks status`",
                PATIENCE.as_secs()
            );
        }
        match tokio::time::timeout(Duration::from_millis(250), arrivals.recv()).await {
            Ok(Some(l)) => {
                if progress_shown {
                    print!("\r{:60}\r", "");
                    progress_shown = false;
                }
                let signature = if l.verified {
                    "signature verified"
                } else {
                    "SIGNATURE INVALID"
                };
                if l.status == 200 {
                    succeeded += 1;
                    println!(
                        "  ✓ {:<28} v{:<4} {:<3} {signature}  → 200",
                        l.event_type, l.version, l.path
                    );
                } else {
                    println!(
                        "  ✗ {:<28} v{:<4} {:<3} {signature}  → {} (the demo's receiver fails this one once; the worker retries it in 2s)",
                        l.event_type, l.version, l.path, l.status
                    );
                }
            }
            Ok(None) => bail!("the demo's receiver stopped"),
            Err(_) if !std::io::stdout().is_terminal() => {}
            Err(_) => {
                let spinner =
                    ['|', '/', '-', '\\'][(started.elapsed().as_millis() / 250 % 4) as usize];
                print!(
                    "\r  {spinner} waiting: {succeeded} of {expected} delivered ({:.0}s)",
                    started.elapsed().as_secs_f64()
                );
                std::io::stdout().flush().ok();
                progress_shown = true;
            }
        }
    }
    if progress_shown {
        print!("\r{:60}\r", "");
    }
    // The last results are logged once the worker has written them.
    wait_logged(&pool, clinic, expected).await?;
    stop.cancel();
    worker.await.context("the demo's worker")??;
    server.await.context("the demo's receiver")??;

    println!(
        "\nall {expected} delivered in {:.1}s. The log, as a DBA sees it:\n",
        started.elapsed().as_secs_f64()
    );
    print!("{}", log_table(&pool, clinic).await?);
    println!(
        "\nExplore it yourself:\n  {explore}\n  SELECT * FROM webhooks.delivery_log WHERE clinic_code = '{CLINIC_CODE}' ORDER BY called_at;\n  \\x\n  SELECT * FROM webhooks.delivery_log_detail WHERE clinic_code = '{CLINIC_CODE}' ORDER BY called_at DESC LIMIT 1;"
    );
    Ok(())
}

/// The demo runs a worker, which would deliver every endpoint's work with
/// the demo's short retry schedule, and writes a patient and a visit: it
/// runs on the embedded database, or on one that has no endpoint but the
/// demo's, never on a database in use.
async fn refuse_a_database_in_use(pool: &PgPool) -> Result<()> {
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhooks.endpoints e
           JOIN clinic.clinics c ON c.id = e.clinic_id
          WHERE c.code <> $1",
    )
    .bind(CLINIC_CODE)
    .fetch_one(pool)
    .await?;
    if others > 0 {
        bail!(
            "this database has {others} endpoint(s) of other clinics: the demo runs a worker and writes demo rows, so it runs only on the embedded database (no DATABASE_URL, no database.url) or on an empty one"
        );
    }
    Ok(())
}

/// The demo clinic with two fresh endpoints (a v1 at /v1, a v2 at /v2);
/// returns its id and the endpoints as (id, path, secret).
async fn demo_clinic(pool: &PgPool, addr: SocketAddr) -> Result<(i64, Vec<(i64, String, String)>)> {
    let clinic: i64 = sqlx::query_scalar(
        "INSERT INTO clinic.clinics (code, name) VALUES ($1, 'Demo Clinic')
         ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name
         RETURNING id",
    )
    .bind(CLINIC_CODE)
    .fetch_one(pool)
    .await?;
    // A run before this one left its endpoints (and their log): start clean.
    sqlx::query("DELETE FROM webhooks.endpoints WHERE clinic_id = $1")
        .bind(clinic)
        .execute(pool)
        .await?;
    let mut endpoints = Vec::new();
    for (version, path) in [("1.0", "/v1"), ("2.0", "/v2")] {
        let (id, secret): (i64, String) = sqlx::query_as(
            "INSERT INTO webhooks.endpoints (clinic_id, url, version, description)
             VALUES ($1, $2, $3, 'clinic-webhooks demo')
             RETURNING id, secret",
        )
        .bind(clinic)
        .bind(format!("http://{addr}{path}"))
        .bind(version)
        .fetch_one(pool)
        .await?;
        endpoints.push((id, path.to_owned(), secret));
    }
    Ok((clinic, endpoints))
}

/// What the application does, in its own transactions: a patient signs up,
/// books a visit, the visit starts, a note is signed, the visit ends, the
/// invoice is processed.
async fn play(pool: &PgPool, clinic: i64) -> Result<()> {
    let patient: i64 = sqlx::query_scalar(
        "INSERT INTO clinic.users (clinic_id, role, source, name)
         VALUES ($1, 'patient', 'signup', 'Demo Patient') RETURNING id",
    )
    .bind(clinic)
    .fetch_one(pool)
    .await?;
    let visit: i64 = sqlx::query_scalar(
        "INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
         VALUES ($1, $2, now(), now() + interval '30 minutes') RETURNING id",
    )
    .bind(clinic)
    .bind(patient)
    .fetch_one(pool)
    .await?;
    for step in [
        "UPDATE clinic.visits SET status = 30, actual_start = now() WHERE id = $1",
        "INSERT INTO clinic.visit_notes (visit_id, status, body) VALUES ($1, 'signed', 'Demo note')",
        "UPDATE clinic.visits SET status = 50, actual_end = now() WHERE id = $1",
        "INSERT INTO clinic.invoices (visit_id, status, amount_due, amount_paid) VALUES ($1, 'paid', 4500, 4500)",
    ] {
        sqlx::query(step).bind(visit).execute(pool).await?;
    }
    Ok(())
}

/// The demo's receiver: checks the signature with the endpoint's secret,
/// fails the first request of `FAILS_ONCE` to the v2 endpoint with a 503,
/// answers 200 otherwise.
async fn receive(
    State(receiver): State<Arc<Receiver>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let verified = receiver
        .keys
        .iter()
        .find(|(p, _)| *p == path)
        .is_some_and(|(_, key)| {
            header("webhook-timestamp").parse().is_ok_and(|ts| {
                key.verify(
                    &header("webhook-id"),
                    ts,
                    &body,
                    &header("webhook-signature"),
                )
            })
        });
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let event_type = json["type"].as_str().unwrap_or("?").to_owned();
    let version = json["version"].as_str().unwrap_or("1.0").to_owned();
    let fail = path == "/v2"
        && event_type == FAILS_ONCE
        && !receiver.failed_once.swap(true, Ordering::Relaxed);
    let status = if fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let _ = receiver.landed.send(Landed {
        path,
        event_type,
        version,
        verified,
        status: status.as_u16(),
    });
    status
}

/// Waits until the demo clinic's `expected` deliveries are logged as succeeded.
async fn wait_logged(pool: &PgPool, clinic: i64, expected: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhooks.deliveries d
               JOIN webhooks.endpoints e ON e.id = d.endpoint_id
              WHERE e.clinic_id = $1 AND d.state = 'succeeded'",
        )
        .bind(clinic)
        .fetch_one(pool)
        .await?;
        if usize::try_from(done).unwrap_or(0) >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{done} of {expected} deliveries are logged as succeeded");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The demo clinic's log, aligned as psql prints it.
async fn log_table(pool: &PgPool, clinic: i64) -> Result<String> {
    let rows = sqlx::query(
        "SELECT to_char(called_at, 'HH24:MI:SS.MS'), event_type, endpoint_id::text, attempt::text,
                response_status::text, outcome::text, round(duration_ms::numeric, 1)::text
           FROM webhooks.delivery_log
          WHERE clinic_id = $1
          ORDER BY called_at, attempt_id",
    )
    .bind(clinic)
    .fetch_all(pool)
    .await?;
    let header = [
        "called_at",
        "event_type",
        "endpoint_id",
        "attempt",
        "response_status",
        "outcome",
        "duration_ms",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            (0..header.len())
                .map(|i| row.get::<Option<String>, _>(i).unwrap_or_default())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!(" {v:<w$} "))
            .collect();
        format!("{}\n", padded.join("|").trim_end())
    };
    let mut out = line(header.to_vec());
    out.push_str(&format!(
        "{}\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    ));
    let count = cells.len();
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out.push_str(&format!("({count} rows)\n"));
    Ok(out)
}
