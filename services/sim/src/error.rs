//! Why a simulator could not start. [`Error::kind`] is its label in `errors_total{kind}`.

use std::{io, net::SocketAddr, path::PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Modbus TCP listener could not be bound (address in use, not local).
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    /// The serial port could not be opened (no such device, permission denied).
    #[error("cannot open serial port {}: {source}", path.display())]
    SerialPort {
        path: PathBuf,
        source: tokio_serial::Error,
    },
}

impl Error {
    /// The `kind` label of this error in `errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Listen { .. } => "listen",
            Error::SerialPort { .. } => "serial_port",
        }
    }
}
