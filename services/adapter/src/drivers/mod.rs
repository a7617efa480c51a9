//! Device drivers, one folder per protocol. A driver owns its device connection, polls on
//! schedule, turns replies into samples (Bad with a reason when a value cannot be read) and
//! performs writes handed to it through the adapter's safe write path.

pub mod modbus;

use std::sync::{Arc, Mutex};

use fieldline_proto::v1;
use tokio::sync::{mpsc, oneshot};

use crate::{metrics::AdapterMetrics, publisher::BatchSink, sequence::Sequence};

/// A write on its way to the driver that owns the device, with where to send the outcome.
pub struct WriteRequest {
    pub command: v1::Command,
    /// Device name; several devices may share one driver task (a bus).
    pub device: String,
    /// Tag name within the device.
    pub tag: String,
    pub reply: oneshot::Sender<v1::CommandResult>,
}

/// The handle through which the rest of the adapter reaches a running device.
#[derive(Clone)]
pub struct DeviceHandle {
    pub name: String,
    pub writes: mpsc::Sender<WriteRequest>,
}

impl DeviceHandle {
    /// Hands `command` for `tag` to the device's driver and waits for the outcome; `Err` says
    /// why the driver could not take it.
    pub async fn write(
        &self,
        command: v1::Command,
        tag: String,
    ) -> Result<v1::CommandResult, &'static str> {
        let (reply, outcome) = oneshot::channel();
        let request = WriteRequest {
            command,
            device: self.name.clone(),
            tag,
            reply,
        };
        self.writes
            .send(request)
            .await
            .map_err(|_| "the device's driver has stopped")?;
        outcome
            .await
            .map_err(|_| "the device's driver stopped during the write")
    }
}

/// What every driver needs from the adapter.
#[derive(Clone)]
pub struct DeviceContext {
    pub line: String,
    pub adapter_id: String,
    pub sink: BatchSink,
    pub metrics: AdapterMetrics,
    pub sequence: Arc<Mutex<Sequence>>,
}
