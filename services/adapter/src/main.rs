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

/// Polling is I/O-bound: one thread (the default) serves many devices and wakes once for all
/// timers that fall due together; `FIELDLINE_WORKER_THREADS` allows more.
fn main() -> anyhow::Result<()> {
    let workers: usize = std::env::var("FIELDLINE_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
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
