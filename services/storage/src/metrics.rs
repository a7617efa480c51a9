//! Storage metrics, exported on `/metrics`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct StorageMetrics {
    pub batches: Family<Labels, Counter>,
    pub samples_written: Family<Labels, Counter>,
    pub samples_rejected: Family<Labels, Counter>,
    pub retries: Family<Labels, Counter>,
    /// Failed backend operations, by sink and error kind.
    pub errors: Family<Labels, Counter>,
    pub write_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    pub buffer_pending: Gauge,
    pub buffer_bytes: Gauge,
    pub buffer_dropped: Counter,
    pub buffer_full_waits: Counter,
    pub buffer_replayed: Counter,
    pub group_points: Histogram,
    /// Sets of plant records (one per request), by result: stored, buffered, refused.
    pub records: Family<Labels, Counter>,
    /// Refusal reasons already logged, so each is logged once.
    logged: Arc<Mutex<HashSet<(&'static str, String)>>>,
}

/// Distinct refusal reasons remembered for logging once; beyond this every one is logged.
const LOGGED_REASONS: usize = 10_000;

fn write_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ])
}

impl StorageMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            batches: Family::default(),
            samples_written: Family::default(),
            samples_rejected: Family::default(),
            retries: Family::default(),
            errors: Family::default(),
            write_seconds: Family::new_with_constructor(write_histogram),
            buffer_pending: Gauge::default(),
            buffer_bytes: Gauge::default(),
            buffer_dropped: Counter::default(),
            buffer_full_waits: Counter::default(),
            buffer_replayed: Counter::default(),
            group_points: Histogram::new([
                1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
            ]),
            records: Family::default(),
            logged: Arc::default(),
        };
        let r = registry.sub_registry_with_prefix("fieldline_storage");
        r.register("batches", "Batches received, by result", m.batches.clone());
        r.register(
            "samples_written",
            "Samples stored, by sink",
            m.samples_written.clone(),
        );
        r.register(
            "samples_rejected",
            "Samples a sink refused for good, by sink",
            m.samples_rejected.clone(),
        );
        r.register(
            "write_retries",
            "Writes retried after a transient failure, by sink",
            m.retries.clone(),
        );
        r.register(
            "errors",
            "Failed backend operations (connects, writes, reads), by sink and kind",
            m.errors.clone(),
        );
        r.register(
            "write_duration_seconds",
            "Time of one successful sink write, by sink",
            m.write_seconds.clone(),
        );
        r.register(
            "buffer_pending_batches",
            "Batches in the write-ahead buffer waiting for the backends",
            m.buffer_pending.clone(),
        );
        r.register(
            "buffer_bytes",
            "Bytes held by the write-ahead buffer",
            m.buffer_bytes.clone(),
        );
        r.register(
            "buffer_dropped_batches",
            "Batches dropped because the buffer was full (drop_oldest)",
            m.buffer_dropped.clone(),
        );
        r.register(
            "buffer_full_waits",
            "Times an append waited for room in a full buffer",
            m.buffer_full_waits.clone(),
        );
        r.register(
            "buffer_replayed_batches",
            "Buffered batches written to the backends",
            m.buffer_replayed.clone(),
        );
        r.register(
            "plant_records",
            "Sets of plant records (alarm transitions and states, write audit, stored marks) by result",
            m.records.clone(),
        );
        r.register(
            "write_group_samples",
            "Samples per backend write after grouping received batches",
            m.group_points.clone(),
        );
        m
    }

    /// Counts a failed operation of `sink` in `errors_total{sink, kind}`.
    pub fn error(&self, sink: &str, kind: &'static str) {
        self.errors
            .get_or_create(&vec![
                ("sink", sink.to_string()),
                ("kind", kind.to_string()),
            ])
            .inc();
    }

    /// True the first time a sink refuses samples for `reason`.
    pub fn first_time(&self, sink: &'static str, reason: &str) -> bool {
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if logged.contains(&(sink, reason.to_string())) {
            return false;
        }
        if logged.len() < LOGGED_REASONS {
            logged.insert((sink, reason.to_string()));
        }
        true
    }
}
