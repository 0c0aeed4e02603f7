//! One integration-test binary (builds once): real PostgreSQL, real HTTP
//! receivers on 127.0.0.1, the worker in-process or as the real binary.

mod admin;
mod catalog;
mod chaos;
mod delivery;
mod hostile;
mod lifecycle;
mod log_queries;
mod ops;
mod outages;
mod payloads;
mod raw_http;
mod recovery;
mod retention;
mod roles;
mod schema;
mod semantics;
mod support;
mod triggers;
