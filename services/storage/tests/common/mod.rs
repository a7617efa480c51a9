//! What the storage service's tests share: a counter stream fed over Ingest, as a processor
//! feeds it, and the metrics page.

use std::time::Duration;

use fieldline_core::{Sample, SampleBatch, Value};
use fieldline_proto::v1::{self, storage_service_client::StorageServiceClient};
use fieldline_testkit as kit;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Batch `i` of the stream: device `press`, tag `count` = i, at `base_ns + i` ms.
pub fn batch(line: &str, base_ns: i64, i: i64) -> v1::IngestRequest {
    let batch = SampleBatch {
        line: line.into(),
        device: "press".into(),
        adapter_id: "test".into(),
        sequence: u64::try_from(i + 1).unwrap_or(0),
        samples: vec![Sample::good(
            "count",
            Value::I64(i),
            base_ns + i * 1_000_000,
        )],
    };
    v1::IngestRequest {
        request_id: u64::try_from(i).unwrap_or(0),
        batch: Some(batch.into()),
        records: None,
    }
}

/// Sends batches `range` on one Ingest stream, waits until every one is acknowledged as
/// stored, and returns the acknowledgements.
pub async fn send(
    storage: &str,
    line: &str,
    base_ns: i64,
    range: std::ops::Range<i64>,
) -> anyhow::Result<Vec<v1::IngestAck>> {
    let mut client = StorageServiceClient::connect(storage.to_string()).await?;
    let (tx, rx) = mpsc::channel(64);
    let mut acks = client.ingest(ReceiverStream::new(rx)).await?.into_inner();
    let expected = range.clone().count();
    let line = line.to_string();
    tokio::spawn(async move {
        for i in range {
            if tx.send(batch(&line, base_ns, i)).await.is_err() {
                return;
            }
        }
    });
    let mut stored = Vec::with_capacity(expected);
    while stored.len() < expected {
        let ack = tokio::time::timeout(Duration::from_secs(60), acks.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("ack stream ended"))?;
        anyhow::ensure!(
            ack.stored,
            "batch {} refused: {}",
            ack.request_id,
            ack.detail
        );
        stored.push(ack);
    }
    Ok(stored)
}

/// The service's Prometheus page; empty while it does not answer.
pub async fn metrics(http: std::net::SocketAddr) -> String {
    kit::http_get(&format!("http://{http}/metrics"))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}
