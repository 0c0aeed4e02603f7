//! The app's transaction writes the event; a worker's claim turns it into
//! deliveries (`webhooks.fan_out_events`). Checked in the database itself:
//! exactly once, in commit order per subject, to the endpoints subscribed at
//! the commit.

use sqlx::{Connection, PgPool};
use uuid::Uuid;

use crate::support::{self, TestDb};

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

async fn exec(pool: &PgPool, sql: &'static str) {
    sqlx::query(sql).execute(pool).await.expect(sql);
}

/// Clinic 1 with patient 10, visit 1 (fanned out already) and one endpoint.
async fn clinic_with_visit(db: &TestDb) -> i64 {
    support::clinic_with_patient(&db.pool).await;
    let endpoint = support::endpoint(&db.pool, 1, "https://hooks.example.com/a", "2.0").await;
    exec(&db.pool, "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (1, 1, 10, now(), now())").await;
    assert_eq!(support::fan_out(&db.pool).await, 1);
    endpoint
}

#[tokio::test]
async fn the_apps_transaction_writes_the_event_and_a_fan_out_makes_its_deliveries_once() {
    let db = TestDb::new().await;
    let p = &db.pool;
    support::clinic_with_patient(p).await;
    let a = support::endpoint(p, 1, "https://a.example.com/", "2.0").await;
    let b = support::endpoint(p, 1, "https://b.example.com/", "1.0").await;
    support::visit(p, 1, 10).await;
    assert_eq!(
        count(p, "SELECT count(*) FROM webhooks.deliveries").await,
        0
    );
    let (recorded, backlog): (Vec<i64>, i64) = sqlx::query_as(
        "SELECT (SELECT endpoint_ids FROM webhooks.events), (SELECT events FROM webhooks.fan_out_backlog)",
    )
    .fetch_one(p)
    .await
    .expect("event");
    assert_eq!(recorded, [a, b], "the subscribers at the commit");
    assert_eq!(backlog, 1);

    assert_eq!(support::fan_out(p).await, 2);
    assert_eq!(support::fan_out(p).await, 0, "never twice");
    assert_eq!(
        count(p, "SELECT count(*) FROM webhooks.deliveries").await,
        2
    );
    assert_eq!(
        count(p, "SELECT events FROM webhooks.fan_out_backlog").await,
        0
    );
}

/// An event written first but committed last is not skipped when a later
/// one was fanned out in between (what a cursor over write order would do).
#[tokio::test]
async fn an_event_committed_after_a_later_written_one_is_still_fanned_out_once() {
    let db = TestDb::new().await;
    let p = &db.pool;
    clinic_with_visit(&db).await;
    let mut slow = p.acquire().await.expect("connection");
    let mut slow = slow.begin().await.expect("begin");
    sqlx::query("INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (2, 1, 10, now(), now())")
        .execute(&mut *slow)
        .await
        .expect("written first");
    exec(p, "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (3, 1, 10, now(), now())").await;
    assert_eq!(support::fan_out(p).await, 1, "only what is committed");
    slow.commit().await.expect("committed last");
    assert_eq!(support::fan_out(p).await, 1);
    assert_eq!(support::fan_out(p).await, 0);
    let subjects: Vec<String> =
        sqlx::query_scalar("SELECT subject FROM webhooks.deliveries ORDER BY id")
            .fetch_all(p)
            .await
            .expect("subjects");
    assert_eq!(subjects, ["visit:1", "visit:3", "visit:2"]);
}

/// Lanes follow commit order. Here the transaction that changes the visit
/// second has the older transaction id (it wrote something else first), and
/// both commit before one fan-out: their deliveries must still be in the
/// order of the changes.
#[tokio::test]
async fn one_subjects_events_keep_their_order_when_the_older_transaction_commits_second() {
    let db = TestDb::new().await;
    let p = &db.pool;
    clinic_with_visit(&db).await;
    let mut older = p.acquire().await.expect("connection");
    let mut older = older.begin().await.expect("begin");
    let older_xid: i64 = sqlx::query_scalar(
        "INSERT INTO clinic.users (id, clinic_id, role, source) VALUES (11, 1, 'nurse', 'admin')
         RETURNING pg_current_xact_id()::text::bigint",
    )
    .fetch_one(&mut *older)
    .await
    .expect("the older transaction writes first");
    let mut newer = p.acquire().await.expect("connection");
    let mut newer = newer.begin().await.expect("begin");
    let newer_xid: i64 = sqlx::query_scalar(
        "UPDATE clinic.visits SET status = 20 WHERE id = 1 RETURNING pg_current_xact_id()::text::bigint",
    )
    .fetch_one(&mut *newer)
    .await
    .expect("waiting");
    assert!(newer_xid > older_xid);
    newer.commit().await.expect("commit");
    sqlx::query("UPDATE clinic.visits SET status = 30 WHERE id = 1")
        .execute(&mut *older)
        .await
        .expect("in progress");
    older.commit().await.expect("commit");

    support::fan_out(p).await;
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT e.type || ' ' || (e.snapshot ->> 'status_name')
           FROM webhooks.deliveries d JOIN webhooks.events e ON e.id = d.event_id
          WHERE d.subject = 'visit:1' ORDER BY d.id",
    )
    .fetch_all(p)
    .await
    .expect("lane");
    assert_eq!(
        statuses,
        [
            "visit.created new",
            "visit.updated waiting",
            "visit.updated inprogress"
        ]
    );
}

/// The endpoints are those subscribed when the app committed: one added
/// afterwards gets nothing, one deleted meanwhile gets nothing (and the
/// fan-out moves on), a disabled one keeps its delivery for later.
#[tokio::test]
async fn a_fan_out_goes_to_the_endpoints_subscribed_at_the_commit_that_still_exist() {
    let db = TestDb::new().await;
    let p = &db.pool;
    support::clinic_with_patient(p).await;
    let deleted = support::endpoint(p, 1, "https://deleted.example.com/", "2.0").await;
    let disabled = support::endpoint(p, 1, "https://disabled.example.com/", "2.0").await;
    support::visit(p, 1, 10).await;
    let added = support::endpoint(p, 1, "https://added.example.com/", "2.0").await;
    sqlx::query("DELETE FROM webhooks.endpoints WHERE id = $1")
        .bind(deleted)
        .execute(p)
        .await
        .expect("delete");
    sqlx::query("UPDATE webhooks.endpoints SET enabled = false WHERE id = $1")
        .bind(disabled)
        .execute(p)
        .await
        .expect("disable");
    assert_eq!(support::fan_out(p).await, 1);
    let to: Vec<i64> = sqlx::query_scalar("SELECT endpoint_id FROM webhooks.deliveries")
        .fetch_all(p)
        .await
        .expect("deliveries");
    assert_eq!(
        to,
        [disabled],
        "not {deleted} (deleted) nor {added} (added after the commit)"
    );
    assert_eq!(
        count(p, "SELECT events FROM webhooks.fan_out_backlog").await,
        0
    );
}

/// One fan-out at a time: a second one, while the first is open, does
/// nothing (NULL) instead of making the same deliveries again.
#[tokio::test]
async fn two_fan_outs_at_once_make_each_delivery_once() {
    let db = TestDb::new().await;
    let p = &db.pool;
    support::clinic_with_patient(p).await;
    support::endpoint(p, 1, "https://hooks.example.com/a", "2.0").await;
    support::visits(p, 1, 10, 50).await;
    let mut first = p.acquire().await.expect("connection");
    let mut first = first.begin().await.expect("begin");
    let made: Option<i32> = sqlx::query_scalar("SELECT webhooks.fan_out_events()")
        .fetch_one(&mut *first)
        .await
        .expect("first");
    assert_eq!(made, Some(50));
    let second: Option<i32> = sqlx::query_scalar("SELECT webhooks.fan_out_events()")
        .fetch_one(p)
        .await
        .expect("second");
    assert_eq!(second, None, "busy: left to the first");
    first.commit().await.expect("commit");
    assert_eq!(support::fan_out(p).await, 0);
    assert_eq!(
        count(p, "SELECT count(*) FROM webhooks.deliveries").await,
        50
    );
}

/// Events written before the upgrade came with their deliveries from the
/// old triggers (endpoint_ids NULL): a fan-out leaves them alone.
#[tokio::test]
async fn events_from_before_the_upgrade_are_not_fanned_out_again() {
    let db = TestDb::new().await;
    let p = &db.pool;
    clinic_with_visit(&db).await;
    exec(
        p,
        "INSERT INTO webhooks.events (type, clinic_id, subject, snapshot)
         VALUES ('visit.created', 1, 'visit:1', '{}')",
    )
    .await;
    assert_eq!(support::fan_out(p).await, 0);
    assert_eq!(
        count(p, "SELECT count(*) FROM webhooks.deliveries").await,
        1
    );
}

/// Sending an event again before it was fanned out: nothing to resend yet,
/// and it says so; the worker sends it anyway.
#[tokio::test]
async fn redelivering_an_event_not_yet_fanned_out_says_so_and_sends_nothing_twice() {
    let db = TestDb::new().await;
    let p = &db.pool;
    support::clinic_with_patient(p).await;
    let endpoint = support::endpoint(p, 1, "https://a.example.com/", "2.0").await;
    support::visit(p, 1, 10).await;
    let event: Uuid = sqlx::query_scalar("SELECT id FROM webhooks.events")
        .fetch_one(p)
        .await
        .expect("event");
    for target in [None, Some(endpoint)] {
        let resent: Vec<i64> = sqlx::query_scalar("SELECT webhooks.redeliver_event($1, $2)")
            .bind(event)
            .bind(target)
            .fetch_all(p)
            .await
            .expect("redeliver");
        assert!(resent.is_empty());
    }
    assert_eq!(support::fan_out(p).await, 1);
    assert_eq!(
        count(p, "SELECT count(*) FROM webhooks.deliveries").await,
        1
    );
}
