//! Plugin configuration: the per-device-type logic the processor runs on every sample batch
//! before alarms and control rules see it.
//!
//! A device type lists its plugins in order. Each is either a Rhai script that derives the
//! tags it declares, or a built-in written in Rust (counter deltas and rates, runtime hours,
//! OEE). Plugins run in the listed order and each sees what the earlier ones derived, so an
//! OEE plugin can use a tag a script computed.
//!
//! The configuration is here; the built-ins themselves are beside it ([`counter`],
//! [`runtime_hours`], [`oee`]), pure like the alarm machine: they take a batch in a
//! [`Context`] and append the samples and events they derive. The processor hosts the Rhai
//! scripts and runs every plugin in order.
//!
//! ```yaml
//! - script: plugins/spindle.rhai
//!   outputs: [spindle_temp_f, spindle_starts]
//! - builtin: counter
//!   input: parts_total
//!   delta: parts
//!   rate: parts_per_min
//!   rate_per: 1min
//!   rollover: 65536
//! - builtin: runtime
//!   input: spindle_running
//!   output: spindle_hours
//! - builtin: oee
//!   units_produced: parts_total
//!   good_count: good_parts
//!   running: spindle_running
//!   target_rate: 120
//! ```

pub mod builtin;
pub mod context;
pub mod counter;
pub mod oee;
pub mod runtime_hours;

use std::{collections::HashSet, path::PathBuf, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::names::name_problem;

pub use builtin::{Builtin, BuiltinState};
pub use context::{Context, InputError, PluginEvent, Reading};

/// Operations one script run may take unless its entry sets `max_operations`.
pub const DEFAULT_MAX_OPERATIONS: u64 = 100_000;
/// The most `max_operations` may be set to, so that one batch cannot hold the processor for
/// long.
pub const MAX_MAX_OPERATIONS: u64 = 100_000_000;
/// The key of a script's result that carries events; no output may be named so.
pub const EVENTS_KEY: &str = "events";

/// One plugin of a device type: `script: FILE` with the `outputs` it derives, or
/// `builtin: counter | runtime | oee` with that built-in's settings.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PluginConfig {
    /// A Rhai script.
    Script(ScriptPlugin),
    /// A plugin written in Rust.
    Builtin(BuiltinPlugin),
}

// Hand-written so that an entry with neither or both of `script` and `builtin` gets a message
// that says so, instead of serde's "did not match any variant".
impl<'de> Deserialize<'de> for PluginConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_yaml::Value::deserialize(d)?;
        let Some(map) = value.as_mapping() else {
            return Err(D::Error::custom(
                "a plugin is a map with `script: FILE` or `builtin: counter|runtime|oee`",
            ));
        };
        let has = |key: &str| map.contains_key(serde_yaml::Value::from(key));
        match (has("script"), has("builtin")) {
            (true, false) => ScriptPlugin::deserialize(value)
                .map(PluginConfig::Script)
                .map_err(D::Error::custom),
            (false, true) => BuiltinPlugin::deserialize(value)
                .map(PluginConfig::Builtin)
                .map_err(D::Error::custom),
            (true, true) => Err(D::Error::custom(
                "a plugin sets either `script` or `builtin`, not both",
            )),
            (false, false) => Err(D::Error::custom(
                "a plugin needs `script: FILE` or `builtin: counter|runtime|oee`",
            )),
        }
    }
}

/// A Rhai script that derives tags from each batch of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptPlugin {
    /// Path of the `.rhai` file. A relative path is taken from the folder of the line
    /// configuration. The file is watched: a changed script replaces the running one between
    /// two batches, and one that does not compile leaves the running one in place.
    pub script: PathBuf,
    /// The tags the script may derive. A result naming any other tag is refused; when the
    /// script fails, every one of these is written as Bad (processing) for that batch.
    pub outputs: Vec<String>,
    /// Most operations one run of the script may take before it is stopped (default 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_operations: Option<u64>,
}

impl ScriptPlugin {
    /// The operation limit in force for this script.
    pub fn max_operations(&self) -> u64 {
        self.max_operations.unwrap_or(DEFAULT_MAX_OPERATIONS)
    }
}

/// The plugins written in Rust.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "builtin", rename_all = "snake_case")]
pub enum BuiltinPlugin {
    /// Delta and rate of a counter, with rollover and reset handling.
    Counter(CounterPlugin),
    /// Hours a boolean tag has been true.
    Runtime(RuntimePlugin),
    /// Availability, performance, quality, OEE, production rate and efficiency.
    Oee(Box<OeePlugin>),
}

/// Delta and rate of a monotonically counting tag (parts made, litres filled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CounterPlugin {
    /// The counter tag (an integer or float that only counts up, except at rollover or reset).
    pub input: String,
    /// Tag that gets the increase since the previous reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<String>,
    /// Tag that gets the increase per `rate_per` since the previous reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Unit time of `rate`, e.g. `1s`, `1min` (the default) or `1h`.
    #[serde(default = "default_rate_per", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub rate_per: Duration,
    /// The value at which the counter wraps back to 0, e.g. 65536 for a 16-bit register.
    /// Without it every decrease is a reset. With it a decrease is a rollover when the
    /// wrapped increase is less than half of this value, and a reset otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollover: Option<u64>,
}

fn default_rate_per() -> Duration {
    Duration::from_secs(60)
}

/// Running hours of a machine: time integrated while a tag is true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimePlugin {
    /// A boolean tag (or a number, non-zero meaning true) that is true while running.
    pub input: String,
    /// Tag that gets the hours counted since the processor started.
    pub output: String,
}

/// Overall equipment effectiveness over a sliding window.
///
/// Run time comes either from `runtime` and `downtime` counters in seconds (planned time is
/// their sum) or from a `running` flag (planned time is the elapsed time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OeePlugin {
    /// Counter of units produced (good and bad).
    pub units_produced: String,
    /// Counter of good units.
    pub good_count: String,
    /// Counter of run time in seconds; give it together with `downtime`, or give `running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Counter of down time in seconds; give it together with `runtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<String>,
    /// A boolean tag that is true while the machine runs; instead of `runtime`/`downtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// Ideal production rate in units per minute.
    pub target_rate: f64,
    /// The figures cover this much of the most recent time, e.g. `15min` (the default).
    #[serde(default = "default_oee_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// The value at which the counters wrap back to 0 (see the counter plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollover: Option<u64>,
    /// Emit a `low_efficiency` event when efficiency falls below this (e.g. 0.85), and an
    /// `efficiency_recovered` event when it is back at or above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_efficiency: Option<f64>,
    /// Names of the derived tags.
    #[serde(default)]
    pub outputs: OeeOutputs,
}

fn default_oee_window() -> Duration {
    Duration::from_secs(15 * 60)
}

/// Where the OEE figures go; each defaults to its own name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OeeOutputs {
    /// Run time / planned time, 0 to 1.
    #[serde(default = "availability")]
    pub availability: String,
    /// Units produced / (target rate × run time), normally 0 to 1.
    #[serde(default = "performance")]
    pub performance: String,
    /// Good units / units produced, 0 to 1.
    #[serde(default = "quality")]
    pub quality: String,
    /// Availability × performance × quality.
    #[serde(default = "oee")]
    pub oee: String,
    /// Units produced per minute of elapsed time.
    #[serde(default = "production_rate")]
    pub production_rate: String,
    /// Production rate / target rate.
    #[serde(default = "efficiency")]
    pub efficiency: String,
}

fn availability() -> String {
    "availability".into()
}
fn performance() -> String {
    "performance".into()
}
fn quality() -> String {
    "quality".into()
}
fn oee() -> String {
    "oee".into()
}
fn production_rate() -> String {
    "production_rate".into()
}
fn efficiency() -> String {
    "efficiency".into()
}

impl Default for OeeOutputs {
    fn default() -> Self {
        Self {
            availability: availability(),
            performance: performance(),
            quality: quality(),
            oee: oee(),
            production_rate: production_rate(),
            efficiency: efficiency(),
        }
    }
}

impl OeeOutputs {
    /// `(field, tag)` for every figure.
    pub fn named(&self) -> [(&'static str, &str); 6] {
        [
            ("availability", &self.availability),
            ("performance", &self.performance),
            ("quality", &self.quality),
            ("oee", &self.oee),
            ("production_rate", &self.production_rate),
            ("efficiency", &self.efficiency),
        ]
    }
}

impl OeePlugin {
    /// `(field, tag)` for every input that is set.
    pub fn inputs_named(&self) -> Vec<(&'static str, &str)> {
        let mut inputs = vec![
            ("units_produced", self.units_produced.as_str()),
            ("good_count", self.good_count.as_str()),
        ];
        for (field, tag) in [
            ("runtime", &self.runtime),
            ("downtime", &self.downtime),
            ("running", &self.running),
        ] {
            if let Some(tag) = tag {
                inputs.push((field, tag.as_str()));
            }
        }
        inputs
    }
}

impl PluginConfig {
    /// A short description for logs and metrics, e.g. `script plugins/spindle.rhai`.
    pub fn label(&self) -> String {
        match self {
            PluginConfig::Script(s) => format!("script {}", s.script.display()),
            PluginConfig::Builtin(BuiltinPlugin::Counter(c)) => format!("counter {}", c.input),
            PluginConfig::Builtin(BuiltinPlugin::Runtime(r)) => format!("runtime {}", r.input),
            PluginConfig::Builtin(BuiltinPlugin::Oee(o)) => format!("oee {}", o.units_produced),
        }
    }

    /// The tags this plugin derives.
    pub fn outputs(&self) -> Vec<&str> {
        match self {
            PluginConfig::Script(s) => s.outputs.iter().map(String::as_str).collect(),
            PluginConfig::Builtin(BuiltinPlugin::Counter(c)) => {
                c.delta.iter().chain(&c.rate).map(String::as_str).collect()
            }
            PluginConfig::Builtin(BuiltinPlugin::Runtime(r)) => vec![r.output.as_str()],
            PluginConfig::Builtin(BuiltinPlugin::Oee(o)) => {
                o.outputs.named().iter().map(|(_, tag)| *tag).collect()
            }
        }
    }

    /// The tags this plugin reads; empty for a script, which may read any tag of its batch.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            PluginConfig::Script(_) => Vec::new(),
            PluginConfig::Builtin(BuiltinPlugin::Counter(c)) => vec![c.input.as_str()],
            PluginConfig::Builtin(BuiltinPlugin::Runtime(r)) => vec![r.input.as_str()],
            PluginConfig::Builtin(BuiltinPlugin::Oee(o)) => {
                o.inputs_named().into_iter().map(|(_, tag)| tag).collect()
            }
        }
    }

    /// Every problem of this entry as `(path, message)`, `path` being where the entry sits,
    /// e.g. `device_types.cnc.plugins[2]`.
    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut err = |field: &str, message: String| {
            problems.push((format!("{path}.{field}"), message));
        };
        match self {
            PluginConfig::Script(s) => {
                if s.script.as_os_str().is_empty() {
                    err("script", "must name a .rhai file".into());
                }
                if s.outputs.is_empty() {
                    err(
                        "outputs",
                        "list the tags the script derives; it may derive no others".into(),
                    );
                }
                let mut seen = HashSet::new();
                for (i, tag) in s.outputs.iter().enumerate() {
                    if let Some(p) = name_problem(tag) {
                        err(&format!("outputs[{i}]"), format!("tag name {p}"));
                    } else if tag == EVENTS_KEY {
                        err(
                            &format!("outputs[{i}]"),
                            format!(
                                "{EVENTS_KEY:?} is where a script returns events; name the tag otherwise"
                            ),
                        );
                    } else if !seen.insert(tag.as_str()) {
                        err(&format!("outputs[{i}]"), format!("{tag:?} is listed twice"));
                    }
                }
                if let Some(ops) = s.max_operations
                    && !(1..=MAX_MAX_OPERATIONS).contains(&ops)
                {
                    err(
                        "max_operations",
                        format!("{ops} is not between 1 and {MAX_MAX_OPERATIONS}"),
                    );
                }
            }
            PluginConfig::Builtin(BuiltinPlugin::Counter(c)) => {
                check_name(&mut err, "input", &c.input);
                if c.delta.is_none() && c.rate.is_none() {
                    err("delta", "set delta, rate or both".into());
                }
                for (field, out) in [("delta", &c.delta), ("rate", &c.rate)] {
                    if let Some(out) = out {
                        check_name(&mut err, field, out);
                        if *out == c.input {
                            err(field, format!("{out:?} is the input itself"));
                        }
                    }
                }
                if c.delta.is_some() && c.delta == c.rate {
                    err("rate", "delta and rate must be different tags".into());
                }
                if c.rate_per.is_zero() {
                    err(
                        "rate_per",
                        "must be more than 0, e.g. 1s, 1min or 1h".into(),
                    );
                }
                check_rollover(&mut err, c.rollover);
            }
            PluginConfig::Builtin(BuiltinPlugin::Runtime(r)) => {
                check_name(&mut err, "input", &r.input);
                check_name(&mut err, "output", &r.output);
                if r.input == r.output {
                    err("output", format!("{:?} is the input itself", r.output));
                }
            }
            PluginConfig::Builtin(BuiltinPlugin::Oee(o)) => {
                let inputs = o.inputs_named();
                for (field, tag) in &inputs {
                    check_name(&mut err, field, tag);
                }
                match (&o.runtime, &o.downtime, &o.running) {
                    (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                    (None, None, None) => err(
                        "running",
                        "set running (a flag), or runtime and downtime (counters in seconds)"
                            .into(),
                    ),
                    (_, _, Some(_)) => err(
                        "running",
                        "set running, or runtime and downtime, not both".into(),
                    ),
                    (Some(_), None, None) => {
                        err("downtime", "runtime needs downtime beside it".into())
                    }
                    (None, Some(_), None) => {
                        err("runtime", "downtime needs runtime beside it".into())
                    }
                }
                if !(o.target_rate.is_finite() && o.target_rate > 0.0) {
                    err(
                        "target_rate",
                        format!("{} is not a rate above 0 (units per minute)", o.target_rate),
                    );
                }
                if o.window < Duration::from_secs(1) {
                    err("window", "must be at least 1s".into());
                }
                check_rollover(&mut err, o.rollover);
                if let Some(low) = o.low_efficiency
                    && !(low.is_finite() && low > 0.0)
                {
                    err(
                        "low_efficiency",
                        format!("{low} is not an efficiency above 0, e.g. 0.85"),
                    );
                }
                let mut seen = HashSet::new();
                for (field, tag) in o.outputs.named() {
                    let at = format!("outputs.{field}");
                    if let Some(p) = name_problem(tag) {
                        err(&at, format!("tag name {p}"));
                    } else if inputs.iter().any(|(_, input)| *input == tag) {
                        err(&at, format!("{tag:?} is also an input"));
                    } else if !seen.insert(tag) {
                        err(&at, format!("{tag:?} names two figures"));
                    }
                }
            }
        }
        problems
    }
}

fn check_name(err: &mut impl FnMut(&str, String), field: &str, tag: &str) {
    if let Some(p) = name_problem(tag) {
        err(field, format!("tag name {p}"));
    }
}

fn check_rollover(err: &mut impl FnMut(&str, String), rollover: Option<u64>) {
    if let Some(r) = rollover
        && r < 2
    {
        err(
            "rollover",
            format!(
                "{r} is not a counter range; give the value at which it wraps to 0, e.g. 65536"
            ),
        );
    }
}

/// Checks a device type's plugin list: every entry, and that no two entries derive the same
/// tag. `path` is where the list sits, e.g. `device_types.cnc.plugins`.
pub fn validate_plugins(plugins: &[PluginConfig], path: &str) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut derived_by: std::collections::HashMap<&str, usize> = Default::default();
    for (i, plugin) in plugins.iter().enumerate() {
        let at = format!("{path}[{i}]");
        problems.extend(plugin.validate(&at));
        for tag in plugin.outputs() {
            match derived_by.get(tag) {
                Some(first) if *first != i => problems.push((
                    at.clone(),
                    format!("{tag:?} is already derived by {path}[{first}]"),
                )),
                _ => {
                    derived_by.insert(tag, i);
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<PluginConfig>, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    const EXAMPLE: &str = r#"
- script: plugins/spindle.rhai
  outputs: [spindle_temp_f, spindle_starts]
  max_operations: 50000
- builtin: counter
  input: parts_total
  delta: parts
  rate: parts_per_min
  rate_per: 1min
  rollover: 65536
- builtin: runtime
  input: spindle_running
  output: spindle_hours
- builtin: oee
  units_produced: parts_total
  good_count: good_parts
  running: spindle_running
  target_rate: 120
  window: 10min
  low_efficiency: 0.85
"#;

    #[test]
    fn the_module_example_parses_and_is_valid() {
        let plugins = parse(EXAMPLE).unwrap();
        assert_eq!(plugins.len(), 4);
        let PluginConfig::Script(s) = &plugins[0] else {
            panic!("first entry is a script: {:?}", plugins[0]);
        };
        assert_eq!(s.max_operations(), 50_000);
        let PluginConfig::Builtin(BuiltinPlugin::Counter(c)) = &plugins[1] else {
            panic!("second entry is a counter: {:?}", plugins[1]);
        };
        assert_eq!(c.rate_per, Duration::from_secs(60));
        assert_eq!(c.rollover, Some(65536));
        let PluginConfig::Builtin(BuiltinPlugin::Oee(o)) = &plugins[3] else {
            panic!("fourth entry is oee: {:?}", plugins[3]);
        };
        assert_eq!(o.window, Duration::from_secs(600));
        assert_eq!(o.outputs.efficiency, "efficiency");
        assert_eq!(
            validate_plugins(&plugins, "device_types.cnc.plugins"),
            vec![]
        );
    }

    #[test]
    fn serializes_back_to_what_it_read() {
        let plugins = parse(EXAMPLE).unwrap();
        let again = parse(&serde_yaml::to_string(&plugins).unwrap()).unwrap();
        assert_eq!(plugins, again);
    }

    #[test]
    fn parses_from_json_as_a_resource_spec_arrives() {
        let json = r#"[{"script": "a.rhai", "outputs": ["x"]},
                       {"builtin": "runtime", "input": "on", "output": "hours"},
                       {"builtin": "counter", "input": "n", "rate": "r", "rate_per": "1h"}]"#;
        let plugins: Vec<PluginConfig> = serde_json::from_str(json).unwrap();
        assert_eq!(plugins.len(), 3);
        let PluginConfig::Builtin(BuiltinPlugin::Counter(c)) = &plugins[2] else {
            panic!("third entry is a counter: {:?}", plugins[2]);
        };
        assert_eq!(c.rate_per, Duration::from_secs(3600));
        let e = serde_json::from_str::<Vec<PluginConfig>>(r#"[{"builtin": "oee"}]"#).unwrap_err();
        assert!(e.to_string().contains("units_produced"), "{e}");
    }

    #[test]
    fn entries_that_are_neither_or_both_say_so() {
        let e = parse("- outputs: [a]\n").unwrap_err();
        assert!(e.contains("needs `script: FILE` or `builtin"), "{e}");
        let e = parse("- script: a.rhai\n  builtin: counter\n  outputs: [a]\n").unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = parse("- builtin: average\n  input: a\n").unwrap_err();
        assert!(e.contains("average"), "{e}");
        let e = parse("- script: a.rhai\n  outputs: [a]\n  max_ops: 3\n").unwrap_err();
        assert!(e.contains("max_ops"), "{e}");
        let e = parse("- builtin: runtime\n  input: a\n  output: b\n  hours: c\n").unwrap_err();
        assert!(e.contains("hours"), "{e}");
        let e =
            parse("- builtin: counter\n  input: a\n  delta: b\n  rate_per: often\n").unwrap_err();
        assert!(e.contains("often") || e.contains("duration"), "{e}");
    }

    fn problems(yaml: &str) -> Vec<(String, String)> {
        validate_plugins(&parse(yaml).unwrap(), "p")
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let found = problems(
            r#"
- script: ""
  outputs: [Temp, events, a, a]
  max_operations: 0
- builtin: counter
  input: parts
  rate_per: 0s
  rollover: 1
- builtin: oee
  units_produced: units
  good_count: good
  runtime: run_s
  running: run
  target_rate: -1
  window: 10ms
  low_efficiency: 0
  outputs:
    quality: good
    oee: a
"#,
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        for expected in [
            "p[0].script",
            "p[0].outputs[0]",
            "p[0].outputs[1]",
            "p[0].outputs[3]",
            "p[0].max_operations",
            "p[1].delta",
            "p[1].rate_per",
            "p[1].rollover",
            "p[2].running",
            "p[2].target_rate",
            "p[2].window",
            "p[2].low_efficiency",
            "p[2].outputs.quality",
            "p[2]",
        ] {
            assert!(
                paths.contains(&expected),
                "missing {expected} in {found:#?}"
            );
        }
        let clash = found
            .iter()
            .find(|(p, _)| p == "p[2]")
            .map(|(_, m)| m.as_str())
            .unwrap_or_default();
        assert!(clash.contains("already derived by p[0]"), "{clash}");
    }

    #[test]
    fn oee_needs_one_source_of_run_time() {
        let base = "- builtin: oee\n  units_produced: u\n  good_count: g\n  target_rate: 60\n";
        assert!(
            problems(base)
                .iter()
                .any(|(p, m)| p == "p[0].running" && m.contains("runtime and downtime"))
        );
        assert!(
            problems(&format!("{base}  runtime: r\n"))
                .iter()
                .any(|(p, _)| p == "p[0].downtime")
        );
        assert_eq!(
            problems(&format!("{base}  runtime: r\n  downtime: d\n")),
            vec![]
        );
        assert_eq!(problems(&format!("{base}  running: on\n")), vec![]);
    }

    #[test]
    fn counter_outputs_must_differ_from_input_and_each_other() {
        let found = problems("- builtin: counter\n  input: a\n  delta: a\n  rate: a\n");
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"p[0].delta"), "{found:?}");
        assert!(paths.contains(&"p[0].rate"), "{found:?}");
    }

    #[test]
    fn the_schema_offers_both_kinds() {
        let schema = serde_json::to_string(&schemars::schema_for!(Vec<PluginConfig>)).unwrap();
        for word in [
            "script",
            "builtin",
            "counter",
            "runtime",
            "oee",
            "target_rate",
        ] {
            assert!(schema.contains(word), "{word} missing from the schema");
        }
    }
}
