//! Settings: the documented `config.toml` (compiled in as the defaults), then
//! an optional file, then `CLINIC_WEBHOOKS__SECTION__KEY` environment
//! variables, validated into typed structs. Errors name the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Environment, File, FileFormat};
use serde::Deserialize;

/// The documented defaults; the same file operators read.
const DEFAULTS: &str = include_str!("../config.toml");
const ENV_PREFIX: &str = "CLINIC_WEBHOOKS";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {source}")]
    File {
        path: PathBuf,
        source: config::ConfigError,
    },
    #[error("configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Key { key: &'static str, reason: String },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub embedded: EmbeddedSettings,
    pub worker: WorkerSettings,
    pub http: HttpSettings,
    pub retry: RetrySettings,
    pub health: HealthSettings,
    pub retention: RetentionSettings,
    pub ops: OpsSettings,
    pub log: LogSettings,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
}

// The URL may carry a password: never print it.
impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &if self.url.is_empty() { "" } else { "<set>" })
            .field("max_connections", &self.max_connections)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSettings {
    pub data_dir: PathBuf,
    pub port: u16,
    pub bin_dir: String,
    pub os_user: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub name: String,
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub record_batch: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_response_body: usize,
    pub allow_private_targets: bool,
    /// Exact IP-literal targets (address and port) allowed although they
    /// are not public, with `allow_private_targets` off: the demo's own
    /// receiver, say. Nothing else on those hosts is reachable.
    pub allowed_targets: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(deserialize_with = "durations")]
    pub schedule: Vec<Duration>,
    pub jitter: f64,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    #[serde(with = "humantime_serde")]
    pub keep: Duration,
    #[serde(with = "humantime_serde")]
    pub partition: Duration,
    pub ahead: u32,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsSettings {
    /// Where the operations listener (/healthz, /readyz, /metrics) listens:
    /// empty for off, a port for 127.0.0.1:port, or address:port.
    pub listen: String,
}

impl OpsSettings {
    /// The address to listen on, if the listener is on.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        if let Ok(port) = listen.parse::<u16>() {
            return Ok(Some(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        listen
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|e| ConfigError::Key {
                key: "ops.listen",
                reason: format!(
                    "{listen:?} is not a port or an address:port such as 127.0.0.1:9187 ({e})"
                ),
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// A list of durations (`retry.schedule`); a bad item is named by its
/// position and text.
fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .enumerate()
        .map(|(i, s)| {
            humantime::parse_duration(s.trim()).map_err(|e| {
                serde::de::Error::custom(format!(
                    "item {} of the list, {s:?}, is not a duration such as 30s, 5m or 1h ({e})",
                    i + 1
                ))
            })
        })
        .collect()
}

impl Settings {
    /// Defaults, then `file` (required when given), then the environment.
    /// `env` is the process environment as pairs, passed in so that tests
    /// never mutate the real one.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut builder =
            config::Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            // Surface a missing or malformed file with its path.
            config::Config::builder()
                .add_source(File::from(path).format(FileFormat::Toml))
                .build()
                .map_err(|source| ConfigError::File {
                    path: path.to_path_buf(),
                    source,
                })?;
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        let mut database_url = None;
        let mut vars = config::Map::new();
        for (key, value) in env {
            if key == "DATABASE_URL" {
                database_url = Some(value);
            } else if key.starts_with(ENV_PREFIX) {
                vars.insert(key, value);
            }
        }
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("retry.schedule")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        if settings.database.url.is_empty() {
            settings.database.url = database_url.unwrap_or_default();
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Loads from the real process environment.
    pub fn from_env(file: Option<&Path>) -> Result<Self> {
        Self::load(file, std::env::vars())
    }

    fn validate(&self) -> Result<()> {
        fn bad(key: &'static str, reason: impl Into<String>) -> Result<()> {
            Err(ConfigError::Key {
                key,
                reason: reason.into(),
            })
        }
        // Checked here because the driver would take any scheme for its
        // own. The URL itself is not repeated: it may carry a password.
        let url = &self.database.url;
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !url.is_empty() && !postgres {
            let scheme = url.split_once("://").map_or("none", |(scheme, _)| scheme);
            return bad(
                "database.url",
                format!(
                    "must be a postgres:// or postgresql:// URL (or empty for the embedded database); the scheme is {scheme:?}"
                ),
            );
        }
        if self.database.max_connections < 2 {
            return bad(
                "database.max_connections",
                "must be at least 2 (LISTEN holds one; result writes need another)",
            );
        }
        if self.worker.concurrency == 0 {
            return bad("worker.concurrency", "must be at least 1");
        }
        if self.worker.record_batch == 0 {
            return bad("worker.record_batch", "must be at least 1");
        }
        if self.worker.poll_interval.is_zero() {
            return bad("worker.poll_interval", "must be greater than 0");
        }
        if self.http.timeout.is_zero() {
            return bad("http.timeout", "must be greater than 0");
        }
        if self.http.connect_timeout.is_zero() {
            return bad("http.connect_timeout", "must be greater than 0");
        }
        if self.worker.lease < self.http.timeout + Duration::from_secs(5) {
            return bad(
                "worker.lease",
                format!(
                    "must exceed http.timeout ({}) by at least 5s, so that a slow request never outlives its lease",
                    humantime::format_duration(self.http.timeout)
                ),
            );
        }
        if !(0.0..1.0).contains(&self.retry.jitter) {
            return bad("retry.jitter", "must be a fraction in [0, 1)");
        }
        if self.retry.schedule.len() > 100 {
            return bad("retry.schedule", "at most 100 retries");
        }
        if self.health.disable_after.is_zero() {
            return bad("health.disable_after", "must be greater than 0");
        }
        let retention = &self.retention;
        if retention.partition < Duration::from_secs(3600) {
            return bad("retention.partition", "must be at least 1h");
        }
        if retention.keep < retention.partition {
            return bad("retention.keep", "must be at least one retention.partition");
        }
        if !(1..=366).contains(&retention.ahead) {
            return bad("retention.ahead", "must be 1 to 366 partitions");
        }
        if retention.interval.is_zero() || retention.interval > retention.partition {
            return bad(
                "retention.interval",
                "must be greater than 0 and at most retention.partition, so that a partition is always made before it is needed",
            );
        }
        self.ops.listen_addr()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad("log.level", e.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_documented_file() {
        let s = Settings::load(None, env(&[])).expect("defaults load");
        assert_eq!(s.http.timeout, Duration::from_secs(15));
        assert_eq!(s.retry.schedule.len(), 7);
        assert_eq!(s.retry.schedule[6], Duration::from_secs(36_000));
        assert!(!s.http.allow_private_targets);
        assert_eq!(s.log.format, LogFormat::Human);
    }

    #[test]
    fn environment_overrides_nested_keys_and_lists() {
        let s = Settings::load(
            None,
            env(&[
                ("CLINIC_WEBHOOKS__HTTP__TIMEOUT", "3s"),
                ("CLINIC_WEBHOOKS__HTTP__ALLOW_PRIVATE_TARGETS", "true"),
                ("CLINIC_WEBHOOKS__WORKER__CONCURRENCY", "7"),
                ("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "1s,2m"),
                ("CLINIC_WEBHOOKS__LOG__FORMAT", "json"),
            ]),
        )
        .expect("overrides load");
        assert_eq!(s.http.timeout, Duration::from_secs(3));
        assert!(s.http.allow_private_targets);
        assert_eq!(s.worker.concurrency, 7);
        assert_eq!(
            s.retry.schedule,
            vec![Duration::from_secs(1), Duration::from_secs(120)]
        );
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = Settings::load(None, env(&[("CLINIC_WEBHOOKS__HTTP__TIMEOUT", "soon")]))
            .expect_err("bad duration");
        assert!(err.to_string().contains("http.timeout"), "{err}");

        let err = Settings::load(None, env(&[("CLINIC_WEBHOOKS__WORKER__LEASE", "10s")]))
            .expect_err("lease shorter than timeout");
        assert!(err.to_string().contains("worker.lease"), "{err}");
    }

    #[test]
    fn a_bad_item_of_the_retry_schedule_is_named_by_position() {
        let err = Settings::load(
            None,
            env(&[("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "5s,banana")]),
        )
        .expect_err("bad schedule");
        let message = err.to_string();
        for part in ["retry.schedule", "item 2", "\"banana\"", "duration"] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }

    #[test]
    fn a_database_url_of_another_kind_is_refused() {
        let err = Settings::load(None, env(&[("DATABASE_URL", "mysql://u:secret@db/x")]))
            .expect_err("mysql");
        let message = err.to_string();
        assert!(
            message.contains("database.url") && message.contains("\"mysql\""),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn an_unknown_key_in_the_environment_is_refused_by_name() {
        let err = Settings::load(None, env(&[("CLINIC_WEBHOOKS__HTTP__TIMEUOT", "5s")]))
            .expect_err("unknown key");
        assert!(err.to_string().contains("timeuot"), "{err}");
    }

    #[test]
    fn a_missing_or_malformed_file_is_reported_with_its_path() {
        let dir = std::env::temp_dir().join(format!("cw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("nope.toml");
        let err = Settings::load(Some(&missing), env(&[])).expect_err("missing file");
        assert!(err.to_string().contains("nope.toml"), "{err}");

        let broken = dir.join("broken.toml");
        std::fs::write(&broken, "[http]\ntimeout = \n").expect("write");
        let err = Settings::load(Some(&broken), env(&[])).expect_err("broken file");
        assert!(err.to_string().contains("broken.toml"), "{err}");

        let unknown = dir.join("unknown.toml");
        std::fs::write(&unknown, "[http]\ntimeuot = \"5s\"\n").expect("write");
        let err = Settings::load(Some(&unknown), env(&[])).expect_err("unknown key");
        assert!(err.to_string().contains("timeuot"), "{err}");
    }
}
