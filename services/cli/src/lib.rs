//! The `fieldline` command: `up` runs the whole pipeline in one process (simulated line,
//! embedded MQTT broker, adapter, processor, storage into SQLite) or a given line against
//! external servers; `config check` validates a line document; `sim` serves the simulated
//! tank; `read` and `watch` ask the MES API.

pub mod broker;
pub mod client;
pub mod error;
pub mod opcua;
pub mod output;
pub mod up;

pub use error::{Error, Result};
