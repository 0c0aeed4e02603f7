//! What the metrics cost the worker per delivery, measured apart from the
//! machine's noise: the recording a delivery does (one attempt counted with
//! its labels and timed, one event-to-success latency, a share of a claim
//! and of a log write), a million times over with the Prometheus recorder
//! installed, and one render of /metrics with every series present.
//!   cargo run --release -p clinic-webhooks-bench --example metrics_cost

use std::time::{Duration, Instant};

use clinic_webhooks::decision::Outcome;
use clinic_webhooks::instruments;
use clinic_webhooks::payload::EVENT_TYPES;

fn main() {
    let handle = instruments::install().expect("the Prometheus recorder");
    let types = EVENT_TYPES;
    // A version 7 id written a millisecond ago.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        - 1;
    let event = uuid::Uuid::from_u128((ms << 80) | (0x7 << 76) | (0x8 << 60));
    let n: u32 = 1_000_000;
    let started = Instant::now();
    for i in 0..n {
        let event_type = types[i as usize % types.len()];
        let version = if i % 2 == 0 { "1.0" } else { "2.0" };
        instruments::Attempt::new(
            Outcome::Succeeded,
            None,
            event_type,
            version,
            Duration::from_micros(900),
            event,
        )
        .record();
        // A claim and a log write serve about a hundred deliveries each.
        if i % 100 == 0 {
            instruments::claim(true, Duration::from_micros(800), 100);
            instruments::log_write(true, Duration::from_micros(2500), 100);
        }
    }
    let per_delivery = started.elapsed() / n;
    let renders = 1000;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..renders {
        bytes = handle.render().len();
    }
    let per_render = started.elapsed() / renders;
    println!(
        "recording per delivery: {per_delivery:?}; one /metrics render: {per_render:?} ({bytes} bytes)"
    );
}
