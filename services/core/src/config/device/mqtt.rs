//! Settings of a device whose values arrive on MQTT topics published by someone else
//! (`protocol: mqtt`): a collector publishing JSON, or a Sparkplug B edge node. The device's
//! `endpoint` is the broker (`host:port`).
//!
//! With `format: json` a tag's `address` is a JSON pointer into each message (`/spindle/speed`),
//! optionally preceded by the topic filter it applies to and `#`:
//! `cnc/1/status#/spindle/speed` reads `/spindle/speed` only from messages on topics matching
//! `cnc/1/status`. A tag without a topic reads every subscribed topic. The driver subscribes to
//! `topics` and to every tag's own topic filter. A writable tag is written by publishing a
//! message from a template (`writes`).
//!
//! With `format: sparkplug-b` a tag's `address` is the Sparkplug metric name
//! (`Spindle/Speed`) of the edge node (`edge_node_id`) or of one of its devices (`device_id`).
//! Writable tags are written as DCMD (or NCMD for the node's own metrics) with the metric's
//! name and its datatype from the birth certificate.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{modbus::is_host_port, validate_tags};
use crate::config::{ByteSize, Problems, SecretRef, TagConfig};

/// Values that others publish to MQTT topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttDeviceConfig {
    /// Device name, `[a-z0-9_-]`, unique within the line.
    pub name: String,
    /// Device type; selects plugins, alarms and control rules.
    #[serde(rename = "type")]
    pub device_type: String,
    /// `host:port` of the broker the values are published to.
    pub endpoint: String,
    /// Topics and payload format.
    pub mqtt: MqttIngestSettings,
    /// Longest pause between reconnect attempts (the backoff doubles up to this).
    #[serde(default = "super::default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// The tags to read; each `address` is a JSON pointer or a Sparkplug metric name.
    pub tags: Vec<TagConfig>,
}

/// Which topics to subscribe to and how to read their payloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttIngestSettings {
    /// Payload format: `json` (any publisher) or `sparkplug-b` (an Eclipse Sparkplug B edge
    /// node).
    pub format: PayloadFormat,
    /// json: MQTT topic filters to subscribe to, wildcards allowed (`cnc/+/status`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// json: JSON pointer to the message's timestamp (`/ts`). When absent, or when a message's
    /// timestamp is missing or unreadable (counted as `timestamp` error), samples carry the
    /// arrival time.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// json: how the timestamp is written: `unix-ms` (default), `unix-s`, `unix-ns` or
    /// `rfc3339`.
    #[serde(default)]
    pub timestamp_format: TimestampFormat,
    /// Largest message read; larger ones are counted (`payload_too_large`) and dropped.
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// QoS of the subscriptions: 0, 1 (default) or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// MQTT client id; `fieldline-{line}-{device}` when absent. Must be unique on the broker.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name, when the broker requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// The password comes from a secret, never from this document.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// sparkplug-b: the Sparkplug group id.
    #[serde(default)]
    pub group_id: Option<String>,
    /// sparkplug-b: the edge node id.
    #[serde(default)]
    pub edge_node_id: Option<String>,
    /// sparkplug-b: the device behind the edge node whose metrics the tags read; the edge
    /// node's own metrics when absent.
    #[serde(default)]
    pub device_id: Option<String>,
    /// json: how writable tags are written, one entry per writable tag: a message published
    /// on `topic` from `template`.
    #[serde(default)]
    pub writes: Vec<JsonWrite>,
}

/// A json device's writable tag: commands publish `template` on `topic` (QoS 1), with
/// `{value}` replaced by the value as JSON (`21.5`, `true`, `"AUTO"`) and `{command_id}` by the
/// command's id as a JSON string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonWrite {
    /// The writable tag's name.
    pub tag: String,
    /// The topic to publish on (no wildcards).
    pub topic: String,
    /// The message, e.g. `{"setpoint": {value}, "id": {command_id}}`.
    pub template: String,
}

impl JsonWrite {
    /// The message for `value` (already JSON) and `command_id`.
    pub fn render(&self, value: &serde_json::Value, command_id: &str) -> String {
        self.template
            .replace(
                "{command_id}",
                &serde_json::Value::from(command_id).to_string(),
            )
            .replace("{value}", &value.to_string())
    }
}

/// How an MQTT ingest device's payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// A JSON document per message; tags are JSON pointers into it.
    Json,
    /// Sparkplug B protobuf payloads on `spBv1.0/...` topics; tags are metric names.
    SparkplugB,
}

/// How a JSON message's timestamp is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TimestampFormat {
    /// Milliseconds since the Unix epoch (number or numeric string).
    #[default]
    UnixMs,
    /// Seconds since the Unix epoch, fractions allowed.
    UnixS,
    /// Nanoseconds since the Unix epoch.
    UnixNs,
    /// RFC 3339 text: `2024-05-01T12:00:00.250Z`, `2024-05-01T14:00:00+02:00`.
    Rfc3339,
}

impl TimestampFormat {
    /// The timestamp in ns since the Unix epoch; `None` when `value` is not one.
    pub fn parse(self, value: &serde_json::Value) -> Option<i64> {
        // Numbers are read from their decimal text so fractions stay exact (no f64 rounding).
        let text = match value {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.trim().to_string(),
            _ => return None,
        };
        match self {
            TimestampFormat::UnixMs => decimal_scaled(&text, 6),
            TimestampFormat::UnixS => decimal_scaled(&text, 9),
            TimestampFormat::UnixNs => decimal_scaled(&text, 0),
            TimestampFormat::Rfc3339 => value.as_str().and_then(parse_rfc3339),
        }
    }
}

/// `text` (a non-negative decimal such as `1714564800.25`) times 10^`digits`, truncated to a
/// whole number.
fn decimal_scaled(text: &str, digits: u32) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut result = whole.parse::<i64>().ok()?.checked_mul(10i64.pow(digits))?;
    for (i, digit) in fraction.bytes().take(digits as usize).enumerate() {
        let weight = 10i64.pow(digits - 1 - i as u32);
        result = result.checked_add(i64::from(digit - b'0') * weight)?;
    }
    Some(result)
}

/// Parses RFC 3339 text (`Z` or a `±hh:mm` offset) to ns since the Unix epoch.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.trim();
    // The offset is what follows the time of day: `Z`, or the last `+`/`-` after the `T`.
    let time_at = text.find(['T', 't', ' '])?;
    let (local, offset_s) = if let Some(local) = text.strip_suffix(['Z', 'z']) {
        (local, 0i64)
    } else {
        let at = text[time_at..].rfind(['+', '-'])? + time_at;
        let (local, offset) = text.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':')?;
        let (h, m) = (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?);
        if h > 23 || m > 59 {
            return None;
        }
        (local, sign * (h * 3600 + m * 60))
    };
    let utc = humantime::parse_rfc3339_weak(local).ok()?;
    let ns = i64::try_from(utc.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok()?;
    ns.checked_sub(offset_s.checked_mul(1_000_000_000)?)
}

fn default_max_payload() -> ByteSize {
    ByteSize(256 * 1024)
}

fn default_qos() -> u8 {
    1
}

/// A JSON tag's address: the topic filter it reads (all subscribed topics when `None`) and the
/// JSON pointer into the message.
pub fn split_json_address(address: &str) -> (Option<&str>, &str) {
    if address.starts_with('/') {
        return (None, address);
    }
    // A filter's `#` is always its last character, so the first `#/` ends the filter.
    match address.find("#/") {
        Some(at) if at > 0 => (Some(&address[..at]), &address[at + 1..]),
        _ => (None, address),
    }
}

/// Why `filter` is not a usable MQTT topic filter, if it is not.
pub fn topic_filter_problem(filter: &str) -> Option<String> {
    if filter.is_empty() {
        return Some("a topic filter must not be empty".into());
    }
    if filter.contains('\0') {
        return Some(format!("{filter:?} contains a NUL character"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Some(format!(
                "{filter:?}: `#` must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Some(format!("{filter:?}: `+` must be a whole level"));
        }
    }
    None
}

impl MqttDeviceConfig {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if !is_host_port(&self.endpoint) {
            problems.push(
                format!("{at}.endpoint"),
                format!("{:?} is not the broker's host:port", self.endpoint),
            );
        }
        self.validate_settings(at, &mut |path, message| problems.push(path, message));
        validate_tags(&self.tags, at, problems, TagConfig::resolve_value);
    }

    /// Checks the `mqtt` section, and the tags against its format and writes.
    fn validate_settings(&self, at: &str, err: &mut impl FnMut(String, String)) {
        let d = self;
        let s = &self.mqtt;
        let at_m = format!("{at}.mqtt");
        if s.qos > 2 {
            err(format!("{at_m}.qos"), format!("{} is not 0, 1 or 2", s.qos));
        }
        if s.max_payload.0 == 0 {
            err(format!("{at_m}.max_payload"), "must be more than 0".into());
        }
        if let Some(problem) = s.password.as_ref().and_then(SecretRef::problem) {
            err(format!("{at_m}.password"), problem.into());
        }
        if s.password.is_some() && s.username.is_none() {
            err(
                format!("{at_m}.password"),
                "a password needs a username".into(),
            );
        }
        if s.client_id.as_deref().is_some_and(str::is_empty) {
            err(format!("{at_m}.client_id"), "must not be empty".into());
        }
        for (j, tag) in d.tags.iter().enumerate() {
            if tag.writable
                && s.format == PayloadFormat::Json
                && !s.writes.iter().any(|w| w.tag == tag.name)
            {
                err(
                    format!("{at}.tags[{j}].writable"),
                    format!(
                        "a writable json tag needs an entry in mqtt.writes (tag: {}, topic, template)",
                        tag.name
                    ),
                );
            }
        }
        match s.format {
            PayloadFormat::Json => validate_json(d, s, at, &at_m, err),
            PayloadFormat::SparkplugB => validate_sparkplug(s, &at_m, err),
        }
    }
}

fn validate_json(
    d: &MqttDeviceConfig,
    s: &MqttIngestSettings,
    at: &str,
    at_m: &str,
    err: &mut impl FnMut(String, String),
) {
    for (i, topic) in s.topics.iter().enumerate() {
        if let Some(problem) = topic_filter_problem(topic) {
            err(format!("{at_m}.topics[{i}]"), problem);
        }
    }
    for (i, w) in s.writes.iter().enumerate() {
        let at_w = format!("{at_m}.writes[{i}]");
        match d.tags.iter().find(|t| t.name == w.tag) {
            None => err(
                format!("{at_w}.tag"),
                format!("the device has no tag {:?}", w.tag),
            ),
            Some(t) if !t.writable => err(
                format!("{at_w}.tag"),
                format!("tag {:?} is not writable", w.tag),
            ),
            Some(_) => {}
        }
        if s.writes[..i].iter().any(|other| other.tag == w.tag) {
            err(
                format!("{at_w}.tag"),
                format!("tag {:?} has two writes", w.tag),
            );
        }
        if w.topic.is_empty() || w.topic.contains(['+', '#', '\0']) {
            err(
                format!("{at_w}.topic"),
                format!("{:?} is not a topic to publish on (no wildcards)", w.topic),
            );
        }
        if !w.template.contains("{value}") {
            err(
                format!("{at_w}.template"),
                "the template must contain {value}".into(),
            );
        }
    }
    if let Some(pointer) = &s.timestamp
        && !pointer.starts_with('/')
    {
        err(
            format!("{at_m}.timestamp"),
            format!("{pointer:?} is not a JSON pointer (it starts with `/`)"),
        );
    }
    for (field, present) in [
        ("group_id", s.group_id.is_some()),
        ("edge_node_id", s.edge_node_id.is_some()),
        ("device_id", s.device_id.is_some()),
    ] {
        if present {
            err(
                format!("{at_m}.{field}"),
                "applies to sparkplug-b only".into(),
            );
        }
    }
    let mut every_tag_has_topic = !d.tags.is_empty();
    for (j, tag) in d.tags.iter().enumerate() {
        let (topic, pointer) = split_json_address(&tag.address);
        every_tag_has_topic &= topic.is_some();
        if let Some(problem) = topic.and_then(topic_filter_problem) {
            err(format!("{at}.tags[{j}].address"), problem);
        }
        if !pointer.starts_with('/') {
            err(
                format!("{at}.tags[{j}].address"),
                format!(
                    "{:?} is not a JSON pointer such as /spindle/speed (optionally after `topic#`)",
                    tag.address
                ),
            );
        }
    }
    if s.topics.is_empty() && !every_tag_has_topic {
        err(
            format!("{at_m}.topics"),
            "list the topics to subscribe to (or give every tag its own `topic#/pointer`)".into(),
        );
    }
}

fn validate_sparkplug(s: &MqttIngestSettings, at_m: &str, err: &mut impl FnMut(String, String)) {
    for (field, value, required) in [
        ("group_id", &s.group_id, true),
        ("edge_node_id", &s.edge_node_id, true),
        ("device_id", &s.device_id, false),
    ] {
        match value {
            None if required => err(
                format!("{at_m}.{field}"),
                "a sparkplug-b device needs it".into(),
            ),
            Some(id) if id.is_empty() || id.contains(['/', '+', '#']) => err(
                format!("{at_m}.{field}"),
                format!("{id:?} is not a Sparkplug id (non-empty, without `/`, `+` or `#`)"),
            ),
            _ => {}
        }
    }
    for (field, present) in [
        ("topics", !s.topics.is_empty()),
        ("timestamp", s.timestamp.is_some()),
        ("writes", !s.writes.is_empty()),
    ] {
        if present {
            err(
                format!("{at_m}.{field}"),
                "applies to json only (Sparkplug topics and timestamps are fixed)".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_split_into_topic_and_pointer() {
        assert_eq!(split_json_address("/a/b"), (None, "/a/b"));
        assert_eq!(
            split_json_address("cnc/1/status#/spindle/speed"),
            (Some("cnc/1/status"), "/spindle/speed")
        );
        assert_eq!(split_json_address("cnc/##/x"), (Some("cnc/#"), "/x"));
        assert_eq!(split_json_address("speed"), (None, "speed"));
    }

    #[test]
    fn write_templates_render_json_values() {
        let w = JsonWrite {
            tag: "t".into(),
            topic: "x".into(),
            template: r#"{"v": {value}, "id": {command_id}}"#.into(),
        };
        assert_eq!(
            w.render(&json!(21.5), "c\"1"),
            r#"{"v": 21.5, "id": "c\"1"}"#
        );
        assert_eq!(w.render(&json!("A\"B"), "c"), r#"{"v": "A\"B", "id": "c"}"#);
        assert_eq!(w.render(&json!(true), "c"), r#"{"v": true, "id": "c"}"#);
    }

    #[test]
    fn topic_filters_are_checked() {
        assert_eq!(topic_filter_problem("cnc/+/status"), None);
        assert_eq!(topic_filter_problem("cnc/#"), None);
        assert!(topic_filter_problem("cnc/#/x").is_some());
        assert!(topic_filter_problem("cnc/a+").is_some());
        assert!(topic_filter_problem("").is_some());
    }

    #[test]
    fn timestamps_in_every_format() {
        let ms = 1_714_564_800_250_i64;
        assert_eq!(
            TimestampFormat::UnixMs.parse(&json!(ms)),
            Some(ms * 1_000_000)
        );
        assert_eq!(
            TimestampFormat::UnixMs.parse(&json!(ms.to_string())),
            Some(ms * 1_000_000)
        );
        assert_eq!(
            TimestampFormat::UnixS.parse(&json!(1_714_564_800.25)),
            Some(ms * 1_000_000)
        );
        assert_eq!(
            TimestampFormat::UnixNs.parse(&json!(ms * 1_000_000)),
            Some(ms * 1_000_000)
        );
        assert_eq!(
            TimestampFormat::Rfc3339.parse(&json!("2024-05-01T12:00:00.250Z")),
            Some(ms * 1_000_000)
        );
        assert_eq!(
            TimestampFormat::Rfc3339.parse(&json!("2024-05-01T14:00:00.250+02:00")),
            Some(ms * 1_000_000)
        );
        assert_eq!(
            TimestampFormat::Rfc3339.parse(&json!("2024-05-01T10:30:00.250-01:30")),
            Some(ms * 1_000_000)
        );
        for bad in [json!("soon"), json!(null), json!(-5), json!(true)] {
            assert_eq!(TimestampFormat::UnixMs.parse(&bad), None, "{bad}");
        }
        assert_eq!(TimestampFormat::Rfc3339.parse(&json!("2024-13-01")), None);
        assert_eq!(TimestampFormat::Rfc3339.parse(&json!(5)), None);
    }

    fn problems(device: &str) -> Vec<String> {
        let yaml = format!("line: l\ndevices:\n{device}");
        match crate::config::LineConfig::from_yaml(&yaml) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect()
            }
        }
    }

    #[test]
    fn json_devices_validate() {
        let ok = "  - { name: cnc, type: cnc, protocol: mqtt, endpoint: \"127.0.0.1:1883\",\n      mqtt: { format: json, topics: [\"cnc/+/status\"], timestamp: /ts, timestamp_format: rfc3339 },\n      tags: [ { name: speed, address: /spindle/speed, type: f64 }, { name: mode, address: \"cnc/1/mode#/m\", type: string } ] }\n";
        assert_eq!(problems(ok), Vec::<String>::new());
        let bad = "  - { name: cnc, type: cnc, protocol: mqtt, endpoint: \"127.0.0.1:1883\",\n      mqtt: { format: json, topics: [\"cnc/#/x\"], timestamp: ts, qos: 3, group_id: g },\n      tags: [ { name: speed, address: spindle, type: f64, writable: true } ] }\n";
        let p = problems(bad);
        for expected in [
            "devices[0].mqtt.topics[0]:",
            "devices[0].mqtt.timestamp:",
            "devices[0].mqtt.qos:",
            "devices[0].mqtt.group_id: applies to sparkplug-b only",
            "devices[0].tags[0].address:",
            "devices[0].tags[0].writable:",
        ] {
            assert!(
                p.iter().any(|e| e.starts_with(expected)),
                "{expected} in {p:?}"
            );
        }
        let writes = "  - { name: cnc, type: cnc, protocol: mqtt, endpoint: \"127.0.0.1:1883\",\n      mqtt: { format: json, topics: [a], writes: [ { tag: set, topic: cnc/set, template: \"{\\\"s\\\": {value}}\" }, { tag: speed, topic: \"cnc/+\", template: x }, { tag: nope, topic: t, template: \"{value}\" } ] },\n      tags: [ { name: speed, address: /s, type: f64 }, { name: set, address: /set, type: f64, writable: true } ] }\n";
        let p = problems(writes);
        for expected in [
            "devices[0].mqtt.writes[1].tag: tag \"speed\" is not writable",
            "devices[0].mqtt.writes[1].topic:",
            "devices[0].mqtt.writes[1].template:",
            "devices[0].mqtt.writes[2].tag: the device has no tag",
        ] {
            assert!(
                p.iter().any(|e| e.starts_with(expected)),
                "{expected} in {p:?}"
            );
        }
        assert_eq!(p.len(), 4, "{p:?}");
        let no_section = "  - { name: cnc, type: cnc, protocol: mqtt, endpoint: \"127.0.0.1:1883\", tags: [ { name: speed, address: /s, type: f64 } ] }\n";
        assert!(problems(no_section)[0].starts_with("devices[0].mqtt:"));
    }

    #[test]
    fn sparkplug_devices_validate() {
        let ok = "  - { name: press, type: press, protocol: mqtt, endpoint: \"127.0.0.1:1883\",\n      mqtt: { format: sparkplug-b, group_id: plant, edge_node_id: edge1, device_id: press1 },\n      tags: [ { name: force, address: Press/Force, type: f64, writable: true } ] }\n";
        assert_eq!(problems(ok), Vec::<String>::new());
        let bad = "  - { name: press, type: press, protocol: mqtt, endpoint: \"127.0.0.1:1883\",\n      mqtt: { format: sparkplug-b, edge_node_id: \"a/b\", topics: [x] },\n      tags: [ { name: force, address: Press/Force, type: f64 } ] }\n";
        let p = problems(bad);
        for expected in [
            "devices[0].mqtt.group_id: a sparkplug-b device needs it",
            "devices[0].mqtt.edge_node_id:",
            "devices[0].mqtt.topics: applies to json only",
        ] {
            assert!(
                p.iter().any(|e| e.starts_with(expected)),
                "{expected} in {p:?}"
            );
        }
    }
}
