//! PlantService, the MES API: devices and tags with their metadata, the latest value of
//! every tag and a live subscription, history (answered by the storage service), writes
//! through the safe write path, alarms with operator actions, and production figures.

use std::pin::Pin;

use fieldline_proto::v1::{self, plant_service_server::PlantService};
use futures::Stream;
use futures::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use fieldline_core::{
    config::LineConfig,
    plugin::{BuiltinPlugin, PluginConfig},
};

use fieldline_core::alarm::{AlarmEvent, LineAlarms};

use crate::{
    latest::{Latest, matches},
    line::LineHandle,
    writes::WritePath,
};

pub struct PlantApi {
    pub config: Arc<LineConfig>,
    pub line: LineHandle,
    pub writes: Arc<WritePath>,
    pub latest: Latest,
    /// The storage service that answers history (lazily connected).
    pub storage: v1::storage_service_client::StorageServiceClient<tonic::transport::Channel>,
    /// Ends subscriptions when the processor stops, so shutdown does not wait on clients.
    pub stop: fieldline_runtime::CancellationToken,
}

type TagStream = Pin<Box<dyn Stream<Item = Result<v1::TagSample, Status>> + Send>>;
type AlarmStream = Pin<Box<dyn Stream<Item = Result<v1::AlarmEvent, Status>> + Send>>;

fn alarm_status(e: fieldline_core::Error) -> Status {
    match e {
        fieldline_core::Error::UnknownAlarm(_) => Status::not_found(e.to_string()),
        fieldline_core::Error::AlarmRefused { .. } => Status::failed_precondition(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn check_user(action: &v1::AlarmAction) -> Result<(), Status> {
    if action.user.trim().is_empty() {
        return Err(Status::invalid_argument(
            "an alarm action needs the user who takes it",
        ));
    }
    Ok(())
}

impl PlantApi {
    /// An operator action on one alarm: checked for a user, run, and its transitions handed on.
    async fn alarm_action(
        &self,
        request: Request<v1::AlarmAction>,
        action: impl FnOnce(
            &mut LineAlarms,
            &v1::AlarmAction,
            i64,
        ) -> fieldline_core::Result<Vec<AlarmEvent>>,
    ) -> Result<Response<v1::AlarmActionResult>, Status> {
        let a = request.into_inner();
        check_user(&a)?;
        let now = fieldline_runtime::now_ns();
        let events = self
            .line
            .act(|alarms| action(alarms, &a, now))
            .await
            .map_err(alarm_status)?;
        Ok(Response::new(v1::AlarmActionResult { events }))
    }
}

#[tonic::async_trait]
impl PlantService for PlantApi {
    type SubscribeStream = TagStream;
    type SubscribeAlarmsStream = AlarmStream;

    async fn list_devices(
        &self,
        request: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        let r = request.into_inner();
        let line = &self.config.line;
        let devices = if r.line.is_empty() || &r.line == line {
            self.config
                .devices
                .iter()
                .map(|d| v1::DeviceInfo {
                    line: line.clone(),
                    name: d.name().to_string(),
                    r#type: d.device_type().to_string(),
                    protocol: d.protocol().as_str().to_string(),
                    endpoint: d.endpoint().to_string(),
                    tag_count: d.tags().len() as u32,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(v1::ListDevicesResponse { devices }))
    }

    async fn list_tags(
        &self,
        request: Request<v1::TagFilter>,
    ) -> Result<Response<v1::ListTagsResponse>, Status> {
        let f = request.into_inner();
        let line = &self.config.line;
        let mut tags = Vec::new();
        if f.line.is_empty() || &f.line == line {
            for d in self
                .config
                .devices
                .iter()
                .filter(|d| f.device.is_empty() || d.name() == f.device)
            {
                for t in d
                    .tags()
                    .iter()
                    .filter(|t| f.tags.is_empty() || f.tags.contains(&t.name))
                {
                    tags.push(v1::TagInfo {
                        line: line.clone(),
                        device: d.name().to_string(),
                        tag: t.name.clone(),
                        data_type: t.data_type.clone(),
                        address: t.address.clone(),
                        unit: t.unit.clone().unwrap_or_default(),
                        description: t.description.clone().unwrap_or_default(),
                        writable: t.writable,
                        min: t.min,
                        max: t.max,
                        max_step: t.max_step,
                        min_write_interval_ns: t
                            .min_write_interval
                            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
                    });
                }
            }
        }
        Ok(Response::new(v1::ListTagsResponse { tags }))
    }

    async fn write(
        &self,
        request: Request<v1::Command>,
    ) -> Result<Response<v1::CommandResult>, Status> {
        let mut command = request.into_inner();
        if command.requested_by.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a write needs requested_by: who asks for it",
            ));
        }
        command.requested_by = command.requested_by.trim().to_string();
        Ok(Response::new(self.writes.write(command, "mes").await))
    }

    async fn list_alarms(
        &self,
        request: Request<v1::AlarmFilter>,
    ) -> Result<Response<v1::ListAlarmsResponse>, Status> {
        let filter = request.into_inner();
        let alarms = self
            .line
            .engine
            .lock()
            .map(|e| e.list(&filter))
            .map_err(|_| Status::internal("alarm state unavailable"))?;
        Ok(Response::new(v1::ListAlarmsResponse { alarms }))
    }

    async fn subscribe_alarms(
        &self,
        request: Request<v1::AlarmFilter>,
    ) -> Result<Response<AlarmStream>, Status> {
        let filter = request.into_inner();
        let prefix = match (filter.line.is_empty(), filter.device.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!("{}/", filter.line),
            (_, false) => format!(
                "{}/{}/",
                if filter.line.is_empty() {
                    &self.config.line
                } else {
                    &filter.line
                },
                filter.device
            ),
        };
        let not_normal_only = filter.not_normal_only;
        let events = BroadcastStream::new(self.line.alarm_feed.subscribe())
            .filter_map(move |item| {
                let out = match item {
                    Ok(e) if e.alarm_id.starts_with(&prefix)
                        && !(not_normal_only && e.to_state == v1::AlarmState::Normal as i32) =>
                    {
                        Some(Ok(e))
                    }
                    Ok(_) => None,
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        Some(Err(Status::data_loss(format!(
                            "subscriber too slow: {n} alarm events skipped; list alarms and subscribe again"
                        ))))
                    }
                };
                futures::future::ready(out)
            })
            .take_until(self.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AlarmAction>,
    ) -> Result<Response<v1::AlarmActionResult>, Status> {
        self.alarm_action(request, |alarms, a, now| {
            alarms.acknowledge(&a.alarm_id, &a.user, &a.comment, now)
        })
        .await
    }

    async fn shelve(
        &self,
        request: Request<v1::AlarmAction>,
    ) -> Result<Response<v1::AlarmActionResult>, Status> {
        if request.get_ref().until_ns <= fieldline_runtime::now_ns() {
            return Err(Status::invalid_argument(
                "shelve needs until_ns in the future",
            ));
        }
        self.alarm_action(request, |alarms, a, now| {
            alarms.shelve(&a.alarm_id, &a.user, a.until_ns, &a.comment, now)
        })
        .await
    }

    async fn unshelve(
        &self,
        request: Request<v1::AlarmAction>,
    ) -> Result<Response<v1::AlarmActionResult>, Status> {
        self.alarm_action(request, |alarms, a, now| {
            alarms.unshelve(&a.alarm_id, &a.user, &a.comment, now)
        })
        .await
    }

    async fn remove_from_service(
        &self,
        request: Request<v1::AlarmAction>,
    ) -> Result<Response<v1::AlarmActionResult>, Status> {
        self.alarm_action(request, |alarms, a, now| {
            alarms.remove_from_service(&a.alarm_id, &a.user, &a.comment, now)
        })
        .await
    }

    async fn return_to_service(
        &self,
        request: Request<v1::AlarmAction>,
    ) -> Result<Response<v1::AlarmActionResult>, Status> {
        self.alarm_action(request, |alarms, a, now| {
            alarms.return_to_service(&a.alarm_id, &a.user, &a.comment, now)
        })
        .await
    }

    async fn get_production(
        &self,
        request: Request<v1::ProductionRequest>,
    ) -> Result<Response<v1::ProductionResponse>, Status> {
        let r = request.into_inner();
        let line = &self.config.line;
        let mut devices = Vec::new();
        if r.line.is_empty() || &r.line == line {
            for d in self
                .config
                .devices
                .iter()
                .filter(|d| r.device.is_empty() || d.name() == r.device)
            {
                // The tags the device type's OEE plugin reads and derives.
                let Some(oee) = self
                    .config
                    .device_types
                    .get(d.device_type())
                    .into_iter()
                    .flat_map(|t| t.plugins.iter())
                    .find_map(|p| match p {
                        PluginConfig::Builtin(BuiltinPlugin::Oee(o)) => Some(o.as_ref()),
                        _ => None,
                    })
                else {
                    continue;
                };
                let names = [
                    oee.units_produced.as_str(),
                    oee.good_count.as_str(),
                    oee.outputs.availability.as_str(),
                    oee.outputs.performance.as_str(),
                    oee.outputs.quality.as_str(),
                    oee.outputs.oee.as_str(),
                    oee.outputs.production_rate.as_str(),
                    oee.outputs.efficiency.as_str(),
                ];
                let filter = v1::TagFilter {
                    line: line.clone(),
                    device: d.name().to_string(),
                    tags: names.iter().map(|t| t.to_string()).collect(),
                };
                let samples = self.latest.snapshot(&filter);
                let figure = |name: &str| {
                    samples
                        .iter()
                        .filter_map(|s| s.sample.as_ref())
                        .find(|s| s.tag == name)
                        .and_then(|s| s.value.clone())
                        .and_then(|v| fieldline_core::Value::try_from(v).ok())
                        .and_then(|v| v.as_f64())
                };
                devices.push(v1::Production {
                    line: line.clone(),
                    device: d.name().to_string(),
                    units_produced: figure(names[0]),
                    good_count: figure(names[1]),
                    availability: figure(names[2]),
                    performance: figure(names[3]),
                    quality: figure(names[4]),
                    oee: figure(names[5]),
                    production_rate: figure(names[6]),
                    efficiency: figure(names[7]),
                    timestamp_ns: samples
                        .iter()
                        .filter_map(|s| s.sample.as_ref().map(|x| x.timestamp_ns))
                        .max()
                        .unwrap_or(0),
                });
            }
        }
        Ok(Response::new(v1::ProductionResponse { devices }))
    }

    async fn read_latest(
        &self,
        request: Request<v1::TagFilter>,
    ) -> Result<Response<v1::ReadLatestResponse>, Status> {
        let filter = request.into_inner();
        Ok(Response::new(v1::ReadLatestResponse {
            samples: self.latest.snapshot(&filter),
        }))
    }

    async fn query_history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        // Storage checks the request and answers from its history backend.
        self.storage
            .clone()
            .query_history(request.into_inner())
            .await
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
