//! The pure heart of Fieldline: the data model every stage of the pipeline shares (values,
//! quality, samples, batches), the line configuration schema with its validation, and the
//! register codecs that turn device words into typed values. Nothing here does I/O, so every
//! rule is tested without a socket.

pub mod alarm;
pub mod codec;
pub mod config;
pub mod deadband;
pub mod error;
pub mod names;
pub mod plugin;
pub mod records;
pub mod rules;
pub mod sample;
pub mod value_type;
pub mod write;

pub use error::{Error, Result};
pub use sample::{Quality, QualityReason, Sample, SampleBatch, Value};
