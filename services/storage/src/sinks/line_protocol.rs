//! InfluxDB line protocol, in the layout Fieldline stores samples:
//! measurement = device, tags `line` and `device`, one field per tag named after the tag,
//! Bad samples as a string field `<tag>_quality` and no value, timestamp in ns.
//!
//! Samples of one batch that share a timestamp become one line, so a replay of the same batch
//! rewrites the same series and timestamps: writes are idempotent.

use std::fmt::Write;

use fieldline_core::{Quality, SampleBatch, Value};

/// A sample the line protocol cannot carry, left out of the write.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub tag: String,
    pub reason: String,
}

/// Appends the lines of `batch` to `out`; returns the samples that could not be encoded.
pub fn encode_batch(batch: &SampleBatch, out: &mut String) -> Vec<Rejected> {
    let mut rejected = Vec::new();
    let mut order: Vec<i64> = Vec::new();
    for s in &batch.samples {
        if !order.contains(&s.timestamp_ns) {
            order.push(s.timestamp_ns);
        }
    }
    for ts in order {
        let mut fields = String::new();
        for s in batch.samples.iter().filter(|s| s.timestamp_ns == ts) {
            let before = fields.len();
            if !fields.is_empty() {
                fields.push(',');
            }
            let mut wrote = false;
            if let Some(value) = &s.value {
                match field_value(value) {
                    Ok(v) => {
                        escape_key(&s.tag, &mut fields);
                        fields.push('=');
                        fields.push_str(&v);
                        wrote = true;
                    }
                    Err(reason) => rejected.push(Rejected {
                        tag: s.tag.clone(),
                        reason,
                    }),
                }
            }
            if !matches!(s.quality, Quality::Good) {
                if wrote {
                    fields.push(',');
                }
                escape_key(&s.tag, &mut fields);
                fields.push_str("_quality=");
                string_field(&s.quality.code(), &mut fields);
                wrote = true;
            }
            if !wrote {
                fields.truncate(before);
            }
        }
        if fields.is_empty() {
            continue;
        }
        escape_measurement(&batch.device, out);
        out.push_str(",device=");
        escape_key(&batch.device, out);
        out.push_str(",line=");
        escape_key(&batch.line, out);
        out.push(' ');
        out.push_str(&fields);
        let _ = writeln!(out, " {ts}");
    }
    rejected
}

fn field_value(value: &Value) -> Result<String, String> {
    Ok(match value {
        Value::Bool(b) => b.to_string(),
        Value::I64(i) => format!("{i}i"),
        // InfluxDB 1.x has no unsigned field type; values that fit are stored as integers.
        Value::U64(u) => match i64::try_from(*u) {
            Ok(i) => format!("{i}i"),
            Err(_) => return Err(format!("{u} does not fit an InfluxDB integer field")),
        },
        Value::F64(f) if f.is_finite() => {
            let text = f.to_string();
            // `12` would be read as a float anyway; keep the decimal point for clarity.
            if text.contains(['.', 'e', 'E']) {
                text
            } else {
                format!("{text}.0")
            }
        }
        Value::F64(f) => return Err(format!("{f} is not a finite number")),
        Value::String(s) => {
            let mut out = String::new();
            string_field(s, &mut out);
            out
        }
    })
}

fn escape_measurement(name: &str, out: &mut String) {
    for c in name.chars() {
        if matches!(c, ',' | ' ' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

fn escape_key(name: &str, out: &mut String) {
    for c in name.chars() {
        if matches!(c, ',' | '=' | ' ' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

fn string_field(value: &str, out: &mut String) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            // A raw newline would end the line; InfluxDB keeps the escaped form.
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_core::{QualityReason, Sample};

    fn batch(samples: Vec<Sample>) -> SampleBatch {
        SampleBatch {
            line: "packaging-1".into(),
            device: "filler".into(),
            adapter_id: "a".into(),
            sequence: 1,
            samples,
        }
    }

    #[test]
    fn typed_fields_grouped_by_timestamp() {
        let b = batch(vec![
            Sample::good("temperature", Value::F64(12.5), 100),
            Sample::good("count", Value::I64(-1234), 100),
            Sample::good("total", Value::U64(4_000_000_000), 100),
            Sample::good("run", Value::Bool(true), 100),
            Sample::good("recipe", Value::String("a \"b\" \\c".into()), 200),
            Sample::good("whole", Value::F64(3.0), 200),
        ]);
        let mut out = String::new();
        assert!(encode_batch(&b, &mut out).is_empty());
        assert_eq!(
            out,
            "filler,device=filler,line=packaging-1 temperature=12.5,count=-1234i,total=4000000000i,run=true 100\n\
             filler,device=filler,line=packaging-1 recipe=\"a \\\"b\\\" \\\\c\",whole=3.0 200\n"
        );
    }

    #[test]
    fn bad_samples_write_quality_and_no_value() {
        let b = batch(vec![
            Sample::bad(
                "temperature",
                Quality::bad(QualityReason::DeviceException(2), "illegal"),
                5,
            ),
            Sample::good("run", Value::Bool(false), 5),
        ]);
        let mut out = String::new();
        encode_batch(&b, &mut out);
        assert_eq!(
            out,
            "filler,device=filler,line=packaging-1 temperature_quality=\"bad:device_exception(2)\",run=false 5\n"
        );
    }

    #[test]
    fn unencodable_values_are_rejected_alone() {
        let b = batch(vec![
            Sample::good("huge", Value::U64(u64::MAX), 1),
            Sample::good("nan", Value::F64(f64::NAN), 1),
            Sample::good("ok", Value::I64(1), 1),
        ]);
        let mut out = String::new();
        let rejected = encode_batch(&b, &mut out);
        assert_eq!(
            rejected.iter().map(|r| r.tag.as_str()).collect::<Vec<_>>(),
            ["huge", "nan"]
        );
        assert_eq!(out, "filler,device=filler,line=packaging-1 ok=1i 1\n");
    }
}
