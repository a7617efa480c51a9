//! `fieldline-bench storage`: sustained points/s into InfluxDB and rows/s into MariaDB, first
//! through `fieldline-storage`, then through a Python writer of the usual kind (the
//! `influxdb` client's `write_points`, pymysql `executemany` upserts), on the same servers
//! and machine.
//!
//! The bench process is Fieldline's client: it sends N devices × M tags every interval as
//! `StorageService.Ingest` requests (one per device and interval, typed values, advancing
//! timestamps, a sequence per device) and keeps a bounded window of unacknowledged requests,
//! as the processor does. Only the storage process is measured. The Python writer generates
//! the same points in its own process, so a third run that only generates them measures
//! that share, which is then subtracted. After each run the bench counts what landed in
//! InfluxDB and checks that `latest_values` holds the newest value of every tag, then drops
//! the databases it made.
//!
//! Build first: `cargo build --release -p fieldline-storage -p fieldline-bench`; the storage
//! binary is taken from the bench binary's own folder.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use fieldline_proto::v1::{self, storage_service_client::StorageServiceClient};
use fieldline_runtime::CancellationToken;
use sqlx::MySqlPool;
use tokio::{
    process::{Child, Command},
    sync::{Semaphore, mpsc},
};
use tokio_stream::wrappers::ReceiverStream;

use crate::measure::{self, Measured, Probe, Reported, free_addr, measure, terminate};

/// The line every simulated device belongs to.
const LINE: &str = "bench";
/// Storage's grouping of received batches into backend writes; the Python writer batches
/// the same way.
const BATCH_POINTS: usize = 20_000;
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// The schema storage migrates MariaDB to; the Python writer's database gets the same.
const MYSQL_SCHEMA: &str =
    include_str!("../../services/storage/migrations/mysql/0001_devices_tags_latest.sql");

#[derive(clap::Args)]
pub struct StorageArgs {
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Tags per device; each interval every device sends one sample of each.
    #[arg(long, default_value_t = 125)]
    tags: usize,
    #[arg(long, default_value = "25ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Measured seconds per writer (after a warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Most unacknowledged Ingest requests the client keeps in flight.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// InfluxDB 1.x server; each writer gets its own database there, dropped afterwards.
    #[arg(long, default_value = "http://127.0.0.1:8086")]
    influx: String,
    /// MariaDB server (user with CREATE and DROP); each writer gets its own database there,
    /// dropped afterwards.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql: String,
    /// Python of the venv with `influxdb` and `pymysql` (tests/backends.sh makes it).
    #[arg(long, default_value = "/var/tmp/fieldline-backends/venv/bin/python")]
    python: PathBuf,
    /// Skip the Python writer.
    #[arg(long)]
    no_python: bool,
}

impl StorageArgs {
    fn target(&self) -> f64 {
        (self.devices * self.tags) as f64 / self.interval.as_secs_f64()
    }
}

/// A writer's measured window and what it left in the databases.
struct Run {
    measured: Measured,
    landed: Landed,
}

/// What the databases hold after a run, and how long the writes to them took.
struct Landed {
    /// Mean time of one write to InfluxDB and to MariaDB.
    influx_write: Option<Duration>,
    mysql_write: Option<Duration>,
    /// Samples the writer reported stored (acknowledged, or written by Python) in the run.
    stored: u64,
    /// Field values InfluxDB holds for the run.
    influx_points: u64,
    /// `latest_values` rows of the line, and how many of them hold the newest sample sent.
    rows: u64,
    current_rows: u64,
    expected_rows: u64,
}

pub async fn run(args: StorageArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.tags == 0 {
        bail!("--devices and --tags must be at least 1");
    }
    println!(
        "Storage: {} devices × {} tags every {} ms (target {:.0} points/s) into InfluxDB and MariaDB, {} s measured each, {} cores",
        args.devices,
        args.tags,
        args.interval.as_millis(),
        args.target(),
        args.seconds,
        measure::cores()
    );
    let admin = MySqlPool::connect(&args.mysql)
        .await
        .with_context(|| format!("connecting to MariaDB at {}", args.mysql))?;
    let stats = RowStats::enable(&admin).await;
    let mut runs = Vec::new();
    let mut generation = None;
    let fieldline = Names::new("fieldline_bench");
    let outcome = async {
        runs.push(run_storage(&args, &admin, &stats, &fieldline).await?);
        if !args.no_python {
            let python = Names::new("fieldline_bench_py");
            let run = run_python(&args, &admin, &stats, &python).await;
            python.drop_all(&args, &admin).await;
            runs.push(run?);
            generation = Some(run_generation_only(&args).await?);
        }
        anyhow::Ok(())
    }
    .await;
    fieldline.drop_all(&args, &admin).await;
    stats.restore(&admin).await;
    outcome?;
    report(&args, &runs, generation.as_ref());
    Ok(())
}

fn report(args: &StorageArgs, runs: &[Run], generation: Option<&Measured>) {
    let mut rows: Vec<&Measured> = runs.iter().map(|r| &r.measured).collect();
    // The Python writer's CPU less what generating the points costs it, per point.
    let net = match (runs.get(1), generation) {
        (Some(python), Some(generation)) => {
            let p = &python.measured;
            let cpu_s = p.cpu_s - generation.cpu_per_million() * p.points / 1e6;
            Some(Measured {
                name: "python, generation subtracted",
                cpu_s,
                rows_per_s: None,
                ..*p
            })
        }
        _ => None,
    };
    rows.extend(generation);
    rows.extend(net.as_ref());
    println!();
    measure::print_table("writer", rows);
    println!();
    println!(
        "{:<34} {:>14} {:>14} {:>14} {:>24} {:>20}",
        "writer",
        "samples stored",
        "in InfluxDB",
        "MariaDB rows/s",
        "latest_values current",
        "ms/write Influx/SQL"
    );
    let ms =
        |d: Option<Duration>| d.map_or("n/a".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
    for r in runs {
        let l = &r.landed;
        println!(
            "{:<34} {:>14} {:>14} {:>14} {:>24} {:>20}",
            r.measured.name,
            l.stored,
            l.influx_points,
            r.measured
                .rows_per_s
                .map_or("n/a".into(), |v| format!("{v:.0}")),
            format!("{}/{} (rows {})", l.current_rows, l.expected_rows, l.rows),
            format!("{} / {}", ms(l.influx_write), ms(l.mysql_write))
        );
    }
    println!();
    if let Some(fieldline) = runs.first() {
        let m = &fieldline.measured;
        let met = m.core_percent() < 10.0 && m.points_per_s >= 0.95 * args.target();
        println!(
            "Target (storage under 10% of one core at {:.0} points/s): {} ({:.0} points/s at {:.2}% of a core; \
             its CPU per point would take {:.1}% of a core at {:.0} points/s)",
            args.target(),
            if met { "met" } else { "NOT met" },
            m.points_per_s,
            m.core_percent(),
            m.cpu_per_million() * args.target() / 1e6 * 100.0,
            args.target()
        );
    }
    if let (Some(fieldline), Some(python)) = (runs.first(), runs.get(1)) {
        let f = fieldline.measured.cpu_per_million();
        print!(
            "CPU per point, Python / Fieldline: {:.1}× with Python's point generation",
            python.measured.cpu_per_million() / f
        );
        match &net {
            Some(net) => println!(", {:.1}× without it", net.cpu_per_million() / f),
            None => println!(),
        }
    }
    for note in [
        "Fieldline: only the storage process is measured; the bench process generates the points, encodes them and sends them over gRPC.",
        "Python: one process generates and writes; the generate-only run measures the generation share, subtracted per point.",
        "Fieldline gzips its InfluxDB writes; the influxdb client by default does not.",
        "MariaDB rows/s: rows changed in the writer's latest_values (information_schema.TABLE_STATISTICS).",
        "ms/write: mean time of one group write (storage's write_duration_seconds; timed in the Python writer).",
    ] {
        println!("  {note}");
    }
}

/// Database names unique to one writer of one bench process.
struct Names {
    database: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            database: format!("{prefix}_{}", std::process::id()),
        }
    }

    async fn create_mysql(&self, admin: &MySqlPool) -> anyhow::Result<()> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE `{}`",
            self.database
        )))
        .execute(admin)
        .await
        .with_context(|| format!("creating MariaDB database {}", self.database))?;
        Ok(())
    }

    /// Drops the writer's InfluxDB and MariaDB databases; what is not there is skipped.
    async fn drop_all(&self, args: &StorageArgs, admin: &MySqlPool) {
        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{}`",
            self.database
        )))
        .execute(admin)
        .await
        {
            eprintln!("cannot drop MariaDB database {}: {error}", self.database);
        }
        if let Err(error) = influx_query(
            &args.influx,
            None,
            &format!("DROP DATABASE \"{}\"", self.database),
        )
        .await
        {
            eprintln!("cannot drop InfluxDB database {}: {error}", self.database);
        }
    }
}

/// Rows changed per table, from MariaDB's user statistics. They are switched on for the
/// bench when they are off, and switched off again afterwards.
struct RowStats {
    available: bool,
    switched_on: bool,
}

impl RowStats {
    async fn enable(admin: &MySqlPool) -> Self {
        let on: Option<i64> = sqlx::query_scalar("SELECT CAST(@@global.userstat AS SIGNED)")
            .fetch_one(admin)
            .await
            .ok();
        match on {
            Some(1) => Self {
                available: true,
                switched_on: false,
            },
            Some(_) => {
                let switched = sqlx::raw_sql("SET GLOBAL userstat = 1")
                    .execute(admin)
                    .await
                    .is_ok();
                Self {
                    available: switched,
                    switched_on: switched,
                }
            }
            None => Self {
                available: false,
                switched_on: false,
            },
        }
    }

    async fn restore(&self, admin: &MySqlPool) {
        if self.switched_on {
            let _ = sqlx::raw_sql("SET GLOBAL userstat = 0")
                .execute(admin)
                .await;
        }
    }

    /// Rows changed in `database`.latest_values since the statistics were switched on.
    async fn rows_changed(&self, admin: &MySqlPool, database: &str) -> Option<f64> {
        if !self.available {
            return None;
        }
        sqlx::query_scalar::<_, i64>(
            "SELECT CAST(COALESCE(SUM(ROWS_CHANGED), 0) AS SIGNED) FROM information_schema.TABLE_STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'latest_values'",
        )
        .bind(database)
        .fetch_one(admin)
        .await
        .ok()
        .map(|n| n as f64)
    }
}

/// The type of tag `index`: three of five are f64, one i64, one bool.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    F64,
    I64,
    Bool,
}

fn kind(index: usize) -> Kind {
    match index % 5 {
        0..=2 => Kind::F64,
        3 => Kind::I64,
        _ => Kind::Bool,
    }
}

fn tag_name(index: usize) -> String {
    format!("t{index:03}")
}

/// The value of tag `index` at `tick`; the Python writer computes the same.
fn value(index: usize, tick: u64) -> v1::value::Kind {
    match kind(index) {
        Kind::F64 => {
            v1::value::Kind::DoubleValue((tick as f64 * 0.01 + index as f64).sin() * 100.0)
        }
        Kind::I64 => v1::value::Kind::IntValue(tick as i64 * (index as i64 + 1)),
        Kind::Bool => v1::value::Kind::BoolValue((tick + index as u64).is_multiple_of(2)),
    }
}

/// The line document storage runs with: its backends and the simulated devices, whose
/// tags it records in MariaDB.
fn storage_config(
    args: &StorageArgs,
    database: &str,
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
) -> String {
    let mut yaml = format!(
        "line: {LINE}\nstorage:\n  grpc_listen: \"{grpc}\"\n  http_listen: \"{http}\"\n  influx: {{ url: \"{}\", database: {database} }}\n  sql: {{ url: \"{}/{database}\" }}\n  batch: {{ max_points: {BATCH_POINTS}, max_delay: {}ms }}\ndevices:\n",
        args.influx,
        args.mysql.trim_end_matches('/'),
        BATCH_DELAY.as_millis()
    );
    for d in 0..args.devices {
        let _ = write!(
            yaml,
            "  - name: d{d}\n    type: bench\n    protocol: modbus-tcp\n    endpoint: \"127.0.0.1:{}\"\n    poll_interval: {}ms\n    tags:\n",
            15020 + d,
            args.interval.as_millis().max(10)
        );
        let (mut register, mut coil) = (0, 0);
        for t in 0..args.tags {
            let (address, data_type) = match kind(t) {
                Kind::F64 | Kind::I64 => {
                    register += 4;
                    (
                        format!("holding:{}", register - 4),
                        if kind(t) == Kind::F64 { "f64" } else { "i64" },
                    )
                }
                Kind::Bool => {
                    coil += 1;
                    (format!("coil:{}", coil - 1), "bool")
                }
            };
            let _ = writeln!(
                yaml,
                "      - {{ name: {}, address: \"{address}\", type: {data_type} }}",
                tag_name(t)
            );
        }
    }
    yaml
}

/// What the client has seen of the storage service's acknowledgements.
struct Acks {
    /// Samples acknowledged as stored (less any the backends refused).
    stored: AtomicU64,
    /// Samples of batches refused or partly refused.
    refused: AtomicU64,
    /// Source timestamp of the newest samples sent, per device.
    last_ts: Vec<AtomicI64>,
}

impl Acks {
    fn new(devices: usize) -> Self {
        Self {
            stored: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_ts: (0..devices).map(|_| AtomicI64::new(0)).collect(),
        }
    }
}

async fn run_storage(
    args: &StorageArgs,
    admin: &MySqlPool,
    stats: &RowStats,
    names: &Names,
) -> anyhow::Result<Run> {
    names.create_mysql(admin).await?;
    let dir = tempfile::tempdir()?;
    let (grpc, http) = (free_addr()?, free_addr()?);
    let config = dir.path().join("bench.yaml");
    std::fs::write(&config, storage_config(args, &names.database, grpc, http))?;
    let binary = std::env::current_exe()?.with_file_name("fieldline-storage");
    if !binary.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p fieldline-storage -p fieldline-bench`",
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
    let ready = async {
        let url = format!("http://{http}/readyz");
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .context("fieldline-storage did not become ready (are InfluxDB and MariaDB up?)")?;
    let acks = Arc::new(Acks::new(args.devices));
    let stop = CancellationToken::new();
    let client = tokio::spawn(drive(
        format!("http://{grpc}"),
        args.devices,
        args.tags,
        args.interval,
        args.window,
        acks.clone(),
        stop.clone(),
    ));
    let warmed = async {
        while acks.stored.load(Ordering::Relaxed) == 0 && !client.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), warmed)
        .await
        .context("fieldline-storage acknowledged nothing")?;
    let metrics = format!("http://{http}/metrics");
    let before = write_seconds(&metrics).await;
    let measured = measure(&child, args.seconds, "fieldline-storage", || async {
        Probe {
            points: acks.stored.load(Ordering::Relaxed) as f64,
            rows: stats.rows_changed(admin, &names.database).await,
        }
    })
    .await;
    let after = write_seconds(&metrics).await;
    stop.cancel();
    let drained = client.await.context("the Ingest client panicked")?;
    let measured = measured?;
    drained?;
    let refused = acks.refused.load(Ordering::Relaxed);
    if refused > 0 {
        eprintln!("fieldline-storage refused {refused} samples");
    }
    let landed = landed(
        args,
        admin,
        &names.database,
        acks.stored.load(Ordering::Relaxed),
        &acks
            .last_ts
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
    )
    .await?;
    let mean = |sink: &str| {
        let (s0, n0) = before.get(sink).copied().unwrap_or_default();
        let (s1, n1) = after.get(sink).copied()?;
        (n1 > n0).then(|| Duration::from_secs_f64((s1 - s0) / (n1 - n0)))
    };
    let landed = Landed {
        influx_write: mean("influxdb"),
        mysql_write: mean("mysql"),
        ..landed
    };
    terminate(&mut child).await;
    Ok(Run { measured, landed })
}

/// Total seconds and count of storage's backend writes, by sink, from its /metrics.
async fn write_seconds(url: &str) -> HashMap<String, (f64, f64)> {
    let mut by_sink: HashMap<String, (f64, f64)> = HashMap::new();
    let Ok(text) = async { reqwest::get(url).await?.text().await }.await else {
        return by_sink;
    };
    for line in text.lines() {
        let Some((name, rest)) = line.split_once("{sink=\"") else {
            continue;
        };
        let Some((sink, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let entry = by_sink.entry(sink.to_string()).or_default();
        match name {
            "fieldline_storage_write_duration_seconds_sum" => entry.0 = value,
            "fieldline_storage_write_duration_seconds_count" => entry.1 = value,
            _ => {}
        }
    }
    by_sink
}

/// Sends every device's samples each interval over one Ingest stream, keeping at most
/// `window` requests unacknowledged, until `stop`; then waits for the outstanding acks.
async fn drive(
    url: String,
    devices: usize,
    tags: usize,
    interval: Duration,
    window: usize,
    acks: Arc<Acks>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut client = {
        let mut attempts = 0;
        loop {
            match StorageServiceClient::connect(url.clone()).await {
                Ok(c) => break c,
                Err(e) if attempts >= 50 => return Err(e).context("connecting to storage"),
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    let (requests, outbound) = mpsc::channel::<v1::IngestRequest>(window.max(1));
    let mut inbound = client
        .ingest(ReceiverStream::new(outbound))
        .await
        .context("opening the Ingest stream")?
        .into_inner();
    let window = Arc::new(Semaphore::new(window.max(1)));
    let in_flight: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let reader = {
        let (window, in_flight, acks) = (window.clone(), in_flight.clone(), acks.clone());
        tokio::spawn(async move {
            while let Ok(Some(ack)) = inbound.message().await {
                let points = in_flight
                    .lock()
                    .ok()
                    .and_then(|mut f| f.remove(&ack.request_id))
                    .unwrap_or(0);
                let rejected = u64::from(ack.rejected_samples).min(points);
                if ack.stored {
                    acks.stored.fetch_add(points - rejected, Ordering::Relaxed);
                    acks.refused.fetch_add(rejected, Ordering::Relaxed);
                } else {
                    acks.refused.fetch_add(points, Ordering::Relaxed);
                }
                window.add_permits(1);
            }
        })
    };
    let names: Vec<String> = (0..tags).map(tag_name).collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_id = 0u64;
    let mut n = 0u64;
    'send: loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        n += 1;
        let ts = fieldline_runtime::now_ns();
        for d in 0..devices {
            let permit = tokio::select! {
                p = window.acquire() => p.context("window closed")?,
                _ = stop.cancelled() => break 'send,
            };
            permit.forget();
            let samples = names
                .iter()
                .enumerate()
                .map(|(t, name)| v1::Sample {
                    tag: name.clone(),
                    value: Some(v1::Value {
                        kind: Some(value(t, n)),
                    }),
                    quality: Some(v1::Quality {
                        status: v1::QualityStatus::Good.into(),
                        ..Default::default()
                    }),
                    timestamp_ns: ts,
                    server_timestamp_ns: None,
                })
                .collect();
            next_id += 1;
            if let Ok(mut f) = in_flight.lock() {
                f.insert(next_id, tags as u64);
            }
            let request = v1::IngestRequest {
                request_id: next_id,
                batch: Some(v1::SampleBatch {
                    line: LINE.into(),
                    device: format!("d{d}"),
                    adapter_id: "bench".into(),
                    sequence: n,
                    samples,
                    previous_sequence: 0,
                }),
                records: None,
            };
            if requests.send(request).await.is_err() {
                bail!("the Ingest stream closed");
            }
            if let Some(last) = acks.last_ts.get(d) {
                last.store(ts, Ordering::Relaxed);
            }
        }
    }
    // Every request sent is acknowledged before the stream closes.
    let drained = async {
        while in_flight.lock().map(|f| !f.is_empty()).unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let drained = tokio::time::timeout(Duration::from_secs(60), drained).await;
    drop(requests);
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    drained.context("storage did not acknowledge every request within 60 s")
}

async fn run_python(
    args: &StorageArgs,
    admin: &MySqlPool,
    stats: &RowStats,
    names: &Names,
) -> anyhow::Result<Run> {
    names.create_mysql(admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "USE `{}`; {MYSQL_SCHEMA}",
        names.database
    )))
    .execute(admin)
    .await
    .context("creating the Python writer's tables")?;
    let mut child = python(
        args,
        &[
            "--influx-url",
            &args.influx,
            "--influx-db",
            &names.database,
            "--mysql-url",
            &format!("{}/{}", args.mysql.trim_end_matches('/'), names.database),
        ],
    )?;
    let reported = Reported::follow(child.stdout.take().context("python stdout")?);
    reported.started("the Python writer").await?;
    let measured = measure(
        &child,
        args.seconds,
        "python (influxdb + pymysql)",
        || async {
            Probe {
                points: reported.points(),
                rows: stats.rows_changed(admin, &names.database).await,
            }
        },
    )
    .await?;
    // SIGTERM makes the writer flush what it holds and report its totals.
    terminate(&mut child).await;
    reported.finished().await;
    let mean = |key: &str| {
        let seconds = reported.value(key)?;
        let writes = reported.value("WRITES").filter(|n| *n > 0.0)?;
        Some(Duration::from_secs_f64(seconds / writes))
    };
    let (influx_write, mysql_write) = (mean("INFLUX_S"), mean("MYSQL_S"));
    let landed = landed(
        args,
        admin,
        &names.database,
        reported.points.load(Ordering::Relaxed),
        &vec![reported.last_ts.load(Ordering::Relaxed); args.devices],
    )
    .await?;
    let landed = Landed {
        influx_write,
        mysql_write,
        ..landed
    };
    Ok(Run { measured, landed })
}

/// The Python writer generating the same points at the same rate and writing nothing.
async fn run_generation_only(args: &StorageArgs) -> anyhow::Result<Measured> {
    let mut child = python(args, &["--generate-only"])?;
    let reported = Reported::follow(child.stdout.take().context("python stdout")?);
    reported.started("the Python generator").await?;
    let measured = measure(&child, args.seconds, "python, generation only", || async {
        Probe {
            points: reported.points(),
            rows: None,
        }
    })
    .await?;
    terminate(&mut child).await;
    Ok(measured)
}

fn python(args: &StorageArgs, extra: &[&str]) -> anyhow::Result<Child> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/storage_writer.py");
    Command::new(&args.python)
        .arg(&script)
        .args(["--line", LINE])
        .args(["--devices", &args.devices.to_string()])
        .args(["--tags", &args.tags.to_string()])
        .args(["--interval", &args.interval.as_secs_f64().to_string()])
        .args(["--batch-points", &BATCH_POINTS.to_string()])
        .args(["--batch-delay", &BATCH_DELAY.as_secs_f64().to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (run `bash tests/backends.sh venv` for the venv)",
                args.python.display()
            )
        })
}

/// Counts what a writer left in InfluxDB and `latest_values`; `last_ts[d]` is the newest
/// timestamp written for device `d{d}`.
async fn landed(
    args: &StorageArgs,
    admin: &MySqlPool,
    database: &str,
    stored: u64,
    last_ts: &[i64],
) -> anyhow::Result<Landed> {
    let influx_points = influx_count(&args.influx, database).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT device, source_ns FROM `{database}`.latest_values WHERE line = ?"
    )))
    .bind(LINE)
    .fetch_all(admin)
    .await
    .context("reading latest_values")?;
    let current_rows = rows
        .iter()
        .filter(|(device, ts)| {
            device
                .strip_prefix('d')
                .and_then(|d| d.parse::<usize>().ok())
                .and_then(|d| last_ts.get(d))
                == Some(ts)
        })
        .count();
    Ok(Landed {
        influx_write: None,
        mysql_write: None,
        stored,
        influx_points,
        rows: rows.len() as u64,
        current_rows: current_rows as u64,
        expected_rows: (args.devices * args.tags) as u64,
    })
}

async fn influx_query(
    url: &str,
    database: Option<&str>,
    q: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut form = format!("epoch=ns&q={}", urlencode(q));
    if let Some(db) = database {
        form.push_str("&db=");
        form.push_str(&urlencode(db));
    }
    let response = reqwest::Client::new()
        .post(format!("{}/query", url.trim_end_matches('/')))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .with_context(|| format!("querying InfluxDB at {url}"))?;
    let status = response.status();
    let text = response.text().await.context("InfluxDB answer")?;
    let body: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("InfluxDB answered HTTP {status}: {text}"))?;
    if !status.is_success() {
        bail!("InfluxDB answered HTTP {status}: {body}");
    }
    Ok(body)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Field values in every measurement of `database`.
async fn influx_count(url: &str, database: &str) -> anyhow::Result<u64> {
    let body = influx_query(url, Some(database), "SELECT COUNT(*) FROM /.*/").await?;
    let mut total = 0;
    for result in body["results"].as_array().into_iter().flatten() {
        if let Some(error) = result.get("error") {
            bail!("InfluxDB count: {error}");
        }
        for series in result["series"].as_array().into_iter().flatten() {
            for row in series["values"].as_array().into_iter().flatten() {
                // The first column is the time.
                total += row
                    .as_array()
                    .into_iter()
                    .flatten()
                    .skip(1)
                    .filter_map(serde_json::Value::as_u64)
                    .sum::<u64>();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: StorageArgs,
    }

    #[test]
    fn the_storage_config_passes_the_line_schema() {
        let Cli { args } = Cli::parse_from(["bench", "--devices", "3", "--tags", "125"]);
        let yaml = storage_config(
            &args,
            "fieldline_bench_1",
            "127.0.0.1:50052".parse().expect("address"),
            "127.0.0.1:9182".parse().expect("address"),
        );
        let config = fieldline_core::config::LineConfig::from_yaml(&yaml)
            .unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
        assert_eq!(config.devices.len(), 3);
        assert_eq!(config.devices[0].tags().len(), 125);
        assert_eq!(config.storage.batch.max_points, BATCH_POINTS);
    }

    #[test]
    fn tags_mix_floats_integers_and_booleans() {
        let kinds: Vec<Kind> = (0..5).map(kind).collect();
        assert_eq!(
            kinds,
            [Kind::F64, Kind::F64, Kind::F64, Kind::I64, Kind::Bool]
        );
        assert_eq!(value(3, 10), v1::value::Kind::IntValue(40));
        assert_eq!(value(4, 10), v1::value::Kind::BoolValue(true));
        assert_eq!(value(4, 11), v1::value::Kind::BoolValue(false));
    }
}
