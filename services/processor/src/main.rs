//! `fieldline-processor --config LINE.yaml`: forwards the line's telemetry to storage and
//! serves the MES API.

use std::{path::PathBuf, sync::Arc};

use clap::Parser;
use fieldline_runtime::{
    http,
    service::{self, Boot},
};

/// Consumes a line's samples from MQTT, forwards them to storage and serves PlantService.
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
    // The operations endpoint answers (alive, not ready) while the processor waits for
    // storage to give it the alarm state and progress to resume from.
    let processor = fieldline_processor::Processor::new(&config, &health, &mut registry);
    http::serve(
        config.processor.http_listen,
        health,
        Arc::new(registry),
        stop.clone(),
    )
    .await?;
    processor.start(stop).await?.wait().await;
    Ok(())
}
