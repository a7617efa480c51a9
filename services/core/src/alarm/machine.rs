//! The ISA-18.2 state machine of one alarm instance (one alarm definition on one device).
//!
//! Pure and deterministic: every input carries its time (ns since the Unix epoch) and every
//! call returns the transitions it caused, so tests drive it exactly and a restart can resume
//! it from an [`AlarmSnapshot`].
//!
//! Two layers:
//! - the **condition**: the raw condition is evaluated from each sample (with the deadband as
//!   hysteresis); it becomes the alarm's condition only after it has held for `on_delay`
//!   (becoming active) or `off_delay` (clearing). A sample whose value cannot be evaluated (Bad
//!   quality, no value, a value of the wrong type) holds the condition as it is and restarts
//!   any running delay, so unknown data neither raises nor clears an alarm; `bad_quality`
//!   alarms are how Bad data is annunciated.
//! - the **state**: normal, unacked active, acked active, returned unacked, shelved, out of
//!   service. Condition changes and operator actions move it; every move is one
//!   [`AlarmTransition`] with a per-alarm sequence number.
//!
//! Time: samples, ticks and actions share one time axis. The machine's clock only moves
//! forward; an input older than the clock is applied at the clock's time. Delays and shelve
//! expiry complete at exactly `start + delay` (or the expiry), whichever input first reaches
//! that time, and the transition carries that time.

use serde::{Deserialize, Serialize};

use super::{AlarmDefinition, Condition, Setpoint};
use crate::sample::{Sample, Value};

/// Where an alarm stands (ISA-18.2 alarm states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// Condition inactive, nothing to acknowledge.
    Normal,
    /// Condition active, not yet acknowledged.
    UnackedActive,
    /// Condition active, acknowledged.
    AckedActive,
    /// Condition cleared before anyone acknowledged it.
    ReturnedUnacked,
    /// Suppressed by an operator until an expiry; the condition is still tracked.
    Shelved,
    /// Taken out of service (maintenance); the condition is still tracked.
    OutOfService,
}

impl AlarmState {
    pub const ALL: [AlarmState; 6] = [
        AlarmState::Normal,
        AlarmState::UnackedActive,
        AlarmState::AckedActive,
        AlarmState::ReturnedUnacked,
        AlarmState::Shelved,
        AlarmState::OutOfService,
    ];

    /// The state's name, as stored in the database.
    pub fn code(self) -> &'static str {
        match self {
            AlarmState::Normal => "normal",
            AlarmState::UnackedActive => "unacked_active",
            AlarmState::AckedActive => "acked_active",
            AlarmState::ReturnedUnacked => "returned_unacked",
            AlarmState::Shelved => "shelved",
            AlarmState::OutOfService => "out_of_service",
        }
    }

    /// The state of a stored name; `None` for a name this version does not know.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Whether the alarm condition is present and whether it is acknowledged, for the states
    /// that say so; shelved and out-of-service alarms keep their condition beside the state.
    pub fn implied_flags(self) -> Option<(bool, bool)> {
        match self {
            AlarmState::Normal => Some((false, true)),
            AlarmState::UnackedActive => Some((true, false)),
            AlarmState::AckedActive => Some((true, true)),
            AlarmState::ReturnedUnacked => Some((false, false)),
            AlarmState::Shelved | AlarmState::OutOfService => None,
        }
    }

    /// Whether the state implies the condition: `Some(true)` for the active states,
    /// `Some(false)` for normal and returned unacked, `None` when suppressed (either).
    fn implied_condition(self) -> Option<bool> {
        match self {
            AlarmState::UnackedActive | AlarmState::AckedActive => Some(true),
            AlarmState::Normal | AlarmState::ReturnedUnacked => Some(false),
            AlarmState::Shelved | AlarmState::OutOfService => None,
        }
    }

    /// The state an alarm takes when it stops being suppressed: an alarm that is still active
    /// is annunciated again.
    fn from_condition(active: bool) -> Self {
        if active {
            AlarmState::UnackedActive
        } else {
            AlarmState::Normal
        }
    }
}

impl std::fmt::Display for AlarmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// What moved the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The condition became active or cleared (after its delay).
    Condition,
    Acknowledged,
    Shelved,
    /// The shelve expiry passed.
    ShelveExpired,
    Unshelved,
    RemovedFromService,
    ReturnedToService,
}

/// One state transition of one alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmTransition {
    /// Per alarm, 1 for the first transition and one more for each after it, also across
    /// restarts (it is part of the snapshot): storage keys events by alarm and sequence.
    pub sequence: u64,
    pub from: AlarmState,
    pub to: AlarmState,
    pub cause: Cause,
    /// The latest value of the alarm's tag; `None` when it is Bad, not a finite number, or not
    /// yet known.
    pub value: Option<Value>,
    pub timestamp_ns: i64,
    /// The operator, for operator actions.
    pub user: Option<String>,
    /// The operator's comment, when one was given.
    pub comment: Option<String>,
    /// Set while the alarm is shelved.
    pub shelved_until_ns: Option<i64>,
    /// The condition after the transition (tracked also while shelved or out of service).
    pub condition_active: bool,
}

/// What a sample did: the transitions it caused and, when its value could not be evaluated
/// for a reason other than Bad quality, why (the condition was held).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleOutcome {
    pub transitions: Vec<AlarmTransition>,
    pub problem: Option<String>,
}

/// Why an operator action was not carried out. A refused action changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionRefused {
    #[error("an operator action needs the name of the user who takes it")]
    NoUser,
    #[error("the alarm is shelved until {until_ns} ns; unshelve it first")]
    Shelved { until_ns: i64 },
    #[error("the alarm is out of service; return it to service first")]
    OutOfService,
    #[error("shelve expiry {until_ns} ns is not after the alarm's current time {now_ns} ns")]
    ExpiryNotInFuture { until_ns: i64, now_ns: i64 },
}

impl ActionRefused {
    /// Short kind for metrics and API status details.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ActionRefused::NoUser => "no_user",
            ActionRefused::Shelved { .. } => "shelved",
            ActionRefused::OutOfService => "out_of_service",
            ActionRefused::ExpiryNotInFuture { .. } => "expiry_not_in_future",
        }
    }
}

/// A snapshot that cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alarm snapshot is inconsistent: {0}")]
pub struct SnapshotError(pub String);

/// A tag value in a form that can be persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredValue {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    String(String),
}

impl From<&Value> for StoredValue {
    fn from(v: &Value) -> Self {
        match v {
            Value::Bool(b) => StoredValue::Bool(*b),
            Value::I64(i) => StoredValue::I64(*i),
            Value::U64(u) => StoredValue::U64(*u),
            Value::F64(f) => StoredValue::F64(*f),
            Value::String(s) => StoredValue::String(s.clone()),
        }
    }
}

impl From<&StoredValue> for Value {
    fn from(v: &StoredValue) -> Self {
        match v {
            StoredValue::Bool(b) => Value::Bool(*b),
            StoredValue::I64(i) => Value::I64(*i),
            StoredValue::U64(u) => Value::U64(*u),
            StoredValue::F64(f) => Value::F64(*f),
            StoredValue::String(s) => Value::String(s.clone()),
        }
    }
}

/// A good numeric reading kept for the rate of change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimedValue {
    pub value: f64,
    pub timestamp_ns: i64,
}

/// Everything an alarm instance remembers; persisted after each transition and handed to
/// [`AlarmMachine::restore`] after a restart. Fields added later get defaults, so older
/// snapshots keep loading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmSnapshot {
    pub state: AlarmState,
    /// The (delayed) condition.
    pub condition_active: bool,
    /// Since when the raw condition differs from `condition_active`: the running on- or
    /// off-delay.
    #[serde(default)]
    pub pending_since_ns: Option<i64>,
    #[serde(default)]
    pub shelved_until_ns: Option<i64>,
    /// Sequence of the last transition; 0 before the first.
    #[serde(default)]
    pub sequence: u64,
    /// The machine's clock.
    #[serde(default)]
    pub now_ns: i64,
    /// Latest value of the alarm's tag; `None` when it was Bad or not a finite number.
    #[serde(default)]
    pub last_value: Option<StoredValue>,
    /// Source time of the latest sample of the alarm's tag.
    #[serde(default)]
    pub last_sample_ns: Option<i64>,
    /// Latest good numeric reading, for the rate of change.
    #[serde(default)]
    pub previous_good: Option<TimedValue>,
    /// Latest good setpoint, for a deviation alarm with a setpoint tag.
    #[serde(default)]
    pub setpoint: Option<f64>,
    /// Source time of the latest setpoint sample.
    #[serde(default)]
    pub last_setpoint_ns: Option<i64>,
}

impl AlarmSnapshot {
    /// A new alarm: normal, condition inactive, nothing seen.
    pub fn initial() -> Self {
        Self {
            state: AlarmState::Normal,
            condition_active: false,
            pending_since_ns: None,
            shelved_until_ns: None,
            sequence: 0,
            now_ns: i64::MIN,
            last_value: None,
            last_sample_ns: None,
            previous_good: None,
            setpoint: None,
            last_setpoint_ns: None,
        }
    }

    fn check(&self) -> Result<(), SnapshotError> {
        let fail = |m: String| Err(SnapshotError(m));
        if let Some(implied) = self.state.implied_condition()
            && implied != self.condition_active
        {
            return fail(format!(
                "state {} with the condition {}",
                self.state,
                if self.condition_active {
                    "active"
                } else {
                    "inactive"
                }
            ));
        }
        match (self.state, self.shelved_until_ns) {
            (AlarmState::Shelved, None) => return fail("shelved without an expiry".into()),
            (s, Some(_)) if s != AlarmState::Shelved => {
                return fail(format!("state {s} with a shelve expiry"));
            }
            _ => {}
        }
        if let Some(p) = self.pending_since_ns
            && p > self.now_ns
        {
            return fail(format!(
                "delay started at {p} ns, after the clock {} ns",
                self.now_ns
            ));
        }
        if self.previous_good.is_some_and(|p| !p.value.is_finite())
            || self.setpoint.is_some_and(|s| !s.is_finite())
        {
            return fail("a remembered number is not finite".into());
        }
        Ok(())
    }
}

/// One alarm instance: its definition and what it remembers.
#[derive(Debug, Clone)]
pub struct AlarmMachine {
    def: AlarmDefinition,
    s: AlarmSnapshot,
}

/// The raw condition as far as a sample tells it.
enum Raw {
    Known(bool),
    /// Cannot be evaluated: hold the condition, restart delays.
    Unknown,
}

impl AlarmMachine {
    /// A new alarm in the normal state.
    pub fn new(def: AlarmDefinition) -> Self {
        Self {
            def,
            s: AlarmSnapshot::initial(),
        }
    }

    /// Resumes an alarm from what it persisted. Nothing is emitted: an alarm that was active
    /// stays active without a new activation, and the next sample or tick produces the
    /// transitions for whatever changed meanwhile, with sequence numbers continuing.
    pub fn restore(def: AlarmDefinition, snapshot: AlarmSnapshot) -> Result<Self, SnapshotError> {
        snapshot.check()?;
        Ok(Self { def, s: snapshot })
    }

    /// What to persist.
    pub fn snapshot(&self) -> AlarmSnapshot {
        self.s.clone()
    }

    pub fn definition(&self) -> &AlarmDefinition {
        &self.def
    }

    pub fn state(&self) -> AlarmState {
        self.s.state
    }

    /// The delayed condition, tracked in every state.
    pub fn condition_active(&self) -> bool {
        self.s.condition_active
    }

    /// The next time at which a tick would change something (a delay completing, a shelve
    /// expiring), so a caller can schedule its ticks.
    pub fn next_deadline(&self) -> Option<i64> {
        let delay = self.delay_due();
        let expiry = self.expiry_due();
        match (delay, expiry) {
            (Some(d), Some(e)) => Some(d.min(e)),
            (d, e) => d.or(e),
        }
    }

    /// A sample of the alarm's tag. Samples older than the latest one already applied are
    /// ignored (with a problem), since a newer reading has superseded them.
    pub fn on_sample(&mut self, sample: &Sample) -> SampleOutcome {
        let mut out = SampleOutcome::default();
        if let Some(last) = self.s.last_sample_ns
            && sample.timestamp_ns < last
        {
            out.problem = Some(format!(
                "{}: sample at {} ns is older than the one at {last} ns; ignored",
                self.def.tag, sample.timestamp_ns
            ));
            return out;
        }
        let t = self.s.now_ns.max(sample.timestamp_ns);
        self.advance(t, &mut out.transitions);
        self.s.last_sample_ns = Some(sample.timestamp_ns);
        // A number that is not finite is no usable value (and could not be persisted).
        self.s.last_value = match &sample.value {
            Some(Value::F64(f)) if !f.is_finite() => None,
            Some(v) if !sample.quality.is_bad() => Some(StoredValue::from(v)),
            _ => None,
        };
        let (raw, problem) = self.evaluate_sample(sample);
        out.problem = problem;
        self.apply_raw(raw, t, &mut out.transitions);
        out
    }

    /// A sample of the setpoint tag of a deviation alarm; the deviation is evaluated again
    /// against the latest value of the alarm's tag.
    pub fn on_setpoint(&mut self, sample: &Sample) -> SampleOutcome {
        let mut out = SampleOutcome::default();
        let Some(sp_tag) = self.def.condition.setpoint_tag().map(str::to_string) else {
            out.problem = Some(format!(
                "alarm {} has no setpoint tag; setpoint sample of {} ignored",
                self.def.name, sample.tag
            ));
            return out;
        };
        if let Some(last) = self.s.last_setpoint_ns
            && sample.timestamp_ns < last
        {
            out.problem = Some(format!(
                "{sp_tag}: sample at {} ns is older than the one at {last} ns; ignored",
                sample.timestamp_ns
            ));
            return out;
        }
        let t = self.s.now_ns.max(sample.timestamp_ns);
        self.advance(t, &mut out.transitions);
        self.s.last_setpoint_ns = Some(sample.timestamp_ns);
        self.s.setpoint = None;
        if !sample.quality.is_bad() {
            match sample.value.as_ref().map(|v| (v, v.as_f64())) {
                Some((_, Some(sp))) if sp.is_finite() => self.s.setpoint = Some(sp),
                Some((v, _)) => {
                    out.problem = Some(format!("{sp_tag}: setpoint {v} is not a usable number"));
                }
                None => {
                    out.problem = Some(format!(
                        "{sp_tag}: sample has no value though its quality is {}",
                        sample.quality
                    ));
                }
            }
        }
        let raw = match (self.last_number(), self.s.setpoint, &self.def.condition) {
            (Some(pv), Some(sp), Condition::Deviation { limit, .. }) => {
                Raw::Known(self.beyond((pv - sp).abs(), limit.limit, limit.deadband))
            }
            _ => Raw::Unknown,
        };
        self.apply_raw(raw, t, &mut out.transitions);
        out
    }

    /// Time passes: completes delays and shelve expiries due by `now_ns`.
    pub fn tick(&mut self, now_ns: i64) -> Vec<AlarmTransition> {
        let mut out = Vec::new();
        self.advance(now_ns, &mut out);
        out
    }

    /// Acknowledges the alarm: unacked active → acked active, returned unacked → normal.
    /// Acknowledging an alarm with nothing to acknowledge (normal, acked active) does nothing
    /// and is not an error, so a retried request is harmless. Refused while shelved or out of
    /// service, where operators do not see the alarm.
    pub fn acknowledge(
        &mut self,
        user: &str,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmTransition>, ActionRefused> {
        let (mut next, t, mut out) = self.probe(user, at_ns)?;
        let to = match next.s.state {
            AlarmState::UnackedActive => Some(AlarmState::AckedActive),
            AlarmState::ReturnedUnacked => Some(AlarmState::Normal),
            AlarmState::Normal | AlarmState::AckedActive => None,
            AlarmState::Shelved => {
                return Err(ActionRefused::Shelved {
                    until_ns: next.s.shelved_until_ns.unwrap_or(t),
                });
            }
            AlarmState::OutOfService => return Err(ActionRefused::OutOfService),
        };
        if let Some(to) = to {
            next.emit(to, t, Cause::Acknowledged, Some((user, comment)), &mut out);
        }
        *self = next;
        Ok(out)
    }

    /// Shelves the alarm until `until_ns`: no annunciation until then, the condition is still
    /// tracked. Shelving a shelved alarm sets the new expiry (and is recorded). Refused out of
    /// service and for an expiry that is not in the future.
    pub fn shelve(
        &mut self,
        user: &str,
        until_ns: i64,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmTransition>, ActionRefused> {
        let (mut next, t, mut out) = self.probe(user, at_ns)?;
        if next.s.state == AlarmState::OutOfService {
            return Err(ActionRefused::OutOfService);
        }
        if until_ns <= t {
            return Err(ActionRefused::ExpiryNotInFuture {
                until_ns,
                now_ns: t,
            });
        }
        next.s.shelved_until_ns = Some(until_ns);
        next.emit(
            AlarmState::Shelved,
            t,
            Cause::Shelved,
            Some((user, comment)),
            &mut out,
        );
        *self = next;
        Ok(out)
    }

    /// Ends shelving early; the alarm takes the state its condition calls for (unacked active
    /// when the condition is active). Does nothing when the alarm is not shelved; refused out
    /// of service.
    pub fn unshelve(
        &mut self,
        user: &str,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmTransition>, ActionRefused> {
        let (mut next, t, mut out) = self.probe(user, at_ns)?;
        match next.s.state {
            AlarmState::OutOfService => return Err(ActionRefused::OutOfService),
            AlarmState::Shelved => {
                next.s.shelved_until_ns = None;
                let to = AlarmState::from_condition(next.s.condition_active);
                next.emit(to, t, Cause::Unshelved, Some((user, comment)), &mut out);
            }
            _ => {}
        }
        *self = next;
        Ok(out)
    }

    /// Takes the alarm out of service (from any state, ending a shelve). Does nothing when it
    /// already is.
    pub fn remove_from_service(
        &mut self,
        user: &str,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmTransition>, ActionRefused> {
        let (mut next, t, mut out) = self.probe(user, at_ns)?;
        if next.s.state != AlarmState::OutOfService {
            next.s.shelved_until_ns = None;
            next.emit(
                AlarmState::OutOfService,
                t,
                Cause::RemovedFromService,
                Some((user, comment)),
                &mut out,
            );
        }
        *self = next;
        Ok(out)
    }

    /// Returns the alarm to service in the state its condition calls for. Does nothing when it
    /// is in service.
    pub fn return_to_service(
        &mut self,
        user: &str,
        comment: &str,
        at_ns: i64,
    ) -> Result<Vec<AlarmTransition>, ActionRefused> {
        let (mut next, t, mut out) = self.probe(user, at_ns)?;
        if next.s.state == AlarmState::OutOfService {
            let to = AlarmState::from_condition(next.s.condition_active);
            next.emit(
                to,
                t,
                Cause::ReturnedToService,
                Some((user, comment)),
                &mut out,
            );
        }
        *self = next;
        Ok(out)
    }

    /// The machine as it is at `at_ns` (delays and expiries due by then completed), on a copy,
    /// so a refused action leaves `self` untouched.
    fn probe(
        &self,
        user: &str,
        at_ns: i64,
    ) -> Result<(Self, i64, Vec<AlarmTransition>), ActionRefused> {
        if user.trim().is_empty() {
            return Err(ActionRefused::NoUser);
        }
        let mut next = self.clone();
        let t = next.s.now_ns.max(at_ns);
        let mut out = Vec::new();
        next.advance(t, &mut out);
        Ok((next, t, out))
    }

    fn delay_due(&self) -> Option<i64> {
        let delay = if self.s.condition_active {
            self.def.off_delay_ns
        } else {
            self.def.on_delay_ns
        };
        self.s
            .pending_since_ns
            .map(|since| since.saturating_add(delay.max(0)))
    }

    fn expiry_due(&self) -> Option<i64> {
        match self.s.state {
            AlarmState::Shelved => self.s.shelved_until_ns,
            _ => None,
        }
    }

    /// Moves the clock to `to`, completing in time order every delay and expiry due by then.
    /// A delay due at the same time as the expiry completes first, so the alarm leaves the
    /// shelf in the state of its settled condition.
    fn advance(&mut self, to: i64, out: &mut Vec<AlarmTransition>) {
        loop {
            let delay = self.delay_due().filter(|d| *d <= to);
            let expiry = self.expiry_due().filter(|e| *e <= to);
            match (delay, expiry) {
                (Some(e_delay), Some(e)) if e < e_delay => self.expire(e, out),
                (Some(d), _) => {
                    let at = d.max(self.s.now_ns);
                    self.s.now_ns = at;
                    self.settle(!self.s.condition_active, at, out);
                }
                (None, Some(e)) => self.expire(e, out),
                (None, None) => break,
            }
        }
        self.s.now_ns = self.s.now_ns.max(to);
    }

    fn expire(&mut self, expiry: i64, out: &mut Vec<AlarmTransition>) {
        let at = expiry.max(self.s.now_ns);
        self.s.now_ns = at;
        self.s.shelved_until_ns = None;
        let to = AlarmState::from_condition(self.s.condition_active);
        self.emit(to, at, Cause::ShelveExpired, None, out);
    }

    /// The raw condition after an evaluation at `t`: starts, stops or completes a delay.
    fn apply_raw(&mut self, raw: Raw, t: i64, out: &mut Vec<AlarmTransition>) {
        match raw {
            Raw::Unknown => self.s.pending_since_ns = None,
            Raw::Known(r) if r == self.s.condition_active => self.s.pending_since_ns = None,
            Raw::Known(_) => {
                if self.s.pending_since_ns.is_none() {
                    self.s.pending_since_ns = Some(t);
                }
                self.advance(t, out);
            }
        }
    }

    /// The condition changes (its delay is over).
    fn settle(&mut self, active: bool, at: i64, out: &mut Vec<AlarmTransition>) {
        self.s.condition_active = active;
        self.s.pending_since_ns = None;
        let to = match (self.s.state, active) {
            (AlarmState::Normal | AlarmState::ReturnedUnacked, true) => {
                Some(AlarmState::UnackedActive)
            }
            (AlarmState::UnackedActive, false) => Some(AlarmState::ReturnedUnacked),
            (AlarmState::AckedActive, false) => Some(AlarmState::Normal),
            _ => None,
        };
        if let Some(to) = to {
            self.emit(to, at, Cause::Condition, None, out);
        }
    }

    fn emit(
        &mut self,
        to: AlarmState,
        at: i64,
        cause: Cause,
        operator: Option<(&str, &str)>,
        out: &mut Vec<AlarmTransition>,
    ) {
        self.s.sequence = self.s.sequence.saturating_add(1);
        let (user, comment) = match operator {
            Some((user, comment)) => (
                Some(user.to_string()),
                Some(comment.to_string()).filter(|c| !c.trim().is_empty()),
            ),
            None => (None, None),
        };
        out.push(AlarmTransition {
            sequence: self.s.sequence,
            from: self.s.state,
            to,
            cause,
            value: self.s.last_value.as_ref().map(Value::from),
            timestamp_ns: at,
            user,
            comment,
            shelved_until_ns: self.s.shelved_until_ns,
            condition_active: self.s.condition_active,
        });
        self.s.state = to;
    }

    /// The raw condition's reference for the deadband: what the raw condition was before this
    /// sample (the condition, or its opposite while a delay runs).
    fn raw_before(&self) -> bool {
        self.s.condition_active != self.s.pending_since_ns.is_some()
    }

    /// `value` at or beyond `limit`, or still within `deadband` of it when it was beyond.
    fn beyond(&self, value: f64, limit: f64, deadband: f64) -> bool {
        value >= limit || (self.raw_before() && value >= limit - deadband)
    }

    fn last_number(&self) -> Option<f64> {
        self.s
            .last_value
            .as_ref()
            .and_then(|v| Value::from(v).as_f64())
            .filter(|v| v.is_finite())
    }

    fn evaluate_sample(&mut self, sample: &Sample) -> (Raw, Option<String>) {
        let tag = &self.def.tag;
        if let Condition::BadQuality = self.def.condition {
            return (Raw::Known(sample.quality.is_bad()), None);
        }
        if sample.quality.is_bad() {
            return (Raw::Unknown, None);
        }
        let Some(value) = &sample.value else {
            return (
                Raw::Unknown,
                Some(format!(
                    "{tag}: sample has no value though its quality is {}",
                    sample.quality
                )),
            );
        };
        if let Condition::Discrete { active_when } = &self.def.condition {
            return match active_when.matches(value) {
                Some(active) => (Raw::Known(active), None),
                None => (
                    Raw::Unknown,
                    Some(format!(
                        "{tag}: {} value {value} cannot be compared with {active_when}",
                        value.type_name()
                    )),
                ),
            };
        }
        let Some(v) = value.as_f64().filter(|v| v.is_finite()) else {
            return (
                Raw::Unknown,
                Some(format!("{tag}: value {value} is not a usable number")),
            );
        };
        let raw = match &self.def.condition {
            Condition::HighHigh(l) | Condition::High(l) => self.beyond(v, l.limit, l.deadband),
            // Mirrored: at or below the limit, or within the band above it.
            Condition::Low(l) | Condition::LowLow(l) => self.beyond(-v, -l.limit, l.deadband),
            Condition::RateOfChange(l) => {
                let previous = self.s.previous_good;
                let now = TimedValue {
                    value: v,
                    timestamp_ns: sample.timestamp_ns,
                };
                match previous {
                    Some(p) if p.timestamp_ns < now.timestamp_ns => {
                        self.s.previous_good = Some(now);
                        let seconds = now.timestamp_ns.abs_diff(p.timestamp_ns) as f64 / 1e9;
                        let rate = (v - p.value).abs() / seconds;
                        if !rate.is_finite() {
                            return (
                                Raw::Unknown,
                                Some(format!("{tag}: rate of change is not a usable number")),
                            );
                        }
                        self.beyond(rate, l.limit, l.deadband)
                    }
                    // A repeated timestamp says nothing about the rate.
                    Some(_) => return (Raw::Unknown, None),
                    None => {
                        self.s.previous_good = Some(now);
                        return (Raw::Unknown, None);
                    }
                }
            }
            Condition::Deviation { setpoint, limit } => {
                let sp = match setpoint {
                    Setpoint::Fixed(sp) => Some(*sp),
                    Setpoint::Tag(_) => self.s.setpoint,
                };
                match sp {
                    Some(sp) => self.beyond((v - sp).abs(), limit.limit, limit.deadband),
                    // The setpoint is not known (yet, or Bad): hold.
                    None => return (Raw::Unknown, None),
                }
            }
            Condition::Discrete { .. } | Condition::BadQuality => return (Raw::Unknown, None),
        };
        (Raw::Known(raw), None)
    }
}

#[cfg(test)]
mod tests;
