//! MQTT ingest driver: values that others publish to a broker, either as JSON documents on
//! topics of their choosing (`json.rs`) or as Sparkplug B payloads from an edge node
//! (`sparkplug.rs`). Both mappings are pure; `driver.rs` owns the MQTT client, subscribes,
//! and turns each message into a batch of the device's samples.

mod driver;
pub mod json;
pub mod sparkplug;

pub use driver::{check, run};
