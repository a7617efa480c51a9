//! `fieldline-adapter --config LINE.yaml`: polls the line's devices and publishes samples.

use std::{path::PathBuf, sync::Arc};

use clap::Parser;
use fieldline_runtime::{
    http,
    service::{self, Boot},
};

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
    let Boot {
        config,
        stop,
        health,
        mut registry,
    } = service::boot(&Args::parse().config)?;
    let adapter = fieldline_adapter::start(&config, &health, &mut registry, stop.clone()).await?;
    http::serve(config.adapter.http_listen, health, Arc::new(registry), stop).await?;
    adapter.wait().await;
    Ok(())
}
