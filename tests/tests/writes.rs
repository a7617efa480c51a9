//! Writes through the adapter's safe path to a pymodbus device, checked with mbpoll: two
//! independent implementations agree on what was written, in the tag's own encoding.

use std::time::Duration;

use fieldline_core::{Value, config::LineConfig};
use fieldline_proto::v1::{self, adapter_service_client::AdapterServiceClient};
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use prometheus_client::registry::Registry;
use serde_json::json;

#[tokio::test]
async fn written_values_read_back_identically_with_mbpoll() -> anyhow::Result<()> {
    kit::require_mqtt()?;
    let mut peer = kit::ModbusPeer::start(&json!({
        "holding": [
            {"address": 10, "type": "int16", "value": -5},
            {"address": 20, "type": "float32", "value": 1.0, "word_order": "little"},
            {"address": 30, "type": "uint32", "value": 1, "word_order": "big"}
        ],
        "coils": [{"address": 2, "value": true}]
    }))
    .await?;
    let state = tempfile::tempdir()?;
    let line = kit::unique("writes");
    let yaml = format!(
        "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nadapter: {{ grpc_listen: \"127.0.0.1:0\", state_dir: \"{dir}\" }}\ndevices:\n  - name: plc\n    type: t\n    protocol: modbus-tcp\n    endpoint: \"{addr}\"\n    poll_interval: 500ms\n    tags:\n      - {{ name: speed, address: \"holding:10\", type: i16, writable: true, min: -1000, max: 1000 }}\n      - {{ name: setpoint, address: \"holding:20\", type: f32, word_order: little, writable: true }}\n      - {{ name: total, address: \"holding:30\", type: u32, writable: true }}\n      - {{ name: valve, address: \"coil:2\", type: bool, writable: true }}\n",
        mqtt = kit::MQTT,
        dir = state.path().display(),
        addr = peer.addr,
    );
    let config = LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = CancellationToken::new();
    let adapter = fieldline_adapter::start(
        &config,
        &Health::default(),
        &mut Registry::default(),
        stop.clone(),
    )
    .await?;
    let mut client = AdapterServiceClient::connect(format!("http://{}", adapter.grpc_addr)).await?;
    for (id, tag, value) in [
        ("w1", "speed", Value::I64(-321)),
        ("w2", "setpoint", Value::F64(61.25)),
        ("w3", "total", Value::U64(3_000_000_000)),
        ("w4", "valve", Value::Bool(false)),
    ] {
        let command = v1::Command {
            ttl_ns: 0,
            id: id.into(),
            tag: format!("{line}/plc/{tag}"),
            value: Some(value.clone().into()),
            deadline_ns: fieldline_runtime::now_ns() + 5_000_000_000,
            requested_by: "test".into(),
            reason: "write test".into(),
        };
        let result = tokio::time::timeout(Duration::from_secs(10), client.write(command))
            .await??
            .into_inner();
        assert_eq!(
            result.status,
            v1::CommandStatus::Written as i32,
            "{tag}: {result:?}"
        );
        assert_eq!(result.read_back, Some(value.into()), "{tag}: read back");
    }
    let port = peer.addr.port();
    assert_eq!(
        kit::mbpoll(port, &["-t", "4", "-r", "11", "-c", "1"])?,
        vec![(11, "65215 (-321)".to_string())]
    );
    // mbpoll's float reads take the low word first, as the tag's `word_order: little` stores it.
    assert_eq!(
        kit::mbpoll(port, &["-t", "4:float", "-r", "21", "-c", "1"])?,
        vec![(21, "61.25".to_string())]
    );
    // mbpoll reads 32-bit registers as signed: 3_000_000_000 shows as its i32 twin.
    assert_eq!(
        kit::mbpoll(port, &["-t", "4:int", "-B", "-r", "31", "-c", "1"])?,
        vec![(31, "-1294967296".to_string())]
    );
    assert_eq!(
        kit::mbpoll(port, &["-t", "0", "-r", "3", "-c", "1"])?,
        vec![(3, "0".to_string())]
    );
    assert_eq!(
        peer.command("get holding 30 2").await?,
        "VALUE 45776,24064",
        "3_000_000_000 = 0xB2D0_5E00, high word first"
    );
    stop.cancel();
    adapter.wait().await;
    peer.stop().await;
    Ok(())
}
