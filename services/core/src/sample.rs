//! Values, quality and samples: what every stage after the device speaks.

use std::fmt;

/// A typed value. Integers keep their signedness so storage can type fields exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    String(String),
}

impl Value {
    /// The value as a float, for deadbands and limits; `None` for strings.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::I64(v) => Some(*v as f64),
            Value::U64(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            Value::String(_) => None,
        }
    }

    /// A short name of the value's type, for messages and metadata.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::I64(_) => "int",
            Value::U64(_) => "uint",
            Value::F64(_) => "float",
            Value::String(_) => "string",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v:?}"),
        }
    }
}

/// Why a sample is not Good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QualityReason {
    CommFailure,
    DeviceException(u8),
    DecodeError,
    OutOfRange,
    Stale,
    Processing,
}

impl QualityReason {
    /// The reason as stored in `<tag>_quality` fields and shown to people.
    pub fn code(&self) -> String {
        match self {
            QualityReason::CommFailure => "comm_failure".into(),
            QualityReason::DeviceException(code) => format!("device_exception({code})"),
            QualityReason::DecodeError => "decode_error".into(),
            QualityReason::OutOfRange => "out_of_range".into(),
            QualityReason::Stale => "stale".into(),
            QualityReason::Processing => "processing".into(),
        }
    }
}

impl std::str::FromStr for QualityReason {
    type Err = crate::Error;

    /// Parses what [`QualityReason::code`] writes.
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "comm_failure" => QualityReason::CommFailure,
            "decode_error" => QualityReason::DecodeError,
            "out_of_range" => QualityReason::OutOfRange,
            "stale" => QualityReason::Stale,
            "processing" => QualityReason::Processing,
            other => {
                let code = other
                    .strip_prefix("device_exception(")
                    .and_then(|r| r.strip_suffix(')'))
                    .and_then(|c| c.parse::<u8>().ok())
                    .ok_or_else(|| {
                        crate::Error::Parse(format!("unknown quality reason {other:?}"))
                    })?;
                QualityReason::DeviceException(code)
            }
        })
    }
}

/// Whether a value can be trusted, and if not, why.
#[derive(Debug, Clone, PartialEq)]
pub enum Quality {
    Good,
    Uncertain {
        reason: QualityReason,
        detail: String,
    },
    Bad {
        reason: QualityReason,
        detail: String,
    },
}

impl Quality {
    pub fn bad(reason: QualityReason, detail: impl Into<String>) -> Self {
        Quality::Bad {
            reason,
            detail: detail.into(),
        }
    }

    pub fn is_good(&self) -> bool {
        matches!(self, Quality::Good)
    }

    pub fn is_bad(&self) -> bool {
        matches!(self, Quality::Bad { .. })
    }

    /// `good`, `uncertain:<reason>` or `bad:<reason>`: the compact form stored beside values.
    pub fn code(&self) -> String {
        match self {
            Quality::Good => "good".into(),
            Quality::Uncertain { reason, .. } => format!("uncertain:{}", reason.code()),
            Quality::Bad { reason, .. } => format!("bad:{}", reason.code()),
        }
    }
}

impl std::str::FromStr for Quality {
    type Err = crate::Error;

    /// Parses what [`Quality::code`] writes; the detail is not part of the code and is empty.
    fn from_str(s: &str) -> crate::Result<Self> {
        if s == "good" {
            return Ok(Quality::Good);
        }
        match s.split_once(':') {
            Some(("uncertain", reason)) => Ok(Quality::Uncertain {
                reason: reason.parse()?,
                detail: String::new(),
            }),
            Some(("bad", reason)) => Ok(Quality::Bad {
                reason: reason.parse()?,
                detail: String::new(),
            }),
            _ => Err(crate::Error::Parse(format!("unknown quality {s:?}"))),
        }
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quality::Good => f.write_str("good"),
            Quality::Uncertain { detail, .. } | Quality::Bad { detail, .. }
                if !detail.is_empty() =>
            {
                write!(f, "{} ({detail})", self.code())
            }
            _ => f.write_str(&self.code()),
        }
    }
}

/// One reading of one tag. A Bad sample carries no value: an unreadable value is never 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tag: String,
    pub value: Option<Value>,
    pub quality: Quality,
    /// Nanoseconds since the Unix epoch: the source timestamp (the device's own, else when
    /// the reading completed).
    pub timestamp_ns: i64,
    /// The server's timestamp where a device reports one beside the source timestamp (an OPC
    /// UA server).
    pub server_timestamp_ns: Option<i64>,
}

impl Sample {
    pub fn good(tag: impl Into<String>, value: Value, timestamp_ns: i64) -> Self {
        Self {
            tag: tag.into(),
            value: Some(value),
            quality: Quality::Good,
            timestamp_ns,
            server_timestamp_ns: None,
        }
    }

    pub fn bad(tag: impl Into<String>, quality: Quality, timestamp_ns: i64) -> Self {
        debug_assert!(quality.is_bad());
        Self {
            tag: tag.into(),
            value: None,
            quality,
            timestamp_ns,
            server_timestamp_ns: None,
        }
    }
}

/// The samples of one device from one poll, numbered per device.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleBatch {
    pub line: String,
    pub device: String,
    pub adapter_id: String,
    pub sequence: u64,
    pub samples: Vec<Sample>,
}

impl SampleBatch {
    /// Gives every sample stamped after `now_ns` (a device whose clock runs ahead) the time
    /// `now_ns` instead, so it neither moves time-driven logic (alarm delays, rates, runtime)
    /// into the future nor makes the next real readings look old. Returns how many moved.
    pub fn clamp_future(&mut self, now_ns: i64) -> usize {
        let mut moved = 0;
        for s in &mut self.samples {
            if s.timestamp_ns > now_ns {
                s.timestamp_ns = now_ns;
                moved += 1;
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_from_the_future_are_taken_at_the_time_they_arrive() {
        let mut batch = SampleBatch {
            line: "l".into(),
            device: "d".into(),
            adapter_id: "a".into(),
            sequence: 1,
            samples: vec![
                Sample::good("a", Value::I64(1), 100),
                Sample::good("b", Value::I64(2), 5_000),
            ],
        };
        assert_eq!(batch.clamp_future(1_000), 1);
        let times: Vec<i64> = batch.samples.iter().map(|s| s.timestamp_ns).collect();
        assert_eq!(times, [100, 1_000]);
    }

    #[test]
    fn quality_codes_parse_back() {
        let qualities = [
            Quality::Good,
            Quality::bad(QualityReason::CommFailure, ""),
            Quality::bad(QualityReason::DeviceException(2), ""),
            Quality::bad(QualityReason::DeviceException(0x42), ""),
            Quality::Uncertain {
                reason: QualityReason::Stale,
                detail: String::new(),
            },
            Quality::bad(QualityReason::DecodeError, ""),
            Quality::bad(QualityReason::OutOfRange, ""),
            Quality::bad(QualityReason::Processing, ""),
        ];
        for q in qualities {
            assert_eq!(q.code().parse::<Quality>(), Ok(q.clone()), "{}", q.code());
        }
        for wrong in [
            "",
            "bad",
            "bad:",
            "ok",
            "bad:device_exception(300)",
            "worse:stale",
        ] {
            assert!(
                wrong.parse::<Quality>().is_err(),
                "{wrong:?} must not parse"
            );
        }
    }
}
