//! The errors of the core library. Each has a short [`Error::kind`] that the services use as
//! the `kind` label of their `errors_total` metrics, so a dashboard tells a value that did not
//! fit its tag from a document that did not validate.

use crate::{
    alarm::{ActionRefused, SnapshotError},
    config::ConfigErrors,
};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A line document with problems, every one with its path.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// A value that does not fit its tag's type.
    #[error("{0}")]
    Value(String),
    /// A number outside the range of its tag's type.
    #[error("{0}")]
    OutOfRange(String),
    /// NaN or an infinity where a number is needed.
    #[error("{0} is not a finite number")]
    NotFinite(f64),
    /// Text that is not what it should be: an address, a type name, a tag path, a size.
    #[error("{0}")]
    Parse(String),
    /// Two alarm instances of a line with the same id.
    #[error("alarm {0:?} is defined twice")]
    DuplicateAlarm(String),
    /// An operator action or a persisted state names an alarm the line does not have.
    #[error("there is no alarm {0:?} on this line")]
    UnknownAlarm(String),
    /// An operator action the alarm's state does not allow.
    #[error("alarm {id:?}: {source}")]
    AlarmRefused {
        id: String,
        #[source]
        source: ActionRefused,
    },
    /// A persisted alarm state that cannot be resumed.
    #[error("alarm {id:?}: {source}")]
    AlarmSnapshot {
        id: String,
        #[source]
        source: SnapshotError,
    },
}

impl Error {
    /// The `kind` label of this error in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Value(_) => "value",
            Error::OutOfRange(_) => "out_of_range",
            Error::NotFinite(_) => "not_finite",
            Error::Parse(_) => "parse",
            Error::DuplicateAlarm(_) => "alarm_config",
            Error::UnknownAlarm(_) => "alarm_unknown",
            Error::AlarmRefused { .. } => "alarm_refused",
            Error::AlarmSnapshot { .. } => "alarm_snapshot",
        }
    }
}
