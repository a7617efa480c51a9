//! `fieldline read` and `fieldline watch`: the MES API from a terminal.

use fieldline_core::{Quality, Value};
use fieldline_proto::v1::{self, plant_service_client::PlantServiceClient};

fn show(s: &v1::TagSample) -> String {
    let Some(sample) = &s.sample else {
        return format!("{}/{}: (empty)", s.line, s.device);
    };
    let value = sample
        .value
        .clone()
        .and_then(|v| Value::try_from(v).ok())
        .map_or_else(|| "-".to_string(), |v| v.to_string());
    let quality = sample
        .quality
        .clone()
        .and_then(|q| Quality::try_from(q).ok())
        .map_or_else(|| "?".to_string(), |q| q.to_string());
    let secs = sample.timestamp_ns.div_euclid(1_000_000_000);
    let nanos = u32::try_from(sample.timestamp_ns.rem_euclid(1_000_000_000)).unwrap_or(0);
    let time =
        std::time::UNIX_EPOCH + std::time::Duration::new(u64::try_from(secs).unwrap_or(0), nanos);
    format!(
        "{}/{}/{} = {value}  [{quality}]  {}",
        s.line,
        s.device,
        sample.tag,
        humantime::format_rfc3339_millis(time)
    )
}

/// Prints the latest value of every matching tag.
pub async fn read(server: String, filter: v1::TagFilter) -> anyhow::Result<()> {
    let mut client = PlantServiceClient::connect(server).await?;
    let latest = client.read_latest(filter).await?.into_inner();
    for s in &latest.samples {
        println!("{}", show(s));
    }
    if latest.samples.is_empty() {
        eprintln!("no samples match");
    }
    Ok(())
}

/// Prints the latest values, then every change, until interrupted.
pub async fn watch(server: String, filter: v1::TagFilter) -> anyhow::Result<()> {
    let mut client = PlantServiceClient::connect(server).await?;
    let mut stream = client.subscribe(filter).await?.into_inner();
    while let Some(s) = stream.message().await? {
        println!("{}", show(&s));
    }
    Ok(())
}
