//! The device's settings, resolved once: tags, parser, request bytes and write templates.

use std::{collections::HashMap, time::Duration};

use fieldline_core::config::{
    ResolvedValueTag, SerialConfig, SerialLineDeviceConfig,
    serial_line::{SerialLineMode, TemplatePiece, ack_regex, parse_template, unescape},
};

use super::parser::Parser;

/// How one tag is written.
pub struct WriteSetup {
    pub pieces: Vec<TemplatePiece>,
    pub ack: Option<regex::Regex>,
}

/// Everything the driver needs, checked.
pub struct Setup {
    pub name: String,
    pub path: String,
    pub serial: SerialConfig,
    pub mode: SerialLineMode,
    pub request: Vec<u8>,
    pub reply_lines: u32,
    pub max_line_length: usize,
    pub parser: Parser,
    pub tags: Vec<ResolvedValueTag>,
    pub writes: HashMap<String, WriteSetup>,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub max_backoff: Duration,
    pub stale_after: u32,
}

impl Setup {
    /// Resolves `device`. The config was validated, so errors here mean a caller skipped
    /// validation; they are reported, not unwrapped.
    pub fn new(device: &SerialLineDeviceConfig) -> Result<Self, String> {
        let settings = &device.serial_line;
        let at = |what: &str, e: String| format!("{}: {what}: {e}", device.name);
        let tags = device
            .tags
            .iter()
            .map(|t| {
                t.resolve_value()
                    .map_err(|p| at(&format!("tag {}", t.name), format!("{p:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request = match (&settings.mode, &settings.request) {
            (SerialLineMode::Request, Some(r)) => {
                unescape(r).map_err(|e| at("request", e.to_string()))?
            }
            (SerialLineMode::Request, None) => {
                return Err(at("request", "request mode needs a request".into()));
            }
            (SerialLineMode::Stream, _) => Vec::new(),
        };
        let mut writes = HashMap::new();
        for (tag, w) in &settings.writes {
            let pieces =
                parse_template(&w.template, &w.params).map_err(|e| at("writes", e.to_string()))?;
            let ack = w
                .ack
                .as_deref()
                .map(|a| regex::Regex::new(&ack_regex(a)))
                .transpose()
                .map_err(|e| at("ack", e.to_string()))?;
            writes.insert(tag.clone(), WriteSetup { pieces, ack });
        }
        Ok(Self {
            name: device.name.clone(),
            path: device.endpoint.clone(),
            serial: device.serial.unwrap_or_default(),
            mode: settings.mode,
            request,
            reply_lines: settings.reply_lines.max(1),
            max_line_length: settings.max_line_length.max(1),
            parser: Parser::new(&settings.parser).map_err(|e| at("parser", e))?,
            tags,
            writes,
            poll_interval: device.poll_interval,
            timeout: device.timeout,
            max_backoff: device.max_backoff,
            stale_after: device.stale_after,
        })
    }
}
