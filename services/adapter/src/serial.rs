//! Opening a serial port with a device's line settings. The Modbus RTU link and the
//! serial-line driver both open their port here, so a port is always opened the same way.

use fieldline_core::config::{Parity, SerialConfig};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use crate::{Error, Result};

/// Opens `path` with `serial`'s baud rate, data bits, parity and stop bits.
pub fn open(path: &str, serial: &SerialConfig) -> Result<SerialStream> {
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
        .map_err(|source| Error::SerialOpen {
            path: path.to_string(),
            source,
        })
}
