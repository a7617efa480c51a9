//! Writes that arrive on the telemetry bus: a protobuf `Command` on
//! `fieldline/v1/{line}/{device}/cmd`, answered with a `CommandResult` on
//! `fieldline/v1/{line}/{device}/cmd/result`. They take the same path as AdapterService.Write:
//! the device's driver checks, writes, reads back, and remembers the command id, so a
//! redelivered command is not written twice.

use std::{collections::HashMap, sync::Arc};

use fieldline_core::names::TagPath;
use fieldline_proto::v1;
use prost::Message;
use rumqttc::{AsyncClient, Publish, QoS};

use crate::drivers::DeviceHandle;

/// Where commands for this adapter's devices go.
pub struct CommandRouter {
    pub line: String,
    pub devices: HashMap<String, DeviceHandle>,
}

impl CommandRouter {
    /// The subscription that brings this line's commands.
    pub fn filter(&self) -> String {
        format!("fieldline/v1/{}/+/cmd", self.line)
    }

    /// Whether a message is a command for this line.
    pub fn is_command(&self, topic: &str) -> bool {
        topic
            .strip_prefix(&format!("fieldline/v1/{}/", self.line))
            .is_some_and(|rest| rest.ends_with("/cmd") && rest.matches('/').count() == 1)
    }

    /// Performs one command message and publishes its result.
    pub async fn handle(self: Arc<Self>, client: AsyncClient, publish: Publish) {
        let device = publish
            .topic
            .rsplit('/')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let result = self.perform(&device, &publish.payload).await;
        let topic = format!("{}/result", publish.topic);
        if let Err(error) = client
            .publish(topic, QoS::AtLeastOnce, false, result.encode_to_vec())
            .await
        {
            tracing::warn!(%error, device = %device, command = %result.command_id, "cannot publish a command result");
        }
    }

    async fn perform(&self, device: &str, payload: &[u8]) -> v1::CommandResult {
        let refuse = |id: String, by: &str, detail: String| v1::CommandResult {
            command_id: id,
            status: v1::CommandStatus::Rejected as i32,
            rejected_by: by.into(),
            read_back: None,
            detail,
            timestamp_ns: fieldline_runtime::now_ns(),
        };
        let command = match v1::Command::decode(payload) {
            Ok(c) => c,
            Err(e) => return refuse(String::new(), "malformed", format!("not a Command: {e}")),
        };
        let path = match TagPath::parse(&command.tag) {
            Ok(p) => p,
            Err(e) => return refuse(command.id, "tag", e.to_string()),
        };
        if path.line != self.line || path.device != device {
            let detail = format!(
                "tag {} does not belong to {}/{device}, where the command was sent",
                command.tag, self.line
            );
            return refuse(command.id, "tag", detail);
        }
        let Some(handle) = self.devices.get(device) else {
            return refuse(
                command.id,
                "unknown_device",
                format!("this adapter has no device {device:?}"),
            );
        };
        let id = command.id.clone();
        handle
            .write(command, path.tag)
            .await
            .unwrap_or_else(|why| refuse(id, "unavailable", why.to_string()))
    }
}
