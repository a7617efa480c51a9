//! `fieldline-bench modbus`: N simulated Modbus TCP devices × M registers, polled at a fixed
//! rate and published to the MQTT broker, first by `fieldline-adapter`, then by a Python
//! collector of the kind tutorials teach (pymodbus + paho-mqtt), on the same devices, broker
//! and machine. Reports points/s, CPU seconds per million points, CPU share of one core and
//! peak RSS of each collector process, and the ratio.
//!
//! Build first: `cargo build --release -p fieldline-adapter -p fieldline-bench`; the adapter
//! binary is taken from the bench binary's own folder.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use fieldline_runtime::CancellationToken;
use fieldline_sim::SimState;
use tokio::process::Command;

use crate::measure::{self, Measured, Probe, Reported, free_addr, measure, terminate};

#[derive(clap::Args)]
pub struct ModbusArgs {
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Holding registers per device (one u16 tag each); at most 125 keeps one read per cycle.
    #[arg(long, default_value_t = 125)]
    registers: u16,
    #[arg(long, default_value = "25ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Measured seconds per collector (after a warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Python of the venv with pymodbus and paho-mqtt (tests/backends.sh makes it).
    #[arg(long, default_value = "/var/tmp/fieldline-backends/venv/bin/python")]
    python: PathBuf,
    /// Skip the Python collector.
    #[arg(long)]
    no_python: bool,
    /// The adapter's outbox fsync policy: `always` (as shipped) or `os`.
    #[arg(long, default_value = "always")]
    outbox_fsync: String,
}

pub async fn run(args: ModbusArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let addrs = start_devices(&args, stop.clone()).await?;
    let target = args.devices as f64 * f64::from(args.registers) / args.interval.as_secs_f64();
    println!(
        "Modbus collection: {} devices × {} registers every {} ms (target {:.0} points/s), {} s measured each, {} cores",
        args.devices,
        args.registers,
        args.interval.as_millis(),
        target,
        args.seconds,
        measure::cores()
    );
    let mut results = vec![run_adapter(&args, &addrs).await?];
    if !args.no_python {
        results.push(run_python(&args, &addrs).await?);
    }
    measure::print_table("collector", &results);
    if let [rust, python] = results.as_slice() {
        println!(
            "CPU per point, Python / Fieldline: {:.1}×",
            python.cpu_per_million() / rust.cpu_per_million()
        );
    }
    stop.cancel();
    Ok(())
}

/// Starts the simulated devices; their registers change every 100 ms.
async fn start_devices(
    args: &ModbusArgs,
    stop: CancellationToken,
) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for d in 0..args.devices {
        let state = SimState::new();
        let (addr, _) =
            fieldline_sim::serve_modbus_tcp("127.0.0.1:0".parse()?, state.clone(), stop.clone())
                .await?;
        addrs.push(addr);
        let stop = stop.clone();
        let registers = usize::from(args.registers);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n: u16 = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                n = n.wrapping_add(1);
                state.with(|r| {
                    for (i, w) in r.holding.iter_mut().take(registers).enumerate() {
                        *w = n.wrapping_add(u16::try_from(i + d).unwrap_or(0));
                    }
                });
            }
        });
    }
    Ok(addrs)
}

async fn run_adapter(args: &ModbusArgs, devices: &[SocketAddr]) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let http = free_addr()?;
    let mut yaml = format!(
        "line: bench\nmqtt: {{ address: \"{}\" }}\nadapter:\n  id: bench\n  grpc_listen: \"{}\"\n  http_listen: \"{http}\"\n  state_dir: \"{}\"\n{}devices:\n",
        args.mqtt,
        free_addr()?,
        dir.path().display(),
        // An adapter from before the outbox would refuse the setting.
        if std::env::var_os("FIELDLINE_ADAPTER").is_some() {
            String::new()
        } else {
            format!("  outbox: {{ fsync: {} }}\n", args.outbox_fsync)
        },
    );
    for (d, addr) in devices.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: d{d}\n    type: bench\n    protocol: modbus-tcp\n    endpoint: \"{addr}\"\n    poll_interval: {}ms\n    tags:\n",
            args.interval.as_millis()
        ));
        for r in 0..args.registers {
            yaml.push_str(&format!(
                "      - {{ name: r{r}, address: \"holding:{r}\", type: u16 }}\n"
            ));
        }
    }
    let config = dir.path().join("bench.yaml");
    std::fs::write(&config, yaml)?;
    let acks = CancellationToken::new();
    measure::acknowledge_batches(&args.mqtt, "bench", acks.clone()).await?;
    let _acks = acks.drop_guard();
    let mut child = measure::spawn_adapter(&config)?;
    let metrics = format!("http://{http}/metrics");
    let points = || measure::adapter_points(&metrics);
    let warmed = async {
        loop {
            if points().await.is_some_and(|p| p > 0.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), warmed)
        .await
        .context("the adapter did not start reading")?;
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

async fn run_python(args: &ModbusArgs, devices: &[SocketAddr]) -> anyhow::Result<Measured> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/modbus_collector.py");
    let list: Vec<String> = devices.iter().map(ToString::to_string).collect();
    let mut child = Command::new(&args.python)
        .arg(&script)
        .args([
            "--devices",
            &list.join(","),
            "--registers",
            &args.registers.to_string(),
        ])
        .args([
            "--interval",
            &args.interval.as_secs_f64().to_string(),
            "--mqtt",
            &args.mqtt,
        ])
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
    let measured = measure(&child, args.seconds, "python (pymodbus + paho)", || async {
        Probe {
            points: reported.points(),
            rows: None,
        }
    })
    .await?;
    terminate(&mut child).await;
    Ok(measured)
}
