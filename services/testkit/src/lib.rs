//! Harnesses for tests that run against real parts: the backends started by
//! `tests/backends.sh` (Mosquitto, MariaDB, InfluxDB 1.x, VictoriaMetrics) and protocol peers we did not write
//! (pymodbus). A missing backend fails the test with the command that starts it; nothing here
//! ever skips a test.

pub mod opcua;

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// The JSON library the query helpers answer with, for tests that build expected answers.
pub use serde_json;

pub const MQTT: &str = "127.0.0.1:1883";
pub const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";
pub const INFLUX_URL: &str = "http://127.0.0.1:8086";
/// VictoriaMetrics, the peer for the InfluxDB v2 write API.
pub const VM_URL: &str = "http://127.0.0.1:8428";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The state folder of `tests/backends.sh`.
pub fn backends_dir() -> PathBuf {
    std::env::var_os("FIELDLINE_BACKENDS_DIR").map_or_else(
        || PathBuf::from("/var/tmp/fieldline-backends"),
        PathBuf::from,
    )
}

const HOW: &str = "start the test backends with `bash tests/backends.sh` (installs and starts Mosquitto, MariaDB, InfluxDB 1.x, VictoriaMetrics and the Python peers)";

fn require_port(what: &str, addr: &str) -> anyhow::Result<()> {
    let sock: SocketAddr = addr.parse()?;
    TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map(drop)
        .with_context(|| format!("{what} is not answering on {addr}; {HOW}"))
}

/// Fails unless Mosquitto, MariaDB and InfluxDB answer: for tests that use all three.
pub fn require_backends() -> anyhow::Result<()> {
    require_mqtt()?;
    require_mysql()?;
    require_influxdb()
}

/// Fails unless the MQTT broker answers on [`MQTT`].
pub fn require_mqtt() -> anyhow::Result<()> {
    require_port("the MQTT broker", MQTT)
}

/// Fails unless MariaDB answers (at [`MYSQL_URL`]).
pub fn require_mysql() -> anyhow::Result<()> {
    require_port("MariaDB", "127.0.0.1:3306")
}

/// Fails unless InfluxDB answers on [`INFLUX_URL`].
pub fn require_influxdb() -> anyhow::Result<()> {
    require_port("InfluxDB", "127.0.0.1:8086")
}

/// Fails unless VictoriaMetrics answers on [`VM_URL`].
pub fn require_victoria_metrics() -> anyhow::Result<()> {
    require_port("VictoriaMetrics", "127.0.0.1:8428")
}

/// The Python interpreter of the peers' venv.
pub fn python() -> anyhow::Result<PathBuf> {
    let p = backends_dir().join("venv/bin/python");
    if !p.exists() {
        bail!("no Python venv at {}; {HOW}", p.display());
    }
    Ok(p)
}

/// A name unique to this test run, usable as a line, device or database name.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A pymodbus server (`tests/peers/modbus_server.py`), killed when dropped.
pub struct ModbusPeer {
    pub addr: SocketAddr,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ModbusPeer {
    /// Starts the peer with registers from `spec` (see the script for the format).
    pub async fn start(spec: &serde_json::Value) -> anyhow::Result<Self> {
        Self::spawn(spec, &["--port".to_string(), "0".to_string()]).await
    }

    async fn spawn(spec: &serde_json::Value, args: &[String]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("modbus-spec"));
        std::fs::create_dir_all(&dir)?;
        let spec_path = dir.join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec(spec)?)?;
        let script = repo_root().join("tests/peers/modbus_server.py");
        let mut child = Command::new(python()?)
            .arg(&script)
            .args(args)
            .arg("--spec")
            .arg(&spec_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let stdin = child.stdin.take().context("peer stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("peer stdout")?);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
            .await
            .context("pymodbus server did not print READY within 20s")??;
        let ready = line
            .trim()
            .strip_prefix("READY ")
            .with_context(|| format!("unexpected first line from the pymodbus server: {line:?}"))?;
        // A TCP peer reports its port; an RTU peer its device (no address then).
        let port: u16 = ready.parse().unwrap_or(0);
        Ok(Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stdin,
            stdout,
        })
    }

    /// Starts the peer as a Modbus RTU slave with unit id `unit` on the serial device `port`
    /// (one end of a [`PtyPair`]) at `baud`, 8N1.
    pub async fn start_rtu(
        spec: &serde_json::Value,
        port: &std::path::Path,
        unit: u8,
        baud: u32,
    ) -> anyhow::Result<Self> {
        let args = [
            "--serial".to_string(),
            port.display().to_string(),
            "--unit".into(),
            unit.to_string(),
            "--baud".into(),
            baud.to_string(),
        ];
        Self::spawn(spec, &args).await
    }

    /// Sends one command (`set holding 4 int16 -99`, `get coil 0`) and returns the reply.
    pub async fn command(&mut self, command: &str) -> anyhow::Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), self.stdout.read_line(&mut line))
            .await
            .context("peer did not answer")??;
        Ok(line.trim().to_string())
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`. Tests wait
/// for an observable condition this way, never for a fixed time.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client of the test's own on the broker at [`MQTT`], subscribed to `filter`: every message
/// it receives from then on, as topic and payload. Returns once the broker has confirmed the
/// subscription, so nothing published afterwards is missed.
pub async fn subscribe(
    filter: &str,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>> {
    Ok(subscribe_many(&[filter.to_string()]).await?.1)
}

/// [`subscribe`] to several filters, with the client, which can publish too.
pub async fn subscribe_many(
    filters: &[String],
) -> anyhow::Result<(
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
)> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
    let (host, port) = MQTT
        .rsplit_once(':')
        .with_context(|| format!("broker address {MQTT}"))?;
    let mut options = MqttOptions::new(unique("tap"), host, port.parse()?);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // Queued now, sent once the event loop runs.
    client
        .subscribe_many(
            filters
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
        )
        .await?;
    let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    let keep = client.clone();
    tokio::spawn(async move {
        // The client lives as long as its event loop.
        let _client = keep;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .map_err(|_| anyhow::anyhow!("the test's client could not subscribe to {filters:?}"))??;
    Ok((client, messages))
}

/// Runs an InfluxQL query against `db` on the shared InfluxDB and returns the JSON answer.
pub async fn influx_query(db: &str, q: &str) -> anyhow::Result<serde_json::Value> {
    influx_query_at(INFLUX_URL, db, q).await
}

/// Runs an InfluxQL query against `db` on the InfluxDB at `url`.
pub async fn influx_query_at(url: &str, db: &str, q: &str) -> anyhow::Result<serde_json::Value> {
    let response = reqwest::Client::new()
        .post(format!("{url}/query"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("db={}&q={}", encode(db), encode(q)))
        .send()
        .await?;
    let text = response.text().await?;
    Ok(serde_json::from_str(&text)?)
}

/// Like [`influx_query_at`], with times as integer nanoseconds (`epoch=ns`).
pub async fn influx_query_ns(url: &str, db: &str, q: &str) -> anyhow::Result<serde_json::Value> {
    let response = reqwest::Client::new()
        .post(format!("{url}/query"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("epoch=ns&db={}&q={}", encode(db), encode(q)))
        .send()
        .await?;
    let text = response.text().await?;
    Ok(serde_json::from_str(&text)?)
}

/// The value of the first line of a Prometheus text page that starts with `prefix`.
pub fn metric_value(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(prefix).and_then(|v| v.trim().parse().ok()))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 for a service under test to listen on.
///
/// Ports come from below the kernel's ephemeral range (32768 and up), so an outgoing
/// connection made in the meantime can never take the port before the service binds it; each
/// call in a process moves on to the next port, and a port that is in use is skipped.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Test binaries running at the same time start far apart (by process id).
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let port = u16::try_from(FIRST + offset)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no free port between {FIRST} and {}", FIRST + SPAN)
}

/// HTTP GET returning status and body.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::get(url).await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The lines of a service's log at WARN or ERROR: a healthy start, run and stop has none.
pub fn warnings_and_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
        .collect()
}

/// `fieldline up`, the demo line, started from `binary` with its data in `data_dir` and every
/// listener on a free port; ready once its `/readyz` answers.
pub struct Demo {
    pub process: ServiceProcess,
    /// The MES API (PlantService).
    pub plant: SocketAddr,
}

pub async fn start_demo(
    binary: &std::path::Path,
    data_dir: &std::path::Path,
) -> anyhow::Result<Demo> {
    let http = free_addr()?;
    let [mqtt, sim, plant] = [free_addr()?, free_addr()?, free_addr()?];
    let args = [
        "up".to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--mqtt-listen".into(),
        mqtt.to_string(),
        "--sim-listen".into(),
        sim.to_string(),
        "--plant-listen".into(),
        plant.to_string(),
        "--http-listen".into(),
        http.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = ServiceProcess::start(binary, &args, http).await?;
    Ok(Demo { process, plant })
}

/// A service binary started for a test, killed if the test ends without stopping it.
///
/// Its standard output (the log) is read as it comes, so a chatty service never blocks on a
/// full pipe, and is kept for [`ServiceProcess::stdout`] and for the error when it does not
/// become ready.
pub struct ServiceProcess {
    child: Child,
    pub http: SocketAddr,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl ServiceProcess {
    /// Starts `binary` with `args` and waits until its `/readyz` on `http` answers 200.
    pub async fn start(
        binary: &std::path::Path,
        args: &[&str],
        http: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::launch(binary, args, http, "readyz", "ready").await
    }

    /// Starts `binary` with `args` and waits only until its `/healthz` on `http` answers (it
    /// runs), not until it is ready: for a service started while a peer it needs is away.
    pub async fn spawn(
        binary: &std::path::Path,
        args: &[&str],
        http: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::launch(binary, args, http, "healthz", "answering").await
    }

    /// Starts `binary` and waits (up to 30 s) until `path` on `http` answers 200.
    async fn launch(
        binary: &std::path::Path,
        args: &[&str],
        http: SocketAddr,
        path: &str,
        state: &str,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stdout = child.stdout.take().context("service stdout")?;
        let reader = tokio::spawn(keep_output(stdout, output.clone()));
        let mut process = Self {
            child,
            http,
            output,
            reader: Some(reader),
        };
        let url = format!("http://{http}/{path}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(&url).await {
                return Ok(process);
            }
            if let Some(status) = process.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was {state}; it printed:\n{}",
                    binary.display(),
                    process.stdout().await
                );
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = process.child.kill().await;
                bail!(
                    "timed out after 30s waiting for {} to be {state}; it printed:\n{}",
                    binary.display(),
                    process.stdout().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process (SIGKILL: no chance to flush anything) and waits for it to exit.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Freezes the process (SIGSTOP) until [`ServiceProcess::resume`]: it holds its
    /// connections open and answers nothing, like a hung server.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.send("STOP")
    }

    /// Lets a paused process run on (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.send("CONT")
    }

    fn send(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("process already gone")?;
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
        Ok(())
    }

    /// Sends SIGTERM and waits (up to 20 s) for the process to exit; returns its exit code.
    pub async fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        self.signal("TERM").await
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does, and waits (up to 20 s) for the process to
    /// exit; returns its exit code.
    pub async fn interrupt(&mut self) -> anyhow::Result<Option<i32>> {
        self.signal("INT").await
    }

    async fn signal(&mut self, name: &str) -> anyhow::Result<Option<i32>> {
        let pid = self.child.id().context("process already gone")?;
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .with_context(|| format!("no exit within 20s of SIG{name}"))??;
        Ok(exit.code())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything the process printed on stdout (all of it once the process has exited).
    pub async fn stdout(&mut self) -> String {
        if self.child.try_wait().ok().flatten().is_some()
            && let Some(reader) = self.reader.take()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        self.output
            .lock()
            .map(|out| out.clone())
            .unwrap_or_default()
    }
}

/// Appends everything `stdout` yields to `output` until the stream ends.
async fn keep_output(stdout: ChildStdout, output: std::sync::Arc<std::sync::Mutex<String>>) {
    use tokio::io::AsyncReadExt;
    let mut stdout = stdout;
    let mut chunk = vec![0u8; 8192];
    while let Ok(n) = stdout.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        if let Ok(mut out) = output.lock() {
            out.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }
}

/// What the faulty Modbus server does with one request.
pub enum Answer {
    /// Send these bytes (a full or deliberately broken frame).
    Bytes(Vec<u8>),
    /// Send these bytes, then close the connection.
    BytesThenClose(Vec<u8>),
    /// Say nothing (the client times out).
    Silence,
    /// Send these bytes after a pause (a slow device).
    Delayed(Duration, Vec<u8>),
}

/// A Modbus TCP server that answers from a script, byte for byte, to produce the malformed
/// replies real devices and gateways send (wrong lengths, wrong function codes, stray bytes,
/// half frames). `script` gets the request's index (across connections) and its bytes.
pub async fn faulty_modbus<F>(script: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(u64, &[u8]) -> Answer + Send + Sync + 'static,
{
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let script = Arc::new(script);
    let counter = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let script = script.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                loop {
                    let mut header = [0u8; 7];
                    if socket.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len =
                        usize::from(u16::from_be_bytes([header[4], header[5]])).saturating_sub(1);
                    let mut pdu = vec![0u8; len];
                    if socket.read_exact(&mut pdu).await.is_err() {
                        return;
                    }
                    let mut request = header.to_vec();
                    request.extend_from_slice(&pdu);
                    match script(counter.fetch_add(1, Ordering::SeqCst), &request) {
                        Answer::Bytes(b) => {
                            if socket.write_all(&b).await.is_err() {
                                return;
                            }
                        }
                        Answer::BytesThenClose(b) => {
                            let _ = socket.write_all(&b).await;
                            return;
                        }
                        Answer::Silence => {}
                        Answer::Delayed(pause, b) => {
                            tokio::time::sleep(pause).await;
                            if socket.write_all(&b).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A reply frame to `request` carrying `pdu` (function code and data), with the request's
/// transaction id and unit.
pub fn modbus_reply(request: &[u8], pdu: &[u8]) -> Vec<u8> {
    let mut frame = request[..4].to_vec();
    frame.extend_from_slice(
        &u16::try_from(pdu.len() + 1)
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    frame.push(request[6]);
    frame.extend_from_slice(pdu);
    frame
}

/// The PDU of a correct answer to a read-registers request, every register `value`.
pub fn registers_pdu(request: &[u8], value: u16) -> Vec<u8> {
    let count = usize::from(u16::from_be_bytes([request[10], request[11]]));
    let mut pdu = vec![request[7], u8::try_from(count * 2).unwrap_or(u8::MAX)];
    for _ in 0..count {
        pdu.extend_from_slice(&value.to_be_bytes());
    }
    pdu
}

/// Reads with `mbpoll` (an independent Modbus client) and returns `(reference, value text)`
/// per line; `args` select the table and type, e.g. `["-t", "4:float", "-r", "21", "-c", "1"]`.
pub fn mbpoll(port: u16, args: &[&str]) -> anyhow::Result<Vec<(u32, String)>> {
    let out = std::process::Command::new("mbpoll")
        .args(["-m", "tcp", "-a", "1", "-1", "-p", &port.to_string()])
        .args(args)
        .arg("127.0.0.1")
        .output()
        .context("mbpoll is not installed; `bash tests/backends.sh` installs it")?;
    anyhow::ensure!(
        out.status.success(),
        "mbpoll failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (reference, value) = l.strip_prefix('[')?.split_once("]:")?;
            Some((reference.parse().ok()?, value.trim().to_string()))
        })
        .collect())
}

/// Two connected pseudo-terminals made by `socat`: what one end writes the other reads, like
/// a serial cable. Killed when dropped; `restart` makes the same pair again (a serial adapter
/// unplugged and plugged back in).
pub struct PtyPair {
    pub a: PathBuf,
    pub b: PathBuf,
    child: Option<Child>,
}

impl PtyPair {
    pub async fn new(dir: &std::path::Path) -> anyhow::Result<Self> {
        let mut pair = Self {
            a: dir.join("pty-a"),
            b: dir.join("pty-b"),
            child: None,
        };
        pair.start().await?;
        Ok(pair)
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let end = |p: &PathBuf| format!("pty,raw,echo=0,link={}", p.display());
        let child = Command::new("socat")
            .args([end(&self.a), end(&self.b)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("socat is not installed; `bash tests/backends.sh` installs it")?;
        self.child = Some(child);
        let (a, b) = (self.a.clone(), self.b.clone());
        wait_for(Duration::from_secs(10), "socat's pty pair", || {
            let (a, b) = (a.clone(), b.clone());
            async move { (a.exists() && b.exists()).then_some(()) }
        })
        .await
    }

    /// Removes both ends, as when a USB serial adapter is pulled out.
    pub async fn unplug(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
        let _ = std::fs::remove_file(&self.a);
        let _ = std::fs::remove_file(&self.b);
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.unplug().await;
        self.start().await
    }
}

/// CRC-16/MODBUS of `data` (polynomial 0xA001 reflected, initial 0xFFFF), as appended
/// low byte first to every RTU frame.
pub fn modbus_crc(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for byte in data {
        crc ^= u16::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A database server of the test's own (data under the test's folder, its own port), that the
/// test may kill and start again: for outage tests, which must not disturb the shared
/// backends other tests use.
pub struct PrivateServer {
    pub port: u16,
    program: &'static str,
    args: Vec<String>,
    child: Option<Child>,
    ready: fn(u16) -> bool,
}

impl PrivateServer {
    /// An InfluxDB 1.x under `dir`.
    pub async fn influxdb(dir: &std::path::Path) -> anyhow::Result<Self> {
        Self::influxdb_with(dir, &[]).await
    }

    /// A MariaDB under `dir`, root without a password, with a database `test`.
    pub async fn mariadb(dir: &std::path::Path) -> anyhow::Result<Self> {
        let port = free_addr()?.port();
        let data = dir.join("mariadb");
        std::fs::create_dir_all(&data)?;
        let install = std::process::Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .context(
                "mariadb-install-db is not installed; `bash tests/backends.sh` installs MariaDB",
            )?;
        anyhow::ensure!(
            install.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        let mut server = Self {
            port,
            program: "mariadbd",
            args: vec![
                "--no-defaults".into(),
                "--user=root".into(),
                format!("--datadir={}", data.display()),
                format!("--port={port}"),
                "--bind-address=127.0.0.1".into(),
                format!("--socket={}", dir.join("mariadb.sock").display()),
                format!("--pid-file={}", dir.join("mariadb.pid").display()),
                "--skip-name-resolve".into(),
                "--innodb-buffer-pool-size=32M".into(),
            ],
            child: None,
            ready: |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        server.start().await?;
        Ok(server)
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.program))?;
        self.child = Some(child);
        let (ready, port) = (self.ready, self.port);
        wait_for(
            Duration::from_secs(60),
            &format!("{} on port {port}", self.program),
            || async move { ready(port).then_some(()) },
        )
        .await
    }

    /// Kills the server outright (SIGKILL), as a crash or a pulled plug would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }
}

/// One series of a VictoriaMetrics export: its labels (the name under `__name__`) and its raw
/// samples (timestamps in ms).
#[derive(Debug, Clone, PartialEq)]
pub struct VmSeries {
    pub labels: std::collections::BTreeMap<String, String>,
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
}

impl VmSeries {
    /// The metric name.
    pub fn name(&self) -> &str {
        self.labels.get("__name__").map_or("", String::as_str)
    }
}

/// Makes what VictoriaMetrics at `url` has taken in so far searchable.
pub async fn vm_flush(url: &str) -> anyhow::Result<()> {
    let status = reqwest::Client::new()
        .post(format!("{url}/internal/force_flush"))
        .send()
        .await?
        .status();
    anyhow::ensure!(
        status.is_success(),
        "{url}/internal/force_flush: HTTP {status}"
    );
    Ok(())
}

/// Every raw sample of the series matching the series selector `selector` (e.g.
/// `{line="x"}`), through `/api/v1/export`, after a flush.
pub async fn vm_export(url: &str, selector: &str) -> anyhow::Result<Vec<VmSeries>> {
    vm_flush(url).await?;
    let response = reqwest::Client::new()
        .post(format!("{url}/api/v1/export"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("match[]={}&start=0", encode(selector)))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(
        status.is_success(),
        "{url}/api/v1/export: HTTP {status}: {text}"
    );
    let mut series = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("export line {line}"))?;
        let labels = v["metric"]
            .as_object()
            .with_context(|| format!("no metric in {line}"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let numbers = |key: &str| -> anyhow::Result<Vec<serde_json::Value>> {
            Ok(v[key]
                .as_array()
                .with_context(|| format!("no {key} in {line}"))?
                .clone())
        };
        let values = numbers("values")?
            .iter()
            .map(|n| n.as_f64().with_context(|| format!("value {n} in {line}")))
            .collect::<anyhow::Result<_>>()?;
        let timestamps = numbers("timestamps")?
            .iter()
            .map(|n| {
                n.as_i64()
                    .with_context(|| format!("timestamp {n} in {line}"))
            })
            .collect::<anyhow::Result<_>>()?;
        series.push(VmSeries {
            labels,
            values,
            timestamps,
        });
    }
    Ok(series)
}

impl PrivateServer {
    /// A VictoriaMetrics under `dir`, taking the InfluxDB v2 write API. Like the one
    /// `tests/backends.sh` starts: fresh samples are searchable at once, one sample is kept
    /// per series and millisecond (so a replayed write is idempotent), old timestamps are kept.
    pub async fn victoria_metrics(dir: &std::path::Path) -> anyhow::Result<Self> {
        Self::victoria_metrics_with(dir, &[]).await
    }

    /// [`PrivateServer::influxdb`] with more settings in its `[http]` section, one per line,
    /// e.g. `max-body-size = 4096`.
    pub async fn influxdb_with(dir: &std::path::Path, http: &[&str]) -> anyhow::Result<Self> {
        let port = free_addr()?.port();
        let rpc = free_addr()?.port();
        let data = dir.join("influxdb");
        let config = dir.join("influxdb.conf");
        let extra: String = http.iter().map(|l| format!("  {l}\n")).collect();
        std::fs::write(
            &config,
            format!(
                "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n[meta]\n  dir = \"{d}/meta\"\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n[monitor]\n  store-enabled = false\n[http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n{extra}[continuous_queries]\n  enabled = false\n",
                d = data.display()
            ),
        )?;
        let mut server = Self {
            port,
            program: "influxd",
            args: vec!["-config".into(), config.display().to_string()],
            child: None,
            ready: |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        server.start().await?;
        Ok(server)
    }

    /// [`PrivateServer::victoria_metrics`] with more command-line flags, e.g.
    /// `-httpAuth.username=…`.
    pub async fn victoria_metrics_with(
        dir: &std::path::Path,
        flags: &[&str],
    ) -> anyhow::Result<Self> {
        let port = free_addr()?.port();
        let data = dir.join("victoria-metrics");
        let mut args = vec![
            format!("-httpListenAddr=127.0.0.1:{port}"),
            format!("-storageDataPath={}", data.display()),
            "-retentionPeriod=100y".into(),
            "-search.latencyOffset=0s".into(),
            "-dedup.minScrapeInterval=1ms".into(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let mut server = Self {
            port,
            program: "victoria-metrics",
            args,
            child: None,
            ready: |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        server.start().await.context(
            "VictoriaMetrics did not start; `bash tests/backends.sh victoria-metrics` installs it",
        )?;
        Ok(server)
    }

    /// Stops the server cleanly (SIGTERM) and waits up to 30 s for it to exit, as a planned
    /// restart would.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().context("server already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .with_context(|| format!("{} did not exit within 30s of SIGTERM", self.program))??;
        Ok(())
    }
}
