//! Conversions between wire messages and core types. Incoming messages are outside input:
//! anything the core model cannot represent is an error, never a default.

use fieldline_core::{
    Quality, QualityReason, Sample, SampleBatch, Value,
    records::{AlarmStatus, CommandAudit, CommandStatus, DeviceProgress},
};

use crate::{Error, v1};

impl From<Value> for v1::Value {
    fn from(v: Value) -> Self {
        use v1::value::Kind;
        let kind = match v {
            Value::Bool(b) => Kind::BoolValue(b),
            Value::I64(i) => Kind::IntValue(i),
            Value::U64(u) => Kind::UintValue(u),
            Value::F64(f) => Kind::DoubleValue(f),
            Value::String(s) => Kind::StringValue(s),
        };
        v1::Value { kind: Some(kind) }
    }
}

impl TryFrom<v1::Value> for Value {
    type Error = Error;

    fn try_from(v: v1::Value) -> Result<Self, Error> {
        use v1::value::Kind;
        Ok(match v.kind {
            Some(Kind::BoolValue(b)) => Value::Bool(b),
            Some(Kind::IntValue(i)) => Value::I64(i),
            Some(Kind::UintValue(u)) => Value::U64(u),
            Some(Kind::DoubleValue(f)) => Value::F64(f),
            Some(Kind::StringValue(s)) => Value::String(s),
            None => return Err(Error::NoValueKind),
        })
    }
}

fn reason_to_wire(reason: QualityReason) -> (v1::QualityReason, u32) {
    match reason {
        QualityReason::CommFailure => (v1::QualityReason::CommFailure, 0),
        QualityReason::DeviceException(code) => {
            (v1::QualityReason::DeviceException, u32::from(code))
        }
        QualityReason::DecodeError => (v1::QualityReason::DecodeError, 0),
        QualityReason::OutOfRange => (v1::QualityReason::OutOfRange, 0),
        QualityReason::Stale => (v1::QualityReason::Stale, 0),
        QualityReason::Processing => (v1::QualityReason::Processing, 0),
    }
}

fn reason_from_wire(q: &v1::Quality) -> Result<QualityReason, Error> {
    Ok(match v1::QualityReason::try_from(q.reason) {
        Ok(v1::QualityReason::CommFailure) => QualityReason::CommFailure,
        Ok(v1::QualityReason::DeviceException) => QualityReason::DeviceException(
            u8::try_from(q.exception_code).map_err(|_| Error::ExceptionCode(q.exception_code))?,
        ),
        Ok(v1::QualityReason::DecodeError) => QualityReason::DecodeError,
        Ok(v1::QualityReason::OutOfRange) => QualityReason::OutOfRange,
        Ok(v1::QualityReason::Stale) => QualityReason::Stale,
        Ok(v1::QualityReason::Processing) => QualityReason::Processing,
        Ok(v1::QualityReason::Unspecified) | Err(_) => {
            return Err(Error::QualityReason(q.reason));
        }
    })
}

impl From<Quality> for v1::Quality {
    fn from(q: Quality) -> Self {
        let (status, reason, detail) = match q {
            Quality::Good => (v1::QualityStatus::Good, None, String::new()),
            Quality::Uncertain { reason, detail } => {
                (v1::QualityStatus::Uncertain, Some(reason), detail)
            }
            Quality::Bad { reason, detail } => (v1::QualityStatus::Bad, Some(reason), detail),
        };
        let (reason, exception_code) = reason
            .map(reason_to_wire)
            .unwrap_or((v1::QualityReason::Unspecified, 0));
        v1::Quality {
            status: status as i32,
            reason: reason as i32,
            exception_code,
            detail,
        }
    }
}

impl TryFrom<v1::Quality> for Quality {
    type Error = Error;

    fn try_from(q: v1::Quality) -> Result<Self, Error> {
        match v1::QualityStatus::try_from(q.status) {
            Ok(v1::QualityStatus::Good) => Ok(Quality::Good),
            Ok(v1::QualityStatus::Uncertain) => Ok(Quality::Uncertain {
                reason: reason_from_wire(&q)?,
                detail: q.detail,
            }),
            Ok(v1::QualityStatus::Bad) => Ok(Quality::Bad {
                reason: reason_from_wire(&q)?,
                detail: q.detail,
            }),
            Ok(v1::QualityStatus::Unspecified) | Err(_) => Err(Error::QualityStatus(q.status)),
        }
    }
}

impl From<Sample> for v1::Sample {
    fn from(s: Sample) -> Self {
        v1::Sample {
            tag: s.tag,
            value: s.value.map(Into::into),
            quality: Some(s.quality.into()),
            timestamp_ns: s.timestamp_ns,
            server_timestamp_ns: s.server_timestamp_ns,
        }
    }
}

impl TryFrom<v1::Sample> for Sample {
    type Error = Error;

    fn try_from(s: v1::Sample) -> Result<Self, Error> {
        let err = |problem: Error| Error::Sample {
            tag: s.tag.clone(),
            problem: Box::new(problem),
        };
        let quality: Quality = s
            .quality
            .clone()
            .ok_or(Error::NoQuality)
            .and_then(Quality::try_from)
            .map_err(err)?;
        let value = match s.value.clone() {
            Some(v) => Some(Value::try_from(v).map_err(err)?),
            None => None,
        };
        match (&value, &quality) {
            (Some(_), Quality::Bad { .. }) => return Err(err(Error::BadWithValue)),
            (None, Quality::Good | Quality::Uncertain { .. }) => {
                return Err(err(Error::NoValue));
            }
            _ => {}
        }
        if let Some(Value::F64(f)) = &value
            && !f.is_finite()
        {
            return Err(err(Error::NotFinite(*f)));
        }
        Ok(Sample {
            tag: s.tag,
            value,
            quality,
            timestamp_ns: s.timestamp_ns,
            server_timestamp_ns: s.server_timestamp_ns,
        })
    }
}

impl From<SampleBatch> for v1::SampleBatch {
    fn from(b: SampleBatch) -> Self {
        v1::SampleBatch {
            line: b.line,
            device: b.device,
            adapter_id: b.adapter_id,
            sequence: b.sequence,
            samples: b.samples.into_iter().map(Into::into).collect(),
            previous_sequence: 0,
        }
    }
}

impl TryFrom<v1::SampleBatch> for SampleBatch {
    type Error = Error;

    fn try_from(b: v1::SampleBatch) -> Result<Self, Error> {
        for (what, name) in [("line", &b.line), ("device", &b.device)] {
            if let Some(problem) = fieldline_core::names::name_problem(name) {
                return Err(Error::BatchName {
                    what,
                    problem: problem.to_string(),
                });
            }
        }
        let samples = b
            .samples
            .into_iter()
            .map(Sample::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        for s in &samples {
            if let Some(problem) = fieldline_core::names::name_problem(&s.tag) {
                return Err(Error::Sample {
                    tag: s.tag.clone(),
                    problem: Box::new(Error::TagName(problem.to_string())),
                });
            }
        }
        Ok(SampleBatch {
            line: b.line,
            device: b.device,
            adapter_id: b.adapter_id,
            sequence: b.sequence,
            samples,
        })
    }
}

impl From<fieldline_core::alarm::AlarmState> for v1::AlarmState {
    fn from(s: fieldline_core::alarm::AlarmState) -> Self {
        use fieldline_core::alarm::AlarmState as S;
        match s {
            S::Normal => v1::AlarmState::Normal,
            S::UnackedActive => v1::AlarmState::UnackedActive,
            S::AckedActive => v1::AlarmState::AckedActive,
            S::ReturnedUnacked => v1::AlarmState::ReturnedUnacked,
            S::Shelved => v1::AlarmState::Shelved,
            S::OutOfService => v1::AlarmState::OutOfService,
        }
    }
}

impl TryFrom<v1::AlarmState> for fieldline_core::alarm::AlarmState {
    type Error = crate::Error;

    fn try_from(s: v1::AlarmState) -> Result<Self, crate::Error> {
        use fieldline_core::alarm::AlarmState as S;
        match s {
            v1::AlarmState::Unspecified => Err(crate::Error::Unspecified("alarm state")),
            v1::AlarmState::Normal => Ok(S::Normal),
            v1::AlarmState::UnackedActive => Ok(S::UnackedActive),
            v1::AlarmState::AckedActive => Ok(S::AckedActive),
            v1::AlarmState::ReturnedUnacked => Ok(S::ReturnedUnacked),
            v1::AlarmState::Shelved => Ok(S::Shelved),
            v1::AlarmState::OutOfService => Ok(S::OutOfService),
        }
    }
}

impl From<CommandStatus> for v1::CommandStatus {
    /// The result a `CommandResult` reports; a request still under way has none.
    fn from(s: CommandStatus) -> Self {
        match s {
            CommandStatus::Requested | CommandStatus::Accepted => v1::CommandStatus::Unspecified,
            CommandStatus::Written | CommandStatus::Verified => v1::CommandStatus::Written,
            CommandStatus::Rejected => v1::CommandStatus::Rejected,
            CommandStatus::Failed => v1::CommandStatus::Failed,
            CommandStatus::ReadbackMismatch => v1::CommandStatus::ReadbackMismatch,
        }
    }
}

impl From<CommandStatus> for v1::AuditStatus {
    fn from(s: CommandStatus) -> Self {
        match s {
            CommandStatus::Requested => v1::AuditStatus::Requested,
            CommandStatus::Accepted => v1::AuditStatus::Accepted,
            CommandStatus::Written => v1::AuditStatus::Written,
            CommandStatus::Verified => v1::AuditStatus::Verified,
            CommandStatus::Rejected => v1::AuditStatus::Rejected,
            CommandStatus::Failed => v1::AuditStatus::Failed,
            CommandStatus::ReadbackMismatch => v1::AuditStatus::ReadbackMismatch,
        }
    }
}

impl TryFrom<v1::AuditStatus> for CommandStatus {
    type Error = Error;

    fn try_from(s: v1::AuditStatus) -> Result<Self, Error> {
        Ok(match s {
            v1::AuditStatus::Unspecified => return Err(Error::Unspecified("audit status")),
            v1::AuditStatus::Requested => CommandStatus::Requested,
            v1::AuditStatus::Accepted => CommandStatus::Accepted,
            v1::AuditStatus::Written => CommandStatus::Written,
            v1::AuditStatus::Verified => CommandStatus::Verified,
            v1::AuditStatus::Rejected => CommandStatus::Rejected,
            v1::AuditStatus::Failed => CommandStatus::Failed,
            v1::AuditStatus::ReadbackMismatch => CommandStatus::ReadbackMismatch,
        })
    }
}

/// An enum field as its wire number says, refusing numbers this version does not know.
fn known<W, T>(number: i32, what: &'static str) -> Result<T, Error>
where
    W: TryFrom<i32>,
    T: TryFrom<W, Error = Error>,
{
    W::try_from(number)
        .map_err(|_| Error::Unspecified(what))
        .and_then(T::try_from)
}

/// Empty text for none.
fn some_text(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// 0 for none.
fn some_ns(ns: i64) -> Option<i64> {
    (ns != 0).then_some(ns)
}

fn some_value(v: Option<v1::Value>) -> Result<Option<Value>, Error> {
    v.map(Value::try_from).transpose()
}

impl From<&AlarmStatus> for v1::AlarmStatus {
    fn from(s: &AlarmStatus) -> Self {
        v1::AlarmStatus {
            alarm_id: s.alarm_id.clone(),
            device: s.device.clone(),
            tag: s.tag.clone(),
            kind: s.kind.clone(),
            priority: s.priority,
            state: v1::AlarmState::from(s.state) as i32,
            active: s.active,
            acked: s.acked,
            shelved_until_ns: s.shelved_until_ns.unwrap_or(0),
            value: s.value.clone().map(Into::into),
            message: s.message.clone(),
            last_seq: s.last_seq,
            changed_ns: s.changed_ns,
            snapshot: s.snapshot.clone().unwrap_or_default(),
        }
    }
}

/// An alarm's state as `line`'s record.
pub fn alarm_status(line: &str, w: v1::AlarmStatus) -> Result<AlarmStatus, Error> {
    Ok(AlarmStatus {
        line: line.to_string(),
        state: known::<v1::AlarmState, _>(w.state, "alarm state")?,
        value: some_value(w.value)?,
        alarm_id: w.alarm_id,
        device: w.device,
        tag: w.tag,
        kind: w.kind,
        priority: w.priority,
        active: w.active,
        acked: w.acked,
        shelved_until_ns: some_ns(w.shelved_until_ns),
        message: w.message,
        last_seq: w.last_seq,
        changed_ns: w.changed_ns,
        snapshot: some_text(w.snapshot),
    })
}

impl From<&CommandAudit> for v1::CommandRecord {
    fn from(c: &CommandAudit) -> Self {
        v1::CommandRecord {
            command_id: c.command_id.clone(),
            device: c.device.clone(),
            tag: c.tag.clone(),
            value: Some(c.value.clone().into()),
            source: c.source.clone(),
            requested_by: c.requested_by.clone(),
            reason: c.reason.clone(),
            deadline_ns: c.deadline_ns,
            requested_ns: c.requested_ns,
            status: v1::AuditStatus::from(c.status) as i32,
            rejected_by: c.rejected_by.clone().unwrap_or_default(),
            old_value: c.old_value.clone().map(Into::into),
            read_back: c.read_back.clone().map(Into::into),
            detail: c.detail.clone().unwrap_or_default(),
            finished_ns: c.finished_ns.unwrap_or(0),
        }
    }
}

/// A write request's audit as `line`'s record.
pub fn command_audit(line: &str, w: v1::CommandRecord) -> Result<CommandAudit, Error> {
    Ok(CommandAudit {
        line: line.to_string(),
        status: known::<v1::AuditStatus, _>(w.status, "audit status")?,
        value: Value::try_from(w.value.ok_or(Error::Missing("command value"))?)?,
        old_value: some_value(w.old_value)?,
        read_back: some_value(w.read_back)?,
        command_id: w.command_id,
        device: w.device,
        tag: w.tag,
        source: w.source,
        requested_by: w.requested_by,
        reason: w.reason,
        deadline_ns: w.deadline_ns,
        requested_ns: w.requested_ns,
        rejected_by: some_text(w.rejected_by),
        detail: some_text(w.detail),
        finished_ns: some_ns(w.finished_ns),
    })
}

impl From<&DeviceProgress> for v1::DeviceProgress {
    fn from(p: &DeviceProgress) -> Self {
        v1::DeviceProgress {
            device: p.device.clone(),
            stored_seq: p.stored_seq,
            updated_ns: p.updated_ns,
            plugin_state: p.plugin_state.clone().unwrap_or_default(),
        }
    }
}

/// A device's stored mark as `line`'s record.
pub fn device_progress(line: &str, w: v1::DeviceProgress) -> DeviceProgress {
    DeviceProgress {
        line: line.to_string(),
        device: w.device,
        stored_seq: w.stored_seq,
        updated_ns: w.updated_ns,
        plugin_state: some_text(w.plugin_state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn batch() -> SampleBatch {
        SampleBatch {
            line: "l1".into(),
            device: "d1".into(),
            adapter_id: "a".into(),
            sequence: 7,
            samples: vec![
                Sample::good("t", Value::F64(1.5), 10),
                Sample::good("i", Value::I64(-3), 10),
                Sample::good("u", Value::U64(u64::MAX), 10),
                Sample::good("b", Value::Bool(true), 10),
                Sample::bad(
                    "x",
                    Quality::bad(QualityReason::DeviceException(2), "illegal data address"),
                    10,
                ),
            ],
        }
    }

    #[test]
    fn batches_round_trip_through_bytes() {
        let bytes = v1::SampleBatch::from(batch()).encode_to_vec();
        let back =
            SampleBatch::try_from(v1::SampleBatch::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, batch());
    }

    #[test]
    fn inconsistent_samples_are_refused() {
        let mut wire = v1::SampleBatch::from(batch());
        wire.samples[0].quality = None;
        assert!(SampleBatch::try_from(wire).is_err());
        let mut wire = v1::SampleBatch::from(batch());
        wire.samples[4].value = Some(Value::I64(0).into());
        assert!(
            SampleBatch::try_from(wire).is_err(),
            "a Bad sample with a value"
        );
        let mut wire = v1::SampleBatch::from(batch());
        wire.samples[0].value = Some(Value::F64(f64::NAN).into());
        assert!(SampleBatch::try_from(wire).is_err());
        let mut wire = v1::SampleBatch::from(batch());
        wire.device = "../etc".into();
        assert!(SampleBatch::try_from(wire).is_err());
    }

    #[test]
    fn refusals_name_the_sample_and_what_is_wrong() {
        let mut wire = v1::SampleBatch::from(batch());
        wire.samples[0].quality = None;
        let refused = SampleBatch::try_from(wire).unwrap_err();
        assert_eq!(refused.to_string(), "sample \"t\": has no quality");
        assert_eq!(refused.kind(), "quality");
        let mut wire = v1::SampleBatch::from(batch());
        wire.samples[0].value = Some(Value::F64(f64::INFINITY).into());
        let refused = SampleBatch::try_from(wire).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "sample \"t\": value inf is not a finite number"
        );
        assert_eq!(refused.kind(), "value");
        let mut wire = v1::SampleBatch::from(batch());
        wire.samples[4].quality = Some(v1::Quality {
            status: 99,
            ..Default::default()
        });
        assert_eq!(
            SampleBatch::try_from(wire).unwrap_err().to_string(),
            "sample \"x\": quality status 99 is not known"
        );
    }

    #[test]
    fn garbage_bytes_do_not_decode_into_a_batch() {
        let garbage = [0xffu8, 0xff, 0xff, 0x01, 0x02];
        let decoded = v1::SampleBatch::decode(garbage.as_slice());
        assert!(decoded.is_err() || SampleBatch::try_from(decoded.unwrap()).is_err());
    }
}
