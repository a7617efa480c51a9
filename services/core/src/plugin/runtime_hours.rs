//! The runtime built-in (`builtin: runtime`): hours a flag has been true. Between readings the last known state
//! holds (a flag reported by exception is only sent when it changes); after a Bad reading the
//! state is unknown and no time is counted until a good one arrives.

use serde::{Deserialize, Serialize};

use super::{
    RuntimePlugin,
    context::{Context, InputError},
};
use crate::sample::{Quality, Sample, Value};

const NS_PER_HOUR: f64 = 3_600_000_000_000.0;

/// Run time and known time of a flag, integrated up to the last reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunTrack {
    last: Option<(bool, i64)>,
    run_ns: u128,
    known_ns: u128,
}

impl RunTrack {
    /// Counts the time up to `ts` with the last known state.
    pub fn advance(&mut self, ts: i64) {
        if let Some((on, t0)) = self.last
            && ts > t0
        {
            let span = u128::from(ts.abs_diff(t0));
            self.known_ns += span;
            if on {
                self.run_ns += span;
            }
            self.last = Some((on, ts));
        }
    }

    /// Takes one reading of the flag. A reading older than the last one (the device's clock
    /// was set back) is taken too, counting no time for the step back, so the track follows
    /// the new clock.
    pub fn observe(&mut self, sample: &Sample) -> Result<(), InputError> {
        self.advance(sample.timestamp_ns);
        match flag(sample) {
            Ok(on) => {
                self.last = Some((on, sample.timestamp_ns));
                Ok(())
            }
            Err(problem) => {
                self.last = None;
                Err(problem)
            }
        }
    }

    pub fn is_known(&self) -> bool {
        self.last.is_some()
    }

    pub fn is_running(&self) -> bool {
        matches!(self.last, Some((true, _)))
    }

    pub fn run_seconds(&self) -> f64 {
        self.run_ns as f64 / 1e9
    }

    pub fn known_seconds(&self) -> f64 {
        self.known_ns as f64 / 1e9
    }
}

/// A run flag: a bool, or a number where non-zero means true (PLC run bits often arrive as
/// registers).
fn flag(sample: &Sample) -> Result<bool, InputError> {
    match (&sample.quality, &sample.value) {
        (Quality::Bad { .. }, _) | (_, None) => Err(InputError::NoValue {
            tag: sample.tag.clone(),
            quality: sample.quality.clone(),
        }),
        (_, Some(Value::Bool(b))) => Ok(*b),
        (_, Some(Value::I64(v))) => Ok(*v != 0),
        (_, Some(Value::U64(v))) => Ok(*v != 0),
        (_, Some(Value::F64(v))) if v.is_finite() => Ok(*v != 0.0),
        (_, Some(v)) => Err(InputError::NotAFlag {
            tag: sample.tag.clone(),
            value: v.clone(),
        }),
    }
}

/// The runtime built-in of one device type, built from its [`RuntimePlugin`] entry; what it
/// keeps per device is a [`RunTrack`].
#[derive(Debug)]
pub struct RuntimeHours {
    input: String,
    output: String,
}

impl RuntimeHours {
    pub fn new(config: &RuntimePlugin) -> Self {
        Self {
            input: config.input.clone(),
            output: config.output.clone(),
        }
    }

    /// Derives the run hours up to this batch into `cx`.
    pub fn apply(&self, track: &mut RunTrack, cx: &mut Context<'_>) {
        let mut seen = false;
        let mut problem = None;
        for sample in cx.samples_of(&self.input) {
            seen = true;
            problem = track.observe(sample).err();
        }
        if let Some(problem) = problem {
            cx.bad(&self.output, problem.to_string());
            return;
        }
        // Without a reading in this batch the hours only change while running.
        if !(seen || track.is_running()) {
            return;
        }
        track.advance(cx.ts);
        if track.is_known() {
            cx.good(&self.output, Value::F64(track.run_ns as f64 / NS_PER_HOUR));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::QualityReason;

    const S: i64 = 1_000_000_000;

    #[test]
    fn integrates_while_true_and_holds_the_last_state_between_readings() {
        let mut t = RunTrack::default();
        t.observe(&Sample::good("run", Value::Bool(true), 0))
            .unwrap();
        t.observe(&Sample::good("run", Value::I64(0), 30 * S))
            .unwrap();
        t.advance(50 * S);
        assert_eq!(t.run_seconds(), 30.0);
        assert_eq!(t.known_seconds(), 50.0);
        t.observe(&Sample::good("run", Value::U64(1), 60 * S))
            .unwrap();
        t.advance(70 * S);
        assert_eq!(t.run_seconds(), 40.0);
    }

    #[test]
    fn a_bad_reading_stops_counting_until_a_good_one() {
        let mut t = RunTrack::default();
        t.observe(&Sample::good("run", Value::Bool(true), 0))
            .unwrap();
        let bad = Sample::bad("run", Quality::bad(QualityReason::CommFailure, ""), 10 * S);
        assert!(
            t.observe(&bad)
                .unwrap_err()
                .to_string()
                .contains("bad:comm_failure")
        );
        t.advance(100 * S);
        assert_eq!(t.run_seconds(), 10.0, "counted up to the bad reading only");
        t.observe(&Sample::good("run", Value::Bool(true), 200 * S))
            .unwrap();
        t.advance(210 * S);
        assert_eq!(t.run_seconds(), 20.0);
        // The clock went back: no time for the step back, the new state from then on.
        t.observe(&Sample::good("run", Value::Bool(false), 5 * S))
            .unwrap();
        t.advance(15 * S);
        assert_eq!(t.run_seconds(), 20.0);
        assert!(!t.is_running());
        assert!(
            t.observe(&Sample::good("run", Value::String("on".into()), 220 * S))
                .unwrap_err()
                .to_string()
                .contains("not a run flag")
        );
    }
}
