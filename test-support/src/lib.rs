//! What the clinic-webhooks integration tests (`tests/it`) and the benchmark
//! (`bench/`) share: a real HTTP receiver on 127.0.0.1, the worker's settings
//! and its binary as they run them, the clock their database names carry, and
//! the cleanup of databases that a killed run left behind.
//!
//! For integration tests and the bench only: the library's own unit tests
//! must not use it (it depends on the library).

pub mod psql;
mod receiver;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clinic_webhooks::config::{ConfigError, Settings};
use sqlx::{AssertSqlSafe, Executor, PgConnection};

pub use receiver::{Received, Receiver, Reply, Script};

/// The override every worker here needs: the receivers are on loopback,
/// which the worker refuses by default.
pub const ALLOW_LOOPBACK: (&str, &str) = ("CLINIC_WEBHOOKS__HTTP__ALLOW_PRIVATE_TARGETS", "true");

/// Seconds since the Unix epoch (0 if the clock is before it). The tests and
/// the bench put it in their database names, so that a later run can tell
/// which ones are stale.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Worker settings as `clinic-webhooks run` loads them from its environment:
/// the defaults of `config.toml`, then [`ALLOW_LOOPBACK`], then `env` in
/// order (a later pair wins, so `env` may turn loopback off again). Only
/// `CLINIC_WEBHOOKS__*` pairs and `DATABASE_URL` count; the process
/// environment is not read.
pub fn worker_settings<K, V>(
    env: impl IntoIterator<Item = (K, V)>,
) -> Result<Settings, Box<ConfigError>>
where
    K: Into<String>,
    V: Into<String>,
{
    let (key, value) = ALLOW_LOOPBACK;
    let pairs = std::iter::once((key.to_owned(), value.to_owned()))
        .chain(env.into_iter().map(|(k, v)| (k.into(), v.into())));
    Settings::load(None, pairs).map_err(Box::new)
}

/// `<binary> run` against `database_url`, ready to spawn with `std::process`
/// or, through `tokio::process::Command::from`, with tokio:
/// * the database both as `DATABASE_URL` and as `database.url`, so that one
///   of the caller's environment cannot win over it;
/// * loopback targets allowed ([`ALLOW_LOOPBACK`]);
/// * no configuration file: `CLINIC_WEBHOOKS_CONFIG` removed, and the temp
///   directory as the working directory (no `./config.toml`);
/// * `RUST_LOG` removed, so that `log.level` decides; stdin closed;
/// * then `env`, in order.
///
/// Every other `CLINIC_WEBHOOKS__*` variable of the caller's environment is
/// inherited. Stdout and stderr are the caller's to choose.
pub fn worker_command(binary: &Path, database_url: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("run")
        .env_remove("CLINIC_WEBHOOKS_CONFIG")
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", database_url)
        .env("CLINIC_WEBHOOKS__DATABASE__URL", database_url)
        .env(ALLOW_LOOPBACK.0, ALLOW_LOOPBACK.1)
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    command
}

/// Drops the databases named `<prefix><unix time>_…` (as made with
/// [`unix_now`]) that were created more than `max_age` ago: a run that was
/// killed left them behind. Returns the names dropped.
pub async fn drop_stale_databases(
    admin: &mut PgConnection,
    prefix: &str,
    max_age: Duration,
) -> sqlx::Result<Vec<String>> {
    let before = unix_now().saturating_sub(max_age.as_secs());
    drop_databases(admin, prefix, |name| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('_').next())
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|created| created < before)
    })
    .await
}

/// Drops the databases whose name starts with `prefix` and passes `stale`,
/// ending any session still in them. Best effort: a database that another
/// run drops meanwhile, or that cannot be dropped, is skipped. Returns the
/// names dropped.
pub async fn drop_databases(
    admin: &mut PgConnection,
    prefix: &str,
    stale: impl Fn(&str) -> bool,
) -> sqlx::Result<Vec<String>> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(prefix)
            .fetch_all(&mut *admin)
            .await?;
    let mut dropped = Vec::new();
    for name in names.into_iter().filter(|n| stale(n)) {
        let sql = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "\"\"")
        );
        if admin.execute(AssertSqlSafe(sql)).await.is_ok() {
            dropped.push(name);
        }
    }
    Ok(dropped)
}
