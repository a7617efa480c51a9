//! One production line end to end, all real parts but our own services: a pymodbus server
//! with known registers → adapter → Mosquitto → processor → storage → InfluxDB 1.x and
//! MariaDB. Asserts the exact values and their types in both databases, that a device
//! exception becomes a Bad sample (never a 0), and that the MES API serves the same values.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use fieldline_core::config::{InfluxConfig, LineConfig, SqlConfig};
use fieldline_proto::v1;
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use prometheus_client::registry::Registry;
use serde_json::{Value as Json, json};

fn spec() -> Json {
    json!({
        "holding": [
            {"address": 0, "type": "float32", "value": 12.5, "word_order": "big"},
            {"address": 2, "type": "float32", "value": -3.75, "word_order": "little"},
            {"address": 4, "type": "int16", "value": -1234},
            {"address": 5, "type": "uint16", "value": 54321},
            {"address": 6, "type": "uint32", "value": 4000000000u64},
            {"address": 8, "type": "int32", "value": -100000}
        ],
        "input": [
            {"address": 0, "type": "float32", "value": 7.25, "word_order": "big"},
            {"address": 2, "type": "uint16", "value": 777}
        ],
        "coils": [{"address": 0, "value": true}, {"address": 1, "value": false}],
        "discrete": [{"address": 0, "value": true}]
    })
}

fn line_config(
    line: &str,
    endpoint: &str,
    influx_db: &str,
    state_dir: &std::path::Path,
) -> anyhow::Result<LineConfig> {
    let yaml = format!(
        r#"
line: {line}
mqtt:
  address: {mqtt}
adapter:
  id: e2e
  grpc_listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  state_dir: {state}
processor:
  grpc_listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
storage:
  grpc_listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
devices:
  - name: press
    type: press-v1
    protocol: modbus-tcp
    endpoint: {endpoint}
    poll_interval: 200ms
    timeout: 1s
    tags:
      - {{ name: temp_abcd, address: "holding:0", type: f32, word_order: big, unit: degC }}
      - {{ name: temp_cdab, address: "holding:2", type: f32, word_order: little }}
      - {{ name: offset, address: "holding:4", type: i16 }}
      - {{ name: count, address: "holding:5", type: u16 }}
      - {{ name: total, address: "holding:6", type: u32 }}
      - {{ name: delta, address: "holding:8", type: i32 }}
      - {{ name: flow, address: "input:0", type: f32 }}
      - {{ name: level, address: "input:2", type: u16 }}
      - {{ name: pump_run, address: "coil:0", type: bool, writable: true }}
      - {{ name: valve_open, address: "coil:1", type: bool }}
      - {{ name: door_closed, address: "discrete:0", type: bool }}
      - {{ name: missing, address: "holding:5000", type: u16 }}
"#,
        mqtt = kit::MQTT,
        state = state_dir.display(),
    );
    let mut config = LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.storage.influx = Some(InfluxConfig {
        url: kit::INFLUX_URL.into(),
        database: Some(influx_db.into()),
        retention_policy: None,
        username: None,
        password: None,
        org: None,
        bucket: None,
        token: None,
        create_database: true,
        timeout: Duration::from_secs(5),
    });
    config.storage.sql = Some(SqlConfig {
        url: kit::MYSQL_URL.into(),
        password: None,
    });
    Ok(config)
}

/// The last non-null value of every field of `measurement` for `line`, with InfluxDB's idea
/// of each field's type.
async fn influx_fields(
    db: &str,
    measurement: &str,
    line: &str,
) -> anyhow::Result<HashMap<String, (Json, String)>> {
    let data = kit::influx_query(
        db,
        &format!("SELECT * FROM \"{measurement}\" WHERE \"line\" = '{line}'"),
    )
    .await?;
    let series = &data["results"][0]["series"][0];
    let columns: Vec<String> = series["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut last: HashMap<String, Json> = HashMap::new();
    for row in series["values"].as_array().into_iter().flatten() {
        for (i, col) in columns.iter().enumerate() {
            if !row[i].is_null() {
                last.insert(col.clone(), row[i].clone());
            }
        }
    }
    let keys = kit::influx_query(db, &format!("SHOW FIELD KEYS FROM \"{measurement}\"")).await?;
    let mut types = HashMap::new();
    for row in keys["results"][0]["series"][0]["values"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let (Some(k), Some(t)) = (row[0].as_str(), row[1].as_str()) {
            types.insert(k.to_string(), t.to_string());
        }
    }
    Ok(last
        .into_iter()
        .filter_map(|(k, v)| types.get(&k).map(|t| (k.clone(), (v, t.clone()))))
        .collect())
}

/// Publishes one batch to the broker at QoS 1 and waits for the broker's ack.
async fn publish(topic: &str, batch: &v1::SampleBatch) -> anyhow::Result<()> {
    use prost::Message;
    let (host, port) = kit::MQTT.split_once(':').context("MQTT address")?;
    let options = rumqttc::MqttOptions::new(kit::unique("e2e-pub"), host, port.parse()?);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    client
        .publish(
            topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            batch.encode_to_vec(),
        )
        .await?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = eventloop.poll().await? {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("no PUBACK from the broker")??;
    client.disconnect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_values_arrive_exactly_in_influxdb_and_mariadb() -> anyhow::Result<()> {
    fieldline_runtime::telemetry::init();
    kit::require_backends()?;
    let peer = kit::ModbusPeer::start(&spec()).await?;
    let line = kit::unique("e2e");
    let influx_db = line.replace('-', "_");
    let state = tempfile::tempdir()?;
    let mut config = line_config(&line, &peer.addr.to_string(), &influx_db, state.path())?;

    let stop = CancellationToken::new();
    let health = Health::default();
    let mut registry = Registry::default();
    let storage = fieldline_storage::start(&config, &health, &mut registry, stop.clone()).await?;
    config.processor.storage_url = format!("http://{}", storage.grpc_addr);
    let processor =
        fieldline_processor::start(&config, &health, &mut registry, stop.clone()).await?;
    let adapter = fieldline_adapter::start(&config, &health, &mut registry, stop.clone()).await?;

    // InfluxDB: every field present, with its exact value and type.
    let fields = kit::wait_for(
        Duration::from_secs(30),
        "all fields in InfluxDB",
        || async {
            let f = influx_fields(&influx_db, "press", &line).await.ok()?;
            (f.len() >= 12).then_some(f)
        },
    )
    .await?;
    let expect: [(&str, Json, &str); 12] = [
        ("temp_abcd", json!(12.5), "float"),
        ("temp_cdab", json!(-3.75), "float"),
        ("offset", json!(-1234), "integer"),
        ("count", json!(54321), "integer"),
        ("total", json!(4000000000u64), "integer"),
        ("delta", json!(-100000), "integer"),
        ("flow", json!(7.25), "float"),
        ("level", json!(777), "integer"),
        ("pump_run", json!(true), "boolean"),
        ("valve_open", json!(false), "boolean"),
        ("door_closed", json!(true), "boolean"),
        (
            "missing_quality",
            json!("bad:device_exception(2)"),
            "string",
        ),
    ];
    for (field, value, ty) in &expect {
        let got = fields
            .get(*field)
            .with_context(|| format!("field {field} missing from InfluxDB: {fields:?}"))?;
        assert_eq!(&got.0, value, "value of {field}");
        assert_eq!(got.1, *ty, "InfluxDB type of {field}");
    }
    assert!(
        !fields.contains_key("missing"),
        "an unreadable register must not get a value: {fields:?}"
    );

    // MariaDB: the line's devices, tags and latest values.
    let pool = sqlx::MySqlPool::connect(kit::MYSQL_URL).await?;
    let rows: Vec<(String, Option<String>, Option<String>, String)> = kit::wait_for(Duration::from_secs(10), "latest values in MariaDB", || {
        let pool = pool.clone();
        let line = line.clone();
        async move {
            let rows: Vec<(String, Option<String>, Option<String>, String)> =
                sqlx::query_as("SELECT tag, value_type, value_text, quality FROM latest_values WHERE line = ? AND device = 'press' ORDER BY tag")
                    .bind(&line)
                    .fetch_all(&pool)
                    .await
                    .ok()?;
            (rows.len() == 12).then_some(rows)
        }
    })
    .await?;
    let by_tag: HashMap<&str, (Option<&str>, Option<&str>, &str)> = rows
        .iter()
        .map(|(t, ty, v, q)| (t.as_str(), (ty.as_deref(), v.as_deref(), q.as_str())))
        .collect();
    assert_eq!(by_tag["temp_abcd"], (Some("float"), Some("12.5"), "good"));
    assert_eq!(by_tag["temp_cdab"], (Some("float"), Some("-3.75"), "good"));
    assert_eq!(by_tag["offset"], (Some("int"), Some("-1234"), "good"));
    assert_eq!(by_tag["count"], (Some("uint"), Some("54321"), "good"));
    assert_eq!(by_tag["total"], (Some("uint"), Some("4000000000"), "good"));
    assert_eq!(by_tag["delta"], (Some("int"), Some("-100000"), "good"));
    assert_eq!(by_tag["pump_run"], (Some("bool"), Some("true"), "good"));
    assert_eq!(by_tag["valve_open"], (Some("bool"), Some("false"), "good"));
    assert_eq!(by_tag["missing"], (None, None, "bad:device_exception(2)"));
    let (tags, unit): (i64, Option<String>) =
        sqlx::query_as("SELECT COUNT(*), MAX(CASE WHEN tag = 'temp_abcd' THEN unit END) FROM tags WHERE line = ? AND device = 'press'")
            .bind(&line)
            .fetch_one(&pool)
            .await?;
    assert_eq!((tags, unit.as_deref()), (12, Some("degC")));
    let device_type: String =
        sqlx::query_scalar("SELECT device_type FROM devices WHERE line = ? AND device = 'press'")
            .bind(&line)
            .fetch_one(&pool)
            .await?;
    assert_eq!(device_type, "press-v1");

    // The MES API serves the same values with their types.
    let mut plant = v1::plant_service_client::PlantServiceClient::connect(format!(
        "http://{}",
        processor.grpc_addr
    ))
    .await?;
    let latest = plant
        .read_latest(v1::TagFilter {
            line: line.clone(),
            device: "press".into(),
            tags: vec!["offset".into(), "temp_cdab".into()],
        })
        .await?
        .into_inner();
    let values: HashMap<String, Option<v1::value::Kind>> = latest
        .samples
        .into_iter()
        .filter_map(|s| s.sample)
        .map(|s| (s.tag, s.value.and_then(|v| v.kind)))
        .collect();
    assert_eq!(values.len(), 2);
    assert_eq!(values["offset"], Some(v1::value::Kind::IntValue(-1234)));
    assert_eq!(
        values["temp_cdab"],
        Some(v1::value::Kind::DoubleValue(-3.75))
    );

    // History through the MES API (answered by storage from InfluxDB): the raw samples of
    // a tag agree with InfluxDB's own count and values, and Bad samples carry their reason.
    let now = fieldline_runtime::now_ns();
    let history = |tag: &str, aggregate: v1::Aggregate| v1::HistoryRequest {
        line: line.clone(),
        device: "press".into(),
        tag: tag.into(),
        start_ns: now - 600_000_000_000,
        end_ns: now + 60_000_000_000,
        aggregate: aggregate as i32,
        window_ns: 3_600_000_000_000,
        limit: 0,
    };
    let raw = plant
        .query_history(history("offset", v1::Aggregate::Unspecified))
        .await?
        .into_inner();
    assert!(!raw.points.is_empty(), "offset has history");
    assert!(raw.points.iter().all(|p| {
        p.value.clone().and_then(|v| v.kind) == Some(v1::value::Kind::IntValue(-1234))
            && p.quality.as_ref().map(|q| q.status) == Some(v1::QualityStatus::Good as i32)
    }));
    let missing = plant
        .query_history(history("missing", v1::Aggregate::Unspecified))
        .await?
        .into_inner();
    assert!(!missing.points.is_empty(), "a Bad tag has history too");
    assert!(missing.points.iter().all(|p| {
        p.value.is_none()
            && p.quality.as_ref().map(|q| (q.status, q.exception_code))
                == Some((v1::QualityStatus::Bad as i32, 2))
    }));
    let max = plant
        .query_history(history("temp_abcd", v1::Aggregate::Max))
        .await?
        .into_inner();
    assert!(
        max.points
            .iter()
            .all(|p| p.value.clone().and_then(|v| v.kind)
                == Some(v1::value::Kind::DoubleValue(12.5))),
        "{max:?}"
    );

    // Subscribe starts with the snapshot of the matching tags, then streams new samples.
    let mut sub = plant
        .subscribe(v1::TagFilter {
            line: line.clone(),
            device: "press".into(),
            tags: vec!["level".into()],
        })
        .await?
        .into_inner();
    let snapshot = tokio::time::timeout(Duration::from_secs(5), sub.message())
        .await??
        .context("subscription ended")?;
    let first_ts = snapshot
        .sample
        .as_ref()
        .map(|s| s.timestamp_ns)
        .unwrap_or_default();
    assert_eq!(
        snapshot
            .sample
            .as_ref()
            .and_then(|s| s.value.clone())
            .and_then(|v| v.kind),
        Some(v1::value::Kind::UintValue(777))
    );
    let live = tokio::time::timeout(Duration::from_secs(5), sub.message())
        .await??
        .context("subscription ended")?;
    let live = live.sample.context("a live update carries a sample")?;
    assert_eq!(live.tag, "level", "only the subscribed tag is streamed");
    assert!(
        live.timestamp_ns > first_ts,
        "after the snapshot come newer samples"
    );
    drop(sub);

    // A redelivered batch (a sequence number already stored) is dropped by the processor:
    // its value never reaches the databases.
    let stale = v1::SampleBatch {
        line: line.clone(),
        device: "press".into(),
        adapter_id: "e2e".into(),
        sequence: 1,
        previous_sequence: 0,
        samples: vec![
            fieldline_core::Sample::good(
                "offset",
                fieldline_core::Value::I64(999),
                fieldline_runtime::now_ns(),
            )
            .into(),
        ],
    };
    publish(&fieldline_proto::samples_topic(&line, "press"), &stale).await?;
    kit::wait_for(
        Duration::from_secs(10),
        "the processor to count a duplicate",
        || async {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).ok()?;
            text.lines()
                .any(|l| {
                    l.starts_with("fieldline_processor_batches_duplicate_total ")
                        && !l.ends_with(" 0")
                })
                .then_some(())
        },
    )
    .await?;
    let offset: String = sqlx::query_scalar("SELECT value_text FROM latest_values WHERE line = ? AND device = 'press' AND tag = 'offset'").bind(&line).fetch_one(&pool).await?;
    assert_eq!(
        offset, "-1234",
        "a redelivered old batch must not overwrite stored values"
    );
    let leaked = kit::influx_query(
        &influx_db,
        &format!("SELECT \"offset\" FROM \"press\" WHERE \"line\" = '{line}' AND \"offset\" = 999"),
    )
    .await?;
    assert!(
        leaked["results"][0]["series"].is_null(),
        "the duplicate reached InfluxDB: {leaked}"
    );

    stop.cancel();
    adapter.wait().await;
    processor.wait().await;
    storage.wait().await;
    peer.stop().await;
    let _ = kit::influx_query(&influx_db, &format!("DROP DATABASE \"{influx_db}\"")).await;
    Ok(())
}
