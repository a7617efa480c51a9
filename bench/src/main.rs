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
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Parser;
use fieldline_runtime::CancellationToken;
use fieldline_sim::SimState;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

#[derive(Parser)]
#[command(about = "Fieldline adapter vs. a Python collector on the same simulated devices")]
enum Bench {
    /// Modbus TCP polling published to MQTT.
    Modbus(ModbusArgs),
}

#[derive(clap::Args)]
struct ModbusArgs {
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
}

/// What one collector did in the measured window.
struct Measured {
    name: &'static str,
    points_per_s: f64,
    cpu_s: f64,
    seconds: f64,
    points: f64,
    peak_rss_kib: u64,
}

impl Measured {
    fn cpu_per_million(&self) -> f64 {
        if self.points > 0.0 {
            self.cpu_s / self.points * 1e6
        } else {
            f64::INFINITY
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Bench::Modbus(args) = Bench::parse();
    let stop = CancellationToken::new();
    let addrs = start_devices(&args, stop.clone()).await?;
    let target = args.devices as f64 * f64::from(args.registers) / args.interval.as_secs_f64();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "Modbus collection: {} devices × {} registers every {} ms (target {:.0} points/s), {} s measured each, {} cores",
        args.devices,
        args.registers,
        args.interval.as_millis(),
        target,
        args.seconds,
        cores
    );
    let mut results = vec![run_adapter(&args, &addrs).await?];
    if !args.no_python {
        results.push(run_python(&args, &addrs).await?);
    }
    println!(
        "{:<26} {:>12} {:>18} {:>14} {:>14}",
        "collector", "points/s", "CPU s / 1M points", "% of a core", "peak RSS MiB"
    );
    for r in &results {
        println!(
            "{:<26} {:>12.0} {:>18.3} {:>14.2} {:>14.1}",
            r.name,
            r.points_per_s,
            r.cpu_per_million(),
            r.cpu_s / r.seconds * 100.0,
            r.peak_rss_kib as f64 / 1024.0
        );
    }
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

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn run_adapter(args: &ModbusArgs, devices: &[SocketAddr]) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let http = free_addr()?;
    let mut yaml = format!(
        "line: bench\nmqtt: {{ address: \"{}\" }}\nadapter:\n  id: bench\n  grpc_listen: \"{}\"\n  http_listen: \"{http}\"\n  state_dir: \"{}\"\ndevices:\n",
        args.mqtt,
        free_addr()?,
        dir.path().display()
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
    let binary = std::env::current_exe()?.with_file_name("fieldline-adapter");
    if !binary.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p fieldline-adapter -p fieldline-bench`",
            binary.display()
        );
    }
    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let metrics = format!("http://{http}/metrics");
    let points = || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        Some(
            text.lines()
                .filter(|l| {
                    l.starts_with("fieldline_adapter_samples_read_total{")
                        && l.contains("quality=\"good\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>(),
        )
    };
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
    let measured = measure(&mut child, args.seconds, "fieldline-adapter", || async {
        points().await.unwrap_or(0.0)
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
    let total = Arc::new(AtomicU64::new(0));
    let mut lines = BufReader::new(child.stdout.take().context("python stdout")?).lines();
    let seen = total.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line.strip_prefix("POINTS ").and_then(|n| n.parse().ok()) {
                seen.store(n, Ordering::Relaxed);
            }
        }
    });
    let warmed = async {
        while total.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), warmed)
        .await
        .context("the Python collector did not start reading")?;
    let counter = total.clone();
    let measured = measure(
        &mut child,
        args.seconds,
        "python (pymodbus + paho)",
        move || {
            let counter = counter.clone();
            async move { counter.load(Ordering::Relaxed) as f64 }
        },
    )
    .await?;
    terminate(&mut child).await;
    Ok(measured)
}

/// Samples the process's CPU time and the collector's point count over `seconds`.
async fn measure<F, Fut>(
    child: &mut Child,
    seconds: u64,
    name: &'static str,
    points: F,
) -> anyhow::Result<Measured>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let pid = child.id().context("collector exited")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, p0, t0) = (cpu_seconds(pid)?, points().await, std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, p1, elapsed) = (
        cpu_seconds(pid)?,
        points().await,
        t0.elapsed().as_secs_f64(),
    );
    let peak_rss_kib = peak_rss_kib(pid)?;
    Ok(Measured {
        name,
        points_per_s: (p1 - p0) / elapsed,
        cpu_s: cpu1 - cpu0,
        seconds: elapsed,
        points: p1 - p0,
        peak_rss_kib,
    })
}

/// User plus system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    Ok(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
