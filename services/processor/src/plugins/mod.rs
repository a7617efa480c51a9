//! Plugins: per-device-type logic that turns each sample batch into derived samples and
//! events before alarms and control rules see it.
//!
//! A [`PluginSet`] is built once per device type from its configured plugins
//! ([`fieldline_core::plugin::PluginConfig`]) and then fed every batch of every device of that
//! type through [`PluginSet::apply`]. Plugins run in their configured order; each sees the
//! batch's samples plus what the earlier plugins derived from it. Every derived sample carries
//! the batch's timestamp (its newest source timestamp).
//!
//! Scripts are compiled once, watched for changes and swapped between two batches; built-ins
//! are plain Rust. Whatever a plugin does wrong, the processor keeps going: the outputs it
//! could not derive become Bad (processing) samples that say why, the failure is counted in
//! the returned [`Derived::failures`] and in [`PluginSet::stats`], and logged at most once per
//! ten seconds per plugin.

mod counter;
mod oee;
mod runtime;
mod script;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use fieldline_core::{
    Quality, QualityReason, Sample, SampleBatch, Value,
    plugin::{BuiltinPlugin, PluginConfig, validate_plugins},
};

use self::{counter::CounterPlugin, oee::OeePlugin, runtime::RuntimePlugin, script::ScriptPlugin};

/// Why a plugin set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plugin script {path}: {reason}")]
    ScriptRead { path: PathBuf, reason: String },
    #[error("plugin script {path} does not compile: {reason}")]
    ScriptCompile { path: PathBuf, reason: String },
    #[error("plugins of device type {device_type}: {problems}")]
    Config {
        device_type: String,
        problems: String,
    },
}

impl Error {
    /// Short kind for the `errors_total{kind}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::ScriptRead { .. } => "plugin_script_read",
            Error::ScriptCompile { .. } => "plugin_script_compile",
            Error::Config { .. } => "config",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How plugin sets find and watch their scripts.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// Folder that relative script paths start from (the line configuration's folder).
    pub base_dir: PathBuf,
    /// How often a script file is checked for changes. A change is taken once the file has
    /// looked the same on two checks, so a file caught half-written is never compiled.
    pub reload_check: Duration,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            base_dir: PathBuf::from("."),
            reload_check: Duration::from_secs(1),
        }
    }
}

/// What the plugins derived from one batch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Derived {
    /// Derived samples, all with the batch's timestamp.
    pub samples: Vec<Sample>,
    /// Events the plugins raised (script events, counter resets, low efficiency).
    pub events: Vec<PluginEvent>,
    /// What went wrong while deriving, one entry per failure, for metrics.
    pub failures: Vec<PluginFailure>,
}

impl Derived {
    pub fn clear(&mut self) {
        self.samples.clear();
        self.events.clear();
        self.failures.clear();
    }

    /// The derived sample of `tag`, if there is one.
    pub fn sample(&self, tag: &str) -> Option<&Sample> {
        self.samples.iter().find(|s| s.tag == tag)
    }
}

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

/// Something a plugin did wrong on one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginFailure {
    pub plugin: String,
    pub device: String,
    pub kind: FailureKind,
    pub detail: String,
}

/// The kinds of plugin failure, each a label of the `plugin_failures_total{kind}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The script raised an error (a type mismatch, a missing function, `throw`).
    Script,
    /// The script hit a sandbox limit (operations, call depth, data size).
    Limit,
    /// The script returned something other than a map of outputs, or an output value of a
    /// type a tag cannot hold.
    Return,
    /// The script returned a tag it does not declare as an output; that entry was refused.
    UndeclaredOutput,
    /// An event the script returned lacks `kind` or `message`, or holds a value no event
    /// field can take; that event was refused.
    Event,
    /// A changed script did not compile or could not be read; the previous one keeps running.
    Reload,
}

impl FailureKind {
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Script,
        FailureKind::Limit,
        FailureKind::Return,
        FailureKind::UndeclaredOutput,
        FailureKind::Event,
        FailureKind::Reload,
    ];

    pub fn metric_label(&self) -> &'static str {
        match self {
            FailureKind::Script => "script_error",
            FailureKind::Limit => "limit_exceeded",
            FailureKind::Return => "bad_return",
            FailureKind::UndeclaredOutput => "undeclared_output",
            FailureKind::Event => "bad_event",
            FailureKind::Reload => "reload_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one plugin since its set was built.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginStats {
    /// The plugin's label.
    pub plugin: String,
    /// Batches it ran on.
    pub runs: u64,
    /// Failures by kind, in the order of [`FailureKind::ALL`].
    pub failures: [u64; FailureKind::ALL.len()],
    /// Times a changed script was taken into service.
    pub reloads: u64,
    /// Events raised.
    pub events: u64,
}

impl PluginStats {
    /// Failures of one kind.
    pub fn failed(&self, kind: FailureKind) -> u64 {
        self.failures[kind.index()]
    }

    /// Failures of every kind.
    pub fn failures_total(&self) -> u64 {
        self.failures.iter().sum()
    }
}

/// Failure logs of one plugin: the first at once, then at most one per [`LOG_EVERY`] with the
/// number left out in between, so a script failing on every batch cannot flood the log.
#[derive(Debug, Default)]
struct LogLimit {
    next: Option<Instant>,
    suppressed: u64,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl LogLimit {
    /// `Some(left out since the last line)` when a line may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + LOG_EVERY);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The plugins of one device type, with the state each keeps per device (by device name, for
/// every device whose batches it is given).
pub struct PluginSet {
    device_type: String,
    plugins: Vec<Plugin>,
    devices: HashMap<String, Vec<PluginState>>,
    scripts: script::Shared,
    /// Index of the last script plugin; derived samples are copied into the batch the scripts
    /// see only while a script is still to come.
    last_script: Option<usize>,
    scratch: Vec<Sample>,
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSet")
            .field("device_type", &self.device_type)
            .field("plugins", &self.plugins.len())
            .field("devices", &self.devices.len())
            .finish()
    }
}

struct Plugin {
    label: String,
    kind: PluginKind,
    stats: PluginStats,
    log: LogLimit,
}

enum PluginKind {
    Script(Box<ScriptPlugin>),
    Counter(CounterPlugin),
    Runtime(RuntimePlugin),
    Oee(Box<OeePlugin>),
}

/// What one plugin keeps per device between batches.
enum PluginState {
    Script(rhai::Dynamic),
    Counter(counter::CounterState),
    Runtime(runtime::RunTrack),
    Oee(Box<oee::OeeState>),
}

impl PluginSet {
    /// Builds the plugins of `device_type`, checking every entry and reading and compiling
    /// every script.
    pub fn build(
        device_type: &str,
        plugins: &[PluginConfig],
        options: &PluginOptions,
    ) -> Result<Self> {
        let problems = validate_plugins(plugins, "plugins");
        if !problems.is_empty() {
            return Err(Error::Config {
                device_type: device_type.to_string(),
                problems: problems
                    .iter()
                    .map(|(path, message)| format!("{path}: {message}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        let scripts = script::Shared::new();
        let mut built = Vec::with_capacity(plugins.len());
        for config in plugins {
            let label = config.label();
            let kind = match config {
                PluginConfig::Script(s) => PluginKind::Script(Box::new(ScriptPlugin::load(
                    s,
                    &label,
                    &resolve(&options.base_dir, &s.script),
                    options.reload_check,
                )?)),
                PluginConfig::Builtin(BuiltinPlugin::Counter(c)) => {
                    PluginKind::Counter(CounterPlugin::new(c))
                }
                PluginConfig::Builtin(BuiltinPlugin::Runtime(r)) => {
                    PluginKind::Runtime(RuntimePlugin::new(r))
                }
                PluginConfig::Builtin(BuiltinPlugin::Oee(o)) => {
                    PluginKind::Oee(Box::new(OeePlugin::new(o)))
                }
            };
            built.push(Plugin {
                stats: PluginStats {
                    plugin: label.clone(),
                    ..PluginStats::default()
                },
                label,
                kind,
                log: LogLimit::default(),
            });
        }
        let last_script = built
            .iter()
            .rposition(|p| matches!(p.kind, PluginKind::Script(_)));
        Ok(Self {
            device_type: device_type.to_string(),
            plugins: built,
            devices: HashMap::new(),
            scripts,
            last_script,
            scratch: Vec::new(),
        })
    }

    /// The device type these plugins serve.
    pub fn device_type(&self) -> &str {
        &self.device_type
    }

    /// Counters of every plugin, in configured order.
    pub fn stats(&self) -> Vec<PluginStats> {
        self.plugins.iter().map(|p| p.stats.clone()).collect()
    }

    /// Runs every plugin on `batch`.
    pub fn apply(&mut self, batch: &SampleBatch) -> Derived {
        let mut out = Derived::default();
        self.apply_into(batch, &mut out);
        out
    }

    /// Runs every plugin on `batch`, into `out` (cleared first), so a caller can reuse its
    /// buffers from batch to batch.
    pub fn apply_into(&mut self, batch: &SampleBatch, out: &mut Derived) {
        out.clear();
        let Some(ts) = batch.samples.iter().map(|s| s.timestamp_ns).max() else {
            return;
        };
        let now = Instant::now();
        for plugin in &mut self.plugins {
            if let PluginKind::Script(s) = &mut plugin.kind
                && let Some(failure) = s.check_reload(now, &mut plugin.stats)
            {
                out.failures.push(PluginFailure {
                    plugin: plugin.label.clone(),
                    device: batch.device.clone(),
                    kind: FailureKind::Reload,
                    detail: failure,
                });
                plugin.stats.failures[FailureKind::Reload.index()] += 1;
            }
        }
        if !self.devices.contains_key(batch.device.as_str()) {
            let fresh = self.plugins.iter().map(Plugin::fresh_state).collect();
            self.devices.insert(batch.device.clone(), fresh);
        }
        let Some(states) = self.devices.get_mut(batch.device.as_str()) else {
            return;
        };
        let mut view = self.last_script.map(|_| self.scripts.batch_view(batch, ts));
        for (i, (plugin, state)) in self.plugins.iter_mut().zip(states.iter_mut()).enumerate() {
            plugin.stats.runs += 1;
            let first_failure = out.failures.len();
            let first_event = out.events.len();
            let mut cx = Context {
                batch,
                ts,
                derived: &out.samples,
                plugin: &plugin.label,
                emit: &mut self.scratch,
                events: &mut out.events,
                failures: &mut out.failures,
            };
            match (&mut plugin.kind, state) {
                (PluginKind::Script(s), PluginState::Script(st)) => {
                    if let Some(view) = &view {
                        s.run(&mut self.scripts, view, st, &mut cx);
                    }
                }
                (PluginKind::Counter(c), PluginState::Counter(st)) => c.apply(st, &mut cx),
                (PluginKind::Runtime(r), PluginState::Runtime(st)) => r.apply(st, &mut cx),
                (PluginKind::Oee(o), PluginState::Oee(st)) => o.apply(st, &mut cx),
                // States are made from the plugins they sit beside; a mismatch cannot occur,
                // and if it did the outputs of this batch would simply be missing.
                _ => {}
            }
            if let Some(view) = &mut view
                && self.last_script.is_some_and(|last| i < last)
            {
                self.scripts.add_derived(view, &self.scratch);
            }
            out.samples.append(&mut self.scratch);
            plugin.stats.events += (out.events.len() - first_event) as u64;
            for failure in &out.failures[first_failure..] {
                plugin.stats.failures[failure.kind.index()] += 1;
                if let Some(suppressed) = plugin.log.allow(now) {
                    tracing::warn!(
                        device_type = %self.device_type,
                        device = %failure.device,
                        plugin = %failure.plugin,
                        kind = failure.kind.metric_label(),
                        error = %failure.detail,
                        suppressed,
                        "plugin failed; its outputs for this batch are bad"
                    );
                }
            }
        }
    }
}

impl Plugin {
    fn fresh_state(&self) -> PluginState {
        match &self.kind {
            PluginKind::Script(_) => PluginState::Script(rhai::Dynamic::from_map(rhai::Map::new())),
            PluginKind::Counter(_) => PluginState::Counter(counter::CounterState::default()),
            PluginKind::Runtime(_) => PluginState::Runtime(runtime::RunTrack::default()),
            PluginKind::Oee(o) => PluginState::Oee(Box::new(o.fresh_state())),
        }
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// What a plugin sees of the batch and where it puts what it derives.
struct Context<'a> {
    batch: &'a SampleBatch,
    /// The batch's timestamp: its newest source timestamp.
    ts: i64,
    /// What earlier plugins derived from this batch.
    derived: &'a [Sample],
    plugin: &'a str,
    emit: &'a mut Vec<Sample>,
    events: &'a mut Vec<PluginEvent>,
    failures: &'a mut Vec<PluginFailure>,
}

impl Context<'_> {
    /// The samples of `tag` in this batch, oldest first, then what earlier plugins derived.
    fn samples_of<'s>(&'s self, tag: &'s str) -> impl Iterator<Item = &'s Sample> + 's {
        self.batch
            .samples
            .iter()
            .chain(self.derived.iter())
            .filter(move |s| s.tag == tag)
    }

    fn good(&mut self, tag: &str, value: Value) {
        self.emit.push(Sample::good(tag, value, self.ts));
    }

    fn bad(&mut self, tag: &str, detail: impl Into<String>) {
        self.emit.push(Sample::bad(
            tag,
            Quality::bad(QualityReason::Processing, detail),
            self.ts,
        ));
    }

    fn event(&mut self, kind: &str, message: String, fields: Vec<(String, Value)>) {
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

    fn fail(&mut self, kind: FailureKind, detail: String) {
        self.failures.push(PluginFailure {
            plugin: self.plugin.to_string(),
            device: self.batch.device.clone(),
            kind,
            detail,
        });
    }
}

/// A counter or flag reading as a number the built-ins can work with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reading {
    Int(i128),
    Float(f64),
}

impl Reading {
    fn of(sample: &Sample) -> Result<Reading, String> {
        match (&sample.quality, &sample.value) {
            (Quality::Bad { .. }, _) | (_, None) => {
                Err(format!("input {} is {}", sample.tag, sample.quality))
            }
            (_, Some(Value::I64(v))) => Ok(Reading::Int(i128::from(*v))),
            (_, Some(Value::U64(v))) => Ok(Reading::Int(i128::from(*v))),
            (_, Some(Value::F64(v))) if v.is_finite() => Ok(Reading::Float(*v)),
            (_, Some(v)) => Err(format!("input {} holds {v}, not a number", sample.tag)),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Reading::Int(v) => v as f64,
            Reading::Float(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_lets_one_line_through_per_interval_and_counts_the_rest() {
        let mut limit = LogLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(limit.allow(t0 + LOG_EVERY), Some(2));
        assert_eq!(limit.allow(t0 + LOG_EVERY), None);
    }

    #[test]
    fn bad_and_non_numeric_readings_are_refused_with_the_tag() {
        let bad = Sample::bad("units", Quality::bad(QualityReason::CommFailure, ""), 1);
        assert!(
            Reading::of(&bad)
                .unwrap_err()
                .contains("units is bad:comm_failure")
        );
        let text = Sample::good("units", Value::String("x".into()), 1);
        assert!(Reading::of(&text).unwrap_err().contains("not a number"));
        let nan = Sample::good("units", Value::F64(f64::NAN), 1);
        assert!(Reading::of(&nan).is_err());
        let big = Sample::good("units", Value::U64(u64::MAX), 1);
        assert_eq!(Reading::of(&big), Ok(Reading::Int(i128::from(u64::MAX))));
    }
}
