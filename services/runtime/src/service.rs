//! What every service binary does before its own work: logging, the line document, signal
//! handling, and empty health and metrics registries.

use std::path::Path;

use fieldline_core::config::LineConfig;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::Health;

/// The shared state a service binary starts with.
pub struct Boot {
    pub config: LineConfig,
    pub stop: CancellationToken,
    pub health: Health,
    pub registry: Registry,
}

/// Initialises logging, loads and validates `config`, and watches SIGTERM and Ctrl-C.
pub fn boot(config: &Path) -> crate::Result<Boot> {
    crate::telemetry::init();
    let config = crate::config::load(config)?;
    Ok(Boot {
        config,
        stop: crate::shutdown::on_signal(),
        health: Health::default(),
        registry: Registry::default(),
    })
}
