//! The alarms of one line: each alarm definition of a device type instantiated on every device
//! of that type, fed from the line's sample batches, ticked by the caller's clock and moved by
//! operators. Every transition leaves as an [`AlarmEvent`] for storage and the MES.
//!
//! No I/O and no clock here: the caller passes batches, the time of each tick and action, and
//! persists [`LineAlarms::snapshots`] so a restart resumes every alarm where it was.
//!
//! Alarm ids are `{line}/{device}/{alarm}`; the event's `tag` is the watched tag's path
//! `{line}/{device}/{tag}`.

use std::collections::HashMap;

use super::{
    ActionRefused, AlarmDefinition, AlarmKind, AlarmMachine, AlarmSnapshot, AlarmState,
    AlarmTransition, Priority,
};
use crate::{
    error::{Error, Result},
    sample::SampleBatch,
};

/// One transition of one alarm instance of the line, with what identifies and describes the
/// alarm (as `fieldline.v1.AlarmEvent` carries it).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmEvent {
    /// `{line}/{device}/{alarm}`.
    pub alarm_id: String,
    /// The watched tag's path, `{line}/{device}/{tag}`.
    pub tag: String,
    pub kind: AlarmKind,
    pub priority: Priority,
    /// The configured message, or a description of the condition.
    pub message: String,
    pub transition: AlarmTransition,
}

/// What one batch did to the line's alarms.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchAlarms {
    pub events: Vec<AlarmEvent>,
    /// Samples that could not be evaluated (other than Bad quality), one line each.
    pub problems: Vec<String>,
}

/// Which input of an alarm a tag feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Value,
    Setpoint,
}

struct Instance {
    id: String,
    tag_path: String,
    machine: AlarmMachine,
}

/// The alarm instances of one line.
pub struct LineAlarms {
    line: String,
    alarms: Vec<Instance>,
    by_id: HashMap<String, usize>,
    /// (device, tag) → the alarms it feeds, in definition order.
    by_tag: HashMap<(String, String), Vec<(usize, Input)>>,
}

impl std::fmt::Debug for LineAlarms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineAlarms")
            .field("line", &self.line)
            .field("alarms", &self.alarms.len())
            .finish()
    }
}

/// The id of an alarm instance.
pub fn alarm_id(line: &str, device: &str, alarm: &str) -> String {
    format!("{line}/{device}/{alarm}")
}

impl LineAlarms {
    /// Instantiates, for each device, the alarms of its type (validated definitions).
    pub fn new<'a>(
        line: &str,
        devices: impl IntoIterator<Item = (&'a str, &'a [AlarmDefinition])>,
    ) -> Result<Self> {
        let mut this = Self {
            line: line.to_string(),
            alarms: Vec::new(),
            by_id: HashMap::new(),
            by_tag: HashMap::new(),
        };
        for (device, definitions) in devices {
            for def in definitions {
                let id = alarm_id(line, device, &def.name);
                if this.by_id.contains_key(&id) {
                    return Err(Error::DuplicateAlarm(id));
                }
                let index = this.alarms.len();
                let mut route = |tag: &str, input| {
                    this.by_tag
                        .entry((device.to_string(), tag.to_string()))
                        .or_default()
                        .push((index, input));
                };
                route(&def.tag, Input::Value);
                if let Some(sp) = def.condition.setpoint_tag() {
                    route(sp, Input::Setpoint);
                }
                this.by_id.insert(id.clone(), index);
                this.alarms.push(Instance {
                    id,
                    tag_path: format!("{line}/{device}/{}", def.tag),
                    machine: AlarmMachine::new(def.clone()),
                });
            }
        }
        Ok(this)
    }

    /// The ids of all alarm instances, in definition order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.alarms.iter().map(|a| a.id.as_str())
    }

    pub fn state(&self, id: &str) -> Option<AlarmState> {
        self.by_id.get(id).map(|&i| self.alarms[i].machine.state())
    }

    /// Evaluates the samples of a batch in order against every alarm that watches them.
    pub fn on_batch(&mut self, batch: &SampleBatch) -> BatchAlarms {
        let mut result = BatchAlarms::default();
        if batch.line != self.line {
            result.problems.push(format!(
                "batch of line {:?} (device {:?}) reached the alarms of line {:?}; ignored",
                batch.line, batch.device, self.line
            ));
            return result;
        }
        for sample in &batch.samples {
            let key = (batch.device.clone(), sample.tag.clone());
            let Some(routes) = self.by_tag.get(&key) else {
                continue;
            };
            for &(index, input) in routes {
                let instance = &mut self.alarms[index];
                let outcome = match input {
                    Input::Value => instance.machine.on_sample(sample),
                    Input::Setpoint => instance.machine.on_setpoint(sample),
                };
                if let Some(problem) = outcome.problem {
                    result
                        .problems
                        .push(format!("alarm {}: {problem}", instance.id));
                }
                result
                    .events
                    .extend(outcome.transitions.into_iter().map(|t| event(instance, t)));
            }
        }
        result
    }

    /// Time passes for every alarm: delays and shelve expiries due by `now_ns` complete.
    pub fn tick(&mut self, now_ns: i64) -> Vec<AlarmEvent> {
        let mut events = Vec::new();
        for instance in &mut self.alarms {
            let transitions = instance.machine.tick(now_ns);
            events.extend(transitions.into_iter().map(|t| event(instance, t)));
        }
        events
    }

    /// The earliest time a tick would change something, so the caller can sleep until then.
    pub fn next_deadline(&self) -> Option<i64> {
        self.alarms
            .iter()
            .filter_map(|a| a.machine.next_deadline())
            .min()
    }

    pub fn acknowledge(
        &mut self,
        id: &str,
        user: &str,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmEvent>> {
        self.act(id, |m| m.acknowledge(user, comment, at_ns))
    }

    pub fn shelve(
        &mut self,
        id: &str,
        user: &str,
        until_ns: i64,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmEvent>> {
        self.act(id, |m| m.shelve(user, until_ns, comment, at_ns))
    }

    pub fn unshelve(
        &mut self,
        id: &str,
        user: &str,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmEvent>> {
        self.act(id, |m| m.unshelve(user, comment, at_ns))
    }

    pub fn remove_from_service(
        &mut self,
        id: &str,
        user: &str,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmEvent>> {
        self.act(id, |m| m.remove_from_service(user, comment, at_ns))
    }

    pub fn return_to_service(
        &mut self,
        id: &str,
        user: &str,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmEvent>> {
        self.act(id, |m| m.return_to_service(user, comment, at_ns))
    }

    fn act(
        &mut self,
        id: &str,
        action: impl FnOnce(&mut AlarmMachine) -> Result<Vec<AlarmTransition>, ActionRefused>,
    ) -> Result<Vec<AlarmEvent>> {
        let index = *self
            .by_id
            .get(id)
            .ok_or_else(|| Error::UnknownAlarm(id.to_string()))?;
        let instance = &mut self.alarms[index];
        let transitions = action(&mut instance.machine).map_err(|source| Error::AlarmRefused {
            id: id.to_string(),
            source,
        })?;
        Ok(transitions
            .into_iter()
            .map(|t| event(instance, t))
            .collect())
    }

    /// The persisted form of one alarm.
    pub fn snapshot(&self, id: &str) -> Option<AlarmSnapshot> {
        self.by_id
            .get(id)
            .map(|&i| self.alarms[i].machine.snapshot())
    }

    /// What to persist: every alarm's snapshot by id.
    pub fn snapshots(&self) -> Vec<(String, AlarmSnapshot)> {
        self.alarms
            .iter()
            .map(|a| (a.id.clone(), a.machine.snapshot()))
            .collect()
    }

    /// Resumes one alarm from its persisted snapshot (see [`AlarmMachine::restore`]). An id
    /// that is no longer configured, or an inconsistent snapshot, is an error and leaves the
    /// alarm as it was.
    pub fn restore(&mut self, id: &str, snapshot: AlarmSnapshot) -> Result<()> {
        let index = *self
            .by_id
            .get(id)
            .ok_or_else(|| Error::UnknownAlarm(id.to_string()))?;
        let instance = &mut self.alarms[index];
        let def = instance.machine.definition().clone();
        instance.machine =
            AlarmMachine::restore(def, snapshot).map_err(|source| Error::AlarmSnapshot {
                id: id.to_string(),
                source,
            })?;
        Ok(())
    }
}

fn event(instance: &Instance, transition: AlarmTransition) -> AlarmEvent {
    let def = instance.machine.definition();
    AlarmEvent {
        alarm_id: instance.id.clone(),
        tag: instance.tag_path.clone(),
        kind: def.kind(),
        priority: def.priority,
        message: def.message.clone(),
        transition,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        alarm::{AlarmConfig, validate_alarms},
        sample::{Quality, QualityReason, Sample, Value},
    };

    const S: i64 = 1_000_000_000;

    fn config(name: &str, kind: AlarmKind) -> AlarmConfig {
        AlarmConfig::new(name, "temperature", kind)
    }

    /// A high limit, a deviation from a setpoint tag, and a bad-quality alarm with a delay.
    fn oven_definitions() -> Vec<AlarmDefinition> {
        let configs = [
            AlarmConfig {
                limit: Some(80.0),
                deadband: Some(2.0),
                priority: Priority::High,
                message: Some("Oven too hot".into()),
                ..config("temp-high", AlarmKind::High)
            },
            AlarmConfig {
                limit: Some(10.0),
                setpoint_tag: Some("temperature_sp".into()),
                ..config("temp-off-target", AlarmKind::Deviation)
            },
            AlarmConfig {
                on_delay: Duration::from_secs(10),
                ..config("temp-bad", AlarmKind::BadQuality)
            },
        ];
        let problems = validate_alarms(&configs, "oven", &["temperature", "temperature_sp"]);
        assert!(problems.is_empty(), "{problems:?}");
        configs.iter().map(|c| c.resolve().unwrap()).collect()
    }

    fn line(defs: &[AlarmDefinition]) -> LineAlarms {
        LineAlarms::new("bakery", [("oven-1", defs), ("oven-2", defs)]).unwrap()
    }

    fn batch(device: &str, samples: Vec<Sample>) -> SampleBatch {
        SampleBatch {
            line: "bakery".into(),
            device: device.into(),
            adapter_id: "adapter-0".into(),
            sequence: 1,
            samples,
        }
    }

    fn temp(v: f64, t: i64) -> Sample {
        Sample::good("temperature", Value::F64(v), t)
    }

    fn moves(events: &[AlarmEvent]) -> Vec<(&str, AlarmState, AlarmState)> {
        events
            .iter()
            .map(|e| (e.alarm_id.as_str(), e.transition.from, e.transition.to))
            .collect()
    }

    use AlarmState::{
        AckedActive as AA, Normal as N, ReturnedUnacked as RU, Shelved as SH, UnackedActive as UA,
    };

    #[test]
    fn alarms_are_instantiated_per_device_and_fed_by_their_tags() {
        let defs = oven_definitions();
        let mut alarms = line(&defs);
        assert_eq!(
            alarms.ids().collect::<Vec<_>>(),
            [
                "bakery/oven-1/temp-high",
                "bakery/oven-1/temp-off-target",
                "bakery/oven-1/temp-bad",
                "bakery/oven-2/temp-high",
                "bakery/oven-2/temp-off-target",
                "bakery/oven-2/temp-bad",
            ]
        );
        let out = alarms.on_batch(&batch(
            "oven-1",
            vec![
                Sample::good("temperature_sp", Value::F64(70.0), S),
                temp(85.0, S),
            ],
        ));
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(
            moves(&out.events),
            [
                ("bakery/oven-1/temp-high", N, UA),
                ("bakery/oven-1/temp-off-target", N, UA),
            ]
        );
        let e = &out.events[0];
        assert_eq!(e.tag, "bakery/oven-1/temperature");
        assert_eq!(e.kind.code(), "hi");
        assert_eq!(e.priority.number(), 3);
        assert_eq!(e.message, "Oven too hot");
        assert_eq!(e.transition.sequence, 1);
        assert_eq!(e.transition.timestamp_ns, S);
        assert_eq!(e.transition.value, Some(Value::F64(85.0)));
        assert!(e.transition.condition_active);
        assert_eq!(e.transition.user, None);
        assert_eq!(
            out.events[1].kind.code(),
            AlarmKind::Deviation.code(),
            "the wire code of the kind"
        );
        assert_eq!(
            alarms.state("bakery/oven-2/temp-high"),
            Some(AlarmState::Normal)
        );
        // Tags no alarm watches are skipped.
        let other = alarms.on_batch(&batch(
            "oven-2",
            vec![Sample::good("door", Value::Bool(true), 2 * S)],
        ));
        assert_eq!(other, BatchAlarms::default());
    }

    #[test]
    fn operators_act_on_alarms_by_id() {
        let defs = oven_definitions();
        let mut alarms = line(&defs);
        alarms.on_batch(&batch("oven-1", vec![temp(90.0, S)]));
        let id = "bakery/oven-1/temp-high";
        let ack = alarms
            .acknowledge(id, "alice", "checking door", 2 * S)
            .unwrap();
        assert_eq!(moves(&ack), [(id, UA, AA)]);
        assert_eq!(
            (
                ack[0].transition.user.as_deref(),
                ack[0].transition.comment.as_deref()
            ),
            (Some("alice"), Some("checking door"))
        );
        assert_eq!(ack[0].transition.sequence, 2);
        let shelve = alarms.shelve(id, "bob", 60 * S, "", 3 * S).unwrap();
        assert_eq!(moves(&shelve), [(id, AA, SH)]);
        assert_eq!(shelve[0].transition.shelved_until_ns, Some(60 * S));
        assert!(
            alarms
                .on_batch(&batch("oven-1", vec![temp(50.0, 4 * S)]))
                .events
                .is_empty()
        );
        assert_eq!(alarms.next_deadline(), Some(60 * S));
        let expired = alarms.tick(61 * S);
        assert_eq!(moves(&expired), [(id, SH, N)]);
        assert_eq!(expired[0].transition.timestamp_ns, 60 * S);

        let unknown = alarms.acknowledge("bakery/oven-9/temp-high", "alice", "", 62 * S);
        assert!(
            matches!(unknown, Err(Error::UnknownAlarm(_))),
            "{unknown:?}"
        );
        alarms
            .remove_from_service(id, "carol", "probe swap", 63 * S)
            .unwrap();
        let refused = alarms.shelve(id, "dave", 100 * S, "", 64 * S).unwrap_err();
        assert_eq!(refused.kind(), "alarm_refused");
        assert_eq!(
            refused.to_string(),
            "alarm \"bakery/oven-1/temp-high\": the alarm is out of service; return it to service first"
        );
        let back = alarms.return_to_service(id, "carol", "", 65 * S).unwrap();
        assert_eq!(back[0].transition.to, N);
        assert!(alarms.unshelve(id, "carol", "", 66 * S).unwrap().is_empty());
    }

    #[test]
    fn bad_quality_is_annunciated_after_its_delay_and_holds_the_limit_alarm() {
        let defs = oven_definitions();
        let mut alarms = line(&defs);
        alarms.on_batch(&batch("oven-2", vec![temp(90.0, 0)]));
        let bad = Sample::bad(
            "temperature",
            Quality::bad(QualityReason::CommFailure, "timeout"),
            S,
        );
        let out = alarms.on_batch(&batch("oven-2", vec![bad]));
        assert!(out.events.is_empty() && out.problems.is_empty(), "{out:?}");
        assert_eq!(alarms.next_deadline(), Some(11 * S));
        let raised = alarms.tick(12 * S);
        assert_eq!(moves(&raised), [("bakery/oven-2/temp-bad", N, UA)]);
        assert_eq!(raised[0].transition.value, None);
        assert_eq!(
            alarms.state("bakery/oven-2/temp-high"),
            Some(AlarmState::UnackedActive)
        );
    }

    #[test]
    fn unusable_samples_and_foreign_batches_are_reported() {
        let defs = oven_definitions();
        let mut alarms = line(&defs);
        let out = alarms.on_batch(&batch(
            "oven-1",
            vec![Sample::good("temperature", Value::String("hot".into()), S)],
        ));
        assert!(out.events.is_empty());
        assert!(
            out.problems.iter().any(|p| p
                == "alarm bakery/oven-1/temp-high: temperature: value \"hot\" is not a usable number"),
            "{:?}",
            out.problems
        );
        let mut foreign = batch("oven-1", vec![temp(99.0, 2 * S)]);
        foreign.line = "packaging".into();
        let out = alarms.on_batch(&foreign);
        assert!(out.events.is_empty());
        assert!(
            out.problems[0].contains("line \"packaging\""),
            "{:?}",
            out.problems
        );
    }

    #[test]
    fn a_restarted_line_resumes_without_raising_again() {
        let defs = oven_definitions();
        let mut before = line(&defs);
        before.on_batch(&batch("oven-1", vec![temp(90.0, S)]));
        // Snapshots go through JSON in storage; that round trip is tested with the machine.
        let saved = before.snapshots();

        let mut after = line(&defs);
        for (id, snapshot) in saved {
            after.restore(&id, snapshot).unwrap();
        }
        assert!(
            after
                .on_batch(&batch("oven-1", vec![temp(91.0, 10 * S)]))
                .events
                .is_empty()
        );
        let cleared = after.on_batch(&batch("oven-1", vec![temp(60.0, 11 * S)]));
        assert_eq!(
            moves(&cleared.events),
            [("bakery/oven-1/temp-high", UA, RU)]
        );
        assert_eq!(
            cleared.events[0].transition.sequence, 2,
            "numbering continues"
        );
        assert!(
            after
                .on_batch(&batch("oven-1", vec![temp(61.0, 12 * S)]))
                .events
                .is_empty()
        );

        let gone = after.restore("bakery/oven-1/old-alarm", AlarmSnapshot::initial());
        assert!(matches!(gone, Err(Error::UnknownAlarm(_))));
        let mut broken = AlarmSnapshot::initial();
        broken.condition_active = true;
        let err = after
            .restore("bakery/oven-1/temp-high", broken)
            .unwrap_err();
        assert_eq!(err.kind(), "alarm_snapshot");
        assert_eq!(
            after.state("bakery/oven-1/temp-high"),
            Some(AlarmState::ReturnedUnacked)
        );
    }

    #[test]
    fn duplicate_instances_are_refused() {
        let defs = oven_definitions();
        let twice = LineAlarms::new("bakery", [("oven-1", &defs[..]), ("oven-1", &defs[..1])]);
        assert!(matches!(twice, Err(Error::DuplicateAlarm(id)) if id == "bakery/oven-1/temp-high"));
    }
}
