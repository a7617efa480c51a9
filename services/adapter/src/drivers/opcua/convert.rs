//! OPC UA data values ↔ Fieldline values and qualities. Pure: no session, no socket.

use fieldline_core::{
    config::ResolvedValueTag,
    sample::{Quality, QualityReason, Sample, Value},
    value_type::ValueType,
};
use opcua::types::{DataValue, DateTime, StatusCode, UAString, Variant};

use crate::{Error, Result};

/// OPC UA DateTime ticks (100 ns since 1601-01-01) at the Unix epoch.
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;

/// Nanoseconds since the Unix epoch of an OPC UA time; `None` for the null time.
pub fn unix_ns(t: &DateTime) -> Option<i64> {
    if t.is_null() {
        return None;
    }
    t.ticks()
        .checked_sub(UNIX_EPOCH_TICKS)
        .and_then(|ticks| ticks.checked_mul(100))
}

/// The value a variant holds, when it is a scalar Fieldline can carry.
pub fn from_variant(v: &Variant) -> Result<Value> {
    Ok(match v {
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(x) => Value::I64(i64::from(*x)),
        Variant::Int16(x) => Value::I64(i64::from(*x)),
        Variant::Int32(x) => Value::I64(i64::from(*x)),
        Variant::Int64(x) => Value::I64(*x),
        Variant::Byte(x) => Value::U64(u64::from(*x)),
        Variant::UInt16(x) => Value::U64(u64::from(*x)),
        Variant::UInt32(x) => Value::U64(u64::from(*x)),
        Variant::UInt64(x) => Value::U64(*x),
        Variant::Float(x) => finite(f64::from(*x))?,
        Variant::Double(x) => finite(*x)?,
        Variant::String(s) => match s.value() {
            Some(s) => Value::String(s.clone()),
            None => return Err(Error::value("the server sent a null string")),
        },
        Variant::LocalizedText(t) => match t.text.value() {
            Some(s) => Value::String(s.clone()),
            None => return Err(Error::value("the server sent a null text")),
        },
        Variant::Empty => return Err(Error::value("the server sent no value (null)")),
        other => {
            return Err(Error::value(format_args!(
                "the server sent a {:?}, which no tag type holds",
                other.type_id()
            )));
        }
    })
}

fn finite(x: f64) -> Result<Value> {
    if x.is_finite() {
        Ok(Value::F64(x))
    } else {
        Err(Error::value(format_args!(
            "the server sent {x}, not a finite number"
        )))
    }
}

/// The variant of the tag's own type for a raw value (already unconverted by the tag), as
/// written to the server.
pub fn to_variant(value_type: ValueType, value: &Value) -> Result<Variant> {
    let wrong = || Error::value(format_args!("{value} does not fit a {value_type} tag"));
    let signed = |v: &Value| match v {
        Value::I64(x) => Some(*x),
        Value::U64(x) => i64::try_from(*x).ok(),
        _ => None,
    };
    let unsigned = |v: &Value| match v {
        Value::I64(x) => u64::try_from(*x).ok(),
        Value::U64(x) => Some(*x),
        _ => None,
    };
    Ok(match value_type {
        ValueType::Bool => match value {
            Value::Bool(b) => Variant::Boolean(*b),
            _ => return Err(wrong()),
        },
        ValueType::Signed(16) => Variant::Int16(
            signed(value)
                .and_then(|x| i16::try_from(x).ok())
                .ok_or_else(wrong)?,
        ),
        ValueType::Signed(32) => Variant::Int32(
            signed(value)
                .and_then(|x| i32::try_from(x).ok())
                .ok_or_else(wrong)?,
        ),
        ValueType::Signed(_) => Variant::Int64(signed(value).ok_or_else(wrong)?),
        ValueType::Unsigned(16) => Variant::UInt16(
            unsigned(value)
                .and_then(|x| u16::try_from(x).ok())
                .ok_or_else(wrong)?,
        ),
        ValueType::Unsigned(32) => Variant::UInt32(
            unsigned(value)
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(wrong)?,
        ),
        ValueType::Unsigned(_) => Variant::UInt64(unsigned(value).ok_or_else(wrong)?),
        // The tag's f32 values were narrowed from the f32 they stand for, so this is exact.
        ValueType::Float(32) => match value {
            Value::F64(x) => Variant::Float(*x as f32),
            _ => return Err(wrong()),
        },
        ValueType::Float(_) => match value {
            Value::F64(x) => Variant::Double(*x),
            _ => return Err(wrong()),
        },
        ValueType::String => match value {
            Value::String(s) => Variant::String(UAString::from(s.as_str())),
            _ => return Err(wrong()),
        },
    })
}

/// The quality an OPC UA status code stands for. Good is Good; Uncertain and Bad carry the
/// status name in their detail.
pub fn quality(status: StatusCode) -> Quality {
    if status.is_good() {
        return Quality::Good;
    }
    let name = status.to_string();
    let detail = format!("{name} (0x{:08X})", status.bits());
    let reason = reason(&name);
    if status.is_uncertain() {
        Quality::Uncertain { reason, detail }
    } else {
        Quality::Bad { reason, detail }
    }
}

/// A Bad quality for a status that refused an operation (never Good).
pub fn bad(status: StatusCode) -> Quality {
    match quality(status) {
        Quality::Uncertain { reason, detail } | Quality::Bad { reason, detail } => {
            Quality::Bad { reason, detail }
        }
        Quality::Good => Quality::bad(QualityReason::DeviceException(0), status.to_string()),
    }
}

/// The closest Fieldline reason for a status name; the name itself stays in the detail.
fn reason(name: &str) -> QualityReason {
    const COMM: [&str; 6] = [
        "BadCommunicationError",
        "BadNotConnected",
        "BadServerNotConnected",
        "BadNoCommunication",
        "BadDeviceFailure",
        "BadConnectionClosed",
    ];
    if COMM.iter().any(|c| name.starts_with(c)) {
        QualityReason::CommFailure
    } else if name.starts_with("BadOutOfRange")
        || name.starts_with("UncertainEngineeringUnitsExceeded")
    {
        QualityReason::OutOfRange
    } else if name.starts_with("UncertainLastUsableValue")
        || name.starts_with("BadWaitingForInitialData")
        || name.starts_with("BadOutOfService")
    {
        QualityReason::Stale
    } else {
        // The server's judgement about its own value: a device exception without a Modbus
        // code; the status name in the detail says which.
        QualityReason::DeviceException(0)
    }
}

/// The sample for one data value of `tag`. The source timestamp is the sample's time; the
/// server timestamp stands in when there is none, and `now_ns` when neither is set. The server
/// timestamp is kept beside it. A value that cannot be converted (null, NaN, wrong type, out
/// of range) makes a Bad sample.
pub fn sample(tag: &ResolvedValueTag, dv: &DataValue, now_ns: i64) -> Sample {
    let server_timestamp_ns = dv.server_timestamp.as_ref().and_then(unix_ns);
    let timestamp_ns = dv
        .source_timestamp
        .as_ref()
        .and_then(unix_ns)
        .or(server_timestamp_ns)
        .unwrap_or(now_ns);
    let status = dv.status.unwrap_or(StatusCode::Good);
    let quality = quality(status);
    if quality.is_bad() {
        return Sample {
            server_timestamp_ns,
            ..Sample::bad(&tag.name, quality, timestamp_ns)
        };
    }
    let converted = match dv.value.as_ref() {
        None => Err("the server sent no value".to_string()),
        Some(v) => from_variant(v)
            .map_err(|e| e.to_string())
            .and_then(|v| tag.convert(v).map_err(|e| e.to_string())),
    };
    match converted {
        Ok(value) => Sample {
            tag: tag.name.clone(),
            value: Some(value),
            quality,
            timestamp_ns,
            server_timestamp_ns,
        },
        Err(e) => {
            let reason = if e.contains("outside the range") {
                QualityReason::OutOfRange
            } else {
                QualityReason::DecodeError
            };
            Sample {
                server_timestamp_ns,
                ..Sample::bad(&tag.name, Quality::bad(reason, e), timestamp_ns)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fieldline_core::config::TagConfig;
    use opcua::types::LocalizedText;

    use super::*;

    fn tag(data_type: &str, scale: Option<f64>) -> ResolvedValueTag {
        let yaml = format!("{{ name: t, address: 'ns=2;s=T', type: {data_type} }}");
        let mut config: TagConfig = serde_yaml::from_str(&yaml).unwrap();
        config.scale = scale;
        config.resolve_value().unwrap()
    }

    fn dv(value: Variant, status: StatusCode) -> DataValue {
        DataValue {
            value: Some(value),
            status: Some(status),
            source_timestamp: None,
            source_picoseconds: None,
            server_timestamp: None,
            server_picoseconds: None,
        }
    }

    #[test]
    fn times_are_unix_nanoseconds() {
        // 2024-05-01T12:00:00.1234567Z: 1714564800 s, ticks keep 100 ns.
        let t = DateTime::parse_from_rfc3339("2024-05-01T12:00:00.1234567Z").unwrap();
        assert_eq!(unix_ns(&t), Some(1_714_564_800_123_456_700));
        assert_eq!(unix_ns(&DateTime::null()), None);
        assert_eq!(
            unix_ns(&DateTime::parse_from_rfc3339("1970-01-01T00:00:00Z").unwrap()),
            Some(0)
        );
    }

    #[test]
    fn scalars_become_values() {
        assert_eq!(
            from_variant(&Variant::Boolean(true)).ok(),
            Some(Value::Bool(true))
        );
        assert_eq!(from_variant(&Variant::SByte(-3)).ok(), Some(Value::I64(-3)));
        assert_eq!(from_variant(&Variant::UInt32(7)).ok(), Some(Value::U64(7)));
        assert_eq!(
            from_variant(&Variant::Int64(i64::MIN)).ok(),
            Some(Value::I64(i64::MIN))
        );
        assert_eq!(
            from_variant(&Variant::Float(1.5)).ok(),
            Some(Value::F64(1.5))
        );
        assert_eq!(
            from_variant(&Variant::String("ok".into())).ok(),
            Some(Value::String("ok".into()))
        );
        assert_eq!(
            from_variant(&Variant::LocalizedText(Box::new(LocalizedText::new(
                "en", "hi"
            ))))
            .ok(),
            Some(Value::String("hi".into()))
        );
        for wrong in [
            Variant::Empty,
            Variant::Double(f64::NAN),
            Variant::Float(f32::INFINITY),
            Variant::String(UAString::null()),
            Variant::DateTime(Box::new(DateTime::now())),
        ] {
            assert!(from_variant(&wrong).is_err(), "{wrong:?} must not convert");
        }
    }

    #[test]
    fn writes_use_the_tag_type() {
        assert_eq!(
            to_variant(ValueType::Signed(16), &Value::I64(-2)).ok(),
            Some(Variant::Int16(-2))
        );
        assert_eq!(
            to_variant(ValueType::Unsigned(32), &Value::U64(70000)).ok(),
            Some(Variant::UInt32(70000))
        );
        assert_eq!(
            to_variant(ValueType::Float(32), &Value::F64(0.1)).ok(),
            Some(Variant::Float(0.1))
        );
        assert_eq!(
            to_variant(ValueType::Float(64), &Value::F64(0.1)).ok(),
            Some(Variant::Double(0.1))
        );
        assert_eq!(
            to_variant(ValueType::String, &Value::String("a".into())).ok(),
            Some(Variant::String("a".into()))
        );
        assert!(to_variant(ValueType::Signed(16), &Value::I64(40000)).is_err());
        assert!(to_variant(ValueType::Unsigned(64), &Value::I64(-1)).is_err());
        assert!(to_variant(ValueType::Bool, &Value::I64(1)).is_err());
    }

    #[test]
    fn status_codes_map_to_qualities() {
        assert_eq!(quality(StatusCode::Good), Quality::Good);
        match quality(StatusCode::BadSensorFailure) {
            Quality::Bad { reason, detail } => {
                assert_eq!(reason, QualityReason::DeviceException(0));
                assert!(detail.starts_with("BadSensorFailure"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            quality(StatusCode::BadCommunicationError),
            Quality::Bad {
                reason: QualityReason::CommFailure,
                ..
            }
        ));
        assert!(matches!(
            quality(StatusCode::UncertainLastUsableValue),
            Quality::Uncertain {
                reason: QualityReason::Stale,
                ..
            }
        ));
    }

    #[test]
    fn data_values_become_samples() {
        let f64_tag = tag("f64", None);
        let mut value = dv(Variant::Double(21.5), StatusCode::Good);
        value.source_timestamp =
            Some(DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z").unwrap());
        value.server_timestamp =
            Some(DateTime::parse_from_rfc3339("2024-05-01T12:00:01Z").unwrap());
        let s = sample(&f64_tag, &value, 5);
        assert_eq!(s.value, Some(Value::F64(21.5)));
        assert_eq!(s.quality, Quality::Good);
        assert_eq!(s.timestamp_ns, 1_714_564_800_000_000_000);
        assert_eq!(s.server_timestamp_ns, Some(1_714_564_801_000_000_000));

        value.source_timestamp = None;
        assert_eq!(
            sample(&f64_tag, &value, 5).timestamp_ns,
            1_714_564_801_000_000_000
        );
        value.server_timestamp = None;
        assert_eq!(sample(&f64_tag, &value, 5).timestamp_ns, 5);

        // Scaled, and the uncertain value kept with its quality.
        let scaled = tag("i16", Some(0.5));
        let s = sample(
            &scaled,
            &dv(Variant::Int16(3), StatusCode::UncertainSensorNotAccurate),
            0,
        );
        assert_eq!(s.value, Some(Value::F64(1.5)));
        assert!(matches!(s.quality, Quality::Uncertain { .. }));

        // Never a silent 0: NaN, null, wrong type and out of range are Bad.
        for (t, v, reason) in [
            (
                &f64_tag,
                Variant::Double(f64::NAN),
                QualityReason::DecodeError,
            ),
            (&f64_tag, Variant::Empty, QualityReason::DecodeError),
            (
                &f64_tag,
                Variant::String("x".into()),
                QualityReason::DecodeError,
            ),
            (
                &tag("i16", None),
                Variant::Int32(70000),
                QualityReason::OutOfRange,
            ),
        ] {
            let s = sample(t, &dv(v.clone(), StatusCode::Good), 0);
            assert_eq!(s.value, None, "{v:?}");
            assert!(
                matches!(&s.quality, Quality::Bad { reason: r, .. } if *r == reason),
                "{v:?}: {:?}",
                s.quality
            );
        }
        let s = sample(
            &f64_tag,
            &dv(Variant::Double(1.0), StatusCode::BadSensorFailure),
            0,
        );
        assert_eq!(s.value, None);
        assert!(s.quality.is_bad());
    }
}
