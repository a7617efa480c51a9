//! Plant records through StorageService: stored with their batch or alone, durable before the
//! answer, held in the write-ahead buffer while MariaDB is down, and resumed from by
//! LoadPlantState, which counts what is still in the buffer. MariaDB and InfluxDB are private
//! instances of this test, so stopping them disturbs no other test.

use std::time::Duration;

use fieldline_proto::v1::{self, storage_service_client::StorageServiceClient};
use fieldline_testkit::{self as kit, PrivateServer};
use tokio_stream::wrappers::ReceiverStream;

const BASE_NS: i64 = 1_700_000_000_000_000_000;

async fn metrics(http: std::net::SocketAddr) -> String {
    kit::http_get(&format!("http://{http}/metrics"))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn transition(line: &str, seq: u64, to: v1::AlarmState) -> v1::AlarmEvent {
    v1::AlarmEvent {
        alarm_id: "press-temp-hi".into(),
        tag: format!("{line}/press/temp"),
        kind: "hi".into(),
        priority: 2,
        from_state: v1::AlarmState::Normal as i32,
        to_state: to as i32,
        value: Some(v1::Value {
            kind: Some(v1::value::Kind::DoubleValue(81.5)),
        }),
        timestamp_ns: BASE_NS + i64::try_from(seq).unwrap_or(0),
        sequence: seq,
        ..Default::default()
    }
}

fn state(seq: u64, to: v1::AlarmState) -> v1::AlarmStatus {
    v1::AlarmStatus {
        alarm_id: "press-temp-hi".into(),
        device: "press".into(),
        tag: "temp".into(),
        kind: "hi".into(),
        priority: 2,
        state: to as i32,
        active: matches!(
            to,
            v1::AlarmState::UnackedActive | v1::AlarmState::AckedActive
        ),
        acked: matches!(to, v1::AlarmState::AckedActive | v1::AlarmState::Normal),
        last_seq: seq,
        changed_ns: BASE_NS + i64::try_from(seq).unwrap_or(0),
        snapshot: format!("{{\"seq\":{seq}}}"),
        ..Default::default()
    }
}

fn audit(id: &str) -> v1::CommandRecord {
    v1::CommandRecord {
        command_id: id.into(),
        device: "press".into(),
        tag: "setpoint".into(),
        value: Some(v1::Value {
            kind: Some(v1::value::Kind::DoubleValue(42.0)),
        }),
        source: "mes".into(),
        requested_by: "operator-1".into(),
        requested_ns: BASE_NS,
        status: v1::AuditStatus::Accepted as i32,
        ..Default::default()
    }
}

fn batch(line: &str, sequence: u64) -> v1::SampleBatch {
    v1::SampleBatch {
        line: line.into(),
        device: "press".into(),
        adapter_id: "test".into(),
        sequence,
        samples: vec![v1::Sample {
            tag: "temp".into(),
            value: Some(v1::Value {
                kind: Some(v1::value::Kind::DoubleValue(81.5)),
            }),
            quality: Some(v1::Quality {
                status: v1::QualityStatus::Good as i32,
                ..Default::default()
            }),
            timestamp_ns: BASE_NS + i64::try_from(sequence).unwrap_or(0) * 1_000_000,
            ..Default::default()
        }],
        previous_sequence: 0,
    }
}

/// Sends one request on an Ingest stream and waits for its ack.
async fn ingest(url: &str, request: v1::IngestRequest) -> anyhow::Result<v1::IngestAck> {
    let mut client = StorageServiceClient::connect(url.to_string()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await?;
    let mut acks = client.ingest(ReceiverStream::new(rx)).await?.into_inner();
    let ack = tokio::time::timeout(Duration::from_secs(30), acks.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("ack stream ended"))?;
    drop(tx);
    Ok(ack)
}

async fn count(pool: &sqlx::MySqlPool, sql: &'static str, line: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).bind(line).fetch_one(pool).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plant_records_are_durable_before_the_answer_and_survive_a_database_outage()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut influx = PrivateServer::influxdb(dir.path()).await?;
    let mut maria = PrivateServer::mariadb(dir.path()).await?;
    let root = format!("mysql://root@127.0.0.1:{}", maria.port);
    let pool = sqlx::MySqlPool::connect(&format!("{root}/mysql")).await?;
    sqlx::query("CREATE DATABASE IF NOT EXISTS test")
        .execute(&pool)
        .await?;
    pool.close().await;

    let line = kit::unique("records");
    let (grpc, http) = (kit::free_addr()?, kit::free_addr()?);
    let config = dir.path().join("line.yaml");
    std::fs::write(
        &config,
        format!(
            "line: {line}\nstorage:\n  grpc_listen: \"{grpc}\"\n  http_listen: \"{http}\"\n  influx: {{ url: \"http://127.0.0.1:{ip}\", database: fl, timeout: 2s }}\n  sql: {{ url: \"{root}/test\" }}\n  buffer: {{ dir: \"{buf}\", max_size: 64MiB }}\ndevices:\n  - {{ name: press, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: temp, address: \"holding:0\", type: f64 }} ] }}\n",
            ip = influx.port,
            buf = dir.path().join("buffer").display()
        ),
    )?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_fieldline-storage"));
    let args = ["--config", &config.display().to_string()].map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let url = format!("http://{grpc}");
    let mut storage = kit::ServiceProcess::start(binary, &args, http).await?;
    let mut client = StorageServiceClient::connect(url.clone()).await?;
    let pool = sqlx::MySqlPool::connect(&format!("{root}/test")).await?;
    let records = |events: Vec<v1::AlarmEvent>,
                   states: Vec<v1::AlarmStatus>,
                   commands: Vec<v1::CommandRecord>,
                   progress: Vec<v1::DeviceProgress>| v1::PlantRecords {
        line: line.clone(),
        alarm_events: events,
        alarm_states: states,
        commands,
        progress,
    };

    // 1. A batch and the transition it caused, in one request: one ack for both, and both
    //    are in the database when it comes.
    let ack = ingest(
        &url,
        v1::IngestRequest {
            request_id: 1,
            batch: Some(batch(&line, 1)),
            records: Some(records(
                vec![transition(&line, 1, v1::AlarmState::UnackedActive)],
                vec![state(1, v1::AlarmState::UnackedActive)],
                vec![],
                vec![],
            )),
        },
    )
    .await?;
    assert!(ack.stored && ack.records_refused.is_empty(), "{ack:?}");
    let events_sql = "SELECT COUNT(*) FROM alarm_events WHERE line = ?";
    assert_eq!(count(&pool, events_sql, &line).await?, 1);

    // 2. Records alone (an operator's acknowledge, a write's audit, a stored mark).
    let answer = client
        .record(records(
            vec![transition(&line, 2, v1::AlarmState::AckedActive)],
            vec![state(2, v1::AlarmState::AckedActive)],
            vec![audit("cmd-1")],
            vec![v1::DeviceProgress {
                device: "press".into(),
                stored_seq: 1,
                updated_ns: BASE_NS,
                plugin_state: r#"{"counter":{"after":1}}"#.into(),
            }],
        ))
        .await?
        .into_inner();
    assert_eq!(answer.detail, "stored");
    assert_eq!(count(&pool, events_sql, &line).await?, 2);
    let audit_sql = "SELECT COUNT(*) FROM command_audit WHERE line = ?";
    assert_eq!(count(&pool, audit_sql, &line).await?, 1);
    // Sent again (a retry after a lost answer): nothing changes.
    client
        .record(records(
            vec![transition(&line, 2, v1::AlarmState::AckedActive)],
            vec![state(2, v1::AlarmState::AckedActive)],
            vec![audit("cmd-1")],
            vec![],
        ))
        .await?;
    assert_eq!(count(&pool, events_sql, &line).await?, 2);
    assert_eq!(count(&pool, audit_sql, &line).await?, 1);

    // A record that can never be stored is refused as such, not retried.
    let mut bad = transition(&line, 3, v1::AlarmState::Normal);
    bad.tag = "no-path".into();
    let refused = client
        .record(records(vec![bad], vec![], vec![], vec![]))
        .await
        .expect_err("a transition without a tag path is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");

    // 3. MariaDB down: records are acknowledged once they are in the buffer.
    maria.kill().await;
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        client.record(records(
            vec![transition(&line, 3, v1::AlarmState::Normal)],
            vec![state(3, v1::AlarmState::Normal)],
            vec![],
            vec![v1::DeviceProgress {
                device: "press".into(),
                stored_seq: 2,
                updated_ns: BASE_NS,
                plugin_state: r#"{"counter":{"after":2}}"#.into(),
            }],
        )),
    )
    .await??
    .into_inner();
    assert_eq!(answer.detail, "buffered");
    // Nothing to resume from while the database is away.
    let unavailable = client
        .load_plant_state(v1::PlantStateRequest { line: line.clone() })
        .await
        .expect_err("no state without the database");
    assert_eq!(
        unavailable.code(),
        tonic::Code::Unavailable,
        "{unavailable}"
    );

    // 4. InfluxDB down too, then MariaDB back: the buffer cannot drain (its oldest batch
    //    waits for InfluxDB), yet the state a processor resumes from is the newest one.
    influx.kill().await;
    let ack = ingest(
        &url,
        v1::IngestRequest {
            request_id: 2,
            batch: Some(batch(&line, 2)),
            records: Some(records(
                vec![transition(&line, 4, v1::AlarmState::UnackedActive)],
                vec![state(4, v1::AlarmState::UnackedActive)],
                vec![],
                vec![],
            )),
        },
    )
    .await?;
    assert!(ack.stored && ack.detail == "buffered", "{ack:?}");
    maria.start().await?;
    let state_now = kit::wait_for(Duration::from_secs(60), "the plant state", || async {
        let mut client = StorageServiceClient::connect(url.clone()).await.ok()?;
        client
            .load_plant_state(v1::PlantStateRequest { line: line.clone() })
            .await
            .ok()
            .map(tonic::Response::into_inner)
    })
    .await?;
    let pool = sqlx::MySqlPool::connect(&format!("{root}/test")).await?;
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM alarm_events WHERE line = ? AND seq = 4",
            &line
        )
        .await?,
        0,
        "the last transition waits in the buffer behind its batch, for InfluxDB"
    );
    assert_eq!(state_now.alarm_states.len(), 1, "{state_now:?}");
    assert_eq!(state_now.alarm_states[0].last_seq, 4, "{state_now:?}");
    assert_eq!(state_now.alarm_states[0].snapshot, "{\"seq\":4}");
    assert_eq!(
        state_now
            .progress
            .iter()
            .map(|p| (p.device.as_str(), p.stored_seq, p.plugin_state.as_str()))
            .collect::<Vec<_>>(),
        [("press", 2, r#"{"counter":{"after":2}}"#)],
        "the mark and plugin state still in the buffer are the newest"
    );

    // 5. InfluxDB back: the buffer drains, and every record is in the database once.
    influx.start().await?;
    kit::wait_for(Duration::from_secs(60), "the buffer to drain", || async {
        let page = metrics(http).await;
        (kit::metric_value(&page, "fieldline_storage_buffer_pending_batches ")? == 0.0)
            .then_some(())
    })
    .await?;
    assert_eq!(count(&pool, events_sql, &line).await?, 4);
    let (seq, snapshot): (i64, String) = sqlx::query_as(
        "SELECT last_seq, snapshot FROM alarm_state WHERE line = ? AND alarm_id = 'press-temp-hi'",
    )
    .bind(&line)
    .fetch_one(&pool)
    .await?;
    assert_eq!((seq, snapshot.as_str()), (4, "{\"seq\":4}"));
    let (stored, plugin_state): (i64, String) =
        sqlx::query_as("SELECT stored_seq, plugin_state FROM processor_progress WHERE line = ?")
            .bind(&line)
            .fetch_one(&pool)
            .await?;
    assert_eq!(
        (stored, plugin_state.as_str()),
        (2, r#"{"counter":{"after":2}}"#)
    );
    let page = metrics(http).await;
    assert!(
        kit::metric_value(
            &page,
            "fieldline_storage_plant_records_total{result=\"buffered\"} "
        )
        .is_some_and(|n| n >= 2.0),
        "{page}"
    );
    assert_eq!(storage.terminate().await?, Some(0));
    Ok(())
}
