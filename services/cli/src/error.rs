//! The errors of the `fieldline` commands, each with a short kind. `main` prints them with
//! their causes.

use std::{net::SocketAddr, time::Duration};

use fieldline_adapter::drivers::opcua::client::SetupError;
use fieldline_core::config::ConfigErrors;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach {server}")]
    Connect {
        server: String,
        source: tonic::transport::Error,
    },
    #[error("the server answered {}: {}", .0.code(), .0.message())]
    Call(#[from] tonic::Status),
    /// Writing what a command prints failed (a reader that went away is not reported).
    #[error("cannot print: {0}")]
    Output(#[from] std::io::Error),
    #[error(
        "{addr} is not free; is another `fieldline up` running? Stop it, or choose another address with {flag}"
    )]
    PortTaken {
        addr: SocketAddr,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the embedded MQTT broker did not start listening on {0}")]
    BrokerNotListening(SocketAddr),
    #[error("the demo line's document: {0}")]
    DemoConfig(ConfigErrors),
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Runtime(#[from] fieldline_runtime::Error),
    #[error(transparent)]
    Adapter(#[from] fieldline_adapter::Error),
    #[error(transparent)]
    Processor(#[from] fieldline_processor::Error),
    #[error(transparent)]
    Storage(#[from] fieldline_storage::Error),
    #[error(transparent)]
    Sim(#[from] fieldline_sim::Error),
    #[error("{0:?} is not an opc.tcp:// endpoint URL")]
    NotOpcua(String),
    #[error(transparent)]
    OpcuaSetup(#[from] SetupError),
    #[error("cannot reach {endpoint}: {status}")]
    OpcuaConnect { endpoint: String, status: String },
    #[error("no session with {endpoint} within {after:?}")]
    OpcuaNoSession { endpoint: String, after: Duration },
    #[error("the session with {endpoint} could not be established: {status}")]
    OpcuaSession { endpoint: String, status: String },
    #[error("{what}: {status}")]
    OpcuaCall { what: String, status: String },
}

impl Error {
    /// A short label of the error.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Connect { .. } | Error::OpcuaConnect { .. } => "connect",
            Error::Call(_) => "call",
            Error::Output(_) => "output",
            Error::PortTaken { .. } => "port",
            Error::Io { .. } => "io",
            Error::BrokerNotListening(_) => "broker",
            Error::DemoConfig(_) | Error::Config(_) | Error::NotOpcua(_) => "config",
            Error::Runtime(e) => e.kind(),
            Error::Adapter(e) => e.kind(),
            Error::Processor(e) => e.kind(),
            Error::Storage(e) => e.kind(),
            Error::Sim(e) => e.kind(),
            Error::OpcuaSetup(_) => "opcua_setup",
            Error::OpcuaNoSession { .. } | Error::OpcuaSession { .. } => "session",
            Error::OpcuaCall { .. } => "opcua",
        }
    }
}
