//! PlantService, the MES API: the latest value of every tag, and a live subscription.

use std::pin::Pin;

use fieldline_proto::v1::{self, plant_service_server::PlantService};
use futures::Stream;
use futures::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::latest::{Latest, matches};

pub struct PlantApi {
    pub latest: Latest,
    /// Ends subscriptions when the processor stops, so shutdown does not wait on clients.
    pub stop: fieldline_runtime::CancellationToken,
}

type TagStream = Pin<Box<dyn Stream<Item = Result<v1::TagSample, Status>> + Send>>;

#[tonic::async_trait]
impl PlantService for PlantApi {
    type SubscribeStream = TagStream;

    async fn read_latest(
        &self,
        request: Request<v1::TagFilter>,
    ) -> Result<Response<v1::ReadLatestResponse>, Status> {
        let filter = request.into_inner();
        Ok(Response::new(v1::ReadLatestResponse {
            samples: self.latest.snapshot(&filter),
        }))
    }

    async fn subscribe(
        &self,
        request: Request<v1::TagFilter>,
    ) -> Result<Response<TagStream>, Status> {
        let filter = request.into_inner();
        // Subscribe before the snapshot so nothing falls between them.
        let changes = BroadcastStream::new(self.latest.changes());
        let snapshot = self.latest.snapshot(&filter);
        let live_filter = filter.clone();
        let live = changes
            .map(move |item| match item {
                Ok(batch) => batch
                    .iter()
                    .filter(|s| matches(&live_filter, s))
                    .cloned()
                    .map(Ok)
                    .collect::<Vec<_>>(),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    vec![Err(Status::data_loss(format!(
                        "subscriber too slow: {n} updates skipped; subscribe again"
                    )))]
                }
            })
            .flat_map(futures::stream::iter);
        let stream = futures::stream::iter(snapshot.into_iter().map(Ok))
            .chain(live)
            .take_until(self.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}
