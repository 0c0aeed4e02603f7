//! The bench's report: every run's raw measurements, a summary row per
//! measure (median and spread over repetitions, against the worker's targets),
//! rendered as one table or one JSON object.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::Scenario;
use crate::env::Server;
use crate::scenarios::{Flow, Latency, MemoryRun, Plan, ScaleOut, SoakRun, TriggerCost};
use crate::stats;
use crate::sys::Machine;
use clinic_webhooks::config::Settings;

/// A target the worker is held to (BENCHMARKS.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn holds(self, v: f64) -> bool {
        match self {
            Self::AtLeast(t) => v >= t,
            Self::AtMost(t) => v <= t,
        }
    }
}

/// One measure over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub key: &'static str,
    pub label: String,
    pub unit: &'static str,
    pub target: Option<Target>,
    /// Judged on the worst repetition (counts, peaks) instead of the median.
    pub judge_worst: bool,
    pub samples: Vec<f64>,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Row {
    fn new(
        key: &'static str,
        label: String,
        unit: &'static str,
        target: Option<Target>,
        samples: Vec<f64>,
    ) -> Self {
        Self {
            key,
            label,
            unit,
            target,
            judge_worst: false,
            median: stats::median(&samples),
            min: stats::min(&samples),
            max: stats::max(&samples),
            samples,
        }
    }

    fn worst(mut self) -> Self {
        self.judge_worst = true;
        self
    }

    /// Whether the target is met; `None` without a target or samples.
    pub fn met(&self) -> Option<bool> {
        let target = self.target?;
        let value = if self.judge_worst {
            match target {
                Target::AtLeast(_) => self.min?,
                Target::AtMost(_) => self.max?,
            }
        } else {
            self.median?
        };
        Some(target.holds(value))
    }
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub server: Server,
    pub plan: Plan,
    pub worker_settings: Value,
    pub repeat: usize,
    pub quick: bool,
    pub scenarios: Vec<String>,
    pub throughput: Vec<Flow>,
    pub latency: Vec<Latency>,
    /// The latency run again with the worker as a child process (when the
    /// other one ran it in-process).
    pub latency_process: Vec<Latency>,
    pub trigger: Vec<TriggerCost>,
    pub fanout: Vec<Flow>,
    pub scaleout: Vec<ScaleOut>,
    pub memory: Vec<MemoryRun>,
    pub soak: Vec<SoakRun>,
    pub logscale: Vec<crate::logscale::LogScale>,
    /// VmHWM of the bench process (receiver, load generators, in-process worker).
    pub bench_process_peak_rss_mb: Option<f64>,
    /// The 1-minute load average when the bench started and ended.
    pub loadavg_start: Option<f64>,
    pub loadavg_end: Option<f64>,
    /// Runs that failed, with their error.
    pub errors: Vec<String>,
}

fn col<T>(runs: &[T], f: impl Fn(&T) -> f64) -> Vec<f64> {
    runs.iter().map(f).collect()
}

impl BenchReport {
    pub(super) fn new(
        machine: Machine,
        server: Server,
        plan: Plan,
        settings: &Settings,
        repeat: usize,
        quick: bool,
        scenarios: &[Scenario],
    ) -> Self {
        let w = &settings.worker;
        Self {
            machine,
            server,
            plan,
            worker_settings: json!({
                "concurrency": w.concurrency,
                "record_batch": w.record_batch,
                "poll_interval": humantime::format_duration(w.poll_interval).to_string(),
                "lease": humantime::format_duration(w.lease).to_string(),
                "max_connections": settings.database.max_connections,
            }),
            repeat,
            quick,
            scenarios: scenarios.iter().map(ToString::to_string).collect(),
            throughput: Vec::new(),
            latency: Vec::new(),
            latency_process: Vec::new(),
            trigger: Vec::new(),
            fanout: Vec::new(),
            scaleout: Vec::new(),
            memory: Vec::new(),
            soak: Vec::new(),
            logscale: Vec::new(),
            bench_process_peak_rss_mb: None,
            loadavg_start: crate::sys::loadavg(),
            loadavg_end: None,
            errors: Vec::new(),
        }
    }

    /// The measures with a target first (the targets' table), then the ones
    /// that explain them.
    pub fn rows(&self) -> Vec<Row> {
        use Target::{AtLeast, AtMost};
        let p = &self.plan;
        let kind = if p.process_workers {
            "worker process"
        } else {
            "worker in-process"
        };
        let (t, l, g, f, s, m) = (
            &self.throughput,
            &self.latency,
            &self.trigger,
            &self.fanout,
            &self.scaleout,
            &self.memory,
        );
        vec![
            Row::new(
                "throughput_events_per_s",
                format!(
                    "end to end: {} visits in one INSERT, 1 v2 endpoint",
                    num(p.throughput_events as f64)
                ),
                "events/s",
                Some(AtLeast(10_000.0)),
                col(t, |r| r.events_per_s),
            ),
            Row::new(
                "latency_p50_ms",
                format!(
                    "latency p50, {}/s single-row inserts for {} s, {}",
                    p.latency_rate_per_s, p.latency_seconds, kind
                ),
                "ms",
                Some(AtMost(1.0)),
                col(l, |r| r.p50_ms),
            ),
            Row::new(
                "latency_p99_ms",
                "latency p99 (commit → receiver arrival)".to_owned(),
                "ms",
                Some(AtMost(3.0)),
                col(l, |r| r.p99_ms),
            ),
            Row::new(
                "latency_process_p50_ms",
                "latency p50, worker as a separate process".to_owned(),
                "ms",
                Some(AtMost(1.0)),
                col(&self.latency_process, |r| r.p50_ms),
            ),
            Row::new(
                "latency_process_p99_ms",
                "latency p99, worker as a separate process".to_owned(),
                "ms",
                Some(AtMost(3.0)),
                col(&self.latency_process, |r| r.p99_ms),
            ),
            Row::new(
                "trigger_ratio",
                format!(
                    "trigger cost: {} txns, {} clients, worker stopped",
                    num(p.trigger_txns as f64),
                    p.trigger_clients
                ),
                "× no-trigger",
                Some(AtLeast(0.70)),
                col(g, |r| r.ratio_stopped),
            ),
            Row::new(
                "trigger_ratio_worker_running",
                "trigger cost, worker delivering".to_owned(),
                "× no-trigger",
                Some(AtLeast(0.35)),
                col(g, |r| r.ratio_running),
            ),
            Row::new(
                "fanout_deliveries_per_s",
                format!(
                    "fan-out: {} events × {} endpoints",
                    num(p.fanout_events as f64),
                    p.fanout_endpoints
                ),
                "deliveries/s",
                Some(AtLeast(10_000.0)),
                col(f, |r| r.deliveries_per_s),
            ),
            Row::new(
                "scaleout_one_events_per_s",
                format!(
                    "scale-out: {} visits, 1 worker process",
                    num(p.scaleout_events as f64)
                ),
                "events/s",
                None,
                col(s, |r| r.one.events_per_s),
            ),
            Row::new(
                "scaleout_two_events_per_s",
                "scale-out: 2 worker processes".to_owned(),
                "events/s",
                None,
                col(s, |r| r.two.events_per_s),
            ),
            Row::new(
                "scaleout_ratio",
                "scale-out: 2 processes vs 1 (no loss)".to_owned(),
                "×",
                Some(AtLeast(1.0)),
                col(s, |r| r.ratio),
            ),
            Row::new(
                "scaleout_duplicates",
                "scale-out: duplicate deliveries".to_owned(),
                "requests",
                Some(AtMost(0.0)),
                col(s, |r| r.duplicates as f64),
            )
            .worst(),
            Row::new(
                "scaleout_missing",
                "scale-out: deliveries not succeeded".to_owned(),
                "deliveries",
                Some(AtMost(0.0)),
                col(s, |r| r.missing as f64),
            )
            .worst(),
            Row::new(
                "peak_rss_mb",
                format!(
                    "worker process peak RSS (burst + {} s steady)",
                    p.memory_steady_seconds
                ),
                "MiB",
                Some(AtMost(100.0)),
                col(m, |r| r.peak_rss_mb),
            )
            .worst(),
            Row::new(
                "rss_drift_mb",
                "worker RSS drift over the steady run (flat)".to_owned(),
                "MiB",
                Some(AtMost(5.0)),
                col(m, |r| r.drift_mb),
            )
            .worst(),
            Row::new(
                "soak_rss_drift_mb",
                format!(
                    "soak: {}/s for {} s, 1 call in 10 fails; worker RSS drift (flat)",
                    p.latency_rate_per_s, p.soak_seconds
                ),
                "MiB",
                Some(AtMost(5.0)),
                col(&self.soak, |r| r.rss_end_mb - r.rss_start_mb),
            )
            .worst(),
            Row::new(
                "soak_fd_drift",
                "soak: open descriptors, last tenth − second tenth (flat)".to_owned(),
                "fds",
                Some(AtMost(2.0)),
                col(&self.soak, |r| r.fds_end - r.fds_start),
            )
            .worst(),
            Row::new(
                "soak_not_succeeded",
                "soak: deliveries not succeeded after the drain".to_owned(),
                "deliveries",
                Some(AtMost(0.0)),
                col(&self.soak, |r| r.not_succeeded as f64),
            )
            .worst(),
            Row::new(
                "log_panel_query_p99_ms",
                "log at scale: slowest sql/log/ panel query, p99 of 100 runs".to_owned(),
                "ms",
                Some(AtMost(20.0)),
                col(&self.logscale, |r| {
                    r.queries.iter().map(|q| q.p99_ms).fold(0.0, f64::max)
                }),
            )
            .worst(),
            Row::new(
                "log_retention_run_ms",
                "log at scale: one retention run dropping the oldest day".to_owned(),
                "ms",
                Some(AtMost(1000.0)),
                col(&self.logscale, |r| r.retention_run_ms),
            )
            .worst(),
            Row::new(
                "log_retention_dead_tuples",
                "log at scale: dead tuples the retention run left".to_owned(),
                "tuples",
                Some(AtMost(0.0)),
                col(&self.logscale, |r| r.retention_dead_tuples as f64),
            )
            .worst(),
            Row::new(
                "log_bytes_per_call",
                "  log at scale: heap + TOAST + indexes of the log per call".to_owned(),
                "bytes",
                None,
                col(&self.logscale, |r| r.log_bytes_per_call),
            ),
            // What explains the above.
            Row::new(
                "throughput_insert_ms",
                "  the one INSERT (triggers + commit)".to_owned(),
                "ms",
                None,
                col(t, |r| r.insert_ms),
            ),
            Row::new(
                "throughput_first_arrival_ms",
                "  commit → first arrival".to_owned(),
                "ms",
                None,
                col(t, |r| r.first_arrival_ms),
            ),
            Row::new(
                "throughput_write_xacts_per_1k_events",
                "  writing transactions per 1,000 events".to_owned(),
                "xacts",
                None,
                col(t, |r| {
                    1000.0 * r.write_xacts as f64 / r.events.max(1) as f64
                }),
            ),
            Row::new(
                "throughput_wal_bytes_per_event",
                "  WAL per event, insert + delivery (server-wide)".to_owned(),
                "bytes",
                None,
                col(t, |r| r.wal_bytes_per_delivery),
            ),
            Row::new(
                "throughput_machine_cpu_pct",
                "  machine CPU busy, commit → delivered".to_owned(),
                "%",
                None,
                col(t, |r| r.cpu.machine_busy_pct),
            ),
            Row::new(
                "throughput_bench_process_cpu_pct",
                if p.process_workers {
                    "  of which the bench process (receiver, load)".to_owned()
                } else {
                    "  of which the bench process (worker, receiver, load)".to_owned()
                },
                "%",
                None,
                col(t, |r| {
                    r.cpu.process_pct.first().copied().unwrap_or(f64::NAN)
                }),
            ),
            Row::new(
                "throughput_worker_process_cpu_pct",
                "  of which the worker process".to_owned(),
                "%",
                None,
                col(t, |r| match r.cpu.process_pct.get(1..) {
                    Some(rest) if !rest.is_empty() => rest.iter().sum(),
                    _ => f64::NAN,
                }),
            ),
            Row::new(
                "latency_p90_ms",
                "  latency p90".to_owned(),
                "ms",
                None,
                col(l, |r| r.p90_ms),
            ),
            Row::new(
                "latency_max_ms",
                "  latency max".to_owned(),
                "ms",
                None,
                col(l, |r| r.max_ms),
            ),
            Row::new(
                "latency_insert_p50_ms",
                "  the client's INSERT + commit, p50".to_owned(),
                "ms",
                None,
                col(l, |r| r.insert_p50_ms),
            ),
            Row::new(
                "insert_baseline_tps",
                "  inserts without triggers".to_owned(),
                "txns/s",
                None,
                col(g, |r| r.baseline.txns_per_s),
            ),
            Row::new(
                "insert_trigger_tps",
                "  inserts with triggers, worker stopped".to_owned(),
                "txns/s",
                None,
                col(g, |r| r.worker_stopped.txns_per_s),
            ),
            Row::new(
                "insert_trigger_running_tps",
                "  inserts with triggers, worker delivering".to_owned(),
                "txns/s",
                None,
                col(g, |r| r.worker_running.txns_per_s),
            ),
            Row::new(
                "insert_wal_bytes_per_txn_baseline",
                "  WAL per insert, no triggers".to_owned(),
                "bytes",
                None,
                col(g, |r| r.baseline.wal_bytes_per_txn),
            ),
            Row::new(
                "insert_wal_bytes_per_txn_trigger",
                "  WAL per insert, triggers".to_owned(),
                "bytes",
                None,
                col(g, |r| r.worker_stopped.wal_bytes_per_txn),
            ),
            Row::new(
                "insert_write_xacts_per_txn_running",
                "  writing transactions per insert, worker delivering".to_owned(),
                "xacts",
                None,
                col(g, |r| r.worker_running.write_xacts_per_txn),
            ),
            Row::new(
                "fanout_write_xacts_per_1k_deliveries",
                "  fan-out: writing transactions per 1,000 deliveries".to_owned(),
                "xacts",
                None,
                col(f, |r| {
                    1000.0 * r.write_xacts as f64 / r.deliveries.max(1) as f64
                }),
            ),
            Row::new(
                "memory_burst_events_per_s",
                "  worker process: burst throughput".to_owned(),
                "events/s",
                None,
                col(m, |r| r.burst.events_per_s),
            ),
            Row::new(
                "memory_steady_latency_p50_ms",
                "  worker process: steady latency p50".to_owned(),
                "ms",
                None,
                col(m, |r| r.steady.p50_ms),
            ),
            Row::new(
                "memory_steady_latency_p99_ms",
                "  worker process: steady latency p99".to_owned(),
                "ms",
                None,
                col(m, |r| r.steady.p99_ms),
            ),
            Row::new(
                "memory_idle_rss_mb",
                "  worker process: RSS after start".to_owned(),
                "MiB",
                None,
                col(m, |r| r.idle_rss_mb),
            ),
            Row::new(
                "soak_rss_max_mb",
                "  soak: worker RSS, highest sample".to_owned(),
                "MiB",
                None,
                col(&self.soak, |r| r.rss_max_mb),
            ),
            Row::new(
                "soak_db_connections_max",
                "  soak: worker connections to PostgreSQL, most at once".to_owned(),
                "connections",
                None,
                col(&self.soak, |r| r.db_connections_max as f64),
            ),
            Row::new(
                "soak_http_connections_max",
                "  soak: worker connections to the receiver, most at once".to_owned(),
                "connections",
                None,
                col(&self.soak, |r| r.http_connections_max as f64),
            ),
            Row::new(
                "soak_calls",
                "  soak: calls made (first attempts and retries)".to_owned(),
                "calls",
                None,
                col(&self.soak, |r| r.calls as f64),
            ),
            Row::new(
                "soak_drain_s",
                "  soak: last insert → backlog drained".to_owned(),
                "s",
                None,
                col(&self.soak, |r| r.drain_s),
            ),
        ]
    }

    /// One JSON object: every measure's median under its key, then the
    /// spread, the targets, the raw runs and the setup.
    pub fn to_json(&self) -> Value {
        let rows = self.rows();
        let mut top = Map::new();
        for row in &rows {
            top.insert(row.key.to_owned(), opt(row.median));
        }
        let spread: Map<String, Value> = rows
            .iter()
            .map(|r| {
                (
                    r.key.to_owned(),
                    json!({
                        "median": opt(r.median),
                        "min": opt(r.min),
                        "max": opt(r.max),
                        "samples": r.samples.iter().map(|v| opt(Some(*v))).collect::<Vec<_>>(),
                        "unit": r.unit,
                        "target": r.target,
                        "judged_on": if r.judge_worst { "worst" } else { "median" },
                        "met": r.met(),
                    }),
                )
            })
            .collect();
        top.insert("spread".to_owned(), Value::Object(spread));
        top.insert(
            "samples".to_owned(),
            json!({
                "throughput": self.throughput,
                "latency": self.latency,
                "latency_process": self.latency_process,
                "trigger": self.trigger,
                "fanout": self.fanout,
                "scaleout": self.scaleout,
                "memory": self.memory,
                "soak": self.soak,
                "logscale": self.logscale,
            }),
        );
        top.insert("machine".to_owned(), json!(self.machine));
        top.insert("server".to_owned(), json!(self.server));
        top.insert("plan".to_owned(), json!(self.plan));
        top.insert("worker_settings".to_owned(), self.worker_settings.clone());
        top.insert("repeat".to_owned(), json!(self.repeat));
        top.insert("quick".to_owned(), json!(self.quick));
        top.insert("scenarios".to_owned(), json!(self.scenarios));
        top.insert(
            "bench_process_peak_rss_mb".to_owned(),
            opt(self.bench_process_peak_rss_mb),
        );
        top.insert("loadavg_start".to_owned(), opt(self.loadavg_start));
        top.insert("loadavg_end".to_owned(), opt(self.loadavg_end));
        top.insert("errors".to_owned(), json!(self.errors));
        // serde_json writes NaN and infinities as null.
        Value::Object(top)
    }

    /// The table: measure, median, min–max, n, target, met.
    pub fn table(&self) -> String {
        let rows: Vec<Row> = self
            .rows()
            .into_iter()
            .filter(|r| r.median.is_some())
            .collect();
        let mut lines: Vec<[String; 6]> = vec![[
            "measure".into(),
            "median".into(),
            "min – max".into(),
            "n".into(),
            "target".into(),
            "met".into(),
        ]];
        for r in &rows {
            let target = r.target.map_or_else(String::new, |t| match t {
                Target::AtLeast(v) => format!("≥ {} {}", num(v), r.unit),
                Target::AtMost(v) => format!("≤ {} {}", num(v), r.unit),
            });
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            lines.push([
                r.label.clone(),
                format!("{} {}", r.median.map_or_else(|| "–".into(), num), r.unit),
                format!(
                    "{} – {}",
                    r.min.map_or_else(|| "–".into(), num),
                    r.max.map_or_else(|| "–".into(), num)
                ),
                r.samples.len().to_string(),
                target,
                met.to_owned(),
            ]);
        }
        let mut widths = [0usize; 6];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "clinic-webhooks-bench: {} repetition(s){}; {} CPUs; load {} → {}; {}",
            self.repeat,
            if self.quick { ", --quick" } else { "" },
            self.machine.cpus,
            self.loadavg_start
                .map_or_else(|| "?".into(), |l| format!("{l:.2}")),
            self.loadavg_end
                .map_or_else(|| "?".into(), |l| format!("{l:.2}")),
            self.server
                .version
                .split(" on ")
                .next()
                .unwrap_or(&self.server.version),
        );
        for (i, line) in lines.iter().enumerate() {
            let mut text = String::new();
            for (j, (cell, w)) in line.iter().zip(widths).enumerate() {
                let pad = w - cell.chars().count();
                // Numbers right-aligned, words left-aligned.
                if (1..=3).contains(&j) {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                }
                text.push_str("  ");
            }
            let _ = writeln!(out, "{}", text.trim_end());
            if i == 0 {
                let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                let _ = writeln!(out, "{}", "-".repeat(total));
            }
        }
        for err in &self.errors {
            let _ = writeln!(out, "FAILED: {err}");
        }
        out
    }
}

fn opt(v: Option<f64>) -> Value {
    match v {
        Some(x) if x.is_finite() => json!(x),
        _ => Value::Null,
    }
}

/// 12,345 · 123 · 12.3 · 1.23
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        // Rounded to a whole number that fits easily.
        let whole = v.round() as i64;
        let digits = whole.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if whole < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(12_345.4), "12,345");
        assert_eq!(num(1_000.0), "1,000");
        assert_eq!(num(-2_500.0), "-2,500");
        assert_eq!(num(123.4), "123");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(0.4567), "0.46");
        assert_eq!(num(f64::NAN), "–");
    }

    #[test]
    fn targets_judge_median_or_worst() {
        let r = Row::new(
            "k",
            "l".into(),
            "u",
            Some(Target::AtLeast(10.0)),
            vec![9.0, 11.0, 12.0],
        );
        assert_eq!(r.met(), Some(true));
        assert_eq!(r.clone().worst().met(), Some(false));
        let none = Row::new("k", "l".into(), "u", Some(Target::AtMost(1.0)), vec![]);
        assert_eq!(none.met(), None);
    }
}
