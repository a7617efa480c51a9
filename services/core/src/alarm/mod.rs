//! Alarms (ISA-18.2): how an alarm is configured, and the state machine that evaluates it.
//!
//! An alarm is defined per device type ([`AlarmConfig`]) and instantiated once per device of
//! that type. [`AlarmConfig::resolve`] turns the flat configuration into an
//! [`AlarmDefinition`] whose [`Condition`] names exactly what is evaluated; the
//! [`machine::AlarmMachine`] then takes samples, time and operator actions and returns the
//! state transitions the rest of the pipeline stores and shows; [`set::LineAlarms`] holds the
//! machines of every alarm instance of a line and turns their transitions into
//! [`AlarmEvent`]s.
//!
//! ```yaml
//! alarms:
//!   - name: temp-high
//!     tag: temperature
//!     kind: high            # high_high | high | low | low_low: limit, deadband
//!     limit: 80
//!     deadband: 2           # clears below 78
//!     on_delay: 5s          # the value must stay at or above 80 for 5s
//!     priority: high        # low | medium (default) | high | critical
//!     message: Oven too hot
//!   - name: temp-rising
//!     tag: temperature
//!     kind: rate_of_change  # limit in units per second between consecutive samples
//!     limit: 0.5
//!   - name: temp-off-target
//!     tag: temperature
//!     kind: deviation       # |value - setpoint| reaches limit
//!     setpoint_tag: temperature_sp   # or `setpoint: 180`
//!     limit: 10
//!     deadband: 1
//!   - name: door-open
//!     tag: door_closed
//!     kind: discrete
//!     active_when: false    # a bool, a number or a text the tag equals while in alarm
//!     off_delay: 2s
//!   - name: temp-bad
//!     tag: temperature
//!     kind: bad_quality     # active while the tag's samples are Bad
//!     on_delay: 10s
//! ```

pub mod machine;
pub mod set;

use std::{collections::HashSet, fmt, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{names::name_problem, sample::Value};

pub use machine::{
    ActionRefused, AlarmMachine, AlarmSnapshot, AlarmState, AlarmTransition, Cause, SampleOutcome,
    SnapshotError,
};
pub use set::{AlarmEvent, BatchAlarms, LineAlarms, alarm_id};

/// One alarm of a device type: the tag it watches, its condition, delays and priority.
///
/// Which of `limit`, `deadband`, `setpoint`, `setpoint_tag` and `active_when` apply depends on
/// `kind`; [`AlarmConfig::validate`] reports a missing one and one that does not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Alarm name, `[a-z0-9_-]`, unique within the device type; part of the alarm id.
    pub name: String,
    /// The tag whose samples the alarm evaluates, a tag of the device.
    pub tag: String,
    /// What makes the alarm active: `high_high`, `high`, `low`, `low_low` (a limit),
    /// `rate_of_change`, `deviation` (from a setpoint), `discrete` (a value) or `bad_quality`.
    pub kind: AlarmKind,
    /// `high_high`/`high`: active at or above it; `low`/`low_low`: at or below it;
    /// `rate_of_change`: active when the value changes at least this many units per second;
    /// `deviation`: active when |value − setpoint| reaches it.
    #[serde(default)]
    pub limit: Option<f64>,
    /// How far back past the limit the value (rate, deviation) must go before the alarm
    /// clears, so a value hovering at the limit does not chatter. 0 when absent.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// `deviation`: a fixed setpoint.
    #[serde(default)]
    pub setpoint: Option<f64>,
    /// `deviation`: a tag of the same device that holds the setpoint.
    #[serde(default)]
    pub setpoint_tag: Option<String>,
    /// `discrete`: the value (a bool, a number or a text) the tag has while the alarm is
    /// active.
    #[serde(default)]
    pub active_when: Option<DiscreteValue>,
    /// How long the condition must hold before the alarm activates, e.g. `5s`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub on_delay: Duration,
    /// How long the condition must stay away before the alarm clears, e.g. `2s`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub off_delay: Duration,
    /// low, medium, high or critical.
    #[serde(default)]
    pub priority: Priority,
    /// Text shown to operators; a description of the condition when absent.
    #[serde(default)]
    pub message: Option<String>,
}

/// What makes an alarm active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    HighHigh,
    High,
    Low,
    LowLow,
    RateOfChange,
    Deviation,
    Discrete,
    BadQuality,
}

impl AlarmKind {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::HighHigh => "high_high",
            AlarmKind::High => "high",
            AlarmKind::Low => "low",
            AlarmKind::LowLow => "low_low",
            AlarmKind::RateOfChange => "rate_of_change",
            AlarmKind::Deviation => "deviation",
            AlarmKind::Discrete => "discrete",
            AlarmKind::BadQuality => "bad_quality",
        }
    }

    /// The short code carried in `AlarmEvent.kind` on the wire.
    pub fn code(self) -> &'static str {
        match self {
            AlarmKind::HighHigh => "hihi",
            AlarmKind::High => "hi",
            AlarmKind::Low => "lo",
            AlarmKind::LowLow => "lolo",
            AlarmKind::RateOfChange => "rate",
            AlarmKind::Deviation => "deviation",
            AlarmKind::Discrete => "discrete",
            AlarmKind::BadQuality => "bad_quality",
        }
    }
}

impl fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgently operators must respond.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Priority {
    /// The number carried in `AlarmEvent.priority`: low 1, medium 2, high 3, critical 4
    /// (larger is more urgent; 0 is never sent).
    pub fn number(self) -> u32 {
        match self {
            Priority::Low => 1,
            Priority::Medium => 2,
            Priority::High => 3,
            Priority::Critical => 4,
        }
    }
}

/// The value a discrete alarm's tag has while the alarm is active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DiscreteValue {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl DiscreteValue {
    /// Whether `value` is this value. A bool matches a bool, or a number that is 0 (false) or
    /// not 0 (true); a number matches any numeric value equal to it (a bool as 0 or 1); a text
    /// matches an equal text. `None` when the value's type cannot be compared with this one.
    pub fn matches(&self, value: &Value) -> Option<bool> {
        match (self, value) {
            (DiscreteValue::Bool(want), Value::Bool(got)) => Some(want == got),
            (DiscreteValue::Bool(want), other) => other
                .as_f64()
                .filter(|v| v.is_finite())
                .map(|v| (v != 0.0) == *want),
            (DiscreteValue::Number(want), other) => {
                other.as_f64().filter(|v| v.is_finite()).map(|v| v == *want)
            }
            (DiscreteValue::Text(want), Value::String(got)) => Some(want == got),
            (DiscreteValue::Text(_), _) => None,
        }
    }
}

impl fmt::Display for DiscreteValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscreteValue::Bool(b) => write!(f, "{b}"),
            DiscreteValue::Number(n) => write!(f, "{n}"),
            DiscreteValue::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// A threshold and the band the value must leave before the alarm clears.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub limit: f64,
    pub deadband: f64,
}

/// Where a deviation alarm's setpoint comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Setpoint {
    Fixed(f64),
    /// A tag of the same device.
    Tag(String),
}

/// The condition of a validated alarm; each kind carries exactly what it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    HighHigh(Limit),
    High(Limit),
    Low(Limit),
    LowLow(Limit),
    RateOfChange(Limit),
    Deviation { setpoint: Setpoint, limit: Limit },
    Discrete { active_when: DiscreteValue },
    BadQuality,
}

impl Condition {
    pub fn kind(&self) -> AlarmKind {
        match self {
            Condition::HighHigh(_) => AlarmKind::HighHigh,
            Condition::High(_) => AlarmKind::High,
            Condition::Low(_) => AlarmKind::Low,
            Condition::LowLow(_) => AlarmKind::LowLow,
            Condition::RateOfChange(_) => AlarmKind::RateOfChange,
            Condition::Deviation { .. } => AlarmKind::Deviation,
            Condition::Discrete { .. } => AlarmKind::Discrete,
            Condition::BadQuality => AlarmKind::BadQuality,
        }
    }

    /// The setpoint tag, for a deviation alarm that has one.
    pub fn setpoint_tag(&self) -> Option<&str> {
        match self {
            Condition::Deviation {
                setpoint: Setpoint::Tag(tag),
                ..
            } => Some(tag),
            _ => None,
        }
    }

    fn describe(&self, tag: &str) -> String {
        match self {
            Condition::HighHigh(l) | Condition::High(l) => format!("{tag} at or above {}", l.limit),
            Condition::Low(l) | Condition::LowLow(l) => format!("{tag} at or below {}", l.limit),
            Condition::RateOfChange(l) => {
                format!("{tag} changing by {} or more per second", l.limit)
            }
            Condition::Deviation {
                setpoint: Setpoint::Fixed(sp),
                limit,
            } => format!("{tag} {} or more away from {sp}", limit.limit),
            Condition::Deviation {
                setpoint: Setpoint::Tag(sp),
                limit,
            } => format!("{tag} {} or more away from {sp}", limit.limit),
            Condition::Discrete { active_when } => format!("{tag} is {active_when}"),
            Condition::BadQuality => format!("{tag} quality is bad"),
        }
    }
}

/// A validated alarm, ready to be evaluated by an [`AlarmMachine`].
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmDefinition {
    pub name: String,
    pub tag: String,
    pub condition: Condition,
    /// ns the condition must hold before the alarm activates.
    pub on_delay_ns: i64,
    /// ns the condition must stay away before the alarm clears.
    pub off_delay_ns: i64,
    pub priority: Priority,
    /// The configured message, or a description of the condition.
    pub message: String,
}

impl AlarmDefinition {
    pub fn kind(&self) -> AlarmKind {
        self.condition.kind()
    }
}

/// Fields of [`AlarmConfig`] that only some kinds use, for "does not apply" checks.
const OPTIONAL_FIELDS: [&str; 5] = [
    "limit",
    "deadband",
    "setpoint",
    "setpoint_tag",
    "active_when",
];

impl AlarmConfig {
    /// An alarm of `kind` on `tag` with nothing else set: no limit, deadband or setpoint, no
    /// delays, medium priority, the condition's description as its message.
    pub fn new(name: impl Into<String>, tag: impl Into<String>, kind: AlarmKind) -> Self {
        Self {
            name: name.into(),
            tag: tag.into(),
            kind,
            limit: None,
            deadband: None,
            setpoint: None,
            setpoint_tag: None,
            active_when: None,
            on_delay: Duration::ZERO,
            off_delay: Duration::ZERO,
            priority: Priority::default(),
            message: None,
        }
    }

    /// Checks the alarm on its own and against the tags of its device, returning every
    /// problem with its path below `path` (the alarm's own path, e.g.
    /// `device_types.oven.alarms[2]`).
    pub fn validate(&self, path: &str, tag_names: &[&str]) -> Vec<(String, String)> {
        let mut problems: Vec<(String, String)> = match self.resolve() {
            Ok(_) => Vec::new(),
            Err(found) => found
                .into_iter()
                .map(|(field, message)| (format!("{path}.{field}"), message))
                .collect(),
        };
        let mut check_tag = |field: &str, tag: &str| {
            if name_problem(tag).is_none() && !tag_names.contains(&tag) {
                problems.push((
                    format!("{path}.{field}"),
                    format!("the device has no tag {tag:?}"),
                ));
            }
        };
        check_tag("tag", &self.tag);
        if let Some(sp) = &self.setpoint_tag {
            check_tag("setpoint_tag", sp);
        }
        problems
    }

    /// Turns the configuration into the condition it describes, or lists what is wrong, each
    /// problem with the field it concerns. Tag existence is checked by [`Self::validate`].
    pub fn resolve(&self) -> Result<AlarmDefinition, Vec<(&'static str, String)>> {
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        if let Some(p) = name_problem(&self.name) {
            problems.push(("name", format!("name {p}")));
        }
        if let Some(p) = name_problem(&self.tag) {
            problems.push(("tag", format!("tag name {p}")));
        }
        let kind = self.kind;
        let uses: &[&str] = match kind {
            AlarmKind::HighHigh | AlarmKind::High | AlarmKind::Low | AlarmKind::LowLow => {
                &["limit", "deadband"]
            }
            AlarmKind::RateOfChange => &["limit", "deadband"],
            AlarmKind::Deviation => &["limit", "deadband", "setpoint", "setpoint_tag"],
            AlarmKind::Discrete => &["active_when"],
            AlarmKind::BadQuality => &[],
        };
        for field in OPTIONAL_FIELDS {
            let given = match field {
                "limit" => self.limit.is_some(),
                "deadband" => self.deadband.is_some(),
                "setpoint" => self.setpoint.is_some(),
                "setpoint_tag" => self.setpoint_tag.is_some(),
                _ => self.active_when.is_some(),
            };
            if given && !uses.contains(&field) {
                problems.push((field, format!("does not apply to a {kind} alarm")));
            }
        }

        let deadband = match self.deadband {
            None => 0.0,
            Some(d) if !d.is_finite() => {
                problems.push(("deadband", "must be a number".into()));
                0.0
            }
            Some(d) if d < 0.0 => {
                problems.push(("deadband", "must not be negative".into()));
                0.0
            }
            Some(d) => d,
        };
        let limit = if uses.contains(&"limit") {
            match self.limit {
                None => {
                    problems.push(("limit", format!("a {kind} alarm needs a limit")));
                    None
                }
                Some(l) if !l.is_finite() => {
                    problems.push(("limit", "must be a number".into()));
                    None
                }
                Some(l)
                    if matches!(kind, AlarmKind::RateOfChange | AlarmKind::Deviation)
                        && l <= 0.0 =>
                {
                    problems.push((
                        "limit",
                        format!("{l} must be more than 0 for a {kind} alarm"),
                    ));
                    None
                }
                Some(l) => Some(l),
            }
        } else {
            None
        };
        // A rate or deviation is never below 0, so a band reaching 0 would never clear.
        if let Some(l) = limit
            && matches!(kind, AlarmKind::RateOfChange | AlarmKind::Deviation)
            && deadband >= l
        {
            problems.push((
                "deadband",
                format!("{deadband} must be less than the limit {l}, or the alarm never clears"),
            ));
        }
        let setpoint = if kind == AlarmKind::Deviation {
            match (self.setpoint, &self.setpoint_tag) {
                (Some(_), Some(_)) => {
                    problems.push(("setpoint", "give setpoint or setpoint_tag, not both".into()));
                    None
                }
                (None, None) => {
                    problems.push((
                        "setpoint",
                        "a deviation alarm needs setpoint (a number) or setpoint_tag".into(),
                    ));
                    None
                }
                (Some(sp), None) if !sp.is_finite() => {
                    problems.push(("setpoint", "must be a number".into()));
                    None
                }
                (Some(sp), None) => Some(Setpoint::Fixed(sp)),
                (None, Some(tag)) => {
                    if let Some(p) = name_problem(tag) {
                        problems.push(("setpoint_tag", format!("tag name {p}")));
                        None
                    } else if *tag == self.tag {
                        problems.push((
                            "setpoint_tag",
                            "must be another tag than the one the alarm watches".into(),
                        ));
                        None
                    } else {
                        Some(Setpoint::Tag(tag.clone()))
                    }
                }
            }
        } else {
            None
        };
        let active_when = if kind == AlarmKind::Discrete {
            match &self.active_when {
                None => {
                    problems.push((
                        "active_when",
                        "a discrete alarm needs the value that makes it active".into(),
                    ));
                    None
                }
                Some(DiscreteValue::Number(n)) if !n.is_finite() => {
                    problems.push(("active_when", "must be a finite number".into()));
                    None
                }
                Some(v) => Some(v.clone()),
            }
        } else {
            None
        };
        let mut delay = |field: &'static str, d: Duration| match i64::try_from(d.as_nanos()) {
            Ok(ns) => ns,
            Err(_) => {
                problems.push((field, "is too long".into()));
                0
            }
        };
        let on_delay_ns = delay("on_delay", self.on_delay);
        let off_delay_ns = delay("off_delay", self.off_delay);
        if self.message.as_ref().is_some_and(|m| m.trim().is_empty()) {
            problems.push(("message", "must not be empty; leave it out instead".into()));
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        let lim = |limit: f64| Limit { limit, deadband };
        let condition = match (kind, limit, setpoint, active_when) {
            (AlarmKind::HighHigh, Some(l), _, _) => Condition::HighHigh(lim(l)),
            (AlarmKind::High, Some(l), _, _) => Condition::High(lim(l)),
            (AlarmKind::Low, Some(l), _, _) => Condition::Low(lim(l)),
            (AlarmKind::LowLow, Some(l), _, _) => Condition::LowLow(lim(l)),
            (AlarmKind::RateOfChange, Some(l), _, _) => Condition::RateOfChange(lim(l)),
            (AlarmKind::Deviation, Some(l), Some(setpoint), _) => Condition::Deviation {
                setpoint,
                limit: lim(l),
            },
            (AlarmKind::Discrete, _, _, Some(active_when)) => Condition::Discrete { active_when },
            (AlarmKind::BadQuality, _, _, _) => Condition::BadQuality,
            // Every missing piece was reported above.
            _ => return Err(vec![("kind", format!("incomplete {kind} alarm"))]),
        };
        let message = self
            .message
            .clone()
            .unwrap_or_else(|| condition.describe(&self.tag));
        Ok(AlarmDefinition {
            name: self.name.clone(),
            tag: self.tag.clone(),
            condition,
            on_delay_ns,
            off_delay_ns,
            priority: self.priority,
            message,
        })
    }
}

/// Checks the alarms of one device type: each alarm (see [`AlarmConfig::validate`]) and that
/// names are unique. `path` is the list's path, e.g. `device_types.oven.alarms`.
pub fn validate_alarms(
    alarms: &[AlarmConfig],
    path: &str,
    tag_names: &[&str],
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for (i, alarm) in alarms.iter().enumerate() {
        let at = format!("{path}[{i}]");
        problems.extend(alarm.validate(&at, tag_names));
        if name_problem(&alarm.name).is_none() && !names.insert(alarm.name.as_str()) {
            problems.push((
                format!("{at}.name"),
                format!("alarm {:?} is defined twice", alarm.name),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAGS: &[&str] = &["temperature", "temperature_sp", "door_closed", "state"];

    fn parse(yaml: &str) -> Vec<AlarmConfig> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn problems(yaml: &str) -> Vec<String> {
        validate_alarms(&parse(yaml), "device_types.oven.alarms", TAGS)
            .into_iter()
            .map(|(path, message)| format!("{path}: {message}"))
            .collect()
    }

    const EXAMPLE: &str = r#"
- name: temp-high
  tag: temperature
  kind: high
  limit: 80
  deadband: 2
  on_delay: 5s
  priority: high
  message: Oven too hot
- name: temp-rising
  tag: temperature
  kind: rate_of_change
  limit: 0.5
- name: temp-off-target
  tag: temperature
  kind: deviation
  setpoint_tag: temperature_sp
  limit: 10
  deadband: 1
- name: temp-off-fixed
  tag: temperature
  kind: deviation
  setpoint: 180
  limit: 10
- name: door-open
  tag: door_closed
  kind: discrete
  active_when: false
  off_delay: 2s
- name: fault
  tag: state
  kind: discrete
  active_when: FAULT
- name: state-7
  tag: state
  kind: discrete
  active_when: 7
- name: temp-bad
  tag: temperature
  kind: bad_quality
  on_delay: 10s
- name: temp-lolo
  tag: temperature
  kind: low_low
  limit: -5
"#;

    #[test]
    fn the_documented_example_resolves_to_what_it_says() {
        let alarms = parse(EXAMPLE);
        assert_eq!(problems(EXAMPLE), Vec::<String>::new());
        let defs: Vec<AlarmDefinition> = alarms.iter().map(|a| a.resolve().unwrap()).collect();
        assert_eq!(
            defs[0],
            AlarmDefinition {
                name: "temp-high".into(),
                tag: "temperature".into(),
                condition: Condition::High(Limit {
                    limit: 80.0,
                    deadband: 2.0
                }),
                on_delay_ns: 5_000_000_000,
                off_delay_ns: 0,
                priority: Priority::High,
                message: "Oven too hot".into(),
            }
        );
        assert_eq!(
            defs[1].condition,
            Condition::RateOfChange(Limit {
                limit: 0.5,
                deadband: 0.0
            })
        );
        assert_eq!(defs[1].priority, Priority::Medium);
        assert_eq!(
            defs[1].message,
            "temperature changing by 0.5 or more per second"
        );
        assert_eq!(defs[2].condition.setpoint_tag(), Some("temperature_sp"));
        assert_eq!(
            defs[3].condition,
            Condition::Deviation {
                setpoint: Setpoint::Fixed(180.0),
                limit: Limit {
                    limit: 10.0,
                    deadband: 0.0
                }
            }
        );
        assert_eq!(
            defs[4].condition,
            Condition::Discrete {
                active_when: DiscreteValue::Bool(false)
            }
        );
        assert_eq!(defs[4].off_delay_ns, 2_000_000_000);
        assert_eq!(
            defs[5].condition,
            Condition::Discrete {
                active_when: DiscreteValue::Text("FAULT".into())
            }
        );
        assert_eq!(
            defs[6].condition,
            Condition::Discrete {
                active_when: DiscreteValue::Number(7.0)
            }
        );
        assert_eq!(defs[7].condition, Condition::BadQuality);
        assert_eq!(defs[7].message, "temperature quality is bad");
        assert_eq!(defs[8].message, "temperature at or below -5");
        let kinds: Vec<&str> = defs.iter().map(|d| d.kind().code()).collect();
        assert_eq!(
            kinds,
            [
                "hi",
                "rate",
                "deviation",
                "deviation",
                "discrete",
                "discrete",
                "discrete",
                "bad_quality",
                "lolo"
            ]
        );
    }

    #[test]
    fn config_round_trips_through_yaml() {
        let alarms = parse(EXAMPLE);
        let text = serde_yaml::to_string(&alarms).unwrap();
        assert_eq!(parse(&text), alarms);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let yaml = r#"
- name: Temp High
  tag: temprature
  kind: high
  deadband: -1
  setpoint: 3
- name: rate
  tag: temperature
  kind: rate_of_change
  limit: 0
- name: dev
  tag: temperature
  kind: deviation
  limit: 5
  deadband: 5
  setpoint: 1
  setpoint_tag: temperature_sp
- name: dev
  tag: temperature
  kind: deviation
  limit: 5
- name: self-sp
  tag: temperature
  kind: deviation
  limit: 5
  setpoint_tag: temperature
- name: disc
  tag: door_closed
  kind: discrete
  limit: 1
- name: bq
  tag: temperature
  kind: bad_quality
  deadband: 1
  active_when: true
  message: "  "
- name: nosp
  tag: temperature
  kind: deviation
  limit: 5
  setpoint_tag: nowhere
"#;
        let got = problems(yaml);
        let expected = [
            "device_types.oven.alarms[0].name: name \"Temp High\" contains 'T'; names use only a-z, 0-9, '_' and '-'",
            "device_types.oven.alarms[0].setpoint: does not apply to a high alarm",
            "device_types.oven.alarms[0].deadband: must not be negative",
            "device_types.oven.alarms[0].limit: a high alarm needs a limit",
            "device_types.oven.alarms[0].tag: the device has no tag \"temprature\"",
            "device_types.oven.alarms[1].limit: 0 must be more than 0 for a rate_of_change alarm",
            "device_types.oven.alarms[2].deadband: 5 must be less than the limit 5, or the alarm never clears",
            "device_types.oven.alarms[2].setpoint: give setpoint or setpoint_tag, not both",
            "device_types.oven.alarms[3].setpoint: a deviation alarm needs setpoint (a number) or setpoint_tag",
            "device_types.oven.alarms[3].name: alarm \"dev\" is defined twice",
            "device_types.oven.alarms[4].setpoint_tag: must be another tag than the one the alarm watches",
            "device_types.oven.alarms[5].limit: does not apply to a discrete alarm",
            "device_types.oven.alarms[5].active_when: a discrete alarm needs the value that makes it active",
            "device_types.oven.alarms[6].deadband: does not apply to a bad_quality alarm",
            "device_types.oven.alarms[6].active_when: does not apply to a bad_quality alarm",
            "device_types.oven.alarms[6].message: must not be empty; leave it out instead",
            "device_types.oven.alarms[7].setpoint_tag: the device has no tag \"nowhere\"",
        ];
        for e in expected {
            assert!(got.iter().any(|g| g == e), "missing {e:?} in {got:#?}");
        }
        assert_eq!(got.len(), expected.len(), "{got:#?}");
    }

    #[test]
    fn strict_parsing_names_the_unknown_field_and_kind() {
        let unknown = serde_yaml::from_str::<Vec<AlarmConfig>>(
            "- { name: a, tag: t, kind: high, limit: 1, dedband: 1 }",
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("unknown field `dedband`"), "{unknown}");
        let kind = serde_yaml::from_str::<Vec<AlarmConfig>>("- { name: a, tag: t, kind: hihi }")
            .unwrap_err()
            .to_string();
        assert!(kind.contains("unknown variant `hihi`"), "{kind}");
        let delay = serde_yaml::from_str::<Vec<AlarmConfig>>(
            "- { name: a, tag: t, kind: bad_quality, on_delay: soon }",
        )
        .unwrap_err()
        .to_string();
        assert!(delay.contains("on_delay"), "{delay}");
        let priority = serde_yaml::from_str::<Vec<AlarmConfig>>(
            "- { name: a, tag: t, kind: bad_quality, priority: urgent }",
        )
        .unwrap_err()
        .to_string();
        assert!(priority.contains("unknown variant `urgent`"), "{priority}");
    }

    #[test]
    fn delays_and_priority_default() {
        let a = &parse("- { name: a, tag: temperature, kind: low, limit: 1 }")[0];
        assert_eq!(
            (a.on_delay, a.off_delay, a.priority),
            (Duration::ZERO, Duration::ZERO, Priority::Medium)
        );
        let numbers: Vec<u32> = [
            Priority::Low,
            Priority::Medium,
            Priority::High,
            Priority::Critical,
        ]
        .map(Priority::number)
        .to_vec();
        assert_eq!(numbers, [1, 2, 3, 4]);
    }

    #[test]
    fn discrete_values_match_by_type() {
        use DiscreteValue::*;
        assert_eq!(Bool(true).matches(&Value::Bool(true)), Some(true));
        assert_eq!(Bool(false).matches(&Value::Bool(true)), Some(false));
        assert_eq!(Bool(true).matches(&Value::U64(3)), Some(true));
        assert_eq!(Bool(true).matches(&Value::I64(0)), Some(false));
        assert_eq!(Bool(true).matches(&Value::F64(f64::NAN)), None);
        assert_eq!(Bool(true).matches(&Value::String("on".into())), None);
        assert_eq!(Number(7.0).matches(&Value::I64(7)), Some(true));
        assert_eq!(Number(7.0).matches(&Value::F64(7.5)), Some(false));
        assert_eq!(Number(1.0).matches(&Value::Bool(true)), Some(true));
        assert_eq!(Number(1.0).matches(&Value::String("1".into())), None);
        assert_eq!(
            Text("FAULT".into()).matches(&Value::String("FAULT".into())),
            Some(true)
        );
        assert_eq!(
            Text("FAULT".into()).matches(&Value::String("RUN".into())),
            Some(false)
        );
        assert_eq!(Text("1".into()).matches(&Value::I64(1)), None);
    }

    #[test]
    fn a_schema_is_generated() {
        let schema = serde_json::to_value(schemars::schema_for!(AlarmConfig)).unwrap();
        let props = &schema["properties"];
        for field in ["name", "tag", "kind", "limit", "on_delay", "active_when"] {
            assert!(props.get(field).is_some(), "schema lacks {field}: {schema}");
        }
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    }
}
