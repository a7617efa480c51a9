//! Adapter metrics, exported on `/metrics`.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub type Labels = Vec<(&'static str, String)>;

/// Counters and histograms of one adapter process.
#[derive(Clone)]
pub struct AdapterMetrics {
    pub polls: Family<Labels, Counter>,
    pub poll_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    pub requests: Family<Labels, Counter>,
    pub errors: Family<Labels, Counter>,
    pub samples_read: Family<Labels, Counter>,
    pub batches_published: Counter,
    pub batches_dropped: Counter,
    pub publish_queue_bytes: Gauge,
    pub outbox_batches: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_dropped: Counter,
    pub writes: Family<Labels, Counter>,
    pub requests_per_cycle: Family<Labels, Gauge>,
    pub overruns: Family<Labels, Counter>,
    pub request_splits: Family<Labels, Counter>,
}

fn poll_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

impl AdapterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            polls: Family::default(),
            poll_seconds: Family::new_with_constructor(poll_histogram),
            requests: Family::default(),
            errors: Family::default(),
            samples_read: Family::default(),
            batches_published: Counter::default(),
            batches_dropped: Counter::default(),
            publish_queue_bytes: Gauge::default(),
            outbox_batches: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_dropped: Counter::default(),
            writes: Family::default(),
            requests_per_cycle: Family::default(),
            overruns: Family::default(),
            request_splits: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("fieldline_adapter");
        r.register("polls", "Poll cycles run, by device", m.polls.clone());
        r.register(
            "poll_duration_seconds",
            "Time to read every tag of a device once",
            m.poll_seconds.clone(),
        );
        r.register(
            "requests",
            "Protocol requests sent, by device and table",
            m.requests.clone(),
        );
        r.register("errors", "Errors, by device and kind", m.errors.clone());
        r.register(
            "samples_read",
            "Samples read, by device and quality",
            m.samples_read.clone(),
        );
        r.register(
            "batches_published",
            "Sample batches handed to the MQTT client",
            m.batches_published.clone(),
        );
        r.register(
            "batches_dropped",
            "Sample batches dropped because the publish queue was full",
            m.batches_dropped.clone(),
        );
        r.register(
            "publish_queue_bytes",
            "Bytes of batches waiting to enter the outbox",
            m.publish_queue_bytes.clone(),
        );
        r.register(
            "outbox_batches",
            "Batches in the outbox that storage has not acknowledged",
            m.outbox_batches.clone(),
        );
        r.register(
            "outbox_bytes",
            "Bytes the outbox holds on disk",
            m.outbox_bytes.clone(),
        );
        r.register(
            "outbox_dropped",
            "Batches dropped from a full outbox (or refused by its disk) before storage had them",
            m.outbox_dropped.clone(),
        );
        r.register(
            "writes",
            "Write commands, by device and outcome",
            m.writes.clone(),
        );
        r.register(
            "requests_per_cycle",
            "Read requests in the last poll cycle, by device",
            m.requests_per_cycle.clone(),
        );
        r.register(
            "overruns",
            "Poll cycles skipped because the previous one overran, by device and interval",
            m.overruns.clone(),
        );
        r.register(
            "request_splits",
            "Reads split after the device refused their size, by device",
            m.request_splits.clone(),
        );
        m
    }
}
