//! `fieldline-bench processor`: samples per second through the processor's per-batch work on
//! one core, with one script plugin and three alarms per tag.
//!
//! Each batch goes through what the processor does between receiving an MQTT message and
//! handing it to storage: protobuf decoding, the line engine (plugins deriving their values
//! into the batch, alarms, rules) and the latest-value store. Network I/O (MQTT, the storage
//! stream) is left out: it is measured by the adapter and storage benchmarks. The same
//! batches are run in stages (decode and latest only; plus alarms; plus plugins) so the
//! difference between stages shows where the time goes.

use std::time::{Duration, Instant};

use fieldline_core::{Sample, SampleBatch, Value, config::LineConfig};
use fieldline_processor::{engine::Engine, latest::Latest};
use fieldline_proto::v1;
use prost::Message;

#[derive(clap::Args)]
pub struct ProcessorArgs {
    /// Devices of the line.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Tags per device; each has a script plugin and three alarms.
    #[arg(long, default_value_t = 50)]
    tags: usize,
    /// Seconds each stage runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Base,
    Alarms,
    Full,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Base => "decode + latest values",
            Stage::Alarms => "+ 3 alarms per tag",
            Stage::Full => "+ 1 script plugin per tag",
        }
    }
}

fn config(args: &ProcessorArgs, dir: &std::path::Path, stage: Stage) -> anyhow::Result<LineConfig> {
    let mut yaml = String::from("line: bench\ndevices:\n");
    for d in 0..args.devices {
        yaml.push_str(&format!(
            "  - name: m{d}\n    type: machine\n    protocol: modbus-tcp\n    endpoint: \"127.0.0.1:{}\"\n    tags:\n",
            10000 + d
        ));
        for t in 0..args.tags {
            yaml.push_str(&format!(
                "      - {{ name: t{t}, address: \"holding:{}\", type: f64 }}\n",
                t * 4
            ));
        }
    }
    yaml.push_str("device_types:\n  machine:\n");
    if stage != Stage::Base {
        yaml.push_str("    alarms:\n");
        for t in 0..args.tags {
            yaml.push_str(&format!(
                "      - {{ name: t{t}-hi, tag: t{t}, kind: high, limit: 90, deadband: 1 }}\n      - {{ name: t{t}-lo, tag: t{t}, kind: low, limit: 10, deadband: 1 }}\n      - {{ name: t{t}-roc, tag: t{t}, kind: rate_of_change, limit: 1000, deadband: 10 }}\n"
            ));
        }
    }
    if stage == Stage::Full {
        yaml.push_str("    plugins:\n");
        for t in 0..args.tags {
            let script = format!("t{t}.rhai");
            std::fs::write(
                dir.join(&script),
                format!("#{{ t{t}_f: batch.tags.t{t} * 1.8 + 32.0 }}\n"),
            )?;
            yaml.push_str(&format!(
                "      - {{ script: {script}, outputs: [t{t}_f] }}\n"
            ));
        }
    } else {
        yaml.push_str("    rules: []\n");
    }
    let mut config = LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.base_dir = Some(dir.to_path_buf());
    Ok(config)
}

/// Encoded batches: every device, values wandering through the alarm limits now and then.
fn batches(args: &ProcessorArgs, rounds: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(rounds * args.devices);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut values = vec![50.0f64; args.devices * args.tags];
    for round in 0..rounds {
        for d in 0..args.devices {
            let ts = 1_700_000_000_000_000_000 + (round as i64) * 100_000_000;
            let samples = (0..args.tags)
                .map(|t| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let step = ((seed % 401) as f64 - 200.0) / 100.0;
                    let v = &mut values[d * args.tags + t];
                    *v = (*v + step).clamp(0.0, 100.0);
                    Sample::good(format!("t{t}"), Value::F64(*v), ts)
                })
                .collect();
            let batch = SampleBatch {
                line: "bench".into(),
                device: format!("m{d}"),
                adapter_id: "bench".into(),
                sequence: round as u64 + 1,
                samples,
            };
            out.push(v1::SampleBatch::from(batch).encode_to_vec());
        }
    }
    out
}

struct Result {
    stage: Stage,
    samples_per_s: f64,
    ns_per_sample: f64,
    alarm_events: usize,
}

fn run_stage(args: &ProcessorArgs, stage: Stage, encoded: &[Vec<u8>]) -> anyhow::Result<Result> {
    let dir = tempfile::tempdir()?;
    let config = config(args, dir.path(), stage)?;
    let mut engine = Engine::new(&config)?;
    let latest = Latest::default();
    let budget = Duration::from_secs(args.seconds);
    let started = Instant::now();
    let cpu_start = cpu_now();
    let (mut samples, mut events, mut sequence_base) = (0usize, 0usize, 0u64);
    'outer: loop {
        for bytes in encoded {
            let mut batch = v1::SampleBatch::decode(bytes.as_slice())?;
            // Later passes continue the sequence and the clock, so no batch looks like a
            // redelivery and no sample like an old one.
            batch.sequence += sequence_base;
            let shift = i64::try_from(sequence_base).unwrap_or(0) * 100_000_000;
            for s in &mut batch.samples {
                s.timestamp_ns += shift;
            }
            samples += batch.samples.len();
            // As the processor does: check the batch once, then hand both forms on.
            let checked = SampleBatch::try_from(batch.clone())?;
            let effects =
                engine.process(&mut batch, checked, |_| None, fieldline_runtime::now_ns());
            events += effects.alarm_events.len();
            latest.apply(&batch);
            if started.elapsed() >= budget {
                break 'outer;
            }
        }
        sequence_base += (encoded.len() / args.devices.max(1)) as u64;
    }
    let cpu = cpu_now() - cpu_start;
    Ok(Result {
        stage,
        samples_per_s: samples as f64 / cpu,
        ns_per_sample: cpu * 1e9 / samples as f64,
        alarm_events: events,
    })
}

/// CPU seconds of this thread.
fn cpu_now() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1.to_string();
            let fields: Vec<f64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            Some((fields.get(11)? + fields.get(12)?) / 100.0)
        })
        .unwrap_or(0.0)
}

pub fn run(args: ProcessorArgs) -> anyhow::Result<()> {
    let encoded = batches(&args, 200);
    println!(
        "Processor: {} devices × {} tags, one thread, {} s per stage (per-batch work: decode, plugins, alarms, rules, latest values)\n",
        args.devices, args.tags, args.seconds
    );
    println!(
        "{:<34} {:>14} {:>14} {:>14}",
        "stage", "samples/s", "ns per sample", "alarm events"
    );
    let mut previous: Option<f64> = None;
    let mut full = 0.0;
    for stage in [Stage::Base, Stage::Alarms, Stage::Full] {
        let r = run_stage(&args, stage, &encoded)?;
        println!(
            "{:<34} {:>14.0} {:>14.0} {:>14}",
            r.stage.label(),
            r.samples_per_s,
            r.ns_per_sample,
            r.alarm_events
        );
        if let Some(p) = previous {
            println!(
                "{:<34} {:>29.0}",
                "  (this stage's own share, ns)",
                r.ns_per_sample - p
            );
        }
        previous = Some(r.ns_per_sample);
        full = r.samples_per_s;
    }
    println!(
        "\nTarget (at least 200000 samples/s per core with 3 alarms and 1 script plugin per tag): {} ({full:.0} samples/s)",
        if full >= 200_000.0 { "met" } else { "NOT met" }
    );
    Ok(())
}
