//! SQL sink through sqlx: MySQL/MariaDB for plant data, SQLite for the embedded mode, one code
//! path for both. Every insert is an upsert on a natural key, so a replayed batch changes
//! nothing, and the latest value of a tag never moves back to an older sample.

use std::{collections::HashSet, str::FromStr, sync::Mutex, time::Duration};

use fieldline_core::{
    Quality, Sample, SampleBatch, Value,
    config::{DeviceConfig, SqlConfig},
};
use sqlx::{
    Any, AnyPool,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
};

use super::{Disposition, FastMap, Rejection, SinkError, WriteReport};

static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row INSERT; keeps statements well under placeholder limits.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

/// A connected SQL database.
pub struct SqlSink {
    pool: AnyPool,
    dialect: Dialect,
    known_devices: Mutex<HashSet<(String, String)>>,
}

/// How far past the storage service's clock a latest value may be stamped before a newer
/// reading replaces it whatever its time: device clocks drift, but not by a minute.
const FUTURE_TOLERANCE_NS: i64 = 60_000_000_000;

impl SqlSink {
    /// Connects and applies migrations. Fails (transiently) while the server is unreachable.
    pub async fn connect(config: &SqlConfig) -> Result<Self, SinkError> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = connection_url(config)?;
        let options = AnyConnectOptions::from_str(&url).map_err(SinkError::SqlUrl)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 1 } else { 4 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL keeps readers off the writer's back; FULL makes an ack mean durable.
                        for pragma in [
                            "PRAGMA journal_mode=WAL",
                            "PRAGMA synchronous=FULL",
                            "PRAGMA busy_timeout=5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| SinkError::Connect {
                url: redact(&config.url),
                source,
            })?;
        let migrator = match dialect {
            Dialect::MySql => &MYSQL_MIGRATIONS,
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
        };
        migrator.run(&pool).await.map_err(SinkError::Migrate)?;
        Ok(Self {
            pool,
            dialect,
            known_devices: Mutex::new(HashSet::new()),
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Records the devices and tags of a line (from its configuration).
    pub async fn register_line(
        &self,
        line: &str,
        devices: &[DeviceConfig],
    ) -> Result<(), SinkError> {
        let now = fieldline_runtime::now_ns();
        for d in devices {
            self.upsert_device(
                line,
                d.name(),
                d.device_type(),
                d.protocol().as_str(),
                d.endpoint(),
                now,
            )
            .await?;
            for t in d.tag_metadata() {
                let sql = match self.dialect {
                    Dialect::MySql => {
                        "INSERT INTO tags (line, device, tag, data_type, address, unit, writable, description, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                        ON DUPLICATE KEY UPDATE data_type = VALUES(data_type), address = VALUES(address), unit = VALUES(unit), writable = VALUES(writable), description = VALUES(description), updated_ns = VALUES(updated_ns)"
                    }
                    Dialect::Sqlite => {
                        "INSERT INTO tags (line, device, tag, data_type, address, unit, writable, description, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                        ON CONFLICT (line, device, tag) DO UPDATE SET data_type = excluded.data_type, address = excluded.address, unit = excluded.unit, writable = excluded.writable, description = excluded.description, updated_ns = excluded.updated_ns"
                    }
                };
                sqlx::query::<Any>(sql)
                    .bind(line)
                    .bind(d.name())
                    .bind(&t.name)
                    .bind(&t.data_type)
                    .bind(&t.address)
                    .bind(t.unit.clone())
                    .bind(t.writable)
                    .bind(t.description.clone())
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
            }
            if let Ok(mut known) = self.known_devices.lock() {
                known.insert((line.to_string(), d.name().to_string()));
            }
        }
        Ok(())
    }

    async fn upsert_device(
        &self,
        line: &str,
        device: &str,
        device_type: &str,
        protocol: &str,
        endpoint: &str,
        now: i64,
    ) -> Result<(), SinkError> {
        let sql = match self.dialect {
            Dialect::MySql => {
                "INSERT INTO devices (line, device, device_type, protocol, endpoint, updated_ns) VALUES (?, ?, ?, ?, ?, ?) \
                ON DUPLICATE KEY UPDATE device_type = VALUES(device_type), protocol = VALUES(protocol), endpoint = VALUES(endpoint), updated_ns = VALUES(updated_ns)"
            }
            Dialect::Sqlite => {
                "INSERT INTO devices (line, device, device_type, protocol, endpoint, updated_ns) VALUES (?, ?, ?, ?, ?, ?) \
                ON CONFLICT (line, device) DO UPDATE SET device_type = excluded.device_type, protocol = excluded.protocol, endpoint = excluded.endpoint, updated_ns = excluded.updated_ns"
            }
        };
        sqlx::query::<Any>(sql)
            .bind(line)
            .bind(device)
            .bind(device_type)
            .bind(protocol)
            .bind(endpoint)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Stores the batches in one transaction: latest values always, the samples themselves
    /// in SQLite. Rows of all batches share multi-row statements. When the database refuses
    /// the write for its data, every sample is written on its own, so one bad row costs that
    /// row only: the others are stored and the refused ones reported.
    pub async fn write(&self, batches: &[SampleBatch]) -> Result<WriteReport, SinkError> {
        match self.write_together(batches).await {
            Err(error) if error.disposition() == Disposition::Permanent => {
                tracing::debug!(%error, "the database refused a write; writing its rows one by one");
                self.write_one_by_one(batches).await
            }
            other => other.map(|()| WriteReport::default()),
        }
    }

    async fn write_one_by_one(&self, batches: &[SampleBatch]) -> Result<WriteReport, SinkError> {
        let mut report = WriteReport::default();
        for (i, batch) in batches.iter().enumerate() {
            for sample in &batch.samples {
                let alone = SampleBatch {
                    line: batch.line.clone(),
                    device: batch.device.clone(),
                    adapter_id: batch.adapter_id.clone(),
                    sequence: batch.sequence,
                    samples: vec![sample.clone()],
                };
                match self.write_together(std::slice::from_ref(&alone)).await {
                    Ok(()) => {}
                    Err(error) if error.disposition() == Disposition::Permanent => {
                        report.rejected.push(Rejection {
                            batch: i,
                            samples: 1,
                            reason: format!(
                                "{error} (tag {:?} of device {:?}, line {:?})",
                                sample.tag, batch.device, batch.line
                            ),
                        });
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(report)
    }

    async fn write_together(&self, batches: &[SampleBatch]) -> Result<(), SinkError> {
        for batch in batches {
            self.note_device(batch).await?;
        }
        let rows: Vec<(&SampleBatch, &Sample)> = batches
            .iter()
            .flat_map(|b| b.samples.iter().map(move |s| (b, s)))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        // Only the newest sample of each tag can become its latest value: a group holding
        // several polls upserts each tag once (later batches win ties).
        let mut newest: FastMap<(&str, &str, &str), usize> =
            FastMap::with_capacity_and_hasher(rows.len(), Default::default());
        for (i, (b, s)) in rows.iter().enumerate() {
            let key = (b.line.as_str(), b.device.as_str(), s.tag.as_str());
            match newest.get_mut(&key) {
                Some(held) if rows[*held].1.timestamp_ns > s.timestamp_ns => {}
                Some(held) => *held = i,
                None => {
                    newest.insert(key, i);
                }
            }
        }
        let mut picked: Vec<usize> = newest.into_values().collect();
        picked.sort_unstable();
        let latest: Vec<(&SampleBatch, &Sample)> = picked.into_iter().map(|i| rows[i]).collect();
        let mut tx = self.pool.begin().await.map_err(classify)?;
        for chunk in latest.chunks(ROWS_PER_STATEMENT) {
            let values = placeholders(chunk.len(), 9);
            let sql = match self.dialect {
                Dialect::MySql => format!(
                    "INSERT INTO latest_values (line, device, tag, value_type, value_text, value_num, quality, quality_detail, source_ns) VALUES {values} \
                     ON DUPLICATE KEY UPDATE \
                     value_type = IF(VALUES(source_ns) >= source_ns OR source_ns > ?, VALUES(value_type), value_type), \
                     value_text = IF(VALUES(source_ns) >= source_ns OR source_ns > ?, VALUES(value_text), value_text), \
                     value_num = IF(VALUES(source_ns) >= source_ns OR source_ns > ?, VALUES(value_num), value_num), \
                     quality = IF(VALUES(source_ns) >= source_ns OR source_ns > ?, VALUES(quality), quality), \
                     quality_detail = IF(VALUES(source_ns) >= source_ns OR source_ns > ?, VALUES(quality_detail), quality_detail), \
                     source_ns = IF(VALUES(source_ns) >= source_ns OR source_ns > ?, VALUES(source_ns), source_ns)"
                ),
                Dialect::Sqlite => format!(
                    "INSERT INTO latest_values (line, device, tag, value_type, value_text, value_num, quality, quality_detail, source_ns) VALUES {values} \
                     ON CONFLICT (line, device, tag) DO UPDATE SET value_type = excluded.value_type, value_text = excluded.value_text, \
                     value_num = excluded.value_num, quality = excluded.quality, quality_detail = excluded.quality_detail, source_ns = excluded.source_ns \
                     WHERE excluded.source_ns >= latest_values.source_ns OR latest_values.source_ns > ?"
                ),
            };
            // A stored value newer than this row stays (a replay never moves it back), unless
            // it is stamped in the future.
            // Built only from fixed text and `?` placeholders; every value is bound.
            let mut query = sqlx::query::<Any>(sqlx::AssertSqlSafe(sql));
            for (b, s) in chunk {
                let (value_type, value_text, value_num) = columns(s.value.as_ref());
                query = query
                    .bind(&b.line)
                    .bind(&b.device)
                    .bind(&s.tag)
                    .bind(value_type)
                    .bind(value_text)
                    .bind(value_num)
                    .bind(s.quality.code())
                    .bind(quality_detail(&s.quality))
                    .bind(s.timestamp_ns);
            }
            // A stored value stamped beyond this (a device clock that was ahead) does not pin
            // the latest value: the next reading replaces it.
            let future = fieldline_runtime::now_ns().saturating_add(FUTURE_TOLERANCE_NS);
            let checks = match self.dialect {
                Dialect::MySql => 6,
                Dialect::Sqlite => 1,
            };
            for _ in 0..checks {
                query = query.bind(future);
            }
            query.execute(&mut *tx).await.map_err(classify)?;
        }
        if self.dialect == Dialect::Sqlite {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let values = placeholders(chunk.len(), 8);
                let sql = format!(
                    "INSERT OR REPLACE INTO samples (line, device, tag, ts_ns, value_type, value_text, value_num, quality) VALUES {values}"
                );
                // Built only from fixed text and `?` placeholders; every value is bound.
                let mut query = sqlx::query::<Any>(sqlx::AssertSqlSafe(sql));
                for (b, s) in chunk {
                    let (value_type, value_text, value_num) = columns(s.value.as_ref());
                    query = query
                        .bind(&b.line)
                        .bind(&b.device)
                        .bind(&s.tag)
                        .bind(s.timestamp_ns)
                        .bind(value_type)
                        .bind(value_text)
                        .bind(value_num)
                        .bind(s.quality.code());
                }
                query.execute(&mut *tx).await.map_err(classify)?;
            }
        }
        tx.commit().await.map_err(classify)
    }

    /// Records a device this service's configuration does not name, the first time it sends.
    async fn note_device(&self, batch: &SampleBatch) -> Result<(), SinkError> {
        let key = (batch.line.clone(), batch.device.clone());
        let known = self
            .known_devices
            .lock()
            .map(|k| k.contains(&key))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        let sql = match self.dialect {
            Dialect::MySql => {
                "INSERT IGNORE INTO devices (line, device, updated_ns) VALUES (?, ?, ?)"
            }
            Dialect::Sqlite => {
                "INSERT OR IGNORE INTO devices (line, device, updated_ns) VALUES (?, ?, ?)"
            }
        };
        sqlx::query::<Any>(sql)
            .bind(&batch.line)
            .bind(&batch.device)
            .bind(fieldline_runtime::now_ns())
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        if let Ok(mut k) = self.known_devices.lock() {
            k.insert(key);
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// (value_type, exact text, numeric form) of a value; all NULL when there is none.
pub fn columns(value: Option<&Value>) -> (Option<String>, Option<String>, Option<f64>) {
    match value {
        None => (None, None, None),
        Some(v) => {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (
                Some(v.type_name().to_string()),
                Some(text),
                v.as_f64().filter(|f| f.is_finite()),
            )
        }
    }
}

fn quality_detail(q: &Quality) -> String {
    match q {
        Quality::Good => String::new(),
        Quality::Uncertain { detail, .. } | Quality::Bad { detail, .. } => {
            detail.chars().take(255).collect()
        }
    }
}

/// Database errors about the data itself are permanent; everything else (connection lost,
/// server shutting down, pool exhausted, deadlock, lock wait, disk full) is worth retrying.
pub fn classify(e: sqlx::Error) -> SinkError {
    match &e {
        sqlx::Error::Database(db) => {
            let transient =
                if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                    // MySQL/MariaDB error numbers: lock wait timeout, deadlock, too many
                    // connections, server shutdown, connection killed, out of disk or memory,
                    // read-only server.
                    matches!(
                        my.number(),
                        1205 | 1213 | 1040 | 1053 | 1927 | 1021 | 1037 | 1038 | 1041 | 1290 | 1836
                    ) || my
                        .code()
                        .is_some_and(|c| c.starts_with("08") || c == "40001")
                } else {
                    // SQLite result codes, with extended codes in the high bits: busy, locked,
                    // I/O error, disk full.
                    db.code()
                        .and_then(|c| c.parse::<u32>().ok())
                        .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13))
                };
            if transient {
                SinkError::DatabaseBusy(e)
            } else {
                SinkError::DatabaseRefused(e)
            }
        }
        _ => SinkError::DatabaseUnavailable(e),
    }
}

fn connection_url(config: &SqlConfig) -> Result<(Dialect, String), SinkError> {
    let url = config.url.trim();
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let mut url = format!("sqlite:{rest}");
        if !url.contains("mode=") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        return Ok((Dialect::Sqlite, url));
    }
    let rest = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))
        .ok_or_else(|| SinkError::SqlScheme { url: redact(url) })?;
    let mut url = format!("mysql://{rest}");
    if let Some(secret) = &config.password {
        let password =
            fieldline_runtime::secret::resolve(secret).map_err(|e| SinkError::Setting {
                setting: "storage.sql.password",
                source: e.into(),
            })?;
        let host_start = rest.find('/').unwrap_or(rest.len());
        let Some(at) = rest[..host_start].find('@') else {
            return Err(SinkError::SqlUser);
        };
        let encoded =
            percent_encoding::utf8_percent_encode(&password, percent_encoding::NON_ALPHANUMERIC);
        url = format!("mysql://{}:{encoded}{}", &rest[..at], &rest[at..]);
    }
    Ok((Dialect::MySql, url))
}

/// The URL with any password masked, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_core::QualityReason;

    #[test]
    fn passwords_go_into_the_url_encoded_and_never_into_messages() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "p@ss:w/rd\n").unwrap();
        let config = SqlConfig {
            url: "mysql://root@127.0.0.1:3306/test".into(),
            password: Some(fieldline_core::config::SecretRef::file(secret)),
        };
        let (dialect, url) = connection_url(&config).unwrap();
        assert_eq!(dialect, Dialect::MySql);
        assert_eq!(url, "mysql://root:p%40ss%3Aw%2Frd@127.0.0.1:3306/test");
        assert_eq!(redact(&url), "mysql://root:***@127.0.0.1:3306/test");
        let (dialect, url) = connection_url(&SqlConfig {
            url: "sqlite://x.db".into(),
            password: None,
        })
        .unwrap();
        assert_eq!(
            (dialect, url.as_str()),
            (Dialect::Sqlite, "sqlite://x.db?mode=rwc")
        );
    }

    #[tokio::test]
    async fn sqlite_upserts_are_idempotent_and_never_go_back_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let sink = SqlSink::connect(&SqlConfig {
            url,
            password: None,
        })
        .await
        .unwrap();
        let batch = |ts: i64, v: f64| SampleBatch {
            line: "l".into(),
            device: "d".into(),
            adapter_id: "a".into(),
            sequence: 1,
            samples: vec![
                Sample::good("t", Value::F64(v), ts),
                Sample::bad("x", Quality::bad(QualityReason::CommFailure, "timeout"), ts),
            ],
        };
        sink.write(&[batch(200, 2.0)]).await.unwrap();
        sink.write(&[batch(200, 2.0)]).await.unwrap();
        sink.write(&[batch(100, 1.0)]).await.unwrap();
        // Several batches in one write: the newest of each tag wins whatever the order.
        sink.write(&[batch(300, 3.0), batch(250, 2.5)])
            .await
            .unwrap();
        let (text, ts): (String, i64) =
            sqlx::query_as("SELECT value_text, source_ns FROM latest_values WHERE tag = 't'")
                .fetch_one(sink.pool())
                .await
                .unwrap();
        assert_eq!(
            (text.as_str(), ts),
            ("3", 300),
            "an older sample must not overwrite the latest value"
        );
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM samples")
            .fetch_one(sink.pool())
            .await
            .unwrap();
        assert_eq!(count, 8, "two tags at four timestamps, replays replaced");
        let (q, v): (String, Option<String>) =
            sqlx::query_as("SELECT quality, value_text FROM latest_values WHERE tag = 'x'")
                .fetch_one(sink.pool())
                .await
                .unwrap();
        assert_eq!((q.as_str(), v), ("bad:comm_failure", None));
    }
}
