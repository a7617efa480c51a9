//! The latest value of a tag, in MariaDB and in SQLite: a reading stamped in the future (a
//! device whose clock ran ahead) does not pin it, a replay still never moves it back, and a
//! row the database refuses costs that row, not the others written with it.

use fieldline_core::{Sample, SampleBatch, Value, config::SqlConfig};
use fieldline_storage::sinks::sql::SqlSink;
use fieldline_testkit as kit;
use sqlx::Executor;

async fn check(sink: &SqlSink) -> anyhow::Result<()> {
    let batch = |ts: i64, v: f64| SampleBatch {
        line: "l".into(),
        device: "d".into(),
        adapter_id: "a".into(),
        sequence: 1,
        samples: vec![Sample::good("t", Value::F64(v), ts)],
    };
    let latest = || async {
        let row: (Option<String>, i64) = sqlx::query_as(
            "SELECT value_text, source_ns FROM latest_values WHERE line = 'l' AND tag = 't'",
        )
        .fetch_one(sink.pool())
        .await?;
        anyhow::Ok(row)
    };
    let now = fieldline_runtime::now_ns();
    let next_year = now + 365 * 24 * 3600 * 1_000_000_000;
    sink.write(&[batch(next_year, 99.0)]).await?;
    assert_eq!(latest().await?, (Some("99".into()), next_year));
    sink.write(&[batch(now, 1.0)]).await?;
    assert_eq!(
        latest().await?,
        (Some("1".into()), now),
        "a reading of the present replaces one from next year"
    );
    sink.write(&[batch(now - 1_000, 0.5)]).await?;
    assert_eq!(
        latest().await?,
        (Some("1".into()), now),
        "an older replay does not move the latest value back"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sink = SqlSink::connect(&SqlConfig {
        url: format!("sqlite://{}", dir.path().join("t.db").display()),
        password: None,
    })
    .await?;
    check(&sink).await
}

/// A sink on a scratch MariaDB database, dropped again when the database is done.
struct ScratchDb {
    admin: sqlx::MySqlConnection,
    db: String,
    sink: SqlSink,
}

impl ScratchDb {
    async fn create(prefix: &str) -> anyhow::Result<Self> {
        kit::require_mysql()?;
        let db = kit::unique(prefix).replace('-', "_");
        let mut admin =
            <sqlx::MySqlConnection as sqlx::Connection>::connect(kit::MYSQL_URL).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{db}`")))
            .await?;
        let sink = SqlSink::connect(&SqlConfig {
            url: format!("mysql://root@127.0.0.1:3306/{db}"),
            password: None,
        })
        .await?;
        Ok(Self { admin, db, sink })
    }

    async fn drop_db(mut self) -> anyhow::Result<()> {
        let db = &self.db;
        self.admin
            .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE `{db}`")))
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn mariadb() -> anyhow::Result<()> {
    let scratch = ScratchDb::create("latest").await?;
    let outcome = check(&scratch.sink).await;
    scratch.drop_db().await?;
    outcome
}

#[tokio::test]
async fn mariadb_refusing_one_row_stores_the_others() -> anyhow::Result<()> {
    let scratch = ScratchDb::create("isolate").await?;
    let sink = &scratch.sink;
    let now = fieldline_runtime::now_ns();
    // More than a TEXT column holds: MariaDB refuses that row.
    let huge = Value::String("x".repeat(70_000));
    let batch = SampleBatch {
        line: "l".into(),
        device: "d".into(),
        adapter_id: "a".into(),
        sequence: 1,
        samples: vec![
            Sample::good("ok", Value::F64(1.5), now),
            Sample::good("big", huge, now),
            Sample::good("ok2", Value::I64(7), now),
        ],
    };
    let outcome = async {
        let report = sink.write(&[batch]).await?;
        let stored: Vec<(String,)> =
            sqlx::query_as("SELECT tag FROM latest_values WHERE line = 'l' ORDER BY tag")
                .fetch_all(sink.pool())
                .await?;
        anyhow::Ok((report, stored))
    }
    .await;
    scratch.drop_db().await?;
    let (report, stored) = outcome?;
    let stored: Vec<&str> = stored.iter().map(|(t,)| t.as_str()).collect();
    assert_eq!(stored, ["ok", "ok2"]);
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    assert_eq!(
        (report.rejected[0].batch, report.rejected[0].samples),
        (0, 1)
    );
    assert!(
        report.rejected[0].reason.contains("\"big\""),
        "{:?}",
        report.rejected
    );
    Ok(())
}
