//! The `clinic-webhooks-bench` binary: parses the command line and calls the
//! benchmark library. `bench/run` builds it and the worker and runs it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use clap::Parser;
use clinic_webhooks_bench::{self as bench, BenchOptions};

// The same allocator as the worker binary: the in-process scenarios run the
// worker in this process, and should measure what production runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Measure throughput, latency, trigger cost, fan-out, scale-out and memory
/// of the worker on a private database; see BENCHMARKS.md.
#[derive(Parser)]
#[command(name = "clinic-webhooks-bench", version)]
struct BenchArgs {
    /// The PostgreSQL server to create the private database `cw_bench_*` on.
    #[arg(long, default_value = bench::DEFAULT_DATABASE_URL)]
    database_url: String,
    /// Repetitions of each scenario (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeat: Option<u32>,
    /// Smaller workloads, for a quick look.
    #[arg(long)]
    quick: bool,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON object to this file.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// Only these scenarios: throughput, latency, trigger, fanout, scaleout,
    /// memory, soak, logscale (default: all but soak and logscale).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    only: Vec<bench::Scenario>,
    /// Seconds of the steady 200/s latency run (default 40).
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Seconds of the steady part of the memory run (default 60).
    #[arg(long)]
    steady_secs: Option<f64>,
    /// Seconds of the soak run's load (default 600).
    #[arg(long)]
    soak_secs: Option<f64>,
    /// Calls the log-at-scale scenario fills (default 10,000,000).
    #[arg(long)]
    log_calls: Option<i64>,
    /// Days they are spread over, one partition each (default 30).
    #[arg(long)]
    log_days: Option<i64>,
    /// Run the worker as a `clinic-webhooks run` child process in every scenario.
    #[arg(long)]
    process_workers: bool,
    /// Keep the database afterwards, to look inside.
    #[arg(long)]
    keep_database: bool,
    /// `max_in_flight` of every bench endpoint (its bulkhead).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(i32).range(1..=1000))]
    max_in_flight: i32,
    /// While the bench runs, GET this URL every second (a worker's
    /// /metrics, with CLINIC_WEBHOOKS__OPS__LISTEN set for the workers), as
    /// Prometheus would: the cost of the operations listener, scraped.
    #[arg(long, value_name = "URL")]
    scrape_metrics: Option<String>,
    /// The `clinic-webhooks` binary to run as the worker process, e.g.
    /// target/release/clinic-webhooks or another build to compare with.
    #[arg(long, value_name = "PATH", env = "CLINIC_WEBHOOKS_BIN")]
    worker_binary: Option<PathBuf>,
}

/// Scrapes answered and not, counted by [`scrape`].
#[derive(Default)]
struct Scrapes {
    answered: AtomicU64,
    failed: AtomicU64,
}

/// GETs `url` every second until aborted, counting the answers.
async fn scrape(url: String, counts: Arc<Scrapes>) {
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let scraped = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
            // Between scenarios no worker listens.
            _ => false,
        };
        let counter = if scraped {
            &counts.answered
        } else {
            &counts.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = BenchArgs::parse();
    let Some(worker_binary) = args.worker_binary else {
        bail!(
            "no worker binary: pass --worker-binary PATH or set CLINIC_WEBHOOKS_BIN to a built \
             `clinic-webhooks` (bench/run builds both and passes target/release/clinic-webhooks)"
        );
    };
    if !worker_binary.is_file() {
        bail!(
            "the worker binary {} does not exist (build it with `cargo build --release -p clinic-webhooks`, or use bench/run)",
            worker_binary.display()
        );
    }
    // The worker runs in another directory: a relative path would not resolve there.
    let worker_binary = worker_binary
        .canonicalize()
        .with_context(|| format!("resolving {}", worker_binary.display()))?;
    bench::init_logging();
    let scrapes = Arc::new(Scrapes::default());
    let scraper = args
        .scrape_metrics
        .clone()
        .map(|url| tokio::spawn(scrape(url, scrapes.clone())));
    let report = bench::run(BenchOptions {
        database_url: args.database_url,
        repeat: args
            .repeat
            .map_or(if args.quick { 1 } else { 3 }, |n| n as usize),
        quick: args.quick,
        only: args.only,
        latency_seconds: args.latency_secs,
        steady_seconds: args.steady_secs,
        soak_seconds: args.soak_secs,
        log_calls: args.log_calls,
        log_days: args.log_days,
        process_workers: args.process_workers,
        keep_database: args.keep_database,
        max_in_flight: args.max_in_flight,
        worker_binary,
        progress: true,
    })
    .await?;
    if let Some(scraper) = scraper {
        scraper.abort();
        eprintln!(
            "[bench] scraped {}: {} answered, {} not (no worker listening)",
            args.scrape_metrics.as_deref().unwrap_or_default(),
            scrapes.answered.load(Ordering::Relaxed),
            scrapes.failed.load(Ordering::Relaxed)
        );
    }
    let json = serde_json::to_string_pretty(&report.to_json())?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.table());
    }
    if !report.errors.is_empty() {
        bail!("{} bench run(s) failed (see above)", report.errors.len());
    }
    Ok(())
}
