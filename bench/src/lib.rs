//! The clinic-webhooks benchmark: the worker measured on a private database
//! that it creates (and drops), with the real triggers, the real worker, the
//! real log, and the test-support HTTP receiver on 127.0.0.1.
//!
//! Scenarios (each repeated, median and spread reported):
//! * `throughput`: 20,000 visits inserted in one statement, one v2 endpoint;
//!   commit → every delivery succeeded and logged.
//! * `latency`: single-row inserts at 200/s from a separate connection;
//!   commit → arrival at the receiver, matched by webhook-id.
//! * `trigger`: 20,000 single-row insert transactions from 4 clients, with
//!   the triggers and one endpoint vs without triggers; worker stopped, then
//!   worker delivering.
//! * `fanout`: 2,000 events × 10 endpoints.
//! * `scaleout`: the throughput workload with one `clinic-webhooks run`
//!   process, then two; duplicates counted at the receiver.
//! * `memory`: the worker process's RSS over a burst and a steady run.
//! * `soak` (only when asked for by `--only soak`): 200 inserts/s for 10
//!   minutes to a receiver that fails one call in ten, the worker process's
//!   memory, descriptors and connections sampled every second.
//!
//! The in-process worker shares this process with the receiver and the load
//! generators; `memory` and `scaleout` run the real binary as child processes
//! (and `process_workers` makes every scenario do so).

mod env;
mod logscale;
mod report;
mod scenarios;
pub mod stats;
mod sys;
mod workers;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Result;

pub use report::{BenchReport, Row, Target};
pub use scenarios::{
    Flow, Latency, Load, MemoryRun, Plan, ScaleOut, SoakRun, SoakSample, TriggerCost,
};

use scenarios::Ctx;

/// The server the bench creates its database on, unless told otherwise.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    Throughput,
    Latency,
    Trigger,
    Fanout,
    Scaleout,
    Memory,
    Soak,
    Logscale,
}

impl Scenario {
    pub const ALL: [Self; 8] = [
        Self::Throughput,
        Self::Latency,
        Self::Trigger,
        Self::Fanout,
        Self::Scaleout,
        Self::Memory,
        Self::Soak,
        Self::Logscale,
    ];

    /// Whether it runs when no scenario is named: all but the long soak
    /// and the log at scale.
    pub fn runs_by_default(self) -> bool {
        !matches!(self, Self::Soak | Self::Logscale)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::Latency => "latency",
            Self::Trigger => "trigger",
            Self::Fanout => "fanout",
            Self::Scaleout => "scaleout",
            Self::Memory => "memory",
            Self::Soak => "soak",
            Self::Logscale => "logscale",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scenario {s:?}; one of {}", names.join(", "))
            })
    }
}

/// What to measure, and how; the fields are the command line's options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A PostgreSQL server URL; the bench creates `cw_bench_*` there.
    pub database_url: String,
    /// Repetitions of each scenario (≥ 1).
    pub repeat: usize,
    /// Smaller workloads, for a quick look (and debugging the bench).
    pub quick: bool,
    /// Scenarios to run; empty: all.
    pub only: Vec<Scenario>,
    /// Seconds of the latency run (default 40, quick 8).
    pub latency_seconds: Option<f64>,
    /// Seconds of the steady part of the memory run (default 60, quick 8).
    pub steady_seconds: Option<f64>,
    /// Seconds of the soak run's load (default 600, quick 20).
    pub soak_seconds: Option<f64>,
    /// Calls the log-at-scale scenario fills (default 10,000,000, quick 300,000).
    pub log_calls: Option<i64>,
    /// Days (daily partitions) they are spread over (default 30).
    pub log_days: Option<i64>,
    /// Run the worker as a child process in every scenario.
    pub process_workers: bool,
    /// Keep the database afterwards (to look inside); it is dropped otherwise.
    pub keep_database: bool,
    /// `max_in_flight` of every bench endpoint (its bulkhead).
    pub max_in_flight: i32,
    /// The `clinic-webhooks` binary run as the worker process (by `latency`,
    /// `scaleout`, `memory`, and every scenario with `process_workers`).
    pub worker_binary: PathBuf,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl BenchOptions {
    fn plan(&self) -> Plan {
        fn pick<T>(quick: bool, full: T, short: T) -> T {
            if quick { short } else { full }
        }
        let q = self.quick;
        Plan {
            throughput_events: pick(q, 20_000, 5_000),
            latency_rate_per_s: 200.0,
            latency_seconds: self
                .latency_seconds
                .unwrap_or(pick(q, 40.0, 8.0))
                .clamp(1.0, 3600.0),
            trigger_txns: pick(q, 20_000, 4_000),
            trigger_clients: 4,
            fanout_events: pick(q, 2_000, 500),
            fanout_endpoints: 10,
            scaleout_events: pick(q, 20_000, 5_000),
            memory_steady_seconds: self
                .steady_seconds
                .unwrap_or(pick(q, 60.0, 8.0))
                .clamp(1.0, 3600.0),
            soak_seconds: self
                .soak_seconds
                .unwrap_or(pick(q, 600.0, 20.0))
                .clamp(1.0, 24.0 * 3600.0),
            max_in_flight: self.max_in_flight,
            process_workers: self.process_workers,
        }
    }

    fn scenarios(&self) -> Vec<Scenario> {
        let mut chosen = if self.only.is_empty() {
            Scenario::ALL
                .into_iter()
                .filter(|s| s.runs_by_default())
                .collect()
        } else {
            self.only.clone()
        };
        chosen.sort();
        chosen.dedup();
        chosen
    }
}

/// Logging for the bench: warnings to stderr (RUST_LOG overrides), so that
/// stdout carries only the table or the JSON object.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The latency run with the configured worker and, when that is the
/// in-process one, again with a worker process (the production deployment).
async fn latency_both(
    ctx: &Ctx<'_>,
    report: &mut BenchReport,
) -> Result<(Latency, Option<(f64, f64)>)> {
    let configured = scenarios::latency(ctx, false).await?;
    report.latency.push(configured.clone());
    if ctx.plan.process_workers {
        return Ok((configured, None));
    }
    let process = scenarios::latency(ctx, true).await?;
    let summary = (process.p50_ms, process.p99_ms);
    report.latency_process.push(process);
    Ok((configured, Some(summary)))
}

/// Runs the chosen scenarios `repeat` times each (interleaved: repetition 1
/// of every scenario, then repetition 2, ...) and reports. A failed run is
/// reported in `errors` and does not stop the others.
pub async fn run(opts: BenchOptions) -> Result<BenchReport> {
    let db = env::BenchDb::create(&opts.database_url).await?;
    if opts.progress {
        eprintln!("[bench] database {} created and migrated", db.name);
    }
    let result = run_on(&db, &opts, &opts.worker_binary).await;
    if opts.keep_database {
        if opts.progress {
            eprintln!("[bench] kept database {}", db.name);
        }
    } else if let Err(err) = db.drop_database().await {
        tracing::warn!(error = %err, database = %db.name, "could not drop the bench database");
    }
    result
}

async fn run_on(
    db: &env::BenchDb,
    opts: &BenchOptions,
    binary: &std::path::Path,
) -> Result<BenchReport> {
    let plan = opts.plan();
    let scenarios = opts.scenarios();
    let repeat = opts.repeat.max(1);
    let settings = workers::settings("bench")?;
    let mut report = BenchReport::new(
        sys::machine(),
        db.server().await?,
        plan.clone(),
        &settings,
        repeat,
        opts.quick,
        &scenarios,
    );
    let ctx = Ctx {
        db,
        plan: &plan,
        binary,
    };
    let say = |line: String| {
        if opts.progress {
            eprintln!("[bench] {line}");
        }
    };
    for rep in 1..=repeat {
        for &scenario in &scenarios {
            let tag = format!("{scenario} {rep}/{repeat}");
            let outcome = match scenario {
                Scenario::Throughput => scenarios::throughput(&ctx).await.map(|f| {
                    let line = format!(
                        "{tag}: {:.0} events/s (insert {:.0} ms, delivered in {:.2} s)",
                        f.events_per_s, f.insert_ms, f.deliver_s
                    );
                    report.throughput.push(f);
                    line
                }),
                Scenario::Latency => latency_both(&ctx, &mut report).await.map(|(l, p)| {
                    format!(
                        "{tag}: p50 {:.2} ms, p99 {:.2} ms over {} events{}",
                        l.p50_ms,
                        l.p99_ms,
                        l.matched,
                        p.map_or_else(String::new, |(p50, p99)| format!(
                            "; worker process: p50 {p50:.2} ms, p99 {p99:.2} ms"
                        ))
                    )
                }),
                Scenario::Trigger => scenarios::trigger_cost(&ctx).await.map(|t| {
                    let line = format!(
                        "{tag}: baseline {:.0} tx/s, triggers {:.0} tx/s ({:.2}), with worker {:.0} tx/s ({:.2})",
                        t.baseline.txns_per_s,
                        t.worker_stopped.txns_per_s,
                        t.ratio_stopped,
                        t.worker_running.txns_per_s,
                        t.ratio_running
                    );
                    report.trigger.push(t);
                    line
                }),
                Scenario::Fanout => scenarios::fanout(&ctx).await.map(|f| {
                    let line = format!(
                        "{tag}: {:.0} deliveries/s ({} deliveries in {:.2} s)",
                        f.deliveries_per_s, f.deliveries, f.deliver_s
                    );
                    report.fanout.push(f);
                    line
                }),
                Scenario::Scaleout => scenarios::scaleout(&ctx, rep % 2 == 0).await.map(|s| {
                    let line = format!(
                        "{tag}: 1 worker {:.0} events/s, 2 workers {:.0} events/s ({:.2}), {} duplicates, {} missing",
                        s.one.events_per_s, s.two.events_per_s, s.ratio, s.duplicates, s.missing
                    );
                    report.scaleout.push(s);
                    line
                }),
                Scenario::Memory => scenarios::memory(&ctx).await.map(|m| {
                    let line = format!(
                        "{tag}: peak {:.1} MB, idle {:.1} MB, steady {:.1} → {:.1} MB",
                        m.peak_rss_mb, m.idle_rss_mb, m.steady_start_rss_mb, m.steady_end_rss_mb
                    );
                    report.memory.push(m);
                    line
                }),
                Scenario::Logscale => {
                    let calls = opts
                        .log_calls
                        .unwrap_or(if opts.quick { 300_000 } else { 10_000_000 })
                        .max(1000);
                    let days = opts.log_days.unwrap_or(30).clamp(2, 400);
                    logscale::run(db, calls, days).await.map(|l| {
                        let slowest = l
                            .queries
                            .iter()
                            .map(|q| q.p99_ms)
                            .fold(0.0, f64::max);
                        let line = format!(
                            "{tag}: {} calls over {} days filled in {:.0} s; slowest panel query p99 {:.2} ms; {:.0} bytes per call; retention run {:.0} ms, {} dead tuples",
                            l.calls, l.days, l.fill_s, slowest, l.log_bytes_per_call, l.retention_run_ms, l.retention_dead_tuples
                        );
                        let per_query: Vec<String> = l
                            .queries
                            .iter()
                            .map(|q| {
                                format!(
                                    "{} p50 {:.2} / p99 {:.2} ms prepared; {:.2} / {:.2} ms prepared, custom plans; {:.2} / {:.2} ms as text",
                                    q.name, q.p50_ms, q.p99_ms, q.custom_plan_p50_ms, q.custom_plan_p99_ms,
                                    q.text_p50_ms, q.text_p99_ms
                                )
                            })
                            .collect();
                        report.logscale.push(l);
                        format!("{line}\n[bench]   {}", per_query.join("\n[bench]   "))
                    })
                }
                Scenario::Soak => scenarios::soak(&ctx).await.map(|s| {
                    let line = format!(
                        "{tag}: {} events in {:.0} s, {} calls ({} failed); RSS {:.1} → {:.1} MB (max {:.1}), fds {:.0} → {:.0}, DB connections ≤ {}, {} not succeeded",
                        s.events,
                        s.seconds,
                        s.calls,
                        s.failed_calls,
                        s.rss_start_mb,
                        s.rss_end_mb,
                        s.rss_max_mb,
                        s.fds_start,
                        s.fds_end,
                        s.db_connections_max,
                        s.not_succeeded
                    );
                    report.soak.push(s);
                    line
                }),
            };
            match outcome {
                Ok(line) => say(line),
                Err(err) => {
                    let message = format!("{tag}: {err:#}");
                    say(format!("FAILED {message}"));
                    report.errors.push(message);
                    // Leave no trigger disabled for the next scenario.
                    db.visit_triggers(true).await.ok();
                }
            }
        }
    }
    report.bench_process_peak_rss_mb = sys::memory(None).map(|m| m.hwm_mb).ok();
    report.loadavg_end = sys::loadavg();
    Ok(report)
}
