//! `fieldline-bench opcua`: one OPC UA server (node-opcua, a peer we did not write) with N
//! variables that all change every U ms; `fieldline-adapter` subscribes to all of them and
//! publishes to the MQTT broker, then a Python collector of the usual kind (asyncua
//! subscriptions, one paho-mqtt publish per notification) does the same on the same server,
//! broker and machine. Reports notifications/s, CPU seconds per million notifications, CPU
//! share of one core and peak RSS of each collector process, and the ratio.
//!
//! Build first: `cargo build --release -p fieldline-adapter -p fieldline-bench`; the adapter
//! binary is taken from the bench binary's own folder. `bash tests/backends.sh` installs
//! node-opcua and the Python venv.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::measure::{self, Measured, Probe, Reported, free_addr, measure, terminate};

#[derive(clap::Args)]
pub struct OpcuaArgs {
    /// Monitored items (server variables), all changing every `update`.
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    update: Duration,
    /// Monitored items per subscription, for both collectors.
    #[arg(long, default_value_t = 5_000)]
    per_subscription: usize,
    /// Measured seconds per collector (after a warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Python of the venv with asyncua and paho-mqtt (tests/backends.sh makes it).
    #[arg(long, default_value = "/var/tmp/fieldline-backends/venv/bin/python")]
    python: PathBuf,
    /// node_modules with node-opcua (tests/backends.sh installs it).
    #[arg(long, default_value = "/var/tmp/fieldline-backends/node/node_modules")]
    node_modules: PathBuf,
    /// Skip the Python collector.
    #[arg(long)]
    no_python: bool,
}

pub async fn run(args: OpcuaArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, endpoint) = start_server(&args, dir.path()).await?;
    let target = args.items as f64 / args.update.as_secs_f64();
    println!(
        "OPC UA collection: {} monitored items changing every {} ms (target {:.0} notifications/s) on node-opcua at {endpoint}, {} per subscription, {} s measured each, {} cores",
        args.items,
        args.update.as_millis(),
        target,
        args.per_subscription,
        args.seconds,
        measure::cores()
    );
    let mut results = vec![run_adapter(&args, &endpoint, dir.path()).await?];
    if !args.no_python {
        results.push(run_python(&args, &endpoint).await?);
    }
    measure::print_table("collector", &results);
    if let [rust, python] = results.as_slice() {
        println!(
            "CPU per notification, Python / Fieldline: {:.1}×",
            python.cpu_per_million() / rust.cpu_per_million()
        );
    }
    terminate(&mut server).await;
    Ok(())
}

/// Starts the node-opcua server with the benchmark's variables; returns it and its endpoint.
async fn start_server(args: &OpcuaArgs, dir: &Path) -> anyhow::Result<(Child, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/opcua_node_server.js");
    let mut child = Command::new("node")
        .arg(&script)
        .args(["--pki", &dir.join("server-pki").display().to_string()])
        .args(["--generate", &args.items.to_string()])
        .args(["--update-ms", &args.update.as_millis().to_string()])
        .env("NODE_PATH", &args.node_modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting node (run `bash tests/backends.sh` for node-opcua)")?;
    let mut lines = BufReader::new(child.stdout.take().context("server stdout")?).lines();
    let port = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(port) = line.strip_prefix("READY ") {
                return Ok(port.trim().to_string());
            }
        }
        bail!("the node-opcua server exited before it was ready")
    })
    .await
    .context("the node-opcua server was not ready within 60 s")??;
    // Keep draining the server's output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, format!("opc.tcp://127.0.0.1:{port}")))
}

async fn run_adapter(args: &OpcuaArgs, endpoint: &str, dir: &Path) -> anyhow::Result<Measured> {
    let http = free_addr()?;
    let mut yaml = format!(
        "line: bench\nmqtt: {{ address: \"{}\" }}\nadapter:\n  id: bench\n  grpc_listen: \"{}\"\n  http_listen: \"{http}\"\n  state_dir: \"{}\"\ndevices:\n",
        args.mqtt,
        free_addr()?,
        dir.display()
    );
    yaml.push_str(&format!(
        "  - name: server\n    type: bench\n    protocol: opcua\n    endpoint: \"{endpoint}\"\n    opcua: {{ trust_unknown_servers: true, pki_dir: \"{}\", max_items_per_subscription: {}, sampling_interval: 250ms, publishing_interval: 500ms }}\n    tags:\n",
        dir.join("client-pki").display(),
        args.per_subscription
    ));
    for i in 0..args.items {
        yaml.push_str(&format!(
            "      - {{ name: v{i}, address: \"ns=1;s=v{i}\", type: f64 }}\n"
        ));
    }
    let config = dir.join("bench.yaml");
    std::fs::write(&config, yaml)?;
    let mut child = measure::spawn_adapter(&config)?;
    let metrics = format!("http://{http}/metrics");
    let points = || measure::adapter_points(&metrics);
    // Warm-up: every item subscribed and notifying.
    let warmed = async {
        loop {
            if points().await.is_some_and(|p| p >= 2.0 * args.items as f64) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), warmed)
        .await
        .context("the adapter did not receive notifications for every item")?;
    let measured = measure(&child, args.seconds, "fieldline-adapter", || async {
        Probe {
            points: points().await.unwrap_or(0.0),
            rows: None,
        }
    })
    .await?;
    terminate(&mut child).await;
    Ok(measured)
}

async fn run_python(args: &OpcuaArgs, endpoint: &str) -> anyhow::Result<Measured> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/opcua_collector.py");
    let mut child = Command::new(&args.python)
        .arg(&script)
        .args(["--endpoint", endpoint, "--items", &args.items.to_string()])
        .args(["--per-subscription", &args.per_subscription.to_string()])
        .args(["--mqtt", &args.mqtt])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (run `bash tests/backends.sh` for the venv)",
                args.python.display()
            )
        })?;
    let reported = Reported::follow(child.stdout.take().context("python stdout")?);
    reported.started("the Python collector").await?;
    // Warm-up as for the adapter: every item notifying.
    let warmed = async {
        while reported.points() < 2.0 * args.items as f64 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), warmed)
        .await
        .context("the Python collector did not receive notifications for every item")?;
    let measured = measure(&child, args.seconds, "python (asyncua + paho)", || async {
        Probe {
            points: reported.points(),
            rows: None,
        }
    })
    .await?;
    terminate(&mut child).await;
    Ok(measured)
}
