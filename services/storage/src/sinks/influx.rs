//! InfluxDB sink: InfluxDB 1.x through the v1 `/write` API, or InfluxDB 2.x and compatible
//! servers (VictoriaMetrics) through the v2 `/api/v2/write` API; gzip-compressed line protocol.
//!
//! A server that refuses some points of a write (HTTP 400/422: a field type conflict, a point
//! beyond the retention policy, a line it cannot parse) is asked again with halves of the
//! write until the refused points stand alone; what it accepted stays written (rewriting a
//! point with the same series and timestamp changes nothing), and each refused point is
//! reported with its batch, its samples and the server's reason. The extra requests are
//! bounded by the number of points in the write.

use std::{io::Write, ops::Range, time::Duration};

use fieldline_core::{
    SampleBatch,
    config::{InfluxConfig, InfluxTarget},
};
use flate2::{Compression, write::GzEncoder};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{StatusCode, header::HeaderMap};

use super::{Rejection, SinkError, WriteReport, line_protocol};

/// How the sink authenticates.
enum Auth {
    None,
    /// v1: user name and password (HTTP basic authentication).
    Basic {
        user: String,
        password: Option<String>,
    },
    /// v2: `Authorization: Token <token>`.
    Token(String),
}

/// Which write API the sink speaks.
enum Api {
    V1 { database: String },
    V2 { org: String, bucket: String },
}

/// Writes sample batches to one InfluxDB database or bucket.
pub struct InfluxSink {
    client: reqwest::Client,
    /// v1: create the database at startup and when it disappears.
    create_database: bool,
    base: String,
    api: Api,
    auth: Auth,
    write_url: String,
}

/// A point of a write: one line of the body, from which batch, carrying how many samples.
struct Point {
    batch: usize,
    range: Range<usize>,
    samples: usize,
    timestamp_ns: i64,
}

/// What the server made of one request.
enum Answer {
    Stored,
    /// HTTP 400 or 422: some or all points refused for good, with the server's message.
    Refused(String),
    /// HTTP 413: the request is too large for the server.
    TooLarge(String),
}

/// The longest a `Retry-After` answer holds a write back, whatever the server asks for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// The longest server message kept in an error or a rejection.
const MAX_MESSAGE: usize = 1000;

impl InfluxSink {
    pub fn new(config: &InfluxConfig) -> Result<Self, SinkError> {
        let target = config.target().map_err(|e| SinkError::Setting {
            setting: "storage.influx",
            source: e.into(),
        })?;
        let base = config.url.trim_end_matches('/').to_string();
        let (api, write_url) = match target {
            InfluxTarget::V1 {
                database,
                retention_policy,
            } => {
                let mut url = format!("{base}/write?db={}", urlencode(database));
                if let Some(rp) = retention_policy {
                    url.push_str("&rp=");
                    url.push_str(&urlencode(rp));
                }
                let api = Api::V1 {
                    database: database.to_string(),
                };
                (api, url)
            }
            InfluxTarget::V2 { org, bucket } => (
                Api::V2 {
                    org: org.to_string(),
                    bucket: bucket.to_string(),
                },
                format!(
                    "{base}/api/v2/write?org={}&bucket={}&precision=ns",
                    urlencode(org),
                    urlencode(bucket)
                ),
            ),
        };
        let secret = |s: &fieldline_core::config::SecretRef, setting: &'static str| {
            fieldline_runtime::secret::resolve(s).map_err(|e| SinkError::Setting {
                setting,
                source: e.into(),
            })
        };
        let auth = match (&config.token, &config.username) {
            (Some(token), _) => Auth::Token(secret(token, "storage.influx.token")?),
            (None, Some(user)) => Auth::Basic {
                user: user.clone(),
                password: config
                    .password
                    .as_ref()
                    .map(|p| secret(p, "storage.influx.password"))
                    .transpose()?,
            },
            (None, None) => Auth::None,
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(SinkError::Client)?;
        Ok(Self {
            client,
            create_database: config.create_database,
            base,
            api,
            auth,
            write_url,
        })
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, password.as_deref()),
            Auth::Token(token) => request.header("Authorization", format!("Token {token}")),
        }
    }

    /// Where the sink writes, for messages.
    fn target(&self) -> String {
        match &self.api {
            Api::V1 { database } => format!("database {database:?} at {}", self.base),
            Api::V2 { org, bucket } => format!("bucket {bucket:?} of org {org:?} at {}", self.base),
        }
    }

    /// Fails (transiently) while the server is unreachable, so that startup waits for it. v1
    /// creates the database when configured to (idempotent in InfluxDB 1.x), otherwise asks
    /// `/ping`; v2 creates nothing, because buckets are the operator's to provision, and only
    /// asks `/ping`. Refused credentials are a configuration error.
    pub async fn prepare(&self) -> Result<(), SinkError> {
        let database = match &self.api {
            Api::V1 { database } if self.create_database => database,
            _ => return self.ping().await,
        };
        let q = format!("CREATE DATABASE {}", crate::history::identifier(database));
        let response = self
            .authorize(self.client.post(format!("{}/query", self.base)))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("q={}", urlencode(&q)))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let message = server_message(&headers, &response.text().await.unwrap_or_default());
        if matches!(status.as_u16(), 401 | 403) {
            return Err(self.credentials_refused(status, message, "create the database"));
        }
        Err(SinkError::CreateDatabase {
            database: database.clone(),
            base: self.base.clone(),
            status,
            message,
        })
    }

    async fn ping(&self) -> Result<(), SinkError> {
        let response = self
            .authorize(self.client.get(format!("{}/ping", self.base)))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let message = server_message(&headers, &response.text().await.unwrap_or_default());
        if matches!(status.as_u16(), 401 | 403) {
            return Err(self.credentials_refused(status, message, "answer /ping"));
        }
        Err(SinkError::Ping {
            base: self.base.clone(),
            status,
            message,
        })
    }

    fn unreachable(&self, source: reqwest::Error) -> SinkError {
        SinkError::Unreachable {
            base: self.base.clone(),
            source,
        }
    }

    fn credentials_refused(
        &self,
        status: StatusCode,
        message: String,
        action: &'static str,
    ) -> SinkError {
        let settings = match self.api {
            Api::V1 { .. } => "storage.influx.username and password",
            Api::V2 { .. } => "storage.influx.token (it needs write access to the bucket)",
        };
        SinkError::CredentialsRefused {
            target: self.target(),
            action,
            status,
            message,
            settings,
        }
    }

    /// Writes the batches. Network errors, 5xx, 429 and a missing database or bucket are
    /// transient (the whole write may be repeated: it is idempotent); refused credentials are
    /// a configuration error; points the server refuses for good are isolated and reported.
    pub async fn write(&self, batches: &[SampleBatch]) -> Result<WriteReport, SinkError> {
        let count: usize = batches.iter().map(|b| b.samples.len()).sum();
        let mut body = String::with_capacity(64 * count);
        let mut points = Vec::new();
        let mut report = WriteReport::default();
        for (index, batch) in batches.iter().enumerate() {
            let encoded = line_protocol::encode_batch(batch, &mut body);
            for r in encoded.rejected {
                report.rejected.push(Rejection {
                    batch: index,
                    samples: r.samples,
                    reason: format!("{}/{}: {}", batch.device, r.what, r.reason),
                });
            }
            points.extend(encoded.lines.into_iter().map(|l| Point {
                batch: index,
                range: l.range,
                samples: l.samples,
                timestamp_ns: l.timestamp_ns,
            }));
        }
        if points.is_empty() {
            return Ok(report);
        }
        self.send_isolating(&body, &points, batches, &mut report)
            .await?;
        Ok(report)
    }

    /// Sends all `points`; while the server refuses a part, sends its halves, until every
    /// refused point stands alone. At most one extra request per point.
    async fn send_isolating(
        &self,
        body: &str,
        points: &[Point],
        batches: &[SampleBatch],
        report: &mut WriteReport,
    ) -> Result<(), SinkError> {
        // Parts still to send, the next on top, each with the refusal that split it off.
        let mut todo: Vec<(Range<usize>, Option<String>)> = vec![(0..points.len(), None)];
        let mut spare = points.len();
        while let Some((part, split_by)) = todo.pop() {
            if let Some(reason) = &split_by {
                if spare == 0 {
                    refuse_unisolated(&points[part], reason, report);
                    continue;
                }
                spare -= 1;
            }
            let text = &body[points[part.start].range.start..points[part.end - 1].range.end];
            let message = match self.post(text).await? {
                Answer::Stored => continue,
                Answer::Refused(message) => message,
                Answer::TooLarge(message) => {
                    format!("the request was too large for the server (HTTP 413): {message}")
                }
            };
            if part.len() == 1 {
                let point = &points[part.start];
                let batch = &batches[point.batch];
                report.rejected.push(Rejection {
                    batch: point.batch,
                    samples: point.samples,
                    reason: format!(
                        "{message} (point: device {:?}, line {:?}, time {} ns)",
                        batch.device, batch.line, point.timestamp_ns
                    ),
                });
                continue;
            }
            tracing::debug!(
                points = part.len(),
                reason = %message,
                "InfluxDB refused part of a write; resending it in halves"
            );
            let middle = part.start + part.len() / 2;
            todo.push((middle..part.end, Some(message.clone())));
            todo.push((part.start..middle, Some(message)));
        }
        Ok(())
    }

    /// One write request with `text` (whole lines), gzip-compressed.
    async fn post(&self, text: &str) -> Result<Answer, SinkError> {
        let mut gz = GzEncoder::new(Vec::with_capacity(text.len() / 4), Compression::fast());
        gz.write_all(text.as_bytes()).map_err(SinkError::Gzip)?;
        let compressed = gz.finish().map_err(SinkError::Gzip)?;
        let response = self
            .authorize(self.client.post(&self.write_url))
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(compressed)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Answer::Stored);
        }
        let headers = response.headers().clone();
        let message = server_message(&headers, &response.text().await.unwrap_or_default());
        match status.as_u16() {
            400 | 422 => Ok(Answer::Refused(message)),
            413 => Ok(Answer::TooLarge(message)),
            401 | 403 => Err(self.credentials_refused(status, message, "write")),
            404 => {
                if matches!(self.api, Api::V1 { .. })
                    && self.create_database
                    && message.contains("database not found")
                {
                    // Dropped while storage runs: make it again; the retry then succeeds.
                    if let Err(error) = self.prepare().await {
                        tracing::warn!(%error, "cannot create the missing InfluxDB database");
                    }
                }
                let hint = if message.contains("page not found") {
                    match self.api {
                        Api::V1 { .. } => " (no InfluxDB v1 write API at this URL)",
                        Api::V2 { .. } => {
                            " (no InfluxDB v2 write API at this URL; InfluxDB 1.x before 1.8 needs database instead of org and bucket)"
                        }
                    }
                } else {
                    ""
                };
                Err(SinkError::NotFound {
                    target: self.target(),
                    message,
                    hint,
                })
            }
            429 | 503 => {
                let wait = retry_after(&headers).map(|d| d.min(MAX_RETRY_AFTER));
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
                Err(SinkError::Busy {
                    target: self.target(),
                    status,
                    waited: wait,
                    message,
                })
            }
            _ => Err(SinkError::Status {
                target: self.target(),
                status,
                message,
            }),
        }
    }
}

/// Reports the points of a part that was refused but not split further (the write's budget of
/// extra requests is spent): the server may have kept some of them.
fn refuse_unisolated(points: &[Point], reason: &str, report: &mut WriteReport) {
    let mut per_batch: Vec<(usize, usize)> = Vec::new();
    for p in points {
        match per_batch.last_mut() {
            Some((batch, samples)) if *batch == p.batch => *samples += p.samples,
            _ => per_batch.push((p.batch, p.samples)),
        }
    }
    for (batch, samples) in per_batch {
        report.rejected.push(Rejection {
            batch,
            samples,
            reason: format!(
                "{reason} (one or more of {} points sent together; not isolated further, to bound the requests of one write)",
                points.len()
            ),
        });
    }
}

/// A `Retry-After` given in seconds (the HTTP-date form is not used by InfluxDB).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The server's explanation of a failed request: InfluxDB 1.x puts it in the
/// `X-Influxdb-Error` header and as `{"error": …}` in the body, InfluxDB 2.x as
/// `{"code": …, "message": …}`, other servers as plain text.
fn server_message(headers: &HeaderMap, body: &str) -> String {
    let from_header = headers
        .get("X-Influxdb-Error")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .filter(|s| !s.is_empty());
    let body = body.trim();
    let message = from_header
        .or_else(|| json_string(body, "message"))
        .or_else(|| json_string(body, "error"))
        .unwrap_or_else(|| body.to_string());
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// The string value of `"key"` in a JSON object; `None` if the body is no JSON object or
/// has no such string.
fn json_string(body: &str, key: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(body).ok()? {
        serde_json::Value::Object(mut object) => match object.remove(key)? {
            serde_json::Value::String(text) => Some(text),
            _ => None,
        },
        _ => None,
    }
}

/// What is left as it is in a query parameter or form value: RFC 3986's unreserved
/// characters. Everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query parameter or form value.
pub(crate) fn urlencode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_from_each_server_kind() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            server_message(
                &headers,
                "{\"error\":\"partial write: field type conflict: input field \\\"x\\\" on measurement \\\"m\\\" is type integer, already exists as type float dropped=1\"}\n"
            ),
            "partial write: field type conflict: input field \"x\" on measurement \"m\" is type integer, already exists as type float dropped=1"
        );
        assert_eq!(
            server_message(
                &headers,
                "{\"code\":\"not found\",\"message\":\"bucket \\\"b\\u00fc\\\" not found\"}"
            ),
            "bucket \"bü\" not found"
        );
        assert_eq!(
            server_message(&headers, "404 page not found\n"),
            "404 page not found"
        );
        headers.insert(
            "X-Influxdb-Error",
            reqwest::header::HeaderValue::from_static("database not found: \"x\""),
        );
        assert_eq!(
            server_message(&headers, "{\"error\":\"ignored\"}"),
            "database not found: \"x\""
        );
        let long = "é".repeat(MAX_MESSAGE);
        assert!(server_message(&HeaderMap::new(), &long).len() <= MAX_MESSAGE + 3);
        assert_eq!(json_string("{\"error\":\"unterminated", "error"), None);
        assert_eq!(json_string("[\"error\"]", "error"), None);
    }

    #[test]
    fn query_values_keep_only_unreserved_characters() {
        assert_eq!(urlencode("plant-1_a.b~c"), "plant-1_a.b~c");
        assert_eq!(
            urlencode("CREATE DATABASE \"a&b\" ü/+"),
            "CREATE%20DATABASE%20%22a%26b%22%20%C3%BC%2F%2B"
        );
    }

    #[test]
    fn retry_after_in_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("7"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
