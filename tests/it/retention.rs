//! Retention of the history by whole time partitions: maintenance makes
//! partitions ahead, drops those of the log, of finished deliveries and of
//! events wholly past `retention.keep` (never the queue, nor an event the
//! queue needs), catches rows that found no partition, runs in one caller at
//! a time, and the migrations convert a database that has history under the
//! unpartitioned schema without losing a row.

use std::borrow::Cow;

use serde_json::Value;
use sqlx::PgPool;

use crate::support::{self, TestDb};

/// The first migration of the partitioned log.
const PARTITIONED_LOG: i64 = 20261203000011;

async fn maintenance(pool: &PgPool, now_plus_days: i32) -> Value {
    sqlx::query_scalar(
        "SELECT webhooks.run_maintenance('30 days', p_now => now() + make_interval(days => $1))",
    )
    .bind(now_plus_days)
    .fetch_one(pool)
    .await
    .expect("run_maintenance")
}

/// Appends a call to the log of `delivery`, started `days` from now.
async fn attempt_at(pool: &PgPool, delivery: i64, endpoint: i64, days: i32) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO webhooks.attempts (delivery_id, endpoint_id, event_type, attempt, started_at,
                                        url, request_headers, request_body, response_status, outcome)
         VALUES ($1, $2, 'visit.created', 1, now() + make_interval(days => $3), 'https://receiver.example/hook',
                 '{\"content-type\": \"application/json\"}', '{}', 200, 'succeeded')
         RETURNING id",
    )
    .bind(delivery)
    .bind(endpoint)
    .bind(days)
    .fetch_one(pool)
    .await
    .expect("insert attempt")
}

/// A count or an id.
async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    support::scalar(pool, sql).await
}

/// The partition that holds attempt `id`.
async fn partition_of(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT tableoid::regclass::text FROM webhooks.attempts WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("partition of")
}

fn names(report: &Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {report}"))
        .iter()
        .map(|v| v.as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn maintenance_drops_whole_expired_partitions_and_nothing_that_is_still_live() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    let endpoint = support::endpoint(&db.pool, 1, "https://receiver.example/hook", "2.0").await;
    support::visit(&db.pool, 1, 10).await;
    // Disabled: its delivery stays pending, as for an endpoint off for a month.
    sqlx::query("UPDATE webhooks.endpoints SET enabled = false WHERE id = $1")
        .bind(endpoint)
        .execute(&db.pool)
        .await
        .expect("disable");
    let delivery = scalar(&db.pool, "SELECT id FROM webhooks.deliveries").await;
    // A second endpoint got the same event, and that delivery is finished.
    let other = support::endpoint(&db.pool, 1, "https://other.example/hook", "1.0").await;
    sqlx::query(
        "INSERT INTO webhooks.deliveries (event_id, endpoint_id, subject, state, attempts, finished_at)
         SELECT event_id, $1, subject, 'succeeded', 1, now() FROM webhooks.deliveries",
    )
    .bind(other)
    .execute(&db.pool)
    .await
    .expect("a finished delivery");

    // The migration made the partitions of the next days already.
    let ahead = scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.history_partitions WHERE history = 'attempts' AND range_end > now() + interval '7 days'",
    )
    .await;
    assert!(ahead >= 1, "partitions are made ahead");
    let today = attempt_at(&db.pool, delivery, endpoint, 0).await;
    let in_two_days = attempt_at(&db.pool, delivery, endpoint, 2).await;
    let in_five_days = attempt_at(&db.pool, delivery, endpoint, 5).await;
    assert!(today < in_two_days && in_two_days < in_five_days);

    // 33 days on, with 30 days kept: everything before day 3 is past retention.
    let report = maintenance(&db.pool, 33).await;
    assert_eq!(report["ran"], true, "{report}");
    let dropped = names(&report, "dropped");
    assert!(
        dropped.len() >= 3,
        "today's, tomorrow's, the day after's: {report}"
    );
    assert!(!names(&report, "created").is_empty(), "{report}");
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM webhooks.attempts ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("left");
    assert_eq!(
        left,
        [in_five_days],
        "whole partitions past retention went, the rest stayed"
    );
    // No partition is older than the cutoff, and there are partitions ahead of "now".
    let stale = scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.history_partitions WHERE history = 'attempts' AND range_end <= now() + interval '3 days'",
    )
    .await;
    assert_eq!(stale, 0);
    // The delivery that is still pending and its event are kept: the event
    // in events_default, listed in webhooks.kept_events. The finished
    // delivery of the same event went with its day.
    let (state, has_event): (String, bool) = sqlx::query_as(
        "SELECT d.state::text, EXISTS (SELECT 1 FROM webhooks.events e WHERE e.id = d.event_id)
           FROM webhooks.deliveries d",
    )
    .fetch_one(&db.pool)
    .await
    .expect("delivery");
    assert_eq!((state.as_str(), has_event), ("pending", true));
    assert_eq!(report["events_kept_for_live_deliveries"], 1, "{report}");
    let kept: (i64, i64) =
        sqlx::query_as("SELECT count(*), sum(live_deliveries)::bigint FROM webhooks.kept_events")
            .fetch_one(&db.pool)
            .await
            .expect("kept events");
    assert_eq!(kept, (1, 1));
    for history in ["deliveries", "events"] {
        assert!(
            dropped.iter().any(|name| name.starts_with(history)),
            "{history}' partitions of today went: {report}"
        );
    }
    // Again at the same time: nothing left to do.
    let again = maintenance(&db.pool, 33).await;
    assert!(names(&again, "dropped").is_empty(), "{again}");
    assert!(names(&again, "created").is_empty(), "{again}");

    // The endpoint comes back: the kept delivery is claimed with its event,
    // and once it is finished, the next run lets both go.
    sqlx::query("UPDATE webhooks.endpoints SET enabled = true WHERE id = $1")
        .bind(endpoint)
        .execute(&db.pool)
        .await
        .expect("enable");
    let claimed: Vec<(i64, String)> = sqlx::query_as(
        "SELECT delivery_id, event_type FROM webhooks.claim_deliveries(10, 'test', 30, '{}', '{}')",
    )
    .fetch_all(&db.pool)
    .await
    .expect("claim");
    assert_eq!(claimed, [(delivery, "visit.created".to_owned())]);
    sqlx::query(
        "UPDATE webhooks.deliveries SET state = 'succeeded', finished_at = now(),
                lease_expires_at = NULL, leased_by = NULL WHERE id = $1",
    )
    .bind(delivery)
    .execute(&db.pool)
    .await
    .expect("finish");
    let later = maintenance(&db.pool, 34).await;
    assert_eq!(
        later["expired_rows_deleted_from_default"]["deliveries"], 1,
        "{later}"
    );
    assert_eq!(
        later["expired_rows_deleted_from_default"]["events"], 1,
        "{later}"
    );
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM webhooks.deliveries").await,
        0
    );
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM webhooks.events").await,
        0
    );
}

#[tokio::test]
async fn a_call_with_no_partition_lands_in_the_default_one_and_moves_into_its_own() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    let endpoint = support::endpoint(&db.pool, 1, "https://receiver.example/hook", "2.0").await;
    let far = attempt_at(&db.pool, 1, endpoint, 100).await;
    let partition = partition_of(&db.pool, far).await;
    assert_eq!(partition, "webhooks.attempts_default");
    let report = maintenance(&db.pool, 0).await;
    assert_eq!(report["rows_in_default"]["attempts"], 1, "{report}");

    // Maintenance 95 days on makes the partition of day 100: the row moves in.
    let report = maintenance(&db.pool, 95).await;
    assert_eq!(report["rows_in_default"]["attempts"], 0, "{report}");
    let partition = partition_of(&db.pool, far).await;
    assert_ne!(partition, "webhooks.attempts_default");
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM webhooks.attempts").await,
        1
    );
}

#[tokio::test]
async fn one_maintenance_runs_at_a_time_and_the_cli_runs_it() {
    let db = TestDb::new().await;
    let mut first = db.pool.begin().await.expect("begin");
    let held: Value = sqlx::query_scalar("SELECT webhooks.run_maintenance()")
        .fetch_one(&mut *first)
        .await
        .expect("first");
    assert_eq!(held["ran"], true);
    // While the first run's transaction is open, a second returns at once.
    let second = maintenance(&db.pool, 0).await;
    assert_eq!(second["ran"], false, "{second}");
    first.commit().await.expect("commit");

    let out = support::cli(&db.url, &["maintenance"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("the report is JSON");
    assert_eq!(report["ran"], true, "{report}");
    assert_eq!(report["keep"], "30 days", "retention.keep's default");
}

/// A database with history in the unpartitioned log of the earlier
/// migrations: the migration keeps every row (attached as they are), the
/// log views show them, and new calls get new ids.
#[tokio::test]
async fn an_unpartitioned_log_with_history_converts_without_losing_a_row() {
    let db = TestDb::empty().await;
    let mut before = clinic_webhooks::db::migrator();
    before.migrations = Cow::Owned(
        before
            .migrations
            .iter()
            .filter(|m| m.version < PARTITIONED_LOG)
            .cloned()
            .collect(),
    );
    before.run(&db.pool).await.expect("the earlier migrations");
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'webhooks.attempts'::regclass"
        )
        .await,
        0,
        "the log starts unpartitioned"
    );
    support::clinic_with_patient(&db.pool).await;
    let endpoint = support::endpoint(&db.pool, 1, "https://receiver.example/hook", "2.0").await;
    support::visits(&db.pool, 1, 10, 50).await;
    sqlx::query(
        "INSERT INTO webhooks.attempts (delivery_id, endpoint_id, attempt, started_at, url,
                                        request_headers, request_body, response_status, outcome)
         SELECT d.id, d.endpoint_id, g, now() - make_interval(days => g * 3), 'https://receiver.example/hook',
                '{}', '{}', 200, 'succeeded'
           FROM webhooks.deliveries d CROSS JOIN generate_series(1, 4) g",
    )
    .execute(&db.pool)
    .await
    .expect("history");
    let fingerprint = "SELECT count(*)::bigint * 1000000 + sum(id)::bigint FROM webhooks.attempts";
    let had = scalar(&db.pool, fingerprint).await;
    let logged = scalar(&db.pool, "SELECT count(*) FROM webhooks.delivery_log").await;
    assert_eq!(logged, 200);
    let max_id = scalar(&db.pool, "SELECT max(id) FROM webhooks.attempts").await;
    // Half the deliveries finished, half still pending.
    sqlx::query(
        "UPDATE webhooks.deliveries SET state = 'succeeded', attempts = 4, finished_at = now()
          WHERE id % 2 = 0",
    )
    .execute(&db.pool)
    .await
    .expect("finish half");
    let deliveries = "SELECT count(*)::bigint * 1000000 + sum(id)::bigint
                           + sum(hashtext(event_id::text || state::text))
                      FROM webhooks.deliveries";
    let events = "SELECT count(*)::bigint * 1000000 + sum(hashtext(id::text || snapshot::text))
                    FROM webhooks.events";
    let (had_deliveries, had_events) = (
        scalar(&db.pool, deliveries).await,
        scalar(&db.pool, events).await,
    );

    clinic_webhooks::db::migrate(&db.pool)
        .await
        .expect("migrate");
    assert_eq!(scalar(&db.pool, fingerprint).await, had, "every row kept");
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM webhooks.delivery_log").await,
        logged
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM webhooks.attempts WHERE tableoid = 'webhooks.attempts_legacy'::regclass"
        )
        .await,
        200,
        "attached as they were, not copied"
    );
    let next = attempt_at(&db.pool, 1, endpoint, 0).await;
    assert!(next > max_id, "{next} > {max_id}");

    // Every earlier call got its event.
    let unlabelled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhooks.attempts a
           JOIN webhooks.deliveries d ON d.id = a.delivery_id
          WHERE a.id <= $1
            AND (a.event_type <> 'visit.created' OR a.event_id IS DISTINCT FROM d.event_id)",
    )
    .bind(max_id)
    .fetch_one(&db.pool)
    .await
    .expect("unlabelled");
    assert_eq!(unlabelled, 0);
    // Deliveries and events too: the queue copied into deliveries_live, the
    // finished ones and the events attached as they were.
    assert_eq!(scalar(&db.pool, deliveries).await, had_deliveries);
    assert_eq!(scalar(&db.pool, events).await, had_events);
    let placed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, count(*) FROM webhooks.deliveries GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("where the deliveries are");
    assert_eq!(
        placed,
        [
            ("webhooks.deliveries_done_legacy".to_owned(), 25),
            ("webhooks.deliveries_live".to_owned(), 25)
        ]
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM webhooks.events WHERE tableoid = 'webhooks.events_legacy'::regclass"
        )
        .await,
        50
    );
    let max_delivery = scalar(&db.pool, "SELECT max(id) FROM webhooks.deliveries").await;
    support::visits(&db.pool, 1, 10, 1).await;
    let (newest, partition): (i64, String) = sqlx::query_as(
        "SELECT id, tableoid::regclass::text FROM webhooks.deliveries ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("newest delivery");
    assert!(newest > max_delivery);
    assert_eq!(partition, "webhooks.deliveries_live");

    // Once the upgrade's day is past retention, the legacy partitions go
    // whole; the events the pending deliveries need stay: the 25 of before
    // the upgrade and the one of the visit since (its day is the legacy
    // partition's too).
    let report = maintenance(&db.pool, 33).await;
    let dropped = names(&report, "dropped");
    for legacy in ["attempts_legacy", "deliveries_done_legacy", "events_legacy"] {
        assert!(dropped.iter().any(|d| d == legacy), "{legacy}: {report}");
    }
    assert_eq!(report["events_kept_for_live_deliveries"], 26, "{report}");
    let orphans = scalar(
        &db.pool,
        "SELECT count(*) FROM webhooks.deliveries_live d
          WHERE NOT EXISTS (SELECT 1 FROM webhooks.events e WHERE e.id = d.event_id)",
    )
    .await;
    assert_eq!(orphans, 0, "every pending delivery keeps its event");
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM webhooks.kept_events").await,
        26
    );
}

/// Sending a finished delivery again moves its row from the history back
/// into the queue; a second redelivery racing the first (the row moved
/// under it) looks again instead of failing with a serialization error.
#[tokio::test]
async fn concurrent_redeliveries_of_a_finished_delivery_both_succeed() {
    let db = TestDb::new().await;
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, "https://receiver.example/hook", "2.0").await;
    support::visit(&db.pool, 1, 10).await;
    let delivery = scalar(&db.pool, "SELECT id FROM webhooks.deliveries").await;
    sqlx::query(
        "UPDATE webhooks.deliveries SET state = 'failed', finished_at = now() WHERE id = $1",
    )
    .bind(delivery)
    .execute(&db.pool)
    .await
    .expect("fail it");

    let mut first = db.pool.begin().await.expect("begin");
    let moved: Option<i64> = sqlx::query_scalar("SELECT webhooks.redeliver($1)")
        .bind(delivery)
        .fetch_one(&mut *first)
        .await
        .expect("first redelivery");
    assert_eq!(moved, Some(delivery));
    let pool = db.pool.clone();
    let second = tokio::spawn(async move {
        sqlx::query_scalar::<_, Option<i64>>("SELECT webhooks.redeliver($1)")
            .bind(delivery)
            .fetch_one(&pool)
            .await
    });
    // The second waits for the first's row lock; then the row has moved.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    first.commit().await.expect("commit");
    let second = second.await.expect("join").expect("second redelivery");
    assert_eq!(second, Some(delivery));
    let partition: String = sqlx::query_scalar(
        "SELECT tableoid::regclass::text FROM webhooks.deliveries WHERE id = $1",
    )
    .bind(delivery)
    .fetch_one(&db.pool)
    .await
    .expect("partition");
    assert_eq!(partition, "webhooks.deliveries_live");
}
