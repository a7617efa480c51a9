//! Storage backends. A sink either stores a batch, refuses some samples for good (reported,
//! never retried), or fails transiently (retried by the caller until it works).

pub mod influx;
pub mod line_protocol;
pub mod sql;

use fieldline_core::SampleBatch;

/// How a write failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The backend is down or busy; the same write may succeed later.
    #[error("{0}")]
    Transient(String),
    /// The backend refused the data itself; retrying cannot help.
    #[error("{0}")]
    Permanent(String),
    /// The sink is misconfigured.
    #[error("{0}")]
    Config(String),
}

impl SinkError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SinkError::Transient(_) => "transient",
            SinkError::Permanent(_) => "permanent",
            SinkError::Config(_) => "config",
        }
    }
}

/// What a successful write left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteReport {
    pub rejected: usize,
    pub detail: Vec<String>,
}

/// A configured backend.
pub enum Sink {
    Influx(influx::InfluxSink),
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

    pub async fn write(&self, batch: &SampleBatch) -> Result<WriteReport, SinkError> {
        match self {
            Sink::Influx(s) => s.write(batch).await,
            Sink::Sql(s) => s.write(batch).await,
        }
    }
}
