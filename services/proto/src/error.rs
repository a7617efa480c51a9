//! Why a wire message was refused: it describes something the core model cannot represent.
//! [`Error::kind`] is its label in the services' `errors_total{kind}` metrics.

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A message that does not describe a valid core value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A `Value` with no kind set.
    #[error("value has no kind")]
    NoValueKind,
    /// An enum field left at its unspecified zero value, e.g. `"alarm state"`.
    #[error("{0} is unspecified")]
    Unspecified(&'static str),
    /// A quality status this version does not know.
    #[error("quality status {0} is not known")]
    QualityStatus(i32),
    /// A quality reason this version does not know, or none on an Uncertain or Bad quality.
    #[error("quality reason {0} is not known")]
    QualityReason(i32),
    /// A Modbus exception code above 255.
    #[error("exception code {0} is out of range")]
    ExceptionCode(u32),
    /// A sample without its quality.
    #[error("has no quality")]
    NoQuality,
    /// A Bad sample that carries a value.
    #[error("a Bad sample must not carry a value")]
    BadWithValue,
    /// A Good or Uncertain sample without a value.
    #[error("a Good or Uncertain sample needs a value")]
    NoValue,
    /// A NaN or infinite number.
    #[error("value {0} is not a finite number")]
    NotFinite(f64),
    /// A tag name that is not `[a-z0-9_-]`.
    #[error("tag name {0}")]
    TagName(String),
    /// A batch whose line or device name is not `[a-z0-9_-]`.
    #[error("batch {what} name {problem}")]
    BatchName {
        /// `line` or `device`.
        what: &'static str,
        problem: String,
    },
    /// A record field that must be set, e.g. `"command value"`.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// What is wrong with one sample of a batch.
    #[error("sample {tag:?}: {problem}")]
    Sample { tag: String, problem: Box<Error> },
}

impl Error {
    /// The `kind` label of this error in `errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoValueKind | Error::NotFinite(_) => "value",
            Error::Unspecified(_) => "unspecified",
            Error::Missing(_) => "missing",
            Error::QualityStatus(_)
            | Error::QualityReason(_)
            | Error::ExceptionCode(_)
            | Error::NoQuality => "quality",
            Error::BadWithValue | Error::NoValue => "value_quality",
            Error::TagName(_) | Error::BatchName { .. } => "name",
            Error::Sample { problem, .. } => problem.kind(),
        }
    }
}
