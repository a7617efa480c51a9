//! StorageService.Ingest: batches in, one ack per batch once every sink has it.
//!
//! Batches of one stream are stored in order, grouped into one backend write per sink: a
//! group closes at `storage.batch.max_points` samples or `max_delay` after its first batch. A transient sink failure is retried with
//! backoff and delays the ack (the sender keeps the batch meanwhile); samples a sink refuses
//! for good are counted, logged and acknowledged so they never block the stream.

use std::{pin::Pin, sync::Arc, time::Duration};

use fieldline_core::{SampleBatch, config::BatchConfig};
use fieldline_proto::v1::{self, storage_service_server::StorageService};
use fieldline_runtime::{CancellationToken, backoff::Backoff};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    Backends,
    buffer::Buffer,
    history::{HistoryError, HistoryQuery, HistorySource},
    metrics::StorageMetrics,
    sinks::{Disposition, Rejection, Sink, SinkError, WriteReport},
};

pub struct StorageApi {
    pub backends: Backends,
    pub metrics: StorageMetrics,
    pub stop: CancellationToken,
    /// The write-ahead buffer, when configured.
    pub buffer: Option<Arc<Buffer>>,
    /// How received batches are grouped into backend writes.
    pub batching: BatchConfig,
    /// What answers history queries, if anything configured can.
    pub history: Option<Arc<HistorySource>>,
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
        let (requests_tx, mut requests) = mpsc::channel::<v1::IngestRequest>(1024);
        let (tx, rx) = mpsc::channel(1024);
        let stop = self.stop.clone();
        // The reader keeps taking requests while a group is being written.
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = stop.cancelled() => break,
                };
                match message {
                    Ok(Some(r)) => {
                        if requests_tx.send(r).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ingest stream ended by the sender");
                        break;
                    }
                }
            }
        });
        let backends = self.backends.clone();
        let metrics = self.metrics.clone();
        // A stream whose sender went away stops its writer: the sender sends the same batches
        // again on its next stream, and two writers must not race to store them.
        let stop = self.stop.child_token();
        {
            let (tx, gone) = (tx.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tx.closed() => {
                        tracing::debug!("ingest stream gone; its writer stops");
                        gone.cancel();
                    }
                    _ = gone.cancelled() => {}
                }
            });
        }
        let buffer = self.buffer.clone();
        let batching = self.batching;
        tokio::spawn(async move {
            let _done = stop.clone().drop_guard();
            loop {
                let first = tokio::select! {
                    r = requests.recv() => r,
                    _ = stop.cancelled() => None,
                };
                let Some(first) = first else { break };
                let mut points = points_of(&first);
                let mut group = vec![first];
                let deadline = tokio::time::Instant::now() + batching.max_delay;
                while points < batching.max_points {
                    tokio::select! {
                        biased;
                        r = requests.recv() => match r {
                            Some(r) => {
                                points += points_of(&r);
                                group.push(r);
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                        _ = stop.cancelled() => break,
                    }
                }
                metrics.group_points.observe(points as f64);
                let Some(acks) = store(&backends, &metrics, buffer.as_deref(), group, &stop).await
                else {
                    break;
                };
                for ack in acks {
                    if tx.send(Ok(ack)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn query_history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        let query = HistoryQuery::try_from(request.into_inner())?;
        let Some(history) = &self.history else {
            return Err(HistoryError::NoBackend.into());
        };
        let started = std::time::Instant::now();
        let answer = history.query(&query).await;
        // A wrong request is the caller's error, not a failure of storage.
        if let Err(error) = &answer
            && !matches!(error, HistoryError::Invalid(_))
        {
            self.metrics.error("history", error.kind());
        }
        tracing::debug!(device = %query.device, tag = %query.tag, aggregate = ?query.aggregate, took = ?started.elapsed(), ok = answer.is_ok(), "history query");
        Ok(Response::new(answer?.into()))
    }
}

fn points_of(request: &v1::IngestRequest) -> usize {
    request.batch.as_ref().map_or(0, |b| b.samples.len())
}

fn count_batches(metrics: &StorageMetrics, result: &'static str, n: usize) {
    metrics
        .batches
        .get_or_create(&vec![("result", result.into())])
        .inc_by(n as u64);
}

/// Stores a group of requests in every sink with one write per sink, and answers each;
/// `None` when stopped before they were stored (not acked, so the sender will deliver them
/// again).
pub async fn store(
    backends: &Backends,
    metrics: &StorageMetrics,
    buffer: Option<&Buffer>,
    requests: Vec<v1::IngestRequest>,
    stop: &CancellationToken,
) -> Option<Vec<v1::IngestAck>> {
    let mut acks = Vec::with_capacity(requests.len());
    let mut ids = Vec::with_capacity(requests.len());
    let mut batches = Vec::with_capacity(requests.len());
    for request in requests {
        let request_id = request.request_id;
        let Some(wire) = request.batch else {
            count_batches(metrics, "invalid", 1);
            acks.push(v1::IngestAck {
                request_id,
                stored: false,
                rejected_samples: 0,
                detail: "request carries no batch".into(),
            });
            continue;
        };
        let count = wire.samples.len();
        match SampleBatch::try_from(wire) {
            Ok(batch) => {
                ids.push(request_id);
                batches.push(batch);
            }
            Err(e) => {
                count_batches(metrics, "invalid", 1);
                tracing::warn!(error = %e, "refusing an invalid batch");
                acks.push(v1::IngestAck {
                    request_id,
                    stored: false,
                    rejected_samples: count as u32,
                    detail: e.to_string(),
                });
            }
        }
    }
    if batches.is_empty() {
        return Some(acks);
    }
    let outcome = match buffer {
        Some(buffer) => {
            let direct = match backends.get() {
                Some(sinks) if buffer.direct() => write_once(sinks, metrics, &batches).await,
                _ => None,
            };
            match direct {
                Some(outcome) => outcome,
                None => {
                    buffer.backend_down();
                    // Encoded only now: a direct write never pays for it.
                    let encoded = batches
                        .iter()
                        .map(|b| prost::Message::encode_to_vec(&v1::SampleBatch::from(b.clone())))
                        .collect();
                    match buffer.append(encoded, stop).await? {
                        Ok(()) => {
                            count_batches(metrics, "buffered", batches.len());
                            acks.extend(ids.into_iter().map(|request_id| v1::IngestAck {
                                request_id,
                                stored: true,
                                rejected_samples: 0,
                                detail: "buffered".into(),
                            }));
                            return Some(acks);
                        }
                        Err(error) => {
                            // The buffer cannot take it (disk failing): hold the batches in
                            // memory until the backends do, as without a buffer.
                            metrics.error("buffer", error.kind());
                            tracing::error!(%error, "write-ahead buffer failed; waiting for the backends instead");
                            let sinks = backends.wait(stop).await?;
                            write_all(sinks, metrics, &batches, stop).await?
                        }
                    }
                }
            }
        }
        None => write_all(backends.wait(stop).await?, metrics, &batches, stop).await?,
    };
    for (index, request_id) in ids.into_iter().enumerate() {
        let rejected = outcome.rejected(index);
        count_batches(
            metrics,
            if rejected == 0 {
                "stored"
            } else {
                "partly_rejected"
            },
            1,
        );
        acks.push(v1::IngestAck {
            request_id,
            stored: true,
            rejected_samples: rejected as u32,
            detail: outcome.detail(index),
        });
    }
    Some(acks)
}

/// What every sink refused of one write.
#[derive(Default)]
struct Outcome {
    reports: Vec<WriteReport>,
}

impl Outcome {
    /// Samples of batch `index` that some sink refused (the most any one sink refused).
    fn rejected(&self, index: usize) -> usize {
        self.reports
            .iter()
            .map(|r| r.rejected_in(index))
            .max()
            .unwrap_or(0)
    }

    fn detail(&self, index: usize) -> String {
        let reasons: Vec<&str> = self
            .reports
            .iter()
            .flat_map(|r| r.rejected.iter())
            .filter(|r| r.batch == index)
            .map(|r| r.reason.as_str())
            .collect();
        reasons.join("; ")
    }
}

/// Writes to every sink, retrying transient failures until they succeed; `None` if stopped.
async fn write_all(
    sinks: &[Sink],
    metrics: &StorageMetrics,
    batches: &[SampleBatch],
    stop: &CancellationToken,
) -> Option<Outcome> {
    let results = futures::future::join_all(
        sinks
            .iter()
            .map(|sink| write_with_retry(sink, metrics, batches, stop)),
    )
    .await;
    let mut outcome = Outcome::default();
    for report in results {
        outcome.reports.push(report?);
    }
    Some(outcome)
}

/// One attempt on every sink; `None` when any failed transiently (the batches are then
/// buffered whole, and sinks that already took them take them again, idempotently).
async fn write_once(
    sinks: &[Sink],
    metrics: &StorageMetrics,
    batches: &[SampleBatch],
) -> Option<Outcome> {
    let results = futures::future::join_all(sinks.iter().map(|sink| async move {
        let started = std::time::Instant::now();
        let result = sink.write(batches).await;
        (sink, started.elapsed(), result)
    }))
    .await;
    let mut outcome = Outcome::default();
    for (sink, took, result) in results {
        match settle(sink, metrics, batches, took, result) {
            Ok(report) => outcome.reports.push(report),
            Err(error) => {
                metrics
                    .retries
                    .get_or_create(&vec![("sink", sink.name().to_string())])
                    .inc();
                tracing::warn!(sink = sink.name(), %error, "backend unavailable; buffering");
                return None;
            }
        }
    }
    Some(outcome)
}

/// Counts and logs a finished write attempt; a transient failure is handed back.
fn settle(
    sink: &Sink,
    metrics: &StorageMetrics,
    batches: &[SampleBatch],
    took: Duration,
    result: Result<WriteReport, SinkError>,
) -> Result<WriteReport, SinkError> {
    let labels = vec![("sink", sink.name().to_string())];
    let total: usize = batches.iter().map(|b| b.samples.len()).sum();
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            metrics.error(sink.name(), error.kind());
            if error.disposition() != Disposition::Permanent {
                return Err(error);
            }
            // The backend refused the write as a whole: every batch in it is refused.
            let detail = error.to_string();
            WriteReport {
                rejected: batches
                    .iter()
                    .enumerate()
                    .map(|(index, b)| Rejection {
                        batch: index,
                        samples: b.samples.len(),
                        reason: detail.clone(),
                    })
                    .collect(),
            }
        }
    };
    metrics
        .write_seconds
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    let rejected = report.rejected_samples().min(total);
    metrics
        .samples_written
        .get_or_create(&labels)
        .inc_by((total - rejected) as u64);
    if rejected > 0 {
        metrics
            .samples_rejected
            .get_or_create(&labels)
            .inc_by(rejected as u64);
        for r in &report.rejected {
            if metrics.first_time(sink.name(), &r.reason) {
                let batch = batches.get(r.batch);
                tracing::warn!(
                    sink = sink.name(),
                    device = batch.map_or("", |b| b.device.as_str()),
                    samples = r.samples,
                    reason = %r.reason,
                    "samples refused for good (logged once per reason; counted in samples_rejected_total)"
                );
            }
        }
    }
    Ok(report)
}

/// Writes `batches` to one sink, retrying transient failures with capped, jittered
/// exponential backoff until they succeed; `None` if stopped first.
pub async fn write_with_retry(
    sink: &Sink,
    metrics: &StorageMetrics,
    batches: &[SampleBatch],
    stop: &CancellationToken,
) -> Option<WriteReport> {
    let labels = vec![("sink", sink.name().to_string())];
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let started = std::time::Instant::now();
        let result = sink.write(batches).await;
        match settle(sink, metrics, batches, started.elapsed(), result) {
            Ok(report) => return Some(report),
            Err(error) => {
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
