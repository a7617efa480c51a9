//! InfluxDB 1.x sink through the v1 `/write` API, gzip-compressed.

use std::io::Write;

use fieldline_core::{SampleBatch, config::InfluxConfig};
use flate2::{Compression, write::GzEncoder};

use super::{SinkError, WriteReport, line_protocol};

/// Writes sample batches to one InfluxDB database.
pub struct InfluxSink {
    client: reqwest::Client,
    config: InfluxConfig,
    password: Option<String>,
    write_url: String,
}

impl InfluxSink {
    pub fn new(config: &InfluxConfig) -> Result<Self, SinkError> {
        let password = match &config.password {
            Some(secret) => Some(secret.resolve().map_err(SinkError::Config)?),
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| SinkError::Config(format!("cannot build the InfluxDB client: {e}")))?;
        let mut write_url = format!(
            "{}/write?db={}",
            config.url.trim_end_matches('/'),
            urlencode(&config.database)
        );
        if let Some(rp) = &config.retention_policy {
            write_url.push_str("&rp=");
            write_url.push_str(&urlencode(rp));
        }
        Ok(Self {
            client,
            config: config.clone(),
            password,
            write_url,
        })
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.username {
            Some(user) => request.basic_auth(user, self.password.as_deref()),
            None => request,
        }
    }

    /// Creates the database when configured to (idempotent in InfluxDB 1.x).
    pub async fn prepare(&self) -> Result<(), SinkError> {
        if !self.config.create_database {
            return Ok(());
        }
        let url = format!("{}/query", self.config.url.trim_end_matches('/'));
        let q = format!(
            "CREATE DATABASE \"{}\"",
            self.config
                .database
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
        );
        let response = self
            .authorize(self.client.post(url))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("q={}", urlencode(&q)))
            .send()
            .await
            .map_err(|e| SinkError::Transient(format!("InfluxDB unreachable: {e}")))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = response.text().await.unwrap_or_default();
            Err(SinkError::Transient(format!(
                "creating database {}: HTTP {status}: {}",
                self.config.database,
                body.trim()
            )))
        }
    }

    /// Writes the batch. Network errors, 5xx, 429 and missing databases are transient; a 400
    /// means InfluxDB refused some points for good (it writes the rest), which is reported.
    pub async fn write(&self, batch: &SampleBatch) -> Result<WriteReport, SinkError> {
        let mut body = String::with_capacity(64 * batch.samples.len());
        let rejected = line_protocol::encode_batch(batch, &mut body);
        let mut report = WriteReport {
            rejected: rejected.len(),
            detail: rejected
                .iter()
                .map(|r| format!("{}: {}", r.tag, r.reason))
                .collect(),
        };
        if body.is_empty() {
            return Ok(report);
        }
        let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        gz.write_all(body.as_bytes())
            .map_err(|e| SinkError::Transient(format!("gzip: {e}")))?;
        let compressed = gz
            .finish()
            .map_err(|e| SinkError::Transient(format!("gzip: {e}")))?;
        let response = self
            .authorize(self.client.post(&self.write_url))
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(compressed)
            .send()
            .await
            .map_err(|e| SinkError::Transient(format!("InfluxDB unreachable: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(report);
        }
        let text = response.text().await.unwrap_or_default();
        let text = text.trim();
        match status.as_u16() {
            400 => {
                report.rejected += 1;
                report
                    .detail
                    .push(format!("InfluxDB refused points: {text}"));
                Ok(report)
            }
            404 if text.contains("database not found") => {
                let _ = self.prepare().await;
                Err(SinkError::Transient(format!("InfluxDB: {text}")))
            }
            _ => Err(SinkError::Transient(format!(
                "InfluxDB answered HTTP {status}: {text}"
            ))),
        }
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
