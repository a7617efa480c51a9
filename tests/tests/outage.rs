//! Storage down while the line keeps producing: the processor holds every batch unacknowledged
//! (the broker and the adapter's outbox keep them), and once storage is back every batch the
//! adapter published is stored exactly once. Real Mosquitto; storage into SQLite so each sample is a row.

use std::time::Duration;

use fieldline_core::config::LineConfig;
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use prometheus_client::registry::Registry;

fn metric(registry: &Registry, name: &str) -> Option<u64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_duplicated_while_storage_is_down() -> anyhow::Result<()> {
    fieldline_runtime::telemetry::init();
    kit::require_mqtt()?;
    let dir = tempfile::tempdir()?;
    let line = kit::unique("outage");
    let storage_addr = kit::free_addr()?;
    let sim_state = fieldline_sim_state();
    let device_stop = CancellationToken::new();
    let (sim, _server) =
        fieldline_sim::serve_modbus_tcp("127.0.0.1:0".parse()?, sim_state, device_stop.clone())
            .await?;
    let yaml = format!(
        "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nadapter: {{ grpc_listen: \"127.0.0.1:0\", state_dir: \"{state}\" }}\nprocessor: {{ grpc_listen: \"127.0.0.1:0\", storage_url: \"http://{storage_addr}\" }}\nstorage:\n  grpc_listen: \"{storage_addr}\"\n  sql: {{ url: \"sqlite://{db}\" }}\ndevices:\n  - {{ name: tank, type: t, protocol: modbus-tcp, endpoint: \"{sim}\", poll_interval: 50ms, tags: [ {{ name: temperature, address: \"holding:0\", type: f32 }} ] }}\n",
        mqtt = kit::MQTT,
        state = dir.path().join("state").display(),
        db = dir.path().join("s.db").display(),
    );
    let config = LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;

    let stop = CancellationToken::new();
    let mut registry = Registry::default();
    // Storage is up when the processor starts: it gives it the state to resume from.
    let storage_stop = CancellationToken::new();
    let storage = fieldline_storage::start(
        &config,
        &Health::default(),
        &mut Registry::default(),
        storage_stop.clone(),
    )
    .await?;
    assert_eq!(storage.grpc_addr, storage_addr);
    let processor =
        fieldline_processor::start(&config, &Health::default(), &mut registry, stop.clone())
            .await?;
    let adapter_stop = CancellationToken::new();
    let adapter = fieldline_adapter::start(
        &config,
        &Health::default(),
        &mut registry,
        adapter_stop.clone(),
    )
    .await?;
    kit::wait_for(Duration::from_secs(10), "batches stored", || async {
        metric(&registry, "fieldline_processor_batches_stored_total ").filter(|n| *n >= 5)
    })
    .await?;

    // Storage goes down: batches pile up unacknowledged, nothing more is stored.
    storage_stop.cancel();
    storage.wait().await;
    let stored_before = metric(&registry, "fieldline_processor_batches_stored_total ");
    let published_before =
        metric(&registry, "fieldline_adapter_batches_published_total ").unwrap_or(0);
    kit::wait_for(
        Duration::from_secs(10),
        "30 more batches published",
        || async {
            metric(&registry, "fieldline_adapter_batches_published_total ")
                .filter(|n| *n >= published_before + 30)
        },
    )
    .await?;
    assert_eq!(
        metric(&registry, "fieldline_processor_batches_stored_total "),
        stored_before
    );

    // Storage comes back; then the line stops producing (flushing what it holds).
    let storage = fieldline_storage::start(
        &config,
        &Health::default(),
        &mut Registry::default(),
        stop.clone(),
    )
    .await?;
    adapter_stop.cancel();
    adapter.wait().await;
    let published = metric(&registry, "fieldline_adapter_batches_published_total ").unwrap_or(0);

    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=ro",
        dir.path().join("s.db").display()
    ))
    .await?;
    let stored = kit::wait_for(
        Duration::from_secs(30),
        "every published batch in storage",
        || async {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM samples WHERE line = ?")
                .bind(&line)
                .fetch_one(&pool)
                .await
                .ok()?;
            (u64::try_from(n).ok()? >= published).then_some(n)
        },
    )
    .await?;
    // One sample per batch, one row per sample: equal counts mean nothing lost, nothing twice.
    assert_eq!(
        u64::try_from(stored)?,
        published,
        "stored rows must equal published batches"
    );
    let (distinct,): (i64,) =
        sqlx::query_as("SELECT COUNT(DISTINCT ts_ns) FROM samples WHERE line = ?")
            .bind(&line)
            .fetch_one(&pool)
            .await?;
    assert_eq!(distinct, stored);
    pool.close().await;

    stop.cancel();
    processor.wait().await;
    storage.wait().await;
    device_stop.cancel();
    Ok(())
}

fn fieldline_sim_state() -> fieldline_sim::SimState {
    let state = fieldline_sim::SimState::new();
    fieldline_sim::tank::init(&state);
    state
}
