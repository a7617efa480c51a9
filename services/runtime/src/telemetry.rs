//! Logging setup: `RUST_LOG` filters (default `info`), `FIELDLINE_LOG_FORMAT=json` for
//! machine-readable logs.
//!
//! The embedded broker of `fieldline up` (rumqttd) logs every ordinary disconnect of a client
//! as an error, so its own log is off unless `RUST_LOG` names it (`RUST_LOG=info,rumqttd=info`);
//! a broker that really fails shows in the clients' logs, which report every failed
//! connection.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; later calls do nothing (tests call it repeatedly).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off"));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let result = if std::env::var("FIELDLINE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Already installed by an earlier call in this process: keep the first one.
    drop(result);
}
