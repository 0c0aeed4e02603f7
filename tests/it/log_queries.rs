//! The panel's log queries in `sql/log/`: their plans read only the
//! partitions they need, on the index each one names (never a sequential
//! scan of the log), and keyset pagination walks a clinic's whole log in
//! order without a row twice or a row missed.

use std::collections::HashSet;

use clinic_webhooks_test_support::psql;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use crate::support::{self, TestDb};

/// A `sql/log/` file's statement with its psql variables written in.
fn statement(file: &str, vars: &[(&'static str, String)]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    psql::statement(&text, vars)
}

/// Every (node type, relation, index) in a JSON plan.
fn nodes(plan: &Value, out: &mut Vec<(String, String, String)>) {
    let field = |k: &str| plan[k].as_str().unwrap_or_default().to_owned();
    if plan.get("Node Type").is_some() {
        out.push((
            field("Node Type"),
            field("Relation Name"),
            field("Index Name"),
        ));
    }
    if let Some(children) = plan["Plans"].as_array() {
        for child in children {
            nodes(child, out);
        }
    }
}

async fn plan_of(pool: &PgPool, sql: &str) -> Vec<(String, String, String)> {
    let explained: Value =
        sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}")))
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
    let mut out = Vec::new();
    nodes(&explained[0]["Plan"], &mut out);
    out
}

/// A log over three days of partitions: two clinics with two endpoints each,
/// three calls per delivery (a failure, a retry that failed, a success).
async fn history(db: &TestDb) -> Vec<i64> {
    support::clinic(&db.pool, 1, "c1").await;
    support::clinic(&db.pool, 2, "c2").await;
    support::user(&db.pool, 10, 1, "patient", "signup").await;
    support::user(&db.pool, 20, 2, "patient", "signup").await;
    let mut endpoints = Vec::new();
    for clinic in [1, 2] {
        for n in 0..2 {
            let url = format!("https://receiver{n}.example/hook");
            endpoints.push(support::endpoint(&db.pool, clinic, &url, "2.0").await);
        }
    }
    support::visits(&db.pool, 1, 10, 2000).await;
    support::visits(&db.pool, 2, 20, 2000).await;
    sqlx::query(
        "INSERT INTO webhooks.attempts (delivery_id, endpoint_id, event_id, event_type, attempt,
                                        started_at, url, request_headers, request_body,
                                        response_status, outcome, error_kind)
         SELECT d.id, d.endpoint_id, d.event_id, ev.type, g,
                date_trunc('day', now()) + make_interval(days => g - 1, secs => d.id % 80000),
                'https://receiver.example/hook', '{}', '{}',
                CASE WHEN g = 3 THEN 200 ELSE 503 END,
                CASE WHEN g = 3 THEN 'succeeded' ELSE 'retrying' END::webhooks.attempt_outcome,
                CASE WHEN g = 3 THEN NULL ELSE 'status' END
           FROM webhooks.deliveries d JOIN webhooks.events ev ON ev.id = d.event_id
          CROSS JOIN generate_series(1, 3) g",
    )
    .execute(&db.pool)
    .await
    .expect("history");
    // Finished, but for one delivery in ten.
    sqlx::query(
        "UPDATE webhooks.deliveries SET state = 'succeeded', attempts = 3, finished_at = now()
          WHERE id % 10 <> 0",
    )
    .execute(&db.pool)
    .await
    .expect("finish");
    sqlx::query("ANALYZE")
        .execute(&db.pool)
        .await
        .expect("analyze");
    endpoints
}

/// No partition that holds rows is read sequentially. (An empty one, of
/// the days ahead, may be: there is nothing to read.)
fn assert_no_seq_scan_of_the_log(
    file: &str,
    plan: &[(String, String, String)],
    holding: &HashSet<String>,
) {
    for (node, relation, _) in plan {
        assert!(
            !(node == "Seq Scan" && holding.contains(relation)),
            "{file} scans {relation} sequentially: {plan:?}"
        );
    }
}

#[tokio::test]
async fn the_log_queries_prune_partitions_use_their_index_and_page_through_everything() {
    let db = TestDb::new().await;
    let endpoints = history(&db).await;
    let tomorrow: String =
        sqlx::query_scalar("SELECT (date_trunc('day', now()) + interval '1 day')::text")
            .fetch_one(&db.pool)
            .await
            .expect("tomorrow");
    let later_partition: String = sqlx::query_scalar(
        "SELECT name FROM webhooks.history_partitions
          WHERE history = 'attempts' AND range_start >= date_trunc('day', now()) + interval '2 days' ORDER BY range_start LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("a partition after tomorrow");
    let delivery: i64 = sqlx::query_scalar("SELECT min(id) FROM webhooks.deliveries")
        .fetch_one(&db.pool)
        .await
        .expect("delivery");
    let event: String = sqlx::query_scalar("SELECT min(event_id::text) FROM webhooks.deliveries")
        .fetch_one(&db.pool)
        .await
        .expect("event");
    let first_call: (i64, String) =
        sqlx::query_as("SELECT id, started_at::text FROM webhooks.attempts ORDER BY id LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .expect("a call");
    let before_tomorrow = || {
        vec![
            ("before_at", format!("'{tomorrow}'")),
            ("before_id", i64::MAX.to_string()),
            ("limit", "50".to_owned()),
        ]
    };
    let with = |mut v: Vec<(&'static str, String)>, extra: (&'static str, String)| {
        v.push(extra);
        v
    };
    // (file, its psql variables, whether before_at prunes partitions)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, bool);
    let cases: Vec<Case> = vec![
        (
            "sql/log/calls_by_clinic.sql",
            with(before_tomorrow(), ("clinic_id", "1".into())),
            true,
        ),
        (
            "sql/log/calls_by_endpoint.sql",
            with(before_tomorrow(), ("endpoint_id", endpoints[0].to_string())),
            true,
        ),
        (
            "sql/log/calls_by_event_type.sql",
            with(
                with(before_tomorrow(), ("clinic_id", "1".into())),
                ("event_type", "'visit.created'".into()),
            ),
            true,
        ),
        (
            "sql/log/failed_calls_by_clinic.sql",
            with(before_tomorrow(), ("clinic_id", "1".into())),
            true,
        ),
        (
            "sql/log/calls_of_delivery.sql",
            vec![("delivery_id", delivery.to_string())],
            false,
        ),
        (
            "sql/log/calls_of_event.sql",
            vec![("event_id", format!("'{event}'"))],
            false,
        ),
        (
            "sql/log/call_detail.sql",
            vec![
                ("attempt_id", first_call.0.to_string()),
                ("called_at", format!("'{}'", first_call.1)),
            ],
            false,
        ),
    ];
    let holding: HashSet<String> = sqlx::query_scalar(
        "SELECT name FROM webhooks.history_partitions
              WHERE history = 'attempts' AND rows_estimate > 0",
    )
    .fetch_all(&db.pool)
    .await
    .expect("partitions with calls")
    .into_iter()
    .collect();
    assert_eq!(holding.len(), 3, "three days of calls: {holding:?}");
    for (file, vars, pruned) in &cases {
        let plan = plan_of(&db.pool, &statement(file, vars)).await;
        assert_no_seq_scan_of_the_log(file, &plan, &holding);
        assert!(
            plan.iter()
                .any(|(node, relation, _)| node.contains("Index")
                    && relation.starts_with("attempts")),
            "{file} reads the log on an index: {plan:?}"
        );
        if *pruned {
            assert!(
                !plan
                    .iter()
                    .any(|(_, relation, _)| relation == &later_partition),
                "{file} reads {later_partition}, after before_at: {plan:?}"
            );
        }
    }
    // The filtered list reads the partial index of the calls that did not succeed.
    let (file, vars, _) = &cases[3];
    let plan = plan_of(&db.pool, &statement(file, vars)).await;
    let mut partial = false;
    for (_, _, index) in plan
        .iter()
        .filter(|(_, r, i)| r.starts_with("attempts") && !i.is_empty())
    {
        let is_partial: bool = sqlx::query_scalar(
            "SELECT indpred IS NOT NULL FROM pg_index WHERE indexrelid = ('webhooks.' || quote_ident($1))::regclass",
        )
        .bind(index)
        .fetch_one(&db.pool)
        .await
        .expect("index");
        partial |= is_partial;
    }
    assert!(partial, "{file} uses the partial index: {plan:?}");
    // The detail reads the one partition of its call.
    let (file, vars, _) = &cases[cases.len() - 1];
    let plan = plan_of(&db.pool, &statement(file, vars)).await;
    let partitions: HashSet<&String> = plan
        .iter()
        .filter(|(_, r, _)| r.starts_with("attempts"))
        .map(|(_, r, _)| r)
        .collect();
    assert_eq!(partitions.len(), 1, "{file}: {plan:?}");
    // The list by type reads the index by endpoint and type.
    let (file, vars, _) = &cases[2];
    let plan = plan_of(&db.pool, &statement(file, vars)).await;
    assert!(
        plan.iter()
            .any(|(_, _, index)| index.contains("event_type")),
        "{file} uses the index by endpoint and type: {plan:?}"
    );
    // An event's story reads the deliveries of that event only: the queue
    // and the event's day of the finished deliveries, on their index.
    let holding_deliveries: HashSet<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'webhooks' AND c.relname LIKE 'deliveries%'
            AND c.relkind = 'r' AND c.reltuples > 0",
    )
    .fetch_all(&db.pool)
    .await
    .expect("delivery partitions with rows")
    .into_iter()
    .collect();
    assert_eq!(holding_deliveries.len(), 2, "{holding_deliveries:?}");
    let vars = vec![("event_id", format!("'{event}'"))];
    for file in ["sql/log/calls_of_event.sql", "sql/log/delivery_history.sql"] {
        let plan = plan_of(&db.pool, &statement(file, &vars)).await;
        let deliveries: Vec<_> = plan
            .iter()
            .filter(|(_, relation, _)| relation.starts_with("deliveries"))
            .collect();
        assert_no_seq_scan_of_the_log(file, &plan, &holding_deliveries);
        assert!(
            deliveries.len() <= 3,
            "{file} reads the queue and one day of deliveries: {plan:?}"
        );
    }

    // Keyset pagination over clinic 1's whole log: every call once, newest first.
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhooks.attempts a JOIN webhooks.endpoints e ON e.id = a.endpoint_id
          WHERE e.clinic_id = 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("total");
    let mut seen = HashSet::new();
    let mut last: Option<(String, i64)> = None;
    loop {
        let (before_at, before_id) = last
            .clone()
            .map_or(("'infinity'".to_owned(), i64::MAX), |(at, id)| {
                (format!("'{at}'"), id)
            });
        let sql = statement(
            "sql/log/calls_by_clinic.sql",
            &[
                ("clinic_id", "1".into()),
                ("limit", "1000".into()),
                ("before_at", before_at),
                ("before_id", before_id.to_string()),
            ],
        );
        let page: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT attempt_id, called_at::text FROM ({sql}) p"
        )))
        .fetch_all(&db.pool)
        .await
        .expect("page");
        let Some((id, at)) = page.last().cloned() else {
            break;
        };
        for (id, _) in &page {
            assert!(seen.insert(*id), "attempt {id} on two pages");
        }
        last = Some((at, id));
    }
    assert_eq!(i64::try_from(seen.len()).expect("count"), total);
}
