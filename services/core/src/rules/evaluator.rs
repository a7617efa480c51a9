//! The control rules of a line, evaluated on every batch: hysteresis control and interlocks.
//! Pure: the caller passes the current value of each output and the time, and carries out the
//! writes the rules ask for through the safe write path. An interlock that trips forces its
//! output and keeps every other writer (a hysteresis rule, the MES) off it until it resets.

use std::collections::HashMap;

use super::{HysteresisAction, RuleConfig};
use crate::{
    alarm::DiscreteValue,
    sample::{SampleBatch, Value},
};

/// A rule asks again for a write it already asked for, when the output still disagrees, after
/// this long (the first write may have failed or been overridden at the panel).
pub const RETRY_NS: i64 = 5_000_000_000;

/// A write a rule asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub device: String,
    pub tag: String,
    pub value: Value,
    /// The rule's name.
    pub rule: String,
    /// Why, for the audit trail.
    pub reason: String,
}

/// An interlock that tripped or reset.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub device: String,
    pub rule: String,
    pub tripped: bool,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct RuleOutcome {
    pub intents: Vec<Intent>,
    pub trips: Vec<Trip>,
}

struct Instance {
    device: String,
    config: RuleConfig,
    /// What this rule last asked for, and when.
    asked: Option<(Value, i64)>,
    /// Interlocks: tripped now.
    tripped: bool,
    /// Interlocks: a Good reading of the input has been judged since the rules started.
    known: bool,
}

/// The rules of one line, instantiated per device.
#[derive(Default)]
pub struct LineRules {
    rules: Vec<Instance>,
    by_device: HashMap<String, Vec<usize>>,
}

/// An interlock's hold on an output: which rule, and the value it forces.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub rule: String,
    pub value: Value,
    /// Held because the interlock has had no Good reading of its input since the rules
    /// started (a processor restart): not knowing counts as tripped.
    pub unknown: bool,
}

impl LineRules {
    pub fn new<'a>(devices: impl IntoIterator<Item = (&'a str, &'a [RuleConfig])>) -> Self {
        let mut this = Self::default();
        for (device, rules) in devices {
            // Interlocks first, so a trip in a batch holds the output before any other rule
            // of the same batch asks for it.
            let mut ordered: Vec<&RuleConfig> = rules.iter().collect();
            ordered.sort_by_key(|r| !matches!(r, RuleConfig::Interlock { .. }));
            for config in ordered {
                this.by_device
                    .entry(device.to_string())
                    .or_default()
                    .push(this.rules.len());
                this.rules.push(Instance {
                    device: device.to_string(),
                    config: config.clone(),
                    asked: None,
                    tripped: false,
                    known: false,
                });
            }
        }
        this
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The interlock holding (device, tag), if one has tripped, or has not yet had a Good
    /// reading of its input to judge: until it has, only its protective value may be
    /// written.
    pub fn hold(&self, device: &str, tag: &str) -> Option<Hold> {
        self.by_device.get(device)?.iter().find_map(|&i| {
            let r = &self.rules[i];
            match &r.config {
                RuleConfig::Interlock {
                    name,
                    output,
                    value,
                    ..
                } if (r.tripped || !r.known) && output == tag => Some(Hold {
                    rule: name.clone(),
                    value: forced_value(value)?,
                    unknown: !r.tripped,
                }),
                _ => None,
            }
        })
    }

    /// Evaluates the rules of the batch's device. `current` gives the latest known value of
    /// an output tag of that device (after this batch).
    pub fn on_batch(
        &mut self,
        batch: &SampleBatch,
        current: impl Fn(&str) -> Option<Value>,
        now_ns: i64,
    ) -> RuleOutcome {
        let mut outcome = RuleOutcome::default();
        let Some(indices) = self.by_device.get(&batch.device).cloned() else {
            return outcome;
        };
        for i in indices {
            let input = self.rules[i].config.input().to_string();
            let Some(sample) = batch.samples.iter().rev().find(|s| s.tag == input) else {
                continue;
            };
            let reading = sample
                .value
                .as_ref()
                .filter(|_| !sample.quality.is_bad())
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite());
            let output = self.rules[i].config.output().to_string();
            let config = self.rules[i].config.clone();
            let desired = match &config {
                RuleConfig::Interlock {
                    name,
                    above,
                    below,
                    value,
                    trip_on_bad,
                    ..
                } => {
                    if reading.is_some() {
                        self.rules[i].known = true;
                    }
                    let trip = match reading {
                        // At the limit already trips, as its alarm is active at the limit.
                        Some(v) => {
                            above.is_some_and(|limit| v >= limit)
                                || below.is_some_and(|limit| v <= limit)
                        }
                        None => *trip_on_bad,
                    };
                    if trip != self.rules[i].tripped {
                        self.rules[i].tripped = trip;
                        outcome.trips.push(Trip {
                            device: batch.device.clone(),
                            rule: name.clone(),
                            tripped: trip,
                        });
                        if !trip {
                            self.rules[i].asked = None;
                        }
                    }
                    if trip {
                        forced_value(value).map(|v| {
                            let why = match reading {
                                Some(r) => format!("interlock {name}: {input} = {r}"),
                                None => format!("interlock {name}: {input} is Bad"),
                            };
                            (v, why)
                        })
                    } else {
                        None
                    }
                }
                RuleConfig::Hysteresis {
                    name,
                    setpoint,
                    band,
                    action,
                    ..
                } => {
                    // An interlock on the same output overrides the rule.
                    if self.hold(&batch.device, &output).is_some() {
                        continue;
                    }
                    let Some(v) = reading else { continue };
                    let (low, high) = (setpoint - band, setpoint + band);
                    let on = match action {
                        HysteresisAction::OnBelow if v < low => Some(true),
                        HysteresisAction::OnBelow if v > high => Some(false),
                        HysteresisAction::OnAbove if v > high => Some(true),
                        HysteresisAction::OnAbove if v < low => Some(false),
                        _ => None,
                    };
                    on.map(|on| {
                        (
                            Value::Bool(on),
                            format!(
                                "{name}: {input} = {v} ({} {})",
                                if v < low { "below" } else { "above" },
                                if v < low { low } else { high }
                            ),
                        )
                    })
                }
            };
            let Some((value, reason)) = desired else {
                continue;
            };
            let rule = &mut self.rules[i];
            let agrees = current(&output).is_some_and(|c| same(&c, &value));
            let recently_asked = rule
                .asked
                .as_ref()
                .is_some_and(|(v, at)| same(v, &value) && now_ns - at < RETRY_NS);
            if agrees {
                rule.asked = Some((value, now_ns));
                continue;
            }
            if recently_asked {
                continue;
            }
            rule.asked = Some((value.clone(), now_ns));
            outcome.intents.push(Intent {
                device: rule.device.clone(),
                tag: output,
                value,
                rule: rule.config.name().to_string(),
                reason,
            });
        }
        outcome
    }
}

/// Two values mean the same output state (a coil reads back as a bool; a number 1 is on).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

/// The value an interlock forces its output to: `true`, `false` or a finite number (a whole
/// number as an integer). `None` for a text, which no interlock may force.
pub fn forced_value(v: &DiscreteValue) -> Option<Value> {
    /// 2^63: the first f64 above every i64.
    const I64_END: f64 = 9_223_372_036_854_775_808.0;
    match v {
        DiscreteValue::Bool(b) => Some(Value::Bool(*b)),
        DiscreteValue::Number(n) if !n.is_finite() => None,
        DiscreteValue::Number(n) if n.fract() == 0.0 && (-I64_END..I64_END).contains(n) => {
            Some(Value::I64(*n as i64))
        }
        DiscreteValue::Number(n) => Some(Value::F64(*n)),
        DiscreteValue::Text(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Quality, QualityReason, Sample};

    const S: i64 = 1_000_000_000;

    fn rules() -> Vec<RuleConfig> {
        serde_yaml::from_str(
            r#"
- { kind: hysteresis, name: fill, input: level, output: pump, setpoint: 50, band: 2 }
- { kind: interlock, name: overpressure, input: pressure, above: 3.0, output: pump, value: false, message: "Pressure high" }
"#,
        )
        .unwrap()
    }

    fn batch(samples: Vec<Sample>) -> SampleBatch {
        SampleBatch {
            line: "l".into(),
            device: "tank".into(),
            adapter_id: "a".into(),
            sequence: 1,
            samples,
        }
    }

    fn level(v: f64) -> Sample {
        Sample::good("level", Value::F64(v), 0)
    }

    fn pressure(v: f64) -> Sample {
        Sample::good("pressure", Value::F64(v), 0)
    }

    fn run(r: &mut LineRules, samples: Vec<Sample>, pump: Option<bool>, now: i64) -> RuleOutcome {
        r.on_batch(
            &batch(samples),
            |t| (t == "pump").then_some(pump.map(Value::Bool)).flatten(),
            now,
        )
    }

    fn asked(o: &RuleOutcome) -> Vec<(String, Value)> {
        o.intents
            .iter()
            .map(|i| (i.rule.clone(), i.value.clone()))
            .collect()
    }

    #[test]
    fn hysteresis_switches_outside_the_band_only() {
        let config = rules();
        let mut r = LineRules::new([("tank", config.as_slice())]);
        // The interlock on the pump has judged a Good pressure: it does not hold the pump.
        assert!(
            run(&mut r, vec![pressure(1.0)], Some(false), 0)
                .intents
                .is_empty()
        );
        // Inside the band: nothing, whatever the pump does.
        assert!(
            run(&mut r, vec![level(49.0)], Some(false), 0)
                .intents
                .is_empty()
        );
        assert!(
            run(&mut r, vec![level(51.9)], Some(true), S)
                .intents
                .is_empty()
        );
        // Below setpoint - band: on.
        let o = run(&mut r, vec![level(47.9)], Some(false), 2 * S);
        assert_eq!(asked(&o), vec![("fill".into(), Value::Bool(true))]);
        // Asked already and not yet applied: not asked again before the retry time ...
        assert!(
            run(&mut r, vec![level(47.0)], Some(false), 3 * S)
                .intents
                .is_empty()
        );
        // ... but after it.
        assert_eq!(
            run(&mut r, vec![level(47.0)], Some(false), 2 * S + RETRY_NS)
                .intents
                .len(),
            1
        );
        // Applied: quiet while it rises through the band.
        assert!(
            run(&mut r, vec![level(50.0)], Some(true), 20 * S)
                .intents
                .is_empty()
        );
        assert!(
            run(&mut r, vec![level(52.0)], Some(true), 21 * S)
                .intents
                .is_empty()
        );
        // Above setpoint + band: off.
        let o = run(&mut r, vec![level(52.1)], Some(true), 22 * S);
        assert_eq!(asked(&o), vec![("fill".into(), Value::Bool(false))]);
    }

    #[test]
    fn a_bad_input_asks_for_nothing() {
        let config = rules();
        let mut r = LineRules::new([("tank", config.as_slice())]);
        let bad = Sample::bad(
            "level",
            Quality::bad(QualityReason::CommFailure, "timeout"),
            0,
        );
        assert!(run(&mut r, vec![bad], Some(false), 0).intents.is_empty());
    }

    #[test]
    fn the_interlock_wins_over_hysteresis_and_resets() {
        let config = rules();
        let mut r = LineRules::new([("tank", config.as_slice())]);
        // Low level wants the pump on, but pressure is above 3.0 in the same batch.
        let o = run(&mut r, vec![level(40.0), pressure(3.2)], Some(true), 0);
        assert_eq!(asked(&o), vec![("overpressure".into(), Value::Bool(false))]);
        assert_eq!(
            o.trips,
            vec![Trip {
                device: "tank".into(),
                rule: "overpressure".into(),
                tripped: true
            }]
        );
        assert_eq!(
            r.hold("tank", "pump"),
            Some(Hold {
                rule: "overpressure".into(),
                value: Value::Bool(false),
                unknown: false,
            })
        );
        // Held: the level rule stays quiet while the interlock is tripped.
        assert!(
            run(&mut r, vec![level(40.0)], Some(false), S)
                .intents
                .is_empty()
        );
        // Someone switches the pump on at the panel: the interlock forces it off again.
        let o = run(&mut r, vec![pressure(3.1)], Some(true), S + RETRY_NS);
        assert_eq!(asked(&o), vec![("overpressure".into(), Value::Bool(false))]);
        // Pressure back to normal: reset, and the level rule acts again.
        let o = run(
            &mut r,
            vec![pressure(2.0), level(40.0)],
            Some(false),
            20 * S,
        );
        assert_eq!(asked(&o), vec![("fill".into(), Value::Bool(true))]);
        assert!(!o.trips[0].tripped);
        assert_eq!(r.hold("tank", "pump"), None);
    }

    #[test]
    fn an_interlock_trips_at_its_limit_as_its_alarm_activates() {
        let config = rules();
        let mut r = LineRules::new([("tank", config.as_slice())]);
        let o = run(&mut r, vec![pressure(2.999)], Some(true), 0);
        assert!(o.trips.is_empty(), "{:?}", o.trips);
        assert_eq!(r.hold("tank", "pump"), None);
        let o = run(&mut r, vec![pressure(3.0)], Some(true), S);
        assert_eq!(asked(&o), vec![("overpressure".into(), Value::Bool(false))]);
        assert!(o.trips[0].tripped);
    }

    #[test]
    fn a_bad_interlock_input_trips_unless_configured_otherwise() {
        let config = rules();
        let mut r = LineRules::new([("tank", config.as_slice())]);
        let bad = Sample::bad(
            "pressure",
            Quality::bad(QualityReason::CommFailure, "timeout"),
            0,
        );
        let o = run(&mut r, vec![bad.clone()], Some(true), 0);
        assert_eq!(asked(&o), vec![("overpressure".into(), Value::Bool(false))]);
        let lenient: Vec<RuleConfig> = serde_yaml::from_str(
            "- { kind: interlock, name: p, input: pressure, above: 3.0, output: pump, value: false, trip_on_bad: false }",
        )
        .unwrap();
        let mut r = LineRules::new([("tank", lenient.as_slice())]);
        assert!(run(&mut r, vec![bad], Some(true), 0).intents.is_empty());
    }

    #[test]
    fn other_devices_are_not_touched() {
        let config = rules();
        let mut r = LineRules::new([("tank", config.as_slice())]);
        let mut b = batch(vec![level(10.0)]);
        b.device = "other".into();
        assert!(r.on_batch(&b, |_| None, 0).intents.is_empty());
    }

    #[test]
    fn until_an_interlock_has_judged_a_good_reading_it_holds_its_output() {
        let config = rules();
        let mut r = LineRules::new([("tank", config.as_slice())]);
        let held = Some(Hold {
            rule: "overpressure".into(),
            value: Value::Bool(false),
            unknown: true,
        });
        // Just started: nothing is known of the pressure, so the pump is held off and the
        // level rule does not switch it on.
        assert_eq!(r.hold("tank", "pump"), held);
        assert!(
            run(&mut r, vec![level(40.0)], Some(false), 0)
                .intents
                .is_empty()
        );
        // A Bad pressure is no judgement either (it trips by default, which holds too).
        let bad = Sample::bad(
            "pressure",
            Quality::bad(QualityReason::CommFailure, "timeout"),
            0,
        );
        let lenient: Vec<RuleConfig> = serde_yaml::from_str(
            "- { kind: interlock, name: overpressure, input: pressure, above: 3.0, output: pump, value: false, trip_on_bad: false }",
        )
        .unwrap();
        let mut lax = LineRules::new([("tank", lenient.as_slice())]);
        run(&mut lax, vec![bad], Some(false), 0);
        assert_eq!(lax.hold("tank", "pump"), held);
        // A Good reading below the limit: released, and the level rule acts.
        let o = run(&mut r, vec![pressure(1.0), level(40.0)], Some(false), S);
        assert_eq!(asked(&o), vec![("fill".into(), Value::Bool(true))]);
        assert_eq!(r.hold("tank", "pump"), None);
    }
}
