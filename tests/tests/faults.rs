//! Faults from device to database, against the real binaries: a Mosquitto of its own (started
//! from the shipped `deploy/mosquitto.conf`, with persistence), `fieldline-adapter`,
//! `fieldline-processor` and `fieldline-storage` as separate processes, storage into SQLite.
//!
//! Twenty devices are polled every 100 ms. Each is a scripted Modbus server whose register
//! answers 1, 2, 3, … one number per read, so the readings a device gave are known exactly:
//! the ledger at the end checks that, for every device, every number it served is stored, with
//! its value, and nothing else. Between, the pipeline goes through:
//! 1. the broker killed (-9), kept down, restarted on its persistence folder;
//! 2. the broker killed and restarted with its folder wiped (a broker that forgot everything);
//! 3. the adapter killed during a broker outage, restarted, the broker back;
//! 4. storage frozen (SIGSTOP) so batches pile up unacknowledged, the processor killed and
//!    restarted, storage let go (SIGCONT);
//! 5. storage killed with batches in flight, restarted;
//! 6. the adapter stopped (SIGTERM) during a broker outage, restarted, the broker back.
//!
//! Each device also has derived values (the counter plugin's increase since the previous
//! reading, and the run hours since its first), an alarm raised once its count passes 30,
//! and a lamp a control rule switches on while the processor is about to be killed: at the
//! end every derived value must be what one uninterrupted run computes, every alarm must have
//! been raised exactly once and every lamp written exactly once, whatever restarted in
//! between.
//!
//! A second run stores into private InfluxDB and MariaDB instances and takes each database
//! down under the running line, first without storage's write-ahead buffer, then with it,
//! killing storage (-9) while it replays; the ledger is read back from InfluxDB.
//!
//! `FIELDLINE_FAULTS=long` keeps each outage for 5 minutes instead of 8 s; both runs print a
//! table (readings served per scenario, recovery time, peak RSS of each process, the outbox's
//! peak).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use fieldline_testkit::{self as kit, Answer, ServiceProcess};

const DEVICES: usize = 20;
/// Each device's `n-high` alarm is raised when its count reaches this, and never clears.
const ALARM_AT: u64 = 30;
/// The `lamp-on` rule switches each device's lamp on once the level is above this (and one).
const LEVEL_HIGH: u16 = 50;

/// A device whose holding register 0 reads 1, 2, 3, …: `served` is the last number given.
/// Its input register 0 reads the line's `level` (set by the test), and its coil 0 is a lamp
/// a control rule switches on when the level is high; `writes` counts the writes it took.
/// Once `silent` is set it answers nothing more (the adapter stores Bad samples, no numbers).
struct Counter {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

async fn counter(
    silent: Arc<std::sync::atomic::AtomicBool>,
    level: Arc<AtomicU16>,
) -> anyhow::Result<Counter> {
    let served = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let lamp = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (next, written) = (served.clone(), writes.clone());
    let addr = kit::faulty_modbus(move |_, request| {
        if silent.load(Ordering::SeqCst) {
            return Answer::Silence;
        }
        let pdu = match request.get(7).copied() {
            Some(3) => {
                let n = next.fetch_add(1, Ordering::SeqCst) + 1;
                kit::registers_pdu(request, u16::try_from(n).unwrap_or(u16::MAX))
            }
            Some(4) => kit::registers_pdu(request, level.load(Ordering::SeqCst)),
            Some(1) => vec![1, 1, u8::from(lamp.load(Ordering::SeqCst))],
            // Write single coil: 0xFF00 is on; the answer echoes the request.
            Some(5) if request.len() >= 12 => {
                lamp.store(request[10] == 0xFF, Ordering::SeqCst);
                written.fetch_add(1, Ordering::SeqCst);
                request[7..12].to_vec()
            }
            // Write multiple coils, one of them: the answer gives address and quantity.
            Some(15) if request.len() >= 14 => {
                lamp.store(request[13] & 1 == 1, Ordering::SeqCst);
                written.fetch_add(1, Ordering::SeqCst);
                request[7..12].to_vec()
            }
            // Anything else: illegal function.
            Some(f) => vec![f | 0x80, 1],
            None => return Answer::Silence,
        };
        Answer::Bytes(kit::modbus_reply(request, &pdu))
    })
    .await?;
    Ok(Counter {
        addr,
        served,
        writes,
    })
}

/// A Mosquitto of the test's own, from the shipped configuration.
struct Broker {
    child: Option<tokio::process::Child>,
    port: u16,
    conf: PathBuf,
    data: PathBuf,
}

impl Broker {
    fn new(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let shipped = std::fs::read_to_string(kit::repo_root().join("deploy/mosquitto.conf"))?;
        let data = dir.join("mosquitto-data");
        std::fs::create_dir_all(&data)?;
        let conf: String = shipped
            .lines()
            .map(|l| {
                if l.starts_with("listener ") {
                    format!("listener {port} 127.0.0.1")
                } else if l.starts_with("persistence_location ") {
                    format!("persistence_location {}/", data.display())
                } else if l.starts_with("log_dest ") {
                    format!("log_dest file {}", dir.join("mosquitto.log").display())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        anyhow::ensure!(
            conf.contains(&format!("listener {port}")) && conf.contains("persistence true"),
            "deploy/mosquitto.conf no longer has the listener and persistence lines this test adapts"
        );
        let path = dir.join("mosquitto.conf");
        // Started as root, Mosquitto would otherwise run as `mosquitto`, which cannot write
        // the test's folder; as any other user the line has no effect.
        std::fs::write(&path, format!("user root\n{conf}\n"))?;
        Ok(Self {
            child: None,
            port,
            conf: path,
            data,
        })
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let child = tokio::process::Command::new("mosquitto")
            .args(["-c", &self.conf.display().to_string()])
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting mosquitto (install it with `bash tests/backends.sh mosquitto`)")?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        kit::wait_for(Duration::from_secs(10), "mosquitto listening", || async {
            std::net::TcpStream::connect(&addr).ok().map(drop)
        })
        .await
    }

    async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    fn wipe(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.data)? {
            std::fs::remove_file(entry?.path())?;
        }
        Ok(())
    }
}

/// Where cargo put the service binaries: beside this test's own `deps` folder.
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target folder")?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the services first (`cargo build --workspace --bins`; `cargo test --workspace` does)",
        path.display()
    );
    Ok(path)
}

/// Where the test reads back what the line stored.
enum Store {
    /// The SQLite database's `samples` table.
    Sqlite(PathBuf),
    /// An InfluxDB at this URL, database `fl`.
    Influx(String),
}

struct Line {
    dir: PathBuf,
    config: PathBuf,
    /// The line document with `{STORAGE}` where the storage backends go.
    template: String,
    db: PathBuf,
    store: Store,
    adapter_http: SocketAddr,
    processor_http: SocketAddr,
    storage_http: SocketAddr,
}

impl Line {
    /// Writes the line document with these storage backends (YAML lines of `storage:`).
    fn set_storage(&self, backends: &str) -> anyhow::Result<()> {
        std::fs::write(&self.config, self.template.replace("{STORAGE}", backends))?;
        Ok(())
    }

    async fn adapter(&self) -> anyhow::Result<ServiceProcess> {
        ServiceProcess::spawn(
            &binary("fieldline-adapter")?,
            &["--config", &self.config.display().to_string()],
            self.adapter_http,
        )
        .await
    }

    async fn processor(&self) -> anyhow::Result<ServiceProcess> {
        ServiceProcess::spawn(
            &binary("fieldline-processor")?,
            &["--config", &self.config.display().to_string()],
            self.processor_http,
        )
        .await
    }

    async fn storage(&self) -> anyhow::Result<ServiceProcess> {
        ServiceProcess::spawn(
            &binary("fieldline-storage")?,
            &["--config", &self.config.display().to_string()],
            self.storage_http,
        )
        .await
    }
}

/// The line of `devices`, its storage into SQLite unless `store` says otherwise (then
/// `backends` are its storage backends).
fn write_line(
    dir: &Path,
    mqtt_port: u16,
    devices: &[Counter],
    store: Option<(Store, &str)>,
) -> anyhow::Result<Line> {
    let [
        adapter_grpc,
        adapter_http,
        processor_grpc,
        processor_http,
        storage_grpc,
        storage_http,
    ] = [
        kit::free_addr()?,
        kit::free_addr()?,
        kit::free_addr()?,
        kit::free_addr()?,
        kit::free_addr()?,
        kit::free_addr()?,
    ];
    let db = dir.join("line.db");
    let mut yaml = format!(
        "line: faults\n\
         mqtt: {{ address: \"127.0.0.1:{mqtt_port}\", keep_alive: 5s }}\n\
         adapter: {{ grpc_listen: \"{adapter_grpc}\", http_listen: \"{adapter_http}\", state_dir: \"{state}\", outbox: {{ resend_after: 5s }} }}\n\
         processor: {{ grpc_listen: \"{processor_grpc}\", http_listen: \"{processor_http}\", storage_url: \"http://{storage_grpc}\", adapter_url: \"http://{adapter_grpc}\", client_id: faults-processor }}\n\
         storage:\n  grpc_listen: \"{storage_grpc}\"\n  http_listen: \"{storage_http}\"\n{{STORAGE}}\n\
         device_types:\n  counter:\n    plugins:\n      - {{ builtin: counter, input: n, delta: n_delta }}\n      - {{ builtin: runtime, input: n, output: n_hours }}\n    alarms:\n      - {{ name: n-high, tag: n, kind: high, limit: {ALARM_AT}, priority: low }}\n    rules:\n      - {{ kind: hysteresis, name: lamp-on, input: level, output: lamp, setpoint: {LEVEL_HIGH}, band: 1, action: on_above }}\n\
         devices:\n",
        state = dir.join("adapter-state").display(),
    );
    for (i, d) in devices.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{ name: d{i:02}, type: counter, protocol: modbus-tcp, endpoint: \"{}\", poll_interval: 100ms, tags: [ {{ name: n, address: \"holding:0\", type: u16 }}, {{ name: level, address: \"input:0\", type: u16 }}, {{ name: lamp, address: \"coil:0\", type: bool, writable: true }} ] }}\n",
            d.addr
        ));
    }
    let config = dir.join("line.yaml");
    let sqlite = format!("  sql: {{ url: \"sqlite://{}\" }}", db.display());
    let (store, backends) = match store {
        Some((store, backends)) => (store, backends.to_string()),
        None => (Store::Sqlite(db.clone()), sqlite),
    };
    let line = Line {
        dir: dir.to_path_buf(),
        config,
        template: yaml,
        db,
        store,
        adapter_http,
        processor_http,
        storage_http,
    };
    line.set_storage(&backends)?;
    Ok(line)
}

/// The numbers stored per device.
async fn stored(store: &Store) -> anyhow::Result<Vec<BTreeSet<u64>>> {
    let mut per_device = vec![BTreeSet::new(); DEVICES];
    match store {
        Store::Sqlite(db) => {
            let pool =
                sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await?;
            let rows: Vec<(String, Option<f64>)> = sqlx::query_as(
                "SELECT device, value_num FROM samples WHERE line = 'faults' AND tag = 'n' AND value_num IS NOT NULL",
            )
            .fetch_all(&pool)
            .await?;
            pool.close().await;
            for (device, value) in rows {
                let i: usize = device.trim_start_matches('d').parse()?;
                if let Some(v) = value {
                    per_device[i].insert(v as u64);
                }
            }
        }
        Store::Influx(url) => {
            for (i, numbers) in per_device.iter_mut().enumerate() {
                let answer = kit::influx_query_at(
                    url,
                    "fl",
                    &format!("SELECT \"n\" FROM \"d{i:02}\" WHERE \"line\" = 'faults'"),
                )
                .await?;
                let values = answer["results"][0]["series"][0]["values"]
                    .as_array()
                    .cloned();
                for row in values.unwrap_or_default() {
                    if let Some(v) = row[1].as_f64() {
                        numbers.insert(v as u64);
                    }
                }
            }
        }
    }
    Ok(per_device)
}

/// How the stored numbers compare with what the devices served.
#[derive(Debug, Default)]
struct Ledger {
    served: u64,
    stored: u64,
    /// Served numbers not stored.
    lost: Vec<(usize, u64)>,
    /// Stored numbers never served.
    invented: Vec<(usize, u64)>,
}

async fn ledger(store: &Store, devices: &[Counter]) -> anyhow::Result<Ledger> {
    let stored = stored(store).await?;
    let mut ledger = Ledger::default();
    for (i, d) in devices.iter().enumerate() {
        let served = d.served.load(Ordering::SeqCst);
        ledger.served += served;
        ledger.stored += stored[i].len() as u64;
        ledger.lost.extend(
            (1..=served)
                .filter(|n| !stored[i].contains(n))
                .map(|n| (i, n)),
        );
        ledger
            .invented
            .extend(stored[i].iter().filter(|n| **n > served).map(|n| (i, *n)));
    }
    Ok(ledger)
}

async fn metric(http: SocketAddr, name: &str) -> f64 {
    match kit::http_get(&format!("http://{http}/metrics")).await {
        Ok((200, page)) => kit::metric_value(&page, name).unwrap_or(0.0),
        _ => 0.0,
    }
}

/// Waits until the line has stored `more` readings beyond what it had.
async fn progressing(line: &Line, more: u64) -> anyhow::Result<()> {
    let before: u64 = stored(&line.store)
        .await?
        .iter()
        .map(|s| s.len() as u64)
        .sum();
    kit::wait_for(
        Duration::from_secs(60),
        "the line storing again",
        || async {
            let now: u64 = stored(&line.store)
                .await
                .ok()?
                .iter()
                .map(|s| s.len() as u64)
                .sum();
            (now >= before + more).then_some(())
        },
    )
    .await
}

/// One scenario's line of the printed table.
struct Row {
    name: String,
    /// Readings the devices gave during the scenario.
    served: u64,
    /// How long after the fault ended the line stored again.
    recovered_s: f64,
    /// Peak resident memory of the adapter, processor and storage running at its end (MiB).
    rss_mib: [f64; 3],
    /// Most bytes the adapter's outbox held during it.
    outbox_peak: u64,
}

/// What the table's rows are measured against.
struct Watch {
    served: u64,
    outbox_peak: Arc<AtomicU64>,
}

impl Watch {
    /// Samples the adapter's outbox size every 250 ms, whichever adapter process is running.
    fn start(adapter_http: SocketAddr) -> Self {
        let outbox_peak = Arc::new(AtomicU64::new(0));
        let peak = outbox_peak.clone();
        tokio::spawn(async move {
            loop {
                let bytes = metric(adapter_http, "fieldline_adapter_outbox_bytes").await;
                peak.fetch_max(bytes as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self {
            served: 0,
            outbox_peak,
        }
    }

    /// The row of a scenario that ends now; the next one is measured from here.
    fn row(
        &mut self,
        name: &str,
        back: Instant,
        devices: &[Counter],
        processes: [&ServiceProcess; 3],
    ) -> Row {
        let served: u64 = devices
            .iter()
            .map(|d| d.served.load(Ordering::SeqCst))
            .sum();
        let row = Row {
            name: name.to_string(),
            served: served - self.served,
            recovered_s: back.elapsed().as_secs_f64(),
            rss_mib: processes.map(peak_rss_mib),
            outbox_peak: self.outbox_peak.swap(0, Ordering::SeqCst),
        };
        self.served = served;
        row
    }
}

/// Peak resident memory of a running process (VmHWM), in MiB; 0 when it cannot be read.
fn peak_rss_mib(process: &ServiceProcess) -> f64 {
    let status = process
        .pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn print_table(outage: Duration, rows: &[Row], ledger: &Ledger, rows_stored: u64) {
    println!(
        "\n| scenario | outage | readings served | recovered after the fault ended | peak RSS adapter / processor / storage | outbox peak |\n|---|---|---|---|---|---|"
    );
    for r in rows {
        println!(
            "| {} | {} s | {} | {:.1} s | {:.1} / {:.1} / {:.1} MiB | {:.1} MiB |",
            r.name,
            outage.as_secs(),
            r.served,
            r.recovered_s,
            r.rss_mib[0],
            r.rss_mib[1],
            r.rss_mib[2],
            r.outbox_peak as f64 / f64::from(1u32 << 20)
        );
    }
    println!(
        "\nreadings served {}, stored {}, lost {}, stored twice {}, invented {}",
        ledger.served,
        ledger.stored,
        ledger.lost.len(),
        rows_stored.saturating_sub(ledger.stored),
        ledger.invented.len()
    );
}

/// Rows (SQLite) or points (InfluxDB) of `n`, counting any reading stored twice.
async fn stored_rows(store: &Store) -> anyhow::Result<u64> {
    match store {
        Store::Sqlite(db) => {
            let pool =
                sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await?;
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM samples WHERE line = 'faults' AND tag = 'n' AND value_num IS NOT NULL",
            )
            .fetch_one(&pool)
            .await?;
            pool.close().await;
            Ok(u64::try_from(n)?)
        }
        Store::Influx(url) => {
            let answer = kit::influx_query_at(
                url,
                "fl",
                "SELECT COUNT(\"n\") FROM /^d[0-9]+$/ WHERE \"line\" = 'faults'",
            )
            .await?;
            Ok(answer["results"][0]["series"]
                .as_array()
                .map(|series| {
                    series
                        .iter()
                        .filter_map(|s| s["values"][0][1].as_u64())
                        .sum()
                })
                .unwrap_or(0))
        }
    }
}

/// One stored timestamp of a device: its reading and what the plugins derived from it.
#[derive(Default)]
struct Derivation {
    ts: i64,
    n: Option<f64>,
    delta: Option<f64>,
    hours: Option<f64>,
}

/// Checks the plugins' derived values against the stored readings, exactly as one
/// uninterrupted run would compute them (a batch processed twice, or with another batch's
/// state, would give something else):
/// - the counter's `n_delta` is the increase since the device's previous stored reading; only
///   a device's very first reading has none (the counter's baseline);
/// - the runtime's `n_hours` (the count is never 0, so the device always runs) is the time
///   since the device's first reading: a processor restarted without its plugins' state would
///   start again from 0.
///
/// Returns the number of derived values checked.
async fn check_derived(db: &Path) -> anyhow::Result<usize> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await?;
    let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(
        "SELECT device, tag, ts_ns, value_num FROM samples WHERE line = 'faults' AND tag IN ('n', 'n_delta', 'n_hours') AND value_num IS NOT NULL ORDER BY device, ts_ns",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let mut checked = 0;
    let mut per_device: std::collections::BTreeMap<String, Vec<Derivation>> =
        std::collections::BTreeMap::new();
    for (device, tag, ts, value) in rows {
        let readings = per_device.entry(device).or_default();
        if readings.last().is_none_or(|r| r.ts != ts) {
            readings.push(Derivation {
                ts,
                ..Derivation::default()
            });
        }
        if let Some(last) = readings.last_mut() {
            match tag.as_str() {
                "n" => last.n = Some(value),
                "n_delta" => last.delta = Some(value),
                _ => last.hours = Some(value),
            }
        }
    }
    for (device, readings) in &per_device {
        let mut baselines = 0;
        let mut previous: Option<f64> = None;
        let first_ts = readings.first().map_or(0, |r| r.ts);
        for r in readings {
            let ts = r.ts;
            let Some(n) = r.n else {
                anyhow::bail!("{device}: a derived value at {ts} without its reading");
            };
            match (previous, r.delta) {
                (Some(p), Some(d)) => {
                    anyhow::ensure!(
                        d == n - p,
                        "{device} at {ts}: n_delta {d}, but the reading went from {p} to {n}"
                    );
                    checked += 1;
                }
                (None, Some(d)) => {
                    anyhow::bail!("{device} at {ts}: n_delta {d} before any reading")
                }
                (_, None) => baselines += 1,
            }
            previous = Some(n);
            let expected = (ts - first_ts) as f64 / 3.6e12;
            match r.hours {
                Some(h) if (h - expected).abs() < 1e-9 => checked += 1,
                Some(h) => anyhow::bail!(
                    "{device} at {ts}: n_hours {h}, but it has run {expected} h since its first reading"
                ),
                None => anyhow::bail!("{device} at {ts}: a reading without n_hours"),
            }
        }
        anyhow::ensure!(
            baselines == 1,
            "{device}: {baselines} readings without a delta, one expected"
        );
    }
    Ok(checked)
}

/// Each device's alarm went from normal to unacknowledged once, and stayed so: a processor
/// that restarted without its state would raise it again.
async fn check_alarms(db: &Path) -> anyhow::Result<()> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await?;
    let events: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT alarm_id, seq, from_state, to_state FROM alarm_events WHERE line = 'faults' ORDER BY alarm_id, seq",
    )
    .fetch_all(&pool)
    .await?;
    let states: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT alarm_id, state, last_seq FROM alarm_state WHERE line = 'faults' ORDER BY alarm_id",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let expected_events: Vec<(String, i64, String, String)> = (0..DEVICES)
        .map(|i| {
            (
                format!("faults/d{i:02}/n-high"),
                1,
                "normal".to_string(),
                "unacked_active".to_string(),
            )
        })
        .collect();
    assert_eq!(events, expected_events, "alarm transitions");
    let expected_states: Vec<(String, String, i64)> = (0..DEVICES)
        .map(|i| {
            (
                format!("faults/d{i:02}/n-high"),
                "unacked_active".to_string(),
                1,
            )
        })
        .collect();
    assert_eq!(states, expected_states, "alarm states");
    Ok(())
}

/// Each device's lamp was written once, and its one audit row says so: the processor that
/// restarted and processed the batches that asked for the writes again did not write again.
async fn check_writes(db: &Path, devices: &[Counter]) -> anyhow::Result<()> {
    let writes: Vec<u64> = devices
        .iter()
        .map(|d| d.writes.load(Ordering::SeqCst))
        .collect();
    assert_eq!(writes, vec![1; DEVICES], "writes each device took");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await?;
    let audit: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT device, tag, source, status FROM command_audit WHERE line = 'faults' ORDER BY device",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let expected: Vec<(String, String, String, String)> = (0..DEVICES)
        .map(|i| {
            (
                format!("d{i:02}"),
                "lamp".to_string(),
                "lamp-on".to_string(),
                "verified".to_string(),
            )
        })
        .collect();
    assert_eq!(audit, expected, "the write audit");
    Ok(())
}

/// How long each fault lasts: 8 s, or 5 minutes with `FIELDLINE_FAULTS=long`.
fn outage() -> Duration {
    if std::env::var("FIELDLINE_FAULTS").is_ok_and(|v| v == "long") {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(8)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_is_stored_once_whatever_crashes() -> anyhow::Result<()> {
    let outage = outage();
    let dir = tempfile::tempdir()?;
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let level = Arc::new(AtomicU16::new(0));
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        devices.push(counter(silent.clone(), level.clone()).await?);
    }
    let port = kit::free_addr()?.port();
    let mut broker = Broker::new(dir.path(), port)?;
    broker.start().await?;
    let line = write_line(dir.path(), port, &devices, None)?;
    let mut storage = line.storage().await?;
    let mut processor = line.processor().await?;
    let mut adapter = line.adapter().await?;
    progressing(&line, 200).await?;
    let mut table = Vec::new();
    let mut watch = Watch::start(line.adapter_http);

    // 1. The broker crashes and comes back on its persistence folder.
    broker.kill().await?;
    tokio::time::sleep(outage).await;
    broker.start().await?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    table.push(watch.row(
        "broker kill -9, restarted on its folder",
        back,
        &devices,
        [&adapter, &processor, &storage],
    ));

    // 2. The broker crashes and forgets everything.
    broker.kill().await?;
    broker.wipe()?;
    tokio::time::sleep(outage).await;
    broker.start().await?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    table.push(watch.row(
        "broker kill -9, folder wiped",
        back,
        &devices,
        [&adapter, &processor, &storage],
    ));

    // 3. The adapter is killed while the broker is down; both come back.
    broker.kill().await?;
    tokio::time::sleep(outage / 2).await;
    let at_kill: Vec<u64> = devices
        .iter()
        .map(|d| d.served.load(Ordering::SeqCst))
        .collect();
    adapter.kill().await?;
    let after_kill: Vec<u64> = devices
        .iter()
        .map(|d| d.served.load(Ordering::SeqCst))
        .collect();
    adapter = line.adapter().await?;
    tokio::time::sleep(outage / 2).await;
    broker.start().await?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    table.push(watch.row(
        "adapter kill -9 during a broker outage",
        back,
        &devices,
        [&adapter, &processor, &storage],
    ));

    // 4. Storage hangs with batches in flight; the processor is killed and restarted. Every
    //    alarm has been raised by then, so the restarted processor must raise none again.
    kit::wait_for(Duration::from_secs(30), "every alarm raised", || async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", line.db.display()))
            .await
            .ok()?;
        let (raised,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM alarm_state WHERE line = 'faults' AND state = 'unacked_active'",
        )
        .fetch_one(&pool)
        .await
        .ok()?;
        pool.close().await;
        (raised == DEVICES as i64).then_some(())
    })
    .await?;
    //    The line first catches up with what the earlier faults held back (within 2 s of
    //    polling): the processor takes no more than the broker's in-flight window of
    //    batches that storage has not acknowledged, so behind a backlog it would not see
    //    the level go high while storage hangs.
    kit::wait_for(
        outage.max(Duration::from_secs(120)),
        "the line to catch up",
        || async {
            let l = ledger(&line.store, &devices).await.ok()?;
            (l.served.saturating_sub(l.stored) <= 2 * 10 * DEVICES as u64).then_some(())
        },
    )
    .await?;
    //    While storage hangs, the level goes high and the rule switches every lamp on: the
    //    batches that asked for those writes are processed, not stored, when the processor
    //    dies. The restarted one processes them again and must not write again.
    storage.pause()?;
    let frozen = Instant::now();
    level.store(LEVEL_HIGH + 10, Ordering::SeqCst);
    kit::wait_for(
        Duration::from_secs(30),
        "every lamp switched on",
        || async {
            devices
                .iter()
                .all(|d| d.writes.load(Ordering::SeqCst) >= 1)
                .then_some(())
        },
    )
    .await?;
    tokio::time::sleep((outage / 2).saturating_sub(frozen.elapsed())).await;
    processor.kill().await?;
    processor = line.processor().await?;
    tokio::time::sleep(outage / 2).await;
    storage.resume()?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    // The restarted processor asked again for each lamp (the batch that asked is processed
    // again), and the adapter answered from memory.
    kit::wait_for(
        Duration::from_secs(30),
        "every lamp asked for again",
        || async {
            let page = match kit::http_get(&format!("http://{}/metrics", line.adapter_http)).await
            {
                Ok((200, page)) => page,
                _ => return None,
            };
            (0..DEVICES)
                .all(|i| {
                    kit::metric_value(
                        &page,
                        &format!(
                            "fieldline_adapter_writes_total{{device=\"d{i:02}\",outcome=\"repeated\"}} "
                        ),
                    ) == Some(1.0)
                })
                .then_some(())
        },
    )
    .await?;
    table.push(watch.row(
        "storage frozen, processor kill -9",
        back,
        &devices,
        [&adapter, &processor, &storage],
    ));

    // 5. Storage is killed with batches in flight and restarted.
    storage.kill().await?;
    tokio::time::sleep(outage / 2).await;
    storage = line.storage().await?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    table.push(watch.row(
        "storage kill -9",
        back,
        &devices,
        [&adapter, &processor, &storage],
    ));

    // 6. The adapter is stopped (SIGTERM, as for a rolling update) during a broker outage.
    broker.kill().await?;
    tokio::time::sleep(outage / 2).await;
    let stopped = adapter.terminate().await;
    if !matches!(stopped, Ok(Some(0))) {
        anyhow::bail!(
            "the adapter did not stop cleanly ({stopped:?}); it printed:\n{}",
            adapter.stdout().await
        );
    }
    adapter = line.adapter().await?;
    tokio::time::sleep(outage / 2).await;
    broker.start().await?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    table.push(watch.row(
        "adapter stopped (SIGTERM) during a broker outage",
        back,
        &devices,
        [&adapter, &processor, &storage],
    ));

    // The devices fall silent, so what they served is final; the adapter keeps running and
    // sends again whatever storage does not have yet.
    silent.store(true, Ordering::SeqCst);
    // The polls the killed adapter had in hand when it died (read, not yet in its outbox)
    // are the only readings a kill -9 may cost: at most one per device.
    let in_hand: Vec<(usize, u64)> = at_kill
        .iter()
        .zip(&after_kill)
        .enumerate()
        .flat_map(|(i, (a, b))| (a.saturating_sub(1)..=*b).map(move |n| (i, n)))
        .collect();
    let result = kit::wait_for(
        outage.max(Duration::from_secs(120)),
        "every reading stored",
        || async {
            let l = ledger(&line.store, &devices).await.ok()?;
            l.lost
                .iter()
                .all(|lost| in_hand.contains(lost))
                .then_some(l)
        },
    )
    .await;
    let ledger = match result {
        Ok(l) => l,
        Err(e) => {
            let l = ledger(&line.store, &devices).await?;
            let log = std::fs::read_to_string(line.dir.join("mosquitto.log")).unwrap_or_default();
            anyhow::bail!(
                "{e}: {} of {} readings stored; lost (device, number), first 20: {:?}\nadapter log:\n{}\nprocessor log:\n{}\nbroker log (end):\n{}",
                l.stored,
                l.served,
                &l.lost[..l.lost.len().min(20)],
                adapter.stdout().await,
                processor.stdout().await,
                &log[log.len().saturating_sub(4000)..]
            );
        }
    };
    assert!(
        ledger.invented.is_empty(),
        "stored readings no device gave: {:?}",
        ledger.invented
    );
    let outbox_dropped = metric(line.adapter_http, "fieldline_adapter_outbox_dropped_total").await;
    let queue_dropped = metric(line.adapter_http, "fieldline_adapter_batches_dropped_total").await;
    assert_eq!(outbox_dropped, 0.0, "the outbox dropped batches");
    assert_eq!(queue_dropped, 0.0, "the publish queue dropped batches");
    let duplicates = metric(
        line.processor_http,
        "fieldline_processor_batches_duplicate_total",
    )
    .await;
    // One baseline per device, from the processor's first start: the restarted one resumed
    // each counter from its saved state.
    let deltas = check_derived(&line.db).await?;
    check_alarms(&line.db).await?;
    check_writes(&line.db, &devices).await?;
    // The database keeps a transition once whatever is sent again; what the restarted
    // processor published tells whether it raised an alarm a second time.
    let raised_again = metric(
        line.processor_http,
        "fieldline_processor_alarm_events_total",
    )
    .await;
    assert_eq!(
        raised_again, 0.0,
        "alarms raised again after the processor's restart"
    );
    let rows_stored = stored_rows(&line.store).await?;
    print_table(outage, &table, &ledger, rows_stored);
    println!(
        "lost: only readings in the killed adapter's hands; redeliveries the processor dropped since its restart {duplicates}; derived values checked {deltas}"
    );
    assert_eq!(rows_stored, ledger.stored, "readings stored twice");
    adapter.terminate().await?;
    processor.terminate().await?;
    storage.terminate().await?;
    broker.kill().await?;
    Ok(())
}

/// The databases go down under the running line, each for the outage, first with storage
/// holding batches unacknowledged (no buffer: the processor and the adapter's outbox keep
/// them), then with storage's write-ahead buffer, and storage is killed (-9) while it replays
/// the buffer. Nothing is lost or stored twice, and the alarms raised meanwhile reach MariaDB
/// through the buffer. InfluxDB and MariaDB are private instances of this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_down_cost_nothing_with_or_without_the_buffer() -> anyhow::Result<()> {
    let outage = outage();
    let dir = tempfile::tempdir()?;
    let mut influx = kit::PrivateServer::influxdb(dir.path()).await?;
    let mut maria = kit::PrivateServer::mariadb(dir.path()).await?;
    let maria_url = format!("mysql://root@127.0.0.1:{}", maria.port);
    let pool = sqlx::MySqlPool::connect(&format!("{maria_url}/mysql")).await?;
    sqlx::query("CREATE DATABASE IF NOT EXISTS test")
        .execute(&pool)
        .await?;
    pool.close().await;
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let level = Arc::new(AtomicU16::new(0));
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        devices.push(counter(silent.clone(), level.clone()).await?);
    }
    let port = kit::free_addr()?.port();
    let mut broker = Broker::new(dir.path(), port)?;
    broker.start().await?;
    let influx_url = format!("http://127.0.0.1:{}", influx.port);
    let backends = format!(
        "  influx: {{ url: \"{influx_url}\", database: fl, timeout: 2s }}\n  sql: {{ url: \"{maria_url}/test\" }}"
    );
    let buffered = format!(
        "{backends}\n  buffer: {{ dir: \"{}\", max_size: 256MiB }}\n  batch: {{ max_points: 50 }}",
        dir.path().join("buffer").display()
    );
    let line = write_line(
        dir.path(),
        port,
        &devices,
        Some((Store::Influx(influx_url.clone()), backends.as_str())),
    )?;
    let mut storage = line.storage().await?;
    let mut processor = line.processor().await?;
    let mut adapter = line.adapter().await?;
    progressing(&line, 200).await?;
    let mut table = Vec::new();
    let mut watch = Watch::start(line.adapter_http);

    // 1. Without a buffer: MariaDB down, then InfluxDB down.
    maria.kill().await;
    tokio::time::sleep(outage).await;
    maria.start().await?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    table.push(watch.row(
        "MariaDB down, no buffer",
        back,
        &devices,
        [&adapter, &processor, &storage],
    ));
    influx.kill().await;
    tokio::time::sleep(outage).await;
    influx.start().await?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    table.push(watch.row(
        "InfluxDB down, no buffer",
        back,
        &devices,
        [&adapter, &processor, &storage],
    ));

    // 2. Storage restarted with its write-ahead buffer; the same outages.
    storage.terminate().await?;
    line.set_storage(&buffered)?;
    storage = line.storage().await?;
    maria.kill().await;
    tokio::time::sleep(outage).await;
    maria.start().await?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    table.push(watch.row(
        "MariaDB down, buffered",
        back,
        &devices,
        [&adapter, &processor, &storage],
    ));
    influx.kill().await;
    tokio::time::sleep(outage).await;
    influx.start().await?;
    // 3. Storage killed (-9) while it replays what it buffered, and restarted.
    let replaying = kit::wait_for(Duration::from_secs(60), "a replay under way", || async {
        let replayed = metric(
            line.storage_http,
            "fieldline_storage_buffer_replayed_batches_total",
        )
        .await;
        let pending = metric(
            line.storage_http,
            "fieldline_storage_buffer_pending_batches",
        )
        .await;
        (replayed > 0.0 && pending > 0.0).then_some(())
    })
    .await;
    let killed_in_replay = replaying.is_ok();
    storage.kill().await?;
    storage = line.storage().await?;
    let back = Instant::now();
    progressing(&line, 200).await?;
    let name = if killed_in_replay {
        "InfluxDB down, buffered; storage kill -9 during the replay"
    } else {
        "InfluxDB down, buffered; storage kill -9 (the replay had ended)"
    };
    table.push(watch.row(name, back, &devices, [&adapter, &processor, &storage]));

    silent.store(true, Ordering::SeqCst);
    let result = kit::wait_for(
        outage.max(Duration::from_secs(120)),
        "every reading stored",
        || async {
            let l = ledger(&line.store, &devices).await.ok()?;
            l.lost.is_empty().then_some(l)
        },
    )
    .await;
    let ledger = match result {
        Ok(l) => l,
        Err(e) => {
            let l = ledger(&line.store, &devices).await?;
            anyhow::bail!(
                "{e}: {} of {} readings stored; lost (device, number), first 20: {:?}\nprocessor log:\n{}\nstorage log:\n{}",
                l.stored,
                l.served,
                &l.lost[..l.lost.len().min(20)],
                processor.stdout().await,
                storage.stdout().await,
            );
        }
    };
    assert!(
        ledger.invented.is_empty(),
        "stored readings no device gave: {:?}",
        ledger.invented
    );
    // Each number once: InfluxDB keeps one point per timestamp, so count the points too.
    let points = stored_rows(&line.store).await?;
    assert_eq!(points, ledger.stored, "points in InfluxDB");
    assert!(killed_in_replay, "storage was not killed during a replay");

    // The alarms, raised while the line ran through this, are in MariaDB once each.
    let pool = sqlx::MySqlPool::connect(&format!("{maria_url}/test")).await?;
    let raised: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT alarm_id, state, last_seq FROM alarm_state WHERE line = 'faults' ORDER BY alarm_id",
    )
    .fetch_all(&pool)
    .await?;
    let expected: Vec<(String, String, i64)> = (0..DEVICES)
        .map(|i| {
            (
                format!("faults/d{i:02}/n-high"),
                "unacked_active".to_string(),
                1,
            )
        })
        .collect();
    assert_eq!(raised, expected, "alarm states in MariaDB");
    let (events,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM alarm_events WHERE line = 'faults'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(events, DEVICES as i64, "alarm transitions in MariaDB");
    pool.close().await;

    print_table(outage, &table, &ledger, points);
    adapter.terminate().await?;
    processor.terminate().await?;
    storage.terminate().await?;
    broker.kill().await?;
    Ok(())
}
