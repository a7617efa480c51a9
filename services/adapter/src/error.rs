//! The adapter's errors. Each has a short [`Error::kind`], the `kind` label of
//! `fieldline_adapter_errors_total`.
//!
//! Device faults never appear here: an exception code or an unusable value is a Bad sample,
//! not an error. What is here is either a device the adapter cannot drive (found at start-up),
//! a transport fault (the link is reopened with backoff), or a write that could not be made.

use std::time::Duration;

use opcua::types::StatusCode;

use crate::{drivers::opcua::client::SetupError, sequence::SequenceError};

/// Everything that can go wrong in the adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Service plumbing: MQTT options, the gRPC listener.
    #[error(transparent)]
    Runtime(#[from] fieldline_runtime::Error),
    /// The sequence state could not be persisted; batches are not published unnumbered.
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    /// The outbox could not be opened; batches are not published without it.
    #[error("outbox: {0}")]
    Outbox(#[from] fieldline_wal::WalError),
    /// A device the adapter cannot drive, with the reason.
    #[error("device {device}: {source}")]
    Device {
        device: String,
        #[source]
        source: Box<Error>,
    },
    /// A setting of `device` that failed where it is used.
    #[error("{device}: {what}: {source}")]
    At {
        device: String,
        what: String,
        #[source]
        source: Box<Error>,
    },
    /// A device handed to the driver of another protocol.
    #[error("{device} is not a {expected} device")]
    WrongProtocol {
        device: String,
        expected: &'static str,
    },
    /// A tag whose settings cannot be resolved (the problems, each with its field).
    #[error("tag {tag}: {problems}")]
    Tag { tag: String, problems: String },
    /// A setting the driver cannot use.
    #[error("{detail}")]
    Setting { detail: String },
    /// A regular expression of the settings (a parser pattern, an acknowledgement).
    #[error(transparent)]
    Pattern(#[from] regex::Error),
    /// A secret (a password) that could not be read.
    #[error("secret: {detail}")]
    Secret { detail: String },
    /// The OPC UA client could not be built from the settings.
    #[error(transparent)]
    OpcuaSetup(#[from] SetupError),
    /// Building the OPC UA client did not finish.
    #[error("setting up the client failed: {0}")]
    SetupAborted(#[source] tokio::task::JoinError),

    /// The link waits out its reconnect backoff; nothing was attempted.
    #[error("waiting to reconnect")]
    Waiting,
    /// An endpoint that could not be resolved.
    #[error("cannot resolve {endpoint}: {source}")]
    Resolve {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// An endpoint that resolves to no address.
    #[error("{endpoint} resolves to no address")]
    NoAddress { endpoint: String },
    /// A TCP connection that was refused or failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A TCP connection not made within the timeout.
    #[error("cannot connect to {addr} within {}ms", .after.as_millis())]
    ConnectTimeout {
        addr: std::net::SocketAddr,
        after: Duration,
    },
    /// A Modbus request sent without a connection.
    #[error("not connected")]
    NotConnected,
    /// A Modbus request without a reply within the timeout.
    #[error("no response within {}ms", .0.as_millis())]
    NoResponse(Duration),
    /// A Modbus request that failed on the wire (I/O, a garbled or foreign frame).
    #[error("{0}")]
    ModbusTransport(#[source] std::io::Error),
    /// A Modbus reply that does not belong to the request (wrong function code, length).
    #[error("{0}")]
    ModbusProtocol(#[source] tokio_modbus::Error),
    /// A well-framed reply that does not answer what was asked.
    #[error("{detail}")]
    FaultyReply { detail: String },
    /// A serial port that could not be opened.
    #[error("cannot open {path}: {source}")]
    SerialOpen {
        path: String,
        #[source]
        source: tokio_serial::Error,
    },
    /// A write to a port that is closed.
    #[error("the port is not open")]
    PortClosed,
    /// Writing to the serial port failed.
    #[error("write failed: {0}")]
    PortWrite(#[source] std::io::Error),
    /// Writing to the serial port did not finish within the timeout.
    #[error("write not done within {}ms", .0.as_millis())]
    PortWriteTimeout(Duration),

    /// A line of text that is not `key<sep>value` pairs.
    #[error("{part:?} is not key{separator}value")]
    NotKeyValue { part: String, separator: String },
    /// A `key<sep>value` pair without a key.
    #[error("{part:?} has no key")]
    NoKey { part: String },
    /// A line without a single pair.
    #[error("no key-value pair")]
    NoPairs,
    /// A line that is not JSON.
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// A line the device's pattern does not match.
    #[error("does not match the pattern")]
    NoMatch,

    /// No acknowledgement of a write within the timeout.
    #[error("no reply matching {expected:?} within {}ms", .after.as_millis())]
    AckTimeout { expected: String, after: Duration },
    /// The device refused a write (answered something other than the acknowledgement).
    #[error("the device answered {answer:?}, not {expected:?}")]
    AckRefused { answer: String, expected: String },
    /// The port closed while a write waited for its acknowledgement.
    #[error("the port closed before the write was acknowledged")]
    AckPortClosed,
    /// Reading failed while a write waited for its acknowledgement.
    #[error("read failed before the acknowledgement: {0}")]
    AckPortRead(#[source] std::io::Error),

    /// A write for a device whose driver has stopped.
    #[error("the device's driver has stopped")]
    DriverStopped,
    /// The driver stopped while the write was under way.
    #[error("the device's driver stopped during the write")]
    DriverStoppedDuringWrite,
    /// A value that does not fit where it goes (a tag's type, a protocol's datatype).
    #[error("{detail}")]
    Value { detail: String },
    /// A tag without a write template.
    #[error("tag {tag} has no write template")]
    NoWriteTemplate { tag: String },
    /// A Sparkplug command to a node or device that has no birth certificate.
    #[error("the edge node or device is offline (no birth certificate)")]
    Offline,
    /// A Sparkplug command for a metric the birth certificate does not have.
    #[error("the birth certificate has no metric {metric:?}")]
    UnknownMetric { metric: String },

    /// The OPC UA server's endpoint could not be reached.
    #[error("cannot reach the server's endpoint: {0}")]
    OpcuaEndpoint(#[source] opcua::types::Error),
    /// The OPC UA server did not complete the connection within the limit.
    #[error("the server did not complete the connection within {0:?}")]
    OpcuaNoAnswer(Duration),
    /// The OPC UA server refused the session.
    #[error("session refused: {status}{hint}")]
    SessionRefused {
        status: StatusCode,
        hint: &'static str,
    },
    /// The OPC UA session ended before it was established.
    #[error("the session ended while connecting")]
    SessionEnded,
    /// An OPC UA service call that failed.
    #[error("{call}: {source}")]
    OpcuaCall {
        /// The metric kind the failure is counted under (`subscribe`, `read`).
        kind: &'static str,
        call: &'static str,
        #[source]
        source: opcua::types::Error,
    },
}

/// The adapter's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The `kind` label of `fieldline_adapter_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Runtime(e) => e.kind(),
            Error::Sequence(_) => "sequence",
            Error::Outbox(e) => e.kind(),
            Error::Device { .. } => "device",
            Error::At { source, .. } => source.kind(),
            Error::WrongProtocol { .. }
            | Error::Tag { .. }
            | Error::Setting { .. }
            | Error::Pattern(_)
            | Error::Secret { .. }
            | Error::OpcuaSetup(_)
            | Error::SetupAborted(_) => "config",
            Error::Waiting => "waiting",
            Error::Resolve { .. }
            | Error::NoAddress { .. }
            | Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::SerialOpen { .. }
            | Error::OpcuaEndpoint(_)
            | Error::SessionEnded => "connect",
            Error::NotConnected
            | Error::NoResponse(_)
            | Error::ModbusTransport(_)
            | Error::ModbusProtocol(_)
            | Error::FaultyReply { .. } => "transport",
            Error::PortClosed | Error::PortWrite(_) | Error::PortWriteTimeout(_) => "port",
            Error::NotKeyValue { .. }
            | Error::NoKey { .. }
            | Error::NoPairs
            | Error::NotJson(_)
            | Error::NoMatch => "unparsable_line",
            Error::AckTimeout { .. }
            | Error::AckRefused { .. }
            | Error::AckPortClosed
            | Error::AckPortRead(_) => "ack",
            Error::DriverStopped | Error::DriverStoppedDuringWrite => "driver_stopped",
            Error::Value { .. } | Error::NoWriteTemplate { .. } => "value",
            Error::Offline => "offline",
            Error::UnknownMetric { .. } => "unknown_metric",
            Error::OpcuaNoAnswer(_) => "timeout",
            Error::SessionRefused { status, .. } => session_failure_kind(*status),
            Error::OpcuaCall { kind, .. } => kind,
        }
    }

    /// The same error, said of `what` of `device`.
    pub fn at(self, device: &str, what: impl Into<String>) -> Self {
        Error::At {
            device: device.to_string(),
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// A tag whose settings have `problems` (field and message each).
    pub fn tag<F, M>(tag: &str, problems: impl IntoIterator<Item = (F, M)>) -> Self
    where
        F: std::fmt::Display,
        M: std::fmt::Display,
    {
        let text: Vec<String> = problems
            .into_iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect();
        Error::Tag {
            tag: tag.to_string(),
            problems: text.join("; "),
        }
    }

    /// A setting that cannot be used, for the reason `detail`.
    pub fn setting(detail: impl std::fmt::Display) -> Self {
        Error::Setting {
            detail: detail.to_string(),
        }
    }

    /// A value that does not fit, for the reason `detail`.
    pub fn value(detail: impl std::fmt::Display) -> Self {
        Error::Value {
            detail: detail.to_string(),
        }
    }
}

/// The kind a refused OPC UA session is counted under.
pub fn session_failure_kind(code: StatusCode) -> &'static str {
    let name = code.to_string();
    if name.starts_with("BadCertificateUntrusted") || name.starts_with("BadSecurityChecksFailed") {
        "untrusted_server"
    } else if name.starts_with("BadIdentityToken") || name.starts_with("BadUserAccessDenied") {
        "identity"
    } else {
        "connect"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels dashboards and alerts select on (README, serial-line and Modbus kinds).
    #[test]
    fn kinds_are_the_documented_labels() {
        let io = || std::io::Error::other("gone");
        let cases: Vec<(Error, &str)> = vec![
            (Error::PortWrite(io()), "port"),
            (Error::PortClosed, "port"),
            (Error::PortWriteTimeout(Duration::from_millis(5)), "port"),
            (Error::NoPairs, "unparsable_line"),
            (Error::NoMatch, "unparsable_line"),
            (
                Error::AckRefused {
                    answer: "ERR".into(),
                    expected: "OK".into(),
                },
                "ack",
            ),
            (Error::AckPortClosed, "ack"),
            (
                Error::NoAddress {
                    endpoint: "plc:502".into(),
                },
                "connect",
            ),
            (Error::NoResponse(Duration::from_millis(200)), "transport"),
            (Error::ModbusTransport(io()), "transport"),
            (Error::Waiting, "waiting"),
            (Error::setting("no request"), "config"),
            // A setting said of a device keeps the kind of what went wrong.
            (Error::NoMatch.at("scale", "parser"), "unparsable_line"),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }

    #[test]
    fn messages_name_what_was_wrong_and_keep_the_source() {
        let error = Error::PortWrite(std::io::Error::other("unplugged"));
        assert_eq!(error.to_string(), "write failed: unplugged");
        assert!(std::error::Error::source(&error).is_some());
        let error = Error::tag("temp", [("scale", "must not be 0"), ("type", "unknown")])
            .at("oven", "tags");
        assert_eq!(
            error.to_string(),
            "oven: tags: tag temp: scale: must not be 0; type: unknown"
        );
        let error = Error::NoResponse(Duration::from_millis(200));
        assert_eq!(error.to_string(), "no response within 200ms");
    }
}
