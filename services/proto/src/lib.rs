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

pub use error::{Error, Result};

/// The largest gRPC message between Fieldline's services (64 MiB): above the largest batch
/// the processor takes from the bus (`processor.max_batch_bytes`) with its derived values, so a
/// batch that was accepted is never refused by the link that carries it on.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// MQTT topic of a device's sample batches.
pub fn samples_topic(line: &str, device: &str) -> String {
    format!("fieldline/v1/{line}/{device}/samples")
}

/// MQTT filter matching every device's sample batches of a line.
pub fn line_samples_filter(line: &str) -> String {
    format!("fieldline/v1/{line}/+/samples")
}

/// MQTT topic where the processor copies what it refused from a line's samples topic
/// (protobuf `DeadLetter`, QoS 1).
pub fn dead_letter_topic(line: &str) -> String {
    format!("fieldline/v1/{line}/dead-letter")
}

/// MQTT topic of a line's alarm events (protobuf `AlarmEvent`, QoS 1).
pub fn alarms_topic(line: &str) -> String {
    format!("fieldline/v1/{line}/alarms")
}
