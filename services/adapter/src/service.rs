//! AdapterService over gRPC: live samples for direct consumers, and writes.

use std::{collections::HashMap, pin::Pin};

use fieldline_core::names::TagPath;
use fieldline_proto::v1::{self, adapter_service_server::AdapterService};
use futures::Stream;
use tokio_stream::{StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

use crate::{drivers::DeviceHandle, publisher::BatchSink};

pub struct AdapterApi {
    pub line: String,
    pub devices: HashMap<String, DeviceHandle>,
    pub sink: BatchSink,
    /// Ends live streams when the adapter stops, so shutdown does not wait on clients.
    pub stop: fieldline_runtime::CancellationToken,
}

type SampleStream = Pin<Box<dyn Stream<Item = Result<v1::SampleBatch, Status>> + Send>>;

#[tonic::async_trait]
impl AdapterService for AdapterApi {
    type StreamSamplesStream = SampleStream;

    async fn stream_samples(
        &self,
        request: Request<v1::StreamSamplesRequest>,
    ) -> Result<Response<SampleStream>, Status> {
        let wanted = request.into_inner().devices;
        if let Some(unknown) = wanted.iter().find(|d| !self.devices.contains_key(*d)) {
            return Err(Status::not_found(format!(
                "this adapter has no device {unknown:?}"
            )));
        }
        let stream =
            BroadcastStream::new(self.sink.subscribe()).filter_map(move |item| match item {
                Ok(batch) if wanted.is_empty() || wanted.contains(&batch.device) => {
                    Some(Ok((*batch).clone()))
                }
                Ok(_) => None,
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    tracing::warn!(
                        skipped = n,
                        "a StreamSamples client is too slow; batches skipped for it"
                    );
                    None
                }
            });
        let stream = futures::StreamExt::take_until(stream, self.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn write(
        &self,
        request: Request<v1::Command>,
    ) -> Result<Response<v1::CommandResult>, Status> {
        let command = request.into_inner();
        let path =
            TagPath::parse(&command.tag).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if path.line != self.line {
            return Err(Status::not_found(format!(
                "this adapter serves line {:?}, not {:?}",
                self.line, path.line
            )));
        }
        let device = self.devices.get(&path.device).ok_or_else(|| {
            Status::not_found(format!(
                "line {} has no device {:?}",
                self.line, path.device
            ))
        })?;
        let result = device
            .write(command, path.tag)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(result))
    }
}
