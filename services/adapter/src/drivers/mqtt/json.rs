//! JSON messages to samples: each tag is a JSON pointer into the message, optionally limited
//! to topics matching a filter. Pure: a message and its arrival time in, samples out.

use fieldline_core::{
    config::{
        MqttDeviceConfig, ResolvedValueTag,
        mqtt::{MqttIngestSettings, TimestampFormat, split_json_address},
    },
    sample::{Quality, QualityReason, Sample, Value},
};

/// Why a whole message was dropped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("payload of {size} bytes exceeds max_payload ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("payload is not UTF-8: {0}")]
    Utf8(String),
    #[error("payload is not JSON: {0}")]
    Json(String),
}

impl MessageError {
    /// The `kind` label of `fieldline_adapter_errors`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            MessageError::TooLarge { .. } => "payload_too_large",
            MessageError::Utf8(_) => "payload_utf8",
            MessageError::Json(_) => "payload_json",
        }
    }
}

/// What one message said.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub samples: Vec<Sample>,
    /// The configured timestamp was missing or unreadable, so the arrival time was used.
    pub timestamp_unreadable: bool,
}

struct JsonTag {
    tag: ResolvedValueTag,
    topic: Option<String>,
    pointer: String,
}

/// Maps the JSON messages of one device to its tags.
pub struct JsonMapper {
    tags: Vec<JsonTag>,
    timestamp: Option<String>,
    timestamp_format: TimestampFormat,
    max_payload: usize,
}

impl JsonMapper {
    /// The mapper of a validated json device; `Err` names the first tag that cannot be used.
    pub fn new(device: &MqttDeviceConfig, settings: &MqttIngestSettings) -> crate::Result<Self> {
        let mut tags = Vec::with_capacity(device.tags.len());
        for t in &device.tags {
            let tag = t
                .resolve_value()
                .map_err(|p| crate::Error::tag(&t.name, p))?;
            let (topic, pointer) = split_json_address(&t.address);
            tags.push(JsonTag {
                topic: topic.map(str::to_string),
                pointer: pointer.to_string(),
                tag,
            });
        }
        Ok(Self {
            tags,
            timestamp: settings.timestamp.clone(),
            timestamp_format: settings.timestamp_format,
            max_payload: usize::try_from(settings.max_payload.0).unwrap_or(usize::MAX),
        })
    }

    /// Topic filters to subscribe to: the device's topics and every tag's own filter, without
    /// those another filter already covers (the broker would deliver such a message once per
    /// matching subscription).
    pub fn filters(settings: &MqttIngestSettings, device: &MqttDeviceConfig) -> Vec<String> {
        let mut candidates: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        candidates.extend(
            device
                .tags
                .iter()
                .filter_map(|t| split_json_address(&t.address).0),
        );
        let mut filters: Vec<String> = Vec::new();
        for (i, f) in candidates.iter().enumerate() {
            let covered = candidates
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && rumqttc::matches(f, other) && (f != other || j < i));
            if !covered {
                filters.push((*f).to_string());
            }
        }
        filters
    }

    /// The samples of a message on `topic` that arrived at `arrival_ns`. Tags whose pointer
    /// is absent from the message are not reported; a value that is present but unusable is a
    /// Bad sample.
    pub fn map(
        &self,
        topic: &str,
        payload: &[u8],
        arrival_ns: i64,
    ) -> Result<Mapped, MessageError> {
        if payload.len() > self.max_payload {
            return Err(MessageError::TooLarge {
                size: payload.len(),
                max: self.max_payload,
            });
        }
        let text = std::str::from_utf8(payload).map_err(|e| MessageError::Utf8(e.to_string()))?;
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| MessageError::Json(e.to_string()))?;
        let (timestamp_ns, timestamp_unreadable) = match &self.timestamp {
            None => (arrival_ns, false),
            Some(pointer) => match doc
                .pointer(pointer)
                .and_then(|v| self.timestamp_format.parse(v))
            {
                Some(ns) => (ns, false),
                None => (arrival_ns, true),
            },
        };
        let samples = self
            .tags
            .iter()
            .filter(|t| {
                t.topic
                    .as_deref()
                    .is_none_or(|filter| rumqttc::matches(topic, filter))
            })
            .filter_map(|t| {
                let found = doc.pointer(&t.pointer)?;
                Some(match read(&t.tag, found) {
                    Ok(value) => Sample::good(&t.tag.name, value, timestamp_ns),
                    Err((reason, detail)) => {
                        Sample::bad(&t.tag.name, Quality::bad(reason, detail), timestamp_ns)
                    }
                })
            })
            .collect();
        Ok(Mapped {
            samples,
            timestamp_unreadable,
        })
    }
}

/// A JSON value as the tag's value, or why it is not one.
fn read(
    tag: &ResolvedValueTag,
    found: &serde_json::Value,
) -> Result<Value, (QualityReason, String)> {
    let raw = match found {
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::I64(i),
            (None, Some(u), _) => Value::U64(u),
            (None, None, Some(f)) => Value::F64(f),
            _ => return Err((QualityReason::DecodeError, format!("{n} is not a number"))),
        },
        // Collectors often send numbers and flags as text: read it as the tag's type.
        serde_json::Value::String(s) => {
            if tag.value_type == fieldline_core::value_type::ValueType::String {
                Value::String(s.clone())
            } else {
                tag.value_type.parse_text(s).map_err(classify)?
            }
        }
        serde_json::Value::Null => {
            return Err((QualityReason::DecodeError, "the value is null".into()));
        }
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            return Err((
                QualityReason::DecodeError,
                format!("a JSON {} is not a {} value", kind(found), tag.value_type),
            ));
        }
    };
    tag.convert(raw).map_err(classify)
}

fn kind(v: &serde_json::Value) -> &'static str {
    if v.is_array() { "array" } else { "object" }
}

/// A conversion error as a quality reason: values outside the tag's range are out_of_range,
/// anything else could not be decoded.
fn classify(e: fieldline_core::Error) -> (QualityReason, String) {
    let reason = match e {
        fieldline_core::Error::OutOfRange(_) => QualityReason::OutOfRange,
        _ => QualityReason::DecodeError,
    };
    (reason, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_core::config::{DeviceConfig, LineConfig};

    fn mqtt_device(config: &LineConfig) -> &MqttDeviceConfig {
        match &config.devices[0] {
            DeviceConfig::Mqtt(d) => d,
            other => panic!("{} is not an mqtt device", other.name()),
        }
    }

    fn mapper(settings: &str, tags: &str) -> JsonMapper {
        let yaml = format!(
            "line: l\ndevices:\n  - name: cnc\n    type: cnc\n    protocol: mqtt\n    endpoint: \"127.0.0.1:1883\"\n    mqtt: {settings}\n    tags:\n{tags}"
        );
        let config = LineConfig::from_yaml(&yaml).unwrap();
        let device = mqtt_device(&config);
        JsonMapper::new(device, &device.mqtt).unwrap()
    }

    const TAGS: &str = "      - { name: speed, address: /spindle/speed, type: f64, scale: 0.5 }\n      - { name: count, address: /count, type: u16 }\n      - { name: run, address: /run, type: bool }\n      - { name: mode, address: \"cnc/1/status#/mode\", type: string }\n";

    fn value(m: &Mapped, tag: &str) -> Option<Value> {
        m.samples
            .iter()
            .find(|s| s.tag == tag)
            .and_then(|s| s.value.clone())
    }

    fn reason(m: &Mapped, tag: &str) -> Option<QualityReason> {
        m.samples
            .iter()
            .find(|s| s.tag == tag)
            .and_then(|s| match &s.quality {
                Quality::Bad { reason, .. } => Some(*reason),
                _ => None,
            })
    }

    #[test]
    fn pointers_map_to_typed_scaled_values_with_the_payload_timestamp() {
        let m = mapper(
            "{ format: json, topics: [\"cnc/+/status\"], timestamp: /ts }",
            TAGS,
        );
        let out = m
            .map(
                "cnc/1/status",
                br#"{"ts": 1714564800250, "spindle": {"speed": 1200}, "count": "17", "run": true, "mode": "AUTO"}"#,
                5,
            )
            .unwrap();
        assert!(!out.timestamp_unreadable);
        assert_eq!(out.samples.len(), 4);
        assert!(
            out.samples
                .iter()
                .all(|s| s.timestamp_ns == 1_714_564_800_250_000_000)
        );
        assert_eq!(value(&out, "speed"), Some(Value::F64(600.0)));
        assert_eq!(value(&out, "count"), Some(Value::U64(17)));
        assert_eq!(value(&out, "run"), Some(Value::Bool(true)));
        assert_eq!(value(&out, "mode"), Some(Value::String("AUTO".into())));
    }

    #[test]
    fn a_tag_with_a_topic_reads_only_matching_topics_and_absent_tags_are_not_reported() {
        let m = mapper("{ format: json, topics: [\"cnc/+/status\"] }", TAGS);
        let out = m
            .map("cnc/2/status", br#"{"mode": "MDI", "count": 3}"#, 42)
            .unwrap();
        assert_eq!(out.samples.len(), 1);
        assert_eq!(out.samples[0].tag, "count");
        assert_eq!(out.samples[0].timestamp_ns, 42);
    }

    #[test]
    fn unusable_values_are_bad_never_zero() {
        let m = mapper("{ format: json, topics: [x] }", TAGS);
        let out = m
            .map(
                "x",
                br#"{"spindle": {"speed": "NaN"}, "count": 70000, "run": [1], "mode": null}"#,
                1,
            )
            .unwrap();
        assert_eq!(reason(&out, "speed"), Some(QualityReason::DecodeError));
        assert_eq!(reason(&out, "count"), Some(QualityReason::OutOfRange));
        assert_eq!(reason(&out, "run"), Some(QualityReason::DecodeError));
        assert!(out.samples.iter().all(|s| s.value.is_none()));
        let out = m.map("x", br#"{"count": -1, "run": 2}"#, 1).unwrap();
        assert_eq!(reason(&out, "count"), Some(QualityReason::OutOfRange));
        assert!(reason(&out, "run").is_some());
    }

    #[test]
    fn covered_filters_are_not_subscribed_twice() {
        let yaml = "line: l\ndevices:\n  - name: cnc\n    type: cnc\n    protocol: mqtt\n    endpoint: \"127.0.0.1:1883\"\n    mqtt: { format: json, topics: [\"cnc/+/status\", \"cnc/1/status\"] }\n    tags:\n      - { name: a, address: \"cnc/1/status#/a\", type: f64 }\n      - { name: b, address: \"other/x#/b\", type: f64 }\n      - { name: c, address: \"other/x#/c\", type: f64 }\n      - { name: d, address: \"other/##/d\", type: f64 }\n      - { name: e, address: \"z/1#/e\", type: f64 }\n";
        let config = LineConfig::from_yaml(yaml).unwrap();
        let d = mqtt_device(&config);
        assert_eq!(
            JsonMapper::filters(&d.mqtt, d),
            vec!["cnc/+/status", "other/#", "z/1"]
        );
    }

    #[test]
    fn broken_messages_are_errors_of_their_kind() {
        let m = mapper("{ format: json, topics: [x], max_payload: 64 }", TAGS);
        let kind = |p: &[u8]| m.map("x", p, 1).unwrap_err().metric_label();
        assert_eq!(kind(b"{\"count\": "), "payload_json");
        assert_eq!(kind(b"{\"mode\": \"\xff\"}"), "payload_utf8");
        assert_eq!(kind(&[b' '; 65]), "payload_too_large");
        assert_eq!(kind(b""), "payload_json");
    }

    #[test]
    fn an_unreadable_timestamp_falls_back_to_arrival() {
        let m = mapper(
            "{ format: json, topics: [x], timestamp: /t, timestamp_format: rfc3339 }",
            TAGS,
        );
        let out = m
            .map("x", br#"{"t": "yesterday", "count": 1}"#, 99)
            .unwrap();
        assert!(out.timestamp_unreadable);
        assert_eq!(out.samples[0].timestamp_ns, 99);
        let out = m
            .map("x", br#"{"t": "2024-05-01T12:00:00Z", "count": 1}"#, 99)
            .unwrap();
        assert_eq!(out.samples[0].timestamp_ns, 1_714_564_800_000_000_000);
    }

    proptest::proptest! {
        /// Whatever arrives, the mapper answers (samples or an error) and never panics; a
        /// sample is Good exactly when it carries a value.
        #[test]
        fn any_payload_is_answered(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200), topic in "[a-z0-9/+#]{0,20}") {
            let m = mapper("{ format: json, topics: [x], timestamp: /ts, max_payload: 150 }", TAGS);
            if let Ok(out) = m.map(&topic, &payload, 1) {
                for s in out.samples {
                    proptest::prop_assert_eq!(s.value.is_some(), s.quality.is_good());
                }
            }
        }

        #[test]
        fn any_json_value_is_a_good_typed_value_or_bad(v in proptest::prelude::any::<i64>(), f in proptest::prelude::any::<f64>(), text in ".{0,12}") {
            let m = mapper("{ format: json, topics: [x] }", TAGS);
            let doc = serde_json::json!({ "count": v, "spindle": { "speed": f }, "run": text }).to_string();
            let out = m.map("x", doc.as_bytes(), 1).unwrap();
            for s in out.samples {
                match (s.tag.as_str(), &s.value) {
                    ("count", Some(Value::U64(c))) => proptest::prop_assert!(*c <= 65535 && i64::try_from(*c).ok() == Some(v)),
                    ("speed", Some(Value::F64(x))) => proptest::prop_assert!(x.is_finite()),
                    ("run", Some(Value::Bool(_))) => {}
                    (_, None) => proptest::prop_assert!(s.quality.is_bad()),
                    other => proptest::prop_assert!(false, "unexpected {other:?}"),
                }
            }
        }
    }
}
