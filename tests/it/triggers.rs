//! The firing rules and the endpoint rules, checked in the database itself
//! (no worker running: what the triggers enqueue is what we look at).

use sqlx::PgPool;

use crate::support::{self, TestDb};

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

async fn event_types(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT type FROM webhooks.events ORDER BY created_at, subject, type")
        .fetch_all(pool)
        .await
        .expect("events")
}

async fn exec(pool: &PgPool, sql: &'static str) {
    sqlx::query(sql).execute(pool).await.expect(sql);
}

async fn clinic_with_endpoint(db: &TestDb) -> i64 {
    support::clinic(&db.pool, 1, "c1").await;
    support::user(&db.pool, 10, 1, "patient", "signup").await;
    support::endpoint(&db.pool, 1, "https://hooks.example.com/a", "2.0").await
}

#[tokio::test]
async fn visit_updates_fire_updated_ended_or_nothing() {
    let db = TestDb::new().await;
    clinic_with_endpoint(&db).await;
    let p = &db.pool;
    exec(p, "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (1, 1, 10, now(), now() + interval '1 hour')").await;
    // Not a payload field, or no change at all: nothing.
    exec(p, "UPDATE clinic.visits SET type = 'walk_in' WHERE id = 1").await;
    exec(p, "UPDATE clinic.visits SET status = status WHERE id = 1").await;
    assert_eq!(event_types(p).await, ["visit.created"]);
    // Reschedule and start: visit.updated each.
    exec(p, "UPDATE clinic.visits SET start_at = start_at + interval '1 day', end_at = end_at + interval '1 day' WHERE id = 1").await;
    exec(
        p,
        "UPDATE clinic.visits SET status = 30, actual_start = now() WHERE id = 1",
    )
    .await;
    // Completed: visit.ended, not visit.updated.
    exec(
        p,
        "UPDATE clinic.visits SET status = 50, actual_end = now() WHERE id = 1",
    )
    .await;
    // A correction after the end is an update again.
    exec(
        p,
        "UPDATE clinic.visits SET status_updated_by = 10 WHERE id = 1",
    )
    .await;
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT e.type FROM webhooks.events e JOIN webhooks.deliveries d ON d.event_id = e.id ORDER BY d.id",
    )
    .fetch_all(p)
    .await
    .expect("types");
    assert_eq!(
        types,
        [
            "visit.created",
            "visit.updated",
            "visit.updated",
            "visit.ended",
            "visit.updated"
        ]
    );
}

#[tokio::test]
async fn notes_fire_once_when_signed_and_invoices_on_payload_changes() {
    let db = TestDb::new().await;
    clinic_with_endpoint(&db).await;
    let p = &db.pool;
    exec(p, "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (1, 1, 10, now(), now())").await;
    exec(p, "DELETE FROM webhooks.deliveries").await;
    exec(p, "DELETE FROM webhooks.events").await;
    exec(p, "INSERT INTO clinic.visit_notes (id, visit_id, status) VALUES (1, 1, 'new'), (2, 1, 'signed')").await;
    exec(
        p,
        "UPDATE clinic.visit_notes SET status = 'draft' WHERE id = 1",
    )
    .await;
    exec(
        p,
        "UPDATE clinic.visit_notes SET status = 'signed' WHERE id = 1",
    )
    .await;
    exec(
        p,
        "UPDATE clinic.visit_notes SET body = 'addendum' WHERE id = 1",
    )
    .await;
    assert_eq!(
        count(
            p,
            "SELECT count(*) FROM webhooks.events WHERE type = 'visit.note.signed_and_sent'"
        )
        .await,
        2
    );
    exec(
        p,
        "INSERT INTO clinic.invoices (id, visit_id, amount_due) VALUES (1, 1, 2500)",
    )
    .await;
    exec(
        p,
        "UPDATE clinic.invoices SET status = 'processing' WHERE id = 1",
    )
    .await;
    exec(
        p,
        "UPDATE clinic.invoices SET status = 'processing' WHERE id = 1",
    )
    .await;
    exec(
        p,
        "UPDATE clinic.invoices SET amount_paid = 2500, status = 'paid' WHERE id = 1",
    )
    .await;
    assert_eq!(
        count(
            p,
            "SELECT count(*) FROM webhooks.events WHERE type = 'visit.invoice.processed'"
        )
        .await,
        3
    );
    // Notes and invoices share their visit's lane.
    assert_eq!(
        count(
            p,
            "SELECT count(*) FROM webhooks.deliveries WHERE subject <> 'visit:1'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn fan_out_honours_clinic_subscription_and_enabled() {
    let db = TestDb::new().await;
    let p = &db.pool;
    support::clinic(p, 1, "c1").await;
    support::clinic(p, 2, "c2").await;
    let all = support::endpoint(p, 1, "https://a.example.com/", "2.0").await;
    let only_ended: i64 = sqlx::query_scalar(
        "INSERT INTO webhooks.endpoints (clinic_id, url, version, event_types)
         VALUES (1, 'https://b.example.com/', '1.0', ARRAY['visit.ended']) RETURNING id",
    )
    .fetch_one(p)
    .await
    .expect("endpoint");
    let disabled = support::endpoint(p, 1, "https://c.example.com/", "2.0").await;
    exec(
        p,
        "UPDATE webhooks.endpoints SET enabled = false WHERE url = 'https://c.example.com/'",
    )
    .await;
    let other_clinic = support::endpoint(p, 2, "https://d.example.com/", "2.0").await;

    support::user(p, 10, 1, "patient", "calendar").await;
    exec(p, "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (1, 1, 10, now(), now())").await;
    exec(p, "UPDATE clinic.visits SET status = 40 WHERE id = 1").await;

    let per_endpoint = |id: i64| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT e.type FROM webhooks.deliveries d JOIN webhooks.events e ON e.id = d.event_id
             WHERE d.endpoint_id = $1 ORDER BY d.id",
        )
        .bind(id)
        .fetch_all(p)
        .await
        .expect("deliveries")
    };
    assert_eq!(
        per_endpoint(all).await,
        ["user.created", "visit.created", "visit.ended"]
    );
    assert_eq!(per_endpoint(only_ended).await, ["visit.ended"]);
    assert!(per_endpoint(disabled).await.is_empty());
    assert!(per_endpoint(other_clinic).await.is_empty());
    let disabled_reason: Option<String> =
        sqlx::query_scalar("SELECT disabled_reason FROM webhooks.endpoints WHERE id = $1")
            .bind(disabled)
            .fetch_one(p)
            .await
            .expect("reason");
    assert_eq!(
        disabled_reason.as_deref(),
        Some("disabled by an administrator")
    );
}

#[tokio::test]
async fn no_commit_no_webhook_and_bulk_writes_enqueue_every_row() {
    let db = TestDb::new().await;
    clinic_with_endpoint(&db).await;
    let p = &db.pool;
    let mut tx = p.begin().await.expect("begin");
    sqlx::query("INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at) VALUES (1, 10, now(), now())")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        count(
            p,
            "SELECT count(*) FROM webhooks.events WHERE type LIKE 'visit.%'"
        )
        .await,
        0
    );

    support::visits(p, 1, 10, 1000).await;
    assert_eq!(
        count(
            p,
            "SELECT count(*) FROM webhooks.events WHERE type = 'visit.created'"
        )
        .await,
        1000
    );
    assert_eq!(
        count(
            p,
            "SELECT count(DISTINCT subject) FROM webhooks.deliveries WHERE subject LIKE 'visit:%'"
        )
        .await,
        1000
    );
    // One statement updating many rows: one event per changed row only.
    exec(
        p,
        "UPDATE clinic.visits SET status = CASE WHEN id % 2 = 0 THEN 50 ELSE status END",
    )
    .await;
    assert_eq!(
        count(
            p,
            "SELECT count(*) FROM webhooks.events WHERE type = 'visit.ended'"
        )
        .await,
        500
    );
    assert_eq!(
        count(
            p,
            "SELECT count(*) FROM webhooks.events WHERE type = 'visit.updated'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn bad_endpoint_rows_are_refused_with_clear_messages() {
    let db = TestDb::new().await;
    let p = &db.pool;
    support::clinic(p, 1, "c1").await;
    let refused = |sql: &'static str| async move {
        match sqlx::query(sql).execute(p).await {
            Ok(_) => panic!("accepted: {sql}"),
            Err(e) => e.to_string(),
        }
    };
    let err =
        refused("INSERT INTO webhooks.endpoints (clinic_id, url) VALUES (1, 'not a url')").await;
    assert!(
        err.contains("url must be an absolute http:// or https:// URL"),
        "{err}"
    );
    let err = refused(
        "INSERT INTO webhooks.endpoints (clinic_id, url) VALUES (1, 'ftp://x.example.com/')",
    )
    .await;
    assert!(err.contains("url must be"), "{err}");
    let err = refused("INSERT INTO webhooks.endpoints (clinic_id, url, version) VALUES (1, 'https://x.example.com/', '3.0')").await;
    assert!(err.contains("version must be '1.0' or '2.0'"), "{err}");
    let err = refused("INSERT INTO webhooks.endpoints (clinic_id, url, event_types) VALUES (1, 'https://x.example.com/', ARRAY['visit.ended', 'visit.exploded'])").await;
    assert!(
        err.contains("unknown event type(s) {visit.exploded}"),
        "{err}"
    );
    let err = refused("INSERT INTO webhooks.endpoints (clinic_id, url, secret) VALUES (1, 'https://x.example.com/', 'hunter2')").await;
    assert!(err.contains("secret must be 'whsec_'"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the secret is never echoed: {err}"
    );
    let err = refused(
        "INSERT INTO webhooks.endpoints (clinic_id, url) VALUES (99, 'https://x.example.com/')",
    )
    .await;
    assert!(err.contains("foreign key"), "{err}");

    // Defaults: v2, all events, a generated Standard Webhooks secret.
    let id = support::endpoint(p, 1, "https://ok.example.com/hook?x=1", "2.0").await;
    let (version, types, secret): (String, Option<Vec<String>>, String) =
        sqlx::query_as("SELECT version, event_types, secret FROM webhooks.endpoints WHERE id = $1")
            .bind(id)
            .fetch_one(p)
            .await
            .expect("row");
    assert_eq!(version, "2.0");
    assert!(types.is_none());
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(clinic_webhooks::signing::SigningKey::from_secret(&secret).is_ok());
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_and_touches_only_our_schemas() {
    let db = TestDb::new().await;
    let p = &db.pool;
    exec(p, "CREATE TABLE public.app_table (id int)").await;
    clinic_webhooks::db::migrate(p)
        .await
        .expect("second migrate");
    clinic_webhooks::db::migrate(p)
        .await
        .expect("third migrate");
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT table_schema::text FROM information_schema.tables
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .fetch_all(p)
    .await
    .expect("schemas");
    assert_eq!(schemas, ["clinic", "public", "webhooks"]);
    assert_eq!(
        count(
            p,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        .await,
        1,
        "only the app's own table is in public"
    );
}

#[tokio::test]
async fn deleting_an_endpoint_deletes_its_deliveries_and_log() {
    let db = TestDb::new().await;
    let endpoint = clinic_with_endpoint(&db).await;
    let p = &db.pool;
    let other = support::endpoint(p, 1, "https://other.example.com/", "2.0").await;
    exec(p, "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (1, 1, 10, now(), now())").await;
    sqlx::query(
        "INSERT INTO webhooks.attempts (delivery_id, endpoint_id, event_id, event_type, attempt,
                                        started_at, url, outcome, error_kind)
         SELECT id, endpoint_id, event_id, 'visit.created', 1, now(), 'https://hooks.example.com/a',
                'retrying', 'status'
           FROM webhooks.deliveries",
    )
    .execute(p)
    .await
    .expect("log rows");
    sqlx::query("DELETE FROM webhooks.endpoints WHERE id = $1")
        .bind(endpoint)
        .execute(p)
        .await
        .expect("delete endpoint");
    let left: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = $1),
                (SELECT count(*) FROM webhooks.attempts WHERE endpoint_id = $1)",
    )
    .bind(endpoint)
    .fetch_all(p)
    .await
    .expect("counts");
    assert_eq!(left, [(0, 0)]);
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = $1")
            .bind(other)
            .fetch_one(p)
            .await
            .expect("other");
    assert_eq!(kept, 1, "the other endpoint's delivery stays");
}
