//! Sparkplug B host-side state of one edge node, as seen by one Fieldline device (the node's
//! own metrics, or one device behind it). Pure: a topic and a decoded payload in, samples and
//! actions out; the driver owns the MQTT client.
//!
//! Rules followed (Sparkplug 3.0):
//! - NBIRTH starts a session: its `bdSeq` metric identifies the session, its `seq` is the base
//!   of the node's message sequence, and it binds metric names to aliases and datatypes.
//!   DBIRTH does the same for a device. Births carry every metric's current value.
//! - Every later message of the node (NDATA, DBIRTH, DDATA, DDEATH) carries `seq`, one more
//!   than the previous modulo 256. A gap, data before any birth or an alias the birth did not
//!   bind means the host's picture is incomplete: it asks for a rebirth (NCMD
//!   `Node Control/Rebirth` = true) and ignores the node's data until the new NBIRTH. The
//!   request is repeated every [`REBIRTH_RETRY`] while data keeps coming without a birth (the
//!   node may have missed it). A host that has just subscribed asks at once, since births are
//!   not retained and a node reporting by exception may stay quiet for long.
//! - NDEATH (the node's MQTT will) carries the session's `bdSeq`; one from an older session is
//!   stale and ignored. NDEATH and DDEATH make the affected tags Bad (comm_failure).

use std::collections::HashMap;

use fieldline_core::{
    config::ResolvedValueTag,
    sample::{Quality, QualityReason, Sample, Value},
};
use fieldline_proto::sparkplug::{Payload, payload::Metric, payload::metric};

/// Sparkplug datatypes (Metric.datatype).
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
    pub const TEXT: u32 = 14;
    pub const UUID: u32 = 15;
}

/// The metric a host writes to ask a node to publish its births again.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";

/// Least time (ns) between two rebirth requests while the node keeps sending data.
pub const REBIRTH_RETRY: i64 = 5_000_000_000;

/// What the driver should do after a message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Samples of the Fieldline device's tags.
    pub samples: Vec<Sample>,
    /// Ask the node for a rebirth (publish [`rebirth_payload`] on [`Node::ncmd_topic`]).
    pub rebirth: bool,
    /// Protocol problems seen, as `errors_total{kind}` labels.
    pub errors: Vec<&'static str>,
}

/// A Sparkplug message type, from the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NBirth,
    NData,
    NDeath,
    DBirth,
    DData,
    DDeath,
}

/// Metric names and datatypes bound by a birth, by alias.
#[derive(Debug, Default)]
struct Birth {
    aliases: HashMap<u64, (String, u32)>,
    datatypes: HashMap<String, u32>,
}

impl Birth {
    fn from_metrics(metrics: &[Metric]) -> Self {
        let mut birth = Birth::default();
        for m in metrics {
            let (Some(name), Some(dt)) = (&m.name, m.datatype) else {
                continue;
            };
            if let Some(alias) = m.alias {
                birth.aliases.insert(alias, (name.clone(), dt));
            }
            birth.datatypes.insert(name.clone(), dt);
        }
        birth
    }

    /// Name and datatype of `m`; `None` when the birth does not know it.
    fn resolve(&self, m: &Metric) -> Option<(String, u32)> {
        match (&m.name, m.alias) {
            (Some(name), _) => {
                let dt = m.datatype.or_else(|| self.datatypes.get(name).copied())?;
                Some((name.clone(), dt))
            }
            (None, Some(alias)) => {
                let (name, dt) = self.aliases.get(&alias)?;
                Some((name.clone(), m.datatype.unwrap_or(*dt)))
            }
            (None, None) => None,
        }
    }
}

/// Host state for one edge node and the Fieldline device reading it.
pub struct Node {
    group: String,
    node: String,
    /// The device behind the node whose metrics the tags read; the node itself when `None`.
    device: Option<String>,
    tags: Vec<ResolvedValueTag>,
    /// The current session's birth, once NBIRTH arrived.
    node_birth: Option<Birth>,
    bd_seq: Option<u64>,
    last_seq: Option<u64>,
    device_birth: Option<Birth>,
    /// When a rebirth was last requested; data is ignored until NBIRTH.
    awaiting_rebirth: Option<i64>,
}

impl Node {
    pub fn new(group: &str, node: &str, device: Option<&str>, tags: Vec<ResolvedValueTag>) -> Self {
        Self {
            group: group.to_string(),
            node: node.to_string(),
            device: device.map(str::to_string),
            tags,
            node_birth: None,
            bd_seq: None,
            last_seq: None,
            device_birth: None,
            awaiting_rebirth: None,
        }
    }

    /// The subscription that receives every message of the node and its devices.
    pub fn filter(&self) -> String {
        format!("spBv1.0/{}/+/{}/#", self.group, self.node)
    }

    /// Where a rebirth request goes.
    pub fn ncmd_topic(&self) -> String {
        format!("spBv1.0/{}/NCMD/{}", self.group, self.node)
    }

    /// Whether the node's session is alive (NBIRTH seen, no NDEATH since).
    pub fn online(&self) -> bool {
        self.node_birth.is_some()
    }

    /// Whether a rebirth was asked for and the new birth has not arrived yet.
    pub fn awaiting_rebirth(&self) -> bool {
        self.awaiting_rebirth.is_some()
    }

    /// Called once the subscription is in place at `now_ns`: true when a rebirth should be
    /// requested now (the node's state is unknown).
    pub fn subscribed(&mut self, now_ns: i64) -> bool {
        let mut out = Outcome::default();
        if self.node_birth.is_none() {
            self.request_rebirth(&mut out, now_ns);
        }
        out.rebirth
    }

    /// Forgets the session (e.g. after the connection to the broker was lost, when messages
    /// may have been missed): the next data asks for a rebirth.
    pub fn reset(&mut self) {
        self.node_birth = None;
        self.device_birth = None;
        self.last_seq = None;
        self.awaiting_rebirth = None;
    }

    /// Handles a message on `topic`. `payload` is `None` when it could not be decoded.
    pub fn handle(&mut self, topic: &str, payload: Option<&Payload>, arrival_ns: i64) -> Outcome {
        let mut out = Outcome::default();
        let Some((kind, device)) = self.parse_topic(topic) else {
            return out;
        };
        let Some(payload) = payload else {
            out.errors.push("payload_protobuf");
            // A message we cannot read may have changed anything: start over from a birth.
            if kind != Kind::NDeath {
                self.request_rebirth(&mut out, arrival_ns);
            }
            return out;
        };
        let ours = device == self.device.as_deref();
        match kind {
            Kind::NBirth => {
                self.node_birth = Some(Birth::from_metrics(&payload.metrics));
                self.bd_seq = bd_seq(payload);
                self.last_seq = payload.seq;
                self.device_birth = None;
                self.awaiting_rebirth = None;
                if self.device.is_none() {
                    out.samples = self.samples(payload, false, arrival_ns).unwrap_or_default();
                }
            }
            Kind::NDeath => {
                let death = bd_seq(payload);
                if self.node_birth.is_none() {
                    return out;
                }
                if let (Some(death), Some(born)) = (death, self.bd_seq)
                    && death != born
                {
                    out.errors.push("stale_death");
                    return out;
                }
                self.node_birth = None;
                self.device_birth = None;
                self.last_seq = None;
                out.samples = self.all_bad("the edge node went offline (NDEATH)", arrival_ns);
            }
            Kind::NData | Kind::DBirth | Kind::DData | Kind::DDeath => {
                if let Some(asked) = self.awaiting_rebirth {
                    if arrival_ns.saturating_sub(asked) >= REBIRTH_RETRY {
                        self.awaiting_rebirth = None;
                        self.request_rebirth(&mut out, arrival_ns);
                    }
                    return out;
                }
                if self.node_birth.is_none() {
                    out.errors.push("data_before_birth");
                    self.request_rebirth(&mut out, arrival_ns);
                    return out;
                }
                let expected = self.last_seq.map(|s| (s + 1) % 256);
                if payload.seq.is_none() || payload.seq != expected {
                    out.errors.push("sequence_gap");
                    self.request_rebirth(&mut out, arrival_ns);
                    return out;
                }
                self.last_seq = payload.seq;
                match kind {
                    Kind::DBirth if ours => {
                        self.device_birth = Some(Birth::from_metrics(&payload.metrics));
                        out.samples = self.samples(payload, false, arrival_ns).unwrap_or_default();
                    }
                    // A device that was not born has reported nothing to withdraw.
                    Kind::DDeath if ours && self.device_birth.take().is_some() => {
                        out.samples = self.all_bad("the device went offline (DDEATH)", arrival_ns);
                    }
                    Kind::NData | Kind::DData if ours => {
                        let born = if self.device.is_some() {
                            self.device_birth.is_some()
                        } else {
                            self.node_birth.is_some()
                        };
                        if !born {
                            out.errors.push("data_before_birth");
                            self.request_rebirth(&mut out, arrival_ns);
                            return out;
                        }
                        match self.samples(payload, true, arrival_ns) {
                            Some(samples) => out.samples = samples,
                            None => {
                                out.errors.push("unknown_alias");
                                self.request_rebirth(&mut out, arrival_ns);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    fn request_rebirth(&mut self, out: &mut Outcome, now_ns: i64) {
        if self.awaiting_rebirth.is_none() {
            self.awaiting_rebirth = Some(now_ns);
            out.rebirth = true;
        }
    }

    /// The message's kind and device id, when it is a state message of this node.
    fn parse_topic<'t>(&self, topic: &'t str) -> Option<(Kind, Option<&'t str>)> {
        let mut parts = topic.split('/');
        if parts.next() != Some("spBv1.0") || parts.next() != Some(self.group.as_str()) {
            return None;
        }
        let kind = parts.next()?;
        if parts.next() != Some(self.node.as_str()) {
            return None;
        }
        let device = parts.next();
        if parts.next().is_some() {
            return None;
        }
        let kind = match (kind, device.is_some()) {
            ("NBIRTH", false) => Kind::NBirth,
            ("NDATA", false) => Kind::NData,
            ("NDEATH", false) => Kind::NDeath,
            ("DBIRTH", true) => Kind::DBirth,
            ("DDATA", true) => Kind::DData,
            ("DDEATH", true) => Kind::DDeath,
            // Commands and anything else carry no state of the node.
            _ => return None,
        };
        Some((kind, device))
    }

    fn birth(&self) -> Option<&Birth> {
        if self.device.is_some() {
            self.device_birth.as_ref()
        } else {
            self.node_birth.as_ref()
        }
    }

    /// Samples of the tags among `payload`'s metrics. With `strict`, `None` when a metric is
    /// unknown to the birth (the caller asks for a rebirth).
    fn samples(&self, payload: &Payload, strict: bool, arrival_ns: i64) -> Option<Vec<Sample>> {
        let birth = self.birth()?;
        let mut samples = Vec::new();
        for m in &payload.metrics {
            let Some((name, dt)) = birth.resolve(m) else {
                if strict {
                    return None;
                }
                continue;
            };
            let ts = m
                .timestamp
                .or(payload.timestamp)
                .and_then(|ms| i64::try_from(ms).ok()?.checked_mul(1_000_000))
                .unwrap_or(arrival_ns);
            for tag in self.tags.iter().filter(|t| t.address == name) {
                samples.push(match metric_value(m, dt).and_then(|v| convert(tag, v)) {
                    Ok(value) => Sample::good(&tag.name, value, ts),
                    Err((reason, detail)) => {
                        Sample::bad(&tag.name, Quality::bad(reason, detail), ts)
                    }
                });
            }
        }
        Some(samples)
    }

    fn all_bad(&self, detail: &str, at_ns: i64) -> Vec<Sample> {
        self.tags
            .iter()
            .map(|t| {
                Sample::bad(
                    &t.name,
                    Quality::bad(QualityReason::CommFailure, detail),
                    at_ns,
                )
            })
            .collect()
    }
}

impl Node {
    /// The command writing `value` to metric `name`: its topic (DCMD to the device, NCMD to
    /// the node) and payload, typed by the metric's datatype from the birth. `Err` when the
    /// node or device is offline, or the value does not fit the datatype.
    pub fn command(
        &self,
        name: &str,
        value: &Value,
        now_ms: u64,
    ) -> crate::Result<(String, Payload)> {
        let birth = self
            .birth()
            .filter(|_| self.node_birth.is_some())
            .ok_or(crate::Error::Offline)?;
        let dt = *birth
            .datatypes
            .get(name)
            .ok_or_else(|| crate::Error::UnknownMetric {
                metric: name.to_string(),
            })?;
        let topic = match &self.device {
            Some(d) => format!("spBv1.0/{}/DCMD/{}/{d}", self.group, self.node),
            None => self.ncmd_topic(),
        };
        let payload = Payload {
            timestamp: Some(now_ms),
            metrics: vec![Metric {
                name: Some(name.to_string()),
                timestamp: Some(now_ms),
                datatype: Some(dt),
                value: Some(encode(dt, value)?),
                ..Default::default()
            }],
            ..Default::default()
        };
        Ok((topic, payload))
    }
}

/// `value` as a metric value of datatype `dt`.
fn encode(dt: u32, value: &Value) -> crate::Result<metric::Value> {
    use crate::Error;
    use metric::Value as V;
    let whole = |min: i128, max: i128| -> crate::Result<i128> {
        let i = match value {
            Value::I64(v) => i128::from(*v),
            Value::U64(v) => i128::from(*v),
            Value::Bool(b) => i128::from(*b),
            Value::F64(x) if x.fract() == 0.0 && x.is_finite() => *x as i128,
            other => return Err(Error::value(format_args!("{other} is not a whole number"))),
        };
        if i < min || i > max {
            return Err(Error::value(format_args!(
                "{i} does not fit Sparkplug datatype {dt}"
            )));
        }
        Ok(i)
    };
    Ok(match dt {
        datatype::INT8 => V::IntValue(whole(-128, 127)? as i32 as u32),
        datatype::INT16 => V::IntValue(whole(-32768, 32767)? as i32 as u32),
        datatype::INT32 => V::IntValue(whole(i32::MIN.into(), i32::MAX.into())? as i32 as u32),
        datatype::INT64 => V::LongValue(whole(i64::MIN.into(), i64::MAX.into())? as i64 as u64),
        datatype::UINT8 => V::IntValue(whole(0, 255)? as u32),
        datatype::UINT16 => V::IntValue(whole(0, 65535)? as u32),
        datatype::UINT32 => V::IntValue(whole(0, u32::MAX.into())? as u32),
        datatype::UINT64 | datatype::DATETIME => V::LongValue(whole(0, u64::MAX.into())? as u64),
        datatype::FLOAT | datatype::DOUBLE => {
            let x = value
                .as_f64()
                .filter(|x| x.is_finite() && !matches!(value, Value::Bool(_)))
                .ok_or_else(|| Error::value(format_args!("{value} is not a finite number")))?;
            if dt == datatype::FLOAT {
                V::FloatValue(x as f32)
            } else {
                V::DoubleValue(x)
            }
        }
        datatype::BOOLEAN => match value {
            Value::Bool(b) => V::BooleanValue(*b),
            _ => V::BooleanValue(whole(0, 1)? == 1),
        },
        datatype::STRING | datatype::TEXT | datatype::UUID => match value {
            Value::String(s) => V::StringValue(s.clone()),
            other => return Err(Error::value(format_args!("{other} is not a string"))),
        },
        other => {
            return Err(Error::value(format_args!(
                "writing Sparkplug datatype {other} is not supported"
            )));
        }
    })
}

fn bd_seq(payload: &Payload) -> Option<u64> {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| match m.value {
            Some(metric::Value::LongValue(v)) => Some(v),
            Some(metric::Value::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

/// A metric's value read by its datatype.
fn metric_value(m: &Metric, dt: u32) -> Result<Value, (QualityReason, String)> {
    use metric::Value as V;
    if m.is_null == Some(true) {
        return Err((QualityReason::DecodeError, "the metric is null".into()));
    }
    let bad = |what: &str| Err((QualityReason::DecodeError, what.to_string()));
    match (dt, &m.value) {
        // Signed values travel as two's complement in the unsigned fields.
        (datatype::INT8, Some(V::IntValue(v))) => Ok(Value::I64(i64::from(*v as u8 as i8))),
        (datatype::INT16, Some(V::IntValue(v))) => Ok(Value::I64(i64::from(*v as u16 as i16))),
        (datatype::INT32, Some(V::IntValue(v))) => Ok(Value::I64(i64::from(*v as i32))),
        (datatype::INT64, Some(V::LongValue(v))) => Ok(Value::I64(*v as i64)),
        (datatype::UINT8 | datatype::UINT16 | datatype::UINT32, Some(V::IntValue(v))) => {
            Ok(Value::U64(u64::from(*v)))
        }
        (datatype::UINT32 | datatype::UINT64, Some(V::LongValue(v))) => Ok(Value::U64(*v)),
        (datatype::DATETIME, Some(V::LongValue(v))) => Ok(Value::U64(*v)),
        (datatype::FLOAT, Some(V::FloatValue(v))) => {
            // Through the decimal text, so 21.5f32 stays 21.5 and 0.1f32 stays 0.1.
            Ok(Value::F64(
                v.to_string().parse::<f64>().unwrap_or(f64::from(*v)),
            ))
        }
        (datatype::DOUBLE, Some(V::DoubleValue(v))) => Ok(Value::F64(*v)),
        (datatype::BOOLEAN, Some(V::BooleanValue(v))) => Ok(Value::Bool(*v)),
        (datatype::STRING | datatype::TEXT | datatype::UUID, Some(V::StringValue(v))) => {
            Ok(Value::String(v.clone()))
        }
        (_, None) => bad("the metric carries no value"),
        (dt, Some(_)) => Err((
            QualityReason::DecodeError,
            format!("datatype {dt} with this value is not supported"),
        )),
    }
}

fn convert(tag: &ResolvedValueTag, value: Value) -> Result<Value, (QualityReason, String)> {
    tag.convert(value).map_err(|e| {
        let reason = match e {
            fieldline_core::Error::OutOfRange(_) => QualityReason::OutOfRange,
            _ => QualityReason::DecodeError,
        };
        (reason, e.to_string())
    })
}

/// The NCMD payload asking a node to publish its births again.
pub fn rebirth_payload(now_ms: u64) -> Payload {
    Payload {
        timestamp: Some(now_ms),
        metrics: vec![Metric {
            name: Some(REBIRTH_METRIC.to_string()),
            timestamp: Some(now_ms),
            datatype: Some(datatype::BOOLEAN),
            value: Some(metric::Value::BooleanValue(true)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_core::config::TagConfig;

    fn tag(name: &str, metric: &str, ty: &str) -> ResolvedValueTag {
        let t: TagConfig = serde_json::from_value(
            serde_json::json!({ "name": name, "address": metric, "type": ty }),
        )
        .unwrap();
        t.resolve_value().unwrap()
    }

    fn tags() -> Vec<ResolvedValueTag> {
        vec![
            tag("speed", "Spindle/Speed", "f64"),
            tag("temp", "Temp", "i16"),
            tag("running", "Running", "bool"),
        ]
    }

    fn m(name: Option<&str>, alias: u64, dt: u32, v: Option<metric::Value>) -> Metric {
        Metric {
            name: name.map(str::to_string),
            alias: Some(alias),
            datatype: Some(dt),
            value: v,
            ..Default::default()
        }
    }

    fn bd(v: u64) -> Metric {
        Metric {
            name: Some("bdSeq".into()),
            datatype: Some(datatype::INT64),
            value: Some(metric::Value::LongValue(v)),
            ..Default::default()
        }
    }

    fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Payload {
        Payload {
            timestamp: Some(1_000),
            seq,
            metrics,
            ..Default::default()
        }
    }

    use metric::Value as V;

    fn dbirth_metrics() -> Vec<Metric> {
        vec![
            m(
                Some("Spindle/Speed"),
                1,
                datatype::DOUBLE,
                Some(V::DoubleValue(10.5)),
            ),
            m(Some("Temp"), 2, datatype::INT16, Some(V::IntValue(0xFFFF))),
            m(
                Some("Running"),
                3,
                datatype::BOOLEAN,
                Some(V::BooleanValue(true)),
            ),
        ]
    }

    /// A node `n` of group `g` with device `d`, born with bdSeq 7, seq 0 (NBIRTH), 1 (DBIRTH).
    fn born() -> (Node, Outcome) {
        let mut n = Node::new("g", "n", Some("d"), tags());
        let out = n.handle(
            "spBv1.0/g/NBIRTH/n",
            Some(&payload(Some(0), vec![bd(7)])),
            5,
        );
        assert_eq!(out, Outcome::default());
        let out = n.handle(
            "spBv1.0/g/DBIRTH/n/d",
            Some(&payload(Some(1), dbirth_metrics())),
            5,
        );
        (n, out)
    }

    fn values(out: &Outcome) -> Vec<(String, Option<Value>)> {
        out.samples
            .iter()
            .map(|s| (s.tag.clone(), s.value.clone()))
            .collect()
    }

    #[test]
    fn births_report_current_values_and_data_maps_aliases() {
        let (mut n, out) = born();
        assert_eq!(
            values(&out),
            vec![
                ("speed".into(), Some(Value::F64(10.5))),
                ("temp".into(), Some(Value::I64(-1))),
                ("running".into(), Some(Value::Bool(true))),
            ]
        );
        assert!(out.samples.iter().all(|s| s.timestamp_ns == 1_000_000_000));
        let mut data = payload(
            Some(2),
            vec![m(None, 2, datatype::INT16, Some(V::IntValue(250)))],
        );
        data.metrics[0].datatype = None;
        data.metrics[0].timestamp = Some(2_000);
        let out = n.handle("spBv1.0/g/DDATA/n/d", Some(&data), 5);
        assert_eq!(values(&out), vec![("temp".into(), Some(Value::I64(250)))]);
        assert_eq!(out.samples[0].timestamp_ns, 2_000_000_000);
        assert!(!out.rebirth);
    }

    #[test]
    fn sequence_wraps_after_255() {
        let mut n = Node::new("g", "n", None, tags());
        n.handle(
            "spBv1.0/g/NBIRTH/n",
            Some(&payload(
                Some(254),
                vec![
                    bd(1),
                    m(Some("Temp"), 2, datatype::INT16, Some(V::IntValue(1))),
                ],
            )),
            0,
        );
        for seq in [255, 0, 1] {
            let out = n.handle(
                "spBv1.0/g/NDATA/n",
                Some(&payload(
                    Some(seq),
                    vec![m(None, 2, datatype::INT16, Some(V::IntValue(seq as u32)))],
                )),
                0,
            );
            assert!(!out.rebirth, "seq {seq}");
            assert_eq!(out.samples.len(), 1);
        }
    }

    #[test]
    fn a_gap_asks_for_one_rebirth_and_data_is_ignored_until_the_new_birth() {
        let (mut n, _) = born();
        let data = |seq| {
            payload(
                Some(seq),
                vec![m(None, 1, datatype::DOUBLE, Some(V::DoubleValue(1.0)))],
            )
        };
        let out = n.handle("spBv1.0/g/DDATA/n/d", Some(&data(5)), 0);
        assert!(out.rebirth);
        assert_eq!(out.errors, vec!["sequence_gap"]);
        assert!(out.samples.is_empty());
        // Further data (even in sequence) is ignored and does not ask again.
        for seq in [6, 7] {
            let out = n.handle("spBv1.0/g/DDATA/n/d", Some(&data(seq)), 0);
            assert_eq!(out, Outcome::default());
        }
        assert!(n.awaiting_rebirth());
        let out = n.handle(
            "spBv1.0/g/NBIRTH/n",
            Some(&payload(Some(0), vec![bd(8)])),
            0,
        );
        assert!(out.samples.is_empty());
        // The node must be followed by the device's birth before its data counts.
        let out = n.handle("spBv1.0/g/DDATA/n/d", Some(&data(1)), 0);
        assert!(out.rebirth);
        assert_eq!(out.errors, vec!["data_before_birth"]);
        n.handle(
            "spBv1.0/g/NBIRTH/n",
            Some(&payload(Some(0), vec![bd(9)])),
            0,
        );
        let out = n.handle(
            "spBv1.0/g/DBIRTH/n/d",
            Some(&payload(Some(1), dbirth_metrics())),
            0,
        );
        assert_eq!(out.samples.len(), 3);
        let out = n.handle("spBv1.0/g/DDATA/n/d", Some(&data(2)), 0);
        assert_eq!(values(&out), vec![("speed".into(), Some(Value::F64(1.0)))]);
    }

    #[test]
    fn the_request_is_repeated_while_data_comes_without_a_birth() {
        let mut n = Node::new("g", "n", None, tags());
        assert!(n.subscribed(0));
        assert!(!n.subscribed(1), "asked already");
        let data = payload(Some(3), vec![]);
        assert!(
            !n.handle("spBv1.0/g/NDATA/n", Some(&data), REBIRTH_RETRY - 1)
                .rebirth
        );
        assert!(
            n.handle("spBv1.0/g/NDATA/n", Some(&data), REBIRTH_RETRY)
                .rebirth
        );
        assert!(
            !n.handle("spBv1.0/g/NDATA/n", Some(&data), REBIRTH_RETRY + 1)
                .rebirth
        );
        n.handle(
            "spBv1.0/g/NBIRTH/n",
            Some(&payload(Some(0), vec![bd(1)])),
            0,
        );
        assert!(!n.subscribed(0), "born: nothing to ask");
    }

    #[test]
    fn data_before_any_birth_asks_for_a_rebirth() {
        let mut n = Node::new("g", "n", None, tags());
        let out = n.handle("spBv1.0/g/NDATA/n", Some(&payload(Some(3), vec![])), 0);
        assert!(out.rebirth);
        assert_eq!(out.errors, vec!["data_before_birth"]);
        assert!(!n.online());
    }

    #[test]
    fn an_unknown_alias_asks_for_a_rebirth() {
        let (mut n, _) = born();
        let out = n.handle(
            "spBv1.0/g/DDATA/n/d",
            Some(&payload(
                Some(2),
                vec![m(None, 99, datatype::DOUBLE, Some(V::DoubleValue(1.0)))],
            )),
            0,
        );
        assert!(out.rebirth);
        assert_eq!(out.errors, vec!["unknown_alias"]);
        assert!(out.samples.is_empty());
    }

    #[test]
    fn deaths_make_tags_bad_and_a_stale_ndeath_is_ignored() {
        let (mut n, _) = born();
        let out = n.handle("spBv1.0/g/NDEATH/n", Some(&payload(None, vec![bd(6)])), 9);
        assert_eq!(out.errors, vec!["stale_death"]);
        assert!(out.samples.is_empty());
        let out = n.handle("spBv1.0/g/DDEATH/n/d", Some(&payload(Some(2), vec![])), 9);
        assert_eq!(out.samples.len(), 3);
        for s in &out.samples {
            assert!(matches!(
                s.quality,
                Quality::Bad {
                    reason: QualityReason::CommFailure,
                    ..
                }
            ));
            assert_eq!(s.value, None);
            assert_eq!(s.timestamp_ns, 9);
        }
        let (mut n, _) = born();
        let out = n.handle("spBv1.0/g/NDEATH/n", Some(&payload(None, vec![bd(7)])), 9);
        assert_eq!(out.samples.len(), 3);
        assert!(out.samples.iter().all(|s| s.quality.is_bad()));
        assert!(!n.online());
    }

    #[test]
    fn other_devices_advance_the_sequence_but_report_nothing() {
        let (mut n, _) = born();
        let out = n.handle(
            "spBv1.0/g/DBIRTH/n/other",
            Some(&payload(Some(2), dbirth_metrics())),
            0,
        );
        assert_eq!(out, Outcome::default());
        let out = n.handle(
            "spBv1.0/g/DDATA/n/other",
            Some(&payload(
                Some(3),
                vec![m(None, 1, datatype::DOUBLE, Some(V::DoubleValue(3.0)))],
            )),
            0,
        );
        assert_eq!(out, Outcome::default());
        let out = n.handle(
            "spBv1.0/g/DDATA/n/d",
            Some(&payload(
                Some(4),
                vec![m(None, 1, datatype::DOUBLE, Some(V::DoubleValue(3.0)))],
            )),
            0,
        );
        assert_eq!(values(&out), vec![("speed".into(), Some(Value::F64(3.0)))]);
        // Other groups, nodes and commands are not ours.
        assert_eq!(n.handle("spBv1.0/g/NCMD/n", None, 0), Outcome::default());
        assert_eq!(n.handle("spBv1.0/h/NDATA/n", None, 0), Outcome::default());
    }

    #[test]
    fn null_wrong_typed_and_out_of_range_metrics_are_bad() {
        let (mut n, _) = born();
        let mut null = m(None, 1, datatype::DOUBLE, None);
        null.is_null = Some(true);
        let out = n.handle(
            "spBv1.0/g/DDATA/n/d",
            Some(&payload(
                Some(2),
                vec![
                    null,
                    m(None, 2, datatype::INT16, Some(V::StringValue("hot".into()))),
                    m(None, 3, datatype::BOOLEAN, Some(V::IntValue(1))),
                ],
            )),
            0,
        );
        assert_eq!(out.samples.len(), 3);
        assert!(
            out.samples
                .iter()
                .all(|s| s.value.is_none() && s.quality.is_bad())
        );
        // An i16 tag fed an Int32 metric outside its range.
        let out = n.handle(
            "spBv1.0/g/DDATA/n/d",
            Some(&payload(
                Some(3),
                vec![m(None, 2, datatype::INT32, Some(V::IntValue(70_000)))],
            )),
            0,
        );
        assert!(matches!(
            out.samples[0].quality,
            Quality::Bad {
                reason: QualityReason::OutOfRange,
                ..
            }
        ));
    }

    #[test]
    fn an_undecodable_payload_asks_for_a_rebirth() {
        let (mut n, _) = born();
        let out = n.handle("spBv1.0/g/DDATA/n/d", None, 0);
        assert!(out.rebirth);
        assert_eq!(out.errors, vec!["payload_protobuf"]);
    }

    #[test]
    fn commands_are_typed_by_the_birth_and_go_to_the_device_or_node() {
        let mut n = Node::new("g", "n", Some("d"), tags());
        assert!(n.command("Temp", &Value::I64(1), 1).is_err(), "offline");
        let (mut n, _) = {
            n.handle(
                "spBv1.0/g/NBIRTH/n",
                Some(&payload(Some(0), vec![bd(1)])),
                0,
            );
            let out = n.handle(
                "spBv1.0/g/DBIRTH/n/d",
                Some(&payload(Some(1), dbirth_metrics())),
                0,
            );
            (n, out)
        };
        let (topic, p) = n.command("Temp", &Value::I64(-2), 7).unwrap();
        assert_eq!(topic, "spBv1.0/g/DCMD/n/d");
        assert_eq!(p.metrics[0].name.as_deref(), Some("Temp"));
        assert_eq!(p.metrics[0].datatype, Some(datatype::INT16));
        assert_eq!(p.metrics[0].value, Some(V::IntValue(0xFFFF_FFFE)));
        let (_, p) = n.command("Spindle/Speed", &Value::F64(2.5), 7).unwrap();
        assert_eq!(p.metrics[0].value, Some(V::DoubleValue(2.5)));
        let (_, p) = n.command("Running", &Value::Bool(false), 7).unwrap();
        assert_eq!(p.metrics[0].value, Some(V::BooleanValue(false)));
        assert!(n.command("Temp", &Value::I64(40_000), 7).is_err());
        assert!(n.command("Temp", &Value::F64(1.5), 7).is_err());
        assert!(n.command("Nope", &Value::I64(1), 7).is_err());
        n.handle("spBv1.0/g/DDEATH/n/d", Some(&payload(Some(2), vec![])), 0);
        assert!(
            n.command("Temp", &Value::I64(1), 7).is_err(),
            "device offline"
        );
        let mut node_only = Node::new("g", "n", None, tags());
        node_only.handle(
            "spBv1.0/g/NBIRTH/n",
            Some(&payload(
                Some(0),
                vec![m(Some("Temp"), 2, datatype::UINT8, Some(V::IntValue(1)))],
            )),
            0,
        );
        let (topic, p) = node_only.command("Temp", &Value::U64(200), 7).unwrap();
        assert_eq!(topic, "spBv1.0/g/NCMD/n");
        assert_eq!(p.metrics[0].value, Some(V::IntValue(200)));
    }

    #[test]
    fn the_rebirth_request_is_a_boolean_node_control_metric() {
        let p = rebirth_payload(42);
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
        assert_eq!(p.metrics[0].datatype, Some(datatype::BOOLEAN));
        assert_eq!(p.metrics[0].value, Some(V::BooleanValue(true)));
        let n = Node::new("g", "n", None, vec![]);
        assert_eq!(n.ncmd_topic(), "spBv1.0/g/NCMD/n");
        assert_eq!(n.filter(), "spBv1.0/g/+/n/#");
    }

    proptest::proptest! {
        /// Any bytes on any of the node's topics, in any order: no panic, and every sample is
        /// Good exactly when it carries a value.
        #[test]
        fn any_message_sequence_is_handled(
            messages in proptest::collection::vec(
                (0usize..8, proptest::collection::vec(proptest::num::u8::ANY, 0..64)),
                0..20,
            )
        ) {
            use prost::Message;
            let topics = [
                "spBv1.0/g/NBIRTH/n", "spBv1.0/g/NDATA/n", "spBv1.0/g/NDEATH/n",
                "spBv1.0/g/DBIRTH/n/d", "spBv1.0/g/DDATA/n/d", "spBv1.0/g/DDEATH/n/d",
                "spBv1.0/g/NCMD/n", "spBv1.0/g/DDATA/n/other",
            ];
            let mut n = Node::new("g", "n", Some("d"), tags());
            for (i, (topic, bytes)) in messages.iter().enumerate() {
                let decoded = Payload::decode(bytes.as_slice()).ok();
                let out = n.handle(topics[*topic], decoded.as_ref(), i as i64);
                for s in out.samples {
                    proptest::prop_assert_eq!(s.value.is_some(), s.quality.is_good());
                }
            }
        }
    }
}
