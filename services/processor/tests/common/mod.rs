//! The processor binary for a test: a line with one device, storage running in the test on a
//! SQLite file, and the processor started on the real broker with its `/readyz` up.

// Each test binary uses the part of this it needs.
#![allow(dead_code)]

use std::{net::SocketAddr, path::Path};

use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;

pub struct Processor {
    pub process: kit::ServiceProcess,
    pub line: String,
    /// Its `/healthz`, `/readyz` and `/metrics`.
    pub http: SocketAddr,
    /// PlantService.
    pub grpc: SocketAddr,
    /// The SQLite file storage writes.
    pub db: std::path::PathBuf,
    storage: fieldline_storage::RunningStorage,
    stop: CancellationToken,
}

/// Starts storage and the processor binary for a line named after `prefix`, files in `dir`.
pub async fn start(prefix: &str, dir: &Path) -> anyhow::Result<Processor> {
    let line = kit::unique(prefix);
    let http = kit::free_addr()?;
    let grpc = kit::free_addr()?;
    let db = dir.join("s.db");
    let yaml = format!(
        "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nstorage:\n  grpc_listen: 127.0.0.1:0\n  sql: {{ url: \"sqlite://{db}\" }}\nprocessor:\n  grpc_listen: {grpc}\n  http_listen: {http}\ndevices:\n  - {{ name: d1, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: temp, address: \"holding:0\", type: u16 }} ] }}\n",
        mqtt = kit::MQTT,
        db = db.display(),
    );
    let config =
        fieldline_core::config::LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = CancellationToken::new();
    let storage = fieldline_storage::start(
        &config,
        &Health::default(),
        &mut Default::default(),
        stop.clone(),
    )
    .await?;
    let file = dir.join("line.yaml");
    std::fs::write(
        &file,
        yaml.replace(
            "processor:\n",
            &format!("processor:\n  storage_url: http://{}\n", storage.grpc_addr),
        ),
    )?;
    let process = kit::ServiceProcess::start(
        Path::new(env!("CARGO_BIN_EXE_fieldline-processor")),
        &["--config", &file.display().to_string()],
        http,
    )
    .await?;
    Ok(Processor {
        process,
        line,
        http,
        grpc,
        db,
        storage,
        stop,
    })
}

impl Processor {
    /// Stops storage, once the processor has been stopped.
    pub async fn stop_storage(self) {
        self.stop.cancel();
        self.storage.wait().await;
    }
}
