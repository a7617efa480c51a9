//! The counter built-in: the increase of a counting tag since its previous reading, and that
//! increase per unit of time, with rollover and reset handling. A count never goes negative:
//! a decrease is either a rollover (the counter wrapped at its configured range) or a reset
//! (it was zeroed), and a reset counts from 0 and is reported as an event.

use serde::{Deserialize, Serialize};

use super::{
    CounterPlugin,
    context::{Context, InputError, Reading},
};
use crate::sample::Value;

/// The last accepted reading of a counter, and how the next one compares to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterTrack {
    prev: Option<(Reading, i64)>,
}

/// What one reading adds to a counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// The first reading: nothing to compare with yet.
    Baseline,
    /// The counter rose by `delta` over `span_ns`; `reset_from` is the reading before a reset.
    /// A reading older than the previous one (the device's clock was set back) still counts,
    /// with a span of 0 or less, so that no part is lost while the clock catches up.
    Increase {
        delta: Reading,
        span_ns: i64,
        reset_from: Option<Reading>,
    },
}

impl CounterTrack {
    /// Whether a first reading has been taken.
    pub fn has_baseline(&self) -> bool {
        self.prev.is_some()
    }

    /// Takes a reading; a refused reading (negative, or not below the rollover) leaves the
    /// track as it was, so the next good reading covers the gap.
    pub fn step(
        &mut self,
        value: Reading,
        ts: i64,
        rollover: Option<u64>,
    ) -> Result<Step, InputError> {
        if value.as_f64() < 0.0 {
            return Err(InputError::NegativeCount(value));
        }
        if let Some(r) = rollover
            && value.as_f64() >= r as f64
        {
            return Err(InputError::NotBelowRollover { value, rollover: r });
        }
        let Some((prev, prev_ts)) = self.prev else {
            self.prev = Some((value, ts));
            return Ok(Step::Baseline);
        };
        let (delta, reset_from) = match (prev, value) {
            (Reading::Int(p), Reading::Int(c)) => {
                if c >= p {
                    (Reading::Int(c - p), None)
                } else {
                    match rollover.map(i128::from) {
                        Some(r) if 2 * (c + r - p) < r => (Reading::Int(c + r - p), None),
                        _ => (Reading::Int(c), Some(prev)),
                    }
                }
            }
            _ => {
                let (p, c) = (prev.as_f64(), value.as_f64());
                if c >= p {
                    (Reading::Float(c - p), None)
                } else {
                    match rollover.map(|r| r as f64) {
                        Some(r) if 2.0 * (c + r - p) < r => (Reading::Float(c + r - p), None),
                        _ => (Reading::Float(c), Some(prev)),
                    }
                }
            }
        };
        self.prev = Some((value, ts));
        Ok(Step::Increase {
            delta,
            span_ns: ts.saturating_sub(prev_ts),
            reset_from,
        })
    }
}

/// The event that reports a reset of `tag`.
pub(super) fn reset_event(cx: &mut Context<'_>, tag: &str, from: Reading, to: Reading) {
    cx.event(
        "counter_reset",
        format!("counter {tag} went from {from} to {to}; counted as a reset to 0"),
        vec![
            ("tag".into(), Value::String(tag.to_string())),
            ("from".into(), from.to_value()),
            ("to".into(), to.to_value()),
        ],
    );
}

/// What the counter built-in keeps per device between batches.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CounterState {
    track: CounterTrack,
}

/// The counter built-in of one device type, built from its [`CounterPlugin`] entry.
#[derive(Debug)]
pub struct Counter {
    input: String,
    delta: Option<String>,
    rate: Option<String>,
    rate_per_ns: f64,
    rollover: Option<u64>,
}

impl Counter {
    pub fn new(config: &CounterPlugin) -> Self {
        Self {
            input: config.input.clone(),
            delta: config.delta.clone(),
            rate: config.rate.clone(),
            rate_per_ns: config.rate_per.as_nanos() as f64,
            rollover: config.rollover,
        }
    }

    /// Derives the delta and rate of this batch's readings into `cx`.
    pub fn apply(&self, state: &mut CounterState, cx: &mut Context<'_>) {
        // Work on a copy: when the batch ends with a bad reading nothing is taken, so the
        // next good reading's increase covers this batch too and no count is lost.
        let mut track = state.track;
        let mut increase: Option<(Reading, i64)> = None;
        let mut resets = Vec::new();
        let mut last_problem: Option<InputError> = None;
        let mut seen = false;
        for sample in cx.samples_of(&self.input) {
            seen = true;
            let reading = Reading::of(sample);
            match reading.and_then(|v| {
                track
                    .step(v, sample.timestamp_ns, self.rollover)
                    .map(|s| (v, s))
            }) {
                Err(problem) => last_problem = Some(problem),
                Ok((_, Step::Baseline)) => last_problem = None,
                Ok((
                    value,
                    Step::Increase {
                        delta,
                        span_ns,
                        reset_from,
                    },
                )) => {
                    last_problem = None;
                    if let Some(from) = reset_from {
                        resets.push((from, value));
                    }
                    increase = Some(match increase {
                        None => (delta, span_ns),
                        Some((sum, span)) => (add(sum, delta), span.saturating_add(span_ns)),
                    });
                }
            }
        }
        if !seen {
            return;
        }
        if let Some(problem) = last_problem {
            let detail = problem.to_string();
            for tag in self.delta.iter().chain(&self.rate) {
                cx.bad(tag, detail.as_str());
            }
            return;
        }
        state.track = track;
        for (from, to) in resets {
            reset_event(cx, &self.input, from, to);
        }
        let Some((delta, span_ns)) = increase else {
            return;
        };
        if let Some(tag) = &self.delta {
            cx.good(tag, delta.to_value());
        }
        if let Some(tag) = &self.rate {
            if span_ns > 0 {
                let rate = delta.as_f64() / span_ns as f64 * self.rate_per_ns;
                cx.good(tag, Value::F64(rate));
            } else {
                cx.bad(
                    tag,
                    "no time passed between the readings (or the device clock went back)",
                );
            }
        }
    }
}

fn add(a: Reading, b: Reading) -> Reading {
    match (a, b) {
        (Reading::Int(a), Reading::Int(b)) => Reading::Int(a + b),
        _ => Reading::Float(a.as_f64() + b.as_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(delta: Reading, span_ns: i64, reset_from: Option<Reading>) -> Result<Step, InputError> {
        Ok(Step::Increase {
            delta,
            span_ns,
            reset_from,
        })
    }

    #[test]
    fn counts_up_wraps_at_rollover_and_treats_a_big_drop_as_reset() {
        let mut t = CounterTrack::default();
        let r = Some(65536);
        assert_eq!(t.step(Reading::Int(65530), 0, r), Ok(Step::Baseline));
        assert_eq!(
            t.step(Reading::Int(65535), 10, r),
            inc(Reading::Int(5), 10, None)
        );
        // 65535 -> 4 wraps: 1 to reach 65536 (= 0), then 4.
        assert_eq!(
            t.step(Reading::Int(4), 20, r),
            inc(Reading::Int(5), 10, None)
        );
        // 20000 -> 3 would be a wrap of 45539, more than half the range: a reset.
        t.step(Reading::Int(20000), 30, r).unwrap();
        assert_eq!(
            t.step(Reading::Int(3), 40, r),
            inc(Reading::Int(3), 10, Some(Reading::Int(20000)))
        );
        // 40000 -> 3 is a wrap of 25539, less than half the range: a rollover.
        t.step(Reading::Int(40000), 50, r).unwrap();
        assert_eq!(
            t.step(Reading::Int(3), 60, r),
            inc(Reading::Int(25539), 10, None)
        );
    }

    #[test]
    fn without_rollover_every_decrease_is_a_reset() {
        let mut t = CounterTrack::default();
        t.step(Reading::Int(10), 0, None).unwrap();
        assert_eq!(
            t.step(Reading::Int(9), 1, None),
            inc(Reading::Int(9), 1, Some(Reading::Int(10)))
        );
        t.step(Reading::Float(2.5), 2, None).unwrap();
        assert_eq!(
            t.step(Reading::Float(0.5), 3, None),
            inc(Reading::Float(0.5), 1, Some(Reading::Float(2.5)))
        );
    }

    #[test]
    fn refuses_negative_and_out_of_range_readings_without_moving() {
        let mut t = CounterTrack::default();
        assert!(
            t.step(Reading::Int(-1), 0, None)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(!t.has_baseline());
        t.step(Reading::Int(5), 100, Some(10)).unwrap();
        assert!(
            t.step(Reading::Int(12), 200, Some(10))
                .unwrap_err()
                .to_string()
                .contains("not below its rollover 10")
        );
        assert_eq!(
            t.step(Reading::Int(7), 300, None),
            inc(Reading::Int(2), 200, None)
        );
        // The clock went back: the parts count, the span says no time passed.
        assert_eq!(
            t.step(Reading::Int(9), 50, None),
            inc(Reading::Int(2), -250, None)
        );
        assert_eq!(
            t.step(Reading::Int(10), 60, None),
            inc(Reading::Int(1), 10, None)
        );
    }
}
