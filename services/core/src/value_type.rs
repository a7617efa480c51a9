//! Tag types of devices that send values rather than registers (serial lines, OPC UA, MQTT):
//! what arrives is checked against the tag's type and converted, never truncated or
//! guessed. A value that does not fit is an error the driver turns into a Bad sample.

use std::fmt;

use crate::sample::Value;

/// The declared type of a value tag: `bool`, `i16` … `u64`, `f32`, `f64` or `string`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    Bool,
    /// A signed integer of this many bits.
    Signed(u8),
    /// An unsigned integer of this many bits.
    Unsigned(u8),
    /// A float of this many bits (32 or 64); f32 values keep their decimal form.
    Float(u8),
    String,
}

impl std::str::FromStr for ValueType {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "bool" => ValueType::Bool,
            "i16" => ValueType::Signed(16),
            "i32" => ValueType::Signed(32),
            "i64" => ValueType::Signed(64),
            "u16" => ValueType::Unsigned(16),
            "u32" => ValueType::Unsigned(32),
            "u64" => ValueType::Unsigned(64),
            "f32" => ValueType::Float(32),
            "f64" => ValueType::Float(64),
            "string" => ValueType::String,
            _ => {
                return Err(crate::Error::Parse(format!(
                    "unknown type {s:?}; use bool, i16, i32, i64, u16, u32, u64, f32, f64 or string"
                )));
            }
        })
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Bool => f.write_str("bool"),
            ValueType::Signed(bits) => write!(f, "i{bits}"),
            ValueType::Unsigned(bits) => write!(f, "u{bits}"),
            ValueType::Float(bits) => write!(f, "f{bits}"),
            ValueType::String => f.write_str("string"),
        }
    }
}

impl ValueType {
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ValueType::Signed(_) | ValueType::Unsigned(_) | ValueType::Float(_)
        )
    }

    /// Converts `value` to this type. Integers must fit their range exactly, a float goes to
    /// an integer type only when it is a whole number in range, NaN and infinities are
    /// refused, and nothing becomes a string except a string.
    pub fn convert(self, value: Value) -> crate::Result<Value> {
        match (self, value) {
            (ValueType::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
            (ValueType::Bool, Value::I64(v @ (0 | 1))) => Ok(Value::Bool(v == 1)),
            (ValueType::Bool, Value::U64(v @ (0 | 1))) => Ok(Value::Bool(v == 1)),
            (ValueType::String, Value::String(s)) => Ok(Value::String(s)),
            (ValueType::Float(bits), v) => {
                match v.as_f64().filter(|_| !matches!(v, Value::Bool(_))) {
                    Some(x) if x.is_finite() => {
                        Ok(Value::F64(if bits == 32 { narrow_f32(x) } else { x }))
                    }
                    Some(x) => Err(crate::Error::NotFinite(x)),
                    None => Err(crate::Error::Value(format!(
                        "{} is not a number",
                        describe(&v)
                    ))),
                }
            }
            (ValueType::Signed(bits), v) => {
                let (min, max) = signed_range(bits);
                let i = whole(&v)?;
                if i < i128::from(min) || i > i128::from(max) {
                    return Err(crate::Error::OutOfRange(format!(
                        "{i} is outside the range of i{bits}"
                    )));
                }
                Ok(Value::I64(
                    i64::try_from(i).map_err(|e| crate::Error::Value(e.to_string()))?,
                ))
            }
            (ValueType::Unsigned(bits), v) => {
                let max = if bits >= 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                let i = whole(&v)?;
                if i < 0 || i > i128::from(max) {
                    return Err(crate::Error::OutOfRange(format!(
                        "{i} is outside the range of u{bits}"
                    )));
                }
                Ok(Value::U64(
                    u64::try_from(i).map_err(|e| crate::Error::Value(e.to_string()))?,
                ))
            }
            (t, v) => Err(crate::Error::Value(format!(
                "{} does not fit a {t} tag",
                describe(&v)
            ))),
        }
    }

    /// Parses text sent by a device (`21.5`, `-3`, `true`, `ON`) as this type.
    pub fn parse_text(self, text: &str) -> crate::Result<Value> {
        let text = text.trim();
        match self {
            ValueType::String => Ok(Value::String(text.to_string())),
            ValueType::Bool => match text.to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" | "high" => Ok(Value::Bool(true)),
                "0" | "false" | "off" | "no" | "low" => Ok(Value::Bool(false)),
                _ => Err(crate::Error::Value(format!("{text:?} is not a bool"))),
            },
            ValueType::Signed(_) | ValueType::Unsigned(_) => {
                if let Ok(i) = text.parse::<i64>() {
                    self.convert(Value::I64(i))
                } else if let Ok(u) = text.parse::<u64>() {
                    self.convert(Value::U64(u))
                } else {
                    Err(crate::Error::Value(format!("{text:?} is not an integer")))
                }
            }
            ValueType::Float(_) => match text.parse::<f64>() {
                Ok(x) => self.convert(Value::F64(x)),
                Err(_) => Err(crate::Error::Value(format!("{text:?} is not a number"))),
            },
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        other => format!("{} {other:?}", other.type_name()),
    }
}

fn signed_range(bits: u8) -> (i64, i64) {
    if bits >= 64 {
        (i64::MIN, i64::MAX)
    } else {
        (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
    }
}

/// An integer value, or a float that is a whole number.
fn whole(v: &Value) -> crate::Result<i128> {
    match v {
        Value::I64(i) => Ok(i128::from(*i)),
        Value::U64(u) => Ok(i128::from(*u)),
        Value::F64(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1.8e19 => {
            // In range of i128 by the check above; exact for whole floats.
            Ok(*x as i128)
        }
        Value::F64(x) => Err(crate::Error::Value(format!("{x} is not a whole number"))),
        other => Err(crate::Error::Value(format!(
            "{} is not a number",
            describe(other)
        ))),
    }
}

/// An f32 reading as the shortest decimal that reads back as the same f32 (21.5f32 stays
/// 21.5, not 21.500000xxx).
fn narrow_f32(x: f64) -> f64 {
    let f = x as f32;
    f.to_string().parse::<f64>().unwrap_or(f64::from(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> ValueType {
        s.parse().unwrap()
    }

    #[test]
    fn integers_must_fit_their_range() {
        assert_eq!(t("i16").convert(Value::I64(-32768)), Ok(Value::I64(-32768)));
        assert!(t("i16").convert(Value::I64(32768)).is_err());
        assert!(t("u16").convert(Value::I64(-1)).is_err());
        assert_eq!(
            t("u64").convert(Value::U64(u64::MAX)),
            Ok(Value::U64(u64::MAX))
        );
        assert!(t("i64").convert(Value::U64(u64::MAX)).is_err());
        assert_eq!(t("i32").convert(Value::F64(12.0)), Ok(Value::I64(12)));
        assert!(t("i32").convert(Value::F64(12.5)).is_err());
        assert!(t("i32").convert(Value::F64(f64::NAN)).is_err());
    }

    #[test]
    fn floats_refuse_nan_strings_and_bools() {
        assert_eq!(t("f64").convert(Value::I64(3)), Ok(Value::F64(3.0)));
        assert!(t("f64").convert(Value::F64(f64::NAN)).is_err());
        assert!(t("f64").convert(Value::F64(f64::INFINITY)).is_err());
        assert!(t("f64").convert(Value::String("1".into())).is_err());
        assert!(t("f64").convert(Value::Bool(true)).is_err());
        assert_eq!(
            t("f32").convert(Value::F64(f64::from(21.3f32))),
            Ok(Value::F64(21.3))
        );
    }

    #[test]
    fn text_is_parsed_strictly() {
        assert_eq!(t("f32").parse_text(" 21.5 "), Ok(Value::F64(21.5)));
        assert_eq!(t("bool").parse_text("ON"), Ok(Value::Bool(true)));
        assert_eq!(t("u16").parse_text("40"), Ok(Value::U64(40)));
        assert!(t("u16").parse_text("4O").is_err());
        assert!(t("f64").parse_text("nan").is_err());
        assert!(t("f64").parse_text("").is_err());
        assert_eq!(t("string").parse_text("ok"), Ok(Value::String("ok".into())));
        assert!("string(4)".parse::<ValueType>().is_err());
    }
}
