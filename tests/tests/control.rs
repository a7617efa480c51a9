//! Control end to end against a pymodbus device: the test drives the device's temperature and
//! pressure registers; the processor's hysteresis rule switches the pump coil on below
//! setpoint − 2 and off above setpoint + 2, the overpressure interlock switches it off and
//! holds it off whatever the rule, the MES or a command from the bus says, and every write
//! leaves an audit row.
//! Then an MES client over gRPC: devices, tags, alarms with acknowledge and shelve, a refused
//! and an accepted write, and the audit and alarm rows in MariaDB.

use std::time::Duration;

use fieldline_core::config::LineConfig;
use fieldline_proto::v1::{self, plant_service_client::PlantServiceClient};
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use prometheus_client::registry::Registry;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

async fn coil(peer: &mut kit::ModbusPeer) -> anyhow::Result<bool> {
    Ok(peer.command("get coil 0").await? == "VALUE 1")
}

async fn set(peer: &mut kit::ModbusPeer, register: u16, value: f64) -> anyhow::Result<()> {
    let answer = peer
        .command(&format!("set holding {register} float32 {value}"))
        .await?;
    anyhow::ensure!(answer == "OK", "{answer}");
    Ok(())
}

/// Waits until the pump coil is `on`, read from the device itself.
async fn pump_becomes(peer: &mut kit::ModbusPeer, on: bool, why: &str) -> anyhow::Result<()> {
    let peer = &tokio::sync::Mutex::new(peer);
    let what = format!("the pump to turn {} ({why})", if on { "on" } else { "off" });
    kit::wait_for(WAIT, &what, || async move {
        match coil(*peer.lock().await).await {
            Ok(now) => (now == on).then_some(Ok(())),
            Err(e) => Some(Err(e)),
        }
    })
    .await?
}

/// What the test watches besides the device: the processor's latest values (through the
/// MES API) and the adapter's poll count (in the shared registry).
struct Watch<'a> {
    mes: PlantServiceClient<tonic::transport::Channel>,
    registry: &'a Registry,
    line: String,
}

impl Watch<'_> {
    /// Waits until the processor holds `value` for the tank's `tag`: its rules have judged it.
    async fn processor_has(&self, tag: &str, value: f64) -> anyhow::Result<()> {
        let what = format!("the processor to hold {tag} = {value}");
        kit::wait_for(WAIT, &what, || {
            let mut mes = self.mes.clone();
            let filter = v1::TagFilter {
                line: self.line.clone(),
                device: "tank".into(),
                tags: vec![tag.to_string()],
            };
            async move {
                let latest = mes.read_latest(filter).await.ok()?.into_inner().samples;
                // The registers hold f32: compare at f32 precision.
                latest
                    .into_iter()
                    .filter_map(|s| {
                        fieldline_core::Value::try_from(s.sample?.value?)
                            .ok()?
                            .as_f64()
                    })
                    .any(|x| (x - value).abs() < 1e-4)
                    .then_some(())
            }
        })
        .await
    }

    /// The polls the adapter has made of the tank so far.
    fn polls(&self) -> f64 {
        let mut page = String::new();
        if prometheus_client::encoding::text::encode(&mut page, self.registry).is_err() {
            return 0.0;
        }
        kit::metric_value(&page, "fieldline_adapter_polls_total{device=\"tank\"} ").unwrap_or(0.0)
    }

    /// Once the processor holds `value` for `tag`, the pump coil stays `on` while the adapter
    /// polls the tank `polls` more times: a write the rule made would have reached the
    /// device, and been read back, well within that.
    async fn pump_stays(
        &self,
        peer: &mut kit::ModbusPeer,
        (tag, value): (&str, f64),
        on: bool,
        polls: u32,
        why: &str,
    ) -> anyhow::Result<()> {
        self.processor_has(tag, value).await?;
        let until = self.polls() + f64::from(polls);
        let peer = &tokio::sync::Mutex::new(peer);
        let what = format!("{polls} polls with the pump unchanged ({why})");
        kit::wait_for(WAIT, &what, || async move {
            match coil(*peer.lock().await).await {
                Ok(now) if now != on => Some(Err(anyhow::anyhow!("pump changed ({why})"))),
                Ok(_) => (self.polls() >= until).then_some(Ok(())),
                Err(e) => Some(Err(e)),
            }
        })
        .await?
    }
}

/// Waits until the MES lists `alarm_id` in `state`.
async fn alarm_in_state(
    mes: &PlantServiceClient<tonic::transport::Channel>,
    alarm_id: &str,
    state: v1::AlarmState,
) -> anyhow::Result<v1::AlarmInfo> {
    kit::wait_for(WAIT, &format!("alarm {alarm_id} {state:?}"), || {
        let mut mes = mes.clone();
        async move {
            mes.list_alarms(v1::AlarmFilter::default())
                .await
                .ok()?
                .into_inner()
                .alarms
                .into_iter()
                .find(|a| a.alarm_id == alarm_id && a.state == state as i32)
        }
    })
    .await
}

fn config(
    line: &str,
    device: std::net::SocketAddr,
    state: &std::path::Path,
) -> anyhow::Result<LineConfig> {
    // The processor shows the adapter this token on every write; nobody else has it.
    let token = state.join("write-token");
    std::fs::write(&token, format!("{}\n", kit::unique("token")))?;
    let yaml = format!(
        r#"
line: {line}
mqtt: {{ address: "{mqtt}" }}
adapter: {{ grpc_listen: "{adapter}", http_listen: "{ah}", state_dir: "{state}", write_token: {{ file: "{token}" }} }}
processor: {{ grpc_listen: "127.0.0.1:0", http_listen: "{ph}", adapter_url: "http://{adapter}", mqtt_commands: true }}
storage:
  grpc_listen: "127.0.0.1:0"
  http_listen: "{sh}"
  sql: {{ url: "{mysql}" }}
devices:
  - name: tank
    type: tank-v1
    protocol: modbus-tcp
    endpoint: "{device}"
    poll_interval: 100ms
    tags:
      - {{ name: temperature, address: "holding:0", type: f32, unit: degC }}
      - {{ name: pressure, address: "holding:2", type: f32, unit: bar }}
      - {{ name: pump, address: "coil:0", type: bool, writable: true }}
      - {{ name: setpoint, address: "holding:4", type: f32, writable: true, min: 10, max: 90, max_step: 10, min_write_interval: 2s }}
device_types:
  tank-v1:
    alarms:
      - {{ name: temp-high, tag: temperature, kind: high, limit: 80, deadband: 2, priority: high }}
    rules:
      - {{ kind: hysteresis, name: fill, input: temperature, output: pump, setpoint: 50, band: 2 }}
      - {{ kind: interlock, name: overpressure, input: pressure, above: 3.0, output: pump, value: false, message: "Pressure above 3 bar: pump stopped" }}
"#,
        mqtt = kit::MQTT,
        adapter = kit::free_addr()?,
        ah = kit::free_addr()?,
        ph = kit::free_addr()?,
        sh = kit::free_addr()?,
        state = state.display(),
        token = token.display(),
        mysql = kit::MYSQL_URL,
    );
    LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_interlocks_and_the_mes_write_through_one_safe_path() -> anyhow::Result<()> {
    kit::require_mqtt()?;
    kit::require_mysql()?;
    let mut peer = kit::ModbusPeer::start(&json!({
        "holding": [
            {"address": 0, "type": "float32", "value": 49.0},
            {"address": 2, "type": "float32", "value": 1.0}
        ],
        "coils": [{"address": 0, "value": false}]
    }))
    .await?;
    let state = tempfile::tempdir()?;
    let line = kit::unique("control");
    let mut config = config(&line, peer.addr, state.path())?;
    let stop = CancellationToken::new();
    let health = Health::default();
    let mut registry = Registry::default();
    let storage = fieldline_storage::start(&config, &health, &mut registry, stop.clone()).await?;
    config.processor.storage_url = format!("http://{}", storage.grpc_addr);
    let adapter = fieldline_adapter::start(&config, &health, &mut registry, stop.clone()).await?;
    let processor =
        fieldline_processor::start(&config, &health, &mut registry, stop.clone()).await?;
    let mut mes = PlantServiceClient::connect(format!("http://{}", processor.grpc_addr)).await?;
    let watch = Watch {
        mes: mes.clone(),
        registry: &registry,
        line: line.clone(),
    };

    // Inside the band (48..52): the rule leaves the pump alone.
    watch
        .pump_stays(
            &mut peer,
            ("temperature", 49.0),
            false,
            10,
            "49 is inside the band",
        )
        .await?;
    // Below 48: on. Rising through the band: stays on. Above 52: off.
    set(&mut peer, 0, 47.5).await?;
    pump_becomes(&mut peer, true, "47.5 is below 48").await?;
    set(&mut peer, 0, 51.5).await?;
    watch
        .pump_stays(
            &mut peer,
            ("temperature", 51.5),
            true,
            8,
            "51.5 is inside the band",
        )
        .await?;
    set(&mut peer, 0, 52.5).await?;
    pump_becomes(&mut peer, false, "52.5 is above 52").await?;
    set(&mut peer, 0, 45.0).await?;
    pump_becomes(&mut peer, true, "45 is below 48").await?;

    // Alarm events also go to the line's MQTT topic, for other consumers.
    let mut alarms = kit::subscribe(&format!("fieldline/v1/{line}/alarms")).await?;
    let on_mqtt = tokio::spawn(async move {
        while let Some((_, payload)) = alarms.recv().await {
            if let Ok(e) = <v1::AlarmEvent as prost::Message>::decode(payload.as_slice()) {
                return Some(e);
            }
        }
        None
    });

    // Overpressure: the interlock switches the pump off although the temperature asks for on,
    // and holds it off.
    set(&mut peer, 2, 3.4).await?;
    pump_becomes(&mut peer, false, "the interlock trips above 3.0 bar").await?;
    watch
        .pump_stays(
            &mut peer,
            ("pressure", 3.4),
            false,
            20,
            "the interlock wins over hysteresis",
        )
        .await?;
    // The MES cannot switch it on either.
    let refused = mes
        .write(v1::Command {
            ttl_ns: 0,
            id: format!("{line}-mes-1"),
            tag: format!("{line}/tank/pump"),
            value: Some(fieldline_core::Value::Bool(true).into()),
            deadline_ns: fieldline_runtime::now_ns() + 5_000_000_000,
            requested_by: "operator-anna".into(),
            reason: "test".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        refused.status,
        v1::CommandStatus::Rejected as i32,
        "{refused:?}"
    );
    assert_eq!(refused.rejected_by, "interlock", "{refused:?}");
    assert!(
        !coil(&mut peer).await?,
        "the refused write reached the device"
    );
    // Nor can a Command published on the device's MQTT topic: this line takes commands from
    // the bus, and they go through the same checks.
    let cmd_topic = format!("fieldline/v1/{line}/tank/cmd");
    let (bus, mut answers) = kit::subscribe_many(&[format!("{cmd_topic}/result")]).await?;
    bus.publish(
        &cmd_topic,
        rumqttc::QoS::AtLeastOnce,
        false,
        prost::Message::encode_to_vec(&v1::Command {
            ttl_ns: 5_000_000_000,
            id: format!("{line}-mqtt-1"),
            tag: format!("{line}/tank/pump"),
            value: Some(fieldline_core::Value::Bool(true).into()),
            deadline_ns: 0,
            requested_by: "panel-7".into(),
            reason: "test".into(),
        }),
    )
    .await?;
    let (_, answer) = tokio::time::timeout(WAIT, answers.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no answer on {cmd_topic}/result"))?;
    let answer = <v1::CommandResult as prost::Message>::decode(answer.as_slice())?;
    assert_eq!(
        (answer.status, answer.rejected_by.as_str()),
        (v1::CommandStatus::Rejected as i32, "interlock"),
        "{answer:?}"
    );
    assert!(
        !coil(&mut peer).await?,
        "the command from the bus reached the device"
    );
    // Nor a client that calls the adapter directly, around the processor: without the write
    // token, or with another one, it is refused before it reaches the device.
    let mut direct = fieldline_proto::v1::adapter_service_client::AdapterServiceClient::connect(
        format!("http://{}", config.adapter.grpc_listen),
    )
    .await?;
    for token in [None, Some("Bearer guessed")] {
        let mut request = tonic::Request::new(v1::Command {
            ttl_ns: 5_000_000_000,
            id: format!("{line}-direct-{}", token.is_some()),
            tag: format!("{line}/tank/pump"),
            value: Some(fieldline_core::Value::Bool(true).into()),
            deadline_ns: 0,
            requested_by: "intruder".into(),
            reason: "test".into(),
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", token.parse()?);
        }
        let refused = direct
            .write(request)
            .await
            .expect_err("a write around the processor is refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    }
    assert!(
        !coil(&mut peer).await?,
        "a write around the processor reached the device"
    );
    // The interlock raised its alarm; the MES sees it and acknowledges it.
    let alarm_id = format!("{line}/tank/overpressure");
    let active = alarm_in_state(&mes, &alarm_id, v1::AlarmState::UnackedActive).await?;
    assert_eq!(
        active.state,
        v1::AlarmState::UnackedActive as i32,
        "{active:?}"
    );
    let published = tokio::time::timeout(WAIT, on_mqtt)
        .await??
        .ok_or_else(|| anyhow::anyhow!("no alarm event on MQTT"))?;
    assert_eq!(published.alarm_id, alarm_id);
    assert_eq!(published.to_state, v1::AlarmState::UnackedActive as i32);
    assert_eq!(active.priority, 4, "interlock alarms are critical");
    let acked = mes
        .acknowledge(v1::AlarmAction {
            alarm_id: alarm_id.clone(),
            user: "operator-anna".into(),
            comment: "valve checked".into(),
            until_ns: 0,
        })
        .await?
        .into_inner();
    assert_eq!(acked.events.len(), 1);
    assert_eq!(acked.events[0].to_state, v1::AlarmState::AckedActive as i32);
    assert_eq!(acked.events[0].user, "operator-anna");
    // Acknowledging again changes nothing; an action without a user is refused.
    let again = mes
        .acknowledge(v1::AlarmAction {
            alarm_id: alarm_id.clone(),
            user: "operator-anna".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(again.events.is_empty());
    let anonymous = mes
        .shelve(v1::AlarmAction {
            alarm_id: alarm_id.clone(),
            until_ns: fieldline_runtime::now_ns() + 60_000_000_000,
            ..Default::default()
        })
        .await
        .expect_err("an action needs a user");
    assert_eq!(anonymous.code(), tonic::Code::InvalidArgument);
    // Shelve, unshelve, out of service and back, each recorded with who did it.
    let action = |user: &str, until_ns: i64| v1::AlarmAction {
        alarm_id: alarm_id.clone(),
        user: user.into(),
        comment: "maintenance".into(),
        until_ns,
    };
    let shelved = mes
        .shelve(action(
            "operator-ben",
            fieldline_runtime::now_ns() + 600_000_000_000,
        ))
        .await?
        .into_inner();
    assert_eq!(shelved.events[0].to_state, v1::AlarmState::Shelved as i32);
    assert_eq!(shelved.events[0].user, "operator-ben");
    let unshelved = mes.unshelve(action("operator-ben", 0)).await?.into_inner();
    assert_eq!(
        unshelved.events[0].to_state,
        v1::AlarmState::UnackedActive as i32,
        "the condition is still there, so it comes back unacknowledged"
    );
    let removed = mes
        .remove_from_service(action("engineer-cy", 0))
        .await?
        .into_inner();
    assert_eq!(
        removed.events[0].to_state,
        v1::AlarmState::OutOfService as i32
    );
    let back = mes
        .return_to_service(action("engineer-cy", 0))
        .await?
        .into_inner();
    assert_eq!(
        back.events[0].to_state,
        v1::AlarmState::UnackedActive as i32
    );
    mes.acknowledge(action("operator-anna", 0)).await?;
    let unknown = mes
        .acknowledge(v1::AlarmAction {
            alarm_id: format!("{line}/tank/no-such-alarm"),
            user: "operator-anna".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such alarm");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Pressure back to normal: the interlock resets and the rule switches the pump on again.
    set(&mut peer, 2, 2.0).await?;
    pump_becomes(&mut peer, true, "interlock reset, 45 is below 48").await?;

    // An MES write outside the interlock goes through the same path and is read back.
    set(&mut peer, 0, 50.0).await?;
    watch.processor_has("temperature", 50.0).await?;
    let written = mes
        .write(v1::Command {
            ttl_ns: 0,
            id: format!("{line}-mes-2"),
            tag: format!("{line}/tank/pump"),
            value: Some(fieldline_core::Value::Bool(false).into()),
            deadline_ns: fieldline_runtime::now_ns() + 5_000_000_000,
            requested_by: "operator-anna".into(),
            reason: "maintenance".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        written.status,
        v1::CommandStatus::Written as i32,
        "{written:?}"
    );
    assert!(!coil(&mut peer).await?);
    // The same command id again: answered, not written again.
    let repeated = mes
        .write(v1::Command {
            ttl_ns: 0,
            id: format!("{line}-mes-2"),
            tag: format!("{line}/tank/pump"),
            value: Some(fieldline_core::Value::Bool(false).into()),
            deadline_ns: fieldline_runtime::now_ns() + 5_000_000_000,
            requested_by: "operator-anna".into(),
            reason: "maintenance".into(),
        })
        .await?
        .into_inner();
    assert_eq!(repeated, written);
    // Every check of the write path, on a setpoint with limits (10..90, at most 10 per write,
    // at most one write every 2 s); the device holds 0 until the first write.
    let command = |id: &str, tag: &str, value: f64, deadline_ns: i64| v1::Command {
        ttl_ns: 0,
        id: format!("{line}-{id}"),
        tag: format!("{line}/tank/{tag}"),
        value: Some(fieldline_core::Value::F64(value).into()),
        deadline_ns,
        requested_by: "operator-anna".into(),
        reason: "limits".into(),
    };
    let soon = fieldline_runtime::now_ns() + 10_000_000_000;
    for (id, tag, value, deadline, refused_by) in [
        ("max", "setpoint", 95.0, soon, "max"),
        ("min", "setpoint", 5.0, soon, "min"),
        ("step", "setpoint", 25.0, soon, "max_step"),
        ("readonly", "temperature", 20.0, soon, "not_writable"),
        (
            "late",
            "setpoint",
            15.0,
            fieldline_runtime::now_ns() - 1,
            "deadline",
        ),
        ("nowhere", "nothing", 1.0, soon, "unknown_tag"),
    ] {
        let r = mes
            .write(command(id, tag, value, deadline))
            .await?
            .into_inner();
        assert_eq!(
            (r.status, r.rejected_by.as_str()),
            (v1::CommandStatus::Rejected as i32, refused_by),
            "{id}: {r:?}"
        );
    }
    // The first step from 0 is beyond 10 too, so the device gets a value the step allows.
    peer.command("set holding 4 float32 50").await?;
    watch.processor_has("setpoint", 50.0).await?;
    let first = mes
        .write(command("sp1", "setpoint", 58.0, soon))
        .await?
        .into_inner();
    assert_eq!(first.status, v1::CommandStatus::Written as i32, "{first:?}");
    assert_eq!(peer.command("get holding 4 float32").await?, "VALUE 58.0");
    let again = mes
        .write(command("sp2", "setpoint", 60.0, soon))
        .await?
        .into_inner();
    assert_eq!(again.rejected_by, "rate_limit", "{again:?}");
    assert_eq!(peer.command("get holding 4 float32").await?, "VALUE 58.0");

    // Metadata for the MES.
    let devices = mes
        .list_devices(v1::ListDevicesRequest::default())
        .await?
        .into_inner()
        .devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (devices[0].name.as_str(), devices[0].r#type.as_str()),
        ("tank", "tank-v1")
    );
    let tags = mes
        .list_tags(v1::TagFilter {
            device: "tank".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .tags;
    let pump = tags
        .iter()
        .find(|t| t.tag == "pump")
        .ok_or_else(|| anyhow::anyhow!("no pump tag"))?;
    assert!(pump.writable);
    assert_eq!(
        tags.iter()
            .find(|t| t.tag == "temperature")
            .map(|t| t.unit.as_str()),
        Some("degC")
    );

    // The audit trail in MariaDB: every rule write, the interlock's, the MES's refused and
    // written commands, with who and what.
    let pool = sqlx::MySqlPool::connect(kit::MYSQL_URL).await?;
    let rows: Vec<(String, String, String, Option<String>, String)> = kit::wait_for(WAIT, "the audit rows", || {
        let pool = pool.clone();
        let line = line.clone();
        async move {
            let rows: Vec<(String, String, String, Option<String>, String)> = sqlx::query_as(
                "SELECT source, value_text, status, rejected_by, requested_by FROM command_audit WHERE line = ? ORDER BY requested_ns",
            )
            .bind(&line)
            .fetch_all(&pool)
            .await
            .ok()?;
            (rows.iter().filter(|r| r.0 == "mes").count() == 10).then_some(rows)
        }
    })
    .await?;
    let has = |source: &str, value: &str, status: &str| {
        rows.iter()
            .any(|r| r.0 == source && r.1 == value && r.2 == status)
    };
    assert!(has("fill", "true", "verified"), "{rows:?}");
    assert!(has("fill", "false", "verified"), "{rows:?}");
    assert!(has("overpressure", "false", "verified"), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.0 == "mes"
            && r.2 == "rejected"
            && r.3.as_deref() == Some("interlock")
            && r.4 == "operator-anna"),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r.0 == "mqtt"
            && r.2 == "rejected"
            && r.3.as_deref() == Some("interlock")
            && r.4 == "panel-7"),
        "{rows:?}"
    );
    assert!(has("mes", "false", "verified"), "{rows:?}");
    assert!(has("mes", "58", "verified"), "{rows:?}");
    for check in [
        "max",
        "min",
        "max_step",
        "not_writable",
        "deadline",
        "rate_limit",
    ] {
        assert!(
            rows.iter()
                .any(|r| r.0 == "mes" && r.2 == "rejected" && r.3.as_deref() == Some(check)),
            "no audit row for the refusal by {check}: {rows:?}"
        );
    }
    // The alarm's transitions, with who acknowledged it.
    let events: Vec<(String, String, String)> = kit::wait_for(WAIT, "the alarm's transitions", || {
        let pool = pool.clone();
        let line = line.clone();
        let alarm_id = alarm_id.clone();
        async move {
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT from_state, to_state, user_name FROM alarm_events WHERE line = ? AND alarm_id = ? ORDER BY seq",
            )
            .bind(&line)
            .bind(&alarm_id)
            .fetch_all(&pool)
            .await
            .ok()?;
            (rows.len() >= 8).then_some(rows)
        }
    })
    .await?;
    assert_eq!(
        events,
        vec![
            ("normal".into(), "unacked_active".into(), String::new()),
            (
                "unacked_active".into(),
                "acked_active".into(),
                "operator-anna".into()
            ),
            (
                "acked_active".into(),
                "shelved".into(),
                "operator-ben".into()
            ),
            (
                "shelved".into(),
                "unacked_active".into(),
                "operator-ben".into()
            ),
            (
                "unacked_active".into(),
                "out_of_service".into(),
                "engineer-cy".into()
            ),
            (
                "out_of_service".into(),
                "unacked_active".into(),
                "engineer-cy".into()
            ),
            (
                "unacked_active".into(),
                "acked_active".into(),
                "operator-anna".into()
            ),
            ("acked_active".into(), "normal".into(), String::new()),
        ]
    );
    stop.cancel();
    drop(adapter);
    Ok(())
}

/// A device that takes writes but keeps its own value: the write is read back different,
/// reported as a mismatch, audited, and raises the tag's read-back alarm, which returns once
/// a write reads back equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_reads_back_different_raises_the_readback_alarm() -> anyhow::Result<()> {
    kit::require_mqtt()?;
    kit::require_mysql()?;
    // Holding registers always read 7; a write (function 6) is acknowledged but changes nothing.
    let device = kit::faulty_modbus(|_, request| match request[7] {
        3 => kit::Answer::Bytes(kit::modbus_reply(request, &kit::registers_pdu(request, 7))),
        6 => kit::Answer::Bytes(kit::modbus_reply(request, &request[7..12])),
        f => kit::Answer::Bytes(kit::modbus_reply(request, &[f | 0x80, 1])),
    })
    .await?;
    let state = tempfile::tempdir()?;
    let line = kit::unique("readback");
    let yaml = format!(
        r#"
line: {line}
mqtt: {{ address: "{mqtt}" }}
adapter: {{ grpc_listen: "{adapter}", state_dir: "{state}" }}
processor: {{ grpc_listen: "127.0.0.1:0", adapter_url: "http://{adapter}" }}
storage: {{ grpc_listen: "127.0.0.1:0", sql: {{ url: "{mysql}" }} }}
devices:
  - name: valve
    type: valve-v1
    protocol: modbus-tcp
    endpoint: "{device}"
    poll_interval: 200ms
    tags:
      - {{ name: position, address: "holding:0", type: u16, writable: true, max: 100 }}
"#,
        mqtt = kit::MQTT,
        adapter = kit::free_addr()?,
        state = state.path().display(),
        mysql = kit::MYSQL_URL,
    );
    let mut config = LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = CancellationToken::new();
    let health = Health::default();
    let mut registry = Registry::default();
    let storage = fieldline_storage::start(&config, &health, &mut registry, stop.clone()).await?;
    config.processor.storage_url = format!("http://{}", storage.grpc_addr);
    let _adapter = fieldline_adapter::start(&config, &health, &mut registry, stop.clone()).await?;
    let processor =
        fieldline_processor::start(&config, &health, &mut registry, stop.clone()).await?;
    let mut mes = PlantServiceClient::connect(format!("http://{}", processor.grpc_addr)).await?;
    let write = |id: &str, value: u64| v1::Command {
        ttl_ns: 0,
        id: format!("{line}-{id}"),
        tag: format!("{line}/valve/position"),
        value: Some(fieldline_core::Value::U64(value).into()),
        deadline_ns: fieldline_runtime::now_ns() + 10_000_000_000,
        requested_by: "operator-anna".into(),
        reason: "open the valve".into(),
    };
    let result = mes.write(write("w1", 5)).await?.into_inner();
    assert_eq!(
        result.status,
        v1::CommandStatus::ReadbackMismatch as i32,
        "{result:?}"
    );
    assert_eq!(
        result.read_back,
        Some(fieldline_core::Value::U64(7).into()),
        "{result:?}"
    );
    let alarm_id = format!("{line}/valve/position-readback");
    let alarm = alarm_in_state(&mes, &alarm_id, v1::AlarmState::UnackedActive).await?;
    assert_eq!(alarm.priority, 3, "{alarm:?}");
    // A write the device does hold (it reads 7) reads back equal: the alarm returns.
    let equal = mes.write(write("w2", 7)).await?.into_inner();
    assert_eq!(equal.status, v1::CommandStatus::Written as i32, "{equal:?}");
    alarm_in_state(&mes, &alarm_id, v1::AlarmState::ReturnedUnacked).await?;
    let pool = sqlx::MySqlPool::connect(kit::MYSQL_URL).await?;
    let rows: Vec<(String, String, Option<String>)> = kit::wait_for(WAIT, "the audit rows", || {
        let pool = pool.clone();
        let line = line.clone();
        async move {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT value_text, status, read_back_text FROM command_audit WHERE line = ? ORDER BY requested_ns",
            )
            .bind(&line)
            .fetch_all(&pool)
            .await
            .ok()?;
            (rows.len() == 2 && rows.iter().all(|r| r.1 != "accepted")).then_some(rows)
        }
    })
    .await?;
    assert_eq!(
        rows,
        vec![
            ("5".into(), "readback_mismatch".into(), Some("7".into())),
            ("7".into(), "verified".into(), Some("7".into())),
        ]
    );
    stop.cancel();
    Ok(())
}
