//! OPC UA servers we did not write, for driver and CLI tests: asyncua
//! (`tests/peers/opcua_server.py`) and node-opcua (`tests/peers/opcua_node_server.js`).

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
};

use crate::{python, repo_root, unique};

/// Which server implementation a peer runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OpcuaServer {
    /// Python asyncua: variables in `ns=2` under the spec's folder, commands `set`, `status`,
    /// `get`, writes reported.
    #[default]
    Asyncua,
    /// node-opcua: variables `ns=1;s=<name>`, commands `set NAME JSON`, `bad NAME`, `get
    /// NAME`; always offers None, Basic256Sha256 and Aes128_Sha256_RsaOaep endpoints.
    NodeOpcua,
}

/// How to start the peer.
#[derive(Debug, Clone, Default)]
pub struct OpcuaOptions {
    pub server: OpcuaServer,
    /// Offer Basic256Sha256 and Aes128_Sha256_RsaOaep endpoints with a server certificate
    /// generated in the peer's folder (see [`OpcuaPeer::server_certificate`]).
    pub secure: bool,
    /// Accept only these users (user name tokens only) instead of anonymous clients.
    pub users: Vec<(String, String)>,
    /// node-opcua only: accept X509 user identities with these certificates (PEM), and no
    /// other and no anonymous clients.
    pub user_certificates: Vec<PathBuf>,
}

/// The asyncua server, killed when dropped. Its folder (spec, server certificate) stays
/// the same across [`OpcuaPeer::restart`].
pub struct OpcuaPeer {
    pub port: u16,
    dir: PathBuf,
    options: OpcuaOptions,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    written: Vec<String>,
}

/// How long the peer may take to start: asyncua builds its address space at start, which
/// takes many seconds on a busy two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

impl OpcuaPeer {
    /// Starts the peer with the variables of `spec` (see the script for the format) on a free
    /// port.
    pub async fn start(spec: &serde_json::Value, options: OpcuaOptions) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("opcua-peer"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("spec.json"), serde_json::to_vec(spec)?)?;
        let (child, stdin, lines, port) = spawn(&dir, &options, 0).await?;
        Ok(Self {
            port,
            dir,
            options,
            child,
            stdin,
            lines,
            written: Vec::new(),
        })
    }

    /// `opc.tcp://127.0.0.1:PORT/fieldline/` (asyncua), `opc.tcp://127.0.0.1:PORT`
    /// (node-opcua).
    pub fn endpoint(&self) -> String {
        match self.options.server {
            OpcuaServer::Asyncua => format!("opc.tcp://127.0.0.1:{}/fieldline/", self.port),
            OpcuaServer::NodeOpcua => format!("opc.tcp://127.0.0.1:{}", self.port),
        }
    }

    /// The server certificate of a secure peer (DER for asyncua, PEM for node-opcua), to put
    /// in a trust list.
    pub fn server_certificate(&self) -> PathBuf {
        match self.options.server {
            OpcuaServer::Asyncua => self.dir.join("certs/server.der"),
            OpcuaServer::NodeOpcua => self.dir.join("pki/server/own/certs/certificate.pem"),
        }
    }

    /// A folder of the peer's own for the test's files (PKI folders, secrets).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Kills the server (as a crash would).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts the server again on the same port with the same spec and certificate (values
    /// back to the spec's).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill().await;
        // The port was just released; binding it again may need a moment.
        let mut last = None;
        for _ in 0..20 {
            match spawn(&self.dir, &self.options, self.port).await {
                Ok((child, stdin, lines, _)) => {
                    self.child = child;
                    self.stdin = stdin;
                    self.lines = lines;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the peer did not restart")))
    }

    /// Sends one command (`set Temperature 22.5 2024-05-01T12:00:00Z`, `status Count
    /// BadSensorFailure`, `get Count`) and returns the reply.
    pub async fn command(&mut self, command: &str) -> anyhow::Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.recv())
                .await
                .context("the OPC UA peer did not answer")?
                .context("the OPC UA peer exited")?;
            match line.strip_prefix("WRITTEN ") {
                Some(w) => self.written.push(w.to_string()),
                None => return Ok(line),
            }
        }
    }

    /// The client writes the server took so far, as `NAME VALUE`, waiting up to `wait` for
    /// the first when there is none yet.
    pub async fn written(&mut self, wait: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                if let Some(w) = line.strip_prefix("WRITTEN ") {
                    self.written.push(w.to_string());
                }
            }
            if !self.written.is_empty() || tokio::time::Instant::now() >= deadline {
                return self.written.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn spawn(
    dir: &std::path::Path,
    options: &OpcuaOptions,
    port: u16,
) -> anyhow::Result<(Child, ChildStdin, mpsc::UnboundedReceiver<String>, u16)> {
    let (mut command, script) = match options.server {
        OpcuaServer::Asyncua => {
            let script = repo_root().join("tests/peers/opcua_server.py");
            let mut command = Command::new(python()?);
            command.arg(&script);
            if options.secure {
                command.arg("--cert-dir").arg(dir.join("certs"));
            }
            (command, script)
        }
        OpcuaServer::NodeOpcua => {
            let script = repo_root().join("tests/peers/opcua_node_server.js");
            let mut command = Command::new("node");
            command
                .arg(&script)
                .arg("--pki")
                .arg(dir.join("pki"))
                .env("NODE_PATH", node_modules());
            (command, script)
        }
    };
    command
        .arg("--port")
        .arg(port.to_string())
        .arg("--spec")
        .arg(dir.join("spec.json"));
    for (user, password) in &options.users {
        command.arg("--user").arg(format!("{user}:{password}"));
    }
    for cert in &options.user_certificates {
        command.arg("--user-cert").arg(cert);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (`bash tests/backends.sh` installs asyncua from tests/peers/requirements.txt and node-opcua from tests/peers/package.json)",
                script.display()
            )
        })?;
    let stdin = child.stdin.take().context("peer stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("peer stdout")?);
    // node-opcua prints notices before it is ready; the READY line says the port.
    let ready = async {
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line).await? == 0 {
                bail!("the OPC UA server exited before it was ready (see its stderr above)");
            }
            if let Some(port) = line.trim().strip_prefix("READY ") {
                return port
                    .parse::<u16>()
                    .with_context(|| format!("unexpected READY line: {line:?}"));
            }
        }
    };
    let port = tokio::time::timeout(START_TIMEOUT, ready)
        .await
        .context("the OPC UA server did not print READY in time")??;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut line = String::new();
        loop {
            line.clear();
            match stdout.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(line.trim().to_string()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok((child, stdin, rx, port))
}

/// Where tests/backends.sh installs node-opcua.
fn node_modules() -> PathBuf {
    crate::backends_dir().join("node/node_modules")
}
