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
    buffer::{self, Buffer},
    events::{EventStore, PlantRecords},
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
    /// A SQL database is configured, so plant records can be stored.
    pub sql: bool,
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
        let sql = self.sql;
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
                let Some(acks) =
                    store(&backends, &metrics, buffer.as_deref(), sql, group, &stop).await
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

    async fn record(
        &self,
        request: Request<v1::PlantRecords>,
    ) -> Result<Response<v1::RecordAck>, Status> {
        let records = request.into_inner();
        if is_empty(&records) {
            return Ok(Response::new(v1::RecordAck {
                detail: "nothing to store".into(),
            }));
        }
        if !self.sql {
            return Err(Status::failed_precondition(
                "storage has no SQL database for plant records (storage.sql)",
            ));
        }
        let request = v1::IngestRequest {
            request_id: 0,
            batch: None,
            records: Some(records),
        };
        let acks = store(
            &self.backends,
            &self.metrics,
            self.buffer.as_deref(),
            self.sql,
            vec![request],
            &self.stop,
        )
        .await
        .ok_or_else(|| Status::unavailable("storage is stopping"))?;
        let ack = acks.into_iter().next().unwrap_or_default();
        if !ack.records_refused.is_empty() {
            return Err(Status::invalid_argument(ack.records_refused));
        }
        let detail = if ack.detail.is_empty() {
            "stored".into()
        } else {
            ack.detail
        };
        Ok(Response::new(v1::RecordAck { detail }))
    }

    async fn load_plant_state(
        &self,
        request: Request<v1::PlantStateRequest>,
    ) -> Result<Response<v1::PlantState>, Status> {
        let line = request.into_inner().line;
        if !self.sql {
            return Err(Status::failed_precondition(
                "storage has no SQL database for plant records (storage.sql)",
            ));
        }
        let Some(events) = self.backends.events() else {
            return Err(Status::unavailable("the SQL database is not connected yet"));
        };
        let unavailable = |e: SinkError| Status::unavailable(format!("SQL database: {e}"));
        let states = events.load_alarm_states(&line).await.map_err(unavailable)?;
        let progress = events.load_progress(&line).await.map_err(unavailable)?;
        let mut state = PlantStateBuilder::default();
        for s in &states {
            state.alarm(v1::AlarmStatus::from(s));
        }
        for p in &progress {
            state.progress(v1::DeviceProgress::from(p));
        }
        // Records still on their way to the database are newer than what it holds.
        if let Some(buffer) = &self.buffer {
            let pending = buffer.pending_records().await.map_err(|e| {
                Status::unavailable(format!("cannot read the write-ahead buffer: {e}"))
            })?;
            for records in pending.into_iter().filter(|r| r.line == line) {
                records
                    .alarm_states
                    .into_iter()
                    .for_each(|s| state.alarm(s));
                records.progress.into_iter().for_each(|p| state.progress(p));
            }
        }
        Ok(Response::new(state.build()))
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

/// The newest state of each alarm and the highest mark of each device, from records read in
/// any order.
#[derive(Default)]
struct PlantStateBuilder {
    alarms: std::collections::BTreeMap<String, v1::AlarmStatus>,
    progress: std::collections::BTreeMap<String, v1::DeviceProgress>,
}

impl PlantStateBuilder {
    fn alarm(&mut self, s: v1::AlarmStatus) {
        match self.alarms.get(&s.alarm_id) {
            Some(held) if held.last_seq >= s.last_seq => {}
            _ => {
                self.alarms.insert(s.alarm_id.clone(), s);
            }
        }
    }

    fn progress(&mut self, p: v1::DeviceProgress) {
        match self.progress.get(&p.device) {
            Some(held) if held.stored_seq >= p.stored_seq => {}
            _ => {
                self.progress.insert(p.device.clone(), p);
            }
        }
    }

    fn build(self) -> v1::PlantState {
        v1::PlantState {
            alarm_states: self.alarms.into_values().collect(),
            progress: self.progress.into_values().collect(),
        }
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

/// One request of a group, checked.
struct Taken {
    request_id: u64,
    /// Index of its batch in the group's batches.
    batch: Option<usize>,
    /// Its records, as received (what the buffer keeps) and as rows.
    records: Option<(v1::PlantRecords, PlantRecords)>,
    /// Why its records are not stored, when they are not.
    records_refused: String,
}

/// The rows of a request's records, checked; why not when they can never be stored.
fn checked_records(wire: &v1::PlantRecords, sql: bool) -> Result<PlantRecords, String> {
    if !sql {
        return Err("storage has no SQL database for plant records (storage.sql)".into());
    }
    let rows = PlantRecords::from_wire(wire.clone()).map_err(|e| e.to_string())?;
    rows.check().map_err(|e| e.to_string())?;
    Ok(rows)
}

/// Stores a group of requests (batches in every sink with one write per sink, records in the
/// SQL database), and answers each; `None` when stopped before they were stored (not acked,
/// so the sender will deliver them again). `sql` says whether a SQL database is configured.
pub async fn store(
    backends: &Backends,
    metrics: &StorageMetrics,
    buffer: Option<&Buffer>,
    sql: bool,
    requests: Vec<v1::IngestRequest>,
    stop: &CancellationToken,
) -> Option<Vec<v1::IngestAck>> {
    let mut acks = Vec::with_capacity(requests.len());
    let mut taken = Vec::with_capacity(requests.len());
    let mut batches = Vec::with_capacity(requests.len());
    for request in requests {
        let request_id = request.request_id;
        let mut records_refused = String::new();
        let records = match request.records {
            Some(wire) if !is_empty(&wire) => match checked_records(&wire, sql) {
                Ok(rows) => Some((wire, rows)),
                Err(reason) => {
                    metrics
                        .records
                        .get_or_create(&vec![("result", "refused".into())])
                        .inc();
                    if metrics.first_time("records", &reason) {
                        tracing::warn!(%reason, "plant records refused for good (logged once per reason)");
                    }
                    records_refused = reason;
                    None
                }
            },
            _ => None,
        };
        let batch = match request.batch {
            None if records.is_none() && records_refused.is_empty() => {
                count_batches(metrics, "invalid", 1);
                acks.push(v1::IngestAck {
                    request_id,
                    stored: false,
                    rejected_samples: 0,
                    detail: "request carries neither a batch nor records".into(),
                    records_refused,
                });
                continue;
            }
            None => None,
            Some(wire) => {
                let count = wire.samples.len();
                match SampleBatch::try_from(wire) {
                    Ok(batch) => {
                        batches.push(batch);
                        Some(batches.len() - 1)
                    }
                    Err(e) => {
                        count_batches(metrics, "invalid", 1);
                        tracing::warn!(error = %e, "refusing an invalid batch");
                        acks.push(v1::IngestAck {
                            request_id,
                            stored: false,
                            rejected_samples: count as u32,
                            detail: e.to_string(),
                            records_refused: if records.is_some() {
                                "not stored: the batch they came with is invalid".into()
                            } else {
                                records_refused
                            },
                        });
                        continue;
                    }
                }
            }
        };
        taken.push(Taken {
            request_id,
            batch,
            records,
            records_refused,
        });
    }
    if taken
        .iter()
        .all(|t| t.batch.is_none() && t.records.is_none())
    {
        acks.extend(taken.into_iter().map(|t| v1::IngestAck {
            request_id: t.request_id,
            stored: true,
            rejected_samples: 0,
            detail: String::new(),
            records_refused: t.records_refused,
        }));
        return Some(acks);
    }
    let rows: Vec<&PlantRecords> = taken
        .iter()
        .filter_map(|t| t.records.as_ref().map(|(_, rows)| rows))
        .collect();
    let written = match buffer {
        Some(buffer) => {
            let direct = match backends.get() {
                Some(sinks) if buffer.direct() => {
                    write_once(sinks, backends, metrics, &batches, &rows).await
                }
                _ => None,
            };
            match direct {
                Some(written) => written,
                None => {
                    buffer.backend_down();
                    // Encoded only now: a direct write never pays for it.
                    let encoded = taken
                        .iter()
                        .map(|t| {
                            buffer::entry(
                                t.batch.map(|i| v1::SampleBatch::from(batches[i].clone())),
                                t.records.as_ref().map(|(wire, _)| wire.clone()),
                            )
                        })
                        .collect();
                    match buffer.append(encoded, stop).await? {
                        Ok(()) => {
                            count_batches(metrics, "buffered", batches.len());
                            let records = rows.len() as u64;
                            if records > 0 {
                                metrics
                                    .records
                                    .get_or_create(&vec![("result", "buffered".into())])
                                    .inc_by(records);
                            }
                            acks.extend(taken.into_iter().map(|t| v1::IngestAck {
                                request_id: t.request_id,
                                stored: true,
                                rejected_samples: 0,
                                detail: "buffered".into(),
                                records_refused: t.records_refused,
                            }));
                            return Some(acks);
                        }
                        Err(error) => {
                            // The buffer cannot take it (disk failing): hold the batches in
                            // memory until the backends do, as without a buffer.
                            metrics.error("buffer", error.kind());
                            tracing::error!(%error, "write-ahead buffer failed; waiting for the backends instead");
                            let sinks = backends.wait(stop).await?;
                            write_all(sinks, backends, metrics, &batches, &rows, stop).await?
                        }
                    }
                }
            }
        }
        None => {
            let sinks = backends.wait(stop).await?;
            write_all(sinks, backends, metrics, &batches, &rows, stop).await?
        }
    };
    let Written { outcome, refused } = written;
    let mut refused = refused.into_iter();
    for t in taken {
        let records_refused = match &t.records {
            Some(_) => refused.next().flatten().unwrap_or_default(),
            None => t.records_refused,
        };
        let (rejected, detail) = match t.batch {
            Some(index) => {
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
                (rejected, outcome.detail(index))
            }
            None => (0, String::new()),
        };
        acks.push(v1::IngestAck {
            request_id: t.request_id,
            stored: true,
            rejected_samples: rejected as u32,
            detail,
            records_refused,
        });
    }
    Some(acks)
}

fn is_empty(r: &v1::PlantRecords) -> bool {
    r.alarm_events.is_empty()
        && r.alarm_states.is_empty()
        && r.commands.is_empty()
        && r.progress.is_empty()
}

/// What a write of a group left out.
struct Written {
    outcome: Outcome,
    /// Per request with records, in order: why its records were refused, if they were.
    refused: Vec<Option<String>>,
}

/// Stores every request's records in one transaction; when the database refuses that for
/// good, each request's records alone, so one bad set costs only itself. `Err` on a transient
/// failure.
pub async fn write_records(
    events: &EventStore,
    metrics: &StorageMetrics,
    rows: &[&PlantRecords],
) -> Result<Vec<Option<String>>, SinkError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut all = PlantRecords::default();
    for r in rows {
        all.append((*r).clone());
    }
    let count = |result: &'static str, n: usize| {
        metrics
            .records
            .get_or_create(&vec![("result", result.into())])
            .inc_by(n as u64);
    };
    match events.record(&all).await {
        Ok(()) => {
            count("stored", rows.len());
            return Ok(vec![None; rows.len()]);
        }
        Err(error) if error.disposition() != Disposition::Permanent => {
            metrics.error("records", error.kind());
            return Err(error);
        }
        Err(_) => {}
    }
    let mut refused = Vec::with_capacity(rows.len());
    for r in rows {
        match events.record(r).await {
            Ok(()) => {
                count("stored", 1);
                refused.push(None);
            }
            Err(error) if error.disposition() == Disposition::Permanent => {
                count("refused", 1);
                metrics.error("records", error.kind());
                tracing::warn!(%error, "the database refused plant records for good");
                refused.push(Some(error.to_string()));
            }
            Err(error) => {
                metrics.error("records", error.kind());
                return Err(error);
            }
        }
    }
    Ok(refused)
}

/// [`write_records`] until it works; `None` if stopped first.
pub async fn write_records_with_retry(
    events: &EventStore,
    metrics: &StorageMetrics,
    rows: &[&PlantRecords],
    stop: &CancellationToken,
) -> Option<Vec<Option<String>>> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        match write_records(events, metrics, rows).await {
            Ok(refused) => return Some(refused),
            Err(error) => {
                let delay = backoff.next_delay();
                if backoff.attempts() <= 1 || backoff.attempts().is_power_of_two() {
                    tracing::warn!(%error, attempt = backoff.attempts(), retry_in = ?delay, "cannot store plant records; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    }
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

/// Writes to every sink and the records to the SQL database, retrying transient failures
/// until they succeed; `None` if stopped.
async fn write_all(
    sinks: &[Sink],
    backends: &Backends,
    metrics: &StorageMetrics,
    batches: &[SampleBatch],
    rows: &[&PlantRecords],
    stop: &CancellationToken,
) -> Option<Written> {
    let mut outcome = Outcome::default();
    if !batches.is_empty() {
        let results = futures::future::join_all(
            sinks
                .iter()
                .map(|sink| write_with_retry(sink, metrics, batches, stop)),
        )
        .await;
        for report in results {
            outcome.reports.push(report?);
        }
    }
    let refused = match backends.events() {
        Some(events) => write_records_with_retry(&events, metrics, rows, stop).await?,
        None => vec![Some("storage has no SQL database for plant records".into()); rows.len()],
    };
    Some(Written { outcome, refused })
}

/// One attempt on every sink and the SQL database; `None` when any failed transiently (the
/// group is then buffered whole, and what a backend already took it takes again,
/// idempotently).
async fn write_once(
    sinks: &[Sink],
    backends: &Backends,
    metrics: &StorageMetrics,
    batches: &[SampleBatch],
    rows: &[&PlantRecords],
) -> Option<Written> {
    let mut outcome = Outcome::default();
    if !batches.is_empty() {
        let results = futures::future::join_all(sinks.iter().map(|sink| async move {
            let started = std::time::Instant::now();
            let result = sink.write(batches).await;
            (sink, started.elapsed(), result)
        }))
        .await;
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
    }
    let refused = match backends.events() {
        Some(events) => match write_records(&events, metrics, rows).await {
            Ok(refused) => refused,
            Err(error) => {
                tracing::warn!(%error, "database unavailable for plant records; buffering");
                return None;
            }
        },
        None => vec![Some("storage has no SQL database for plant records".into()); rows.len()],
    };
    Some(Written { outcome, refused })
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
