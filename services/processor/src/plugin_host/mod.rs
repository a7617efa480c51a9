//! The plugin host: runs the per-device-type plugins that turn each sample batch into derived
//! samples and events before alarms and control rules see it.
//!
//! A [`PluginSet`] is built once per device type from its configured plugins
//! ([`fieldline_core::plugin::PluginConfig`]) and then fed every batch of every device of that
//! type through [`PluginSet::apply`]. The built-ins are pure and live in
//! [`fieldline_core::plugin`]; the Rhai scripts are hosted here (`script.rs`). Plugins run in
//! their configured order; each sees the batch's samples plus what the earlier plugins derived
//! from it. Every derived sample carries the batch's timestamp (its newest source timestamp).
//!
//! Scripts are compiled once, watched for changes and swapped between two batches. Whatever a
//! plugin does wrong, the processor keeps going: the outputs it could not derive become Bad
//! (processing) samples that say why, the failure is counted in the returned
//! [`Derived::failures`] and in [`PluginSet::stats`], and logged at most once per ten seconds
//! per plugin.

mod script;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use fieldline_core::{
    Sample, SampleBatch,
    plugin::{Builtin, BuiltinState, Context, PluginConfig, validate_plugins},
};

pub use fieldline_core::plugin::PluginEvent;

use self::script::ScriptPlugin;
use crate::{Error, Result};

/// Largest saved state of one device's plugins, in bytes of JSON. A plugin whose state would
/// not fit (a script that keeps an ever-growing map) is left out of the save and starts fresh
/// after a restart, with a warning.
pub const STATE_MAX_BYTES: usize = 256 * 1024;

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
    Builtin(Builtin),
}

/// What one plugin keeps per device between batches.
enum PluginState {
    Script(rhai::Dynamic),
    Builtin(BuiltinState),
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
            return Err(Error::PluginConfig {
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
                PluginConfig::Builtin(b) => PluginKind::Builtin(b.build()),
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
            };
            match (&mut plugin.kind, state) {
                (PluginKind::Script(s), PluginState::Script(st)) => {
                    if let Some(view) = &view {
                        let mut failures = Failures {
                            plugin: &plugin.label,
                            device: &batch.device,
                            failures: &mut out.failures,
                        };
                        s.run(&mut self.scripts, view, st, &mut cx, &mut failures);
                    }
                }
                (PluginKind::Builtin(b), PluginState::Builtin(st)) => b.apply(st, &mut cx),
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

impl PluginSet {
    /// What the plugins keep for `device`, as one JSON object keyed by plugin label, to be
    /// saved beside the device's progress and given back to [`PluginSet::restore_state`]
    /// after a restart. `None` before the device's first batch. A plugin whose state cannot
    /// be written as JSON, or would make the whole exceed [`STATE_MAX_BYTES`], is left out
    /// (it starts fresh after a restart) and logged.
    pub fn save_state(&mut self, device: &str) -> Option<String> {
        let states = self.devices.get(device)?;
        let mut saved = serde_json::Map::new();
        let mut bytes = 2;
        let now = Instant::now();
        let keys = state_keys(&self.plugins);
        for ((plugin, state), key) in self.plugins.iter_mut().zip(states).zip(keys) {
            let json = match state {
                PluginState::Script(st) => serde_json::to_value(st),
                PluginState::Builtin(st) => serde_json::to_value(st),
            };
            let problem = match json {
                Ok(json) => {
                    // The label, its quotes, the colon and the comma.
                    let size = key.len() + 4 + json.to_string().len();
                    if bytes + size <= STATE_MAX_BYTES {
                        bytes += size;
                        saved.insert(key, json);
                        continue;
                    }
                    format!("its state ({size} bytes) would exceed {STATE_MAX_BYTES} bytes")
                }
                Err(e) => format!("its state cannot be saved: {e}"),
            };
            if let Some(suppressed) = plugin.log.allow(now) {
                tracing::warn!(device_type = %self.device_type, device, plugin = %plugin.label, %problem, suppressed, "plugin state not saved; after a restart this plugin starts fresh on this device");
            }
        }
        Some(serde_json::Value::Object(saved).to_string())
    }

    /// Gives `device` back the plugin state [`PluginSet::save_state`] wrote. A plugin the save
    /// does not hold, or holds in a form it cannot read (its configuration changed), starts
    /// fresh; each such plugin is returned as a problem.
    pub fn restore_state(&mut self, device: &str, saved: &str) -> Vec<String> {
        let mut saved = match serde_json::from_str::<serde_json::Value>(saved) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => serde_json::Map::new(),
            Err(e) => {
                return vec![format!(
                    "plugins of {device} start fresh: their saved state is not JSON: {e}"
                )];
            }
        };
        let mut problems = Vec::new();
        let keys = state_keys(&self.plugins);
        let states = self
            .plugins
            .iter()
            .zip(keys)
            .map(|(plugin, key)| {
                let restored = match (&plugin.kind, saved.remove(&key)) {
                    (_, None) => Err("no saved state".to_string()),
                    (PluginKind::Script(_), Some(json)) => {
                        serde_json::from_value::<rhai::Dynamic>(json)
                            .map(PluginState::Script)
                            .map_err(|e| e.to_string())
                    }
                    (PluginKind::Builtin(b), Some(json)) => {
                        serde_json::from_value::<BuiltinState>(json)
                            .map_err(|e| e.to_string())
                            .and_then(|st| {
                                if b.takes(&st) {
                                    Ok(PluginState::Builtin(st))
                                } else {
                                    Err("the saved state is another plugin's".to_string())
                                }
                            })
                    }
                };
                restored.unwrap_or_else(|why| {
                    problems.push(format!(
                        "plugin {} of {device} starts fresh: {why}",
                        plugin.label
                    ));
                    plugin.fresh_state()
                })
            })
            .collect();
        self.devices.insert(device.to_string(), states);
        problems
    }
}

impl Plugin {
    fn fresh_state(&self) -> PluginState {
        match &self.kind {
            PluginKind::Script(_) => PluginState::Script(rhai::Dynamic::from_map(rhai::Map::new())),
            PluginKind::Builtin(b) => PluginState::Builtin(b.fresh_state()),
        }
    }
}

/// The key of each plugin's state in a save: its label, and for a label used again (two
/// counters on one input) the label with its repetition, `counter parts #2`.
fn state_keys(plugins: &[Plugin]) -> Vec<String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    plugins
        .iter()
        .map(|p| {
            let n = seen.entry(p.label.as_str()).or_default();
            *n += 1;
            if *n == 1 {
                p.label.clone()
            } else {
                format!("{} #{n}", p.label)
            }
        })
        .collect()
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Where a script's failures on one batch go: each one names the plugin and the device.
struct Failures<'a> {
    plugin: &'a str,
    device: &'a str,
    failures: &'a mut Vec<PluginFailure>,
}

impl Failures<'_> {
    fn fail(&mut self, kind: FailureKind, detail: String) {
        self.failures.push(PluginFailure {
            plugin: self.plugin.to_string(),
            device: self.device.to_string(),
            kind,
            detail,
        });
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
}
