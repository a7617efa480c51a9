//! Plugins on real script files: derivation, per-device state, hot reload without losing or
//! repeating a batch, the sandbox, refused results, and the built-ins' figures worked out by
//! hand.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use fieldline_core::{
    Quality, QualityReason, Sample, SampleBatch, Value,
    plugin::{PluginConfig, validate_plugins},
};
use fieldline_processor::{
    Error,
    plugin_host::{Derived, FailureKind, PluginOptions, PluginSet},
};

const S: i64 = 1_000_000_000;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins")
}

fn plugins(yaml: &str) -> Vec<PluginConfig> {
    let plugins: Vec<PluginConfig> = serde_yaml::from_str(yaml).expect("plugin YAML parses");
    assert_eq!(validate_plugins(&plugins, "plugins"), vec![], "{yaml}");
    plugins
}

fn options(base_dir: &Path) -> PluginOptions {
    PluginOptions {
        base_dir: base_dir.to_path_buf(),
        reload_check: Duration::ZERO,
    }
}

fn set(yaml: &str) -> PluginSet {
    PluginSet::build("cnc", &plugins(yaml), &options(&fixtures())).expect("plugins build")
}

fn batch(device: &str, sequence: u64, ts: i64, samples: Vec<(&str, Option<Value>)>) -> SampleBatch {
    SampleBatch {
        line: "machining".into(),
        device: device.into(),
        adapter_id: "adapter-0".into(),
        sequence,
        samples: samples
            .into_iter()
            .map(|(tag, value)| match value {
                Some(v) => Sample::good(tag, v, ts),
                None => Sample::bad(tag, Quality::bad(QualityReason::CommFailure, "timeout"), ts),
            })
            .collect(),
    }
}

fn temp(device: &str, sequence: u64, celsius: f64) -> SampleBatch {
    batch(
        device,
        sequence,
        sequence as i64 * S,
        vec![("temp_c", Some(Value::F64(celsius)))],
    )
}

fn value(d: &Derived, tag: &str) -> Value {
    let s = d
        .sample(tag)
        .unwrap_or_else(|| panic!("no {tag} in {:#?}", d.samples));
    assert_eq!(s.quality, Quality::Good, "{tag}: {s:?}");
    s.value
        .clone()
        .unwrap_or_else(|| panic!("{tag} has no value"))
}

fn float(d: &Derived, tag: &str) -> f64 {
    match value(d, tag) {
        Value::F64(v) => v,
        other => panic!("{tag} is {other:?}, not a float"),
    }
}

fn bad_detail(d: &Derived, tag: &str) -> String {
    let s = d
        .sample(tag)
        .unwrap_or_else(|| panic!("no {tag} in {:#?}", d.samples));
    assert_eq!(s.value, None, "{tag}: {s:?}");
    match &s.quality {
        Quality::Bad {
            reason: QualityReason::Processing,
            detail,
        } => detail.clone(),
        other => panic!("{tag} is {other:?}, not bad(processing)"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn a_script_derives_its_outputs_with_the_batch_timestamp_and_keeps_state_per_device() {
    let mut plugins = set("- script: fahrenheit.rhai\n  outputs: [temp_f, batches, version]\n");
    for seq in 1..=3 {
        let d = plugins.apply(&temp("mill-1", seq, 100.0));
        assert_eq!(float(&d, "temp_f"), 212.0);
        assert_eq!(value(&d, "batches"), Value::I64(seq as i64));
        assert!(d.samples.iter().all(|s| s.timestamp_ns == seq as i64 * S));
        assert_eq!(d.failures, vec![]);
    }
    let d = plugins.apply(&temp("mill-2", 1, -40.0));
    assert_eq!(float(&d, "temp_f"), -40.0);
    assert_eq!(
        value(&d, "batches"),
        Value::I64(1),
        "mill-2 has its own state"
    );
    let d = plugins.apply(&temp("mill-1", 4, 0.0));
    assert_eq!(value(&d, "batches"), Value::I64(4));
    assert_eq!(plugins.stats()[0].runs, 5);
}

#[test]
fn a_bad_input_makes_the_script_outputs_bad_never_zero() {
    let mut plugins = set("- script: fahrenheit.rhai\n  outputs: [temp_f, batches, version]\n");
    let d = plugins.apply(&batch("mill-1", 1, S, vec![("temp_c", None)]));
    for tag in ["temp_f", "batches", "version"] {
        let detail = bad_detail(&d, tag);
        assert!(detail.contains("Function not found"), "{tag}: {detail}");
    }
    assert_eq!(d.failures.len(), 1);
    assert_eq!(d.failures[0].kind, FailureKind::Script);
    assert_eq!(plugins.stats()[0].failed(FailureKind::Script), 1);
}

#[test]
fn a_changed_script_takes_over_between_batches_without_losing_or_repeating_any() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("convert.rhai");
    let v1 = std::fs::read_to_string(fixtures().join("fahrenheit.rhai")).unwrap();
    std::fs::write(&file, &v1).unwrap();
    let config = plugins("- script: convert.rhai\n  outputs: [temp_f, batches, version]\n");
    let mut plugins = PluginSet::build("cnc", &config, &options(dir.path())).unwrap();

    let mut seq = 0;
    let mut next = |plugins: &mut PluginSet| {
        seq += 1;
        let celsius = seq as f64;
        let d = plugins.apply(&temp("mill-1", seq, celsius));
        assert_eq!(
            d.samples.iter().filter(|s| s.tag == "temp_f").count(),
            1,
            "batch {seq}: exactly one temp_f"
        );
        assert_eq!(
            value(&d, "batches"),
            Value::I64(seq as i64),
            "batch {seq}: state counts every batch once, across reloads"
        );
        (seq, celsius, d)
    };
    for _ in 0..3 {
        let (_, c, d) = next(&mut plugins);
        assert_eq!(float(&d, "temp_f"), c * 9.0 / 5.0 + 32.0);
        assert_eq!(value(&d, "version"), Value::I64(1));
    }

    // Kelvin instead, as version 2 (a different length, too, so any file system notices).
    let v2 = "state.batches = (state.batches ?? 0) + 1;\n\
              #{ temp_f: batch.tags.temp_c + 273.15, batches: state.batches, version: 2 }\n";
    std::fs::write(&file, v2).unwrap();
    let mut switched_at = None;
    for _ in 0..5 {
        let (seq, c, d) = next(&mut plugins);
        match (value(&d, "version"), switched_at) {
            (Value::I64(1), None) => assert_eq!(float(&d, "temp_f"), c * 9.0 / 5.0 + 32.0),
            (Value::I64(2), _) => {
                assert_eq!(float(&d, "temp_f"), c + 273.15);
                switched_at.get_or_insert(seq);
            }
            (v, at) => panic!("batch {seq}: version {v:?} after switching at {at:?}"),
        }
    }
    let switched_at = switched_at.expect("the new version took over");
    assert!(
        switched_at <= 5,
        "taken on the second check after the write"
    );
    assert_eq!(plugins.stats()[0].reloads, 1);

    // A broken version: the running one stays, and the failure is reported once.
    std::fs::write(&file, "#{ temp_f: batch.tags.temp_c * }\n").unwrap();
    let mut reload_failures = Vec::new();
    for _ in 0..5 {
        let (_, c, d) = next(&mut plugins);
        assert_eq!(float(&d, "temp_f"), c + 273.15);
        reload_failures.extend(
            d.failures
                .into_iter()
                .filter(|f| f.kind == FailureKind::Reload),
        );
    }
    assert_eq!(reload_failures.len(), 1, "{reload_failures:?}");
    assert!(
        reload_failures[0].detail.contains("does not compile"),
        "{reload_failures:?}"
    );
    assert_eq!(plugins.stats()[0].failed(FailureKind::Reload), 1);

    // Fixed again: taken, and the state carried on through all of it.
    std::fs::write(&file, &v1).unwrap();
    let mut back = false;
    for _ in 0..4 {
        let (_, c, d) = next(&mut plugins);
        if value(&d, "version") == Value::I64(1) {
            assert_eq!(float(&d, "temp_f"), c * 9.0 / 5.0 + 32.0);
            back = true;
        }
    }
    assert!(back, "the fixed script took over");
    assert_eq!(plugins.stats()[0].reloads, 2);
}

#[test]
fn a_deleted_script_keeps_the_running_version_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("convert.rhai");
    std::fs::copy(fixtures().join("fahrenheit.rhai"), &file).unwrap();
    let config = plugins("- script: convert.rhai\n  outputs: [temp_f, batches, version]\n");
    let mut plugins = PluginSet::build("cnc", &config, &options(dir.path())).unwrap();
    std::fs::remove_file(&file).unwrap();
    let mut failures = Vec::new();
    for seq in 1..=3 {
        let d = plugins.apply(&temp("mill-1", seq, 100.0));
        assert_eq!(float(&d, "temp_f"), 212.0);
        failures.extend(d.failures);
    }
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].detail.contains("cannot read"), "{failures:?}");
}

#[test]
fn an_endless_script_is_stopped_and_only_its_own_outputs_go_bad() {
    let mut plugins = set("- builtin: counter\n  input: parts_total\n  delta: parts\n\
         - script: spin.rhai\n  outputs: [spin]\n  max_operations: 50000\n\
         - script: fahrenheit.rhai\n  outputs: [temp_f, batches, version]\n");
    let (tx, rx) = mpsc::channel();
    // On a thread, so that a limit that failed to stop the loop fails this test instead of
    // hanging it.
    std::thread::spawn(move || {
        let mut results = Vec::new();
        for seq in 1..=2 {
            let b = batch(
                "mill-1",
                seq,
                seq as i64 * S,
                vec![
                    ("temp_c", Some(Value::F64(20.0))),
                    ("parts_total", Some(Value::U64(10 * seq))),
                ],
            );
            results.push(plugins.apply(&b));
        }
        let _ = tx.send((results, plugins.stats()));
    });
    let (results, stats) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the operation limit stops an endless loop");
    for d in &results {
        let detail = bad_detail(d, "spin");
        assert!(detail.contains("Too many operations"), "{detail}");
        assert_eq!(float(d, "temp_f"), 68.0);
        assert!(d.failures.iter().all(|f| f.kind == FailureKind::Limit));
        assert_eq!(d.failures.len(), 1);
    }
    assert_eq!(value(&results[1], "parts"), Value::U64(10));
    assert_eq!(stats[1].failed(FailureKind::Limit), 2);
    assert_eq!(stats[2].failures_total(), 0);
}

#[test]
fn scripts_cannot_import_eval_or_touch_files() {
    for (file, word) in [("import.rhai", "import"), ("eval.rhai", "eval")] {
        let config = plugins(&format!("- script: {file}\n  outputs: [secret]\n"));
        match PluginSet::build("cnc", &config, &options(&fixtures())) {
            Err(e @ Error::ScriptCompile { .. }) => {
                assert!(e.to_string().contains(word), "{e}");
                assert_eq!(e.kind(), "plugin_script_compile");
            }
            other => panic!("{file} must not compile: {other:?}"),
        }
    }
    let mut plugins = set("- script: read_file.rhai\n  outputs: [secret]\n");
    let d = plugins.apply(&temp("mill-1", 1, 20.0));
    let detail = bad_detail(&d, "secret");
    assert!(detail.contains("Function not found: read_file"), "{detail}");
}

#[test]
fn a_missing_script_is_a_clear_build_error() {
    let config = plugins("- script: no-such.rhai\n  outputs: [a]\n");
    let e = PluginSet::build("cnc", &config, &options(&fixtures())).unwrap_err();
    assert!(matches!(e, Error::ScriptRead { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such.rhai"), "{e}");
}

#[test]
fn an_undeclared_output_is_refused_and_counted() {
    let mut plugins = set("- script: undeclared.rhai\n  outputs: [temp_f]\n");
    let d = plugins.apply(&temp("mill-1", 1, 20.0));
    assert_eq!(float(&d, "temp_f"), 1.5);
    assert!(d.sample("setpoint").is_none());
    assert_eq!(d.failures.len(), 1);
    assert_eq!(d.failures[0].kind, FailureKind::UndeclaredOutput);
    assert!(
        d.failures[0].detail.contains("setpoint"),
        "{:?}",
        d.failures
    );
    assert_eq!(plugins.stats()[0].failed(FailureKind::UndeclaredOutput), 1);
}

#[test]
fn a_result_that_is_not_a_map_makes_every_output_bad() {
    let mut plugins = set("- script: not_a_map.rhai\n  outputs: [a, b]\n");
    let d = plugins.apply(&temp("mill-1", 1, 20.0));
    for tag in ["a", "b"] {
        assert!(bad_detail(&d, tag).contains("not a map"), "{d:?}");
    }
    assert_eq!(d.failures[0].kind, FailureKind::Return);
}

#[test]
fn scripts_raise_events_and_malformed_ones_are_refused() {
    let mut plugins = set("- script: events.rhai\n  outputs: [hot]\n");
    let d = plugins.apply(&temp("mill-1", 1, 20.0));
    assert_eq!(value(&d, "hot"), Value::Bool(false));
    assert!(d.events.is_empty());
    let d = plugins.apply(&temp("mill-1", 2, 95.5));
    assert_eq!(value(&d, "hot"), Value::Bool(true));
    assert_eq!(d.events.len(), 1, "{:?}", d.events);
    let e = &d.events[0];
    assert_eq!(e.kind, "overheat");
    assert_eq!(e.message, "spindle at 95.5 degC");
    assert_eq!(e.device, "mill-1");
    assert_eq!(e.timestamp_ns, 2 * S);
    assert_eq!(e.fields, vec![("limit".to_string(), Value::F64(80.0))]);
    assert_eq!(d.failures.len(), 1);
    assert_eq!(d.failures[0].kind, FailureKind::Event);
    assert!(
        d.failures[0].detail.contains("events[1]"),
        "{:?}",
        d.failures
    );
}

#[test]
fn scripts_see_quality_names_and_what_earlier_plugins_derived() {
    let mut plugins = set("- builtin: counter\n  input: parts_total\n  delta: parts\n\
         - script: sees_batch.rhai\n  outputs: [seen_quality, seen_bad, seen_device, seen_line, seen_ts, seen_parts]\n");
    plugins.apply(&batch(
        "mill-1",
        1,
        S,
        vec![("parts_total", Some(Value::U64(5)))],
    ));
    let d = plugins.apply(&batch(
        "mill-1",
        2,
        2 * S,
        vec![("temp_c", None), ("parts_total", Some(Value::U64(8)))],
    ));
    assert_eq!(
        value(&d, "seen_quality"),
        Value::String("bad:comm_failure".into())
    );
    assert_eq!(value(&d, "seen_bad"), Value::String("()".into()));
    assert_eq!(value(&d, "seen_device"), Value::String("mill-1".into()));
    assert_eq!(value(&d, "seen_line"), Value::String("machining".into()));
    assert_eq!(value(&d, "seen_ts"), Value::I64(2 * S));
    assert_eq!(value(&d, "seen_parts"), Value::I64(3));
}

#[test]
fn counter_gives_delta_and_rate_through_rollover_and_reset() {
    let mut plugins = set(
        "- builtin: counter\n  input: parts_total\n  delta: parts\n  rate: parts_per_min\n  rate_per: 1min\n  rollover: 65536\n",
    );
    let reading = |seq: u64, ts: i64, v: Option<u64>| {
        batch("press-1", seq, ts, vec![("parts_total", v.map(Value::U64))])
    };
    let d = plugins.apply(&reading(1, 0, Some(65500)));
    assert!(d.samples.is_empty(), "no delta before a second reading");
    // +30 in 30 s: 60 per minute.
    let d = plugins.apply(&reading(2, 30 * S, Some(65530)));
    assert_eq!(value(&d, "parts"), Value::U64(30));
    assert!(close(float(&d, "parts_per_min"), 60.0));
    // 65530 -> 10 wraps: +16 in 60 s.
    let d = plugins.apply(&reading(3, 90 * S, Some(10)));
    assert_eq!(value(&d, "parts"), Value::U64(16));
    assert!(close(float(&d, "parts_per_min"), 16.0));
    assert!(d.events.is_empty());
    // A bad reading: outputs bad, and the parts made meanwhile are not lost.
    let d = plugins.apply(&reading(4, 100 * S, None));
    assert!(bad_detail(&d, "parts").contains("comm_failure"));
    assert!(bad_detail(&d, "parts_per_min").contains("comm_failure"));
    let d = plugins.apply(&reading(5, 150 * S, Some(40)));
    assert_eq!(
        value(&d, "parts"),
        Value::U64(30),
        "10 -> 40 across the gap"
    );
    assert!(close(float(&d, "parts_per_min"), 30.0));
    // 20000 then 7: a drop of more than half the range is a reset: 7 counted, reported.
    plugins.apply(&reading(6, 160 * S, Some(20000)));
    let d = plugins.apply(&reading(7, 170 * S, Some(7)));
    assert_eq!(value(&d, "parts"), Value::U64(7));
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.events[0].kind, "counter_reset");
    assert!(
        d.events[0].message.contains("from 20000 to 7"),
        "{:?}",
        d.events[0]
    );
    // A value beyond the rollover is refused, not counted.
    let d = plugins.apply(&reading(8, 180 * S, Some(70000)));
    assert!(bad_detail(&d, "parts").contains("not below its rollover"));
    let d = plugins.apply(&reading(9, 190 * S, Some(9)));
    assert_eq!(value(&d, "parts"), Value::U64(2));
}

#[test]
fn counter_without_rollover_never_counts_negative() {
    let mut plugins = set("- builtin: counter\n  input: litres\n  delta: filled\n");
    let reading = |seq: u64, v: f64| {
        batch(
            "filler",
            seq,
            seq as i64 * S,
            vec![("litres", Some(Value::F64(v)))],
        )
    };
    plugins.apply(&reading(1, 1000.5));
    let d = plugins.apply(&reading(2, 1002.0));
    assert!(close(float(&d, "filled"), 1.5));
    let d = plugins.apply(&reading(3, 0.25));
    assert!(close(float(&d, "filled"), 0.25), "a reset counts from 0");
    assert_eq!(d.events[0].kind, "counter_reset");
}

#[test]
fn runtime_counts_hours_while_running() {
    let mut plugins = set("- builtin: runtime\n  input: spindle_on\n  output: spindle_hours\n");
    let on = |seq: u64, ts: i64, v: Option<bool>| {
        batch("mill-1", seq, ts, vec![("spindle_on", v.map(Value::Bool))])
    };
    let other =
        |seq: u64, ts: i64| batch("mill-1", seq, ts, vec![("temp_c", Some(Value::F64(1.0)))]);
    let d = plugins.apply(&on(1, 0, Some(true)));
    assert_eq!(float(&d, "spindle_hours"), 0.0);
    // Still running when another tag reports 30 minutes later.
    let d = plugins.apply(&other(2, 1800 * S));
    assert!(close(float(&d, "spindle_hours"), 0.5));
    let d = plugins.apply(&on(3, 3600 * S, Some(false)));
    assert!(close(float(&d, "spindle_hours"), 1.0));
    let d = plugins.apply(&other(4, 7200 * S));
    assert!(d.samples.is_empty(), "stopped: nothing changes");
    let d = plugins.apply(&on(5, 7200 * S, Some(true)));
    assert!(close(float(&d, "spindle_hours"), 1.0));
    let d = plugins.apply(&on(6, 9000 * S, None));
    assert!(bad_detail(&d, "spindle_hours").contains("comm_failure"));
    let d = plugins.apply(&on(7, 12600 * S, Some(false)));
    assert!(
        close(float(&d, "spindle_hours"), 1.5),
        "counted until the bad reading, not through the unknown stretch"
    );
}

#[test]
fn oee_figures_match_a_hand_calculation_and_low_efficiency_is_reported() {
    let mut plugins = set(
        "- builtin: oee\n  units_produced: units\n  good_count: good\n  running: running\n  target_rate: 120\n  window: 10min\n  low_efficiency: 0.85\n",
    );
    let reading = |seq: u64, ts: i64, units: u64, good: u64, running: bool| {
        batch(
            "line-end",
            seq,
            ts,
            vec![
                ("units", Some(Value::U64(units))),
                ("good", Some(Value::U64(good))),
                ("running", Some(Value::Bool(running))),
            ],
        )
    };
    let d = plugins.apply(&reading(1, 0, 1000, 990, true));
    assert!(
        d.samples.is_empty(),
        "figures start with the second reading"
    );
    // 100 units (95 good) in 60 s, running all along, at a target of 120 per minute.
    let d = plugins.apply(&reading(2, 60 * S, 1100, 1085, true));
    assert!(close(float(&d, "production_rate"), 100.0));
    assert!(close(float(&d, "efficiency"), 100.0 / 120.0));
    assert!((float(&d, "efficiency") - 0.8333).abs() < 1e-4);
    assert!(close(float(&d, "availability"), 1.0));
    assert!(close(float(&d, "performance"), 100.0 / 120.0));
    assert!(close(float(&d, "quality"), 0.95));
    assert!(close(float(&d, "oee"), 95.0 / 120.0));
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.events[0].kind, "low_efficiency");
    // Stopped for the next 60 s, 0 units: availability 0.5 over 120 s.
    let d = plugins.apply(&reading(3, 90 * S, 1100, 1085, false));
    assert!(close(float(&d, "availability"), 90.0 / 90.0 * 1.0));
    let d = plugins.apply(&reading(4, 120 * S, 1100, 1085, false));
    assert!(close(float(&d, "availability"), 0.75));
    assert!(close(float(&d, "production_rate"), 50.0));
    assert!(close(float(&d, "performance"), 100.0 / (120.0 * 1.5)));
    assert!(d.events.is_empty(), "still low: reported once");
    // Catching up: 150 more units in the next 60 s while running.
    let d = plugins.apply(&reading(5, 180 * S, 1250, 1235, true));
    assert!(close(float(&d, "production_rate"), 250.0 / 3.0));
    let d = plugins.apply(&reading(6, 240 * S, 1500, 1485, true));
    assert!(close(float(&d, "production_rate"), 500.0 / 4.0));
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.events[0].kind, "efficiency_recovered");
    // A bad input makes every figure bad.
    let d = plugins.apply(&batch("line-end", 7, 250 * S, vec![("good", None)]));
    assert!(bad_detail(&d, "oee").contains("good is bad:comm_failure"));
    assert_eq!(d.samples.len(), 6);
}

#[test]
fn oee_from_runtime_and_downtime_counters_and_undefined_figures() {
    let mut plugins = set(
        "- builtin: oee\n  units_produced: units\n  good_count: good\n  runtime: run_s\n  downtime: down_s\n  target_rate: 60\n",
    );
    let reading = |seq: u64, ts: i64, units: u64, good: u64, run: u64, down: u64| {
        batch(
            "press-1",
            seq,
            ts,
            vec![
                ("units", Some(Value::U64(units))),
                ("good", Some(Value::U64(good))),
                ("run_s", Some(Value::U64(run))),
                ("down_s", Some(Value::U64(down))),
            ],
        )
    };
    plugins.apply(&reading(1, 0, 0, 0, 0, 0));
    // 300 s run + 60 s down in 360 s; 240 units, 228 good; 60 per minute ideal.
    let d = plugins.apply(&reading(2, 360 * S, 240, 228, 300, 60));
    assert!(close(float(&d, "availability"), 300.0 / 360.0));
    assert!(close(float(&d, "performance"), 240.0 / (60.0 * 5.0)));
    assert!(close(float(&d, "quality"), 228.0 / 240.0));
    let oee = (300.0 / 360.0) * (240.0 / 300.0) * (228.0 / 240.0);
    assert!(
        close(float(&d, "oee"), oee),
        "{} vs {oee}",
        float(&d, "oee")
    );
    assert!(close(float(&d, "efficiency"), 40.0 / 60.0));

    let mut idle = set(
        "- builtin: oee\n  units_produced: units\n  good_count: good\n  runtime: run_s\n  downtime: down_s\n  target_rate: 60\n",
    );
    idle.apply(&reading(1, 0, 0, 0, 0, 0));
    let d = idle.apply(&reading(2, 60 * S, 0, 0, 0, 60));
    assert!(close(float(&d, "availability"), 0.0));
    assert!(bad_detail(&d, "performance").contains("no run time"));
    assert!(bad_detail(&d, "quality").contains("no units"));
    assert!(close(float(&d, "oee"), 0.0));
}

/// Many batches through one script per tag, every result checked; the rate goes to stdout
/// (`cargo test --release -p fieldline-processor --test plugins -- --nocapture throughput`).
#[test]
fn throughput_one_script_per_tag_keeps_every_value_exact() {
    const TAGS: usize = 10;
    let batches: usize = if cfg!(debug_assertions) {
        2_000
    } else {
        40_000
    };
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::new();
    for i in 0..TAGS {
        std::fs::write(
            dir.path().join(format!("scale{i}.rhai")),
            format!("#{{ y{i}: batch.tags.x{i} * 0.5 + 1.0 }}\n"),
        )
        .unwrap();
        yaml.push_str(&format!("- script: scale{i}.rhai\n  outputs: [y{i}]\n"));
    }
    let mut plugins = PluginSet::build(
        "cnc",
        &plugins(&yaml),
        &PluginOptions {
            base_dir: dir.path().to_path_buf(),
            reload_check: Duration::from_secs(1),
        },
    )
    .unwrap();
    let names: Vec<String> = (0..TAGS).map(|i| format!("x{i}")).collect();
    let mut input = SampleBatch {
        line: "machining".into(),
        device: "mill-1".into(),
        adapter_id: "adapter-0".into(),
        sequence: 0,
        samples: names
            .iter()
            .map(|n| Sample::good(n.as_str(), Value::F64(0.0), 0))
            .collect(),
    };
    let mut out = Derived::default();
    let started = Instant::now();
    for b in 0..batches {
        input.sequence = b as u64;
        for (i, s) in input.samples.iter_mut().enumerate() {
            s.value = Some(Value::F64((b * TAGS + i) as f64));
            s.timestamp_ns = b as i64;
        }
        plugins.apply_into(&input, &mut out);
        assert_eq!(out.samples.len(), TAGS);
        for (i, s) in out.samples.iter().enumerate() {
            let x = (b * TAGS + i) as f64;
            assert_eq!(
                s.value,
                Some(Value::F64(x * 0.5 + 1.0)),
                "batch {b} tag {i}"
            );
        }
    }
    let elapsed = started.elapsed();
    let samples = batches * TAGS;
    println!(
        "{samples} samples, {TAGS} per batch, one script per tag: {:.0} samples/s ({:.2} µs per script run) on one core of {}",
        samples as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / samples as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    assert!(plugins.stats().iter().all(|s| s.failures_total() == 0));
}

#[test]
fn the_deployed_example_is_valid_and_runs() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/plugins");
    let text = std::fs::read_to_string(folder.join("cnc.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let list = doc["device_types"]["cnc-mill"]["plugins"].clone();
    let config: Vec<PluginConfig> = serde_yaml::from_value(list).unwrap();
    assert_eq!(validate_plugins(&config, "plugins"), vec![]);
    let mut plugins = PluginSet::build(
        "cnc-mill",
        &config,
        &PluginOptions {
            base_dir: folder,
            reload_check: Duration::from_secs(1),
        },
    )
    .unwrap();
    let reading = |seq: u64, running: bool, parts: u64, good: u64| {
        batch(
            "mill-1",
            seq,
            1 + (seq as i64 - 1) * 60 * S,
            vec![
                ("spindle_temp_c", Some(Value::F64(50.0))),
                ("spindle_load_raw", Some(Value::U64(4095))),
                ("spindle_running", Some(Value::Bool(running))),
                ("parts_total", Some(Value::U64(parts))),
                ("good_parts", Some(Value::U64(good))),
            ],
        )
    };
    let d = plugins.apply(&reading(1, false, 100, 100));
    assert_eq!(float(&d, "spindle_temp_f"), 122.0);
    assert!(close(float(&d, "spindle_load_pct"), 100.0));
    assert_eq!(value(&d, "spindle_starts"), Value::I64(0));
    assert_eq!(float(&d, "spindle_hours"), 0.0);
    assert_eq!(d.failures, vec![]);
    let d = plugins.apply(&reading(2, true, 160, 158));
    assert_eq!(value(&d, "spindle_starts"), Value::I64(1));
    assert_eq!(value(&d, "parts"), Value::U64(60));
    assert!(close(float(&d, "parts_per_min"), 60.0));
    assert!(close(float(&d, "efficiency"), 0.5));
    assert!(close(float(&d, "availability"), 0.0));
    assert!(bad_detail(&d, "performance").contains("no run time"));
    let kinds: Vec<&str> = d.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["spindle_start", "low_efficiency"]);
    assert_eq!(d.failures, vec![]);
}

#[test]
fn an_invalid_entry_is_refused_when_building() {
    let config: Vec<PluginConfig> = serde_yaml::from_str(
        "- builtin: oee\n  units_produced: u\n  good_count: g\n  running: r\n  target_rate: 0\n",
    )
    .unwrap();
    let e = PluginSet::build("cnc", &config, &options(&fixtures())).unwrap_err();
    assert_eq!(e.kind(), "config");
    assert!(e.to_string().contains("plugins[0].target_rate"), "{e}");
}

#[test]
fn extreme_timestamps_from_a_device_do_not_break_the_built_ins() {
    let mut plugins = set("- builtin: counter\n  input: n\n  delta: dn\n  rate: rn\n\
         - builtin: runtime\n  input: on\n  output: hours\n\
         - builtin: oee\n  units_produced: n\n  good_count: n\n  running: on\n  target_rate: 1\n");
    for (seq, ts) in [(1, i64::MIN), (2, i64::MAX), (3, 0)] {
        let d = plugins.apply(&batch(
            "odd",
            seq,
            ts,
            vec![
                ("n", Some(Value::U64(seq))),
                ("on", Some(Value::Bool(true))),
            ],
        ));
        for s in &d.samples {
            if let Some(Value::F64(v)) = s.value {
                assert!(v.is_finite(), "{s:?}");
            }
        }
        if seq == 3 {
            // The clock went back: the count goes on, a rate over negative time does not.
            assert_eq!(value(&d, "dn"), Value::U64(1));
            assert!(bad_detail(&d, "rn").contains("clock went back"));
        }
    }
}

/// Every kind of plugin, one after the other, on a device that gives all their inputs.
const EVERY_KIND: &str = "- script: fahrenheit.rhai\n  outputs: [temp_f, batches, version]\n- builtin: counter\n  input: units\n  delta: units_delta\n  rate: units_per_min\n  rate_per: 1min\n- builtin: runtime\n  input: running\n  output: run_hours\n- builtin: oee\n  units_produced: units\n  good_count: good\n  running: running\n  target_rate: 120\n  window: 10min\n";

fn every_input(seq: u64) -> SampleBatch {
    batch(
        "cell-1",
        seq,
        seq as i64 * 7 * S,
        vec![
            ("temp_c", Some(Value::F64(20.0 + seq as f64))),
            ("units", Some(Value::U64(1000 + seq * seq))),
            ("good", Some(Value::U64(990 + seq * seq - seq / 3))),
            ("running", Some(Value::Bool(!seq.is_multiple_of(4)))),
        ],
    )
}

#[test]
fn a_saved_state_resumes_every_plugin_exactly_where_it_was() {
    let mut running = set(EVERY_KIND);
    for seq in 1..=20 {
        running.apply(&every_input(seq));
    }
    let saved = running.save_state("cell-1").expect("cell-1 has state");
    assert_eq!(set(EVERY_KIND).save_state("cell-1"), None, "no batch yet");
    // A restarted processor: a new set, resumed from the save, given the batches after it.
    let mut resumed = set(EVERY_KIND);
    assert_eq!(
        resumed.restore_state("cell-1", &saved),
        Vec::<String>::new()
    );
    let mut fresh = set(EVERY_KIND);
    let mut differs_from_fresh = false;
    for seq in 21..=40 {
        let expected = running.apply(&every_input(seq));
        let got = resumed.apply(&every_input(seq));
        assert!(!expected.samples.is_empty());
        assert_eq!(got.samples, expected.samples, "batch {seq}");
        assert_eq!(got.events, expected.events, "batch {seq}");
        differs_from_fresh |= fresh.apply(&every_input(seq)).samples != expected.samples;
    }
    assert!(
        differs_from_fresh,
        "the state carries something a fresh start does not have"
    );
    assert_eq!(resumed.save_state("cell-1"), running.save_state("cell-1"));
}

#[test]
fn a_save_that_does_not_fit_the_plugins_starts_them_fresh_and_says_which() {
    let mut running = set(EVERY_KIND);
    running.apply(&every_input(1));
    let saved = running.save_state("cell-1").expect("cell-1 has state");
    // The counter's and the runtime's states swapped: each refuses the other's.
    let mut swapped: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&saved).unwrap();
    let counter = swapped.remove("counter units").unwrap();
    let runtime = swapped.remove("runtime running").unwrap();
    swapped.insert("counter units".into(), runtime);
    swapped.insert("runtime running".into(), counter);
    swapped.remove("oee units");
    let mut resumed = set(EVERY_KIND);
    let problems = resumed.restore_state("cell-1", &serde_json::to_string(&swapped).unwrap());
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("counter units"), "{problems:?}");
    assert!(problems[1].contains("runtime running"), "{problems:?}");
    assert!(
        problems[2].contains("oee units") && problems[2].contains("no saved state"),
        "{problems:?}"
    );
    // The script's state was fine: it counts on from 1; the counter starts a new baseline.
    let d = resumed.apply(&every_input(2));
    assert_eq!(value(&d, "batches"), Value::I64(2));
    assert!(d.sample("units_delta").is_none(), "{:#?}", d.samples);
    // Not JSON at all: one problem, every plugin fresh.
    let mut garbled = set(EVERY_KIND);
    assert_eq!(garbled.restore_state("cell-1", "{not json").len(), 1);
    let d = garbled.apply(&every_input(2));
    assert_eq!(value(&d, "batches"), Value::I64(1));
}

#[test]
fn a_state_too_big_to_save_is_left_out_and_the_rest_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hoard.rhai"),
        "let n = state.n ?? 0;\nlet m = state.m ?? #{};\nfor i in 0..500 { m[`key-${n * 500 + i}-0123456789abcdef0123456789abcdef0123456789`] = 1.0 / 3.0; }\nstate.m = m;\nstate.n = n + 1;\n#{ kept: m.len() }\n",
    )
    .unwrap();
    let config = plugins(
        "- script: hoard.rhai\n  outputs: [kept]\n- builtin: counter\n  input: units\n  delta: units_delta\n",
    );
    let mut plugins = PluginSet::build("cnc", &config, &options(dir.path())).unwrap();
    let mut seq = 0;
    while plugins
        .save_state("cell-1")
        .is_none_or(|s| s.contains("hoard"))
    {
        seq += 1;
        assert!(seq < 1_000, "the script's state never got too big");
        let d = plugins.apply(&every_input(seq));
        assert_eq!(d.failures, vec![], "batch {seq}");
    }
    let saved = plugins.save_state("cell-1").unwrap();
    assert!(saved.len() <= fieldline_processor::plugin_host::STATE_MAX_BYTES);
    assert!(saved.contains("counter units"), "{saved}");
}
