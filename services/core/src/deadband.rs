//! Report by exception: decide whether a new reading is worth publishing.

use crate::sample::{Quality, Value};

/// Remembers the last reported value of one tag.
#[derive(Debug, Clone, Default)]
pub struct Deadband {
    last: Option<(Option<Value>, Quality)>,
}

impl Deadband {
    /// True when the sample should be reported. Without a band every reading is reported; with
    /// one, the first reading, any change of quality, any non-numeric change, and any numeric
    /// move larger than the band from the last reported value.
    pub fn should_report(
        &mut self,
        band: Option<f64>,
        value: &Option<Value>,
        quality: &Quality,
    ) -> bool {
        let report = match (&self.last, band) {
            (None, _) => true,
            (Some((_, last_q)), _) if last_q != quality => true,
            (Some(_), None) => true,
            (Some((last_v, _)), Some(band)) => match (
                last_v.as_ref().and_then(Value::as_f64),
                value.as_ref().and_then(Value::as_f64),
            ) {
                (Some(a), Some(b)) => (a - b).abs() > band,
                _ => last_v != value,
            },
        };
        if report {
            self.last = Some((value.clone(), quality.clone()));
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::QualityReason;

    #[test]
    fn reports_moves_beyond_the_band_and_every_quality_change() {
        let mut d = Deadband::default();
        let v = |x: f64| Some(Value::F64(x));
        assert!(d.should_report(Some(0.5), &v(10.0), &Quality::Good));
        assert!(!d.should_report(Some(0.5), &v(10.4), &Quality::Good));
        assert!(
            !d.should_report(Some(0.5), &v(9.6), &Quality::Good),
            "measured from the last report"
        );
        assert!(d.should_report(Some(0.5), &v(10.6), &Quality::Good));
        let bad = Quality::bad(QualityReason::CommFailure, "timeout");
        assert!(d.should_report(Some(0.5), &None, &bad));
        assert!(!d.should_report(Some(0.5), &None, &bad));
        assert!(
            d.should_report(Some(0.5), &v(10.6), &Quality::Good),
            "recovery is reported"
        );
    }

    #[test]
    fn without_a_band_reports_every_reading() {
        let mut d = Deadband::default();
        assert!(d.should_report(None, &Some(Value::Bool(true)), &Quality::Good));
        assert!(d.should_report(None, &Some(Value::Bool(true)), &Quality::Good));
    }
}
