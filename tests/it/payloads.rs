//! Every event × version, end to end: a domain write fires the trigger, the
//! worker delivers to a real receiver, and the body is byte-for-byte the
//! seed's shape (apart from the generated event id and time).

use std::time::Duration;

use clinic_webhooks_test_support::{Received, Receiver};

use crate::support::{self, InProcessWorker, TestDb};

const SEED_ID: &str = "5c34979c-30dc-496c-8cd3-6eb9925862c1";
const SEED_CREATED: i64 = 1546950556;

/// Replaces the generated `id` and `created` with the seed's, after checking
/// they are what they should be (the webhook-id, and a recent time).
fn normalize(r: &Received) -> String {
    let body = std::str::from_utf8(&r.body).expect("utf8 body");
    let id_at = body.find(r#""id":""#).expect("id") + 6;
    let id = &body[id_at..id_at + 36];
    assert_eq!(
        Some(id),
        r.header("webhook-id"),
        "body id is the webhook-id"
    );
    assert!(
        uuid::Uuid::parse_str(id).is_ok(),
        "event id is a UUID: {id}"
    );
    let created_at = body.find(r#""created":"#).expect("created") + 10;
    let digits: String = body[created_at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let created: i64 = digits.parse().expect("created is an integer");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        (now - created).abs() < 600,
        "created {created} is the event time"
    );
    body.replacen(id, SEED_ID, 1).replacen(
        &format!(r#""created":{digits}"#),
        &format!(r#""created":{SEED_CREATED}"#),
        1,
    )
}

struct Setup {
    db: TestDb,
    receiver: Receiver,
    worker: InProcessWorker,
}

/// Clinic 'xxx' (id 1), patient 60610, and a v1 and a v2 endpoint.
async fn setup() -> Setup {
    let db = TestDb::new().await;
    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic(&db.pool, 1, "xxx").await;
    support::user(&db.pool, 60610, 1, "patient", "signup").await;
    support::endpoint(&db.pool, 1, &receiver.url("/v1"), "1.0").await;
    support::endpoint(&db.pool, 1, &receiver.url("/v2"), "2.0").await;
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    Setup {
        db,
        receiver,
        worker,
    }
}

impl Setup {
    /// Waits for `n` requests on each of /v1 and /v2; returns the last of each, normalized.
    async fn bodies(&self, n: usize) -> (String, String) {
        let all = self
            .receiver
            .wait_until(Duration::from_secs(15), |r| {
                r.iter().filter(|x| x.path == "/v1").count() >= n
                    && r.iter().filter(|x| x.path == "/v2").count() >= n
            })
            .await;
        let last = |path: &str| {
            let mine: Vec<&Received> = all.iter().filter(|r| r.path == path).collect();
            assert_eq!(mine.len(), n, "requests on {path}");
            normalize(mine[n - 1])
        };
        (last("/v1"), last("/v2"))
    }

    async fn exec(&self, sql: &'static str) {
        sqlx::query(sql).execute(&self.db.pool).await.expect(sql);
    }
}

const INSERT_SEED_VISIT: &str =
    "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at, status)
     VALUES (28540, 1, 60610, to_timestamp(1546950546), to_timestamp(1546951446), 10)";

#[tokio::test]
async fn visit_created_updated_and_ended_match_the_seed() {
    let s = setup().await;
    s.exec(INSERT_SEED_VISIT).await;
    let (v1, v2) = s.bodies(1).await;
    assert_eq!(
        v1,
        r#"{"version":"1.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.created","created":1546950556,"account_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":"1546950546","end":"1546951446","actual_start":null,"actual_end":null,"status":"10","completed_by":null}}"#
    );
    assert_eq!(
        v2,
        r#"{"version":"2.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.created","created":1546950556,"clinic_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":1546950546,"end":1546951446,"actual_start":null,"actual_end":null,"status":"new","status_updated_by":null}}"#
    );

    // The visit starts: status turns inprogress.
    s.exec("UPDATE clinic.visits SET status = 30, actual_start = to_timestamp(1546950546), status_updated_by = 60610 WHERE id = 28540").await;
    let (v1, v2) = s.bodies(2).await;
    assert_eq!(
        v1,
        r#"{"version":"1.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.updated","created":1546950556,"account_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":"1546950546","end":"1546951446","actual_start":"1546950546","actual_end":null,"status":"30","completed_by":"60610"}}"#
    );
    assert_eq!(
        v2,
        r#"{"version":"2.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.updated","created":1546950556,"clinic_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":1546950546,"end":1546951446,"actual_start":1546950546,"actual_end":null,"status":"inprogress","status_updated_by":"60610"}}"#
    );

    // The patient exits the waiting room: cancelled (40), the seed's own sample.
    s.exec("UPDATE clinic.visits SET status = 40, actual_end = to_timestamp(1546950555) WHERE id = 28540").await;
    let (v1, v2) = s.bodies(3).await;
    assert_eq!(
        v1,
        r#"{"version":"1.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.ended","created":1546950556,"account_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":"1546950546","end":"1546951446","actual_start":"1546950546","actual_end":"1546950555","status":"40","completed_by":"60610"}}"#
    );
    assert_eq!(
        v2,
        r#"{"version":"2.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.ended","created":1546950556,"clinic_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":1546950546,"end":1546951446,"actual_start":1546950546,"actual_end":1546950555,"status":"cancelled","status_updated_by":"60610"}}"#
    );
    s.worker.stop().await;
}

/// The seed's note and invoice samples describe a completed visit.
async fn completed_seed_visit(s: &Setup) {
    s.exec("INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at, actual_start, actual_end, status, status_updated_by)
            VALUES (28540, 1, 60610, to_timestamp(1546950546), to_timestamp(1546951446),
                    to_timestamp(1546950546), to_timestamp(1546950555), 50, 60610)").await;
    s.bodies(1).await;
}

#[tokio::test]
async fn visit_note_signed_and_sent_matches_the_seed() {
    let s = setup().await;
    completed_seed_visit(&s).await;
    s.exec("INSERT INTO clinic.visit_notes (id, visit_id, status) VALUES (77, 28540, 'draft')")
        .await;
    s.exec("UPDATE clinic.visit_notes SET status = 'signed' WHERE id = 77")
        .await;
    let (v1, v2) = s.bodies(2).await;
    assert_eq!(
        v1,
        r#"{"version":"1.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.note.signed_and_sent","created":1546950556,"account_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":"1546950546","end":"1546951446","actual_start":"1546950546","actual_end":"1546950555","status":"50","completed_by":"60610","note":{"id":"77","status":"signed"}}}"#
    );
    assert_eq!(
        v2,
        r#"{"version":"2.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.note.signed_and_sent","created":1546950556,"clinic_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":1546950546,"end":1546951446,"actual_start":1546950546,"actual_end":1546950555,"status":"completed","status_updated_by":"60610","note":{"id":"77","status":"signed"}}}"#
    );
    s.worker.stop().await;
}

#[tokio::test]
async fn visit_invoice_processed_matches_the_seed() {
    let s = setup().await;
    completed_seed_visit(&s).await;
    s.exec(
        "INSERT INTO clinic.invoices (id, visit_id, status, amount_due, amount_paid, currency)
            VALUES (132, 28540, 'pending', 2500, 1500, 'USD')",
    )
    .await;
    let (v1, v2) = s.bodies(2).await;
    assert_eq!(
        v1,
        r#"{"version":"1.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.invoice.processed","created":1546950556,"account_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":"1546950546","end":"1546951446","actual_start":"1546950546","actual_end":"1546950555","status":"50","completed_by":"60610","invoice":{"id":"132","status":"pending","amount_due":"2500","amount_paid":"1500","currency":"USD"}}}"#
    );
    assert_eq!(
        v2,
        r#"{"version":"2.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.invoice.processed","created":1546950556,"clinic_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":1546950546,"end":1546951446,"actual_start":1546950546,"actual_end":1546950555,"status":"completed","status_updated_by":"60610","invoice":{"id":"132","status":"pending","amount_due":2500,"amount_paid":1500,"currency":"USD"}}}"#
    );

    // Paid in full: a payload field changed, so it fires again.
    s.exec("UPDATE clinic.invoices SET status = 'paid', amount_paid = 2500 WHERE id = 132")
        .await;
    let (_, v2) = s.bodies(3).await;
    assert!(v2.contains(r#""invoice":{"id":"132","status":"paid","amount_due":2500,"amount_paid":2500,"currency":"USD"}"#), "{v2}");
    s.worker.stop().await;
}

#[tokio::test]
async fn user_created_matches_the_contract() {
    let s = setup().await;
    // setup() inserted patient 60610 before any endpoint existed: no webhook for it.
    s.exec("INSERT INTO clinic.users (id, clinic_id, role, source, created_by) VALUES (60611, 1, 'provider', 'admin', 60610)").await;
    let (v1, v2) = s.bodies(1).await;
    assert_eq!(
        v1,
        r#"{"version":"1.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"user.created","created":1546950556,"account_code":"xxx","data":{"id":"60611","role":"provider","source":"admin","created_by":"60610"}}"#
    );
    assert_eq!(
        v2,
        r#"{"version":"2.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"user.created","created":1546950556,"clinic_code":"xxx","data":{"id":"60611","role":"provider","source":"admin","created_by":"60610"}}"#
    );
    s.worker.stop().await;
}

/// Text the app wrote arrives intact, whatever it holds: emoji,
/// right-to-left script, quotes, backslashes, control characters (every one
/// PostgreSQL text can hold; it cannot hold NUL), in the clinic's code and in
/// a visit status's name; ids and amounts at the bigint limit; NULLs as
/// `null`. The bodies are valid JSON, and the signature covers them.
#[tokio::test]
async fn odd_text_extreme_ids_and_nulls_arrive_intact_as_valid_json() {
    const MAX: i64 = i64::MAX;
    let code = "клиника 🚑 \"quoted\" \\back\\slash\\ שלום مرحبا \u{1}\u{8}\u{c}\t\r\n\u{1f}\u{7f} \u{2028}\u{2029} end";
    let status = "in \"progress\" \\ ⏳ \u{1}";
    let db = TestDb::new().await;
    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic(&db.pool, MAX, code).await;
    support::user(&db.pool, MAX, MAX, "patient", "signup").await;
    let v1 = support::endpoint(&db.pool, MAX, &receiver.url("/v1"), "1.0").await;
    let v2 = support::endpoint(&db.pool, MAX, &receiver.url("/v2"), "2.0").await;
    sqlx::query("INSERT INTO clinic.visit_statuses (code, name) VALUES (32767, $1)")
        .bind(status)
        .execute(&db.pool)
        .await
        .expect("status");
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    sqlx::query(
        "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at, status)
         VALUES ($1, $1, $1, to_timestamp(0), to_timestamp(253402300799), 32767)",
    )
    .bind(MAX)
    .execute(&db.pool)
    .await
    .expect("visit");
    sqlx::query(
        "INSERT INTO clinic.invoices (id, visit_id, status, amount_due, amount_paid, currency)
         VALUES ($1, $1, 'pending', $1, 0, 'EUR')",
    )
    .bind(MAX)
    .execute(&db.pool)
    .await
    .expect("invoice");

    let all = receiver
        .wait_until(Duration::from_secs(15), |r| r.len() >= 4)
        .await;
    assert_eq!(
        all.len(),
        4,
        "visit.created and visit.invoice.processed, twice"
    );
    let secrets: Vec<(i64, String)> = sqlx::query_as("SELECT id, secret FROM webhooks.endpoints")
        .fetch_all(&db.pool)
        .await
        .expect("secrets");
    for r in &all {
        let body: serde_json::Value = serde_json::from_slice(&r.body).expect("valid JSON");
        let endpoint = if r.path == "/v1" { v1 } else { v2 };
        let secret = &secrets
            .iter()
            .find(|(id, _)| *id == endpoint)
            .expect("secret")
            .1;
        support::verify_signature(r, secret);
        let data = &body["data"];
        assert_eq!(data["id"], MAX.to_string(), "{body}");
        assert_eq!(data["member_id"], MAX.to_string(), "{body}");
        assert_eq!(data["provider_id"], serde_json::Value::Null, "{body}");
        assert_eq!(data["actual_start"], serde_json::Value::Null, "{body}");
        if r.path == "/v1" {
            assert_eq!(body["account_code"], code, "{body}");
            assert_eq!(data["status"], "32767", "{body}");
            assert_eq!(data["end"], "253402300799", "{body}");
        } else {
            assert_eq!(body["clinic_code"], code, "{body}");
            assert_eq!(data["status"], status, "{body}");
            assert_eq!(data["end"], 253402300799_i64, "{body}");
        }
        if body["type"] == "visit.invoice.processed" {
            let invoice = &data["invoice"];
            assert_eq!(invoice["id"], MAX.to_string(), "{body}");
            if r.path == "/v1" {
                assert_eq!(invoice["amount_due"], MAX.to_string(), "{body}");
            } else {
                assert_eq!(invoice["amount_due"], MAX, "{body}");
            }
        }
    }
    worker.stop().await;
}
