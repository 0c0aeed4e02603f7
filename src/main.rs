//! The `clinic-webhooks` binary: parses the command line and calls the library.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use clinic_webhooks::admin::{self, Redelivery};
use clinic_webhooks::config::Settings;
use clinic_webhooks::embedded::{self, Cluster};
use clinic_webhooks::{db, telemetry, worker};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// The worker allocates a little at every step of every call (the request,
// the payload, the log's columns): under load glibc's malloc and free were
// 21–25 % of its CPU. With jemalloc's thread caches fan-out rose 10–20 %,
// and it hands a burst's memory back afterwards (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "clinic-webhooks",
    version,
    about = "PostgreSQL-native webhook worker"
)]
struct Cli {
    /// Configuration file (TOML). Default: ./config.toml when it exists.
    #[arg(long, global = true, env = "CLINIC_WEBHOOKS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the `clinic` and `webhooks` schemas (idempotent).
    Migrate,
    /// Deliver webhooks until SIGTERM/SIGINT.
    Run,
    /// Try it: a local receiver, a demo clinic with a v1 and a v2 endpoint,
    /// a visit's whole life delivered and logged (on the embedded database
    /// unless one is configured); a few seconds.
    Demo,
    /// Per endpoint: pending, due, in flight, failed, oldest due age,
    /// failing since, disabled reason, blocked lanes.
    Status {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery, an event, or an endpoint's failures again.
    Redeliver(RedeliverArgs),
    /// Send an endpoint an example event, marked as a test in the log.
    SendTest {
        /// The endpoint (webhooks.endpoints.id).
        #[arg(long)]
        endpoint: i64,
        /// The event type (default: the endpoint's first subscribed type).
        #[arg(long = "event")]
        event_type: Option<String>,
    },
    /// Run log maintenance now: create partitions ahead, drop those past
    /// `retention.keep`; prints the report (JSON).
    Maintenance,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["delivery", "event", "since"]))]
struct RedeliverArgs {
    /// A delivery id (webhooks.deliveries.id).
    #[arg(long)]
    delivery: Option<i64>,
    /// An event id (the webhook-id).
    #[arg(long)]
    event: Option<Uuid>,
    /// With --event: only to this endpoint (may be one added after the event).
    /// With --since: the endpoint whose failed deliveries to recover.
    #[arg(long)]
    endpoint: Option<i64>,
    /// Recover what failed since this time (a PostgreSQL timestamptz, e.g. '2026-11-27 08:00+00').
    #[arg(long, requires = "endpoint")]
    since: Option<String>,
}

impl RedeliverArgs {
    fn into_redelivery(self) -> Result<Redelivery> {
        Ok(
            match (self.delivery, self.event, self.since, self.endpoint) {
                (Some(id), None, None, None) => Redelivery::Delivery(id),
                (None, Some(id), None, endpoint) => Redelivery::Event { id, endpoint },
                (None, None, Some(since), Some(endpoint)) => {
                    Redelivery::Recover { endpoint, since }
                }
                _ => bail!(
                    "give one of --delivery ID, --event UUID [--endpoint ID], or --endpoint ID --since TIME"
                ),
            },
        )
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let config_file = cli.config.clone().or_else(|| {
        let default = PathBuf::from("config.toml");
        default.exists().then_some(default)
    });
    let mut settings = Settings::from_env(config_file.as_deref())?;
    if matches!(cli.command, Command::Demo) {
        // The demo prints its own story; only problems go to the log.
        settings.log.level = "warn".to_owned();
    }
    telemetry::init(&settings.log);

    let (pool, cluster) = connect(&settings).await?;
    let result = match cli.command {
        Command::Migrate => {
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Run => run(&settings, pool.clone()).await,
        Command::Demo => {
            let explore = cluster
                .as_ref()
                .map_or_else(|| psql_hint(&pool), Cluster::psql_hint);
            clinic_webhooks::demo::run(&settings, pool.clone(), &explore).await
        }
        Command::Status { json } => {
            let rows = admin::status(&pool).await?;
            if json {
                println!("{:#}", admin::status_json(&rows));
            } else {
                print!("{}", admin::format_status(&rows));
            }
            Ok(())
        }
        Command::SendTest {
            endpoint,
            event_type,
        } => {
            let event = admin::send_test(&pool, endpoint, event_type.as_deref()).await?;
            println!("test event {event} queued for endpoint {endpoint}");
            Ok(())
        }
        Command::Maintenance => {
            let report = clinic_webhooks::maintenance::run_once(&pool, &settings.retention).await?;
            println!("{report:#}");
            Ok(())
        }
        Command::Redeliver(args) => {
            let what = args.into_redelivery()?;
            println!("{}", admin::redeliver(&pool, &what).await?);
            Ok(())
        }
    };
    pool.close().await;
    if let Some(cluster) = cluster.filter(|c| c.started_here)
        && let Err(err) = cluster.stop()
    {
        tracing::warn!(error = %err, "could not stop the embedded PostgreSQL");
    }
    result
}

/// The psql command that opens the configured database (no password).
fn psql_hint(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "psql -h {} -p {} -U {} {}",
        options.get_host(),
        options.get_port(),
        options.get_username(),
        options.get_database().unwrap_or("postgres")
    )
}

/// The configured database, or the embedded default when none is.
async fn connect(settings: &Settings) -> Result<(PgPool, Option<Cluster>)> {
    if !settings.database.url.is_empty() {
        let pool = db::connect(&settings.database.url, settings.database.max_connections).await?;
        return Ok((pool, None));
    }
    let embedded = settings.embedded.clone();
    let cluster = tokio::task::spawn_blocking(move || embedded::ensure_running(&embedded))
        .await
        .context("starting the embedded PostgreSQL")??;
    tracing::info!(
        data_dir = %cluster.data_dir.display(),
        url = %cluster.url(),
        psql = %cluster.psql_hint(),
        "no database configured: using the embedded PostgreSQL"
    );
    let pool = db::connect(&cluster.url(), settings.database.max_connections).await?;
    // The embedded cluster is ours: always bring its schema up to date.
    db::migrate(&pool).await?;
    Ok((pool, Some(cluster)))
}

async fn run(settings: &Settings, pool: PgPool) -> Result<()> {
    if settings.database.migrate_on_start {
        db::migrate(&pool).await?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    // On a runtime thread, not the main thread that only blocks on `main`:
    // the handlers then run beside the HTTP connections' tasks and wake
    // them without waking another thread.
    let settings = settings.clone();
    tokio::spawn(async move { worker::run(&settings, pool, shutdown).await })
        .await
        .context("the worker task panicked")??;
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
