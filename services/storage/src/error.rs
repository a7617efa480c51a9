//! The errors of the storage library. [`Error::kind`] (and the `kind` of each module's error
//! it wraps) is the `kind` label of `fieldline_storage_errors_total`, so a dashboard tells a
//! refused credential from a database that is merely busy.

use fieldline_wal::WalError;

use crate::sinks::SinkError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither InfluxDB nor a SQL database is configured.
    #[error("storage needs at least one backend: set storage.influx and/or storage.sql")]
    NoSinks,
    /// A backend failed in a way retrying cannot mend (its settings are wrong).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The shared service plumbing (listeners, configuration) failed.
    #[error(transparent)]
    Runtime(#[from] fieldline_runtime::Error),
    /// The write-ahead buffer cannot be opened.
    #[error(transparent)]
    Buffer(#[from] WalError),
    /// Asked to stop while still waiting for the backends.
    #[error("stopped before the backends were reachable")]
    Stopped,
}

impl Error {
    /// The `kind` label of this error in `errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoSinks => "config",
            Error::Sink(e) => e.kind(),
            Error::Runtime(e) => e.kind(),
            Error::Buffer(e) => e.kind(),
            Error::Stopped => "stopped",
        }
    }
}
