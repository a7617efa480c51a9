//! The line engine: what the processor does with each batch before it is stored. Plugins
//! (derived values), alarms (configured per device type, one for each interlock, one
//! read-back alarm for each tag a rule or the MES writes) and control rules. Synchronous and
//! without I/O besides the plugin scripts' files; the caller carries out the effects
//! (publishing and persisting alarm events, writes) elsewhere. The alarm set and the rule
//! evaluator are core's; here their events are put in wire form and their state in the form
//! storage keeps.

use std::{collections::HashMap, path::PathBuf};

use fieldline_core::{
    Sample, SampleBatch, Value,
    alarm::{
        AlarmConfig, AlarmDefinition, AlarmEvent, AlarmKind, AlarmSnapshot, AlarmState,
        DiscreteValue, LineAlarms, Priority, alarm_id,
    },
    config::LineConfig,
    records::AlarmStatus,
    rules::{Hold, Intent, LineRules, RuleConfig},
};
use fieldline_proto::v1;

use crate::{
    Error, Result,
    plugin_host::{Derived, PluginEvent, PluginFailure, PluginOptions, PluginSet},
};

/// What a batch (or the passing of time) asks of the processor.
#[derive(Debug, Default)]
pub struct Effects {
    pub alarm_events: Vec<v1::AlarmEvent>,
    pub intents: Vec<Intent>,
    pub problems: Vec<String>,
    /// Events plugins raised.
    pub plugin_events: Vec<PluginEvent>,
    /// Plugin failures (their outputs were made Bad), by kind.
    pub plugin_failures: Vec<PluginFailure>,
    /// Samples stamped after they arrived (the device's clock is ahead), processed at the
    /// time they arrived.
    pub from_the_future: usize,
}

/// What ListAlarms shows of an alarm besides its state.
#[derive(Debug, Clone)]
struct AlarmMeta {
    device: String,
    tag: String,
    kind: String,
    priority: u32,
    message: String,
}

pub struct Engine {
    line: String,
    /// Plugins per device type, and each device's type.
    plugins: HashMap<String, PluginSet>,
    device_types: HashMap<String, String>,
    derived: Derived,
    alarms: LineAlarms,
    rules: LineRules,
    meta: HashMap<String, AlarmMeta>,
    /// Alarm ids in a stable order, for listing.
    order: Vec<String>,
    last_events: HashMap<String, v1::AlarmEvent>,
    /// Highest batch sequence processed per device: a redelivered batch is not processed
    /// twice.
    processed: HashMap<String, u64>,
}

/// The name of the read-back alarm of a writable tag.
pub fn readback_alarm(tag: &str) -> String {
    format!("{tag}-readback")
}

/// The pseudo tag that feeds a read-back alarm: true while the last write read back equal.
/// (`--` never ends a configured tag name in practice; names are `[a-z0-9_-]`.)
fn readback_input(tag: &str) -> String {
    format!("{tag}--readback")
}

impl Engine {
    pub fn new(config: &LineConfig) -> Result<Self> {
        let mut per_device: Vec<(String, Vec<AlarmDefinition>)> = Vec::new();
        let mut rules_per_device: Vec<(String, Vec<RuleConfig>)> = Vec::new();
        let mut meta = HashMap::new();
        let mut order = Vec::new();
        let options = PluginOptions {
            base_dir: config
                .base_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".")),
            ..PluginOptions::default()
        };
        let mut plugins = HashMap::new();
        for (device_type, processing) in &config.device_types {
            if !processing.plugins.is_empty() {
                plugins.insert(
                    device_type.clone(),
                    PluginSet::build(device_type, &processing.plugins, &options)?,
                );
            }
        }
        let device_types = config
            .devices
            .iter()
            .map(|d| (d.name().to_string(), d.device_type().to_string()))
            .collect();
        for device in &config.devices {
            let processing = config.device_types.get(device.device_type());
            let mut configs: Vec<AlarmConfig> =
                processing.map(|p| p.alarms.clone()).unwrap_or_default();
            let rules: Vec<RuleConfig> = processing.map(|p| p.rules.clone()).unwrap_or_default();
            for rule in &rules {
                configs.extend(rule.alarms());
            }
            for tag in device.tags().iter().filter(|t| t.writable) {
                configs.push(readback_alarm_config(&tag.name));
            }
            let mut definitions = Vec::with_capacity(configs.len());
            for c in &configs {
                let def = c.resolve().map_err(|problems| Error::AlarmDefinition {
                    device_type: device.device_type().to_string(),
                    message: problems
                        .into_iter()
                        .map(|(field, m)| format!("alarm {}: {field}: {m}", c.name))
                        .collect::<Vec<_>>()
                        .join("; "),
                })?;
                let id = alarm_id(&config.line, device.name(), &def.name);
                meta.insert(
                    id.clone(),
                    AlarmMeta {
                        device: device.name().to_string(),
                        tag: def.tag.clone(),
                        kind: def.kind().code().to_string(),
                        priority: def.priority.number(),
                        message: def.message.clone(),
                    },
                );
                order.push(id);
                definitions.push(def);
            }
            per_device.push((device.name().to_string(), definitions));
            rules_per_device.push((device.name().to_string(), rules));
        }
        let alarms = LineAlarms::new(
            &config.line,
            per_device
                .iter()
                .map(|(d, defs)| (d.as_str(), defs.as_slice())),
        )?;
        let rules = LineRules::new(
            rules_per_device
                .iter()
                .map(|(d, r)| (d.as_str(), r.as_slice())),
        );
        Ok(Self {
            line: config.line.clone(),
            plugins,
            device_types,
            derived: Derived::default(),
            alarms,
            rules,
            meta,
            order,
            last_events: HashMap::new(),
            processed: HashMap::new(),
        })
    }

    /// Resumes alarms from their persisted state; unknown or unreadable ones are reported and
    /// start fresh.
    pub fn restore(&mut self, saved: &[AlarmStatus]) -> Vec<String> {
        let mut problems = Vec::new();
        for status in saved {
            let Some(json) = &status.snapshot else {
                continue;
            };
            let problem = match serde_json::from_str::<AlarmSnapshot>(json) {
                Ok(snapshot) => match self.alarms.restore(&status.alarm_id, snapshot) {
                    Ok(()) => continue,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            problems.push(format!("alarm {} starts fresh: {problem}", status.alarm_id));
        }
        problems
    }

    /// What the plugins keep for `device` (see [`PluginSet::save_state`]); `None` when its
    /// type has no plugins or it has had no batch yet.
    pub fn plugin_state(&mut self, device: &str) -> Option<String> {
        let device_type = self.device_types.get(device)?;
        self.plugins.get_mut(device_type)?.save_state(device)
    }

    /// Resumes `device`'s plugins from their saved state; what cannot be resumed is reported
    /// and starts fresh.
    pub fn restore_plugins(&mut self, device: &str, saved: &str) -> Vec<String> {
        match self
            .device_types
            .get(device)
            .and_then(|t| self.plugins.get_mut(t))
        {
            Some(set) => set.restore_state(device, saved),
            None => Vec::new(),
        }
    }

    /// Derives the plugins' values into the batch (so they are stored and served like read
    /// ones), then evaluates alarms and rules on it. `batch` is `wire` checked and in domain
    /// types; `current` gives the latest value of a tag of the batch's device from before
    /// this batch.
    pub fn process(
        &mut self,
        wire: &mut v1::SampleBatch,
        mut batch: SampleBatch,
        current: impl Fn(&str) -> Option<Value>,
        now_ns: i64,
    ) -> Effects {
        let mut effects = Effects::default();
        let seen = self.processed.entry(wire.device.clone()).or_insert(0);
        if wire.sequence != 0 && wire.sequence <= *seen {
            return effects;
        }
        *seen = wire.sequence;
        effects.from_the_future = batch.clamp_future(now_ns);
        if let Some(set) = self
            .device_types
            .get(&batch.device)
            .and_then(|t| self.plugins.get_mut(t))
        {
            set.apply_into(&batch, &mut self.derived);
            wire.samples
                .extend(self.derived.samples.iter().cloned().map(v1::Sample::from));
            batch.samples.append(&mut self.derived.samples);
            effects.plugin_events = std::mem::take(&mut self.derived.events);
            effects.plugin_failures = std::mem::take(&mut self.derived.failures);
        }
        let alarms = self.alarms.on_batch(&batch);
        effects.problems.extend(alarms.problems);
        effects.alarm_events = alarms.events.into_iter().map(wire_event).collect();
        if !self.rules.is_empty() {
            // The batch's own value of a tag first, then the one from before it.
            let latest_in_batch = |tag: &str| {
                batch
                    .samples
                    .iter()
                    .rev()
                    .find(|s| s.tag == tag)
                    .map(|s| s.value.clone())
            };
            let current = |tag: &str| latest_in_batch(tag).unwrap_or_else(|| current(tag));
            effects.intents = self.rules.on_batch(&batch, current, now_ns).intents;
        }
        self.remember(&effects.alarm_events);
        effects
    }

    /// Delays and shelve expiries that are due.
    pub fn tick(&mut self, now_ns: i64) -> Vec<v1::AlarmEvent> {
        let events: Vec<_> = self
            .alarms
            .tick(now_ns)
            .into_iter()
            .map(wire_event)
            .collect();
        self.remember(&events);
        events
    }

    pub fn next_deadline(&self) -> Option<i64> {
        self.alarms.next_deadline()
    }

    /// Feeds the outcome of a write's read-back into the tag's read-back alarm.
    pub fn readback(&mut self, device: &str, tag: &str, ok: bool, at_ns: i64) -> Effects {
        let batch = SampleBatch {
            line: self.line.clone(),
            device: device.to_string(),
            adapter_id: String::new(),
            sequence: 0,
            samples: vec![Sample::good(readback_input(tag), Value::Bool(ok), at_ns)],
        };
        let outcome = self.alarms.on_batch(&batch);
        let events: Vec<_> = outcome.events.into_iter().map(wire_event).collect();
        self.remember(&events);
        Effects {
            alarm_events: events,
            problems: outcome.problems,
            ..Effects::default()
        }
    }

    /// The interlock holding a tag, if one has tripped.
    pub fn hold(&self, device: &str, tag: &str) -> Option<Hold> {
        self.rules.hold(device, tag)
    }

    /// Runs an operator action; the transitions it caused.
    pub fn act(
        &mut self,
        action: impl FnOnce(&mut LineAlarms) -> fieldline_core::Result<Vec<AlarmEvent>>,
    ) -> fieldline_core::Result<Vec<v1::AlarmEvent>> {
        let events: Vec<_> = action(&mut self.alarms)?
            .into_iter()
            .map(wire_event)
            .collect();
        self.remember(&events);
        Ok(events)
    }

    fn remember(&mut self, events: &[v1::AlarmEvent]) {
        for e in events {
            self.last_events.insert(e.alarm_id.clone(), e.clone());
        }
    }

    /// The persisted form of the alarms that `events` changed.
    pub fn statuses(&self, events: &[v1::AlarmEvent]) -> Vec<AlarmStatus> {
        let mut ids: Vec<&str> = events.iter().map(|e| e.alarm_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| {
                let meta = self.meta.get(id)?;
                let snapshot = self.alarms.snapshot(id)?;
                let last = self.last_events.get(id)?;
                let state =
                    AlarmState::try_from(v1::AlarmState::try_from(last.to_state).ok()?).ok()?;
                let (active, acked) = state
                    .implied_flags()
                    .unwrap_or((snapshot.condition_active, false));
                Some(AlarmStatus {
                    line: self.line.clone(),
                    alarm_id: id.to_string(),
                    device: meta.device.clone(),
                    tag: meta.tag.clone(),
                    kind: meta.kind.clone(),
                    priority: meta.priority,
                    state,
                    active,
                    acked,
                    shelved_until_ns: (last.shelved_until_ns != 0).then_some(last.shelved_until_ns),
                    value: last.value.clone().and_then(|v| Value::try_from(v).ok()),
                    message: meta.message.clone(),
                    last_seq: last.sequence,
                    changed_ns: last.timestamp_ns,
                    snapshot: serde_json::to_string(&snapshot).ok(),
                })
            })
            .collect()
    }

    /// The alarms that match, for ListAlarms.
    pub fn list(&self, filter: &v1::AlarmFilter) -> Vec<v1::AlarmInfo> {
        let snapshots: HashMap<String, AlarmSnapshot> =
            self.alarms.snapshots().into_iter().collect();
        self.order
            .iter()
            .filter_map(|id| {
                let meta = self.meta.get(id)?;
                if !(filter.line.is_empty() || filter.line == self.line)
                    || !(filter.device.is_empty() || filter.device == meta.device)
                {
                    return None;
                }
                let snapshot = snapshots.get(id)?;
                let state = self
                    .alarms
                    .state(id)
                    .map(v1::AlarmState::from)
                    .unwrap_or(v1::AlarmState::Unspecified);
                if filter.not_normal_only && state == v1::AlarmState::Normal {
                    return None;
                }
                Some(v1::AlarmInfo {
                    alarm_id: id.clone(),
                    tag: format!("{}/{}/{}", self.line, meta.device, meta.tag),
                    kind: meta.kind.clone(),
                    priority: meta.priority,
                    state: state as i32,
                    condition_active: snapshot.condition_active,
                    shelved_until_ns: snapshot.shelved_until_ns.unwrap_or(0),
                    message: meta.message.clone(),
                    last_event: self.last_events.get(id).cloned(),
                })
            })
            .collect()
    }
}

/// The read-back alarm of a writable tag: active while the last write did not read back
/// what was written.
fn readback_alarm_config(tag: &str) -> AlarmConfig {
    AlarmConfig {
        active_when: Some(DiscreteValue::Bool(false)),
        priority: Priority::High,
        message: Some(format!("{tag} did not read back what was written")),
        ..AlarmConfig::new(
            readback_alarm(tag),
            readback_input(tag),
            AlarmKind::Discrete,
        )
    }
}

/// An alarm event in wire form, as it is published, streamed and persisted.
pub fn wire_event(e: AlarmEvent) -> v1::AlarmEvent {
    let t = e.transition;
    v1::AlarmEvent {
        alarm_id: e.alarm_id,
        tag: e.tag,
        kind: e.kind.code().to_string(),
        priority: e.priority.number(),
        from_state: v1::AlarmState::from(t.from).into(),
        to_state: v1::AlarmState::from(t.to).into(),
        value: t.value.map(v1::Value::from),
        timestamp_ns: t.timestamp_ns,
        user: t.user.unwrap_or_default(),
        message: e.message,
        sequence: t.sequence,
        comment: t.comment.unwrap_or_default(),
        shelved_until_ns: t.shelved_until_ns.unwrap_or(0),
        condition_active: t.condition_active,
    }
}

#[cfg(test)]
mod tests {
    use fieldline_core::Sample;
    use prost::Message;

    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn a_sample_from_the_future_does_not_stop_the_alarms() {
        let yaml = "line: l\ndevices:\n  - { name: oven, type: oven, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ { name: temperature, address: \"holding:0\", type: u16 } ] }\ndevice_types:\n  oven:\n    alarms:\n      - { name: hot, tag: temperature, kind: high, limit: 80 }\n";
        let config = fieldline_core::config::LineConfig::from_yaml(yaml).unwrap();
        let mut engine = Engine::new(&config).unwrap();
        let now = 1_800_000_000 * S;
        let mut run = |sequence: u64, value: f64, stamped: i64, at: i64| {
            let batch = SampleBatch {
                line: "l".into(),
                device: "oven".into(),
                adapter_id: "a".into(),
                sequence,
                samples: vec![Sample::good("temperature", Value::F64(value), stamped)],
            };
            let mut wire = v1::SampleBatch::from(batch.clone());
            engine.process(&mut wire, batch, |_| None, at)
        };
        // The device's clock is a year ahead for one reading, then right again.
        let first = run(1, 90.0, now + 365 * 24 * 3600 * S, now);
        assert_eq!(first.from_the_future, 1);
        assert_eq!(first.alarm_events.len(), 1, "{:?}", first.problems);
        assert_eq!(first.alarm_events[0].timestamp_ns, now);
        let second = run(2, 50.0, now + S, now + S);
        assert_eq!(second.from_the_future, 0);
        assert_eq!(
            second.alarm_events.len(),
            1,
            "the reading after the one from the future still moves the alarm: {:?}",
            second.problems
        );
    }

    #[test]
    fn events_survive_the_wire() {
        let def = AlarmConfig {
            limit: Some(80.0),
            priority: Priority::High,
            message: Some("Oven too hot".into()),
            ..AlarmConfig::new("temp-high", "temperature", AlarmKind::High)
        }
        .resolve()
        .unwrap();
        let defs = [def];
        let mut alarms = LineAlarms::new("bakery", [("oven-1", &defs[..])]).unwrap();
        alarms.on_batch(&SampleBatch {
            line: "bakery".into(),
            device: "oven-1".into(),
            adapter_id: "adapter-0".into(),
            sequence: 1,
            samples: vec![Sample::good("temperature", Value::F64(90.0), S)],
        });
        let events: Vec<_> = alarms
            .shelve("bakery/oven-1/temp-high", "bob", 9 * S, "noisy", 2 * S)
            .unwrap()
            .into_iter()
            .map(wire_event)
            .collect();
        let bytes = events[0].encode_to_vec();
        let decoded = v1::AlarmEvent::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, events[0]);
        assert_eq!(
            (
                decoded.sequence,
                decoded.comment.as_str(),
                decoded.shelved_until_ns,
                decoded.condition_active
            ),
            (2, "noisy", 9 * S, true)
        );
        assert_eq!(
            (
                decoded.kind.as_str(),
                decoded.priority,
                decoded.user.as_str()
            ),
            ("hi", 3, "bob")
        );
        assert_eq!(decoded.from_state(), v1::AlarmState::UnackedActive);
        assert_eq!(decoded.to_state(), v1::AlarmState::Shelved);
    }
}
