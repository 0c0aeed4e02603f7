//! The event catalog (`catalog/`): a JSON Schema of every event's payload
//! in each version, with an example. The schemas must hold of what the
//! worker really sends: every event × version is produced through the real
//! tables and triggers (and every type once more as a test send, from the
//! example snapshots), delivered by a worker to a real receiver, and each
//! body received is validated against its schema.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clinic_webhooks::payload::EVENT_TYPES;
use clinic_webhooks_test_support::Receiver;
use serde_json::Value;

use crate::support::{self, InProcessWorker, TestDb};

fn schema_path(event_type: &str, version: &str) -> PathBuf {
    let major = &version[..1];
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("catalog")
        .join(format!("{event_type}.v{major}.schema.json"))
}

fn validator(event_type: &str, version: &str) -> jsonschema::Validator {
    let path = schema_path(event_type, version);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("a schema is JSON");
    assert!(
        jsonschema::meta::is_valid(&schema),
        "{} is not a valid JSON Schema",
        path.display()
    );
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_valid(validator: &jsonschema::Validator, body: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{body}");
}

#[test]
fn every_event_has_a_schema_per_version_and_its_examples_hold() {
    for event_type in EVENT_TYPES {
        for version in ["1.0", "2.0"] {
            let v = validator(event_type, version);
            let schema: Value = serde_json::from_str(
                &std::fs::read_to_string(schema_path(event_type, version)).expect("schema"),
            )
            .expect("json");
            let examples = schema["examples"].as_array().expect("examples");
            assert!(
                !examples.is_empty(),
                "{event_type} v{version} has an example"
            );
            for example in examples {
                assert_valid(&v, example, &format!("{event_type} v{version} example"));
            }
            // A body of the other version does not pass.
            let other = if version == "1.0" { "2.0" } else { "1.0" };
            let mut wrong = examples[0].clone();
            wrong["version"] = Value::from(other);
            assert!(
                !v.is_valid(&wrong),
                "{event_type} v{version} refuses v{other}"
            );
        }
    }
}

#[tokio::test]
async fn what_the_worker_sends_matches_the_catalog() {
    let db = TestDb::new().await;
    let receiver = Receiver::ok().await.expect("receiver");
    support::clinic_with_patient(&db.pool).await;
    let v1 = support::endpoint(&db.pool, 1, &receiver.url("/v1"), "1.0").await;
    let v2 = support::endpoint(&db.pool, 1, &receiver.url("/v2"), "2.0").await;
    let worker = InProcessWorker::start(&db, support::settings(&[]));
    let p = &db.pool;
    let steps = [
        "INSERT INTO clinic.users (id, clinic_id, role, source, created_by) VALUES (11, 1, 'provider', 'admin', 10)",
        "INSERT INTO clinic.visits (id, clinic_id, member_id, start_at, end_at) VALUES (501, 1, 10, now(), now() + interval '15 minutes')",
        "UPDATE clinic.visits SET status = 30, provider_id = 11, actual_start = now(), status_updated_by = 11 WHERE id = 501",
        "INSERT INTO clinic.visit_notes (visit_id, status) VALUES (501, 'signed')",
        "UPDATE clinic.visits SET status = 50, actual_end = now() WHERE id = 501",
        "INSERT INTO clinic.invoices (visit_id, status, amount_due, amount_paid, currency) VALUES (501, 'processing', 4500, 0, 'EUR')",
        // A cancelled walk-in with nobody assigned: the NULLs.
        "INSERT INTO clinic.visits (id, clinic_id, member_id, type, start_at, end_at) VALUES (502, 1, 10, 'walk_in', now(), now())",
        "UPDATE clinic.visits SET status = 40 WHERE id = 502",
    ];
    for step in steps {
        sqlx::query(step)
            .execute(p)
            .await
            .unwrap_or_else(|e| panic!("{e}: {step}"));
    }
    for endpoint in [v1, v2] {
        for event_type in EVENT_TYPES {
            sqlx::query("SELECT webhooks.send_test($1, $2)")
                .bind(endpoint)
                .bind(event_type)
                .execute(p)
                .await
                .expect("send_test");
        }
    }
    let expected: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks.deliveries")
        .fetch_one(p)
        .await
        .expect("deliveries");
    let got = receiver
        .wait_for(
            usize::try_from(expected).expect("count"),
            Duration::from_secs(20),
        )
        .await;
    worker.stop().await;
    assert_eq!(got.len() as i64, expected);

    let mut seen = BTreeSet::new();
    for request in &got {
        let body: Value = serde_json::from_slice(&request.body).expect("a JSON body");
        let event_type = body["type"].as_str().expect("type").to_owned();
        let version = body["version"].as_str().expect("version").to_owned();
        assert_eq!(request.path, format!("/v{}", &version[..1]));
        assert_valid(
            &validator(&event_type, &version),
            &body,
            &format!("{event_type} v{version} as sent"),
        );
        seen.insert((event_type, version));
    }
    assert_eq!(
        seen.len(),
        EVENT_TYPES.len() * 2,
        "every event × version sent: {seen:?}"
    );
}
