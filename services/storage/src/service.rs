//! StorageService.Ingest: batches in, one ack per batch once every sink has it.
//!
//! Batches of one stream are stored in order. A transient sink failure is retried with
//! backoff and delays the ack (the sender keeps the batch meanwhile); samples a sink refuses
//! for good are counted, logged and acknowledged so they never block the stream.

use std::{pin::Pin, sync::Arc, time::Duration};

use fieldline_core::SampleBatch;
use fieldline_proto::v1::{self, storage_service_server::StorageService};
use fieldline_runtime::{CancellationToken, backoff::Backoff};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    buffer::Buffer,
    metrics::StorageMetrics,
    sinks::{Sink, SinkError},
};

pub struct StorageApi {
    pub sinks: Arc<Vec<Sink>>,
    pub metrics: StorageMetrics,
    pub stop: CancellationToken,
    /// The write-ahead buffer, when configured.
    pub buffer: Option<Arc<Buffer>>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<v1::IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl StorageService for StorageApi {
    type IngestStream = AckStream;

    async fn ingest(
        &self,
        request: Request<Streaming<v1::IngestRequest>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let sinks = self.sinks.clone();
        let metrics = self.metrics.clone();
        let stop = self.stop.clone();
        let buffer = self.buffer.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = stop.cancelled() => break,
                };
                let request = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ingest stream ended by the sender");
                        break;
                    }
                };
                let Some(ack) = store(&sinks, &metrics, buffer.as_deref(), request, &stop).await
                else {
                    break;
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Stores one batch in every sink; `None` when stopped before it was stored (not acked, so
/// the sender will deliver it again).
pub async fn store(
    sinks: &[Sink],
    metrics: &StorageMetrics,
    buffer: Option<&Buffer>,
    request: v1::IngestRequest,
    stop: &CancellationToken,
) -> Option<v1::IngestAck> {
    let request_id = request.request_id;
    let Some(wire) = request.batch else {
        metrics
            .batches
            .get_or_create(&vec![("result", "invalid".into())])
            .inc();
        return Some(v1::IngestAck {
            request_id,
            stored: false,
            rejected_samples: 0,
            detail: "request carries no batch".into(),
        });
    };
    let count = wire.samples.len();
    // With a buffer, the encoded batch is what gets buffered if the backends cannot take it.
    let encoded = buffer.map(|_| prost::Message::encode_to_vec(&wire));
    let batch = match SampleBatch::try_from(wire) {
        Ok(b) => b,
        Err(e) => {
            metrics
                .batches
                .get_or_create(&vec![("result", "invalid".into())])
                .inc();
            tracing::warn!(error = %e, "refusing an invalid batch");
            return Some(v1::IngestAck {
                request_id,
                stored: false,
                rejected_samples: count as u32,
                detail: e.to_string(),
            });
        }
    };
    let (rejected, details) = match (buffer, encoded) {
        (Some(buffer), Some(encoded)) => {
            let direct = if buffer.direct() {
                write_once(sinks, metrics, &batch).await
            } else {
                None
            };
            match direct {
                Some(outcome) => outcome,
                None => {
                    buffer.backend_down();
                    match buffer.append(encoded, stop).await? {
                        Ok(()) => {
                            metrics
                                .batches
                                .get_or_create(&vec![("result", "buffered".into())])
                                .inc();
                            return Some(v1::IngestAck {
                                request_id,
                                stored: true,
                                rejected_samples: 0,
                                detail: "buffered".into(),
                            });
                        }
                        Err(error) => {
                            // The buffer cannot take it (disk failing): hold the batch in
                            // memory until the backends do, as without a buffer.
                            tracing::error!(%error, "write-ahead buffer failed; waiting for the backends instead");
                            write_all(sinks, metrics, &batch, stop).await?
                        }
                    }
                }
            }
        }
        _ => write_all(sinks, metrics, &batch, stop).await?,
    };
    metrics
        .batches
        .get_or_create(&vec![(
            "result",
            if rejected == 0 {
                "stored"
            } else {
                "partly_rejected"
            }
            .into(),
        )])
        .inc();
    Some(v1::IngestAck {
        request_id,
        stored: true,
        rejected_samples: rejected as u32,
        detail: details.join("; "),
    })
}

/// Writes to every sink, retrying transient failures until they succeed; `None` if stopped.
async fn write_all(
    sinks: &[Sink],
    metrics: &StorageMetrics,
    batch: &SampleBatch,
    stop: &CancellationToken,
) -> Option<(usize, Vec<String>)> {
    let results = futures::future::join_all(
        sinks
            .iter()
            .map(|sink| write_with_retry(sink, metrics, batch, stop)),
    )
    .await;
    let mut rejected = 0usize;
    let mut details = Vec::new();
    for r in results {
        let (r, d) = r?;
        rejected = rejected.max(r);
        details.extend(d);
    }
    Some((rejected, details))
}

/// One attempt on every sink; `None` when any failed transiently (the batch is then buffered
/// whole, and sinks that already took it take it again, idempotently).
async fn write_once(
    sinks: &[Sink],
    metrics: &StorageMetrics,
    batch: &SampleBatch,
) -> Option<(usize, Vec<String>)> {
    let results = futures::future::join_all(
        sinks
            .iter()
            .map(|sink| async move { (sink, sink.write(batch).await) }),
    )
    .await;
    let mut rejected = 0usize;
    let mut details = Vec::new();
    for (sink, result) in results {
        let labels = vec![("sink", sink.name().to_string())];
        match result {
            Ok(report) => {
                metrics
                    .samples_written
                    .get_or_create(&labels)
                    .inc_by(batch.samples.len().saturating_sub(report.rejected) as u64);
                if report.rejected > 0 {
                    metrics
                        .samples_rejected
                        .get_or_create(&labels)
                        .inc_by(report.rejected as u64);
                    tracing::warn!(sink = sink.name(), device = %batch.device, rejected = report.rejected, detail = %report.detail.join("; "), "samples refused");
                }
                rejected = rejected.max(report.rejected);
                details.extend(report.detail);
            }
            Err(SinkError::Permanent(detail)) => {
                metrics
                    .samples_rejected
                    .get_or_create(&labels)
                    .inc_by(batch.samples.len() as u64);
                tracing::error!(sink = sink.name(), device = %batch.device, %detail, "batch refused");
                rejected = batch.samples.len();
                details.push(detail);
            }
            Err(error) => {
                metrics.retries.get_or_create(&labels).inc();
                tracing::warn!(sink = sink.name(), %error, "backend unavailable; buffering");
                return None;
            }
        }
    }
    Some((rejected, details))
}

pub async fn write_with_retry(
    sink: &Sink,
    metrics: &StorageMetrics,
    batch: &SampleBatch,
    stop: &CancellationToken,
) -> Option<(usize, Vec<String>)> {
    let labels = vec![("sink", sink.name().to_string())];
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let started = std::time::Instant::now();
        match sink.write(batch).await {
            Ok(report) => {
                metrics
                    .write_seconds
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
                let written = batch.samples.len().saturating_sub(report.rejected);
                metrics
                    .samples_written
                    .get_or_create(&labels)
                    .inc_by(written as u64);
                if report.rejected > 0 {
                    metrics
                        .samples_rejected
                        .get_or_create(&labels)
                        .inc_by(report.rejected as u64);
                    tracing::warn!(sink = sink.name(), device = %batch.device, sequence = batch.sequence, rejected = report.rejected, detail = %report.detail.join("; "), "samples refused");
                }
                return Some((report.rejected, report.detail));
            }
            Err(SinkError::Permanent(detail)) => {
                metrics
                    .samples_rejected
                    .get_or_create(&labels)
                    .inc_by(batch.samples.len() as u64);
                tracing::error!(sink = sink.name(), device = %batch.device, sequence = batch.sequence, %detail, "batch refused");
                return Some((batch.samples.len(), vec![detail]));
            }
            Err(error @ (SinkError::Transient(_) | SinkError::Config(_))) => {
                metrics.retries.get_or_create(&labels).inc();
                let delay = backoff.next_delay();
                if backoff.attempts() <= 1 || backoff.attempts().is_power_of_two() {
                    tracing::warn!(sink = sink.name(), %error, attempt = backoff.attempts(), retry_in = ?delay, "write failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    }
}
