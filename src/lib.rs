//! clinic-webhooks: PostgreSQL triggers enqueue webhook deliveries in the
//! writing transaction; an apalis worker renders the v1/v2 payloads, signs
//! them (Standard Webhooks), delivers them with a durable retry schedule, and
//! records every call in a log that is queried in SQL.
//!
//! Module map: `config` (settings), `db` (pools, migrations, outage
//! reporting), `embedded` (the private default cluster), `payload` (v1/v2
//! bodies), `signing`, `target` (private-network guard), `delivery` (one
//! HTTP call and its failure kind), `decision` (what follows a call: the
//! retry policy), `pipeline` (render, sign, send, decide, record), `queue`
//! (claiming, apalis backend), `recorder` (batched log writes), `presence`
//! (the worker's lock and LISTEN connection), `worker` (wiring, recovery,
//! shutdown), `maintenance` (partitions and retention), `ops` (the
//! operations listener: health, readiness, metrics), `instruments` (every
//! metric), `demo` (the first-run demo), `admin` (status, redeliver, test
//! sends), `telemetry` (logging). The workspace beside
//! it: `bench/` (the benchmark) and `test-support/` (the HTTP receiver and
//! helpers the integration tests and the benchmark share).

pub mod admin;
pub mod config;
pub mod db;
pub mod decision;
pub mod delivery;
pub mod demo;
pub mod embedded;
pub mod instruments;
pub mod maintenance;
pub mod ops;
pub mod payload;
pub mod pipeline;
pub mod presence;
pub mod queue;
pub mod recorder;
pub mod signing;
pub mod target;
pub mod telemetry;
pub mod worker;
