//! The deployment's least-privilege roles (migrations *_webhooks_roles.sql
//! and *_webhooks_deployment_roles.sql): the application's role fires the
//! triggers, the worker's role delivers, logs and runs maintenance without
//! owning anything, and the panel's reader role reads the log but neither
//! the secrets nor the tables behind the views.

use std::time::Duration;

use clinic_webhooks_test_support::Receiver;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

use crate::support::{self, TestDb};

/// Drops the test's login roles when the test ends, passed or failed (roles
/// belong to the server, not to the test's database).
struct DropRoles {
    database: String,
    roles: Vec<String>,
}

impl Drop for DropRoles {
    fn drop(&mut self) {
        let roles = self.roles.join(", ");
        let psql = |database: &str, sql: String| {
            let url = support::admin_url();
            let server = url.rsplit_once('/').map_or(url.as_str(), |(s, _)| s);
            let _ = std::process::Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-d",
                    &format!("{server}/{database}"),
                    "-c",
                    &sql,
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        psql(&self.database, format!("DROP OWNED BY {roles}"));
        psql(
            "postgres",
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
        );
        psql("postgres", format!("DROP ROLE IF EXISTS {roles}"));
    }
}

/// `db`'s URL for another user (trust authentication on the test server).
fn url_as(db: &TestDb, user: &str) -> String {
    let (scheme, rest) = db.url.split_once("://").expect("url");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    conn.execute(AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
}

#[tokio::test]
async fn each_party_works_with_its_role_and_no_more() {
    let db = TestDb::new().await;
    let tag = format!("{:08x}", fastrand::u32(..));
    let (app, worker, panel) = (
        format!("cw_app_{tag}"),
        format!("cw_worker_{tag}"),
        format!("cw_panel_{tag}"),
    );
    let _cleanup = DropRoles {
        database: db.name.clone(),
        roles: vec![app.clone(), worker.clone(), panel.clone()],
    };
    let mut admin = db.pool.acquire().await.expect("admin");
    exec(
        &mut admin,
        &format!("CREATE ROLE {app} LOGIN IN ROLE clinic_webhooks_app"),
    )
    .await;
    exec(
        &mut admin,
        &format!("CREATE ROLE {worker} LOGIN IN ROLE clinic_webhooks_worker"),
    )
    .await;
    exec(
        &mut admin,
        &format!("CREATE ROLE {panel} LOGIN IN ROLE clinic_webhooks_reader"),
    )
    .await;
    // The application's own tables are its own business.
    exec(
        &mut admin,
        &format!("GRANT USAGE ON SCHEMA clinic TO {app}"),
    )
    .await;
    exec(
        &mut admin,
        &format!("GRANT ALL ON ALL TABLES IN SCHEMA clinic TO {app}"),
    )
    .await;

    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    support::endpoint(&db.pool, 1, &receiver.url("/hook"), "2.0").await;

    async {
        // The application writes a visit; its triggers enqueue as its role.
        let mut as_app = PgConnection::connect(&url_as(&db, &app)).await.expect("app");
        exec(
            &mut as_app,
            "INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at) VALUES (1, 10, now(), now())",
        )
        .await;
        let denied = as_app.execute("SELECT secret FROM webhooks.endpoints").await;
        assert!(denied.is_err(), "the application's role reads no secret");

        // The worker delivers and logs as its role, without migrating.
        let worker_url = url_as(&db, &worker);
        let mut child = support::spawn_binary_at(
            &worker_url,
            &[("CLINIC_WEBHOOKS__DATABASE__MIGRATE_ON_START", "false")],
        );
        let got = receiver.wait_for(1, Duration::from_secs(15)).await;
        assert_eq!(got.len(), 1);
        support::wait_for_scalar(
            &db.pool,
            "SELECT count(*) FROM webhooks.attempts WHERE outcome = 'succeeded'",
            1,
            Duration::from_secs(10),
        )
        .await;
        support::signal(&child, "TERM");
        support::wait_exit(&mut child, Duration::from_secs(15)).await;
        // Maintenance (creating and dropping partitions) runs as the owner.
        let out = support::cli(&worker_url, &["maintenance"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut as_worker = PgConnection::connect(&worker_url).await.expect("worker");
        // Maintenance as of another time is the owner's: from the worker's
        // role it could drop every partition at once.
        let far = as_worker
            .execute("SELECT webhooks.run_maintenance('1 day', p_now => now() + interval '10 years')")
            .await;
        assert!(
            far.is_err_and(|e| e.to_string().contains("may act as of another time")),
            "the worker may not move the clock"
        );
        assert!(
            as_worker.execute("DROP TABLE webhooks.attempts_default").await.is_err(),
            "the worker's role owns nothing"
        );

        // The panel reads the log, not what is behind it.
        let mut as_panel = PgConnection::connect(&url_as(&db, &panel)).await.expect("panel");
        let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks.delivery_log_detail")
            .fetch_one(&mut as_panel)
            .await
            .expect("the panel reads the log");
        assert_eq!(logged, 1);
        for denied in [
            "SELECT secret FROM webhooks.endpoints",
            "SELECT count(*) FROM webhooks.attempts",
            "SELECT webhooks.run_maintenance()",
            "UPDATE webhooks.endpoints SET enabled = false",
        ] {
            assert!(as_panel.execute(denied).await.is_err(), "the panel may not: {denied}");
        }
    }
    .await;
}
