//! The session loop: connect, subscribe (or poll), publish samples, perform writes; on a lost
//! connection mark every tag Bad, reconnect with backoff and build every subscription again
//! on a fresh session.

use std::{sync::Arc, time::Duration};

use fieldline_core::{
    config::{OpcuaDeviceConfig, ResolvedValueTag, opcua::OpcuaSettings, opcua::ReadMode},
    deadband::Deadband,
    sample::{Quality, QualityReason, Sample, Value},
};
use fieldline_proto::v1;
use fieldline_runtime::{CancellationToken, backoff::Backoff, now_ns};
use futures::StreamExt;
use opcua::{
    client::{Client, DataChangeCallback, MonitoredItem, Session, SessionPollResult},
    crypto::SecurityPolicy,
    types::{
        AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType,
        EndpointDescription, ExtensionObject, MonitoredItemCreateRequest, MonitoringMode,
        MonitoringParameters, NodeId, ReadValueId, StatusCode, TimestampsToReturn, VariableId,
        Variant, WriteValue,
    },
};
use tokio::sync::mpsc;

use super::{
    client::{Setup, setup},
    convert,
    plan::{self, ServerLimits},
};
use crate::{
    Error, Result,
    drivers::{
        DeviceContext, RememberedCommands, SampleMeters, WriteRequest, check_value_command,
        command_result,
    },
    error::session_failure_kind,
};

/// Why a session ended.
enum Ended {
    Stop,
    Lost(String),
}

/// One device's driver state that outlives sessions.
pub struct Driver {
    device: OpcuaDeviceConfig,
    settings: OpcuaSettings,
    cx: DeviceContext,
    tags: Vec<ResolvedValueTag>,
    nodes: Vec<NodeId>,
    deadbands: Vec<Deadband>,
    /// Tags whose deadband the server applies (a data change filter it accepted).
    server_band: Vec<bool>,
    remembered: RememberedCommands,
    meters: SampleMeters,
    /// Whether the tags were last reported Bad for a lost connection (reported once per
    /// outage).
    marked_down: bool,
}

impl Driver {
    pub fn new(
        device: OpcuaDeviceConfig,
        cx: DeviceContext,
        tags: Vec<ResolvedValueTag>,
        nodes: Vec<NodeId>,
    ) -> Self {
        let n = tags.len();
        let meters = SampleMeters::new(&cx, &device.name);
        let remembered = cx.remembered(&device.name);
        Self {
            meters,
            settings: device.opcua.clone(),
            device,
            cx,
            tags,
            nodes,
            deadbands: vec![Deadband::default(); n],
            server_band: vec![false; n],
            remembered,
            marked_down: false,
        }
    }

    fn name(&self) -> &str {
        &self.device.name
    }

    pub async fn run(mut self, writes: &mut mpsc::Receiver<WriteRequest>, stop: CancellationToken) {
        let application_name = format!("Fieldline adapter {}", self.name());
        // Creating the client may generate its RSA key pair, which takes seconds: off the
        // runtime's threads.
        let (endpoint, timeout, settings) = (
            self.device.endpoint.clone(),
            self.device.timeout,
            self.settings.clone(),
        );
        let built = tokio::task::spawn_blocking(move || {
            setup(&endpoint, timeout, &settings, &application_name).map_err(Error::from)
        })
        .await
        .unwrap_or_else(|e| Err(Error::SetupAborted(e)));
        let mut setup = match built {
            Ok(s) => s,
            Err(error) => {
                self.cx.error(self.name(), error.kind());
                tracing::error!(device = %self.name(), %error, "OPC UA client cannot be set up");
                let why = error.to_string();
                self.mark_down(&why);
                self.refuse_writes_until(writes, &stop, None, &why).await;
                return;
            }
        };
        let base = (self.device.timeout * 2).max(Duration::from_millis(500));
        let mut backoff = Backoff::new(base, self.device.max_backoff);
        loop {
            // The session watches `stop` itself, so that it can close cleanly.
            let outcome = self.session(&mut setup, writes, &stop).await;
            let why = match outcome {
                Ok(Ended::Stop) => return,
                Ok(Ended::Lost(why)) => {
                    // The session worked: start the backoff over.
                    backoff.reset();
                    self.cx.error(self.name(), "connection_lost");
                    tracing::warn!(device = %self.name(), reason = %why, "OPC UA connection lost; reconnecting");
                    why
                }
                Err(error) => error.to_string(),
            };
            self.mark_down(&why);
            let delay = backoff.next_delay();
            if !self
                .refuse_writes_until(writes, &stop, Some(delay), &why)
                .await
            {
                return;
            }
        }
    }

    /// Every tag Bad (comm_failure), once per outage.
    fn mark_down(&mut self, why: &str) {
        if self.marked_down {
            return;
        }
        self.marked_down = true;
        let now = now_ns();
        let samples = self
            .tags
            .iter()
            .map(|t| {
                Sample::bad(
                    &t.name,
                    Quality::bad(QualityReason::CommFailure, why.to_string()),
                    now,
                )
            })
            .collect();
        self.publish(samples);
    }

    /// Answers writes with Failed until `delay` passed (or forever without one); false when
    /// stopped.
    async fn refuse_writes_until(
        &mut self,
        writes: &mut mpsc::Receiver<WriteRequest>,
        stop: &CancellationToken,
        delay: Option<Duration>,
        why: &str,
    ) -> bool {
        let sleep = async {
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        let mut open = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = &mut sleep => return true,
                w = writes.recv(), if open => match w {
                    Some(w) => {
                        let result = command_result(
                            &w.command,
                            v1::CommandStatus::Failed,
                            "",
                            None,
                            format!("not connected to the OPC UA server: {why}"),
                        );
                        self.cx.count_write(self.name(), &w.tag, &w.command, &result);
                        let _ = w.reply.send(result);
                    }
                    None => open = false,
                },
            }
        }
    }

    /// One session, from connecting to losing it (or `stop`). `Err` when it could not be
    /// established.
    async fn session(
        &mut self,
        setup: &mut Setup,
        writes: &mut mpsc::Receiver<WriteRequest>,
        stop: &CancellationToken,
    ) -> Result<Ended> {
        let name = self.name().to_string();
        let connect = async {
            let url = setup.endpoint.endpoint_url.as_ref().to_string();
            let endpoints = setup
                .client
                .get_server_endpoints_from_url(url.as_str())
                .await?;
            let policy = SecurityPolicy::from_uri(setup.endpoint.security_policy_uri.as_ref());
            let mut endpoint = Client::find_matching_endpoint(
                &endpoints,
                &url,
                policy,
                setup.endpoint.security_mode,
            )
            .ok_or_else(|| {
                opcua::types::Error::new(
                    StatusCode::BadSecurityPolicyRejected,
                    format!(
                        "the server offers no endpoint with {} and {:?}",
                        setup.endpoint.security_policy_uri.as_ref(),
                        setup.endpoint.security_mode
                    ),
                )
            })?;
            user_tokens_use_channel_policy(&mut endpoint);
            setup
                .client
                .connect_to_endpoint_directly(endpoint, setup.identity.clone())
        };
        // A server that takes the connection but never answers must not hold the driver: the
        // attempt fails after this long and is retried with backoff.
        let limit = (self.device.timeout * 4).max(Duration::from_secs(15));
        let connected = tokio::select! {
            _ = stop.cancelled() => return Ok(Ended::Stop),
            r = tokio::time::timeout(limit, connect) => r,
        };
        let connected = connected.map_err(|_| self.no_answer(limit))?;
        let (session, event_loop) = connected.map_err(|e| {
            let error = Error::OpcuaEndpoint(e);
            self.cx.error(&name, error.kind());
            tracing::warn!(device = %name, %error, "cannot reach the OPC UA server's endpoint");
            error
        })?;
        // The event loop runs beside the driver; what matters to the driver (connected, lost,
        // failed) comes back over a channel.
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let events_task = tokio::spawn(async move {
            let stream = event_loop.enter();
            tokio::pin!(stream);
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(SessionPollResult::Reconnected(_)) => Event::Connected,
                    Ok(SessionPollResult::ConnectionLost(code)) => Event::Lost(code),
                    Ok(_) => continue,
                    Err(code) => Event::Failed(code),
                };
                if events_tx.send(event).is_err() {
                    return;
                }
            }
            let _ = events_tx.send(Event::Ended);
        });
        let _abort = AbortOnDrop(events_task);
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(Ended::Stop),
            e = tokio::time::timeout(limit, events.recv()) => e,
        };
        let first = first.map_err(|_| self.no_answer(limit))?;
        match first {
            Some(Event::Connected) => {}
            Some(Event::Failed(code) | Event::Lost(code)) => {
                let kind = session_failure_kind(code);
                self.cx.error(&name, kind);
                let hint = match kind {
                    "untrusted_server" => {
                        "; the server's certificate is not trusted: add it to trusted_server_certificates (or set trust_unknown_servers)"
                    }
                    "identity" => "; the server refused the user identity",
                    _ => "",
                };
                tracing::error!(device = %name, status = %code, "OPC UA session could not be established{hint}");
                return Err(Error::SessionRefused { status: code, hint });
            }
            Some(Event::Ended) | None => return Err(Error::SessionEnded),
        }
        // Reconnecting is the driver's job: the library's loop ends when the connection drops.
        session.disable_reconnects();
        tracing::info!(device = %name, endpoint = %self.device.endpoint, "OPC UA session established");
        self.marked_down = false;
        let limits = server_limits(&session).await;
        let result = match self.settings.mode {
            ReadMode::Subscribe => {
                self.subscribed(&session, limits, writes, &mut events, stop)
                    .await
            }
            ReadMode::Poll => {
                self.polled(&session, limits, writes, &mut events, stop)
                    .await
            }
        };
        if matches!(result, Ok(Ended::Stop)) {
            let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
        }
        result
    }

    async fn subscribed(
        &mut self,
        session: &Arc<Session>,
        limits: ServerLimits,
        writes: &mut mpsc::Receiver<WriteRequest>,
        events: &mut mpsc::UnboundedReceiver<Event>,
        stop: &CancellationToken,
    ) -> Result<Ended> {
        let (changes_tx, mut changes) = mpsc::unbounded_channel::<(usize, DataValue)>();
        let publishing = self
            .settings
            .publishing_interval
            .unwrap_or(self.device.poll_interval);
        let sampling = self
            .settings
            .sampling_interval
            .unwrap_or(self.device.poll_interval);
        let mut failed_items = Vec::new();
        for planned in plan::subscriptions(
            self.tags.len(),
            self.settings.max_items_per_subscription,
            limits,
        ) {
            let tx = changes_tx.clone();
            let callback =
                DataChangeCallback::new(move |value: DataValue, item: &MonitoredItem| {
                    // Client handles are tag index + 1 (0 would be replaced by the library).
                    if let Some(i) = (item.client_handle() as usize).checked_sub(1) {
                        let _ = tx.send((i, value));
                    }
                });
            let subscription = session
                .create_subscription(publishing, 30, 10, 0, 0, true, callback)
                .await
                .map_err(|e| self.failed_call("subscribe", "CreateSubscription", e))?;
            for call in planned.calls {
                let requests: Vec<_> = call.clone().map(|i| self.item(i, sampling, true)).collect();
                let results = session
                    .create_monitored_items(subscription, TimestampsToReturn::Both, requests)
                    .await
                    .map_err(|e| self.failed_call("subscribe", "CreateMonitoredItems", e))?;
                let mut retry = Vec::new();
                for (i, created) in call.clone().zip(&results) {
                    let status = created.result.status_code;
                    if status.is_good() {
                        self.server_band[i] = self.tags[i].deadband.absolute.is_some()
                            || self.tags[i].deadband.percent.is_some();
                    } else if is_filter_refusal(status) && self.has_band(i) {
                        tracing::warn!(
                            device = %self.name(), tag = %self.tags[i].name, %status,
                            "the server refused the tag's deadband filter; the adapter applies the deadband itself"
                        );
                        retry.push(i);
                    } else {
                        failed_items.push((i, status));
                    }
                }
                if !retry.is_empty() {
                    let requests = retry
                        .iter()
                        .map(|&i| self.item(i, sampling, false))
                        .collect();
                    let results = session
                        .create_monitored_items(subscription, TimestampsToReturn::Both, requests)
                        .await
                        .map_err(|e| self.failed_call("subscribe", "CreateMonitoredItems", e))?;
                    for (&i, created) in retry.iter().zip(&results) {
                        self.server_band[i] = false;
                        if !created.result.status_code.is_good() {
                            failed_items.push((i, created.result.status_code));
                        }
                    }
                }
            }
        }
        if !failed_items.is_empty() {
            let now = now_ns();
            let mut samples = Vec::new();
            for (i, status) in failed_items {
                self.cx.error(self.name(), "monitored_item");
                tracing::warn!(device = %self.name(), tag = %self.tags[i].name, node = %self.nodes[i], %status, "the server refused to monitor the tag");
                samples.push(Sample::bad(&self.tags[i].name, convert::bad(status), now));
            }
            self.publish(samples);
        }
        tracing::info!(device = %self.name(), tags = self.tags.len(), "OPC UA subscriptions created");
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(Ended::Stop),
                e = events.recv() => return Ok(Ended::Lost(lost(e))),
                Some(first) = changes.recv() => {
                    let mut batch = vec![first];
                    while let Ok(more) = changes.try_recv() {
                        batch.push(more);
                    }
                    let now = now_ns();
                    let samples = batch
                        .into_iter()
                        .filter_map(|(i, dv)| self.sample(i, &dv, now))
                        .collect();
                    self.publish(samples);
                }
                w = writes.recv() => {
                    let Some(w) = w else { return Ok(Ended::Stop) };
                    self.write(session, w).await;
                }
            }
        }
    }

    async fn polled(
        &mut self,
        session: &Arc<Session>,
        limits: ServerLimits,
        writes: &mut mpsc::Receiver<WriteRequest>,
        events: &mut mpsc::UnboundedReceiver<Event>,
        stop: &CancellationToken,
    ) -> Result<Ended> {
        let mut tick = tokio::time::interval(self.device.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(Ended::Stop),
                e = events.recv() => return Ok(Ended::Lost(lost(e))),
                _ = tick.tick() => {
                    if self.cx.sink.is_paused() {
                        continue; // the outbox is full and set to pause polling
                    }
                    let mut samples = Vec::with_capacity(self.tags.len());
                    for range in plan::reads(self.tags.len(), limits) {
                        let ids: Vec<ReadValueId> =
                            range.clone().map(|i| self.nodes[i].clone().into()).collect();
                        let values = session
                            .read(&ids, TimestampsToReturn::Both, 0.0)
                            .await
                            .map_err(|e| self.failed_call("read", "Read", e))?;
                        let now = now_ns();
                        samples.extend(
                            range
                                .zip(&values)
                                .filter_map(|(i, dv)| self.sample(i, dv, now)),
                        );
                    }
                    self.publish(samples);
                }
                w = writes.recv() => {
                    let Some(w) = w else { return Ok(Ended::Stop) };
                    self.write(session, w).await;
                }
            }
        }
    }

    /// Counts and logs a connection attempt the server did not complete within `limit`.
    fn no_answer(&self, limit: Duration) -> Error {
        let error = Error::OpcuaNoAnswer(limit);
        self.cx.error(self.name(), error.kind());
        tracing::warn!(device = %self.name(), ?limit, "the OPC UA server did not complete the connection in time");
        error
    }

    /// Counts and logs a failed service call; the error ends the session.
    fn failed_call(
        &self,
        kind: &'static str,
        call: &'static str,
        source: opcua::types::Error,
    ) -> Error {
        let error = Error::OpcuaCall { kind, call, source };
        self.cx.error(self.name(), error.kind());
        tracing::warn!(device = %self.name(), %error, "OPC UA request failed");
        error
    }

    fn has_band(&self, i: usize) -> bool {
        self.tags[i].deadband.absolute.is_some() || self.tags[i].deadband.percent.is_some()
    }

    /// The monitored item of tag `i`, with its deadband as a data change filter when asked.
    fn item(&self, i: usize, sampling: Duration, with_filter: bool) -> MonitoredItemCreateRequest {
        let band = &self.tags[i].deadband;
        let filter = match (with_filter, band.absolute, band.percent) {
            (true, Some(value), _) => Some((DeadbandType::Absolute, value)),
            (true, None, Some(value)) => Some((DeadbandType::Percent, value)),
            _ => None,
        };
        let filter = filter.map_or_else(ExtensionObject::null, |(kind, value)| {
            ExtensionObject::from_message(DataChangeFilter {
                trigger: DataChangeTrigger::StatusValue,
                deadband_type: kind as u32,
                deadband_value: value,
            })
        });
        MonitoredItemCreateRequest {
            item_to_monitor: self.nodes[i].clone().into(),
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                client_handle: u32::try_from(i + 1).unwrap_or(u32::MAX),
                sampling_interval: sampling.as_secs_f64() * 1000.0,
                filter,
                queue_size: 10,
                discard_oldest: true,
            },
        }
    }

    /// The sample of tag `i` for a data value, when it passes the tag's deadband.
    fn sample(&mut self, i: usize, dv: &DataValue, now: i64) -> Option<Sample> {
        let tag = self.tags.get(i)?;
        let sample = convert::sample(tag, dv, now);
        self.meters.count(&sample.quality);
        if sample.quality.is_bad() {
            tracing::debug!(device = %self.device.name, tag = %tag.name, quality = %sample.quality, "bad value");
        }
        if self.server_band[i] {
            return Some(sample);
        }
        self.deadbands[i]
            .should_report(&tag.deadband, &sample.value, &sample.quality, now)
            .then_some(sample)
    }

    fn publish(&self, samples: Vec<Sample>) {
        self.cx.publish(self.name(), samples);
    }

    /// Checks, writes, reads back and answers one command.
    async fn write(&mut self, session: &Session, w: WriteRequest) {
        if let Some(earlier) = self
            .remembered
            .repeat(&self.cx, self.name(), &w.tag, &w.command)
        {
            let _ = w.reply.send(earlier);
            return;
        }
        let checked = check_value_command(
            &self.tags,
            self.name(),
            &w.tag,
            &w.command,
            &self.remembered,
        )
        .map(|(tag, raw)| (tag.clone(), raw));
        let result = match checked {
            Err(rejected) => rejected,
            Ok((tag, raw)) => {
                let node = self
                    .tags
                    .iter()
                    .position(|t| t.name == tag.name)
                    .and_then(|i| self.nodes.get(i));
                match node.cloned() {
                    Some(node) => match self.remembered.sending(&w.tag, &w.command) {
                        Ok(()) => {
                            self.write_value(session, &tag, &node, raw, &w.command)
                                .await
                        }
                        Err(why) => {
                            command_result(&w.command, v1::CommandStatus::Failed, "", None, why)
                        }
                    },
                    None => command_result(
                        &w.command,
                        v1::CommandStatus::Rejected,
                        "unknown_tag",
                        None,
                        format!("device {} has no tag {:?}", self.name(), w.tag),
                    ),
                }
            }
        };
        self.remembered.keep(&w.tag, &result);
        self.cx
            .count_write(self.name(), &w.tag, &w.command, &result);
        let _ = w.reply.send(result);
    }

    async fn write_value(
        &self,
        session: &Session,
        tag: &ResolvedValueTag,
        node: &NodeId,
        raw: Value,
        command: &v1::Command,
    ) -> v1::CommandResult {
        let failed =
            |detail: String| command_result(command, v1::CommandStatus::Failed, "", None, detail);
        let variant = match convert::to_variant(tag.value_type, &raw) {
            Ok(v) => v,
            Err(e) => {
                return command_result(
                    command,
                    v1::CommandStatus::Rejected,
                    "type",
                    None,
                    e.to_string(),
                );
            }
        };
        let write = WriteValue {
            node_id: node.clone(),
            attribute_id: AttributeId::Value as u32,
            index_range: Default::default(),
            value: DataValue::value_only(variant),
        };
        match session.write(&[write]).await {
            Ok(codes) => match codes.first() {
                Some(code) if code.is_good() => {}
                Some(code) => return failed(format!("the server refused the write: {code}")),
                None => return failed("the server answered the write without a result".into()),
            },
            Err(e) => return failed(format!("Write: {e}")),
        }
        let read = session
            .read(&[node.clone().into()], TimestampsToReturn::Neither, 0.0)
            .await;
        let back = match read.as_ref().map(|v| v.first()) {
            Ok(Some(dv)) => convert::sample(tag, dv, now_ns()),
            Ok(None) => return failed("the read-back returned nothing".into()),
            Err(e) => return failed(format!("written, but the read-back failed: {e}")),
        };
        let expected = tag.convert(raw.clone()).ok();
        match back.value {
            Some(value) if Some(&value) == expected.as_ref() => command_result(
                command,
                v1::CommandStatus::Written,
                "",
                Some(value),
                String::new(),
            ),
            Some(value) => command_result(
                command,
                v1::CommandStatus::ReadbackMismatch,
                "",
                Some(value.clone()),
                format!("wrote {raw}, read back {value}"),
            ),
            None => failed(format!("written, but the read-back is {}", back.quality)),
        }
    }
}

enum Event {
    Connected,
    Lost(StatusCode),
    Failed(StatusCode),
    Ended,
}

fn lost(event: Option<Event>) -> String {
    match event {
        Some(Event::Lost(code) | Event::Failed(code)) => format!("connection lost: {code}"),
        _ => "connection lost".into(),
    }
}

/// Whether a monitored item was refused for its filter (so it may work without one).
fn is_filter_refusal(status: StatusCode) -> bool {
    let name = status.to_string();
    [
        "BadMonitoredItemFilterUnsupported",
        "BadMonitoredItemFilterInvalid",
        "BadFilterNotAllowed",
        "BadDeadbandFilterInvalid",
    ]
    .iter()
    .any(|n| name.starts_with(n))
}

/// A user token policy without a security policy of its own means the secure channel's (OPC UA
/// Part 4, 7.41). The client library reads an empty one as None, and would then send an X509
/// identity unsigned (servers refuse it: BadUserSignatureInvalid) and a password without the
/// channel's encryption; so the channel's policy is written in before connecting.
fn user_tokens_use_channel_policy(endpoint: &mut EndpointDescription) {
    let channel = endpoint.security_policy_uri.clone();
    for token in endpoint.user_identity_tokens.iter_mut().flatten() {
        if token.security_policy_uri.is_empty() {
            token.security_policy_uri = channel.clone();
        }
    }
}

/// The server's limits, as far as it publishes them.
async fn server_limits(session: &Session) -> ServerLimits {
    let ids = [
        VariableId::Server_ServerCapabilities_MaxMonitoredItemsPerSubscription,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    ];
    let reads: Vec<ReadValueId> = ids.iter().map(|id| NodeId::from(*id).into()).collect();
    let Ok(values) = session.read(&reads, TimestampsToReturn::Neither, 0.0).await else {
        return ServerLimits::default();
    };
    let get = |i: usize| match values.get(i).and_then(|dv| dv.value.as_ref()) {
        Some(Variant::UInt32(v)) => Some(*v),
        _ => None,
    };
    ServerLimits {
        monitored_items_per_subscription: get(0),
        monitored_items_per_call: get(1),
        nodes_per_read: get(2),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
