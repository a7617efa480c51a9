//! What a built-in plugin sees of one batch and where it puts what it derives: the batch, its
//! timestamp, what earlier plugins derived from it, and the samples and events it adds. The
//! processor's plugin host makes one [`Context`] per plugin per batch; the plugin itself only
//! reads and appends, so it is tested without the host.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sample::{Quality, QualityReason, Sample, SampleBatch, Value};

/// An event raised by a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginEvent {
    /// The plugin that raised it, e.g. `script plugins/cnc.rhai` or `counter parts_total`.
    pub plugin: String,
    pub line: String,
    pub device: String,
    /// What happened, e.g. `counter_reset`, `low_efficiency` or a script's own kind.
    pub kind: String,
    /// For people.
    pub message: String,
    /// Further values a script attached.
    pub fields: Vec<(String, Value)>,
    /// The batch's timestamp, in nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
}

/// What a plugin sees of the batch and where it puts what it derives.
pub struct Context<'a> {
    pub batch: &'a SampleBatch,
    /// The batch's timestamp: its newest source timestamp. Every derived sample carries it.
    pub ts: i64,
    /// What earlier plugins derived from this batch.
    pub derived: &'a [Sample],
    /// The plugin's label, for the events it raises.
    pub plugin: &'a str,
    /// The samples this plugin derives.
    pub emit: &'a mut Vec<Sample>,
    /// The events this plugin raises.
    pub events: &'a mut Vec<PluginEvent>,
}

impl Context<'_> {
    /// The samples of `tag` in this batch, oldest first, then what earlier plugins derived.
    pub fn samples_of<'s>(&'s self, tag: &'s str) -> impl Iterator<Item = &'s Sample> + 's {
        self.batch
            .samples
            .iter()
            .chain(self.derived.iter())
            .filter(move |s| s.tag == tag)
    }

    /// Derives a Good sample of `tag`.
    pub fn good(&mut self, tag: &str, value: Value) {
        self.emit.push(Sample::good(tag, value, self.ts));
    }

    /// Derives a Bad (processing) sample of `tag` that says why it has no value.
    pub fn bad(&mut self, tag: &str, detail: impl Into<String>) {
        self.emit.push(Sample::bad(
            tag,
            Quality::bad(QualityReason::Processing, detail),
            self.ts,
        ));
    }

    /// Raises an event with the batch's line, device and timestamp.
    pub fn event(&mut self, kind: &str, message: String, fields: Vec<(String, Value)>) {
        self.events.push(PluginEvent {
            plugin: self.plugin.to_string(),
            line: self.batch.line.clone(),
            device: self.batch.device.clone(),
            kind: kind.to_string(),
            message,
            fields,
            timestamp_ns: self.ts,
        });
    }
}

/// Why a built-in could not use an input reading; the text becomes the detail of the Bad
/// samples it derives instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// The reading is Bad, or carries no value.
    #[error("input {tag} is {quality}")]
    NoValue { tag: String, quality: Quality },
    #[error("input {tag} holds {value}, not a number")]
    NotANumber { tag: String, value: Value },
    #[error("input {tag} holds {value}, not a run flag")]
    NotAFlag { tag: String, value: Value },
    #[error("counter value {0} is negative")]
    NegativeCount(Reading),
    #[error("counter value {value} is not below its rollover {rollover}")]
    NotBelowRollover { value: Reading, rollover: u64 },
}

/// A counter or flag reading as a number the built-ins can work with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Reading {
    Int(i128),
    Float(f64),
}

impl Reading {
    /// The sample's value as a number: Good or Uncertain, an integer or a finite float.
    pub fn of(sample: &Sample) -> Result<Reading, InputError> {
        match (&sample.quality, &sample.value) {
            (Quality::Bad { .. }, _) | (_, None) => Err(InputError::NoValue {
                tag: sample.tag.clone(),
                quality: sample.quality.clone(),
            }),
            (_, Some(Value::I64(v))) => Ok(Reading::Int(i128::from(*v))),
            (_, Some(Value::U64(v))) => Ok(Reading::Int(i128::from(*v))),
            (_, Some(Value::F64(v))) if v.is_finite() => Ok(Reading::Float(*v)),
            (_, Some(v)) => Err(InputError::NotANumber {
                tag: sample.tag.clone(),
                value: v.clone(),
            }),
        }
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Reading::Int(v) => v as f64,
            Reading::Float(v) => v,
        }
    }

    /// As a tag value: an unsigned integer when it fits, else a float.
    pub fn to_value(self) -> Value {
        match self {
            Reading::Int(v) => match u64::try_from(v) {
                Ok(u) => Value::U64(u),
                Err(_) => Value::F64(v as f64),
            },
            Reading::Float(v) => Value::F64(v),
        }
    }
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reading::Int(v) => write!(f, "{v}"),
            Reading::Float(v) => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_and_non_numeric_readings_are_refused_with_the_tag() {
        let bad = Sample::bad("units", Quality::bad(QualityReason::CommFailure, ""), 1);
        assert!(
            Reading::of(&bad)
                .unwrap_err()
                .to_string()
                .contains("units is bad:comm_failure")
        );
        let text = Sample::good("units", Value::String("x".into()), 1);
        assert!(
            Reading::of(&text)
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        let nan = Sample::good("units", Value::F64(f64::NAN), 1);
        assert!(Reading::of(&nan).is_err());
        let big = Sample::good("units", Value::U64(u64::MAX), 1);
        assert_eq!(Reading::of(&big), Ok(Reading::Int(i128::from(u64::MAX))));
    }
}
