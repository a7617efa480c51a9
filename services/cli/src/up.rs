//! `fieldline up`: the whole pipeline in one process.
//!
//! Without a config it runs the demo: the simulated tank from `fieldline-sim` on Modbus TCP,
//! the embedded MQTT broker, and adapter → broker → processor → storage into a SQLite file.
//! With `--config FILE` it runs that line against the broker and databases the file names.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use fieldline_core::config::LineConfig;

use crate::Error;
use fieldline_runtime::{CancellationToken, Health, http};
use prometheus_client::registry::Registry;

/// Where `up` listens and keeps its files.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// A line document to run instead of the demo.
    pub config: Option<PathBuf>,
    /// Folder of the demo's SQLite database and adapter state.
    pub data_dir: PathBuf,
    /// Embedded MQTT broker (demo only).
    pub mqtt_listen: SocketAddr,
    /// Simulated tank's Modbus TCP server (demo only).
    pub sim_listen: SocketAddr,
    /// PlantService (the MES API).
    pub plant_listen: SocketAddr,
    /// `/healthz`, `/readyz` and `/metrics` of the whole process.
    pub http_listen: SocketAddr,
}

/// What a running `up` offers, for the banner and for tests.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub plant: SocketAddr,
    pub adapter: SocketAddr,
    pub storage: SocketAddr,
    pub http: SocketAddr,
    pub sqlite: Option<PathBuf>,
    pub sim: Option<SocketAddr>,
    pub mqtt: String,
    pub line: String,
}

/// The demo line: one tank, read from the simulator.
pub fn demo_config(
    sim: SocketAddr,
    mqtt: SocketAddr,
    data_dir: &std::path::Path,
) -> crate::Result<LineConfig> {
    let yaml = format!(
        r#"
line: demo
mqtt:
  address: {mqtt}
adapter:
  state_dir: {state}
  grpc_listen: {adapter}
processor:
  adapter_url: http://{adapter}
storage:
  grpc_listen: 127.0.0.1:0
  sql:
    url: sqlite://{db}
devices:
  - name: tank
    type: tank-v1
    protocol: modbus-tcp
    endpoint: {sim}
    poll_interval: 500ms
    tags:
      - {{ name: temperature, address: "holding:0", type: f32, unit: degC, description: "Tank temperature" }}
      - {{ name: setpoint, address: "holding:2", type: i16, scale: 0.1, unit: degC, writable: true, min: 10, max: 90 }}
      - {{ name: units_produced, address: "holding:3", type: u32, description: "Units since start" }}
      - {{ name: level, address: "input:0", type: u16, scale: 0.1, unit: "%" }}
      - {{ name: pump_run, address: "coil:0", type: bool, writable: true, description: "Cooling pump" }}
      - {{ name: high_temp, address: "discrete:0", type: bool, description: "Above 80 degC" }}
device_types:
  tank-v1:
    alarms:
      - {{ name: temp-high, tag: temperature, kind: high, limit: 80, deadband: 2, priority: high, message: "Tank too hot" }}
      - {{ name: temp-bad, tag: temperature, kind: bad_quality, on_delay: 5s }}
    rules:
      # The pump cools: on above 47 degC, off below 43 degC.
      - {{ kind: hysteresis, name: cooling, input: temperature, output: pump_run, setpoint: 45, band: 2, action: on_above }}
"#,
        adapter = free_port_addr()?,
        state = data_dir.join("state").display(),
        db = data_dir.join("fieldline.db").display(),
    );
    LineConfig::from_yaml(&yaml).map_err(Error::DemoConfig)
}

/// A free address on 127.0.0.1 for the demo's adapter, so the processor knows where to send
/// its writes before the adapter starts.
fn free_port_addr() -> crate::Result<SocketAddr> {
    let io = |source| Error::Io {
        what: "finding a free port on 127.0.0.1".into(),
        source,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    listener.local_addr().map_err(io)
}

/// A running `up`.
pub struct Up {
    pub endpoints: Endpoints,
    adapter: fieldline_adapter::RunningAdapter,
    processor: fieldline_processor::RunningProcessor,
    storage: fieldline_storage::RunningStorage,
    sim: Option<tokio::task::JoinHandle<()>>,
}

impl Up {
    /// Waits until `stop` was cancelled and everything has flushed, in pipeline order.
    pub async fn wait(self) {
        self.adapter.wait().await;
        self.processor.wait().await;
        self.storage.wait().await;
        if let Some(sim) = self.sim {
            let _ = sim.await;
        }
    }
}

/// Fails with the flag to change when `addr` is taken, before anything has started.
fn require_free(addr: SocketAddr, flag: &'static str) -> crate::Result<()> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| Error::PortTaken { addr, flag, source })
}

/// Starts everything; returns once all of it is listening.
pub async fn start(options: &UpOptions, stop: CancellationToken) -> crate::Result<Up> {
    let mut needed = vec![
        (options.plant_listen, "--plant-listen"),
        (options.http_listen, "--http-listen"),
    ];
    if options.config.is_none() {
        needed.push((options.sim_listen, "--sim-listen"));
        needed.push((options.mqtt_listen, "--mqtt-listen"));
    }
    for (addr, flag) in needed {
        require_free(addr, flag)?;
    }
    let (mut config, sim, sqlite) = match &options.config {
        Some(path) => (fieldline_runtime::config::load(path)?, None, None),
        None => {
            std::fs::create_dir_all(&options.data_dir).map_err(|source| Error::Io {
                what: format!("creating {}", options.data_dir.display()),
                source,
            })?;
            let state = fieldline_sim::SimState::new();
            fieldline_sim::tank::init(&state);
            let (sim_addr, server) =
                fieldline_sim::serve_modbus_tcp(options.sim_listen, state.clone(), stop.clone())
                    .await?;
            let model = tokio::spawn(fieldline_sim::tank::run(
                state,
                Duration::from_millis(100),
                stop.clone(),
            ));
            let sim_task = tokio::spawn(async move {
                let _ = server.await;
                let _ = model.await;
            });
            crate::broker::start(options.mqtt_listen).await?;
            let config = demo_config(sim_addr, options.mqtt_listen, &options.data_dir)?;
            (
                config,
                Some((sim_addr, sim_task)),
                Some(options.data_dir.join("fieldline.db")),
            )
        }
    };
    config.processor.grpc_listen = options.plant_listen;
    let health = Health::default();
    let mut registry = Registry::default();
    let storage = fieldline_storage::start(&config, &health, &mut registry, stop.clone()).await?;
    config.processor.storage_url = format!("http://{}", storage.grpc_addr);
    let processor =
        fieldline_processor::start(&config, &health, &mut registry, stop.clone()).await?;
    let adapter = fieldline_adapter::start(&config, &health, &mut registry, stop.clone()).await?;
    let http = http::serve(
        options.http_listen,
        health,
        Arc::new(registry),
        stop.clone(),
    )
    .await?;
    let (sim_addr, sim_task) = match sim {
        Some((a, t)) => (Some(a), Some(t)),
        None => (None, None),
    };
    Ok(Up {
        endpoints: Endpoints {
            plant: processor.grpc_addr,
            adapter: adapter.grpc_addr,
            storage: storage.grpc_addr,
            http,
            sqlite,
            sim: sim_addr,
            mqtt: config.mqtt.address.clone(),
            line: config.line.clone(),
        },
        adapter,
        processor,
        storage,
        sim: sim_task,
    })
}

impl Endpoints {
    /// What to tell the person who ran `fieldline up`.
    pub fn banner(&self) -> String {
        let mut lines = vec![format!("Fieldline is running line {:?}.", self.line)];
        if let Some(sim) = self.sim {
            lines.push(format!("  simulated tank (Modbus TCP)  {sim}"));
        }
        lines.push(format!("  MQTT broker                  {}", self.mqtt));
        lines.push(format!(
            "  MES API (gRPC PlantService)  http://{}",
            self.plant
        ));
        lines.push(format!(
            "  AdapterService (gRPC)        http://{}",
            self.adapter
        ));
        lines.push(format!(
            "  health and metrics           http://{}/readyz  http://{}/metrics",
            self.http, self.http
        ));
        if let Some(db) = &self.sqlite {
            lines.push(format!("  database (SQLite)            {}", db.display()));
        }
        lines.push(String::new());
        lines.push(format!(
            "Watch the values:  fieldline watch --server http://{}",
            self.plant
        ));
        lines.push("Stop with Ctrl-C; everything received is flushed first.".into());
        lines.join("\n")
    }
}
