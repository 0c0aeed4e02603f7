//! The measured scenarios. Each run starts from an empty queue
//! and a fresh receiver, warms the worker up with one delivery (so that it
//! listens, has its connections and its HTTP connection), measures, and
//! stops the worker gracefully.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sqlx::Connection;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::env::{
    self, BenchDb, CLINIC_ID, INSERT_ONE_VISIT, INSERT_ONE_VISIT_RETURNING, MEMBER_ID, Tally,
};
use crate::stats;
use crate::sys::{self, CpuMeter, CpuUse};
use crate::workers::{Worker, stop_all};
use clinic_webhooks_test_support::Receiver;

/// Sizes of the workloads.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub throughput_events: i64,
    pub latency_rate_per_s: f64,
    pub latency_seconds: f64,
    pub trigger_txns: usize,
    pub trigger_clients: usize,
    pub fanout_events: i64,
    pub fanout_endpoints: i64,
    pub scaleout_events: i64,
    pub memory_steady_seconds: f64,
    pub soak_seconds: f64,
    /// webhooks.endpoints.max_in_flight of every bench endpoint.
    pub max_in_flight: i32,
    /// Scenarios a–e run the worker as a child process instead of in-process.
    pub process_workers: bool,
}

/// What the scenarios share.
pub struct Ctx<'a> {
    pub db: &'a BenchDb,
    pub plan: &'a Plan,
    pub binary: &'a Path,
}

impl Ctx<'_> {
    fn mode(&self) -> Mode {
        if self.plan.process_workers {
            Mode::Process
        } else {
            Mode::InProcess
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    InProcess,
    Process,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts `n` workers and waits until each of them listens.
async fn start_workers(ctx: &Ctx<'_>, mode: Mode, n: usize, tag: &str) -> Result<Vec<Worker>> {
    // The previous run's workers must be gone, or the count below lies.
    ctx.db.wait_listeners(0, Duration::from_secs(30)).await?;
    let mut workers = Vec::with_capacity(n);
    for i in 1..=n {
        let name = format!("bench-{tag}-{i}");
        let started = match mode {
            Mode::InProcess => Worker::in_process(&ctx.db.url, &name).await,
            Mode::Process => Worker::process(ctx.binary, &ctx.db.url, &name),
        };
        match started {
            Ok(w) => workers.push(w),
            Err(err) => {
                stop_all(workers).await.ok();
                return Err(err);
            }
        }
    }
    let count = i64::try_from(n)?;
    if let Err(err) = ctx.db.wait_listeners(count, Duration::from_secs(60)).await {
        stop_all(workers).await.ok();
        return Err(err);
    }
    Ok(workers)
}

/// Stops the workers; the run's own error wins over a stop error.
async fn finish<T>(workers: Vec<Worker>, result: Result<T>) -> Result<T> {
    let stopped = stop_all(workers).await;
    let value = result?;
    stopped?;
    Ok(value)
}

/// One visit, delivered to every endpoint.
async fn warm_up(ctx: &Ctx<'_>, receiver: &Receiver, endpoints: usize) -> Result<()> {
    let base = receiver.count();
    ctx.db.insert_visits(1).await?;
    env::wait_delivered(ctx.db, receiver, base + endpoints, Duration::from_secs(30))
        .await
        .context("warming up")?;
    Ok(())
}

fn pids(workers: &[Worker]) -> Vec<Option<u32>> {
    std::iter::once(None)
        .chain(workers.iter().filter_map(Worker::pid).map(Some))
        .collect()
}

/// A bulk insert delivered to `endpoints` endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub events: i64,
    pub endpoints: i64,
    pub deliveries: i64,
    pub workers: usize,
    /// The one INSERT statement, triggers and commit included.
    pub insert_ms: f64,
    /// Commit → every delivery succeeded and logged.
    pub deliver_s: f64,
    pub events_per_s: f64,
    pub deliveries_per_s: f64,
    /// Commit → the first request at the receiver.
    pub first_arrival_ms: f64,
    /// WAL written by the insert and the deliveries (server-wide), per delivery.
    pub wal_bytes_per_delivery: f64,
    /// Transactions that wrote (server-wide) during the run.
    pub write_xacts: i64,
    pub tally: Tally,
    /// Requests received more than once for one (webhook-id, endpoint).
    pub duplicates: usize,
    /// Deliveries that did not succeed.
    pub missing: i64,
    /// CPU from commit to delivered: the whole machine, this process, each
    /// worker process.
    pub cpu: CpuUse,
    /// VmHWM of each worker process, when they are processes.
    pub worker_peak_rss_mb: Vec<f64>,
}

/// Inserts `events` visits in one statement and waits until every delivery
/// to `endpoints` endpoints has succeeded.
async fn burst(
    ctx: &Ctx<'_>,
    workers: &mut [Worker],
    receiver: &Receiver,
    endpoints: i64,
    events: i64,
) -> Result<Flow> {
    ctx.db.checkpoint().await;
    let counters = ctx.db.counters().await?;
    let base = receiver.count();
    let started = Instant::now();
    ctx.db.insert_visits(events).await?;
    let committed = Instant::now();
    // CPU over the measured part only: commit → delivered.
    let cpu = CpuMeter::start(pids(workers))?;
    let deliveries = events * endpoints;
    let expected = usize::try_from(deliveries)?;
    // Generous: a run slower than 100 deliveries/s is broken anyway.
    let timeout = Duration::from_secs(60) + Duration::from_millis(10 * u64::try_from(deliveries)?);
    let done = env::wait_delivered(ctx.db, receiver, base + expected, timeout).await?;
    let cpu = cpu.stop()?;
    let server = ctx.db.since(&counters).await?;
    for w in workers.iter_mut() {
        w.check_alive()?;
    }
    let worker_peak_rss_mb = workers
        .iter()
        .filter_map(Worker::pid)
        .map(|pid| sys::memory(Some(pid)).map(|m| m.hwm_mb))
        .collect::<Result<Vec<_>>>()?;
    let requests = receiver.requests();
    let first_arrival_ms = requests
        .get(base)
        .map_or(f64::NAN, |r| ms(r.at.saturating_duration_since(committed)));
    let tally = ctx.db.tally().await?;
    let deliver_s = done.duration_since(committed).as_secs_f64().max(1e-9);
    Ok(Flow {
        events,
        endpoints,
        deliveries,
        workers: workers.len(),
        insert_ms: ms(committed.duration_since(started)),
        deliver_s,
        events_per_s: events as f64 / deliver_s,
        deliveries_per_s: deliveries as f64 / deliver_s,
        first_arrival_ms,
        wal_bytes_per_delivery: server.wal_bytes as f64 / deliveries.max(1) as f64,
        write_xacts: server.write_xacts,
        duplicates: env::duplicates(&requests),
        missing: tally.deliveries - tally.succeeded,
        tally,
        cpu,
        worker_peak_rss_mb,
    })
}

/// A fresh queue, receiver and `endpoints` endpoints; `n` workers; one burst.
async fn flow(
    ctx: &Ctx<'_>,
    mode: Mode,
    tag: &str,
    workers: usize,
    endpoints: i64,
    events: i64,
) -> Result<Flow> {
    ctx.db.reset().await?;
    let receiver = Receiver::ok().await?;
    ctx.db
        .endpoints(&receiver, endpoints, ctx.plan.max_in_flight)
        .await?;
    let mut running = start_workers(ctx, mode, workers, tag).await?;
    let result = async {
        warm_up(ctx, &receiver, usize::try_from(endpoints)?).await?;
        burst(ctx, &mut running, &receiver, endpoints, events).await
    }
    .await;
    finish(running, result).await
}

/// (a) 20,000 visits in one statement, one v2 endpoint.
pub async fn throughput(ctx: &Ctx<'_>) -> Result<Flow> {
    flow(
        ctx,
        ctx.mode(),
        "throughput",
        1,
        1,
        ctx.plan.throughput_events,
    )
    .await
}

/// (e) 2,000 events × 10 endpoints.
pub async fn fanout(ctx: &Ctx<'_>) -> Result<Flow> {
    flow(
        ctx,
        ctx.mode(),
        "fanout",
        1,
        ctx.plan.fanout_endpoints,
        ctx.plan.fanout_events,
    )
    .await
}

/// (f) The throughput workload with one worker process and with two, in
/// that order or (`two_first`) the other: a drift of the machine's speed
/// within a repetition then lands on both sides of the ratio over the
/// repetitions, not always on the second run.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleOut {
    pub one: Flow,
    pub two: Flow,
    /// two.events_per_s / one.events_per_s
    pub ratio: f64,
    pub duplicates: usize,
    pub missing: i64,
}

pub async fn scaleout(ctx: &Ctx<'_>, two_first: bool) -> Result<ScaleOut> {
    let events = ctx.plan.scaleout_events;
    let (one, two) = if two_first {
        let two = flow(ctx, Mode::Process, "scale2", 2, 1, events).await?;
        (flow(ctx, Mode::Process, "scale1", 1, 1, events).await?, two)
    } else {
        let one = flow(ctx, Mode::Process, "scale1", 1, 1, events).await?;
        (one, flow(ctx, Mode::Process, "scale2", 2, 1, events).await?)
    };
    Ok(ScaleOut {
        ratio: two.events_per_s / one.events_per_s,
        duplicates: one.duplicates + two.duplicates,
        missing: one.missing + two.missing,
        one,
        two,
    })
}

/// Single-row inserts at a steady rate; commit → receiver arrival.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub rate_per_s: f64,
    pub seconds: f64,
    pub sent: usize,
    pub achieved_rate_per_s: f64,
    /// Events whose arrival was matched to their commit.
    pub matched: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Arrivals seen before the client had the commit's answer (counted as 0 ms).
    pub arrived_before_commit_returned: usize,
    /// The client's INSERT round trip (trigger and commit included).
    pub insert_p50_ms: f64,
    pub insert_p99_ms: f64,
    pub duplicates: usize,
    pub cpu: CpuUse,
}

/// Inserts visits one per transaction at `rate` per second for `seconds`
/// from a connection of its own, then matches each arrival to its commit.
async fn steady(
    ctx: &Ctx<'_>,
    workers: &[Worker],
    receiver: &Receiver,
    rate: f64,
    seconds: f64,
) -> Result<Latency> {
    let mut client = ctx.db.client().await?;
    let base = receiver.count();
    // Rate and duration are small positive numbers (CLI-bounded).
    let n = (rate * seconds).round().max(1.0) as usize;
    let mut committed: HashMap<i64, Instant> = HashMap::with_capacity(n);
    let mut insert_ms = Vec::with_capacity(n);
    let cpu = CpuMeter::start(pids(workers))?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Late ticks are caught up, so that the average rate holds.
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    for _ in 0..n {
        tick.tick().await;
        let sent = Instant::now();
        let visit: i64 = sqlx::query_scalar(INSERT_ONE_VISIT_RETURNING)
            .bind(CLINIC_ID)
            .bind(MEMBER_ID)
            .fetch_one(&mut client)
            .await?;
        let back = Instant::now();
        committed.insert(visit, back);
        insert_ms.push(ms(back.duration_since(sent)));
    }
    let elapsed = started.elapsed().as_secs_f64();
    client.close().await.ok();
    env::wait_delivered(ctx.db, receiver, base + n, Duration::from_secs(60)).await?;
    let cpu = cpu.stop()?;

    let requests = receiver.requests();
    let visit_of = ctx.db.visit_of_event().await?;
    let mut seen = HashSet::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    let mut early = 0;
    for r in requests.get(base..).unwrap_or_default() {
        let Some(visit) = r.header("webhook-id").and_then(|id| visit_of.get(id)) else {
            continue;
        };
        let Some(at_commit) = committed.get(visit) else {
            continue;
        };
        if !seen.insert(*visit) {
            continue; // a duplicate: only the first arrival counts
        }
        match r.at.checked_duration_since(*at_commit) {
            Some(d) => latencies.push(ms(d)),
            None => {
                early += 1;
                latencies.push(0.0);
            }
        }
    }
    if latencies.len() < n {
        bail!(
            "only {} of {n} events could be matched to their arrival",
            latencies.len()
        );
    }
    let pct = |p| stats::percentile(&latencies, p).unwrap_or(f64::NAN);
    Ok(Latency {
        rate_per_s: rate,
        seconds,
        sent: n,
        achieved_rate_per_s: n as f64 / elapsed.max(1e-9),
        matched: latencies.len(),
        p50_ms: pct(50.0),
        p90_ms: pct(90.0),
        p99_ms: pct(99.0),
        max_ms: stats::max(&latencies).unwrap_or(f64::NAN),
        mean_ms: stats::mean(&latencies).unwrap_or(f64::NAN),
        arrived_before_commit_returned: early,
        insert_p50_ms: stats::percentile(&insert_ms, 50.0).unwrap_or(f64::NAN),
        insert_p99_ms: stats::percentile(&insert_ms, 99.0).unwrap_or(f64::NAN),
        duplicates: env::duplicates(&requests),
        cpu,
    })
}

/// (b) 200 single-row inserts per second; commit → arrival. The worker
/// runs as configured, or as a child process when `process` is set.
pub async fn latency(ctx: &Ctx<'_>, process: bool) -> Result<Latency> {
    let mode = if process { Mode::Process } else { ctx.mode() };
    ctx.db.reset().await?;
    let receiver = Receiver::ok().await?;
    ctx.db
        .endpoints(&receiver, 1, ctx.plan.max_in_flight)
        .await?;
    let running = start_workers(ctx, mode, 1, "latency").await?;
    let result = async {
        warm_up(ctx, &receiver, 1).await?;
        ctx.db.checkpoint().await;
        steady(
            ctx,
            &running,
            &receiver,
            ctx.plan.latency_rate_per_s,
            ctx.plan.latency_seconds,
        )
        .await
    }
    .await;
    finish(running, result).await
}

/// Single-row insert transactions from concurrent clients.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub txns: usize,
    pub clients: usize,
    pub seconds: f64,
    pub txns_per_s: f64,
    pub wal_bytes_per_txn: f64,
    /// Writing transactions (server-wide) per insert: 1 when only the
    /// inserts write; more when the worker's claims and records join in.
    pub write_xacts_per_txn: f64,
    pub cpu: CpuUse,
}

impl Load {
    /// The parts of one interleaved measurement as one load: rates over the
    /// summed time, per-transaction figures weighted by transactions, CPU
    /// shares weighted by time.
    fn combine(parts: &[Load]) -> Load {
        let txns: usize = parts.iter().map(|l| l.txns).sum();
        let seconds: f64 = parts.iter().map(|l| l.seconds).sum::<f64>().max(1e-9);
        let per_txn = |f: fn(&Load) -> f64| {
            parts.iter().map(|l| f(l) * l.txns as f64).sum::<f64>() / txns.max(1) as f64
        };
        let by_time = |f: &dyn Fn(&Load) -> f64| {
            parts.iter().map(|l| f(l) * l.seconds).sum::<f64>() / seconds
        };
        let processes = parts.first().map_or(0, |l| l.cpu.process_pct.len());
        Load {
            txns,
            clients: parts.first().map_or(0, |l| l.clients),
            seconds,
            txns_per_s: txns as f64 / seconds,
            wal_bytes_per_txn: per_txn(|l| l.wal_bytes_per_txn),
            write_xacts_per_txn: per_txn(|l| l.write_xacts_per_txn),
            cpu: CpuUse {
                machine_busy_pct: by_time(&|l| l.cpu.machine_busy_pct),
                process_pct: (0..processes)
                    .map(|i| by_time(&|l| l.cpu.process_pct.get(i).copied().unwrap_or(0.0)))
                    .collect(),
            },
        }
    }
}

async fn insert_load(ctx: &Ctx<'_>, workers: &[Worker], txns: usize) -> Result<Load> {
    let clients = ctx.plan.trigger_clients.max(1);
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(ctx.db.client().await?);
    }
    ctx.db.checkpoint().await;
    let counters = ctx.db.counters().await?;
    let cpu = CpuMeter::start(pids(workers))?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (i, mut conn) in connections.into_iter().enumerate() {
        let share = txns / clients + usize::from(i < txns % clients);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                sqlx::query(INSERT_ONE_VISIT)
                    .bind(CLINIC_ID)
                    .bind(MEMBER_ID)
                    .execute(&mut conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(conn)
        }));
    }
    let mut done = Vec::with_capacity(clients);
    for task in tasks {
        done.push(task.await.context("an insert client panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let cpu = cpu.stop()?;
    let server = ctx.db.since(&counters).await?;
    for conn in done {
        conn.close().await.ok();
    }
    Ok(Load {
        txns,
        clients,
        seconds,
        txns_per_s: txns as f64 / seconds,
        wal_bytes_per_txn: server.wal_bytes as f64 / txns.max(1) as f64,
        write_xacts_per_txn: server.write_xacts as f64 / txns.max(1) as f64,
        cpu,
    })
}

/// (c) and (d): insert rate with the triggers and one endpoint, worker
/// stopped and worker delivering, against the rate without triggers.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerCost {
    pub baseline: Load,
    pub worker_stopped: Load,
    pub worker_running: Load,
    /// worker_stopped / baseline
    pub ratio_stopped: f64,
    /// worker_running / baseline
    pub ratio_running: f64,
    /// With the worker running: deliveries that arrived while the inserts ran.
    pub delivered_during_inserts: usize,
    /// ... and the time after a round's last insert until all were
    /// delivered (the longest round).
    pub drain_s: f64,
    pub duplicates: usize,
}

/// How many times (c) and (d) alternate their three loads. The machine's
/// speed drifts over seconds (other tenants, page cache reclaim); measured
/// one after the other, a drift lands on one side of a ratio only.
const TRIGGER_ROUNDS: usize = 4;

/// (c) and (d), interleaved: each round inserts a share of the transactions
/// without triggers, with triggers and the worker stopped, and with triggers
/// while the worker delivers them; each ratio is over the summed rounds.
pub async fn trigger_cost(ctx: &Ctx<'_>) -> Result<TriggerCost> {
    let max = ctx.plan.max_in_flight;
    let share = ctx.plan.trigger_txns.div_ceil(TRIGGER_ROUNDS);

    ctx.db.reset().await?;
    let receiver = Receiver::ok().await?;
    ctx.db.endpoints(&receiver, 1, max).await?;
    let (mut baseline, mut stopped, mut running) = (Vec::new(), Vec::new(), Vec::new());
    let (mut delivered_during_inserts, mut drain_s) = (0, 0.0_f64);
    for _ in 0..TRIGGER_ROUNDS {
        ctx.db.visit_triggers(false).await?;
        let load = insert_load(ctx, &[], share).await;
        ctx.db.visit_triggers(true).await?;
        baseline.push(load?);

        stopped.push(insert_load(ctx, &[], share).await?);
        // What the stopped round queued is not the next round's work.
        ctx.db.clear_queue().await?;

        let workers = start_workers(ctx, ctx.mode(), 1, "trigger").await?;
        let result = async {
            warm_up(ctx, &receiver, 1).await?;
            let base = receiver.count();
            let load = insert_load(ctx, &workers, share).await?;
            let during = receiver.count() - base;
            let last_insert = Instant::now();
            let timeout =
                Duration::from_secs(60) + Duration::from_millis(10 * u64::try_from(load.txns)?);
            let done = env::wait_delivered(ctx.db, &receiver, base + load.txns, timeout).await?;
            Ok((load, during, done.duration_since(last_insert).as_secs_f64()))
        }
        .await;
        let (load, during, drain) = finish(workers, result).await?;
        running.push(load);
        delivered_during_inserts += during;
        drain_s = drain_s.max(drain);
    }
    let (baseline, worker_stopped, worker_running) = (
        Load::combine(&baseline),
        Load::combine(&stopped),
        Load::combine(&running),
    );
    Ok(TriggerCost {
        ratio_stopped: worker_stopped.txns_per_s / baseline.txns_per_s,
        ratio_running: worker_running.txns_per_s / baseline.txns_per_s,
        baseline,
        worker_stopped,
        worker_running,
        delivered_during_inserts,
        drain_s,
        duplicates: env::duplicates(&receiver.requests()),
    })
}

/// (g) The worker process's memory: a burst, then a steady run.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryRun {
    /// After start and one delivery.
    pub idle_rss_mb: f64,
    pub after_burst_rss_mb: f64,
    /// VmHWM at the end: the peak over the whole run.
    pub peak_rss_mb: f64,
    /// Mean RSS over the first and the last tenth of the steady run.
    pub steady_start_rss_mb: f64,
    pub steady_end_rss_mb: f64,
    pub drift_mb: f64,
    pub burst: Flow,
    pub steady: Latency,
    /// (seconds since the worker started, RSS MiB), every 250 ms.
    pub rss_samples: Vec<(f64, f64)>,
}

pub async fn memory(ctx: &Ctx<'_>) -> Result<MemoryRun> {
    ctx.db.reset().await?;
    let receiver = Receiver::ok().await?;
    ctx.db
        .endpoints(&receiver, 1, ctx.plan.max_in_flight)
        .await?;
    let mut running = start_workers(ctx, Mode::Process, 1, "memory").await?;
    let result = async {
        let pid = running
            .first()
            .and_then(Worker::pid)
            .context("no worker process")?;
        let born = Instant::now();
        warm_up(ctx, &receiver, 1).await?;
        let idle_rss_mb = sys::memory(Some(pid))?.rss_mb;
        let stop = CancellationToken::new();
        let sampler = tokio::spawn(sample_rss(pid, born, stop.clone()));
        let sampled = async {
            let burst = burst(ctx, &mut running, &receiver, 1, ctx.plan.throughput_events).await?;
            let after_burst_rss_mb = sys::memory(Some(pid))?.rss_mb;
            let from = born.elapsed().as_secs_f64();
            let steady = steady(
                ctx,
                &running,
                &receiver,
                ctx.plan.latency_rate_per_s,
                ctx.plan.memory_steady_seconds,
            )
            .await?;
            let to = born.elapsed().as_secs_f64();
            let peak_rss_mb = sys::memory(Some(pid))?.hwm_mb;
            Ok::<_, anyhow::Error>((burst, after_burst_rss_mb, steady, from, to, peak_rss_mb))
        }
        .await;
        stop.cancel();
        let samples = sampler.await.context("the RSS sampler panicked")?;
        let (burst, after_burst_rss_mb, steady, from, to, peak_rss_mb) = sampled?;
        let tenth = (to - from) / 10.0;
        let window = |lo: f64, hi: f64| {
            let v: Vec<f64> = samples
                .iter()
                .filter(|(t, _)| *t >= lo && *t <= hi)
                .map(|(_, rss)| *rss)
                .collect();
            stats::mean(&v).unwrap_or(f64::NAN)
        };
        let steady_start_rss_mb = window(from, from + tenth);
        let steady_end_rss_mb = window(to - tenth, to);
        Ok(MemoryRun {
            idle_rss_mb,
            after_burst_rss_mb,
            peak_rss_mb,
            steady_start_rss_mb,
            steady_end_rss_mb,
            drift_mb: steady_end_rss_mb - steady_start_rss_mb,
            burst,
            steady,
            rss_samples: samples,
        })
    }
    .await;
    finish(running, result).await
}

/// VmRSS of `pid` every 250 ms until `stop`.
async fn sample_rss(pid: u32, born: Instant, stop: CancellationToken) -> Vec<(f64, f64)> {
    let mut samples = Vec::new();
    loop {
        match sys::memory(Some(pid)) {
            Ok(m) => samples.push((born.elapsed().as_secs_f64(), m.rss_mb)),
            Err(_) => return samples,
        }
        tokio::select! {
            () = stop.cancelled() => return samples,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// One sample of the soak run.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since the load started.
    pub t_s: f64,
    pub rss_mb: f64,
    pub fds: usize,
    /// The worker's TCP connections to PostgreSQL and to the receiver.
    pub db_connections: usize,
    pub http_connections: usize,
    /// Deliveries pending or delivering.
    pub unfinished: i64,
}

/// (h) Soak: single-row inserts at a steady rate for a long time, to a
/// receiver that fails one call in ten (500), with a short retry schedule so
/// that retries run alongside first attempts; the worker process's memory,
/// descriptors and connections sampled every second.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRun {
    pub seconds: f64,
    pub rate_per_s: f64,
    pub events: usize,
    pub calls: usize,
    pub failed_calls: usize,
    /// Deliveries not succeeded once the backlog drained (must be 0).
    pub not_succeeded: i64,
    pub drain_s: f64,
    /// Means over the second tenth of the load (the first warms up: the
    /// pool opens its connections as work comes) and over the last tenth.
    pub rss_start_mb: f64,
    pub rss_end_mb: f64,
    pub rss_max_mb: f64,
    pub fds_start: f64,
    pub fds_end: f64,
    pub fds_max: usize,
    pub db_connections_max: usize,
    pub http_connections_max: usize,
    pub samples: Vec<SoakSample>,
}

/// The retry schedule of the soak run.
const SOAK_RETRY_SCHEDULE: &str = "1s,2s,5s,10s";
/// Every this many calls to the soak receiver, one gets a 500.
const SOAK_FAIL_ONE_IN: usize = 10;

pub async fn soak(ctx: &Ctx<'_>) -> Result<SoakRun> {
    ctx.db.reset().await?;
    let receiver = Receiver::start(std::sync::Arc::new(|_, before| {
        if before % SOAK_FAIL_ONE_IN == SOAK_FAIL_ONE_IN - 1 {
            clinic_webhooks_test_support::Reply::status(500)
        } else {
            clinic_webhooks_test_support::Reply::status(200)
        }
    }))
    .await?;
    ctx.db
        .endpoints(&receiver, 1, ctx.plan.max_in_flight)
        .await?;
    ctx.db.wait_listeners(0, Duration::from_secs(30)).await?;
    let worker = Worker::process_with(
        ctx.binary,
        &ctx.db.url,
        "bench-soak",
        &[("CLINIC_WEBHOOKS__RETRY__SCHEDULE", SOAK_RETRY_SCHEDULE)],
    )?;
    let running = vec![worker];
    let result = async {
        ctx.db.wait_listeners(1, Duration::from_secs(60)).await?;
        let pid = running
            .first()
            .and_then(Worker::pid)
            .context("no worker process")?;
        let receiver_port = receiver
            .url("")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .context("the receiver's port")?;
        let db_port = ctx.db.port();
        let rate = ctx.plan.latency_rate_per_s;
        let seconds = ctx.plan.soak_seconds;
        let n = (rate * seconds).round().max(1.0) as usize;

        let stop = CancellationToken::new();
        let sampler = {
            let (stop, pool) = (stop.clone(), ctx.db.pool.clone());
            tokio::spawn(async move {
                let born = Instant::now();
                let mut samples = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return samples,
                        _ = tick.tick() => {}
                    }
                    let (Ok(memory), Ok(handles)) =
                        (sys::memory(Some(pid)), sys::handles(pid, &[db_port, receiver_port]))
                    else {
                        return samples;
                    };
                    let unfinished: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM webhooks.deliveries WHERE state IN ('pending', 'delivering')",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(-1);
                    samples.push(SoakSample {
                        t_s: born.elapsed().as_secs_f64(),
                        rss_mb: memory.rss_mb,
                        fds: handles.fds,
                        db_connections: handles.tcp_to[0].1,
                        http_connections: handles.tcp_to[1].1,
                        unfinished,
                    });
                }
            })
        };
        let mut client = ctx.db.client().await?;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let started = Instant::now();
        for _ in 0..n {
            tick.tick().await;
            sqlx::query(INSERT_ONE_VISIT)
                .bind(CLINIC_ID)
                .bind(MEMBER_ID)
                .execute(&mut client)
                .await?;
        }
        let load_s = started.elapsed().as_secs_f64();
        client.close().await.ok();
        let drained = Instant::now();
        let deadline = drained + Duration::from_secs(120);
        while ctx.db.unfinished().await? > 0 {
            if Instant::now() >= deadline {
                bail!("the backlog did not drain within 120 s of the last insert");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let drain_s = drained.elapsed().as_secs_f64();
        stop.cancel();
        let samples = sampler.await.context("the soak sampler panicked")?;
        let tally = ctx.db.tally().await?;
        let requests = receiver.requests();
        let failed_calls = requests.len() / SOAK_FAIL_ONE_IN;
        let tenth = load_s / 10.0;
        let window = |lo: f64, hi: f64, f: &dyn Fn(&SoakSample) -> f64| {
            let v: Vec<f64> = samples
                .iter()
                .filter(|s| s.t_s >= lo && s.t_s <= hi)
                .map(f)
                .collect();
            stats::mean(&v).unwrap_or(f64::NAN)
        };
        let rss = |s: &SoakSample| s.rss_mb;
        let fds = |s: &SoakSample| s.fds as f64;
        Ok(SoakRun {
            seconds: load_s,
            rate_per_s: rate,
            events: n,
            calls: requests.len(),
            failed_calls,
            not_succeeded: tally.deliveries - tally.succeeded,
            drain_s,
            rss_start_mb: window(tenth, 2.0 * tenth, &rss),
            rss_end_mb: window(load_s - tenth, load_s, &rss),
            rss_max_mb: samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max),
            fds_start: window(tenth, 2.0 * tenth, &fds),
            fds_end: window(load_s - tenth, load_s, &fds),
            fds_max: samples.iter().map(|s| s.fds).max().unwrap_or(0),
            db_connections_max: samples.iter().map(|s| s.db_connections).max().unwrap_or(0),
            http_connections_max: samples.iter().map(|s| s.http_connections).max().unwrap_or(0),
            samples,
        })
    }
    .await;
    finish(running, result).await
}
