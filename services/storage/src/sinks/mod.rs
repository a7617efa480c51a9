//! Storage backends. A sink either stores a batch, refuses some samples for good (reported,
//! never retried), or fails transiently (retried by the caller until it works).

pub mod influx;
pub mod line_protocol;
pub mod sql;

mod error;

pub use error::{BoxError, Disposition, SinkError};

/// A HashMap for the short keys (tag names, timestamps) of one write, hashed with foldhash:
/// SipHash's resistance to chosen keys buys nothing there.
pub(crate) type FastMap<K, V> = foldhash::HashMap<K, V>;

use fieldline_core::SampleBatch;

/// What a successful write left out: the samples the backend refused for good.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteReport {
    pub rejected: Vec<Rejection>,
}

/// Samples of one batch that a backend refused for good, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Index of the batch in the write.
    pub batch: usize,
    /// Samples refused.
    pub samples: usize,
    /// What was refused (tags, a point) and the backend's reason.
    pub reason: String,
}

impl WriteReport {
    /// Samples refused in all.
    pub fn rejected_samples(&self) -> usize {
        self.rejected.iter().map(|r| r.samples).sum()
    }

    /// Samples refused from batch `index`.
    pub fn rejected_in(&self, index: usize) -> usize {
        self.rejected
            .iter()
            .filter(|r| r.batch == index)
            .map(|r| r.samples)
            .sum()
    }
}

/// A configured backend.
pub enum Sink {
    Influx(Box<influx::InfluxSink>),
    Sql(sql::SqlSink),
}

impl Sink {
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Influx(_) => "influxdb",
            Sink::Sql(s) => match s.dialect() {
                sql::Dialect::MySql => "mysql",
                sql::Dialect::Sqlite => "sqlite",
            },
        }
    }

    /// Writes several batches as one backend write.
    pub async fn write(&self, batches: &[SampleBatch]) -> Result<WriteReport, SinkError> {
        match self {
            Sink::Influx(s) => s.write(batches).await,
            Sink::Sql(s) => s.write(batches).await,
        }
    }
}
