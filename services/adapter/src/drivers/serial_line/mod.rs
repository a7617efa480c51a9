//! Serial-line driver: Arduino-style devices that speak lines of text on a serial port.
//!
//! `config.rs` turns the device's settings into what the driver needs, `parser.rs` cuts bytes
//! into bounded lines and reads their fields (pure, unit-tested), `port.rs` opens the port,
//! and `driver.rs` is the one task that owns the port: it sends requests, reads lines,
//! performs writes between them, and reopens the port with backoff when it vanishes.

mod config;
mod driver;
pub mod parser;
mod port;

use fieldline_core::config::SerialLineDeviceConfig;
use fieldline_runtime::CancellationToken;
use tokio::sync::mpsc;

use super::{DeviceContext, WriteRequest};

/// Whether `device` can be driven; the reason when not.
pub fn check(device: &SerialLineDeviceConfig) -> Result<(), String> {
    config::Setup::new(device).map(drop)
}

/// Runs the device until `stop`.
pub async fn run(
    device: SerialLineDeviceConfig,
    cx: DeviceContext,
    writes: &mut mpsc::Receiver<WriteRequest>,
    stop: CancellationToken,
) {
    match config::Setup::new(&device) {
        Ok(setup) => driver::Driver::new(setup, cx).run(writes, stop).await,
        Err(message) => {
            tracing::error!(device = %device.name, %message, "device cannot be driven");
        }
    }
}
