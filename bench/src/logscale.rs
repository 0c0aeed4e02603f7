//! (i) The log at scale (only when asked for, `--only logscale`): fills the
//! attempt log with `--log-calls` calls (10 million by default) of realistic
//! size over `--log-days` daily partitions, for 50 clinics with 4 endpoints
//! each, and measures the admin panel's queries of `sql/log/` (p50/p99 over
//! 100 runs each, first pages and deep pages), the table and index sizes,
//! the disk used per call, and one retention run that drops the oldest day.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection};

use clinic_webhooks::payload::EVENT_TYPES;
use clinic_webhooks_test_support::psql;

use crate::env::BenchDb;
use crate::stats;

const CLINICS: i64 = 50;
const ENDPOINTS_PER_CLINIC: i64 = 4;
const FIRST_CLINIC: i64 = 1001;
const RUNS: usize = 100;

/// A panel query: its file in `sql/log/` and how to fill its variables.
pub struct PanelQuery {
    pub name: &'static str,
    pub file: &'static str,
    sql: &'static str,
}

pub const QUERIES: [PanelQuery; 7] = [
    PanelQuery {
        name: "calls_by_clinic",
        file: "sql/log/calls_by_clinic.sql",
        sql: include_str!("../../sql/log/calls_by_clinic.sql"),
    },
    PanelQuery {
        name: "calls_by_endpoint",
        file: "sql/log/calls_by_endpoint.sql",
        sql: include_str!("../../sql/log/calls_by_endpoint.sql"),
    },
    PanelQuery {
        name: "calls_by_event_type",
        file: "sql/log/calls_by_event_type.sql",
        sql: include_str!("../../sql/log/calls_by_event_type.sql"),
    },
    PanelQuery {
        name: "failed_calls_by_clinic",
        file: "sql/log/failed_calls_by_clinic.sql",
        sql: include_str!("../../sql/log/failed_calls_by_clinic.sql"),
    },
    PanelQuery {
        name: "calls_of_event",
        file: "sql/log/calls_of_event.sql",
        sql: include_str!("../../sql/log/calls_of_event.sql"),
    },
    PanelQuery {
        name: "calls_of_delivery",
        file: "sql/log/calls_of_delivery.sql",
        sql: include_str!("../../sql/log/calls_of_delivery.sql"),
    },
    PanelQuery {
        name: "call_detail",
        file: "sql/log/call_detail.sql",
        sql: include_str!("../../sql/log/call_detail.sql"),
    },
];

/// A value of a psql variable of a `sql/log/` file.
#[derive(Debug, Clone)]
pub enum Var {
    Int(i64),
    /// A timestamptz or a uuid, as text (the files cast it).
    Text(String),
}

impl Var {
    fn literal(&self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Text(t) => format!("'{}'", t.replace('\'', "''")),
        }
    }
}

/// The statement as psql runs it: the variables' values written in.
pub fn statement(sql: &str, vars: &[(&'static str, Var)]) -> String {
    let literals: Vec<(&'static str, String)> =
        vars.iter().map(|(name, v)| (*name, v.literal())).collect();
    psql::statement(sql, &literals)
}

/// The statement as an application runs it: `$n` parameters, bound in the
/// order returned.
pub fn prepared(sql: &str, vars: &[(&'static str, Var)]) -> (String, Vec<Var>) {
    let mut text = psql::file_body(sql);
    let mut binds = Vec::new();
    for (name, value) in psql::longest_first(vars) {
        let needle = format!(":{name}");
        if text.contains(&needle) {
            binds.push(value);
            text = text.replace(&needle, &format!("${}", binds.len()));
        }
    }
    (text, binds)
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryTiming {
    pub name: &'static str,
    pub runs: usize,
    /// Prepared, with bound parameters, as an application runs it.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The same statements with their values written in, as psql runs
    /// them: planned anew every time.
    pub text_p50_ms: f64,
    pub text_p99_ms: f64,
    /// Prepared, on a session with `plan_cache_mode = force_custom_plan`
    /// (planned for each run's values, as the README advises for the lists).
    pub custom_plan_p50_ms: f64,
    pub custom_plan_p99_ms: f64,
    /// EXPLAIN (ANALYZE, BUFFERS) of one run, a deep page where it pages.
    pub explain: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Relation {
    pub name: String,
    pub rows: i64,
    pub heap_bytes: i64,
    pub toast_bytes: i64,
    pub index_bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogScale {
    pub calls: i64,
    pub days: i64,
    pub fill_s: f64,
    pub queries: Vec<QueryTiming>,
    pub relations: Vec<Relation>,
    /// Heap + TOAST + indexes of the attempt log, per logged call.
    pub log_bytes_per_call: f64,
    /// One run of webhooks.run_maintenance that drops the oldest day.
    pub retention_run_ms: f64,
    pub retention_dropped_rows: i64,
    /// What the run reported (partitions dropped in each history, events kept).
    pub retention_report: serde_json::Value,
    /// Dead tuples in schema webhooks after the run minus before it.
    pub retention_dead_tuples: i64,
}

pub async fn run(db: &BenchDb, calls: i64, days: i64) -> Result<LogScale> {
    db.reset().await?;
    let started = Instant::now();
    let endpoints = setup(db).await?;
    let per_day = calls / days;
    // Every partition first: a day's last calls may start after midnight.
    for ago in 0..days {
        past_partition(db, ago).await?;
    }
    for day in 0..days {
        fill_day(db, &endpoints, days - 1 - day, per_day).await?;
    }
    sqlx::query("ANALYZE").execute(&db.pool).await?;
    let fill_s = started.elapsed().as_secs_f64();

    let mut conn = db.client().await?;
    let mut custom = db.client().await?;
    sqlx::query("SET plan_cache_mode = force_custom_plan")
        .execute(&mut custom)
        .await?;
    let (min_attempt, max_attempt): (i64, i64) =
        sqlx::query_as("SELECT min(id), max(id) FROM webhooks.attempts")
            .fetch_one(&mut conn)
            .await?;
    let (min_delivery, max_delivery): (i64, i64) =
        sqlx::query_as("SELECT min(id), max(id) FROM webhooks.deliveries")
            .fetch_one(&mut conn)
            .await?;
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks.attempts")
        .fetch_one(&mut conn)
        .await?;
    let mut queries = Vec::new();
    for query in &QUERIES {
        let mut times = Vec::with_capacity(RUNS);
        let mut text_times = Vec::with_capacity(RUNS);
        let mut custom_times = Vec::with_capacity(RUNS);
        let mut explain = String::new();
        for run in 0..RUNS {
            let deep = run % 2 == 1;
            let vars = variables(
                query.name,
                deep,
                &endpoints,
                days,
                (min_attempt, max_attempt),
                (min_delivery, max_delivery),
                &mut conn,
            )
            .await?;
            let (sql, binds) = prepared(query.sql, &vars);
            for (session, into) in [(&mut conn, &mut times), (&mut custom, &mut custom_times)] {
                let mut q = sqlx::query(AssertSqlSafe(sql.clone()));
                for b in &binds {
                    q = match b {
                        Var::Int(n) => q.bind(*n),
                        Var::Text(t) => q.bind(t.clone()),
                    };
                }
                let t = Instant::now();
                q.fetch_all(&mut *session)
                    .await
                    .with_context(|| format!("{}: {sql}", query.file))?;
                into.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let text = statement(query.sql, &vars);
            let t = Instant::now();
            sqlx::raw_sql(AssertSqlSafe(text.clone()))
                .execute(&mut conn)
                .await
                .with_context(|| format!("{}: {text}", query.file))?;
            text_times.push(t.elapsed().as_secs_f64() * 1000.0);
            if run == RUNS - 1 {
                let lines: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {text}"
                )))
                .fetch_all(&mut conn)
                .await?;
                explain = lines.join("\n");
            }
        }
        queries.push(QueryTiming {
            name: query.name,
            runs: RUNS,
            p50_ms: stats::percentile(&times, 50.0).unwrap_or(f64::NAN),
            p99_ms: stats::percentile(&times, 99.0).unwrap_or(f64::NAN),
            max_ms: stats::max(&times).unwrap_or(f64::NAN),
            text_p50_ms: stats::percentile(&text_times, 50.0).unwrap_or(f64::NAN),
            text_p99_ms: stats::percentile(&text_times, 99.0).unwrap_or(f64::NAN),
            custom_plan_p50_ms: stats::percentile(&custom_times, 50.0).unwrap_or(f64::NAN),
            custom_plan_p99_ms: stats::percentile(&custom_times, 99.0).unwrap_or(f64::NAN),
            explain,
        });
    }
    let relations = relations(&mut conn).await?;
    let log_bytes: i64 = relations
        .iter()
        .filter(|r| r.name.starts_with("attempts"))
        .map(|r| r.heap_bytes + r.toast_bytes + r.index_bytes)
        .sum();

    let dead_before = dead_tuples(&mut conn).await?;
    let t = Instant::now();
    // The oldest partition ends at midnight days - 2 days ago: keeping
    // days - 2 days drops it, and only it.
    let keep = format!("{} days", days - 2);
    let report: serde_json::Value =
        sqlx::query_scalar("SELECT webhooks.run_maintenance($1::interval)")
            .bind(&keep)
            .fetch_one(&mut conn)
            .await?;
    let retention_run_ms = t.elapsed().as_secs_f64() * 1000.0;
    // Statistics reach the views with a delay; give them a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dead_after = dead_tuples(&mut conn).await?;
    conn.close().await.ok();
    custom.close().await.ok();
    Ok(LogScale {
        calls: logged,
        days,
        fill_s,
        queries,
        relations,
        log_bytes_per_call: log_bytes as f64 / logged.max(1) as f64,
        retention_run_ms,
        retention_dropped_rows: report["dropped_rows_estimate"]["attempts"]
            .as_i64()
            .unwrap_or(-1),
        retention_report: report,
        retention_dead_tuples: dead_after - dead_before,
    })
}

/// 50 clinics with 4 endpoints each; returns the endpoint ids, clinic by
/// clinic. Also the daily partitions of the past days.
async fn setup(db: &BenchDb) -> Result<Vec<i64>> {
    sqlx::query(
        "INSERT INTO clinic.clinics (id, code, name)
         SELECT g, 'clinic-' || g, 'Clinic ' || g FROM generate_series($1::bigint, $1 + $2 - 1) g
         ON CONFLICT DO NOTHING",
    )
    .bind(FIRST_CLINIC)
    .bind(CLINICS)
    .execute(&db.pool)
    .await?;
    let endpoints: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO webhooks.endpoints (clinic_id, url, version, enabled, description)
         SELECT c, 'https://hooks-' || c || '-' || n || '.example.com/webhooks', '2.0', false, 'logscale'
           FROM generate_series($1::bigint, $1 + $2 - 1) c CROSS JOIN generate_series(1, $3::int) n
          ORDER BY c, n
         RETURNING id",
    )
    .bind(FIRST_CLINIC)
    .bind(CLINICS)
    .bind(i32::try_from(ENDPOINTS_PER_CLINIC)?)
    .fetch_all(&db.pool)
    .await?;
    Ok(endpoints)
}

/// The partitions of the day `ago` days before today (of the log, of the
/// finished deliveries and of the events), as maintenance would have made
/// them then.
async fn past_partition(db: &BenchDb, ago: i64) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "DO $$
         DECLARE
           day timestamptz := date_trunc('day', now()) - interval '{ago} days';
           suffix text := to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD\"_\"HH24MI');
         BEGIN
           EXECUTE format('CREATE TABLE IF NOT EXISTS webhooks.%I PARTITION OF webhooks.attempts FOR VALUES FROM (%L) TO (%L)',
                          'attempts_' || suffix, day, day + interval '1 day');
           EXECUTE format('CREATE TABLE IF NOT EXISTS webhooks.%I PARTITION OF webhooks.deliveries_done FOR VALUES FROM (%L) TO (%L)',
                          'deliveries_done_' || suffix, webhooks.uuid_v7_bound(day),
                          webhooks.uuid_v7_bound(day + interval '1 day'));
           EXECUTE format('CREATE TABLE IF NOT EXISTS webhooks.%I PARTITION OF webhooks.events FOR VALUES FROM (%L) TO (%L)',
                          'events_' || suffix, webhooks.uuid_v7_bound(day),
                          webhooks.uuid_v7_bound(day + interval '1 day'));
         END $$"
    )))
    .execute(&db.pool)
    .await
    .context("the partitions of a past day")?;
    Ok(())
}

/// `calls` calls of the day `ago` days before today, with their events and
/// deliveries; one delivery in five succeeds at the second attempt.
async fn fill_day(db: &BenchDb, endpoints: &[i64], ago: i64, calls: i64) -> Result<()> {
    let deliveries = calls * 5 / 6;
    sqlx::query(
        r#"WITH ev AS (
             INSERT INTO webhooks.events (id, type, clinic_id, subject, snapshot, created_at)
             SELECT webhooks.uuid_v7_at(date_trunc('day', now()) - make_interval(days => $5::int)
                                        + make_interval(secs => g * 86400.0 / $1)),
                    (ARRAY['visit.created', 'visit.updated', 'visit.ended', 'visit.note.signed_and_sent',
                           'visit.invoice.processed', 'user.created'])[1 + g % 6],
                    $3 + g % $4, 'visit:' || ($5 * 1000000 + g),
                    jsonb_build_object('visit', jsonb_build_object('id', g, 'member_id', 60610, 'provider_id', NULL,
                        'start_at', 1546950546, 'end_at', 1546951446, 'status', 30, 'status_name', 'inprogress',
                        'status_updated_by', 60610), 'clinic_code', 'clinic-' || ($3 + g % $4)),
                    date_trunc('day', now()) - make_interval(days => $5::int) + make_interval(secs => g * 86400.0 / $1)
               FROM generate_series(1, $1) g
             RETURNING id, type, clinic_id, subject, created_at
           ),
           dl AS (
             INSERT INTO webhooks.deliveries (event_id, endpoint_id, subject, state, attempts,
                                              next_attempt_at, created_at, finished_at, last_status)
             SELECT ev.id,
                    ($2::bigint[])[1 + (ev.clinic_id - $3) * $6 + (hashtext(ev.subject) & 1023) % $6],
                    ev.subject, 'succeeded', 1, ev.created_at, ev.created_at,
                    ev.created_at + interval '1 second', 200
               FROM ev
             RETURNING id, event_id, endpoint_id, created_at
           )
           INSERT INTO webhooks.attempts (delivery_id, endpoint_id, event_id, event_type, attempt,
                                          started_at, duration_ms, url,
                                          request_headers, request_body, response_status, response_headers,
                                          response_body, outcome, error_kind, error, next_attempt_at, worker)
           SELECT dl.id, dl.endpoint_id, dl.event_id, ev.type, n, dl.created_at + make_interval(secs => n - 1), 40 + (dl.id % 200),
                  'https://hooks.example.com/webhooks',
                  jsonb_build_object('content-type', 'application/json', 'user-agent', 'clinic-webhooks/0.1.0',
                                     'accept', '*/*', 'webhook-id', dl.event_id::text,
                                     'webhook-timestamp', extract(epoch FROM dl.created_at)::bigint::text,
                                     'webhook-signature', 'v1,' || encode(sha256(dl.id::text::bytea), 'base64')),
                  '{"version":"2.0","id":"' || dl.event_id || '","type":"visit.updated","created":1796322737,'
                      || '"clinic_code":"clinic-1001","data":{"id":"' || dl.id || '","member_id":"60610",'
                      || '"provider_id":null,"start":1546950546,"end":1546951446,"actual_start":1546950546,'
                      || '"actual_end":null,"status":"inprogress","status_updated_by":"60610"}}',
                  CASE WHEN n = 2 OR dl.id % 5 <> 0 THEN 200 ELSE 503 END,
                  '{"content-type": "application/json", "date": "Thu, 03 Dec 2026 19:00:00 GMT", "content-length": "17", "server": "nginx"}'::jsonb,
                  CASE WHEN n = 2 OR dl.id % 5 <> 0 THEN '{"received":true}' ELSE '<html>unavailable</html>' END,
                  (CASE WHEN n = 2 OR dl.id % 5 <> 0 THEN 'succeeded' ELSE 'retrying' END)::webhooks.attempt_outcome,
                  CASE WHEN n = 2 OR dl.id % 5 <> 0 THEN NULL ELSE 'status' END,
                  CASE WHEN n = 2 OR dl.id % 5 <> 0 THEN NULL ELSE 'HTTP 503' END,
                  CASE WHEN n = 2 OR dl.id % 5 <> 0 THEN NULL ELSE dl.created_at + interval '5 seconds' END,
                  'bench-logscale'
             FROM dl JOIN ev ON ev.id = dl.event_id
            CROSS JOIN LATERAL generate_series(1, CASE WHEN dl.id % 5 = 0 THEN 2 ELSE 1 END) n"#,
    )
    .bind(deliveries)
    .bind(endpoints)
    .bind(FIRST_CLINIC)
    .bind(CLINICS)
    .bind(ago)
    .bind(ENDPOINTS_PER_CLINIC)
    .execute(&db.pool)
    .await
    .with_context(|| format!("filling the day {ago} days ago"))?;
    Ok(())
}

/// The variables of one run: a random clinic, endpoint, event, delivery or
/// call; a first page, or (`deep`) a page that starts at a random time of
/// the filled days.
async fn variables(
    name: &str,
    deep: bool,
    endpoints: &[i64],
    days: i64,
    attempts: (i64, i64),
    deliveries: (i64, i64),
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<(&'static str, Var)>> {
    let clinic = FIRST_CLINIC + fastrand::i64(0..CLINICS);
    let endpoint = endpoints[fastrand::usize(0..endpoints.len())];
    let before_at = if deep {
        // A cursor is the time of the last row shown: a literal to the server.
        let secs = fastrand::i64(0..days * 86400);
        sqlx::query_scalar("SELECT (now() - make_interval(secs => $1))::text")
            .bind(secs as f64)
            .fetch_one(&mut *conn)
            .await?
    } else {
        "infinity".to_owned()
    };
    let page = |key: &'static str, value: i64| {
        vec![
            (key, Var::Int(value)),
            ("limit", Var::Int(50)),
            ("before_at", Var::Text(before_at.clone())),
            ("before_id", Var::Int(i64::MAX)),
        ]
    };
    Ok(match name {
        "calls_by_clinic" | "failed_calls_by_clinic" => page("clinic_id", clinic),
        "calls_by_endpoint" => page("endpoint_id", endpoint),
        "calls_by_event_type" => {
            let mut vars = page("clinic_id", clinic);
            let event_type = EVENT_TYPES[fastrand::usize(0..EVENT_TYPES.len())];
            vars.push(("event_type", Var::Text(event_type.to_owned())));
            vars
        }
        "calls_of_delivery" => vec![(
            "delivery_id",
            Var::Int(fastrand::i64(deliveries.0..=deliveries.1)),
        )],
        "calls_of_event" => {
            let id = fastrand::i64(deliveries.0..=deliveries.1);
            let event: String =
                sqlx::query_scalar("SELECT event_id::text FROM webhooks.deliveries WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?;
            vec![("event_id", Var::Text(event))]
        }
        _ => {
            // A call as a list row names it: its id and its time.
            let id = fastrand::i64(attempts.0..=attempts.1);
            let called_at: String =
                sqlx::query_scalar("SELECT started_at::text FROM webhooks.attempts WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?;
            vec![
                ("attempt_id", Var::Int(id)),
                ("called_at", Var::Text(called_at)),
            ]
        }
    })
}

async fn relations(conn: &mut sqlx::PgConnection) -> Result<Vec<Relation>> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT t.name, sum(c.reltuples)::bigint, sum(pg_relation_size(c.oid))::bigint,
                sum(coalesce(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0))::bigint,
                sum(pg_indexes_size(c.oid))::bigint
           FROM (VALUES ('attempts'), ('deliveries'), ('events')) t(name)
           JOIN pg_class c ON c.relnamespace = 'webhooks'::regnamespace AND c.relkind = 'r'
                AND (c.relname = t.name OR c.relname LIKE t.name || '\\_%')
          GROUP BY t.name ORDER BY t.name",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(name, rows, heap_bytes, toast_bytes, index_bytes)| Relation {
                name,
                rows,
                heap_bytes,
                toast_bytes,
                index_bytes,
            },
        )
        .collect())
}

async fn dead_tuples(conn: &mut sqlx::PgConnection) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables WHERE schemaname = 'webhooks'",
    )
    .fetch_one(&mut *conn)
    .await?)
}
