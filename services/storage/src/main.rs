//! `fieldline-storage --config LINE.yaml`: stores what processors send to InfluxDB and SQL.

use std::{path::PathBuf, sync::Arc};

use clap::Parser;
use fieldline_runtime::{
    http,
    service::{self, Boot},
};

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
    let Boot {
        config,
        stop,
        health,
        mut registry,
    } = service::boot(&Args::parse().config)?;
    let storage = fieldline_storage::Storage::new(&config, &health, &mut registry)?;
    // Health answers (not ready) while the databases are still being reached.
    http::serve(
        config.storage.http_listen,
        health,
        Arc::new(registry),
        stop.clone(),
    )
    .await?;
    storage.start(stop).await?.wait().await;
    Ok(())
}
