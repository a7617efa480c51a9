//! The OEE built-in: availability, performance, quality and OEE, production rate and
//! efficiency over a sliding window.
//!
//! Counters are turned into running totals (with the counter built-in's rollover and reset
//! rules), and a snapshot of the totals is kept every 1/64 of the window; the figures compare
//! the newest totals with the snapshot at the start of the window (or the oldest one while the
//! window is filling). With a `running` flag, planned time is the time the flag's state was
//! known and run time the part of it the flag was true; with `runtime`/`downtime` counters,
//! run time is the runtime increase and planned time the sum of both increases.
//!
//! - availability = run time / planned time
//! - performance = units / (target rate × run time)
//! - quality = good / units
//! - OEE = good / (target rate × planned time), which is availability × performance × quality
//! - production rate = units / elapsed minutes; efficiency = production rate / target rate
//!
//! A figure that is undefined for the window (no units, no run time) is Bad (processing) with
//! the reason, never 0; so is every figure while an input's latest reading is Bad.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{
    OeeOutputs, OeePlugin,
    context::{Context, InputError, Reading},
    counter::{CounterTrack, Step, reset_event},
    runtime_hours::RunTrack,
};
use crate::sample::Value;

/// Snapshots per window: the window's start is known to within 1/64 of its length.
const SNAPSHOTS_PER_WINDOW: i64 = 64;

/// A counter made into a running total.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Total {
    track: CounterTrack,
    sum: f64,
}

/// Totals at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Snapshot {
    ts: i64,
    units: f64,
    good: f64,
    run_s: f64,
    planned_s: f64,
}

/// What the OEE built-in keeps per device between batches.
#[derive(Debug, Serialize, Deserialize)]
pub struct OeeState {
    units: Total,
    good: Total,
    runtime: Total,
    downtime: Total,
    flag: RunTrack,
    history: VecDeque<Snapshot>,
    low: bool,
}

/// Why a figure has no value for the window; the text becomes the detail of its Bad sample.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Undefined {
    #[error("undefined: no time has passed")]
    NoTime,
    #[error("undefined: no planned time in the window")]
    NoPlannedTime,
    #[error("undefined: no run time in the window")]
    NoRunTime,
    #[error("undefined: no units produced in the window")]
    NoUnits,
    #[error("the good count rose by {good}, more than the {units} units produced")]
    GoodAboveUnits { good: f64, units: f64 },
}

/// The six figures, each a value or why it has none.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub availability: Result<f64, Undefined>,
    pub performance: Result<f64, Undefined>,
    pub quality: Result<f64, Undefined>,
    pub oee: Result<f64, Undefined>,
    pub production_rate: Result<f64, Undefined>,
    pub efficiency: Result<f64, Undefined>,
}

/// The figures for the increases over a window; `target` in units per minute.
pub fn figures(
    units: f64,
    good: f64,
    run_s: f64,
    planned_s: f64,
    elapsed_s: f64,
    target: f64,
) -> Figures {
    let (run_min, planned_min, elapsed_min) = (run_s / 60.0, planned_s / 60.0, elapsed_s / 60.0);
    let good_fits = if good > units {
        Err(Undefined::GoodAboveUnits { good, units })
    } else {
        Ok(())
    };
    let production_rate = if elapsed_min > 0.0 {
        Ok(units / elapsed_min)
    } else {
        Err(Undefined::NoTime)
    };
    Figures {
        availability: if planned_min > 0.0 {
            Ok(run_min / planned_min)
        } else {
            Err(Undefined::NoPlannedTime)
        },
        performance: if run_min > 0.0 {
            Ok(units / (target * run_min))
        } else {
            Err(Undefined::NoRunTime)
        },
        quality: good_fits.clone().and_then(|()| {
            if units > 0.0 {
                Ok(good / units)
            } else {
                Err(Undefined::NoUnits)
            }
        }),
        oee: good_fits.and_then(|()| {
            if planned_min > 0.0 {
                Ok(good / (target * planned_min))
            } else {
                Err(Undefined::NoPlannedTime)
            }
        }),
        efficiency: production_rate.clone().map(|rate| rate / target),
        production_rate,
    }
}

/// The OEE built-in of one device type, built from its [`OeePlugin`] entry.
#[derive(Debug)]
pub struct Oee {
    units: String,
    good: String,
    runtime: Option<String>,
    downtime: Option<String>,
    running: Option<String>,
    target: f64,
    window_ns: i64,
    rollover: Option<u64>,
    low_efficiency: Option<f64>,
    outputs: OeeOutputs,
}

impl Oee {
    pub fn new(config: &OeePlugin) -> Self {
        Self {
            units: config.units_produced.clone(),
            good: config.good_count.clone(),
            runtime: config.runtime.clone(),
            downtime: config.downtime.clone(),
            running: config.running.clone(),
            target: config.target_rate,
            window_ns: i64::try_from(config.window.as_nanos()).unwrap_or(i64::MAX),
            rollover: config.rollover,
            low_efficiency: config.low_efficiency,
            outputs: config.outputs.clone(),
        }
    }

    /// The state of a device not seen before.
    pub fn fresh_state(&self) -> OeeState {
        OeeState {
            units: Total::default(),
            good: Total::default(),
            runtime: Total::default(),
            downtime: Total::default(),
            flag: RunTrack::default(),
            history: VecDeque::with_capacity(SNAPSHOTS_PER_WINDOW as usize + 2),
            low: false,
        }
    }

    /// Feeds the readings of one counter into its total; returns the problem of its latest
    /// reading, if that one was refused.
    fn count(
        &self,
        tag: &str,
        total: &mut Total,
        seen: &mut bool,
        cx: &mut Context<'_>,
    ) -> Option<InputError> {
        let mut problem = None;
        let mut resets = Vec::new();
        for sample in cx.samples_of(tag) {
            *seen = true;
            let step = Reading::of(sample).and_then(|v| {
                total
                    .track
                    .step(v, sample.timestamp_ns, self.rollover)
                    .map(|s| (v, s))
            });
            match step {
                Err(p) => problem = Some(p),
                Ok((_, Step::Baseline)) => problem = None,
                Ok((
                    value,
                    Step::Increase {
                        delta, reset_from, ..
                    },
                )) => {
                    problem = None;
                    total.sum += delta.as_f64();
                    if let Some(from) = reset_from {
                        resets.push((from, value));
                    }
                }
            }
        }
        for (from, to) in resets {
            reset_event(cx, tag, from, to);
        }
        problem
    }

    /// Derives the figures of the window ending at this batch into `cx`.
    pub fn apply(&self, st: &mut OeeState, cx: &mut Context<'_>) {
        let mut seen = false;
        let mut problem = None;
        for (tag, total) in [
            (Some(&self.units), &mut st.units),
            (Some(&self.good), &mut st.good),
            (self.runtime.as_ref(), &mut st.runtime),
            (self.downtime.as_ref(), &mut st.downtime),
        ] {
            if let Some(tag) = tag
                && let Some(p) = self.count(tag, total, &mut seen, cx)
            {
                problem.get_or_insert(p);
            }
        }
        if let Some(running) = &self.running {
            for sample in cx.samples_of(running) {
                seen = true;
                if let Err(p) = st.flag.observe(sample) {
                    problem = Some(p);
                }
            }
            st.flag.advance(cx.ts);
        }
        // Figures move with time even when no counter was reported in this batch (counters
        // sent by exception are silent while nothing is produced), once they have started.
        if !seen && st.history.is_empty() {
            return;
        }
        if let Some(problem) = problem {
            let detail = problem.to_string();
            for (_, tag) in self.outputs.named() {
                cx.bad(tag, detail.as_str());
            }
            return;
        }
        let counters_ready = st.units.track.has_baseline()
            && st.good.track.has_baseline()
            && (self.running.is_some()
                || (st.runtime.track.has_baseline() && st.downtime.track.has_baseline()));
        if !counters_ready {
            return;
        }
        let (run_s, planned_s) = if self.running.is_some() {
            (st.flag.run_seconds(), st.flag.known_seconds())
        } else {
            (st.runtime.sum, st.runtime.sum + st.downtime.sum)
        };
        let now = Snapshot {
            ts: cx.ts,
            units: st.units.sum,
            good: st.good.sum,
            run_s,
            planned_s,
        };
        // The first totals, or the device clock went back: the window starts again here.
        let Some(last) = st.history.back().copied().filter(|last| last.ts <= now.ts) else {
            st.history.clear();
            st.history.push_back(now);
            return;
        };
        let window_start = now.ts.saturating_sub(self.window_ns);
        while st.history.len() >= 2 && st.history[1].ts <= window_start {
            st.history.pop_front();
        }
        if now.ts.saturating_sub(last.ts) >= self.window_ns / SNAPSHOTS_PER_WINDOW {
            st.history.push_back(now);
        }
        let Some(base) = st.history.front().copied() else {
            return;
        };
        if now.ts <= base.ts {
            return;
        }
        let f = figures(
            now.units - base.units,
            now.good - base.good,
            now.run_s - base.run_s,
            now.planned_s - base.planned_s,
            now.ts.saturating_sub(base.ts) as f64 / 1e9,
            self.target,
        );
        let o = &self.outputs;
        for (tag, figure) in [
            (&o.availability, &f.availability),
            (&o.performance, &f.performance),
            (&o.quality, &f.quality),
            (&o.oee, &f.oee),
            (&o.production_rate, &f.production_rate),
            (&o.efficiency, &f.efficiency),
        ] {
            match figure {
                Ok(v) => cx.good(tag, Value::F64(*v)),
                Err(why) => cx.bad(tag, why.to_string()),
            }
        }
        if let (Some(threshold), Ok(efficiency)) = (self.low_efficiency, &f.efficiency) {
            let low = *efficiency < threshold;
            if low != st.low {
                st.low = low;
                let (kind, message) = if low {
                    (
                        "low_efficiency",
                        format!("efficiency {efficiency:.3} is below {threshold}"),
                    )
                } else {
                    (
                        "efficiency_recovered",
                        format!("efficiency {efficiency:.3} is back at or above {threshold}"),
                    )
                };
                cx.event(
                    kind,
                    message,
                    vec![
                        ("efficiency".into(), Value::F64(*efficiency)),
                        ("threshold".into(), Value::F64(threshold)),
                        (
                            "production_rate".into(),
                            Value::F64(efficiency * self.target),
                        ),
                    ],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Result<f64, Undefined>, b: f64) -> bool {
        a.as_ref().is_ok_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn figures_match_the_textbook_example() {
        // 8 h shift with 1 h down: 420 min run of 480 planned; ideal 60/min; 19 271 units of
        // which 18 848 good (the classic OEE worked example, scaled to units per minute).
        let f = figures(
            19_271.0,
            18_848.0,
            420.0 * 60.0,
            480.0 * 60.0,
            480.0 * 60.0,
            60.0,
        );
        assert!(close(&f.availability, 420.0 / 480.0));
        assert!(close(&f.performance, 19_271.0 / (60.0 * 420.0)));
        assert!(close(&f.quality, 18_848.0 / 19_271.0));
        let product = (420.0 / 480.0) * (19_271.0 / (60.0 * 420.0)) * (18_848.0 / 19_271.0);
        assert!(close(&f.oee, product), "{:?} vs {product}", f.oee);
        assert!(close(&f.production_rate, 19_271.0 / 480.0));
        assert!(close(&f.efficiency, 19_271.0 / 480.0 / 60.0));
    }

    #[test]
    fn undefined_figures_say_why_instead_of_being_zero() {
        let f = figures(0.0, 0.0, 0.0, 60.0, 60.0, 10.0);
        assert_eq!(f.availability, Ok(0.0));
        assert!(
            f.performance
                .unwrap_err()
                .to_string()
                .contains("no run time")
        );
        assert!(f.quality.unwrap_err().to_string().contains("no units"));
        assert_eq!(f.oee, Ok(0.0));
        assert_eq!(f.efficiency, Ok(0.0));
        let f = figures(10.0, 12.0, 60.0, 60.0, 60.0, 10.0);
        assert!(
            f.quality
                .unwrap_err()
                .to_string()
                .contains("more than the 10 units")
        );
        assert!(f.oee.is_err());
    }
}
