//! A tag of a device: where its value lives, its type, how it is scaled, reported and
//! limited. Resolving a tag checks all of that for its protocol (Modbus registers and bits,
//! or typed values from serial lines, OPC UA and MQTT) and yields what the driver uses.

use std::{fmt, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    codec::{Address, ByteOrder, DataType, TagCodec, WordOrder, implied_decimals, round_to},
    deadband::DeadbandRule,
    sample::Value,
    value_type::ValueType,
    write::WriteLimits,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// Tag name, `[a-z0-9_-]`, unique within the device.
    pub name: String,
    /// Where the value lives. Modbus: `coil`, `discrete`, `input` or `holding`, then the
    /// 0-based offset; a bit of a register as `holding:5.3`.
    pub address: String,
    /// bool, u16, i16, u32, i32, u64, i64, f32, f64 or string(N registers).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Register order of 32/64-bit values.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Byte order inside each register.
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// value = raw * scale + offset.
    #[serde(default)]
    pub scale: Option<f64>,
    /// value = raw * scale + offset.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Decimals a value is rounded to before it is published. By default a scaled integer
    /// reading keeps the decimals its scale and offset imply (a scale of 0.1 gives one,
    /// 0.25 two) and floats are published as read. For the raw register value, add a second
    /// tag at the same address without `scale`.
    #[serde(default)]
    pub decimals: Option<u8>,
    /// Engineering unit, e.g. `degC`.
    #[serde(default)]
    pub unit: Option<String>,
    /// Publish only when the value moved by more than this (report by exception).
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Publish only when the value moved by more than this percentage of the last published
    /// value.
    #[serde(default)]
    pub deadband_percent: Option<f64>,
    /// With a deadband, publish an unchanged value at least this often, e.g. `60s`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub heartbeat: Option<Duration>,
    /// Poll this tag at its own interval instead of the device's; tags sharing an interval
    /// form a poll group.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub poll_interval: Option<Duration>,
    /// Whether commands may write this tag.
    #[serde(default)]
    pub writable: bool,
    /// Lowest value a command may write.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value a command may write.
    #[serde(default)]
    pub max: Option<f64>,
    /// Largest change from the current value one command may make (a rate-of-change
    /// limit together with `min_write_interval`).
    #[serde(default)]
    pub max_step: Option<f64>,
    /// Least time between two writes of this tag, e.g. `2s`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub min_write_interval: Option<Duration>,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
}

/// A Modbus tag after validation: parsed address and codec.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModbusTag {
    pub name: String,
    pub address: Address,
    pub codec: TagCodec,
    pub deadband: DeadbandRule,
    /// The tag's own poll interval, when it has one.
    pub poll_interval: Option<Duration>,
    /// What a write of the tag may do.
    pub write: WriteLimits,
}

impl TagConfig {
    /// Checks the options every protocol shares: scale and offset (numbers only, finite,
    /// scale not 0), deadbands, heartbeat, and min not above max.
    fn check_value_options(
        &self,
        numeric: bool,
        type_name: &dyn fmt::Display,
        problems: &mut Vec<(&'static str, String)>,
    ) {
        for (field, v) in [("scale", self.scale), ("offset", self.offset)] {
            if let Some(v) = v {
                if !numeric {
                    problems.push((field, format!("applies to numbers, not to {type_name}")));
                } else if !v.is_finite() || (field == "scale" && v == 0.0) {
                    problems.push((field, format!("{v} is not a usable {field}")));
                }
            }
        }
        for (field, band) in [
            ("deadband", self.deadband),
            ("deadband_percent", self.deadband_percent),
        ] {
            if let Some(d) = band
                && !(d.is_finite() && d >= 0.0)
            {
                problems.push((field, format!("{d} must be a number of at least 0")));
            }
        }
        if let Some(d) = self.decimals {
            if !numeric {
                problems.push((
                    "decimals",
                    format!("applies to numbers, not to {type_name}"),
                ));
            } else if d > 15 {
                problems.push(("decimals", format!("{d} is more than the 15 an f64 holds")));
            }
        }
        if self.heartbeat.is_some_and(|h| h.is_zero()) {
            problems.push(("heartbeat", "must be more than 0".into()));
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            problems.push(("min", format!("min {min} is above max {max}")));
        }
    }

    /// The decimals values are rounded to: the tag's own, else those its scale and offset
    /// give an integer reading.
    fn rounding(&self, integer: bool) -> Option<u8> {
        let scaled = self.scale.is_some() || self.offset.is_some();
        self.decimals
            .or_else(|| (integer && scaled).then(|| implied_decimals(self.scale, self.offset)))
    }

    /// The tag's report-by-exception settings.
    fn deadband_rule(&self) -> DeadbandRule {
        DeadbandRule {
            absolute: self.deadband,
            percent: self.deadband_percent,
            heartbeat_ns: self
                .heartbeat
                .map(|h| i64::try_from(h.as_nanos()).unwrap_or(i64::MAX)),
        }
    }

    /// Parses the tag as a Modbus tag, checking that address, type and options fit together.
    pub fn resolve(&self) -> Result<ResolvedModbusTag, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let address = self
            .address
            .parse::<Address>()
            .map_err(|e| problems.push(("address", e.to_string())));
        let data_type = self
            .data_type
            .parse::<DataType>()
            .map_err(|e| problems.push(("type", e.to_string())));
        let (Ok(address), Ok(data_type)) = (address, data_type) else {
            return Err(problems);
        };
        if (address.table.is_bits() || address.bit.is_some()) && data_type != DataType::Bool {
            problems.push((
                "type",
                format!(
                    "a {} holds one bit, so its type must be bool",
                    describe(&address)
                ),
            ));
        }
        if address.bit.is_none()
            && !address.table.is_bits()
            && u32::from(address.offset) + u32::from(data_type.registers()) > 65536
        {
            problems.push((
                "address",
                format!("{data_type} at {address} runs past register 65535"),
            ));
        }
        self.check_value_options(data_type.is_numeric(), &data_type, &mut problems);
        if self
            .poll_interval
            .is_some_and(|p| p < Duration::from_millis(10))
        {
            problems.push(("poll_interval", "must be at least 10ms".into()));
        }
        if self.writable && !address.table.is_writable() {
            problems.push((
                "writable",
                format!("{}s are read-only in Modbus", address.table),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ResolvedModbusTag {
            name: self.name.clone(),
            address,
            codec: TagCodec {
                data_type,
                word_order: self.word_order,
                byte_order: self.byte_order,
                bit: address.bit,
                scale: self.scale,
                offset: self.offset,
                decimals: self.rounding(!matches!(data_type, DataType::F32 | DataType::F64)),
            },
            deadband: self.deadband_rule(),
            poll_interval: self.poll_interval,
            write: WriteLimits::of(self),
        })
    }
}

/// A tag of a device that sends values (serial-line, opcua, mqtt) after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedValueTag {
    pub name: String,
    /// Protocol-specific: a key, JSON pointer, regex group, NodeId or metric name.
    pub address: String,
    pub value_type: ValueType,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    /// Decimals a number is rounded to before it is published.
    pub decimals: Option<u8>,
    pub deadband: DeadbandRule,
    /// What a write of the tag may do.
    pub write: WriteLimits,
}

impl ResolvedValueTag {
    /// Converts what the device sent to the tag's type, then applies scale and offset and
    /// rounds to the tag's decimals.
    pub fn convert(&self, value: Value) -> crate::Result<Value> {
        let value = self.value_type.convert(value)?;
        if self.scale.is_none() && self.offset.is_none() {
            return Ok(match (value, self.decimals) {
                (Value::F64(x), Some(d)) => Value::F64(round_to(x, d)),
                (value, _) => value,
            });
        }
        let raw = value.as_f64().ok_or_else(|| cannot_scale(&value))?;
        let scaled = raw * self.scale.unwrap_or(1.0) + self.offset.unwrap_or(0.0);
        let scaled = match self.decimals {
            Some(d) => round_to(scaled, d),
            None => scaled,
        };
        self.value_type.convert(Value::F64(scaled)).or_else(|_| {
            // A scaled integer is usually no longer whole: it becomes a float.
            ValueType::Float(64).convert(Value::F64(scaled))
        })
    }

    /// The device's raw value for an engineering value a command asks for (scale and offset
    /// undone), in the tag's type.
    pub fn unconvert(&self, value: Value) -> crate::Result<Value> {
        if self.scale.is_none() && self.offset.is_none() {
            return self.value_type.convert(value);
        }
        let x = value.as_f64().ok_or_else(|| cannot_scale(&value))?;
        let raw = (x - self.offset.unwrap_or(0.0)) / self.scale.unwrap_or(1.0);
        let raw = if matches!(self.value_type, ValueType::Float(_)) {
            raw
        } else {
            raw.round()
        };
        self.value_type.convert(Value::F64(raw))
    }
}

impl TagConfig {
    /// Parses the tag as a value tag (serial-line, opcua, mqtt): a non-empty address, a
    /// value type, and options that fit it.
    pub fn resolve_value(&self) -> Result<ResolvedValueTag, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if self.address.trim().is_empty() {
            problems.push(("address", "must not be empty".to_string()));
        }
        let value_type = match self.data_type.parse::<ValueType>() {
            Ok(t) => t,
            Err(e) => {
                problems.push(("type", e.to_string()));
                return Err(problems);
            }
        };
        self.check_value_options(value_type.is_numeric(), &value_type, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ResolvedValueTag {
            name: self.name.clone(),
            address: self.address.clone(),
            value_type,
            scale: self.scale,
            offset: self.offset,
            decimals: self.rounding(matches!(
                value_type,
                ValueType::Signed(_) | ValueType::Unsigned(_)
            )),
            deadband: self.deadband_rule(),
            write: WriteLimits::of(self),
        })
    }
}

fn cannot_scale(value: &Value) -> crate::Error {
    crate::Error::Value(format!("{} cannot be scaled", value.type_name()))
}

fn describe(address: &Address) -> String {
    match address.bit {
        Some(_) => "bit of a register".into(),
        None => format!("{}", address.table),
    }
}
