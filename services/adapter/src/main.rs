//! `fieldline-adapter --config LINE.yaml`: polls the line's devices and publishes samples.

use std::{path::PathBuf, sync::Arc};

use clap::Parser;
use fieldline_runtime::{Health, http, shutdown, telemetry};
use prometheus_client::registry::Registry;

/// Polls the devices of one production line and publishes their samples to MQTT.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The line document.
    #[arg(long, short, env = "FIELDLINE_CONFIG")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let config = fieldline_runtime::config::load(&args.config)?;
    let stop = shutdown::on_signal();
    let health = Health::default();
    let mut registry = Registry::default();
    let adapter = fieldline_adapter::start(&config, &health, &mut registry, stop.clone()).await?;
    http::serve(
        config.adapter.http_listen,
        health,
        Arc::new(registry),
        stop.clone(),
    )
    .await?;
    adapter.wait().await;
    Ok(())
}
