//! OPC UA driver: subscriptions (or polling) on an OPC UA server.

use fieldline_core::config::DeviceConfig;
use fieldline_runtime::CancellationToken;
use tokio::sync::mpsc;

use super::{DeviceContext, WriteRequest};

/// Whether `device` can be driven; the reason when not.
pub fn check(device: &DeviceConfig) -> Result<(), String> {
    Err(format!(
        "{}: the OPC UA driver is not built in",
        device.name
    ))
}

/// Runs the device until `stop`.
pub async fn run(
    _device: DeviceConfig,
    _cx: DeviceContext,
    _writes: &mut mpsc::Receiver<WriteRequest>,
    _stop: CancellationToken,
) {
}
