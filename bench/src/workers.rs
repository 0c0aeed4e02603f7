//! The real worker, run by the bench: in this process (`worker::run`), or as
//! a child process of the real binary (`clinic-webhooks run`).

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use clinic_webhooks::config::Settings;
use clinic_webhooks::{db, worker};
use clinic_webhooks_test_support::{ALLOW_LOOPBACK, worker_command, worker_settings};

const PREFIX: &str = "CLINIC_WEBHOOKS__";

/// Settings as production loads them (the documented defaults, then any
/// CLINIC_WEBHOOKS__* variable of this environment, so a setting can be
/// benchmarked), plus what the bench needs: a receiver on 127.0.0.1.
pub fn settings(name: &str) -> Result<Settings> {
    let inherited = std::env::vars().filter(|(k, _)| k.starts_with(PREFIX));
    // Loopback after the inherited variables: the receiver must stay reachable.
    let ours = [ALLOW_LOOPBACK, ("CLINIC_WEBHOOKS__WORKER__NAME", name)]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
    worker_settings(inherited.chain(ours)).context("worker settings for the bench")
}

/// A running worker.
pub enum Worker {
    InProcess {
        stop: CancellationToken,
        task: JoinHandle<Result<(), worker::WorkerError>>,
        pool: PgPool,
    },
    Process {
        child: ChildWorker,
        pid: u32,
    },
}

/// A `clinic-webhooks run` child process, killed if dropped while running
/// (a failed scenario must not leave a worker behind). `std::process`, not
/// tokio's: then the workspace builds tokio with one feature set, the
/// product's, and the bench waits by polling, which it does not measure.
pub struct ChildWorker(Child);

impl Drop for ChildWorker {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl ChildWorker {
    /// Waits up to `timeout` for the process to exit.
    async fn wait(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Worker {
    /// `worker::run` on this runtime, with a pool of its own.
    pub async fn in_process(url: &str, name: &str) -> Result<Self> {
        let settings = settings(name)?;
        let pool = db::connect(url, settings.database.max_connections).await?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let worker_pool = pool.clone();
        let task = tokio::spawn(async move { worker::run(&settings, worker_pool, token).await });
        Ok(Self::InProcess { stop, task, pool })
    }

    /// `<binary> run` against the bench database. Its log (warnings only)
    /// goes to our stderr, so that stdout stays one table or JSON object.
    pub fn process(binary: &Path, url: &str, name: &str) -> Result<Self> {
        Self::process_with(binary, url, name, &[])
    }

    /// The same, with settings of the scenario's own (`CLINIC_WEBHOOKS__*`
    /// pairs, which win over the inherited ones).
    pub fn process_with(
        binary: &Path,
        url: &str,
        name: &str,
        settings: &[(&str, &str)],
    ) -> Result<Self> {
        let log = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stderr for the worker's log")?;
        let mut command = worker_command(
            binary,
            url,
            &[
                ("CLINIC_WEBHOOKS__DATABASE__MIGRATE_ON_START", "false"),
                ("CLINIC_WEBHOOKS__WORKER__NAME", name),
                ("CLINIC_WEBHOOKS__LOG__LEVEL", "warn"),
            ],
        );
        command.envs(settings.iter().copied());
        let child = command
            .stdout(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {} run", binary.display()))?;
        let pid = child.id();
        Ok(Self::Process {
            child: ChildWorker(child),
            pid,
        })
    }

    /// The process to read /proc of (`None`: this one).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::InProcess { .. } => None,
            Self::Process { pid, .. } => Some(*pid),
        }
    }

    /// Fails if the worker has already stopped on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        match self {
            Self::InProcess { task, .. } => {
                if task.is_finished() {
                    bail!("the in-process worker stopped unexpectedly");
                }
            }
            Self::Process { child, pid } => {
                if let Some(status) = child.0.try_wait()? {
                    bail!("worker process {pid} exited unexpectedly: {status}");
                }
            }
        }
        Ok(())
    }

    /// Graceful stop (cancellation, or SIGTERM), as in production.
    pub async fn stop(self) -> Result<()> {
        const GRACE: Duration = Duration::from_secs(45);
        match self {
            Self::InProcess { stop, task, pool } => {
                stop.cancel();
                let joined = tokio::time::timeout(GRACE, task)
                    .await
                    .context("the in-process worker did not stop")?;
                pool.close().await;
                joined
                    .context("the in-process worker panicked")?
                    .context("the in-process worker failed")?;
            }
            Self::Process { mut child, pid } => {
                let sent = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .context("running kill")?;
                if !sent.success() {
                    bail!("kill -TERM {pid} failed");
                }
                match child.wait(GRACE).await? {
                    Some(status) if status.success() => {}
                    Some(status) => bail!("worker process {pid} exited with {status}"),
                    // Dropping the child kills it.
                    None => bail!("worker process {pid} did not stop within {GRACE:?}; killed"),
                }
            }
        }
        Ok(())
    }
}

/// Stops every worker, reporting the first failure.
pub async fn stop_all(workers: Vec<Worker>) -> Result<()> {
    let mut first = Ok(());
    for w in workers {
        if let Err(err) = w.stop().await
            && first.is_ok()
        {
            first = Err(err);
        }
    }
    first
}
