//! `fieldline read`, `watch`, `write` and `alarms`: the MES API from a terminal.

use fieldline_core::{Quality, Value};
use fieldline_proto::v1::{self, plant_service_client::PlantServiceClient};
use serde_json::json;

use crate::{Error, output::Output};

/// A client of the MES API at `server`.
async fn connect(server: String) -> crate::Result<PlantServiceClient<tonic::transport::Channel>> {
    PlantServiceClient::connect(server.clone())
        .await
        .map_err(|source| Error::Connect { server, source })
}

fn value_of(v: &Option<v1::Value>) -> Option<Value> {
    v.clone().and_then(|v| Value::try_from(v).ok())
}

/// A value as JSON: numbers as numbers, strings as strings, none as null.
fn json_value(v: Option<Value>) -> serde_json::Value {
    match v {
        None => serde_json::Value::Null,
        Some(Value::Bool(b)) => json!(b),
        Some(Value::I64(i)) => json!(i),
        Some(Value::U64(u)) => json!(u),
        Some(Value::F64(x)) => json!(x),
        Some(Value::String(s)) => json!(s),
    }
}

fn sample_json(s: &v1::TagSample) -> serde_json::Value {
    let sample = s.sample.clone().unwrap_or_default();
    let quality = sample
        .quality
        .clone()
        .and_then(|q| Quality::try_from(q).ok());
    json!({
        "line": s.line,
        "device": s.device,
        "tag": sample.tag,
        "value": json_value(value_of(&sample.value)),
        "quality": quality.as_ref().map(Quality::code),
        "detail": quality.as_ref().map(|q| q.to_string()),
        "timestamp_ns": sample.timestamp_ns,
    })
}

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
pub async fn read(server: String, filter: v1::TagFilter, output: Output) -> crate::Result<()> {
    let mut client = connect(server).await?;
    let latest = client.read_latest(filter).await?.into_inner();
    for s in &latest.samples {
        output.emit(|| show(s), || sample_json(s))?;
    }
    if latest.samples.is_empty() {
        eprintln!("no samples match");
    }
    Ok(())
}

/// Prints the latest values, then every change, until interrupted.
pub async fn watch(server: String, filter: v1::TagFilter, output: Output) -> crate::Result<()> {
    let mut client = connect(server).await?;
    let mut stream = client.subscribe(filter).await?.into_inner();
    while let Some(s) = stream.message().await? {
        output.emit(|| show(&s), || sample_json(&s))?;
    }
    Ok(())
}

/// A value as typed on the command line.
pub fn parse_value(text: &str, string: bool) -> Value {
    if string {
        return Value::String(text.to_string());
    }
    match text {
        "true" | "on" => Value::Bool(true),
        "false" | "off" => Value::Bool(false),
        t => t
            .parse::<i64>()
            .map(Value::I64)
            .or_else(|_| t.parse::<f64>().map(Value::F64))
            .unwrap_or_else(|_| Value::String(t.to_string())),
    }
}

/// One write, as asked for on the command line.
pub struct WriteRequest {
    /// Tag path `{line}/{device}/{tag}`.
    pub tag: String,
    pub value: Value,
    /// Who asks (recorded in the audit trail).
    pub user: String,
    pub reason: String,
    /// Give up when not written within this time.
    pub deadline: std::time::Duration,
    /// The idempotency key; a new one when absent.
    pub id: Option<String>,
}

/// Writes one tag; true when written (and read back equal).
pub async fn write(server: String, request: WriteRequest, output: Output) -> crate::Result<bool> {
    let WriteRequest {
        tag,
        value,
        user,
        reason,
        deadline,
        id,
    } = request;
    let mut client = connect(server).await?;
    let now = fieldline_runtime::now_ns();
    let id = id.unwrap_or_else(|| format!("cli-{user}-{now}"));
    let result = client
        .write(v1::Command {
            ttl_ns: 0,
            id: id.clone(),
            tag: tag.clone(),
            value: Some(value.clone().into()),
            deadline_ns: now + i64::try_from(deadline.as_nanos()).unwrap_or(i64::MAX),
            requested_by: user,
            reason,
        })
        .await?
        .into_inner();
    let status = v1::CommandStatus::try_from(result.status).unwrap_or_default();
    let read_back = result
        .read_back
        .clone()
        .and_then(|v| Value::try_from(v).ok())
        .map_or_else(|| "-".to_string(), |v| v.to_string());
    let text = || match status {
        v1::CommandStatus::Written => {
            format!("{tag} = {value}: written, read back {read_back} (command {id})")
        }
        v1::CommandStatus::Rejected => format!(
            "{tag} = {value}: refused by {}: {} (command {id})",
            result.rejected_by, result.detail
        ),
        other => format!(
            "{tag} = {value}: {other:?}: {} (read back {read_back}, command {id})",
            result.detail
        ),
    };
    let json = || {
        json!({
            "command_id": id,
            "tag": tag,
            "value": json_value(Some(value.clone())),
            "status": status.as_str_name().trim_start_matches("COMMAND_STATUS_").to_lowercase(),
            "rejected_by": result.rejected_by,
            "detail": result.detail,
            "read_back": json_value(value_of(&result.read_back)),
        })
    };
    output.emit(text, json)?;
    Ok(status == v1::CommandStatus::Written)
}

fn state_name(state: i32) -> String {
    v1::AlarmState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ALARM_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| state.to_string())
}

fn event_json(e: &v1::AlarmEvent) -> serde_json::Value {
    json!({
        "alarm_id": e.alarm_id,
        "from": state_name(e.from_state),
        "to": state_name(e.to_state),
        "value": json_value(value_of(&e.value)),
        "user": e.user,
        "message": e.message,
        "timestamp_ns": e.timestamp_ns,
    })
}

fn show_event(e: &v1::AlarmEvent) -> String {
    let value = e
        .value
        .clone()
        .and_then(|v| Value::try_from(v).ok())
        .map_or_else(String::new, |v| format!(" value {v}"));
    let who = if e.user.is_empty() {
        String::new()
    } else {
        format!(" by {}", e.user)
    };
    format!(
        "{} {} -> {}{value}{who}  {}",
        e.alarm_id,
        state_name(e.from_state),
        state_name(e.to_state),
        e.message
    )
}

pub async fn list_alarms(
    server: String,
    device: String,
    active: bool,
    output: Output,
) -> crate::Result<()> {
    let mut client = connect(server).await?;
    let alarms = client
        .list_alarms(v1::AlarmFilter {
            line: String::new(),
            device,
            not_normal_only: active,
        })
        .await?
        .into_inner()
        .alarms;
    for a in &alarms {
        let text = || {
            format!(
                "{:<40} {:<16} p{} {:<10} {}",
                a.alarm_id,
                state_name(a.state),
                a.priority,
                a.kind,
                a.message
            )
        };
        let json = || {
            json!({
                "alarm_id": a.alarm_id,
                "tag": a.tag,
                "kind": a.kind,
                "priority": a.priority,
                "state": state_name(a.state),
                "condition_active": a.condition_active,
                "shelved_until_ns": a.shelved_until_ns,
                "message": a.message,
            })
        };
        output.emit(text, json)?;
    }
    if alarms.is_empty() {
        eprintln!("no alarms match");
    }
    Ok(())
}

pub async fn watch_alarms(server: String, device: String, output: Output) -> crate::Result<()> {
    let mut client = connect(server).await?;
    let mut events = client
        .subscribe_alarms(v1::AlarmFilter {
            line: String::new(),
            device,
            not_normal_only: false,
        })
        .await?
        .into_inner();
    while let Some(e) = events.message().await? {
        output.emit(|| show_event(&e), || event_json(&e))?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct AlarmArgs {
    /// The alarm id, `{line}/{device}/{alarm}`.
    pub alarm_id: String,
    /// Who acts (recorded with the transition).
    #[arg(long, env = "USER")]
    pub user: String,
    #[arg(long, default_value = "")]
    pub comment: String,
}

pub async fn alarm_action(
    server: String,
    action: &str,
    args: AlarmArgs,
    shelve_for: Option<std::time::Duration>,
    output: Output,
) -> crate::Result<()> {
    let mut client = connect(server).await?;
    let until_ns = shelve_for.map_or(0, |d| {
        fieldline_runtime::now_ns() + i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
    });
    let request = v1::AlarmAction {
        alarm_id: args.alarm_id,
        user: args.user,
        comment: args.comment,
        until_ns,
    };
    let result = match action {
        "ack" => client.acknowledge(request).await,
        "shelve" => client.shelve(request).await,
        "unshelve" => client.unshelve(request).await,
        "disable" => client.remove_from_service(request).await,
        _ => client.return_to_service(request).await,
    }?
    .into_inner();
    for e in &result.events {
        output.emit(|| show_event(e), || event_json(e))?;
    }
    if result.events.is_empty() && output == Output::Text {
        output.emit(
            || "nothing to do: the alarm is already in that state".into(),
            || json!(null),
        )?;
    }
    Ok(())
}
