//! The MQTT client of an ingest device: connects to the device's broker, subscribes, maps each
//! message to samples and publishes them as the device's batches. Errors of whole messages
//! are counted by kind; a lost connection makes every tag Bad (comm_failure) until values
//! arrive again. Writes go out as messages from the tag's template (json) or as DCMD/NCMD
//! (Sparkplug B).

use std::{collections::HashMap, time::Duration};

use fieldline_core::{
    config::{
        MqttDeviceConfig, ResolvedValueTag,
        mqtt::{JsonWrite, MqttIngestSettings, PayloadFormat},
    },
    deadband::{Deadband, DeadbandRule},
    sample::{Quality, QualityReason, Sample, Value},
};
use fieldline_proto::{sparkplug::Payload, v1};
use fieldline_runtime::{CancellationToken, backoff::Backoff, now_ns};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use super::{json::JsonMapper, sparkplug::Node};
use crate::{
    Error, Result,
    drivers::{
        DeviceContext, RememberedCommands, WriteRequest, check_value_command, command_result,
    },
};

/// Largest MQTT packet the client accepts. Messages above `max_payload` but below this are
/// counted and dropped; a larger packet breaks the connection (and is counted as such).
const PACKET_LIMIT: usize = 16 * 1024 * 1024;

/// How one device reads its messages.
enum Reader {
    Json(JsonMapper),
    Sparkplug(Box<Node>),
}

/// What the driver needs, built from a validated device.
struct Built {
    settings: MqttIngestSettings,
    options: MqttOptions,
    reader: Reader,
    filters: Vec<String>,
    qos: QoS,
    rules: HashMap<String, DeadbandRule>,
}

fn build(device: &MqttDeviceConfig, line: &str) -> Result<Built> {
    let settings = device.mqtt.clone();
    let (host, port) = device
        .endpoint
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().ok()?,
            ))
        })
        .ok_or_else(|| {
            Error::setting(format_args!(
                "{:?} is not the broker's host:port",
                device.endpoint
            ))
            .at(&device.name, "endpoint")
        })?;
    let client_id = settings
        .client_id
        .clone()
        .unwrap_or_else(|| format!("fieldline-{line}-{}", device.name));
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        // A clean session: after a reconnect, current values matter, not a replay; Sparkplug
        // nodes are asked for a rebirth.
        .set_clean_session(true)
        .set_max_packet_size(PACKET_LIMIT, 1024 * 1024);
    if let Some(user) = &settings.username {
        let password = match &settings.password {
            Some(secret) => fieldline_runtime::secret::resolve(secret).map_err(|e| {
                Error::Secret {
                    detail: e.to_string(),
                }
                .at(&device.name, "password")
            })?,
            None => String::new(),
        };
        options.set_credentials(user.clone(), password);
    }
    let mut rules = HashMap::new();
    let mut tags = Vec::with_capacity(device.tags.len());
    for t in &device.tags {
        let tag = t.resolve_value().map_err(|p| Error::tag(&t.name, p))?;
        rules.insert(tag.name.clone(), tag.deadband);
        tags.push(tag);
    }
    let (reader, filters) = match settings.format {
        PayloadFormat::Json => (
            Reader::Json(JsonMapper::new(device, &settings)?),
            JsonMapper::filters(&settings, device),
        ),
        PayloadFormat::SparkplugB => {
            let (Some(group), Some(node)) = (&settings.group_id, &settings.edge_node_id) else {
                return Err(
                    Error::setting("a sparkplug-b device needs group_id and edge_node_id")
                        .at(&device.name, "mqtt"),
                );
            };
            let node = Node::new(group, node, settings.device_id.as_deref(), tags);
            let filter = node.filter();
            (Reader::Sparkplug(Box::new(node)), vec![filter])
        }
    };
    let qos = match settings.qos {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    };
    Ok(Built {
        settings,
        options,
        reader,
        filters,
        qos,
        rules,
    })
}

/// Whether `device` can be driven; the reason when not.
pub fn check(device: &MqttDeviceConfig) -> Result<()> {
    build(device, "check").map(drop)
}

/// Runs the device until `stop`.
pub async fn run(
    device: MqttDeviceConfig,
    cx: DeviceContext,
    writes: &mut mpsc::Receiver<WriteRequest>,
    stop: CancellationToken,
) {
    let built = match build(&device, &cx.line) {
        Ok(built) => built,
        Err(error) => {
            cx.error(&device.name, error.kind());
            tracing::error!(device = %device.name, %error, "device cannot be driven");
            return;
        }
    };
    let Built {
        settings,
        options,
        mut reader,
        filters,
        qos,
        rules,
    } = built;
    let max_payload = usize::try_from(settings.max_payload.0).unwrap_or(usize::MAX);
    let mut ingest = Ingest {
        device: &device,
        cx: &cx,
        rules,
        deadbands: HashMap::new(),
    };
    let value_tags: Vec<ResolvedValueTag> = device
        .tags
        .iter()
        .filter_map(|t| t.resolve_value().ok())
        .collect();
    let mut remembered = cx.remembered(&device.name);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut backoff = Backoff::new(Duration::from_millis(200), device.max_backoff);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            Some(request) = writes.recv() => {
                let target = match &reader {
                    Reader::Sparkplug(node) => Target::Sparkplug(node),
                    Reader::Json(_) => Target::Json(&settings.writes),
                };
                write(&client, target, &device, &cx, &value_tags, &mut remembered, request);
                continue;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                tracing::info!(device = %device.name, filters = ?filters, "connected to the device's broker");
                for filter in &filters {
                    if let Err(error) = client.try_subscribe(filter.clone(), qos) {
                        cx.error(&device.name, "subscribe");
                        tracing::error!(device = %device.name, %filter, %error, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(message))) => {
                let arrival = now_ns();
                let payload = message.payload.as_ref();
                match &mut reader {
                    Reader::Json(mapper) => match mapper.map(&message.topic, payload, arrival) {
                        Ok(mapped) => {
                            if mapped.timestamp_unreadable {
                                cx.error(&device.name, "timestamp");
                            }
                            ingest.publish(mapped.samples);
                        }
                        Err(error) => {
                            cx.error(&device.name, error.metric_label());
                            tracing::warn!(device = %device.name, topic = %message.topic, %error, "message dropped");
                        }
                    },
                    Reader::Sparkplug(node) => {
                        if payload.len() > max_payload {
                            cx.error(&device.name, "payload_too_large");
                            tracing::warn!(device = %device.name, topic = %message.topic, size = payload.len(), "message dropped: larger than max_payload");
                            continue;
                        }
                        let decoded = Payload::decode(payload).ok();
                        let outcome = node.handle(&message.topic, decoded.as_ref(), arrival);
                        for kind in &outcome.errors {
                            cx.error(&device.name, kind);
                            tracing::warn!(device = %device.name, topic = %message.topic, problem = kind, "sparkplug");
                        }
                        if outcome.rebirth {
                            request_rebirth(&client, node, &device, &cx);
                        }
                        ingest.publish(outcome.samples);
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Reader::Sparkplug(node) = &mut reader
                    && node.subscribed(now_ns())
                {
                    request_rebirth(&client, node, &device, &cx);
                }
            }
            Ok(_) => {}
            Err(error) => {
                cx.error(&device.name, "connection");
                // Like a device that does not answer its poll, each failed attempt reports
                // the tags Bad (at most every max_backoff), so consumers that start later
                // learn it too; deadbands pass only a change or a heartbeat.
                ingest.all_bad(&format!("broker connection failed: {error}"));
                if let Reader::Sparkplug(node) = &mut reader {
                    // Messages may be missed while away: start again from a birth.
                    node.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(device = %device.name, %error, retry_in = ?delay, "MQTT ingest connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

/// Publishes the samples that pass their tag's deadband.
struct Ingest<'a> {
    device: &'a MqttDeviceConfig,
    cx: &'a DeviceContext,
    rules: HashMap<String, DeadbandRule>,
    deadbands: HashMap<String, Deadband>,
}

impl Ingest<'_> {
    fn publish(&mut self, samples: Vec<Sample>) {
        let name = &self.device.name;
        let mut reported = Vec::with_capacity(samples.len());
        for sample in samples {
            let quality = if sample.quality.is_good() {
                "good"
            } else {
                "bad"
            };
            self.cx
                .metrics
                .samples_read
                .get_or_create(&vec![("device", name.clone()), ("quality", quality.into())])
                .inc();
            let rule = self.rules.get(&sample.tag).copied().unwrap_or_default();
            if self
                .deadbands
                .entry(sample.tag.clone())
                .or_default()
                .should_report(&rule, &sample.value, &sample.quality, sample.timestamp_ns)
            {
                reported.push(sample);
            }
        }
        self.cx.publish(name, reported);
    }

    fn all_bad(&mut self, detail: &str) {
        let at = now_ns();
        let samples = self
            .device
            .tags
            .iter()
            .map(|t| {
                Sample::bad(
                    &t.name,
                    Quality::bad(QualityReason::CommFailure, detail),
                    at,
                )
            })
            .collect();
        self.publish(samples);
    }
}

/// Asks the edge node to publish its births again (NCMD `Node Control/Rebirth` = true).
fn request_rebirth(
    client: &AsyncClient,
    node: &Node,
    device: &MqttDeviceConfig,
    cx: &DeviceContext,
) {
    let now_ms = u64::try_from(now_ns() / 1_000_000).unwrap_or(0);
    let payload = super::sparkplug::rebirth_payload(now_ms).encode_to_vec();
    let topic = node.ncmd_topic();
    match client.try_publish(topic.clone(), QoS::AtLeastOnce, false, payload) {
        Ok(()) => {
            tracing::info!(device = %device.name, %topic, "asked the edge node for a rebirth")
        }
        Err(error) => {
            cx.error(&device.name, "rebirth_request");
            tracing::error!(device = %device.name, %topic, %error, "cannot ask for a rebirth");
        }
    }
}

/// Where a device's writes go.
enum Target<'a> {
    /// Messages from the device's write templates.
    Json(&'a [JsonWrite]),
    /// DCMD/NCMD to the edge node.
    Sparkplug(&'a Node),
}

/// The topic and message that write `value` to `tag`.
fn command_message(
    target: &Target<'_>,
    tag: &ResolvedValueTag,
    value: &Value,
    command_id: &str,
) -> Result<(String, Vec<u8>)> {
    match target {
        Target::Sparkplug(node) => {
            let now_ms = u64::try_from(now_ns() / 1_000_000).unwrap_or(0);
            let (topic, payload) = node.command(&tag.address, value, now_ms)?;
            Ok((topic, payload.encode_to_vec()))
        }
        Target::Json(writes) => {
            let w = writes.iter().find(|w| w.tag == tag.name).ok_or_else(|| {
                Error::NoWriteTemplate {
                    tag: tag.name.clone(),
                }
            })?;
            let json = match value {
                Value::Bool(b) => serde_json::Value::from(*b),
                Value::I64(i) => serde_json::Value::from(*i),
                Value::U64(u) => serde_json::Value::from(*u),
                Value::F64(x) => serde_json::Number::from_f64(*x)
                    .map(serde_json::Value::Number)
                    .ok_or_else(|| Error::value(format_args!("{x} is not a finite number")))?,
                Value::String(text) => serde_json::Value::from(text.as_str()),
            };
            Ok((w.topic.clone(), w.render(&json, command_id).into_bytes()))
        }
    }
}

/// Performs a write: Sparkplug tags are sent as DCMD/NCMD with the metric's name and birth
/// datatype, json tags as a message from their template. Neither protocol acknowledges a
/// command, so the result is "written" once the MQTT client has taken the message. The usual
/// checks come first.
fn write(
    client: &AsyncClient,
    target: Target<'_>,
    device: &MqttDeviceConfig,
    cx: &DeviceContext,
    tags: &[ResolvedValueTag],
    remembered: &mut RememberedCommands,
    request: WriteRequest,
) {
    let command = &request.command;
    if let Some(earlier) = remembered.repeat(cx, &device.name, &request.tag, command) {
        let _ = request.reply.send(earlier);
        return;
    }
    let result = match check_value_command(tags, &device.name, &request.tag, command, remembered) {
        Err(result) => result,
        Ok((tag, raw)) => match command_message(&target, tag, &raw, &command.id) {
            Err(error) => command_result(
                command,
                v1::CommandStatus::Failed,
                "",
                None,
                error.to_string(),
            ),
            Ok((topic, message)) => {
                let sent = remembered.sending(&request.tag, command).and_then(|()| {
                    client
                        .try_publish(topic.clone(), QoS::AtLeastOnce, false, message)
                        .map_err(|error| format!("the MQTT client refused the command: {error}"))
                });
                match sent {
                    Ok(()) => command_result(
                        command,
                        v1::CommandStatus::Written,
                        "",
                        None,
                        format!("sent on {topic}"),
                    ),
                    Err(why) => command_result(command, v1::CommandStatus::Failed, "", None, why),
                }
            }
        },
    };
    remembered.keep(&request.tag, &result);
    cx.count_write(&device.name, &request.tag, command, &result);
    let _ = request.reply.send(result);
}
