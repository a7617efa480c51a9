//! Serial-line driver: Arduino-style devices that speak lines of text on a serial port.
//!
//! `config.rs` turns the device's settings into what the driver needs, `parser.rs` cuts bytes
//! into bounded lines and reads their fields (pure, unit-tested), and `driver.rs` is the one
//! task that owns the port (opened by [`crate::serial::open`]): it sends requests, reads lines,
//! performs writes between them, and reopens the port with backoff when it vanishes.

mod config;
mod driver;
pub mod parser;

use fieldline_core::config::SerialLineDeviceConfig;
use fieldline_runtime::CancellationToken;
use tokio::sync::mpsc;

use super::{DeviceContext, WriteRequest};

/// Whether `device` can be driven; the reason when not.
pub fn check(device: &SerialLineDeviceConfig) -> crate::Result<()> {
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
        Err(error) => {
            tracing::error!(device = %device.name, %error, "device cannot be driven");
        }
    }
}
