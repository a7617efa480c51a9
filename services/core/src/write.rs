//! The one check every write passes before anything is sent to a device: in the processor,
//! for the MES and for control rules, and again in the adapter's driver as the last line of
//! defence. It is a pure function of the tag's limits, the value asked for, the tag's current
//! value, its last write, the interlock holding it and the time, so the places that check
//! cannot disagree.

use crate::{
    config::TagConfig,
    rules::evaluator::{Hold, same},
    sample::Value,
};

/// What a tag allows a write to do.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriteLimits {
    pub writable: bool,
    /// Lowest number a write may set.
    pub min: Option<f64>,
    /// Highest number a write may set.
    pub max: Option<f64>,
    /// Largest change from the current value one write may make.
    pub max_step: Option<f64>,
    /// Least time between two writes (ns); 0 for none.
    pub min_interval_ns: i64,
}

impl WriteLimits {
    pub fn of(tag: &TagConfig) -> Self {
        Self {
            writable: tag.writable,
            min: tag.min,
            max: tag.max,
            max_step: tag.max_step,
            min_interval_ns: tag
                .min_write_interval
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        }
    }
}

/// One write as it is about to be made.
#[derive(Debug, Clone, Copy)]
pub struct Proposed<'a> {
    /// The command's id, its idempotency key.
    pub id: &'a str,
    pub tag: &'a str,
    pub value: Option<&'a Value>,
    /// The tag's value now, when known.
    pub current: Option<&'a Value>,
    /// When the tag was last written (ns), when it was.
    pub last_write_ns: Option<i64>,
    /// Latest time the write may still be made (ns); 0 for no deadline.
    pub deadline_ns: i64,
    pub now_ns: i64,
    /// The interlock that holds the tag now, if one does (the processor knows; a driver
    /// does not).
    pub held: Option<&'a Hold>,
    /// Who writes: a rule's name, or `mes`. The rule holding a tag may write it.
    pub source: &'a str,
}

/// Why a write is refused: which check (`by`, the `rejected_by` of the command's result)
/// and what it found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    pub by: &'static str,
    pub detail: String,
}

fn refuse(by: &'static str, detail: impl Into<String>) -> Result<(), Refusal> {
    Err(Refusal {
        by,
        detail: detail.into(),
    })
}

/// Checks `write` against `limits`, in this order: a command id, writable, a value, finite and
/// within min and max (a bool is not a number here), the deadline, the interlock holding the
/// tag (only the protective value passes, or the interlock's own write), the step from a known
/// current value, and the least time between writes.
pub fn check(limits: &WriteLimits, write: &Proposed<'_>) -> Result<(), Refusal> {
    if write.id.is_empty() {
        return refuse("command_id", "a command needs an id (its idempotency key)");
    }
    if !limits.writable {
        return refuse("not_writable", format!("tag {} is not writable", write.tag));
    }
    let Some(value) = write.value else {
        return refuse("value", "the command carries no value");
    };
    let number = match value {
        Value::Bool(_) | Value::String(_) => None,
        v => v.as_f64(),
    };
    if let Some(x) = number {
        if !x.is_finite() {
            return refuse("value", format!("{x} is not a finite number"));
        }
        if let Some(min) = limits.min
            && x < min
        {
            return refuse("min", format!("{x} is below the minimum {min}"));
        }
        if let Some(max) = limits.max
            && x > max
        {
            return refuse("max", format!("{x} is above the maximum {max}"));
        }
    }
    if write.deadline_ns > 0 && write.now_ns > write.deadline_ns {
        return refuse(
            "deadline",
            format!(
                "the deadline passed {} ms before it could be written",
                (write.now_ns - write.deadline_ns) / 1_000_000
            ),
        );
    }
    if let Some(hold) = write.held
        && hold.rule != write.source
        && !same(&hold.value, value)
    {
        let detail = if hold.unknown {
            format!(
                "interlock {} has had no good reading of its input since the processor started; until it has, it holds {} at {}",
                hold.rule, write.tag, hold.value
            )
        } else {
            format!(
                "interlock {} holds {} at {}",
                hold.rule, write.tag, hold.value
            )
        };
        return refuse("interlock", detail);
    }
    if let (Some(step), Some(x), Some(old)) = (
        limits.max_step,
        number,
        write.current.and_then(Value::as_f64),
    ) && (x - old).abs() > step
    {
        return refuse(
            "max_step",
            format!("{x} is more than {step} away from the current {old}"),
        );
    }
    if limits.min_interval_ns > 0
        && let Some(last) = write.last_write_ns
        && write.now_ns - last < limits.min_interval_ns
    {
        return refuse(
            "rate_limit",
            format!(
                "{} was written {} ms ago; at most once every {} ms",
                write.tag,
                (write.now_ns - last) / 1_000_000,
                limits.min_interval_ns / 1_000_000
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WriteLimits = WriteLimits {
        writable: true,
        min: Some(10.0),
        max: Some(90.0),
        max_step: Some(10.0),
        min_interval_ns: 2_000_000_000,
    };

    fn write(value: &Value) -> Proposed<'_> {
        Proposed {
            id: "c1",
            tag: "setpoint",
            value: Some(value),
            current: None,
            last_write_ns: None,
            deadline_ns: 0,
            now_ns: 10_000_000_000,
            held: None,
            source: "mes",
        }
    }

    fn refused_by(limits: &WriteLimits, w: &Proposed<'_>) -> Option<&'static str> {
        check(limits, w).err().map(|r| r.by)
    }

    #[test]
    fn each_check_refuses_with_its_name() {
        let v = Value::F64(50.0);
        assert_eq!(refused_by(&LIMITS, &write(&v)), None);
        assert_eq!(
            refused_by(
                &LIMITS,
                &Proposed {
                    id: "",
                    ..write(&v)
                }
            ),
            Some("command_id")
        );
        let ro = WriteLimits {
            writable: false,
            ..LIMITS
        };
        assert_eq!(refused_by(&ro, &write(&v)), Some("not_writable"));
        assert_eq!(
            refused_by(
                &LIMITS,
                &Proposed {
                    value: None,
                    ..write(&v)
                }
            ),
            Some("value")
        );
        assert_eq!(
            refused_by(&LIMITS, &write(&Value::F64(f64::NAN))),
            Some("value")
        );
        assert_eq!(refused_by(&LIMITS, &write(&Value::F64(9.9))), Some("min"));
        assert_eq!(refused_by(&LIMITS, &write(&Value::I64(91))), Some("max"));
        let late = Proposed {
            deadline_ns: 1,
            ..write(&v)
        };
        assert_eq!(refused_by(&LIMITS, &late), Some("deadline"));
        let current = Value::F64(30.0);
        let step = Proposed {
            current: Some(&current),
            ..write(&v)
        };
        assert_eq!(refused_by(&LIMITS, &step), Some("max_step"));
        let soon = Proposed {
            last_write_ns: Some(9_000_000_000),
            ..write(&v)
        };
        assert_eq!(refused_by(&LIMITS, &soon), Some("rate_limit"));
        let later = Proposed {
            last_write_ns: Some(7_000_000_000),
            ..write(&v)
        };
        assert_eq!(refused_by(&LIMITS, &later), None);
    }

    #[test]
    fn an_interlock_lets_only_its_protective_value_or_its_own_write_through() {
        let hold = Hold {
            rule: "trip".into(),
            value: Value::Bool(false),
            unknown: false,
        };
        let pump = WriteLimits::default();
        let pump = WriteLimits {
            writable: true,
            ..pump
        };
        let on = Value::Bool(true);
        let off = Value::Bool(false);
        let held = |v| Proposed {
            held: Some(&hold),
            ..write(v)
        };
        assert_eq!(refused_by(&pump, &held(&on)), Some("interlock"));
        assert_eq!(refused_by(&pump, &held(&off)), None);
        assert_eq!(
            refused_by(
                &pump,
                &Proposed {
                    source: "trip",
                    ..held(&on)
                }
            ),
            None
        );
    }

    #[test]
    fn bools_and_strings_are_not_numbers_for_the_limits() {
        let limits = WriteLimits {
            max: Some(0.0),
            ..LIMITS
        };
        assert_eq!(refused_by(&limits, &write(&Value::Bool(true))), None);
        assert_eq!(
            refused_by(&limits, &write(&Value::String("on".into()))),
            None
        );
    }

    #[test]
    fn an_unknown_current_value_skips_only_the_step_check() {
        let far = Value::F64(89.0);
        assert_eq!(refused_by(&LIMITS, &write(&far)), None);
    }
}
