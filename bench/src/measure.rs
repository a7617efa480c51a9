//! What every benchmark measures of a process, the same way for Fieldline and its Python
//! peer: CPU seconds from /proc (user + system), peak RSS (VmHWM) and the work it reports
//! over a fixed window, and the table that prints them.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdout},
};

/// Counters read at the start and the end of the measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe {
    /// Points the process handled since it started.
    pub points: f64,
    /// Database rows it changed since it started, where that is counted.
    pub rows: Option<f64>,
}

/// What one process did in the measured window.
pub struct Measured {
    pub name: &'static str,
    pub points_per_s: f64,
    pub cpu_s: f64,
    pub seconds: f64,
    pub points: f64,
    pub peak_rss_kib: u64,
    /// Database rows changed per second in the window, where that is counted.
    pub rows_per_s: Option<f64>,
}

impl Measured {
    pub fn cpu_per_million(&self) -> f64 {
        if self.points > 0.0 {
            self.cpu_s / self.points * 1e6
        } else {
            f64::INFINITY
        }
    }

    /// CPU share of one core, in percent.
    pub fn core_percent(&self) -> f64 {
        self.cpu_s / self.seconds * 100.0
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Prints points/s, CPU seconds per million points, CPU share of one core and peak RSS.
pub fn print_table<'a>(label: &str, results: impl IntoIterator<Item = &'a Measured>) {
    println!(
        "{:<34} {:>12} {:>18} {:>14} {:>14}",
        label, "points/s", "CPU s / 1M points", "% of a core", "peak RSS MiB"
    );
    for r in results {
        println!(
            "{:<34} {:>12.0} {:>18.3} {:>14.2} {:>14.1}",
            r.name,
            r.points_per_s,
            r.cpu_per_million(),
            r.core_percent(),
            r.peak_rss_kib as f64 / 1024.0
        );
    }
}

/// Samples the process's CPU time and its counters over `seconds`, after a 2 s settling
/// pause.
pub async fn measure<F, Fut>(
    child: &Child,
    seconds: u64,
    name: &'static str,
    probe: F,
) -> anyhow::Result<Measured>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Probe>,
{
    let pid = child.id().context("the measured process exited")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, p0, t0) = (cpu_seconds(pid)?, probe().await, std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, p1, elapsed) = (cpu_seconds(pid)?, probe().await, t0.elapsed().as_secs_f64());
    let peak_rss_kib = peak_rss_kib(pid)?;
    Ok(Measured {
        name,
        points_per_s: (p1.points - p0.points) / elapsed,
        cpu_s: cpu1 - cpu0,
        seconds: elapsed,
        points: p1.points - p0.points,
        peak_rss_kib,
        rows_per_s: p0
            .rows
            .zip(p1.rows)
            .map(|(before, after)| (after - before) / elapsed),
    })
}

/// User plus system CPU seconds of a process, from /proc.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
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

pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")
}

/// SIGTERM, then SIGKILL if the process has not exited within 10 s.
pub async fn terminate(child: &mut Child) {
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

/// What a Python peer reports on its standard output: `POINTS <total>` once a second and,
/// where it has them, `LAST_TS <ns>` (the newest source timestamp it has written) and other
/// `KEY <number>` lines.
#[derive(Default)]
pub struct Reported {
    pub points: AtomicU64,
    pub last_ts: AtomicI64,
    /// Any other `KEY <number>` lines, latest value of each.
    others: Mutex<HashMap<String, f64>>,
    /// The peer's standard output has closed: its last report is in.
    closed: AtomicBool,
}

impl Reported {
    /// Reads the peer's report lines until its standard output closes.
    pub fn follow(stdout: ChildStdout) -> Arc<Self> {
        let reported = Arc::new(Self::default());
        let seen = reported.clone();
        let mut lines = BufReader::new(stdout).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line.strip_prefix("POINTS ").and_then(|n| n.parse().ok()) {
                    seen.points.store(n, Ordering::Relaxed);
                } else if let Some(ts) = line.strip_prefix("LAST_TS ").and_then(|n| n.parse().ok())
                {
                    seen.last_ts.store(ts, Ordering::Relaxed);
                } else if let Some((key, n)) = line.split_once(' ')
                    && let Ok(n) = n.trim().parse::<f64>()
                    && let Ok(mut others) = seen.others.lock()
                {
                    others.insert(key.to_string(), n);
                }
            }
            seen.closed.store(true, Ordering::Release);
        });
        reported
    }

    /// The latest value of a `KEY <number>` line.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.others.lock().ok()?.get(key).copied()
    }

    pub fn points(&self) -> f64 {
        self.points.load(Ordering::Relaxed) as f64
    }

    /// Waits (up to 5 s) for the peer's last report, once it has been told to stop.
    pub async fn finished(&self) {
        let closed = async {
            while !self.closed.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
    }

    /// Waits (up to 30 s) for the first points.
    pub async fn started(&self, what: &str) -> anyhow::Result<()> {
        let started = async {
            while self.points.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), started)
            .await
            .with_context(|| format!("{what} did not start"))
    }
}

/// Starts the release `fieldline-adapter` beside the bench binary with `config`, logging
/// warnings only.
pub fn spawn_adapter(config: &std::path::Path) -> anyhow::Result<Child> {
    // `FIELDLINE_ADAPTER` measures another build (e.g. an older release) on the same devices.
    let binary = match std::env::var_os("FIELDLINE_ADAPTER") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::current_exe()?.with_file_name("fieldline-adapter"),
    };
    if !binary.exists() {
        anyhow::bail!(
            "{} not found; build it with `cargo build --release -p fieldline-adapter -p fieldline-bench`",
            binary.display()
        );
    }
    tokio::process::Command::new(&binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Good samples the adapter has read so far, from its `/metrics` at `url`.
pub async fn adapter_points(url: &str) -> Option<f64> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.starts_with("fieldline_adapter_samples_read_total{")
                    && l.contains("quality=\"good\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>(),
    )
}

/// Stands in for the line's processor toward an adapter: takes its batches off the broker and
/// announces, every 250 ms (as the processor does), each device's highest sequence as its
/// retained stored watermark, so the adapter's outbox releases batches as it would in a
/// running line. Runs in the bench
/// process, whose CPU is not counted.
pub async fn acknowledge_batches(
    mqtt: &str,
    line: &str,
    stop: fieldline_runtime::CancellationToken,
) -> anyhow::Result<()> {
    use fieldline_proto::v1;
    use prost::Message;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let (host, port) = mqtt.rsplit_once(':').context("--mqtt is host:port")?;
    let mut options = MqttOptions::new(
        format!("fieldline-bench-acks-{}", std::process::id()),
        host,
        port.parse()?,
    );
    options.set_max_packet_size(64 << 20, 64 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    client
        .subscribe(fieldline_proto::line_samples_filter(line), QoS::AtMostOnce)
        .await?;
    let line = line.to_string();
    tokio::spawn(async move {
        let mut highest: std::collections::HashMap<String, u64> = Default::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(batch) = v1::SampleBatch::decode(p.payload.as_ref()) {
                            let h = highest.entry(batch.device).or_default();
                            *h = (*h).max(batch.sequence);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                },
                _ = tick.tick() => {
                    for (device, sequence) in &highest {
                        let mark = v1::StoredUpTo {
                            line: line.clone(),
                            device: device.clone(),
                            sequence: *sequence,
                            gap: false,
                            published_ns: 0,
                        };
                        let _ = client.try_publish(
                            fieldline_proto::stored_topic(&line, device),
                            QoS::AtMostOnce,
                            true,
                            mark.encode_to_vec(),
                        );
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    });
    Ok(())
}
