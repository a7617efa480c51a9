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
    /// Who may write.
    pub writers: Writers,
}

/// Who may call AdapterService.Write: the processor, which runs every write through the safe
/// write path first. Nobody else may reach a device around it.
#[derive(Clone)]
pub enum Writers {
    /// Callers that present this token (`authorization: Bearer <token>`).
    Token(String),
    /// Any caller: the adapter listens on a loopback address only, so only this machine's
    /// processes can reach it.
    Loopback,
    /// Nobody: the adapter listens beyond this machine and has no token to tell the processor
    /// from anyone else.
    Nobody { listen: std::net::SocketAddr },
}

impl Writers {
    /// The writers of an adapter listening on `listen`, with `token` if one is configured.
    pub fn new(token: Option<String>, listen: std::net::SocketAddr) -> Self {
        match token {
            Some(token) => Writers::Token(token),
            None if listen.ip().is_loopback() => Writers::Loopback,
            None => Writers::Nobody { listen },
        }
    }

    /// Whether a request with these headers may write.
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        match self {
            Writers::Loopback => Ok(()),
            Writers::Nobody { listen } => Err(Status::permission_denied(format!(
                "this adapter listens on {listen} without adapter.write_token, so it takes no writes"
            ))),
            Writers::Token(token) => {
                let presented = metadata
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                if fieldline_runtime::secret::same_secret(presented.as_bytes(), token.as_bytes()) {
                    Ok(())
                } else {
                    Err(Status::unauthenticated(
                        "AdapterService.Write takes writes from the processor only: no valid write token",
                    ))
                }
            }
        }
    }
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
        if let Err(refused) = self.writers.check(request.metadata()) {
            tracing::warn!(remote = ?request.remote_addr(), reason = %refused.message(), "write refused");
            return Err(refused);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> tonic::metadata::MetadataMap {
        let mut map = tonic::metadata::MetadataMap::new();
        if let Some(value) = authorization {
            map.insert("authorization", value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_the_token_opens_writes_and_without_one_only_loopback_does() {
        let loopback: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let everywhere: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let token = Writers::new(Some("s3cret".into()), everywhere);
        assert!(token.check(&headers(Some("Bearer s3cret"))).is_ok());
        for refused in [None, Some("Bearer s3cre"), Some("s3cret"), Some("Bearer ")] {
            let status = token.check(&headers(refused)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{refused:?}");
        }
        assert!(Writers::new(None, loopback).check(&headers(None)).is_ok());
        let open = Writers::new(None, everywhere);
        let status = open.check(&headers(Some("Bearer s3cret"))).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("adapter.write_token"), "{status}");
    }
}
