//! Opening the serial port of a serial-line device.

use fieldline_core::config::{Parity, SerialConfig};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

/// Opens `path` with `serial`'s settings.
pub fn open(path: &str, serial: &SerialConfig) -> Result<SerialStream, String> {
    tokio_serial::new(path, serial.baud_rate)
        .data_bits(if serial.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        })
        .stop_bits(if serial.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .parity(match serial.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .open_native_async()
        .map_err(|e| format!("cannot open {path}: {e}"))
}
