//! Bytes to lines to fields to tag values, without I/O: the framer cuts the byte stream into
//! bounded lines, a [`Parser`] reads a line into fields, [`decode`] turns a tag's field into
//! its typed value or a Bad reason. Nothing here invents a value: what cannot be read is an
//! error the driver reports.

use std::collections::HashMap;

use fieldline_core::{
    QualityReason, Value,
    config::{ResolvedValueTag, serial_line::LineParser},
    value_type::ValueType,
};

use crate::Error;

/// What the framer found in the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its ending.
    Line(Vec<u8>),
    /// A line longer than the limit ended here; its bytes were discarded.
    Overlong,
}

/// Cuts a byte stream into lines of at most `max` bytes. A `\r` before the `\n` is removed.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max: usize,
    /// Inside a line that passed the limit: drop bytes up to its end.
    discarding: bool,
}

impl Framer {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// The frames completed by `bytes`.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if self.discarding {
                    self.discarding = false;
                    frames.push(Frame::Overlong);
                } else {
                    let mut line = std::mem::take(&mut self.buf);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    frames.push(Frame::Line(line));
                }
            } else if !self.discarding {
                // A `\r` may follow a full line: it is part of a `\r\n` ending.
                let limit = if b == b'\r' { self.max + 1 } else { self.max };
                if self.buf.len() >= limit {
                    self.buf.clear();
                    self.discarding = true;
                } else {
                    self.buf.push(b);
                }
            }
        }
        frames
    }

    /// Forgets a partial line (the port closed); true when there was one.
    pub fn reset(&mut self) -> bool {
        let partial = !self.buf.is_empty() || self.discarding;
        self.buf.clear();
        self.discarding = false;
        partial
    }
}

/// A field as found in a line.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Text(String),
    Json(serde_json::Value),
}

/// The fields of one line, looked up by tag address.
#[derive(Debug, Clone, PartialEq)]
pub enum Fields {
    Named(HashMap<String, String>),
    Json(serde_json::Value),
}

impl Fields {
    pub fn get(&self, address: &str) -> Option<Field> {
        match self {
            Fields::Named(map) => map.get(address).cloned().map(Field::Text),
            Fields::Json(doc) => doc.pointer(address).cloned().map(Field::Json),
        }
    }
}

/// A line parser built from the device's settings.
#[derive(Debug, Clone)]
pub enum Parser {
    KeyValue { pair: String, key: String },
    Json,
    Regex(regex::Regex),
}

impl Parser {
    pub fn new(config: &LineParser) -> crate::Result<Self> {
        Ok(match config {
            LineParser::KeyValue {
                pair_separator,
                key_separator,
            } => Parser::KeyValue {
                pair: pair_separator.clone(),
                key: key_separator.clone(),
            },
            LineParser::Json => Parser::Json,
            LineParser::Regex { pattern } => Parser::Regex(regex::Regex::new(pattern)?),
        })
    }

    /// The fields of `line`, or why the line cannot be read at all.
    pub fn parse(&self, line: &str) -> crate::Result<Fields> {
        match self {
            Parser::KeyValue { pair, key } => {
                let mut map = HashMap::new();
                for part in line.split(pair.as_str()) {
                    if part.trim().is_empty() {
                        continue;
                    }
                    let Some((k, v)) = part.split_once(key.as_str()) else {
                        return Err(Error::NotKeyValue {
                            part: part.to_string(),
                            separator: key.clone(),
                        });
                    };
                    let k = k.trim();
                    if k.is_empty() {
                        return Err(Error::NoKey {
                            part: part.to_string(),
                        });
                    }
                    map.insert(k.to_string(), v.trim().to_string());
                }
                if map.is_empty() {
                    return Err(Error::NoPairs);
                }
                Ok(Fields::Named(map))
            }
            Parser::Json => serde_json::from_str::<serde_json::Value>(line)
                .map(Fields::Json)
                .map_err(Error::NotJson),
            Parser::Regex(re) => {
                let caps = re.captures(line).ok_or(Error::NoMatch)?;
                let map = re
                    .capture_names()
                    .flatten()
                    .filter_map(|name| {
                        caps.name(name)
                            .map(|m| (name.to_string(), m.as_str().to_string()))
                    })
                    .collect();
                Ok(Fields::Named(map))
            }
        }
    }
}

/// The tag's value from its field, or the reason it is Bad.
pub fn decode(tag: &ResolvedValueTag, field: Field) -> Result<Value, (QualityReason, String)> {
    let raw = match field {
        Field::Text(text) => tag.value_type.parse_text(&text).map_err(|e| {
            // A number the type cannot hold is out of range; anything else is unreadable.
            let number = text.trim().parse::<f64>().is_ok_and(f64::is_finite);
            if number && tag.value_type.is_numeric() {
                (QualityReason::OutOfRange, e.to_string())
            } else {
                (QualityReason::DecodeError, e.to_string())
            }
        })?,
        Field::Json(json) => from_json(tag.value_type, json)?,
    };
    tag.convert(raw).map_err(classify)
}

fn from_json(t: ValueType, json: serde_json::Value) -> Result<Value, (QualityReason, String)> {
    let value = match json {
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::I64(i)
            } else if let Some(u) = n.as_u64() {
                Value::U64(u)
            } else if let Some(x) = n.as_f64() {
                Value::F64(x)
            } else {
                return Err((QualityReason::DecodeError, format!("{n} is not a number")));
            }
        }
        serde_json::Value::String(s) if t != ValueType::String => {
            return t.parse_text(&s).map_err(classify);
        }
        serde_json::Value::String(s) => Value::String(s),
        other => {
            return Err((
                QualityReason::DecodeError,
                format!("{other} is not a single value"),
            ));
        }
    };
    t.convert(value).map_err(classify)
}

fn classify(e: fieldline_core::Error) -> (QualityReason, String) {
    use fieldline_core::Error;
    match e {
        Error::OutOfRange(_) | Error::NotFinite(_) => (QualityReason::OutOfRange, e.to_string()),
        e => (QualityReason::DecodeError, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_core::deadband::DeadbandRule;
    use proptest::prelude::{Just, any};

    fn tag(address: &str, t: &str) -> ResolvedValueTag {
        ResolvedValueTag {
            name: "t".into(),
            address: address.into(),
            value_type: t.parse().unwrap(),
            scale: None,
            offset: None,
            decimals: None,
            deadband: DeadbandRule::default(),
            write: Default::default(),
        }
    }

    fn kv() -> Parser {
        Parser::new(&LineParser::default()).unwrap()
    }

    #[test]
    fn lines_are_cut_at_the_ending_and_bounded() {
        let mut f = Framer::new(16);
        assert_eq!(
            f.push(b"TEMP:1\r\nHUM"),
            vec![Frame::Line(b"TEMP:1".to_vec())]
        );
        assert_eq!(f.push(b":4\n"), vec![Frame::Line(b"HUM:4".to_vec())]);
        let long = [b'x'; 40];
        assert_eq!(f.push(&long), vec![]);
        assert_eq!(
            f.push(b"yy\nA:1\n"),
            vec![Frame::Overlong, Frame::Line(b"A:1".to_vec())]
        );
        assert_eq!(f.push(b"half"), vec![]);
        assert!(f.reset(), "a partial line is reported");
        assert!(!f.reset());
        // Exactly the limit is still a line, with either ending; one byte more is not.
        let exact = [b'a'; 16];
        assert_eq!(
            f.push(&[&exact[..], b"\n", &exact[..], b"\r\n"].concat()),
            vec![Frame::Line(exact.to_vec()), Frame::Line(exact.to_vec())]
        );
        assert_eq!(
            f.push(&[&exact[..], b"b\n"].concat()),
            vec![Frame::Overlong]
        );
        assert_eq!(
            f.push(&[&exact[..], b"\rb\n"].concat()),
            vec![Frame::Overlong]
        );
    }

    proptest::proptest! {
        /// Whatever the bytes and however they are split, every line is within the limit,
        /// and input without overlong lines comes out exactly as it went in.
        #[test]
        fn framing_is_bounded_and_lossless(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()],
                0..400,
            ),
            cut in 0usize..400,
        ) {
            let mut f = Framer::new(24);
            let cut = cut.min(bytes.len());
            let mut frames = f.push(&bytes[..cut]);
            frames.extend(f.push(&bytes[cut..]));
            let mut rebuilt = Vec::new();
            let mut overlong = false;
            for frame in &frames {
                match frame {
                    Frame::Line(l) => {
                        proptest::prop_assert!(l.len() <= 24);
                        rebuilt.push(l.clone());
                    }
                    Frame::Overlong => overlong = true,
                }
            }
            let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let expected: Vec<Vec<u8>> = bytes[..complete.saturating_sub(1)]
                .split(|&b| b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
                .collect();
            if complete == 0 {
                proptest::prop_assert!(frames.is_empty());
            } else if !overlong {
                proptest::prop_assert_eq!(rebuilt, expected);
            }
        }
    }

    #[test]
    fn key_values_are_read_by_key() {
        let fields = kv().parse("TEMP:21.5,HUM:40").unwrap();
        assert_eq!(fields.get("TEMP"), Some(Field::Text("21.5".into())));
        assert_eq!(fields.get("HUM"), Some(Field::Text("40".into())));
        assert_eq!(fields.get("PRES"), None);
        assert!(kv().parse("garbage").is_err());
        assert!(kv().parse("").is_err());
        assert!(kv().parse(":5").is_err());
        let custom = Parser::new(&LineParser::KeyValue {
            pair_separator: ";".into(),
            key_separator: "=".into(),
        })
        .unwrap();
        let fields = custom.parse("a=1; b = 2").unwrap();
        assert_eq!(fields.get("b"), Some(Field::Text("2".into())));
    }

    #[test]
    fn json_lines_are_read_by_pointer() {
        let p = Parser::Json;
        let fields = p.parse(r#"{"temp": 21.5, "env": {"hum": 40}}"#).unwrap();
        assert_eq!(
            decode(&tag("/env/hum", "u16"), fields.get("/env/hum").unwrap()),
            Ok(Value::U64(40))
        );
        assert_eq!(fields.get("/nope"), None);
        assert!(p.parse("{\"temp\": ").is_err());
        let obj = fields.get("/env").unwrap();
        assert!(matches!(
            decode(&tag("/env", "f64"), obj),
            Err((QualityReason::DecodeError, _))
        ));
    }

    #[test]
    fn regex_groups_are_fields() {
        let p = Parser::new(&LineParser::Regex {
            pattern: r"^T=(?P<temp>\S+) H=(?P<hum>\d+)(?: P=(?P<pres>\d+))?$".into(),
        })
        .unwrap();
        let fields = p.parse("T=21.5 H=40").unwrap();
        assert_eq!(fields.get("temp"), Some(Field::Text("21.5".into())));
        assert_eq!(fields.get("pres"), None, "an unmatched optional group");
        assert!(p.parse("hello").is_err());
    }

    #[test]
    fn values_that_do_not_fit_are_bad_with_a_reason() {
        let reason = |t: &str, text: &str| decode(&tag("a", t), Field::Text(text.into())).err();
        assert_eq!(
            decode(&tag("a", "f32"), Field::Text("21.5".into())),
            Ok(Value::F64(21.5))
        );
        assert!(matches!(
            reason("u16", "70000"),
            Some((QualityReason::OutOfRange, _))
        ));
        assert!(matches!(
            reason("u16", "-1"),
            Some((QualityReason::OutOfRange, _))
        ));
        assert!(matches!(
            reason("f32", "abc"),
            Some((QualityReason::DecodeError, _))
        ));
        assert!(matches!(
            reason("bool", "2"),
            Some((QualityReason::DecodeError, _))
        ));
        assert!(matches!(
            decode(&tag("a", "i16"), Field::Json(serde_json::json!(40000))),
            Err((QualityReason::OutOfRange, _))
        ));
        assert_eq!(
            decode(&tag("a", "f64"), Field::Json(serde_json::json!("2.5"))),
            Ok(Value::F64(2.5))
        );
        let mut scaled = tag("a", "i16");
        scaled.scale = Some(0.1);
        assert_eq!(
            decode(&scaled, Field::Text("215".into())),
            Ok(Value::F64(21.5))
        );
    }
}
