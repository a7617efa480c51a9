//! The wire contract of Fieldline: protobuf messages and gRPC services generated from
//! `proto/fieldline/v1`, and conversions between them and the core domain types. Every
//! service speaks through this crate; nothing else generates code from the `.proto` files.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("fieldline.v1");

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/fieldline_descriptor.bin"));
}

/// Sparkplug B payloads (`proto/sparkplug/sparkplug_b.proto`), as published by Sparkplug
/// edge nodes that the MQTT ingest driver reads.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod sparkplug {
    tonic::include_proto!("org.eclipse.tahu.protobuf");
}

mod convert;
mod error;

pub use convert::{alarm_status, command_audit, device_progress};
pub use error::{Error, Result};

/// The largest gRPC message between Fieldline's services (64 MiB): above the largest batch
/// the processor takes from the bus (`processor.max_batch_bytes`) with its derived values, so a
/// batch that was accepted is never refused by the link that carries it on.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

impl v1::Command {
    /// The command as the service it arrived at judges it: a time to live becomes a deadline
    /// on this service's own clock (`now_ns`, the moment of arrival), so the sender's clock
    /// does not matter.
    pub fn anchored(mut self, now_ns: i64) -> Self {
        if self.ttl_ns > 0 {
            self.deadline_ns = now_ns.saturating_add(self.ttl_ns);
            self.ttl_ns = 0;
        }
        self
    }

    /// The command as it is sent on at `now_ns`: what is left of its deadline travels as a time
    /// to live, which the next service measures on its own clock. The deadline stays for
    /// receivers that do not know time to live.
    pub fn with_ttl(mut self, now_ns: i64) -> Self {
        if self.deadline_ns > 0 {
            self.ttl_ns = self.deadline_ns.saturating_sub(now_ns).max(1);
        }
        self
    }
}

/// MQTT topic of a device's sample batches.
pub fn samples_topic(line: &str, device: &str) -> String {
    format!("fieldline/v1/{line}/{device}/samples")
}

/// MQTT filter matching every device's sample batches of a line.
pub fn line_samples_filter(line: &str) -> String {
    format!("fieldline/v1/{line}/+/samples")
}

/// MQTT topic of the processor's [`v1::StoredUpTo`] watermark for a device (retained, QoS 1).
pub fn stored_topic(line: &str, device: &str) -> String {
    format!("fieldline/v1/{line}/{device}/stored")
}

/// MQTT filter matching every device's stored watermark of a line.
pub fn line_stored_filter(line: &str) -> String {
    format!("fieldline/v1/{line}/+/stored")
}

/// MQTT topic where the processor copies what it refused from a line's samples topic
/// (protobuf `DeadLetter`, QoS 1).
pub fn dead_letter_topic(line: &str) -> String {
    format!("fieldline/v1/{line}/dead-letter")
}

/// MQTT filter matching every device's command topic of a line (protobuf `Command`, QoS 1),
/// taken by the processor only where `processor.mqtt_commands` is on; each result goes to the
/// command's topic with `/result` appended.
pub fn line_commands_filter(line: &str) -> String {
    format!("fieldline/v1/{line}/+/cmd")
}

/// MQTT topic of a line's alarm events (protobuf `AlarmEvent`, QoS 1).
pub fn alarms_topic(line: &str) -> String {
    format!("fieldline/v1/{line}/alarms")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn clocks_that_disagree_neither_refuse_a_timely_command_nor_accept_a_stale_one() {
        // The processor's clock reads P; the adapter's runs 30 s ahead.
        let p = 1_800_000_000 * S;
        let a = p + 30 * S;
        let command = v1::Command {
            id: "trip-1".into(),
            deadline_ns: p + 10 * S,
            ..Default::default()
        };
        let sent = command.with_ttl(p);
        assert_eq!(sent.ttl_ns, 10 * S);
        // Judged by its absolute deadline the adapter would refuse it on arrival.
        assert!(a > sent.deadline_ns);
        let arrived = sent.clone().anchored(a);
        assert_eq!((arrived.deadline_ns, arrived.ttl_ns), (a + 10 * S, 0));
        // Held up past its ten seconds, it is stale whatever either clock says.
        assert!(a + 11 * S > arrived.deadline_ns);
        // Without a time to live nothing changes.
        let plain = v1::Command {
            deadline_ns: 5,
            ..Default::default()
        };
        assert_eq!(plain.clone().anchored(a), plain);
    }
}
