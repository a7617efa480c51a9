//! Commands from the telemetry bus, where a line takes them (`processor.mqtt_commands`): a
//! protobuf `Command` on `fieldline/v1/{line}/{device}/cmd`, answered with a `CommandResult`
//! on the same topic with `/result` appended. They take the one safe write path like every
//! other write: a tag of the device the topic names, the interlocks, the limits, an audit row
//! (source `mqtt`), then the adapter's own check and read-back.
//!
//! MQTT does not say who published a message, so the audit can name only the topic. Turn this
//! on only where the broker lets nobody but authorized clients publish on those topics (its
//! ACL, with client certificates); it is off by default, and the adapter never takes commands
//! from the bus at all.

use std::{sync::Arc, time::Duration};

use fieldline_proto::v1;
use fieldline_runtime::{CancellationToken, backoff::Backoff};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};

use crate::writes::WritePath;

/// Largest command message taken; a larger one is refused undecoded.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Takes the line's commands until `stop`.
pub async fn run(
    options: MqttOptions,
    line: String,
    writes: Arc<WritePath>,
    stop: CancellationToken,
) {
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let filter = fieldline_proto::line_commands_filter(&line);
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        fieldline_runtime::mqtt::RECONNECT_MAX,
    );
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = stop.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                tracing::warn!(filter = %filter, "taking commands from MQTT: make sure the broker lets only authorized clients publish there");
                // Never wait for the request queue here: it empties only while this loop polls.
                let (client, filter) = (client.clone(), filter.clone());
                tokio::spawn(async move {
                    if let Err(error) = client.subscribe(filter, QoS::AtLeastOnce).await {
                        tracing::error!(%error, "cannot subscribe to commands");
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let (client, line, writes) = (client.clone(), line.clone(), writes.clone());
                tokio::spawn(async move {
                    let result = perform(&line, &publish, &writes).await;
                    let topic = format!("{}/result", publish.topic);
                    if let Err(error) = client
                        .publish(topic, QoS::AtLeastOnce, false, result.encode_to_vec())
                        .await
                    {
                        tracing::warn!(%error, command = %result.command_id, "cannot publish a command result");
                    }
                });
            }
            Ok(_) => {}
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "MQTT connection for commands failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

/// Checks that a command message is one, for a tag of the device its topic names, and hands
/// it to the safe write path.
async fn perform(line: &str, publish: &Publish, writes: &WritePath) -> v1::CommandResult {
    let refuse = |id: String, by: &str, detail: String| v1::CommandResult {
        command_id: id,
        status: v1::CommandStatus::Rejected as i32,
        rejected_by: by.into(),
        read_back: None,
        detail,
        timestamp_ns: fieldline_runtime::now_ns(),
    };
    let device = publish.topic.rsplit('/').nth(1).unwrap_or_default();
    if publish.payload.len() > MAX_COMMAND_BYTES {
        return refuse(
            String::new(),
            "malformed",
            format!(
                "a command of {} bytes; at most {MAX_COMMAND_BYTES} are taken",
                publish.payload.len()
            ),
        );
    }
    let command = match v1::Command::decode(publish.payload.as_ref()) {
        Ok(c) => c,
        Err(e) => return refuse(String::new(), "malformed", format!("not a Command: {e}")),
    };
    let names_device = command
        .tag
        .strip_prefix(&format!("{line}/{device}/"))
        .is_some_and(|tag| !tag.is_empty() && !tag.contains('/'));
    if !names_device {
        let detail = format!(
            "tag {:?} is not a tag of {line}/{device}, where the command was sent",
            command.tag
        );
        return refuse(command.id, "tag", detail);
    }
    writes.write(command, "mqtt").await
}
