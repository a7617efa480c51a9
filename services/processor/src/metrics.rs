//! Processor metrics, exported on `/metrics`.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct ProcessorMetrics {
    pub received: Counter,
    pub duplicates: Counter,
    pub gaps: Counter,
    pub invalid: Counter,
    pub dead_letters: Family<Labels, Counter>,
    pub dropped_samples: Counter,
    pub stored: Counter,
    pub rejected_samples: Counter,
    pub in_flight: Gauge,
    pub errors: Family<Labels, Counter>,
    pub writes: Family<Labels, Counter>,
    pub alarm_events: Counter,
}

impl ProcessorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            received: Counter::default(),
            duplicates: Counter::default(),
            gaps: Counter::default(),
            invalid: Counter::default(),
            dead_letters: Family::default(),
            dropped_samples: Counter::default(),
            stored: Counter::default(),
            rejected_samples: Counter::default(),
            in_flight: Gauge::default(),
            errors: Family::default(),
            writes: Family::default(),
            alarm_events: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("fieldline_processor");
        r.register(
            "batches_received",
            "Sample batches received from MQTT",
            m.received.clone(),
        );
        r.register(
            "batches_duplicate",
            "Redelivered batches dropped by sequence number",
            m.duplicates.clone(),
        );
        r.register(
            "batches_out_of_order",
            "Batches dropped because one before them had not arrived (the adapter sends both again)",
            m.gaps.clone(),
        );
        r.register(
            "batches_invalid",
            "Messages that were not valid sample batches",
            m.invalid.clone(),
        );
        r.register(
            "dead_letters",
            "Messages refused from a samples topic and copied to the dead-letter topic, by kind",
            m.dead_letters.clone(),
        );
        r.register(
            "samples_dropped",
            "Invalid samples dropped from otherwise good batches",
            m.dropped_samples.clone(),
        );
        r.register(
            "batches_stored",
            "Batches acknowledged by storage",
            m.stored.clone(),
        );
        r.register(
            "samples_rejected",
            "Samples storage refused for good",
            m.rejected_samples.clone(),
        );
        r.register(
            "batches_in_flight",
            "Batches sent to storage and not yet acknowledged",
            m.in_flight.clone(),
        );
        r.register("errors", "Errors, by kind", m.errors.clone());
        r.register(
            "writes",
            "Writes through the safe write path, by source and status",
            m.writes.clone(),
        );
        r.register(
            "alarm_events",
            "Alarm transitions published",
            m.alarm_events.clone(),
        );
        m
    }

    pub fn dead_letter(&self, kind: &str) {
        self.dead_letters
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }
}
