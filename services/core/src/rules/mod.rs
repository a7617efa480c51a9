//! Control rules of a device type: hysteresis control and interlocks. How they are configured
//! is here; [`evaluator::LineRules`] evaluates them on every batch and says which writes they
//! ask for. Rules write through the processor's one safe write path; an active interlock
//! overrides every other writer of its output.

pub mod evaluator;

use std::time::Duration;

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
                name: alarm,
                tag: input.clone(),
                kind,
                limit: Some(*limit),
                deadband: None,
                setpoint: None,
                setpoint_tag: None,
                active_when: None,
                on_delay: Duration::ZERO,
                off_delay: Duration::ZERO,
                priority: Priority::Critical,
                message: Some(text),
            });
        }
        out
    }
}
