//! StorageService.QueryHistory: stored samples of one tag in a time range, raw or per time
//! window (mean, min, max, last). Answered by InfluxDB through InfluxQL when InfluxDB is
//! configured, otherwise by the SQLite sample table of the embedded mode.

use std::str::FromStr;

use fieldline_core::{Quality, Value, config::InfluxConfig};
use fieldline_proto::v1;
use sqlx::{Any, AnyPool, Row};

use crate::sinks::{BoxError, SinkError, influx::urlencode};

/// Points returned when the request sets no limit.
pub const DEFAULT_LIMIT: usize = 10_000;
/// Most points one request may ask for.
pub const MAX_LIMIT: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Raw,
    Mean,
    Min,
    Max,
    Last,
}

impl Aggregate {
    fn influxql(self) -> &'static str {
        match self {
            Aggregate::Raw => "",
            Aggregate::Mean => "mean",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Last => "last",
        }
    }

    /// Mean, min and max need numbers; last and raw take every type.
    fn needs_numbers(self) -> bool {
        matches!(self, Aggregate::Mean | Aggregate::Min | Aggregate::Max)
    }
}

/// A checked history request.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    pub line: String,
    pub device: String,
    pub tag: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub aggregate: Aggregate,
    pub window_ns: i64,
    pub limit: usize,
}

/// What is wrong with a history request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRequest {
    /// `line`, `device` or `tag` is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("start_ns ({start_ns}) must be before end_ns ({end_ns})")]
    EmptyRange { start_ns: i64, end_ns: i64 },
    #[error("unknown aggregate {0}")]
    UnknownAggregate(i32),
    #[error("aggregates need window_ns > 0")]
    NoWindow,
    #[error("limit {0} is above the maximum of {MAX_LIMIT}")]
    Limit(usize),
    /// Mean, min or max of a tag whose stored values are not numbers.
    #[error("{aggregate} needs a numeric tag; {tag} is {stored}")]
    NotNumeric {
        aggregate: &'static str,
        tag: String,
        /// The stored type or types, e.g. `string` or `int and string`.
        stored: String,
    },
}

/// Why a history request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The request itself is wrong.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// Nothing configured can answer history.
    #[error("no history backend: configure storage.influx, or a SQLite storage.sql")]
    NoBackend,
    /// The SQLite sink has not opened its database yet.
    #[error("the SQLite database is not open yet")]
    NotOpen,
    /// InfluxDB cannot be reached.
    #[error("InfluxDB unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// InfluxDB's answer broke off.
    #[error("reading InfluxDB's answer: {0}")]
    Answer(#[source] reqwest::Error),
    /// InfluxDB answered an HTTP error.
    #[error("InfluxDB answered HTTP {status}: {body}")]
    Status {
        status: reqwest::StatusCode,
        body: String,
    },
    /// InfluxDB's answer is not JSON.
    #[error("InfluxDB's answer is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// InfluxDB could not run the query, with its reason.
    #[error("InfluxDB: {0}")]
    Query(String),
    /// The SQLite query failed.
    #[error("reading history: {0}")]
    Sql(#[source] sqlx::Error),
    /// InfluxDB answered a row without its time.
    #[error("InfluxDB returned a row without a time")]
    NoTime,
    /// InfluxDB answered a value that is not of the field's type.
    #[error("InfluxDB returned {value} for a {kind} field")]
    FieldType {
        value: serde_json::Value,
        kind: String,
    },
    /// A stored quality code that does not parse.
    #[error("{0}")]
    Quality(#[source] BoxError),
    /// A value stored by the SQL sink that does not parse as its type.
    #[error("stored {kind} value {text:?} is unreadable")]
    StoredValue { kind: String, text: String },
}

impl HistoryError {
    /// The `kind` label of this error in `errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            HistoryError::Invalid(_) => "history_invalid",
            HistoryError::NoBackend => "history_unavailable",
            HistoryError::NotOpen => "history_not_open",
            HistoryError::Unreachable(_) | HistoryError::Answer(_) => "history_unreachable",
            HistoryError::Status { .. } => "history_http_status",
            HistoryError::NotJson(_)
            | HistoryError::NoTime
            | HistoryError::FieldType { .. }
            | HistoryError::Quality(_)
            | HistoryError::StoredValue { .. } => "history_unreadable",
            HistoryError::Query(_) => "history_query",
            HistoryError::Sql(_) => "history_sql",
        }
    }
}

impl From<HistoryError> for tonic::Status {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Invalid(m) => tonic::Status::invalid_argument(m.to_string()),
            HistoryError::NoBackend => tonic::Status::failed_precondition(e.to_string()),
            backend => tonic::Status::unavailable(backend.to_string()),
        }
    }
}

impl TryFrom<v1::HistoryRequest> for HistoryQuery {
    type Error = HistoryError;

    fn try_from(r: v1::HistoryRequest) -> Result<Self, HistoryError> {
        let invalid = |problem: InvalidRequest| Err(HistoryError::Invalid(problem));
        for (what, name) in [("line", &r.line), ("device", &r.device), ("tag", &r.tag)] {
            if name.is_empty() {
                return invalid(InvalidRequest::Missing(what));
            }
        }
        if r.start_ns >= r.end_ns {
            return invalid(InvalidRequest::EmptyRange {
                start_ns: r.start_ns,
                end_ns: r.end_ns,
            });
        }
        let aggregate = match v1::Aggregate::try_from(r.aggregate) {
            Ok(v1::Aggregate::Unspecified) => Aggregate::Raw,
            Ok(v1::Aggregate::Mean) => Aggregate::Mean,
            Ok(v1::Aggregate::Min) => Aggregate::Min,
            Ok(v1::Aggregate::Max) => Aggregate::Max,
            Ok(v1::Aggregate::Last) => Aggregate::Last,
            Err(_) => return invalid(InvalidRequest::UnknownAggregate(r.aggregate)),
        };
        if aggregate != Aggregate::Raw && r.window_ns <= 0 {
            return invalid(InvalidRequest::NoWindow);
        }
        let limit = match r.limit as usize {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => return invalid(InvalidRequest::Limit(n)),
            n => n,
        };
        Ok(HistoryQuery {
            line: r.line,
            device: r.device,
            tag: r.tag,
            start_ns: r.start_ns,
            end_ns: r.end_ns,
            aggregate,
            window_ns: r.window_ns,
            limit,
        })
    }
}

/// One point of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPoint {
    pub timestamp_ns: i64,
    pub value: Option<Value>,
    /// Raw samples only.
    pub quality: Option<Quality>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub points: Vec<HistoryPoint>,
    pub truncated: bool,
}

impl History {
    /// Keeps `limit` points and notes whether there were more.
    fn limited(mut points: Vec<HistoryPoint>, limit: usize) -> Self {
        let truncated = points.len() > limit;
        points.truncate(limit);
        History { points, truncated }
    }
}

impl From<History> for v1::HistoryResponse {
    fn from(h: History) -> Self {
        v1::HistoryResponse {
            points: h
                .points
                .into_iter()
                .map(|p| v1::HistoryPoint {
                    timestamp_ns: p.timestamp_ns,
                    value: p.value.map(Into::into),
                    quality: p.quality.map(Into::into),
                })
                .collect(),
            truncated: h.truncated,
        }
    }
}

/// Where history is read from.
pub enum HistorySource {
    Influx(InfluxHistory),
    /// The SQLite sink among the backends.
    Sqlite(crate::Backends),
}

impl HistorySource {
    pub async fn query(&self, q: &HistoryQuery) -> Result<History, HistoryError> {
        match self {
            HistorySource::Influx(influx) => influx.query(q).await,
            HistorySource::Sqlite(backends) => {
                let pool = backends
                    .get()
                    .unwrap_or_default()
                    .iter()
                    .find_map(|sink| match sink {
                        crate::sinks::Sink::Sql(sql) => Some(sql.pool()),
                        crate::sinks::Sink::Influx(_) => None,
                    })
                    .ok_or(HistoryError::NotOpen)?;
                sqlite_query(pool, q).await
            }
        }
    }
}

/// InfluxQL over the `/query` endpoint: InfluxDB 1.x, and InfluxDB 2.x through its 1.x
/// compatibility API (the bucket needs a database/retention-policy mapping there).
pub struct InfluxHistory {
    client: reqwest::Client,
    url: String,
    database: String,
    retention_policy: Option<String>,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

impl InfluxHistory {
    pub fn new(config: &InfluxConfig) -> Result<Self, SinkError> {
        let target = config.target().map_err(|e| SinkError::Setting {
            setting: "storage.influx",
            source: e.into(),
        })?;
        let (database, retention_policy) = match target {
            fieldline_core::config::InfluxTarget::V1 {
                database,
                retention_policy,
            } => (database.to_string(), retention_policy.map(str::to_string)),
            fieldline_core::config::InfluxTarget::V2 { bucket, .. } => (bucket.to_string(), None),
        };
        let resolve = |s: &Option<fieldline_core::config::SecretRef>, setting: &'static str| match s
        {
            Some(secret) => fieldline_runtime::secret::resolve(secret)
                .map(Some)
                .map_err(|e| SinkError::Setting {
                    setting,
                    source: e.into(),
                }),
            None => Ok(None),
        };
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(config.timeout.max(std::time::Duration::from_secs(30)))
                .build()
                .map_err(SinkError::Client)?,
            url: format!("{}/query", config.url.trim_end_matches('/')),
            database,
            retention_policy,
            username: config.username.clone(),
            password: resolve(&config.password, "storage.influx.password")?,
            token: resolve(&config.token, "storage.influx.token")?,
        })
    }

    fn measurement(&self, device: &str) -> String {
        match &self.retention_policy {
            Some(rp) => format!(
                "{}.{}.{}",
                identifier(&self.database),
                identifier(rp),
                identifier(device)
            ),
            None => identifier(device),
        }
    }

    async fn run(&self, q: &str) -> Result<serde_json::Value, HistoryError> {
        let form = format!(
            "db={}&epoch=ns&q={}",
            urlencode(&self.database),
            urlencode(q)
        );
        let mut request = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Token {token}"));
        } else if let Some(user) = &self.username {
            request = request.basic_auth(user, self.password.as_deref());
        }
        let response = request.send().await.map_err(HistoryError::Unreachable)?;
        let status = response.status();
        let body = response.text().await.map_err(HistoryError::Answer)?;
        if !status.is_success() {
            return Err(HistoryError::Status {
                status,
                body: body.trim().to_string(),
            });
        }
        let json: serde_json::Value = serde_json::from_str(&body).map_err(HistoryError::NotJson)?;
        if let Some(error) = json
            .pointer("/results/0/error")
            .or_else(|| json.get("error"))
            .and_then(|e| e.as_str())
        {
            return Err(HistoryError::Query(error.to_string()));
        }
        Ok(json)
    }

    /// The InfluxDB field type of `tag` (float, integer, boolean, string), if it has values.
    async fn field_type(&self, q: &HistoryQuery) -> Result<Option<String>, HistoryError> {
        let json = self
            .run(&format!(
                "SHOW FIELD KEYS FROM {}",
                self.measurement(&q.device)
            ))
            .await?;
        let types = rows(&json)
            .iter()
            .filter_map(|row| match (row.first()?.as_str(), row.get(1)?.as_str()) {
                (Some(name), Some(kind)) if name == q.tag => Some(kind.to_string()),
                _ => None,
            })
            .next();
        Ok(types)
    }

    pub async fn query(&self, q: &HistoryQuery) -> Result<History, HistoryError> {
        let kind = self.field_type(q).await?;
        if q.aggregate.needs_numbers()
            && let Some(kind) = &kind
            && !matches!(kind.as_str(), "float" | "integer")
        {
            return Err(InvalidRequest::NotNumeric {
                aggregate: q.aggregate.influxql(),
                tag: q.tag.clone(),
                stored: kind.clone(),
            }
            .into());
        }
        let range = format!(
            "{} = {} AND time >= {}ns AND time < {}ns",
            identifier("line"),
            literal(&q.line),
            q.start_ns,
            q.end_ns
        );
        let from = self.measurement(&q.device);
        let field = identifier(&q.tag);
        let limit = q.limit + 1;
        if q.aggregate == Aggregate::Raw {
            let quality = identifier(&format!("{}_quality", q.tag));
            let json = self
                .run(&format!(
                    "SELECT {field}, {quality} FROM {from} WHERE {range} ORDER BY time ASC LIMIT {limit}"
                ))
                .await?;
            let columns = columns(&json);
            let value_at = columns.iter().position(|c| c == &q.tag);
            let quality_at = columns
                .iter()
                .position(|c| *c == format!("{}_quality", q.tag));
            let mut points = Vec::new();
            for row in rows(&json) {
                let timestamp_ns = timestamp(&row)?;
                let value = match (value_at.and_then(|i| row.get(i)), &kind) {
                    (Some(v), Some(kind)) if !v.is_null() => Some(typed(v, kind)?),
                    _ => None,
                };
                let quality = match quality_at.and_then(|i| row.get(i)).and_then(|q| q.as_str()) {
                    Some(code) => Quality::from_str(code).map_err(unreadable_quality)?,
                    None => Quality::Good,
                };
                points.push(HistoryPoint {
                    timestamp_ns,
                    value,
                    quality: Some(quality),
                });
            }
            return Ok(History::limited(points, q.limit));
        }
        let Some(kind) = kind else {
            return Ok(History::default());
        };
        let json = self
            .run(&format!(
                "SELECT {}({field}) FROM {from} WHERE {range} GROUP BY time({}ns) fill(none) LIMIT {limit}",
                q.aggregate.influxql(),
                q.window_ns
            ))
            .await?;
        let value_kind = if q.aggregate == Aggregate::Mean {
            "float"
        } else {
            kind.as_str()
        };
        let mut points = Vec::new();
        for row in rows(&json) {
            let Some(v) = row.get(1).filter(|v| !v.is_null()) else {
                continue;
            };
            points.push(HistoryPoint {
                timestamp_ns: timestamp(&row)?,
                value: Some(typed(v, value_kind)?),
                quality: None,
            });
        }
        Ok(History::limited(points, q.limit))
    }
}

fn rows(json: &serde_json::Value) -> Vec<Vec<serde_json::Value>> {
    json.pointer("/results/0/series/0/values")
        .and_then(|v| v.as_array())
        .map(|rows| rows.iter().filter_map(|r| r.as_array().cloned()).collect())
        .unwrap_or_default()
}

fn columns(json: &serde_json::Value) -> Vec<String> {
    json.pointer("/results/0/series/0/columns")
        .and_then(|v| v.as_array())
        .map(|c| {
            c.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn timestamp(row: &[serde_json::Value]) -> Result<i64, HistoryError> {
    row.first()
        .and_then(|t| t.as_i64())
        .ok_or(HistoryError::NoTime)
}

/// A JSON value from InfluxDB as a value of the field's type.
fn typed(v: &serde_json::Value, kind: &str) -> Result<Value, HistoryError> {
    let value = match kind {
        "float" => v.as_f64().map(Value::F64),
        "integer" => v.as_i64().map(Value::I64),
        "boolean" => v.as_bool().map(Value::Bool),
        "string" => v.as_str().map(|s| Value::String(s.to_string())),
        _ => None,
    };
    value.ok_or_else(|| HistoryError::FieldType {
        value: v.clone(),
        kind: kind.to_string(),
    })
}

/// A stored quality code that does not parse.
fn unreadable_quality(e: impl Into<BoxError>) -> HistoryError {
    HistoryError::Quality(e.into())
}

/// An InfluxQL identifier, quoted.
pub(crate) fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An InfluxQL string literal, quoted.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The same request against the SQLite sample table of the embedded mode.
async fn sqlite_query(pool: &AnyPool, q: &HistoryQuery) -> Result<History, HistoryError> {
    let backend = HistoryError::Sql;
    let limit = i64::try_from(q.limit + 1).unwrap_or(i64::MAX);
    const WHERE: &str = "line = ? AND device = ? AND tag = ? AND ts_ns >= ? AND ts_ns < ?";
    if q.aggregate == Aggregate::Raw {
        let rows = sqlx::query::<Any>(sqlx::AssertSqlSafe(format!(
            "SELECT ts_ns, value_type, value_text, quality FROM samples WHERE {WHERE} ORDER BY ts_ns LIMIT ?"
        )))
        .bind(&q.line)
        .bind(&q.device)
        .bind(&q.tag)
        .bind(q.start_ns)
        .bind(q.end_ns)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
        let mut points = Vec::with_capacity(rows.len());
        for row in rows {
            let value_type: Option<String> = row.try_get(1).map_err(backend)?;
            let value_text: Option<String> = row.try_get(2).map_err(backend)?;
            let quality: String = row.try_get(3).map_err(backend)?;
            points.push(HistoryPoint {
                timestamp_ns: row.try_get(0).map_err(backend)?,
                value: stored_value(value_type.as_deref(), value_text.as_deref())?,
                quality: Some(Quality::from_str(&quality).map_err(unreadable_quality)?),
            });
        }
        return Ok(History::limited(points, q.limit));
    }
    // The tag's stored type decides how min, max and last are read back.
    let kinds: Vec<String> = sqlx::query_scalar::<Any, String>(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT value_type FROM samples WHERE {WHERE} AND value_type IS NOT NULL LIMIT 3"
    )))
    .bind(&q.line)
    .bind(&q.device)
    .bind(&q.tag)
    .bind(q.start_ns)
    .bind(q.end_ns)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    let Some(kind) = kinds.first().cloned() else {
        return Ok(History::default());
    };
    let numeric = matches!(kind.as_str(), "int" | "uint" | "float");
    if q.aggregate.needs_numbers() && (!numeric || kinds.len() > 1) {
        return Err(InvalidRequest::NotNumeric {
            aggregate: q.aggregate.influxql(),
            tag: q.tag.clone(),
            stored: kinds.join(" and "),
        }
        .into());
    }
    // Windows aligned to the epoch, as InfluxDB aligns GROUP BY time().
    let select = match (q.aggregate, kind.as_str()) {
        (Aggregate::Mean, _) => "SELECT ts_ns / ? AS w, 'float', NULL, AVG(value_num)",
        (Aggregate::Min, "int" | "uint") => {
            "SELECT ts_ns / ? AS w, value_type, CAST(MIN(CAST(value_text AS INTEGER)) AS TEXT)"
        }
        (Aggregate::Max, "int" | "uint") => {
            "SELECT ts_ns / ? AS w, value_type, CAST(MAX(CAST(value_text AS INTEGER)) AS TEXT)"
        }
        // A bare column beside MIN/MAX is taken from the row that holds the extreme.
        (Aggregate::Min, _) => "SELECT ts_ns / ? AS w, value_type, value_text, MIN(value_num)",
        (Aggregate::Max, _) => "SELECT ts_ns / ? AS w, value_type, value_text, MAX(value_num)",
        // And beside MAX(ts_ns), from the newest row of the window.
        (_, _) => "SELECT ts_ns / ? AS w, value_type, value_text, MAX(ts_ns)",
    };
    let sql = format!(
        "{select} FROM samples WHERE {WHERE} AND value_text IS NOT NULL GROUP BY w ORDER BY w LIMIT ?"
    );
    let rows = sqlx::query::<Any>(sqlx::AssertSqlSafe(sql))
        .bind(q.window_ns)
        .bind(&q.line)
        .bind(&q.device)
        .bind(&q.tag)
        .bind(q.start_ns)
        .bind(q.end_ns)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    let mut points = Vec::with_capacity(rows.len());
    for row in rows {
        let window: i64 = row.try_get(0).map_err(backend)?;
        let value_type: Option<String> = row.try_get(1).map_err(backend)?;
        let value = if q.aggregate == Aggregate::Mean {
            // The mean as the double SQLite computed, not a rounded text of it.
            row.try_get::<Option<f64>, _>(3)
                .map_err(backend)?
                .map(Value::F64)
        } else {
            let value_text: Option<String> = row.try_get(2).map_err(backend)?;
            stored_value(value_type.as_deref(), value_text.as_deref())?
        };
        if value.is_some() {
            points.push(HistoryPoint {
                timestamp_ns: window.saturating_mul(q.window_ns),
                value,
                quality: None,
            });
        }
    }
    Ok(History::limited(points, q.limit))
}

/// A value as the SQL sink stores it (`value_type`, exact text).
fn stored_value(kind: Option<&str>, text: Option<&str>) -> Result<Option<Value>, HistoryError> {
    let (Some(kind), Some(text)) = (kind, text) else {
        return Ok(None);
    };
    let bad = || HistoryError::StoredValue {
        kind: kind.to_string(),
        text: text.to_string(),
    };
    Ok(Some(match kind {
        "bool" => Value::Bool(text.parse().map_err(|_| bad())?),
        "int" => Value::I64(text.parse().map_err(|_| bad())?),
        "uint" => Value::U64(text.parse().map_err(|_| bad())?),
        "float" => Value::F64(text.parse().map_err(|_| bad())?),
        "string" => Value::String(text.to_string()),
        _ => return Err(bad()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn influxql_names_and_literals_are_quoted() {
        assert_eq!(identifier(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(literal(r"it's \ here"), r"'it\'s \\ here'");
    }

    #[test]
    fn requests_are_checked() {
        let ok = v1::HistoryRequest {
            line: "l".into(),
            device: "d".into(),
            tag: "t".into(),
            start_ns: 0,
            end_ns: 10,
            aggregate: 0,
            window_ns: 0,
            limit: 0,
        };
        let q = HistoryQuery::try_from(ok.clone()).unwrap();
        assert_eq!((q.aggregate, q.limit), (Aggregate::Raw, DEFAULT_LIMIT));
        let wrong = [
            v1::HistoryRequest {
                tag: String::new(),
                ..ok.clone()
            },
            v1::HistoryRequest {
                end_ns: 0,
                ..ok.clone()
            },
            v1::HistoryRequest {
                aggregate: v1::Aggregate::Mean as i32,
                ..ok.clone()
            },
            v1::HistoryRequest {
                aggregate: 99,
                window_ns: 5,
                ..ok.clone()
            },
            v1::HistoryRequest {
                limit: 1_000_000,
                ..ok.clone()
            },
        ];
        for r in wrong {
            assert!(
                matches!(
                    HistoryQuery::try_from(r.clone()),
                    Err(HistoryError::Invalid(_))
                ),
                "{r:?} must be refused"
            );
        }
    }
}
