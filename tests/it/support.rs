//! Test support: a fresh database per test (cloned from a migrated template),
//! the worker in-process or as the real binary, and domain fixtures.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clinic_webhooks::config::Settings;
use clinic_webhooks::db;
use clinic_webhooks_test_support::{
    drop_databases, drop_stale_databases, unix_now, worker_command, worker_settings,
};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A port on 127.0.0.1 that nothing listens on just now (bound, read,
/// closed): for a server the test starts there, or for a refused connection.
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The server the tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The admin URL with its database swapped (TEST_DATABASE_URL names one).
fn url_for(database: &str) -> String {
    let admin = admin_url();
    let server = admin.rsplit_once('/').map_or(admin.as_str(), |(s, _)| s);
    format!("{server}/{database}")
}

/// Template name changes whenever a migration changes.
fn template_name() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("migrations dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    // FNV-1a over names and contents.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let bytes = std::fs::read(&f).expect("migration");
        for b in f
            .file_name()
            .expect("name")
            .as_encoded_bytes()
            .iter()
            .chain(&bytes)
        {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("cw_template_{hash:016x}")
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let mut admin = PgConnection::connect(&admin_url())
                .await
                .expect("connect to the test PostgreSQL (TEST_DATABASE_URL)");
            // Several test processes may race to build it.
            admin
                .execute("SELECT pg_advisory_lock(7262811)")
                .await
                .expect("lock");
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .expect("query");
            drop_stale_test_databases(&mut admin, &name).await;
            if !exists {
                let building = format!("{name}_building");
                admin
                    .execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {building}")))
                    .await
                    .expect("drop");
                admin
                    .execute(AssertSqlSafe(format!("CREATE DATABASE {building}")))
                    .await
                    .expect("create template");
                let pool = db::connect(&url_for(&building), 2).await.expect("connect");
                db::migrate(&pool).await.expect("migrate template");
                pool.close().await;
                admin
                    .execute(AssertSqlSafe(format!(
                        "ALTER DATABASE {building} RENAME TO {name}"
                    )))
                    .await
                    .expect("rename");
            }
            admin
                .execute("SELECT pg_advisory_unlock(7262811)")
                .await
                .expect("unlock");
            name
        })
        .await
}

/// Other templates, and test databases left by runs an hour or more ago.
async fn drop_stale_test_databases(admin: &mut PgConnection, current_template: &str) {
    let _ = drop_databases(admin, "cw_template_", |name| {
        name != current_template && !name.starts_with(current_template)
    })
    .await;
    let _ = drop_stale_databases(admin, "cw_test_", Duration::from_secs(3600)).await;
}

/// A fresh, migrated database for one test; dropped with the test.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// A fresh database with every migration applied.
    pub async fn new() -> Self {
        let template = template().await;
        Self::create(&format!("TEMPLATE {template}")).await
    }

    /// A fresh database with nothing in it (no migration applied).
    pub async fn empty() -> Self {
        Self::create("").await
    }

    async fn create(options: &str) -> Self {
        let name = format!("cw_test_{}_{:08x}", unix_now(), fastrand::u32(..));
        let mut admin = PgConnection::connect(&admin_url()).await.expect("connect");
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name} {options}")))
            .await
            .expect("create test database");
        let url = url_for(&name);
        let pool = db::connect(&url, 8).await.expect("connect test db");
        Self { pool, url, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort, off the runtime: the test's runtime may be shutting down.
        std::thread::spawn(move || {
            let _ = Command::new("psql")
                .args(["-X", "-q", "-d", &admin_url(), "-c"])
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        });
    }
}

/// Settings for tests: loopback allowed, short timeouts and retries.
pub fn settings(extra: &[(&str, &str)]) -> Settings {
    let defaults = [
        ("CLINIC_WEBHOOKS__HTTP__TIMEOUT", "2s"),
        ("CLINIC_WEBHOOKS__HTTP__CONNECT_TIMEOUT", "1s"),
        ("CLINIC_WEBHOOKS__WORKER__LEASE", "8s"),
        ("CLINIC_WEBHOOKS__WORKER__POLL_INTERVAL", "100ms"),
        ("CLINIC_WEBHOOKS__WORKER__SHUTDOWN_TIMEOUT", "5s"),
        ("CLINIC_WEBHOOKS__RETRY__SCHEDULE", "200ms,200ms"),
        ("CLINIC_WEBHOOKS__RETRY__JITTER", "0"),
        ("CLINIC_WEBHOOKS__LOG__LEVEL", "warn"),
    ];
    worker_settings(defaults.iter().chain(extra).copied()).expect("test settings")
}

/// The worker running in this process until dropped (or `stop`ped).
pub struct InProcessWorker {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl InProcessWorker {
    pub fn start(db: &TestDb, settings: Settings) -> Self {
        let stop = CancellationToken::new();
        let pool = db.pool.clone();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            clinic_webhooks::worker::run(&settings, pool, token)
                .await
                .expect("worker ran");
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("worker task");
        }
    }
}

impl Drop for InProcessWorker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The real binary, `clinic-webhooks run`, against a test database.
pub fn spawn_binary(db: &TestDb, extra_env: &[(&str, &str)]) -> Child {
    spawn_binary_at(&db.url, extra_env)
}

/// The same against a database URL (another role's, say).
pub fn spawn_binary_at(url: &str, extra_env: &[(&str, &str)]) -> Child {
    let defaults = [
        ("CLINIC_WEBHOOKS__WORKER__POLL_INTERVAL", "100ms"),
        ("CLINIC_WEBHOOKS__LOG__LEVEL", "info"),
    ];
    let env: Vec<(&str, &str)> = defaults.iter().chain(extra_env).copied().collect();
    worker_command(Path::new(env!("CARGO_BIN_EXE_clinic-webhooks")), url, &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clinic-webhooks")
}

/// The one value `sql` selects.
pub async fn scalar<T>(pool: &PgPool, sql: &'static str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// Runs a `clinic-webhooks` command (not `run`) against the database at
/// `url`, with no configuration file, and waits for it.
pub fn cli(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clinic-webhooks"))
        .args(args)
        .env_remove("CLINIC_WEBHOOKS_CONFIG")
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", url)
        .env("CLINIC_WEBHOOKS__DATABASE__URL", url)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("clinic-webhooks")
}

/// Sends a signal with the system `kill` (no unsafe code in the tests either).
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for the child to exit, up to `timeout`.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `query` (a scalar) until it equals `want`, or panics after `timeout`.
pub async fn wait_for_scalar(pool: &PgPool, query: &'static str, want: i64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got: i64 = sqlx::query_scalar(query)
            .fetch_one(pool)
            .await
            .expect("poll query");
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {timeout:?} for `{query}` = {want}, last saw {got}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- domain fixtures

/// Clinic `code` with id `id`.
pub async fn clinic(pool: &PgPool, id: i64, code: &str) {
    sqlx::query("INSERT INTO clinic.clinics (id, code, name) VALUES ($1, $2, $2)")
        .bind(id)
        .bind(code)
        .execute(pool)
        .await
        .expect("insert clinic");
}

/// Clinic 1 (`c1`) with patient 10, the usual starting point.
pub async fn clinic_with_patient(pool: &PgPool) {
    clinic(pool, 1, "c1").await;
    user(pool, 10, 1, "patient", "signup").await;
}

pub async fn user(pool: &PgPool, id: i64, clinic_id: i64, role: &str, source: &str) {
    sqlx::query("INSERT INTO clinic.users (id, clinic_id, role, source) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(clinic_id)
        .bind(role)
        .bind(source)
        .execute(pool)
        .await
        .expect("insert user");
}

/// Adds an endpoint and returns its id.
pub async fn endpoint(pool: &PgPool, clinic_id: i64, url: &str, version: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO webhooks.endpoints (clinic_id, url, version) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(clinic_id)
    .bind(url)
    .bind(version)
    .fetch_one(pool)
    .await
    .expect("insert endpoint")
}

/// Sets an endpoint's bulkhead (`max_in_flight`).
pub async fn max_in_flight(pool: &PgPool, endpoint_id: i64, n: i32) {
    sqlx::query("UPDATE webhooks.endpoints SET max_in_flight = $2 WHERE id = $1")
        .bind(endpoint_id)
        .bind(n)
        .execute(pool)
        .await
        .expect("set max_in_flight");
}

pub async fn secret_of(pool: &PgPool, endpoint_id: i64) -> String {
    sqlx::query_scalar("SELECT secret FROM webhooks.endpoints WHERE id = $1")
        .bind(endpoint_id)
        .fetch_one(pool)
        .await
        .expect("secret")
}

/// Inserts a visit with plain values; returns its id.
pub async fn visit(pool: &PgPool, clinic_id: i64, member_id: i64) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
         VALUES ($1, $2, now(), now() + interval '15 minutes') RETURNING id",
    )
    .bind(clinic_id)
    .bind(member_id)
    .fetch_one(pool)
    .await
    .expect("insert visit")
}

/// Inserts `n` visits in one statement (one trigger run), as a bulk write does.
pub async fn visits(pool: &PgPool, clinic_id: i64, member_id: i64, n: i64) {
    sqlx::query(
        "INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
         SELECT $1, $2, now(), now() FROM generate_series(1, $3)",
    )
    .bind(clinic_id)
    .bind(member_id)
    .bind(n)
    .execute(pool)
    .await
    .expect("insert visits");
}

/// Verifies the Standard Webhooks signature of request `r` from first
/// principles (not with our signing module): HMAC-SHA256 over
/// id.timestamp.body, the key the base64 after 'whsec_'.
pub fn verify_signature(r: &clinic_webhooks_test_support::Received, secret: &str) {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};
    let id = r.header("webhook-id").expect("webhook-id");
    let timestamp = r.header("webhook-timestamp").expect("webhook-timestamp");
    let header = r.header("webhook-signature").expect("webhook-signature");
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&r.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert!(
        header.split(' ').any(|sig| sig == expected),
        "signature {header} != {expected}"
    );
}
