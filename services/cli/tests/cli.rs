//! The `fieldline` binary as a newcomer uses it: `config check` on good and bad documents, and
//! `fieldline up` running the demo line into SQLite and stopping cleanly on SIGTERM.

use std::{process::Command, time::Duration};

use fieldline_testkit as kit;

const BIN: &str = env!("CARGO_BIN_EXE_fieldline");

/// `fieldline config check` with `args` on a file holding `document`.
fn config_check(document: &str, args: &[&str]) -> anyhow::Result<(std::process::Output, String)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("line.yaml");
    std::fs::write(&file, document)?;
    let out = Command::new(BIN)
        .args(["config", "check"])
        .args(args)
        .arg(&file)
        .output()?;
    Ok((out, file.display().to_string()))
}

#[test]
fn config_check_prints_every_problem_with_its_path() -> anyhow::Result<()> {
    let bad = "line: packaging-1\ndevices:\n  - name: filler\n    type: filler-v2\n    protocol: modbus-tcp\n    endpoint: 127.0.0.1:5020\n    tags:\n      - { name: a, address: \"holding:0\", type: f32 }\n      - { name: b, address: \"coil:0\", type: bool }\n      - { name: c, address: \"holdng:0\", type: u16 }\n      - { name: D, address: \"input:1\", type: i17 }\n";
    let (out, _) = config_check(bad, &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("devices[0].tags[2].address: unknown table \"holdng\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("devices[0].tags[3].name: name \"D\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("devices[0].tags[3].type: unknown type \"i17\""),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s) found"), "{stderr}");

    let good = bad
        .replace("holdng", "holding")
        .replace("name: D", "name: d")
        .replace("i17", "i16");
    let (out, _) = config_check(&good, &[])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (line packaging-1, 1 devices, 4 tags)")
    );
    Ok(())
}

#[test]
fn config_check_reports_type_and_semantic_problems_together_with_lines() -> anyhow::Result<()> {
    let document = "line: l\ndevices:\n  - name: filler\n    type: t\n    protocol: modbus-tcp\n    endpoint: 127.0.0.1:5020\n    poll_interval: fast\n    tags:\n      - { name: a, address: \"holding:0\", type: u16 }\n      - { name: a, address: \"holding:1\", type: u16 }\n  - name: oven\n    type: t\n    protocol: opcua\n    endpoint: opc.tcp://127.0.0.1:4840\n    pol_interval: 1s\n    tags: [ { name: t, address: \"ns=2;s=T\", type: f64 } ]\n";
    let (out, at) = config_check(document, &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        format!(
            "{at}:7: devices[0].poll_interval: invalid value: string \"fast\", expected a duration"
        ),
        format!("{at}:10: devices[0].tags[1].name: tag \"a\" is defined twice"),
        format!(
            "{at}:15: devices[1].pol_interval: unknown field `pol_interval`; did you mean `poll_interval`?"
        ),
    ] {
        assert!(
            stderr.lines().any(|l| l == expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
    assert!(stderr.contains("3 problem(s) found"), "{stderr}");

    let (out, _) = config_check(document, &["--format", "json"])?;
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["ok"], false);
    let problems = report["problems"].as_array().expect("a list of problems");
    let found: Vec<(&str, u64)> = problems
        .iter()
        .filter_map(|p| Some((p["path"].as_str()?, p["line"].as_u64()?)))
        .collect();
    assert_eq!(
        found,
        [
            ("devices[0].poll_interval", 7),
            ("devices[0].tags[1].name", 10),
            ("devices[1].pol_interval", 15)
        ]
    );
    Ok(())
}

#[test]
fn config_check_refuses_unreadable_and_malformed_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(dir.path().join("missing.yaml"))
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, [0xffu8, 0xfe, b':', b'\n'])?;
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&file)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}

#[tokio::test]
async fn up_runs_the_demo_line_into_sqlite_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let kit::Demo {
        process: mut up,
        plant,
    } = kit::start_demo(std::path::Path::new(BIN), &data).await?;

    // The tank's temperature rises while its pump is off: two readings, later one higher.
    let db = format!("sqlite://{}?mode=ro", data.join("fieldline.db").display());
    let read_temp = || async {
        let pool = sqlx::SqlitePool::connect(&db).await.ok()?;
        let row: Option<(String, String, i64)> =
            sqlx::query_as("SELECT value_text, quality, source_ns FROM latest_values WHERE line = 'demo' AND tag = 'temperature'")
                .fetch_optional(&pool)
                .await
                .ok()?;
        pool.close().await;
        row
    };
    let first = kit::wait_for(
        Duration::from_secs(20),
        "a temperature in SQLite",
        read_temp,
    )
    .await?;
    assert_eq!(first.1, "good");
    let first_value: f64 = first.0.parse()?;
    let later = kit::wait_for(Duration::from_secs(20), "a newer temperature", || async {
        let row = read_temp().await?;
        (row.2 > first.2 + 1_000_000_000).then_some(row)
    })
    .await?;
    let later_value: f64 = later.0.parse()?;
    assert!(
        later_value > first_value,
        "temperature should rise with the pump off: {first_value} then {later_value}"
    );

    // The MES commands of the CLI against the running demo: a write through the safe path,
    // a refused one, and the alarm list.
    let server = format!("http://{plant}");
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--server", &server])
            .output()
    };
    let written = cli(&["write", "demo/tank/setpoint", "42.5", "--user", "tester"])?;
    let said = String::from_utf8_lossy(&written.stdout);
    assert!(
        written.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&written.stderr)
    );
    assert!(said.contains("written, read back 42.5"), "{said}");
    let refused = cli(&["write", "demo/tank/setpoint", "95", "--user", "tester"])?;
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(
        !refused.status.success(),
        "a write above max must fail: {said}"
    );
    assert!(said.contains("refused by max"), "{said}");
    let read = cli(&["read", "--device", "tank", "temperature"])?;
    let said = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success(), "{said}");
    assert!(said.starts_with("demo/tank/temperature = "), "{said}");
    assert!(said.contains("[good]"), "{said}");
    // `watch` prints the snapshot, then changes, until stopped.
    let mut watch = Command::new(BIN)
        .args(["watch", "--device", "tank", "--server", &server, "setpoint"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = watch
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    });
    let first = tokio::time::timeout(Duration::from_secs(10), first).await???;
    watch.kill()?;
    watch.wait()?;
    assert!(first.starts_with("demo/tank/setpoint = "), "{first}");
    assert!(first.contains("[good]"), "{first}");
    let alarms = cli(&["alarms", "list"])?;
    let said = String::from_utf8_lossy(&alarms.stdout);
    assert!(alarms.status.success());
    assert!(said.contains("demo/tank/temp-high"), "{said}");
    let audit: (String, String) = {
        let pool = sqlx::SqlitePool::connect(&db).await?;
        let row = sqlx::query_as(
            "SELECT status, requested_by FROM command_audit WHERE tag = 'setpoint' AND value_text = '42.5'",
        )
        .fetch_one(&pool)
        .await?;
        pool.close().await;
        row
    };
    assert_eq!(audit, ("verified".to_string(), "tester".to_string()));

    let (status, metrics) = kit::http_get(&format!("http://{}/metrics", up.http)).await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("fieldline_adapter_polls_total{device=\"tank\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fieldline_storage_samples_written_total{sink=\"sqlite\"}"),
        "{metrics}"
    );

    let code = up.terminate().await?;
    assert_eq!(code, Some(0), "fieldline up must exit 0 after SIGTERM");
    let stdout = up.stdout().await;
    assert!(
        stdout.contains(&format!("MES API (gRPC PlantService)  http://{plant}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("fieldline.db"),
        "the banner says where the database is: {stdout}"
    );

    // Everything acknowledged before the stop is in the database, and the rows agree.
    let pool = sqlx::SqlitePool::connect(&db).await?;
    let (tags,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM latest_values WHERE line = 'demo' AND quality = 'good'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(tags, 6, "all six tank tags have a good latest value");
    let (samples,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM samples WHERE line = 'demo' AND tag = 'temperature'")
            .fetch_one(&pool)
            .await?;
    assert!(samples >= 2);
    Ok(())
}

#[tokio::test]
async fn up_is_quiet_when_healthy_and_its_commands_end_cleanly_at_a_pipe() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kit::Demo {
        process: mut up,
        plant,
    } = kit::start_demo(std::path::Path::new(BIN), &dir.path().join("data")).await?;
    let server = format!("http://{plant}");
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--server", &server])
            .output()
    };

    // `read --output json`: one document a tag; the level, a u16 scaled by 0.1, has the one
    // decimal its scale implies.
    let samples = kit::wait_for(Duration::from_secs(30), "the demo's values", || async {
        let out = cli(&["read", "--output", "json"]).ok()?;
        let docs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .ok()?;
        (docs.len() == 6).then_some(docs)
    })
    .await?;
    let level = samples
        .iter()
        .find(|s| s["tag"] == "level")
        .expect("the level tag");
    assert_eq!(level["quality"], "good", "{level}");
    let text = level["value"].to_string();
    let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
    assert!(decimals <= 1, "level printed as {text}");

    // `watch` whose reader goes away after one line (as `| head -1` does) ends with 0 and
    // prints nothing on stderr.
    let mut watch = tokio::process::Command::new(BIN)
        .args(["watch", "--server", &server])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = watch.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??;
    assert!(first.is_some_and(|l| l.starts_with("demo/tank/")));
    drop(lines);
    let out = tokio::time::timeout(Duration::from_secs(15), watch.wait_with_output()).await??;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    // `alarms --output json`, and the commands print no warning either.
    let out = cli(&["alarms", "--output", "json"])?;
    assert_eq!(out.status.code(), Some(0));
    let alarms: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        alarms
            .iter()
            .any(|a| a["alarm_id"] == "demo/tank/temp-high")
    );
    assert!(kit::warnings_and_errors(&String::from_utf8_lossy(&out.stderr)).is_empty());

    // Ctrl-C: a clean stop, and nothing at WARN or ERROR from start to end.
    assert_eq!(up.interrupt().await?, Some(0));
    let log = up.stdout().await;
    assert!(log.contains("shutdown requested"), "{log}");
    let noisy = kit::warnings_and_errors(&log);
    assert!(
        noisy.is_empty(),
        "a healthy demo logged:\n{}",
        noisy.join("\n")
    );
    Ok(())
}
