//! `sql/schema/` holds the current definition of every function and view of
//! schema `webhooks`; the migrations are their history. This checks that a
//! migrated database matches those files exactly: replaying a file changes
//! nothing, and every object has its file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sqlx::{AssertSqlSafe, PgConnection};

use crate::support::TestDb;

#[derive(Clone, Copy)]
enum Kind {
    Function,
    View,
}

impl Kind {
    fn dir(self) -> PathBuf {
        let sub = match self {
            Self::Function => "functions",
            Self::View => "views",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("sql/schema")
            .join(sub)
    }

    /// Every object of this kind in schema webhooks.
    fn list(self) -> &'static str {
        match self {
            Self::Function => {
                "SELECT DISTINCT p.proname::text FROM pg_proc p
                   JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'webhooks'"
            }
            Self::View => {
                "SELECT c.relname::text FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'webhooks' AND c.relkind = 'v'"
            }
        }
    }

    /// The full definition of the objects of this name (every overload of a
    /// function; a view's query and its columns).
    fn definition(self) -> &'static str {
        match self {
            Self::Function => {
                "SELECT string_agg(pg_get_functiondef(p.oid), E'\\n' ORDER BY p.oid)
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'webhooks' AND p.proname = $1"
            }
            Self::View => {
                "SELECT pg_get_viewdef(c.oid, true) || E'\\n' ||
                        (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod),
                                           ', ' ORDER BY a.attnum)
                           FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'webhooks' AND c.relkind = 'v' AND c.relname = $1"
            }
        }
    }
}

fn files(kind: Kind) -> BTreeSet<String> {
    std::fs::read_dir(kind.dir())
        .expect("sql/schema directory")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".sql").map(str::to_owned)
        })
        .collect()
}

async fn definition(conn: &mut PgConnection, kind: Kind, name: &str) -> Option<String> {
    sqlx::query_scalar(kind.definition())
        .bind(name)
        .fetch_one(conn)
        .await
        .expect("definition query")
}

#[tokio::test]
async fn the_definitions_in_sql_schema_match_the_migrated_database() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.expect("connection");
    for kind in [Kind::Function, Kind::View] {
        let in_db: BTreeSet<String> = sqlx::query_scalar(kind.list())
            .fetch_all(&mut *conn)
            .await
            .expect("list")
            .into_iter()
            .collect();
        let on_disk = files(kind);
        assert_eq!(
            in_db,
            on_disk,
            "every object of schema webhooks has its file in {} and the reverse",
            kind.dir().display()
        );
        for name in &on_disk {
            let path = kind.dir().join(format!("{name}.sql"));
            let sql = std::fs::read_to_string(&path).expect("read");
            let before = definition(&mut conn, kind, name).await;
            sqlx::raw_sql(AssertSqlSafe("BEGIN"))
                .execute(&mut *conn)
                .await
                .expect("begin");
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{} does not apply: {e}", path.display()));
            let after = definition(&mut conn, kind, name).await;
            sqlx::raw_sql(AssertSqlSafe("ROLLBACK"))
                .execute(&mut *conn)
                .await
                .expect("rollback");
            assert!(before.is_some(), "{name} is not in the migrated database");
            assert_eq!(
                before,
                after,
                "{} differs from what the migrations define: change the schema with a new \
                 migration and keep this file equal to its latest definition",
                path.display()
            );
        }
    }
}

/// A database migrated by a build with migrations this one lacks (a newer
/// release, or a pre-release whose migrations were squashed) is refused with
/// a message that says so.
#[tokio::test]
async fn a_database_with_an_unknown_migration_is_refused_clearly() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO webhooks._sqlx_migrations
                (version, description, success, checksum, execution_time)
         VALUES (20261128000011, 'webhooks claim counts only calls in flight', true, '\\x00', 0)",
    )
    .execute(&db.pool)
    .await
    .expect("fake an applied migration");
    let err = clinic_webhooks::db::migrate(&db.pool)
        .await
        .expect_err("an unknown migration is refused");
    let message = err.to_string();
    assert!(
        message.contains("migration 20261128000011")
            && message.contains("start from a new database"),
        "{message}"
    );
}
