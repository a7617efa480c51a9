//! `fieldline-storage --config LINE.yaml`: stores what processors send to InfluxDB and SQL.

use std::{path::PathBuf, sync::Arc};

use clap::Parser;
use fieldline_runtime::{Health, http, shutdown, telemetry};
use prometheus_client::registry::Registry;

/// Stores sample batches in InfluxDB and MySQL/MariaDB or SQLite, acknowledging each once durable.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The line document (its `storage` section configures the backends).
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
    let storage = fieldline_storage::start(&config, &health, &mut registry, stop.clone()).await?;
    http::serve(
        config.storage.http_listen,
        health,
        Arc::new(registry),
        stop.clone(),
    )
    .await?;
    storage.wait().await;
    Ok(())
}
