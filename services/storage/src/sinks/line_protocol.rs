//! InfluxDB line protocol, in the layout Fieldline stores samples:
//! measurement = device, tags `line` and `device`, one field per tag named after the tag,
//! Bad samples as a string field `<tag>_quality` and no value, timestamp in ns.
//!
//! Samples of one batch that share a timestamp become one line, so a replay of the same batch
//! rewrites the same series and timestamps: writes are idempotent. Each line is reported with
//! its byte range and sample count, so a sink can resend a part of a write and say exactly
//! which samples a server refused.
//!
//! Names (device, line, tag) are escaped so that InfluxDB 1.x/2.x and VictoriaMetrics read
//! them back unchanged. Those servers read backslashes in names differently (InfluxDB keeps
//! every backslash, VictoriaMetrics takes `\\` as one), so a name whose backslash comes last
//! or before `\ , = "` or space has no spelling both read the same, and is refused, as are
//! empty names, names with a line break and device names starting with `#` (a comment line).
//! String values may hold anything: quotes and backslashes are escaped, and a line break is
//! sent as it is (InfluxDB keeps it) on a line of its own, because VictoriaMetrics skips a
//! line it cannot parse and would otherwise drop the other fields of the point with it.

use std::{fmt::Write, ops::Range};

use super::FastMap;

use fieldline_core::{Quality, SampleBatch, Value};

/// Samples the line protocol cannot carry, left out of the write.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// What was left out: a tag, or the whole batch when its device or line name is unusable.
    pub what: String,
    /// Samples left out.
    pub samples: usize,
    pub reason: String,
}

/// One line of the output: the point of one device at one timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Where the line (with its newline) is in the output.
    pub range: Range<usize>,
    /// Samples the line carries.
    pub samples: usize,
    pub timestamp_ns: i64,
}

/// What [`encode_batch`] appended, and what it left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    pub lines: Vec<Line>,
    pub rejected: Vec<Rejected>,
}

/// The fields of one line being assembled.
#[derive(Default)]
struct Fields {
    text: String,
    samples: usize,
}

/// Appends the lines of `batch` to `out`.
pub fn encode_batch(batch: &SampleBatch, out: &mut String) -> Encoded {
    let mut encoded = Encoded::default();
    let unusable = measurement_problem(&batch.device)
        .map(|p| format!("device name {:?} {p}", batch.device))
        .or_else(|| name_problem(&batch.line).map(|p| format!("line name {:?} {p}", batch.line)));
    if let Some(reason) = unusable {
        if !batch.samples.is_empty() {
            encoded.rejected.push(Rejected {
                what: format!("{}/{}", batch.line, batch.device),
                samples: batch.samples.len(),
                reason,
            });
        }
        return encoded;
    }
    let mut header = String::new();
    escape_measurement(&batch.device, &mut header);
    header.push_str(",device=");
    escape_key(&batch.device, &mut header);
    header.push_str(",line=");
    escape_key(&batch.line, &mut header);
    header.push(' ');

    // Timestamps in the order they first appear, each with its samples.
    let mut groups: Vec<(i64, Vec<usize>)> = Vec::new();
    let mut slot: FastMap<i64, usize> = FastMap::default();
    for (i, s) in batch.samples.iter().enumerate() {
        // Samples of one poll share a timestamp: most need no lookup.
        if let Some(last) = groups.last_mut()
            && last.0 == s.timestamp_ns
        {
            last.1.push(i);
            continue;
        }
        let at = *slot.entry(s.timestamp_ns).or_insert_with(|| {
            groups.push((s.timestamp_ns, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(i);
    }

    for (ts, members) in groups {
        let mut main = Fields::default();
        let mut apart: Vec<Fields> = Vec::new();
        for i in members {
            let s = &batch.samples[i];
            if let Some(problem) = field_key_problem(&s.tag) {
                encoded.rejected.push(Rejected {
                    what: s.tag.clone(),
                    samples: 1,
                    reason: format!("tag name {:?} {problem}", s.tag),
                });
                continue;
            }
            // Fields are written straight into the line being assembled; a string value
            // holding a line break gets a line of its own (line protocol carries it raw).
            let multiline = matches!(&s.value, Some(Value::String(t)) if t.contains('\n'));
            if multiline {
                apart.push(Fields::default());
            }
            let target = if multiline {
                match apart.last_mut() {
                    Some(f) => f,
                    None => continue,
                }
            } else {
                &mut main
            };
            let before = target.text.len();
            if before > 0 {
                target.text.push(',');
            }
            let mut wrote = false;
            let mut complete = true;
            if let Some(value) = &s.value {
                let mark = target.text.len();
                escape_key(&s.tag, &mut target.text);
                target.text.push('=');
                match write_field_value(value, &mut target.text) {
                    Ok(()) => wrote = true,
                    Err(reason) => {
                        target.text.truncate(mark);
                        encoded.rejected.push(Rejected {
                            what: s.tag.clone(),
                            samples: 1,
                            reason: reason.to_string(),
                        });
                        complete = false;
                    }
                }
            }
            if !matches!(s.quality, Quality::Good) {
                if wrote {
                    target.text.push(',');
                }
                escape_key(&s.tag, &mut target.text);
                target.text.push_str("_quality=");
                string_field(&s.quality.code(), &mut target.text);
                wrote = true;
            }
            if !wrote {
                target.text.truncate(before);
                if multiline {
                    apart.pop();
                }
                continue;
            }
            target.samples += usize::from(complete);
        }
        for fields in std::iter::once(main).chain(apart) {
            if fields.text.is_empty() {
                continue;
            }
            let start = out.len();
            out.push_str(&header);
            out.push_str(&fields.text);
            let _ = writeln!(out, " {ts}");
            encoded.lines.push(Line {
                range: start..out.len(),
                samples: fields.samples,
                timestamp_ns: ts,
            });
        }
    }
    encoded
}

/// Why `name` cannot be a tag key, tag value or field key, if it cannot.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.contains('\n') {
        return Some("contains a line break");
    }
    let bytes = name.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\\' {
            match bytes.get(i + 1) {
                None => return Some("ends with a backslash, which line protocol cannot carry"),
                Some(b'\\' | b',' | b' ' | b'=' | b'"') => {
                    return Some(
                        "has a backslash before a backslash, comma, space, = or \", which InfluxDB and VictoriaMetrics read differently",
                    );
                }
                Some(_) => {}
            }
        }
    }
    None
}

/// Why `name` cannot be a field key, if it cannot.
fn field_key_problem(name: &str) -> Option<&'static str> {
    if name == "time" {
        // InfluxDB 1.x answers 204 and drops the field when the point has others.
        return Some("is time, which InfluxDB reserves for the timestamp (it drops such a field)");
    }
    name_problem(name)
}

/// Why `name` cannot be a measurement, if it cannot.
fn measurement_problem(name: &str) -> Option<&'static str> {
    if name.starts_with('#') {
        return Some("starts with #, which makes the line a comment in line protocol");
    }
    name_problem(name)
}

/// A value that no InfluxDB field type holds.
#[derive(Debug, thiserror::Error)]
enum Unwritable {
    #[error("{0} does not fit an InfluxDB integer field")]
    TooLarge(u64),
    #[error("{0} is not a finite number")]
    NotFinite(f64),
}

/// Appends a value as a typed field value.
fn write_field_value(value: &Value, out: &mut String) -> Result<(), Unwritable> {
    match value {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I64(i) => {
            let _ = write!(out, "{i}i");
        }
        // InfluxDB 1.x has no unsigned field type; values that fit are stored as integers.
        Value::U64(u) => match i64::try_from(*u) {
            Ok(i) => {
                let _ = write!(out, "{i}i");
            }
            Err(_) => return Err(Unwritable::TooLarge(*u)),
        },
        Value::F64(f) if f.is_finite() => {
            let start = out.len();
            let _ = write!(out, "{f}");
            // `12` would be read as a float anyway; keep the decimal point for clarity.
            if !out[start..].contains(['.', 'e', 'E']) {
                out.push_str(".0");
            }
        }
        Value::F64(f) => return Err(Unwritable::NotFinite(*f)),
        Value::String(s) => string_field(s, out),
    }
    Ok(())
}

fn escape_measurement(name: &str, out: &mut String) {
    for c in name.chars() {
        if matches!(c, ',' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
}

fn escape_key(name: &str, out: &mut String) {
    for c in name.chars() {
        if matches!(c, ',' | '=' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
}

fn string_field(value: &str, out: &mut String) {
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
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

    fn text(out: &str, line: &Line) -> String {
        out[line.range.clone()].to_string()
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
        let encoded = encode_batch(&b, &mut out);
        assert!(encoded.rejected.is_empty());
        assert_eq!(
            out,
            "filler,device=filler,line=packaging-1 temperature=12.5,count=-1234i,total=4000000000i,run=true 100\n\
             filler,device=filler,line=packaging-1 recipe=\"a \\\"b\\\" \\\\c\",whole=3.0 200\n"
        );
        assert_eq!(
            encoded
                .lines
                .iter()
                .map(|l| (l.samples, l.timestamp_ns))
                .collect::<Vec<_>>(),
            [(4, 100), (2, 200)]
        );
        assert_eq!(
            text(&out, &encoded.lines[1]),
            "filler,device=filler,line=packaging-1 recipe=\"a \\\"b\\\" \\\\c\",whole=3.0 200\n"
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
        let encoded = encode_batch(&b, &mut out);
        assert_eq!(
            out,
            "filler,device=filler,line=packaging-1 temperature_quality=\"bad:device_exception(2)\",run=false 5\n"
        );
        assert_eq!(encoded.lines[0].samples, 2);
    }

    #[test]
    fn unencodable_values_are_rejected_alone() {
        let b = batch(vec![
            Sample::good("huge", Value::U64(u64::MAX), 1),
            Sample::good("nan", Value::F64(f64::NAN), 1),
            Sample::good("ok", Value::I64(1), 1),
        ]);
        let mut out = String::new();
        let encoded = encode_batch(&b, &mut out);
        assert_eq!(
            encoded
                .rejected
                .iter()
                .map(|r| r.what.as_str())
                .collect::<Vec<_>>(),
            ["huge", "nan"]
        );
        assert_eq!(out, "filler,device=filler,line=packaging-1 ok=1i 1\n");
        assert_eq!(encoded.lines[0].samples, 1);
    }

    #[test]
    fn names_are_escaped_where_line_protocol_needs_it() {
        let b = SampleBatch {
            line: "hall 3,north=a".into(),
            device: "Prüf stand,\"x\"=1 C:\\tmp".into(),
            adapter_id: "a".into(),
            sequence: 1,
            samples: vec![Sample::good("te mp,a=b", Value::I64(1), 7)],
        };
        let mut out = String::new();
        encode_batch(&b, &mut out);
        assert_eq!(
            out,
            "Prüf\\ stand\\,\"x\"=1\\ C:\\tmp,device=Prüf\\ stand\\,\"x\"\\=1\\ C:\\tmp,line=hall\\ 3\\,north\\=a te\\ mp\\,a\\=b=1i 7\n"
        );
    }

    #[test]
    fn names_without_a_common_spelling_are_refused_with_the_reason() {
        for (device, why) in [
            ("", "is empty"),
            ("ends\\", "ends with a backslash"),
            ("a\\\\b", "has a backslash before"),
            ("a\\,b", "has a backslash before"),
            ("two\nlines", "line break"),
            ("#not-a-comment", "comment"),
        ] {
            let mut b = batch(vec![
                Sample::good("a", Value::I64(1), 1),
                Sample::good("b", Value::I64(2), 2),
            ]);
            b.device = device.into();
            let mut out = String::new();
            let encoded = encode_batch(&b, &mut out);
            assert!(out.is_empty(), "{device:?}: {out}");
            assert_eq!(encoded.rejected.len(), 1, "{device:?}");
            assert_eq!(encoded.rejected[0].samples, 2);
            assert!(
                encoded.rejected[0].reason.contains(why),
                "{device:?}: {}",
                encoded.rejected[0].reason
            );
        }
        let b = batch(vec![
            Sample::good("bad\\", Value::I64(1), 1),
            Sample::good("good\\tag", Value::I64(2), 1),
            Sample::good("time", Value::I64(3), 1),
        ]);
        let mut out = String::new();
        let encoded = encode_batch(&b, &mut out);
        assert_eq!(
            encoded
                .rejected
                .iter()
                .map(|r| r.what.as_str())
                .collect::<Vec<_>>(),
            ["bad\\", "time"]
        );
        assert_eq!(
            out,
            "filler,device=filler,line=packaging-1 good\\tag=2i 1\n"
        );
    }

    #[test]
    fn a_string_with_a_line_break_gets_a_line_of_its_own() {
        let b = batch(vec![
            Sample::good("a", Value::I64(1), 9),
            Sample::good("note", Value::String("one\ntwo\\".into()), 9),
            Sample::good("b", Value::Bool(true), 9),
        ]);
        let mut out = String::new();
        let encoded = encode_batch(&b, &mut out);
        assert_eq!(
            out,
            "filler,device=filler,line=packaging-1 a=1i,b=true 9\n\
             filler,device=filler,line=packaging-1 note=\"one\ntwo\\\\\" 9\n"
        );
        assert_eq!(
            encoded.lines.iter().map(|l| l.samples).collect::<Vec<_>>(),
            [2, 1]
        );
    }
}
