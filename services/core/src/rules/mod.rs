//! Control rules of a device type: hysteresis control and interlocks. How they are configured
//! is here; [`evaluator::LineRules`] evaluates them on every batch and says which writes they
//! ask for. Rules write through the processor's one safe write path; an active interlock
//! overrides every other writer of its output.

pub mod evaluator;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    alarm::{AlarmConfig, AlarmKind, DiscreteValue, Priority},
    names::name_problem,
};

pub use evaluator::{Hold, Intent, LineRules, RETRY_NS, RuleOutcome, Trip, same};

/// One control rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleConfig {
    /// Two-point control around a setpoint: with `on_below`, the output goes on when the input
    /// falls below `setpoint - band` and off when it rises above `setpoint + band` (a pump
    /// filling a tank, a heater); with `on_above` the other way round (a cooling fan).
    Hysteresis {
        name: String,
        /// The measured tag.
        input: String,
        /// The writable bool tag switched on and off.
        output: String,
        setpoint: f64,
        /// Half the width of the dead zone around the setpoint.
        band: f64,
        #[serde(default)]
        action: HysteresisAction,
    },
    /// While the input is at or above `above` (or at or below `below`), the output is forced
    /// to `value` and every other write to it is refused; an alarm is raised while it trips
    /// (active at the same limit).
    Interlock {
        name: String,
        input: String,
        #[serde(default)]
        above: Option<f64>,
        #[serde(default)]
        below: Option<f64>,
        output: String,
        /// What the output is forced to, e.g. `false` (pump off): `true`, `false` or a
        /// number.
        value: DiscreteValue,
        /// Text of the alarm raised while the interlock trips.
        #[serde(default)]
        message: Option<String>,
        /// A Bad input trips the interlock too (fail safe). Default true.
        #[serde(default = "default_true")]
        trip_on_bad: bool,
    },
}

fn default_true() -> bool {
    true
}

/// Which side of the setpoint turns a hysteresis output on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HysteresisAction {
    #[default]
    OnBelow,
    OnAbove,
}

impl RuleConfig {
    pub fn name(&self) -> &str {
        match self {
            RuleConfig::Hysteresis { name, .. } | RuleConfig::Interlock { name, .. } => name,
        }
    }

    pub fn input(&self) -> &str {
        match self {
            RuleConfig::Hysteresis { input, .. } | RuleConfig::Interlock { input, .. } => input,
        }
    }

    pub fn output(&self) -> &str {
        match self {
            RuleConfig::Hysteresis { output, .. } | RuleConfig::Interlock { output, .. } => output,
        }
    }

    /// Every problem with its path. `tags` are the tags of the device type's devices with
    /// whether each is writable.
    pub fn validate(&self, at: &str, tags: &[(&str, bool)]) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if let Some(p) = name_problem(self.name()) {
            errors.push((format!("{at}.name"), format!("name {p}")));
        }
        let known = |t: &str| tags.iter().find(|(n, _)| *n == t).map(|(_, w)| *w);
        if known(self.input()).is_none() {
            errors.push((
                format!("{at}.input"),
                format!("no tag {:?} on the devices of this type", self.input()),
            ));
        }
        match known(self.output()) {
            None => errors.push((
                format!("{at}.output"),
                format!("no tag {:?} on the devices of this type", self.output()),
            )),
            Some(false) => errors.push((
                format!("{at}.output"),
                format!("tag {:?} is not writable", self.output()),
            )),
            Some(true) => {}
        }
        match self {
            RuleConfig::Hysteresis { setpoint, band, .. } => {
                if !setpoint.is_finite() {
                    errors.push((format!("{at}.setpoint"), "must be a number".into()));
                }
                if !(band.is_finite() && *band >= 0.0) {
                    errors.push((format!("{at}.band"), "must be 0 or more".into()));
                }
            }
            RuleConfig::Interlock {
                above,
                below,
                value,
                ..
            } => {
                if above.is_none() && below.is_none() {
                    errors.push((
                        at.to_string(),
                        "an interlock needs `above` or `below`".into(),
                    ));
                }
                if above.is_some_and(|v| !v.is_finite()) || below.is_some_and(|v| !v.is_finite()) {
                    errors.push((at.to_string(), "limits must be numbers".into()));
                }
                if evaluator::forced_value(value).is_none() {
                    errors.push((
                        format!("{at}.value"),
                        "must be true, false or a number".into(),
                    ));
                }
            }
        }
        errors
    }

    /// The alarms an interlock raises while it trips: one on its input per limit, critical,
    /// without delay, active at the same limit it trips at. With both limits the two alarms
    /// are told apart by a `-high`/`-low` suffix. A hysteresis rule raises none.
    pub fn alarms(&self) -> Vec<AlarmConfig> {
        let RuleConfig::Interlock {
            name,
            input,
            above,
            below,
            message,
            ..
        } = self
        else {
            return Vec::new();
        };
        let both = above.is_some() && below.is_some();
        let mut out = Vec::new();
        for (kind, limit) in [(AlarmKind::High, above), (AlarmKind::Low, below)] {
            let Some(limit) = limit else { continue };
            let alarm = if both {
                format!("{name}-{kind}")
            } else {
                name.clone()
            };
            let text = message
                .clone()
                .unwrap_or_else(|| format!("interlock {name} tripped: {input} {kind} {limit}"));
            out.push(AlarmConfig {
                limit: Some(*limit),
                priority: Priority::Critical,
                message: Some(text),
                ..AlarmConfig::new(alarm, input.clone(), kind)
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Value;

    fn interlock(value: &str, limits: &str) -> RuleConfig {
        serde_yaml::from_str(&format!(
            "{{ kind: interlock, name: trip, input: pressure, {limits}, output: pump, value: {value} }}"
        ))
        .unwrap()
    }

    fn forced(rule: &RuleConfig) -> Option<Value> {
        match rule {
            RuleConfig::Interlock { value, .. } => evaluator::forced_value(value),
            RuleConfig::Hysteresis { .. } => None,
        }
    }

    #[test]
    fn an_interlock_forces_a_bool_or_a_number_written_as_before() {
        let tags = [("pressure", false), ("pump", true)];
        for (yaml, want) in [
            ("false", Value::Bool(false)),
            ("true", Value::Bool(true)),
            ("0", Value::I64(0)),
            ("-3", Value::I64(-3)),
            ("1.5", Value::F64(1.5)),
        ] {
            let rule = interlock(yaml, "above: 3.0");
            assert_eq!(rule.validate("r", &tags), vec![], "{yaml}");
            assert_eq!(forced(&rule), Some(want), "{yaml}");
        }
        for yaml in ["off", "\"false\"", ".nan"] {
            let rule = interlock(yaml, "above: 3.0");
            assert_eq!(
                rule.validate("r", &tags),
                vec![(
                    "r.value".to_string(),
                    "must be true, false or a number".to_string()
                )],
                "{yaml}"
            );
            assert_eq!(forced(&rule), None, "{yaml}");
        }
    }

    #[test]
    fn an_interlock_raises_a_critical_alarm_per_limit() {
        let one = interlock("false", "above: 3.0").alarms();
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].name.as_str(), one[0].tag.as_str(), one[0].kind),
            ("trip", "pressure", AlarmKind::High)
        );
        assert_eq!(one[0].limit, Some(3.0));
        assert_eq!(one[0].priority, Priority::Critical);
        assert_eq!(
            one[0].message.as_deref(),
            Some("interlock trip tripped: pressure high 3")
        );
        let both = interlock("false", "above: 3.0, below: 0.5").alarms();
        assert_eq!(
            both.iter()
                .map(|a| (a.name.as_str(), a.kind))
                .collect::<Vec<_>>(),
            [("trip-high", AlarmKind::High), ("trip-low", AlarmKind::Low)]
        );
        assert!(both.iter().all(|a| a.resolve().is_ok()));
        let hysteresis: RuleConfig = serde_yaml::from_str(
            "{ kind: hysteresis, name: fill, input: level, output: pump, setpoint: 50, band: 2 }",
        )
        .unwrap();
        assert!(hysteresis.alarms().is_empty());
    }
}
