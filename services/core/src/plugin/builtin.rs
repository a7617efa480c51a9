//! The built-in plugins as one closed set: each [`BuiltinPlugin`] entry builds its
//! [`Builtin`], which makes the per-device [`BuiltinState`] and applies itself to a batch.

use serde::{Deserialize, Serialize};

use super::{
    BuiltinPlugin,
    context::Context,
    counter::{Counter, CounterState},
    oee::{Oee, OeeState},
    runtime_hours::{RunTrack, RuntimeHours},
};

/// A built-in plugin ready to run.
#[derive(Debug)]
pub enum Builtin {
    Counter(Counter),
    RuntimeHours(RuntimeHours),
    Oee(Box<Oee>),
}

/// What a built-in keeps per device between batches.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinState {
    Counter(CounterState),
    RuntimeHours(RunTrack),
    Oee(Box<OeeState>),
}

impl BuiltinPlugin {
    /// The built-in this entry configures.
    pub fn build(&self) -> Builtin {
        match self {
            BuiltinPlugin::Counter(c) => Builtin::Counter(Counter::new(c)),
            BuiltinPlugin::Runtime(r) => Builtin::RuntimeHours(RuntimeHours::new(r)),
            BuiltinPlugin::Oee(o) => Builtin::Oee(Box::new(Oee::new(o))),
        }
    }
}

impl Builtin {
    /// The state of a device not seen before.
    pub fn fresh_state(&self) -> BuiltinState {
        match self {
            Builtin::Counter(_) => BuiltinState::Counter(CounterState::default()),
            Builtin::RuntimeHours(_) => BuiltinState::RuntimeHours(RunTrack::default()),
            Builtin::Oee(o) => BuiltinState::Oee(Box::new(o.fresh_state())),
        }
    }

    /// Whether `state` is a state of this kind of built-in (one read back after a restart
    /// may have been saved by another configuration).
    pub fn takes(&self, state: &BuiltinState) -> bool {
        matches!(
            (self, state),
            (Builtin::Counter(_), BuiltinState::Counter(_))
                | (Builtin::RuntimeHours(_), BuiltinState::RuntimeHours(_))
                | (Builtin::Oee(_), BuiltinState::Oee(_))
        )
    }

    /// Runs on one batch of one device, with that device's state.
    pub fn apply(&self, state: &mut BuiltinState, cx: &mut Context<'_>) {
        match (self, state) {
            (Builtin::Counter(c), BuiltinState::Counter(st)) => c.apply(st, cx),
            (Builtin::RuntimeHours(r), BuiltinState::RuntimeHours(st)) => r.apply(st, cx),
            (Builtin::Oee(o), BuiltinState::Oee(st)) => o.apply(st, cx),
            // States are made by `fresh_state` of the built-in they sit beside; a mismatch
            // cannot occur, and if it did the outputs of this batch would simply be missing.
            _ => {}
        }
    }
}
