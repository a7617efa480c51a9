//! Report by exception: decide whether a new reading is worth publishing.
//!
//! A reading is reported when it is the first, when its quality changed, when a non-numeric
//! value changed, when a number moved beyond the absolute band or the percent band (of the
//! last reported value), or when nothing was reported for the heartbeat interval, so a quiet
//! tag still shows it is alive.

use crate::sample::{Quality, Value};

/// How a tag reports by exception. No band at all means every reading is reported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeadbandRule {
    /// Report when the value moved more than this from the last reported value.
    pub absolute: Option<f64>,
    /// Report when the value moved more than this percentage of the last reported value.
    pub percent: Option<f64>,
    /// Report at least this often (ns), even without change.
    pub heartbeat_ns: Option<i64>,
}

impl DeadbandRule {
    fn has_band(&self) -> bool {
        self.absolute.is_some() || self.percent.is_some()
    }
}

/// Remembers the last reported value of one tag.
#[derive(Debug, Clone, Default)]
pub struct Deadband {
    last: Option<(Option<Value>, Quality, i64)>,
}

impl Deadband {
    /// True when the reading at `now_ns` should be reported; it then becomes the reference.
    pub fn should_report(
        &mut self,
        rule: &DeadbandRule,
        value: &Option<Value>,
        quality: &Quality,
        now_ns: i64,
    ) -> bool {
        // Without a band every reading is reported and nothing needs remembering.
        if !rule.has_band() {
            return true;
        }
        let report = match &self.last {
            None => true,
            Some((_, last_q, _)) if last_q != quality => true,
            Some((_, _, at))
                if rule
                    .heartbeat_ns
                    .is_some_and(|h| now_ns.saturating_sub(*at) >= h) =>
            {
                true
            }
            Some((last_v, _, _)) => match (
                last_v.as_ref().and_then(Value::as_f64),
                value.as_ref().and_then(Value::as_f64),
            ) {
                (Some(a), Some(b)) => {
                    let moved = (a - b).abs();
                    rule.absolute.is_some_and(|band| moved > band)
                        || rule.percent.is_some_and(|p| moved > a.abs() * p / 100.0)
                }
                _ => last_v != value,
            },
        };
        if report {
            self.last = Some((value.clone(), quality.clone(), now_ns));
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::QualityReason;

    fn v(x: f64) -> Option<Value> {
        Some(Value::F64(x))
    }

    #[test]
    fn reports_moves_beyond_the_band_and_every_quality_change() {
        let rule = DeadbandRule {
            absolute: Some(0.5),
            ..DeadbandRule::default()
        };
        let mut d = Deadband::default();
        assert!(d.should_report(&rule, &v(10.0), &Quality::Good, 0));
        assert!(!d.should_report(&rule, &v(10.4), &Quality::Good, 1));
        assert!(
            !d.should_report(&rule, &v(9.6), &Quality::Good, 2),
            "measured from the last report"
        );
        assert!(d.should_report(&rule, &v(10.6), &Quality::Good, 3));
        let bad = Quality::bad(QualityReason::CommFailure, "timeout");
        assert!(d.should_report(&rule, &None, &bad, 4));
        assert!(!d.should_report(&rule, &None, &bad, 5));
        assert!(
            d.should_report(&rule, &v(10.6), &Quality::Good, 6),
            "recovery is reported"
        );
    }

    #[test]
    fn percent_band_scales_with_the_value() {
        let rule = DeadbandRule {
            percent: Some(1.0),
            ..DeadbandRule::default()
        };
        let mut d = Deadband::default();
        assert!(d.should_report(&rule, &v(200.0), &Quality::Good, 0));
        assert!(
            !d.should_report(&rule, &v(201.9), &Quality::Good, 1),
            "0.95% of 200"
        );
        assert!(
            d.should_report(&rule, &v(202.1), &Quality::Good, 2),
            "1.05% of 200"
        );
    }

    #[test]
    fn heartbeat_reports_a_quiet_tag() {
        let rule = DeadbandRule {
            absolute: Some(1.0),
            heartbeat_ns: Some(60),
            ..DeadbandRule::default()
        };
        let mut d = Deadband::default();
        assert!(d.should_report(&rule, &v(5.0), &Quality::Good, 0));
        assert!(!d.should_report(&rule, &v(5.0), &Quality::Good, 59));
        assert!(d.should_report(&rule, &v(5.0), &Quality::Good, 60));
        assert!(
            !d.should_report(&rule, &v(5.0), &Quality::Good, 100),
            "the heartbeat restarts at each report"
        );
    }

    #[test]
    fn without_a_band_reports_every_reading() {
        let mut d = Deadband::default();
        let rule = DeadbandRule::default();
        assert!(d.should_report(&rule, &Some(Value::Bool(true)), &Quality::Good, 0));
        assert!(d.should_report(&rule, &Some(Value::Bool(true)), &Quality::Good, 1));
    }

    #[test]
    fn non_numeric_values_report_on_change() {
        let rule = DeadbandRule {
            absolute: Some(1.0),
            ..DeadbandRule::default()
        };
        let mut d = Deadband::default();
        let s = |x: &str| Some(Value::String(x.into()));
        assert!(d.should_report(&rule, &s("a"), &Quality::Good, 0));
        assert!(!d.should_report(&rule, &s("a"), &Quality::Good, 1));
        assert!(d.should_report(&rule, &s("b"), &Quality::Good, 2));
    }
}
