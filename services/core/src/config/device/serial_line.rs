//! Settings of a serial-line device (`protocol: serial-line`): an Arduino-style device that
//! speaks lines of text on a serial port. A tag's `address` names the field of a parsed line
//! (a key, a JSON pointer or a regex group).
//!
//! The request string, line ending and write templates take the escapes `\n`, `\r`, `\t`,
//! `\\`, `\0` and `\xHH`, so they can be written in plain or single-quoted YAML as well as in
//! double quotes.

use std::{collections::BTreeMap, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    DeviceConfig, Protocol, SerialConfig, serial::validate_port_path, validate_tags,
    validate_timing,
};
use crate::config::{Problems, TagConfig};

/// A device that speaks lines of text on a serial port of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialLineDeviceConfig {
    /// Device name, `[a-z0-9_-]`, unique within the line.
    pub name: String,
    /// Device type; selects plugins, alarms and control rules.
    #[serde(rename = "type")]
    pub device_type: String,
    /// The serial port, such as `/dev/ttyACM0`; no other device may use it.
    pub endpoint: String,
    /// Serial line settings; 9600 8N1 when absent.
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    /// Request, parser and write templates.
    #[serde(default)]
    pub serial_line: SerialLineSettings,
    /// How often to send the request (request mode), e.g. `500ms`; in stream mode, the
    /// interval `stale_after` counts.
    #[serde(default = "super::default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Time limit for a reply, and for an ack of a write.
    #[serde(default = "super::default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Longest pause between attempts to reopen the port (the backoff doubles up to this).
    #[serde(default = "super::default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Poll intervals without a fresh reading after which a tag is reported Bad (stale);
    /// 0 never reports staleness.
    #[serde(default = "super::default_stale_after")]
    pub stale_after: u32,
    /// The tags to read; each `address` names a field of a parsed line.
    pub tags: Vec<TagConfig>,
}

/// How to talk to a serial-line device and how to read its lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialLineSettings {
    /// `request`: send `request` every `poll_interval` and read the reply within `timeout`;
    /// `stream`: the device sends lines on its own.
    #[serde(default)]
    pub mode: SerialLineMode,
    /// What to send in request mode, e.g. `"READ_SENSORS\n"`.
    #[serde(default)]
    pub request: Option<String>,
    /// In request mode, how many lines make up one reply.
    #[serde(default = "default_reply_lines")]
    pub reply_lines: u32,
    /// What ends a line: `"\n"` (default) or `"\r\n"`.
    #[serde(default = "default_line_ending")]
    pub line_ending: String,
    /// Longest line in bytes; a longer one is discarded up to its end and counted.
    #[serde(default = "default_max_line_length")]
    pub max_line_length: usize,
    /// How a line is read into fields.
    #[serde(default)]
    pub parser: LineParser,
    /// How each writable tag is written, by tag name.
    #[serde(default)]
    pub writes: BTreeMap<String, WriteTemplate>,
}

impl Default for SerialLineSettings {
    fn default() -> Self {
        Self {
            mode: SerialLineMode::default(),
            request: None,
            reply_lines: default_reply_lines(),
            line_ending: default_line_ending(),
            max_line_length: default_max_line_length(),
            parser: LineParser::default(),
            writes: BTreeMap::new(),
        }
    }
}

fn default_reply_lines() -> u32 {
    1
}
fn default_line_ending() -> String {
    "\n".into()
}
fn default_max_line_length() -> usize {
    1024
}
fn default_pair_separator() -> String {
    ",".into()
}
fn default_key_separator() -> String {
    ":".into()
}

/// Who starts the conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SerialLineMode {
    /// Ask with `request` every poll interval and read the reply.
    #[default]
    Request,
    /// The device sends lines on its own.
    Stream,
}

/// How a line is read into fields, chosen by `format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum LineParser {
    /// `TEMP:21.5,HUM:40`; a tag's address is the key.
    KeyValue {
        /// Between pairs.
        #[serde(default = "default_pair_separator")]
        pair_separator: String,
        /// Between a key and its value.
        #[serde(default = "default_key_separator")]
        key_separator: String,
    },
    /// One JSON document per line; a tag's address is a JSON pointer such as `/temp`.
    Json,
    /// A regular expression with named groups; a tag's address is a group name.
    Regex {
        /// The pattern, matched anywhere in the line unless anchored.
        pattern: String,
    },
}

impl Default for LineParser {
    fn default() -> Self {
        LineParser::KeyValue {
            pair_separator: default_pair_separator(),
            key_separator: default_key_separator(),
        }
    }
}

/// How a command for one tag is sent to the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteTemplate {
    /// What to send, e.g. `"LED,{pin},{value}\n"`: `{value}` is the command's value (bools
    /// as `1`/`0`), other `{name}`s come from `params`, `{{` and `}}` are literal braces.
    pub template: String,
    /// Fixed values of the template's other placeholders, e.g. `{ pin: "13" }`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A regular expression a whole reply line must match to confirm the write, e.g. `OK`;
    /// without it a write is confirmed once sent.
    #[serde(default)]
    pub ack: Option<String>,
}

/// One piece of a rendered write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePiece {
    Bytes(Vec<u8>),
    Value,
}

/// Parses `template` with `params` filled in: literal bytes and the places of the value.
pub fn parse_template(
    template: &str,
    params: &BTreeMap<String, String>,
) -> crate::Result<Vec<TemplatePiece>> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = template.chars().peekable();
    let mut used = std::collections::BTreeSet::new();
    let flush = |literal: &mut String, pieces: &mut Vec<TemplatePiece>| -> crate::Result<()> {
        if !literal.is_empty() {
            pieces.push(TemplatePiece::Bytes(unescape(literal)?));
            literal.clear();
        }
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(parse(format!("{{{name} is not closed with }}"))),
                    }
                }
                if name == "value" {
                    flush(&mut literal, &mut pieces)?;
                    pieces.push(TemplatePiece::Value);
                } else if let Some(v) = params.get(&name) {
                    used.insert(name);
                    literal.push_str(v);
                } else {
                    return Err(parse(format!(
                        "{{{name}}} is neither {{value}} nor one of params"
                    )));
                }
            }
            '}' => return Err(parse("a lone } (write }} for a literal brace)")),
            c => literal.push(c),
        }
    }
    flush(&mut literal, &mut pieces)?;
    if !pieces.contains(&TemplatePiece::Value) {
        return Err(parse("the template has no {value}"));
    }
    if let Some(unused) = params.keys().find(|k| !used.contains(*k)) {
        return Err(parse(format!(
            "param {unused:?} is not used in the template"
        )));
    }
    Ok(pieces)
}

/// The bytes of a write: `pieces` with `value` in place of `{value}`.
pub fn render_template(pieces: &[TemplatePiece], value: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            TemplatePiece::Bytes(b) => out.extend_from_slice(b),
            TemplatePiece::Value => out.extend_from_slice(value.as_bytes()),
        }
    }
    out
}

/// Resolves the escapes `\n`, `\r`, `\t`, `\\`, `\0` and `\xHH` in `s`.
pub fn unescape(s: &str) -> crate::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let byte = u8::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 2)
                    .ok_or_else(|| parse(format!("\\x{hex} is not \\x and two hex digits")))?;
                out.push(byte);
            }
            Some(other) => return Err(parse(format!("unknown escape \\{other}"))),
            None => return Err(parse("ends with a lone \\")),
        }
    }
    Ok(out)
}

fn parse(message: impl Into<String>) -> crate::Error {
    crate::Error::Parse(message.into())
}

/// The regex of an ack: the whole reply line must match.
pub fn ack_regex(ack: &str) -> String {
    format!("^(?:{ack})$")
}

impl SerialLineDeviceConfig {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        validate_port_path(&self.endpoint, at, problems);
        self.serial.unwrap_or_default().validate(at, problems);
        self.validate_settings(at, problems);
        validate_timing(self.poll_interval, self.timeout, at, problems);
        validate_tags(&self.tags, at, problems, TagConfig::resolve_value);
    }

    /// Checks the `serial_line` section, and the tags against its parser and writes.
    fn validate_settings(&self, at: &str, problems: &mut Problems) {
        let s = &self.serial_line;
        let mut err = |path: String, message: String| problems.push(path, message);
        let at_s = format!("{at}.serial_line");
        match (s.mode, &s.request) {
            (SerialLineMode::Request, None) => err(
                format!("{at_s}.request"),
                "request mode needs the request to send, e.g. \"READ\\n\"".into(),
            ),
            (SerialLineMode::Request, Some(r)) => match unescape(r) {
                Ok(bytes) if bytes.is_empty() => {
                    err(format!("{at_s}.request"), "must not be empty".into())
                }
                Ok(_) => {}
                Err(e) => err(format!("{at_s}.request"), e.to_string()),
            },
            (SerialLineMode::Stream, Some(_)) => err(
                format!("{at_s}.request"),
                "applies to mode request only".into(),
            ),
            (SerialLineMode::Stream, None) => {}
        }
        if s.reply_lines == 0 {
            err(format!("{at_s}.reply_lines"), "must be at least 1".into());
        }
        if !matches!(unescape(&s.line_ending).as_deref(), Ok(b"\n" | b"\r\n")) {
            err(
                format!("{at_s}.line_ending"),
                format!("{:?} is not \"\\n\" or \"\\r\\n\"", s.line_ending),
            );
        }
        if !(16..=1 << 20).contains(&s.max_line_length) {
            err(
                format!("{at_s}.max_line_length"),
                format!("{} is outside 16..=1048576", s.max_line_length),
            );
        }
        let mut groups: Option<Vec<String>> = None;
        match &s.parser {
            LineParser::KeyValue {
                pair_separator,
                key_separator,
            } => {
                for (field, sep) in [
                    ("pair_separator", pair_separator),
                    ("key_separator", key_separator),
                ] {
                    if sep.is_empty() {
                        err(format!("{at_s}.parser.{field}"), "must not be empty".into());
                    }
                }
                if !pair_separator.is_empty() && pair_separator == key_separator {
                    err(
                        format!("{at_s}.parser.key_separator"),
                        "must differ from pair_separator".into(),
                    );
                }
            }
            LineParser::Json => {}
            LineParser::Regex { pattern } => match regex::Regex::new(pattern) {
                Ok(re) => {
                    let names: Vec<String> =
                        re.capture_names().flatten().map(String::from).collect();
                    if names.is_empty() {
                        err(
                            format!("{at_s}.parser.pattern"),
                            "has no named group such as (?P<temp>[0-9.]+)".into(),
                        );
                    }
                    groups = Some(names);
                }
                Err(e) => err(
                    format!("{at_s}.parser.pattern"),
                    format!("does not compile: {e}"),
                ),
            },
        }
        for (j, tag) in self.tags.iter().enumerate() {
            let tat = format!("{at}.tags[{j}]");
            match &s.parser {
                LineParser::Json if !tag.address.starts_with('/') => err(
                    format!("{tat}.address"),
                    format!("{:?} is not a JSON pointer such as /temp", tag.address),
                ),
                LineParser::Regex { .. } => {
                    if let Some(names) = &groups
                        && !names.contains(&tag.address)
                    {
                        err(
                            format!("{tat}.address"),
                            format!("{:?} is not a named group of the pattern", tag.address),
                        );
                    }
                }
                _ => {}
            }
            if tag.writable && !s.writes.contains_key(&tag.name) {
                err(
                    format!("{tat}.writable"),
                    format!(
                        "a writable tag needs a template in serial_line.writes.{}",
                        tag.name
                    ),
                );
            }
        }
        for (name, write) in &s.writes {
            let wat = format!("{at_s}.writes.{name}");
            match self.tags.iter().find(|t| &t.name == name) {
                None => err(wat.clone(), format!("the device has no tag {name:?}")),
                Some(t) if !t.writable => {
                    err(wat.clone(), format!("tag {name:?} is not writable: true"))
                }
                Some(_) => {}
            }
            if let Err(e) = parse_template(&write.template, &write.params) {
                err(format!("{wat}.template"), e.to_string());
            }
            if let Some(ack) = &write.ack
                && let Err(e) = regex::Regex::new(&ack_regex(ack))
            {
                err(format!("{wat}.ack"), format!("does not compile: {e}"));
            }
        }
    }
}

/// A serial-line device owns its port: no other device of the line may use it.
pub(crate) fn validate_ports(devices: &[DeviceConfig], problems: &mut Problems) {
    for (i, d) in devices.iter().enumerate() {
        let earlier = devices.iter().enumerate().take(i).find(|(_, o)| {
            o.endpoint() == d.endpoint()
                && (o.protocol() == Protocol::SerialLine || d.protocol() == Protocol::SerialLine)
        });
        if let Some((j, _)) = earlier {
            problems.push(
                format!("devices[{i}].endpoint"),
                format!(
                    "port {:?} is already devices[{j}]; a serial-line device needs a port of its own",
                    d.endpoint()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigErrors, LineConfig};

    fn device(section: &str, tags: &str) -> String {
        format!(
            "line: l\ndevices:\n  - name: ard\n    type: arduino\n    protocol: serial-line\n    endpoint: /dev/ttyACM0\n    serial: {{ baud_rate: 115200 }}\n    serial_line:\n{section}    tags:\n{tags}"
        )
    }

    const TAGS: &str = "      - { name: temp, address: TEMP, type: f32 }\n      - { name: led, address: LED, type: bool, writable: true }\n";

    fn errors_of(yaml: &str) -> Vec<String> {
        match LineConfig::from_yaml(yaml) {
            Ok(_) => panic!("expected errors"),
            Err(ConfigErrors(errors)) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn settings(device: &DeviceConfig) -> SerialLineSettings {
        match device {
            DeviceConfig::SerialLine(d) => d.serial_line.clone(),
            other => panic!("{} is not a serial-line device", other.name()),
        }
    }

    #[test]
    fn a_request_device_with_key_values_and_a_write_template_is_valid() {
        let yaml = device(
            "      request: \"READ_SENSORS\\n\"\n      writes:\n        led: { template: 'LED,{pin},{value}\\n', params: { pin: \"13\" }, ack: OK }\n",
            TAGS,
        );
        let c = LineConfig::from_yaml(&yaml).unwrap();
        let s = settings(&c.devices[0]);
        assert_eq!(s.mode, SerialLineMode::Request);
        assert_eq!(s.request.as_deref(), Some("READ_SENSORS\n"));
        assert_eq!(s.max_line_length, 1024);
        assert_eq!(s.parser, LineParser::default());
        let w = &s.writes["led"];
        let pieces = parse_template(&w.template, &w.params).unwrap();
        assert_eq!(render_template(&pieces, "1"), b"LED,13,1\n");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let yaml = device(
            "      mode: stream\n      request: x\n      line_ending: \";\"\n      max_line_length: 2\n      parser: { format: regex, pattern: \"T=(?P<temp>[0-9.]+\" }\n      writes:\n        temp: { template: \"SET {what}\" }\n",
            TAGS,
        );
        let errors = errors_of(&yaml);
        for e in [
            "devices[0].serial_line.request: applies to mode request only",
            "devices[0].serial_line.line_ending: \";\" is not \"\\n\" or \"\\r\\n\"",
            "devices[0].serial_line.max_line_length: 2 is outside 16..=1048576",
            "devices[0].serial_line.parser.pattern: does not compile",
            "devices[0].tags[1].writable: a writable tag needs a template in serial_line.writes.led",
            "devices[0].serial_line.writes.temp: tag \"temp\" is not writable: true",
            "devices[0].serial_line.writes.temp.template: {what} is neither {value} nor one of params",
        ] {
            assert!(
                errors.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 7, "{errors:#?}");
    }

    #[test]
    fn request_mode_needs_a_request_and_json_needs_pointers() {
        let errors = errors_of(&device("      parser: { format: json }\n", TAGS));
        for e in [
            "devices[0].serial_line.request: request mode needs the request to send",
            "devices[0].tags[0].address: \"TEMP\" is not a JSON pointer such as /temp",
        ] {
            assert!(
                errors.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
    }

    #[test]
    fn every_regex_tag_must_name_a_group() {
        let yaml = device(
            "      mode: stream\n      parser: { format: regex, pattern: \"T=(?P<temp>[0-9.]+)\" }\n",
            "      - { name: temp, address: temp, type: f32 }\n      - { name: hum, address: hum, type: f32 }\n",
        );
        assert_eq!(
            errors_of(&yaml),
            vec!["devices[0].tags[1].address: \"hum\" is not a named group of the pattern"]
        );
    }

    #[test]
    fn a_serial_line_device_needs_a_port_of_its_own() {
        let one = device(
            "      mode: stream\n",
            "      - { name: temp, address: TEMP, type: f32 }\n",
        );
        let two = one.replace("devices:\n", "devices:\n  - { name: plc, type: t, protocol: modbus-rtu, endpoint: /dev/ttyACM0, tags: [ { name: a, address: \"holding:0\", type: u16 } ] }\n");
        assert_eq!(
            errors_of(&two),
            vec![
                "devices[1].endpoint: port \"/dev/ttyACM0\" is already devices[0]; a serial-line device needs a port of its own"
            ]
        );
    }

    #[test]
    fn the_serial_sensors_example_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples/serial-sensors.yaml");
        let c = LineConfig::from_yaml(&std::fs::read_to_string(path).unwrap()).unwrap();
        let modes: Vec<_> = c.devices.iter().map(|d| settings(d).mode).collect();
        assert_eq!(modes, [SerialLineMode::Request, SerialLineMode::Stream]);
    }

    #[test]
    fn templates_and_escapes_are_strict() {
        let none = BTreeMap::new();
        assert_eq!(unescape(r"A\r\n\x41\\").unwrap(), b"A\r\nA\\");
        assert!(unescape(r"\q").is_err());
        assert!(unescape(r"\x4").is_err());
        assert!(unescape("\\").is_err());
        assert!(parse_template("SET", &none).is_err());
        assert!(parse_template("SET {value", &none).is_err());
        assert!(parse_template("SET }", &none).is_err());
        let params = BTreeMap::from([("pin".to_string(), "13".to_string())]);
        assert!(
            parse_template("SET {value}", &params).is_err(),
            "unused param"
        );
        let pieces = parse_template(r"{{{value}}}\r\n", &none).unwrap();
        assert_eq!(render_template(&pieces, "7"), b"{7}\r\n");
    }
}
