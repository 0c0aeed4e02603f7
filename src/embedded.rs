//! The embedded default: when no database is configured, a private
//! PostgreSQL cluster in a local directory, made and started from the
//! installed PostgreSQL binaries, so that a new user's first command works.
//!
//! PostgreSQL refuses to run as root; when we are root, the cluster is owned
//! and run by `embedded.os_user` (default `postgres`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::EmbeddedSettings;

const DATABASE: &str = "clinic_webhooks";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL binaries found (looked for initdb via embedded.bin_dir, pg_config, /usr/lib/postgresql/*/bin and PATH); install PostgreSQL or set database.url / DATABASE_URL"
    )]
    NoBinaries,
    #[error(
        "running as root, and OS user {0:?} (embedded.os_user) does not exist to own the cluster"
    )]
    NoOsUser(String),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = EmbeddedError> = std::result::Result<T, E>;

/// How to stop a cluster (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Sessions are ended, a checkpoint is written.
    Fast,
    /// A crash: every process is killed at once; the next start recovers
    /// from the WAL.
    Immediate,
}

/// A running private cluster.
#[derive(Debug)]
pub struct Cluster {
    pub data_dir: PathBuf,
    pub port: u16,
    /// True when this process started it (and so should stop it).
    pub started_here: bool,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
}

impl Cluster {
    /// The URL of our database in it.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// What to tell a person who wants to look inside.
    pub fn psql_hint(&self) -> String {
        format!("psql -h 127.0.0.1 -p {} -U postgres {DATABASE}", self.port)
    }

    /// Stops the cluster (fast shutdown: open sessions are ended).
    pub fn stop(&self) -> Result<()> {
        self.stop_with(StopMode::Fast)
    }

    pub fn stop_with(&self, mode: StopMode) -> Result<()> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        self.pg_ctl(
            &["stop", "-m", mode, "-w"],
            "stopping the embedded PostgreSQL",
        )
    }

    fn pg_ctl(&self, args: &[&str], what: &str) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args(args);
        run(cmd, what)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
            // The OS user's HOME may not be ours to read.
            cmd.current_dir("/");
        }
        cmd
    }
}

/// Starts (or reuses) the private cluster, creating it on first use, and
/// makes sure our database exists in it.
pub fn ensure_running(settings: &EmbeddedSettings) -> Result<Cluster> {
    let bin_dir = find_bin_dir(&settings.bin_dir).ok_or(EmbeddedError::NoBinaries)?;
    let data_dir = absolute(&settings.data_dir)?;
    let run_as = if is_root() {
        Some(
            lookup_user(&settings.os_user)
                .ok_or_else(|| EmbeddedError::NoOsUser(settings.os_user.clone()))?,
        )
    } else {
        None
    };
    let mut cluster = Cluster {
        data_dir,
        port: settings.port,
        started_here: false,
        bin_dir,
        run_as,
    };
    if !cluster.data_dir.join("PG_VERSION").exists() {
        init(&cluster)?;
    }
    let status = cluster
        .command("pg_ctl")
        .arg("-D")
        .arg(&cluster.data_dir)
        .arg("status")
        .output()
        .map_err(|source| io(&cluster.bin_dir, source))?;
    if !status.status.success() {
        let log = cluster.data_dir.join("postgres.log");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            cluster.port,
            cluster.data_dir.display()
        );
        let mut cmd = cluster.command("pg_ctl");
        cmd.arg("-D")
            .arg(&cluster.data_dir)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(options)
            .args(["-w", "-t", "60", "start"]);
        run(
            cmd,
            &format!("starting the embedded PostgreSQL (log: {})", log.display()),
        )?;
        cluster.started_here = true;
    }
    create_database(&cluster)?;
    Ok(cluster)
}

fn init(cluster: &Cluster) -> Result<()> {
    std::fs::create_dir_all(&cluster.data_dir).map_err(|source| io(&cluster.data_dir, source))?;
    if let Some((uid, gid)) = cluster.run_as {
        std::os::unix::fs::chown(&cluster.data_dir, Some(uid), Some(gid))
            .map_err(|source| io(&cluster.data_dir, source))?;
    }
    let mut cmd = cluster.command("initdb");
    cmd.arg("-D").arg(&cluster.data_dir).args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C",
    ]);
    run(cmd, "initdb for the embedded PostgreSQL")
}

fn create_database(cluster: &Cluster) -> Result<()> {
    let psql = |sql: &str| {
        let mut cmd = cluster.command("psql");
        cmd.args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-p")
        .arg(cluster.port.to_string())
        .arg("-c")
        .arg(sql);
        cmd
    };
    let out = psql(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
    ))
    .output()
    .map_err(|source| io(&cluster.bin_dir, source))?;
    if String::from_utf8_lossy(&out.stdout).trim() == "1" {
        return Ok(());
    }
    run(
        psql(&format!("CREATE DATABASE {DATABASE}")),
        "creating the embedded database",
    )
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| EmbeddedError::Command {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    Err(EmbeddedError::Command {
        what: what.to_owned(),
        detail: format!("{} ({})", detail, out.status),
    })
}

fn io(path: &Path, source: std::io::Error) -> EmbeddedError {
    EmbeddedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|source| io(path, source))?;
    Ok(cwd.join(path))
}

fn find_bin_dir(configured: &str) -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if !configured.is_empty() {
        return Some(PathBuf::from(configured)).filter(|d| has_initdb(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_initdb(dir)))
}

fn is_root() -> bool {
    // The effective uid, without unsafe code: /proc/self is owned by it.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// uid and gid of an OS user, from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}
