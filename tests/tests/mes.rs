//! An MES client over gRPC against the whole pipeline: a pymodbus machine whose part counters
//! the test drives; a Rhai script and the OEE built-in derive values that are stored and
//! served like read ones; a Lo alarm on the derived efficiency is raised, streamed,
//! persisted, and survives a processor restart without being raised again; production figures
//! and history come through PlantService.

use std::time::Duration;

use fieldline_core::{Value, config::LineConfig};
use fieldline_proto::v1::{self, plant_service_client::PlantServiceClient};
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use prometheus_client::registry::Registry;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn config(
    line: &str,
    device: std::net::SocketAddr,
    dir: &std::path::Path,
    influx_db: &str,
) -> anyhow::Result<LineConfig> {
    std::fs::write(
        dir.join("mill.rhai"),
        "#{ spindle_temp_f: batch.tags.spindle_temp * 9.0 / 5.0 + 32.0 }\n",
    )?;
    let yaml = format!(
        r#"
line: {line}
mqtt: {{ address: "{mqtt}" }}
adapter: {{ grpc_listen: "{adapter}", state_dir: "{state}" }}
processor: {{ grpc_listen: "127.0.0.1:0", adapter_url: "http://{adapter}" }}
storage:
  grpc_listen: "127.0.0.1:0"
  influx: {{ url: "{influx}", database: {influx_db} }}
  sql: {{ url: "{mysql}" }}
  batch: {{ max_points: 1000, max_delay: 20ms }}
devices:
  - name: mill-1
    type: cnc-mill
    protocol: modbus-tcp
    endpoint: "{device}"
    poll_interval: 200ms
    tags:
      - {{ name: parts_total, address: "holding:0", type: u32 }}
      - {{ name: good_parts, address: "holding:2", type: u32 }}
      - {{ name: spindle_temp, address: "holding:4", type: f32, unit: degC }}
      - {{ name: spindle_running, address: "coil:0", type: bool }}
device_types:
  cnc-mill:
    plugins:
      - {{ script: mill.rhai, outputs: [spindle_temp_f] }}
      - {{ builtin: oee, units_produced: parts_total, good_count: good_parts, running: spindle_running, target_rate: 120, window: 6s }}
    alarms:
      - {{ name: efficiency-low, tag: efficiency, kind: low, limit: 0.85, deadband: 0.05, on_delay: 3s, priority: high }}
"#,
        mqtt = kit::MQTT,
        adapter = kit::free_addr()?,
        state = dir.join("state").display(),
        influx = kit::INFLUX_URL,
        mysql = kit::MYSQL_URL,
    );
    let mut config = LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.base_dir = Some(dir.to_path_buf());
    Ok(config)
}

fn number(v: &Option<v1::Value>) -> Option<f64> {
    v.clone()
        .and_then(|v| Value::try_from(v).ok())
        .and_then(|v| v.as_f64())
}

/// Counts parts at `per_second` (nine in ten good) for `seconds`, in steps of 250 ms.
async fn produce(
    peer: &mut kit::ModbusPeer,
    parts: &mut f64,
    per_second: f64,
    seconds: u32,
) -> anyhow::Result<()> {
    for _ in 0..seconds * 4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        *parts += per_second / 4.0;
        let made = parts.floor();
        let good = (made * 0.9).floor();
        peer.command(&format!("set holding 0 uint32 {made}"))
            .await?;
        peer.command(&format!("set holding 2 uint32 {good}"))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mes_client_sees_derived_values_production_alarms_and_history() -> anyhow::Result<()> {
    kit::require_backends()?;
    let mut peer = kit::ModbusPeer::start(&json!({
        "holding": [
            {"address": 0, "type": "uint32", "value": 0},
            {"address": 2, "type": "uint32", "value": 0},
            {"address": 4, "type": "float32", "value": 40.0}
        ],
        "coils": [{"address": 0, "value": true}]
    }))
    .await?;
    let dir = tempfile::tempdir()?;
    let line = kit::unique("mes");
    let influx_db = line.replace('-', "_");
    let mut config = config(&line, peer.addr, dir.path(), &influx_db)?;
    let stop = CancellationToken::new();
    let health = Health::default();
    let mut registry = Registry::default();
    let storage = fieldline_storage::start(&config, &health, &mut registry, stop.clone()).await?;
    config.processor.storage_url = format!("http://{}", storage.grpc_addr);
    let processor_stop = stop.child_token();
    let processor =
        fieldline_processor::start(&config, &health, &mut registry, processor_stop.clone()).await?;
    let _adapter = fieldline_adapter::start(&config, &health, &mut registry, stop.clone()).await?;
    let mut mes = PlantServiceClient::connect(format!("http://{}", processor.grpc_addr)).await?;
    let mut alarms = mes
        .subscribe_alarms(v1::AlarmFilter::default())
        .await?
        .into_inner();

    // The script's output is served like a read value: 40 degC is 104 degF.
    let temp_f = kit::wait_for(WAIT, "the derived spindle_temp_f", || {
        let mut mes = mes.clone();
        async move {
            let latest = mes
                .read_latest(v1::TagFilter {
                    device: "mill-1".into(),
                    tags: vec!["spindle_temp_f".into()],
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            latest
                .samples
                .first()
                .and_then(|s| s.sample.as_ref())
                .and_then(|s| number(&s.value))
        }
    })
    .await?;
    assert!((temp_f - 104.0).abs() < 1e-9, "{temp_f}");

    // At the target rate (120 parts a minute, 2 a second) the efficiency is about 1 and the
    // quality 0.9.
    let mut parts = 0.0;
    produce(&mut peer, &mut parts, 2.0, 8).await?;
    let production = mes
        .get_production(v1::ProductionRequest {
            device: "mill-1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mill = production
        .devices
        .first()
        .ok_or_else(|| anyhow::anyhow!("no production figures: {production:?}"))?;
    let efficiency = mill
        .efficiency
        .ok_or_else(|| anyhow::anyhow!("no efficiency: {mill:?}"))?;
    assert!(
        (0.85..=1.15).contains(&efficiency),
        "efficiency {efficiency} at the target rate: {mill:?}"
    );
    let quality = mill
        .quality
        .ok_or_else(|| anyhow::anyhow!("no quality: {mill:?}"))?;
    assert!(
        (0.85..=0.95).contains(&quality),
        "quality {quality}: {mill:?}"
    );
    assert_eq!(
        mill.availability,
        Some(1.0),
        "the spindle ran all the time: {mill:?}"
    );

    // Half the rate: the efficiency falls below 0.85 and the Lo alarm is raised and streamed.
    produce(&mut peer, &mut parts, 1.0, 8).await?;
    let alarm_id = format!("{line}/mill-1/efficiency-low");
    let raised = tokio::time::timeout(WAIT, async {
        loop {
            let Some(e) = alarms.message().await? else {
                anyhow::bail!("alarm stream ended")
            };
            if e.alarm_id == alarm_id && e.to_state == v1::AlarmState::UnackedActive as i32 {
                return Ok(e);
            }
        }
    })
    .await??;
    assert!(
        number(&raised.value).is_some_and(|v| v < 0.85),
        "{raised:?}"
    );

    // The processor restarts; the alarm is still active, and it is not raised a second time.
    let pool = sqlx::MySqlPool::connect(kit::MYSQL_URL).await?;
    let activations = || {
        let pool = pool.clone();
        let line = line.clone();
        let alarm_id = alarm_id.clone();
        async move {
            let rows: Vec<(i64,)> = sqlx::query_as(
                "SELECT seq FROM alarm_events WHERE line = ? AND alarm_id = ? AND to_state = 'unacked_active'",
            )
            .bind(&line)
            .bind(&alarm_id)
            .fetch_all(&pool)
            .await
            .ok()?;
            (!rows.is_empty()).then_some(rows)
        }
    };
    let before = kit::wait_for(WAIT, "the activation in MariaDB", activations).await?;
    processor_stop.cancel();
    processor.wait().await;
    let processor_stop = stop.child_token();
    let processor = fieldline_processor::start(
        &config,
        &health,
        &mut Registry::default(),
        processor_stop.clone(),
    )
    .await?;
    let mut mes = PlantServiceClient::connect(format!("http://{}", processor.grpc_addr)).await?;
    let listed = mes
        .list_alarms(v1::AlarmFilter {
            not_normal_only: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .alarms;
    let restored = listed
        .iter()
        .find(|a| a.alarm_id == alarm_id)
        .ok_or_else(|| anyhow::anyhow!("the alarm was lost in the restart: {listed:?}"))?;
    assert_eq!(restored.state, v1::AlarmState::UnackedActive as i32);
    produce(&mut peer, &mut parts, 1.0, 4).await?;
    let after = kit::wait_for(WAIT, "the activations in MariaDB", activations).await?;
    assert_eq!(after, before, "not raised again after the restart");

    // History of a derived value through the MES API: stored in InfluxDB like a read one.
    let now = fieldline_runtime::now_ns();
    let history = mes
        .query_history(v1::HistoryRequest {
            line: line.clone(),
            device: "mill-1".into(),
            tag: "spindle_temp_f".into(),
            start_ns: now - 300_000_000_000,
            end_ns: now + 1_000_000_000,
            aggregate: v1::Aggregate::Max as i32,
            window_ns: 3_600_000_000_000,
            limit: 0,
        })
        .await?
        .into_inner();
    assert!(
        history
            .points
            .iter()
            .any(|p| number(&p.value) == Some(104.0)),
        "{history:?}"
    );
    processor_stop.cancel();
    stop.cancel();
    let _ = kit::influx_query(&influx_db, &format!("DROP DATABASE \"{influx_db}\"")).await;
    Ok(())
}
