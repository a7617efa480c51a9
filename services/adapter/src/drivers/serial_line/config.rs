//! The device's settings, resolved once: tags, parser, request bytes and write templates.

use std::{collections::HashMap, time::Duration};

use fieldline_core::config::{
    ResolvedValueTag, SerialConfig, SerialLineDeviceConfig,
    serial_line::{SerialLineMode, TemplatePiece, ack_regex, parse_template, unescape},
};

use super::parser::Parser;
use crate::{Error, Result};

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
    pub fn new(device: &SerialLineDeviceConfig) -> Result<Self> {
        let settings = &device.serial_line;
        let name = device.name.as_str();
        let tags = device
            .tags
            .iter()
            .map(|t| {
                t.resolve_value()
                    .map_err(|p| Error::tag(&t.name, p).at(name, "tags"))
            })
            .collect::<Result<Vec<_>>>()?;
        let request = match (&settings.mode, &settings.request) {
            (SerialLineMode::Request, Some(r)) => {
                unescape(r).map_err(|e| Error::setting(e).at(name, "request"))?
            }
            (SerialLineMode::Request, None) => {
                return Err(Error::setting("request mode needs a request").at(name, "request"));
            }
            (SerialLineMode::Stream, _) => Vec::new(),
        };
        let mut writes = HashMap::new();
        for (tag, w) in &settings.writes {
            let pieces = parse_template(&w.template, &w.params)
                .map_err(|e| Error::setting(e).at(name, "writes"))?;
            let ack = w
                .ack
                .as_deref()
                .map(|a| regex::Regex::new(&ack_regex(a)))
                .transpose()
                .map_err(|e| Error::from(e).at(name, "ack"))?;
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
            parser: Parser::new(&settings.parser).map_err(|e| e.at(name, "parser"))?,
            tags,
            writes,
            poll_interval: device.poll_interval,
            timeout: device.timeout,
            max_backoff: device.max_backoff,
            stale_after: device.stale_after,
        })
    }
}
