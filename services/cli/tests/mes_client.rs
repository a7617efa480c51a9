//! The Python MES client of `docs/examples/mes_client.py` against `fieldline up`: a gRPC
//! client we did not write (grpcio with grpcio-reflection, which speaks reflection
//! `v1alpha`) learns PlantService from the server and reads, subscribes, queries history,
//! lists and acknowledges alarms and writes, with no `.proto` file.

use std::{path::Path, process::Command, time::Duration};

use fieldline_testkit as kit;

const BIN: &str = env!("CARGO_BIN_EXE_fieldline");
const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/examples/mes_client.py"
);

/// Runs the example client; its exit code and the JSON documents it printed.
fn client(server: &str, args: &[&str]) -> anyhow::Result<(Option<i32>, Vec<serde_json::Value>)> {
    let out = Command::new(kit::python()?)
        .arg(CLIENT)
        .args(["--server", server])
        .args(args)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        stderr.trim().is_empty(),
        "mes_client.py {args:?} wrote to stderr:\n{stderr}"
    );
    let docs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    Ok((out.status.code(), docs))
}

#[tokio::test]
async fn a_python_client_uses_plant_service_through_reflection_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kit::Demo {
        process: mut up,
        plant,
    } = kit::start_demo(Path::new(BIN), &dir.path().join("data")).await?;
    let server = plant.to_string();

    // read: every demo tag, once the first poll is in.
    let latest = kit::wait_for(
        Duration::from_secs(30),
        "the demo's latest values",
        || async {
            let (code, docs) = client(&server, &["read"]).ok()?;
            (code == Some(0) && docs.len() == 6).then_some(docs)
        },
    )
    .await?;
    let mut tags: Vec<&str> = latest
        .iter()
        .filter_map(|d| d["sample"]["tag"].as_str())
        .collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        [
            "high_temp",
            "level",
            "pump_run",
            "setpoint",
            "temperature",
            "units_produced"
        ]
    );

    // subscribe: as many samples as asked for, each of a demo tag.
    let (code, samples) = client(&server, &["subscribe", "--count", "3"])?;
    assert_eq!(code, Some(0));
    assert_eq!(samples.len(), 3);
    assert!(
        samples
            .iter()
            .all(|s| s["line"] == "demo" && s["sample"]["tag"].is_string())
    );

    // history: the stored temperatures, oldest first.
    let points = kit::wait_for(Duration::from_secs(30), "stored temperatures", || async {
        let (code, points) = client(
            &server,
            &["history", "demo/tank/temperature", "--minutes", "5"],
        )
        .ok()?;
        (code == Some(0) && points.len() >= 2).then_some(points)
    })
    .await?;
    let times: Vec<i64> = points
        .iter()
        .filter_map(|p| p["timestamp_ns"].as_str()?.parse().ok())
        .collect();
    assert_eq!(times.len(), points.len(), "{points:?}");
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert!(points.iter().all(|p| p["value"]["double_value"].is_f64()));

    // alarms and acknowledge: the demo's alarms are listed; acknowledging an alarm that is
    // normal changes nothing, and an unknown one is NOT_FOUND.
    let (code, alarms) = client(&server, &["alarms"])?;
    assert_eq!(code, Some(0));
    assert!(
        alarms
            .iter()
            .any(|a| a["alarm_id"] == "demo/tank/temp-high"),
        "{alarms:?}"
    );
    let (code, acked) = client(
        &server,
        &["acknowledge", "demo/tank/temp-high", "--comment", "seen"],
    )?;
    assert_eq!((code, acked.len()), (Some(0), 1));
    assert!(acked[0].get("events").is_none(), "{acked:?}");
    let (code, unknown) = client(&server, &["acknowledge", "demo/tank/no-such-alarm"])?;
    assert_eq!(code, Some(1));
    assert_eq!(unknown[0]["status"], "NOT_FOUND", "{unknown:?}");

    // write: a setpoint in range is written and read back; one above its max is refused.
    let (code, written) = client(&server, &["write", "demo/tank/setpoint", "45.5"])?;
    assert_eq!(code, Some(0));
    assert_eq!(
        written[0]["status"], "COMMAND_STATUS_WRITTEN",
        "{written:?}"
    );
    assert_eq!(written[0]["read_back"]["double_value"], 45.5, "{written:?}");
    let (code, refused) = client(&server, &["write", "demo/tank/setpoint", "95"])?;
    assert_eq!(code, Some(0));
    assert_eq!(
        refused[0]["status"], "COMMAND_STATUS_REJECTED",
        "{refused:?}"
    );
    assert_eq!(refused[0]["rejected_by"], "max", "{refused:?}");

    assert_eq!(up.terminate().await?, Some(0), "{}", up.stdout().await);
    Ok(())
}
