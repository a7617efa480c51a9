//! Register codecs: Modbus words and bits ↔ typed values.
//!
//! Registers are 16-bit words, transmitted high byte first. Multi-register values are laid out
//! by two independent choices, covering the four 32-bit orders found in the field:
//!
//! | name | word order | byte order | registers for bytes `A B C D` |
//! |------|------------|------------|-------------------------------|
//! | ABCD | big        | big        | `AB`, `CD`                    |
//! | CDAB | little     | big        | `CD`, `AB`                    |
//! | BADC | big        | little     | `BA`, `DC`                    |
//! | DCBA | little     | little     | `DC`, `BA`                    |

use std::{fmt, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sample::Value;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl Table {
    /// Coils and discrete inputs hold bits; input and holding registers hold words.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// Whether a client may write this table.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Input => "input",
            Table::Holding => "holding",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a tag lives: `holding:10`, or a single bit of a register, `holding:5.3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    pub table: Table,
    /// 0-based offset into the table.
    pub offset: u16,
    /// Bit 0 (least significant) to 15 of the register, for bit tags.
    pub bit: Option<u8>,
}

impl FromStr for Address {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        let Some((table, rest)) = s.split_once(':') else {
            return Err(crate::Error::Parse(format!(
                "{s:?} is not an address; write table:offset, e.g. holding:0 or coil:3"
            )));
        };
        let table = match table {
            "coil" => Table::Coil,
            "discrete" => Table::Discrete,
            "input" => Table::Input,
            "holding" => Table::Holding,
            other => {
                return Err(crate::Error::Parse(format!(
                    "unknown table {other:?}; use coil, discrete, input or holding"
                )));
            }
        };
        let (offset, bit) = match rest.split_once('.') {
            Some((offset, bit)) => (offset, Some(bit)),
            None => (rest, None),
        };
        let offset: u16 = offset.parse().map_err(|_| {
            crate::Error::Parse(format!("offset {offset:?} is not a number from 0 to 65535"))
        })?;
        let bit = match bit {
            None => None,
            Some(_) if table.is_bits() => {
                return Err(crate::Error::Parse(format!(
                    "a bit index applies to registers, not to {table}s"
                )));
            }
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n < 16 => Some(n),
                _ => {
                    return Err(crate::Error::Parse(format!(
                        "bit {b:?} is not a number from 0 to 15"
                    )));
                }
            },
        };
        Ok(Address { table, offset, bit })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bit {
            Some(bit) => write!(f, "{}:{}.{bit}", self.table, self.offset),
            None => write!(f, "{}:{}", self.table, self.offset),
        }
    }
}

/// The type of a tag as the device stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// A string packed two bytes per register, over this many registers.
    String(u16),
}

impl DataType {
    /// Registers the type occupies (1 for bits and bools in registers).
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String(n) => n,
        }
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::String(_))
    }
}

impl FromStr for DataType {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "bool" | "bit" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            _ => {
                if let Some(n) = s.strip_prefix("string(").and_then(|r| r.strip_suffix(')')) {
                    return match n.parse::<u16>() {
                        Ok(n @ 1..=125) => Ok(DataType::String(n)),
                        _ => Err(crate::Error::Parse(format!(
                            "string length {n:?} must be a number of registers from 1 to 125"
                        ))),
                    };
                }
                return Err(crate::Error::Parse(format!(
                    "unknown type {s:?}; use bool, u16, i16, u32, i32, u64, i64, f32, f64 or string(N)"
                )));
            }
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Bool => f.write_str("bool"),
            DataType::U16 => f.write_str("u16"),
            DataType::I16 => f.write_str("i16"),
            DataType::U32 => f.write_str("u32"),
            DataType::I32 => f.write_str("i32"),
            DataType::U64 => f.write_str("u64"),
            DataType::I64 => f.write_str("i64"),
            DataType::F32 => f.write_str("f32"),
            DataType::F64 => f.write_str("f64"),
            DataType::String(n) => write!(f, "string({n})"),
        }
    }
}

/// Order of the registers of a multi-register value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// Most significant register first (the Modbus convention).
    #[default]
    Big,
    /// Least significant register first.
    Little,
}

/// Order of the two bytes inside each register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    /// High byte first (the Modbus convention).
    #[default]
    Big,
    /// Low byte first.
    Little,
}

/// Why device bytes could not become a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected {expected} registers, got {got}")]
    Length { expected: usize, got: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    OutOfRange(String),
}

/// Why a value cannot be written to a tag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("a {value} value cannot be written to a {data_type} tag")]
    Type {
        value: &'static str,
        data_type: DataType,
    },
    #[error("{0}")]
    OutOfRange(String),
}

/// `x` rounded to `decimals` places: the f64 nearest to the decimal an engineer would write.
pub fn round_to(x: f64, decimals: u8) -> f64 {
    let factor = 10f64.powi(i32::from(decimals.min(15)));
    let rounded = (x * factor).round() / factor;
    // Beyond 2^53 (or for huge factors) the product has no fraction left to round.
    if rounded.is_finite() { rounded } else { x }
}

/// The decimals a scale and offset give an integer reading: those of the scale (0.1 gives one,
/// 0.25 two) or of the offset, whichever has more.
pub fn implied_decimals(scale: Option<f64>, offset: Option<f64>) -> u8 {
    let places = |v: f64| {
        let text = v.abs().to_string();
        text.split_once('.')
            .map_or(0, |(_, fraction)| fraction.len().min(15) as u8)
    };
    scale.map_or(0, places).max(offset.map_or(0, places))
}

/// Everything needed to turn a tag's words into a value and back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TagCodec {
    pub data_type: DataType,
    pub word_order: WordOrder,
    pub byte_order: ByteOrder,
    /// Bit of a register, for bit tags in input or holding registers.
    pub bit: Option<u8>,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    /// Decimals a decoded number is rounded to, so `538 × 0.1` is published as 53.8 and
    /// not as 53.800000000000004.
    pub decimals: Option<u8>,
}

impl TagCodec {
    pub fn new(data_type: DataType) -> Self {
        Self {
            data_type,
            word_order: WordOrder::Big,
            byte_order: ByteOrder::Big,
            bit: None,
            scale: None,
            offset: None,
            decimals: None,
        }
    }

    /// Registers this tag spans in an input or holding table.
    pub fn register_count(&self) -> u16 {
        if self.bit.is_some() {
            1
        } else {
            self.data_type.registers()
        }
    }

    fn is_scaled(&self) -> bool {
        self.scale.is_some() || self.offset.is_some()
    }

    /// Decodes a coil or discrete input.
    pub fn decode_bit(&self, bit: bool) -> Value {
        Value::Bool(bit)
    }

    /// Decodes the tag's registers (exactly `register_count()` of them).
    pub fn decode_registers(&self, words: &[u16]) -> Result<Value, DecodeError> {
        let expected = usize::from(self.register_count());
        if words.len() != expected {
            return Err(DecodeError::Length {
                expected,
                got: words.len(),
            });
        }
        if let Some(bit) = self.bit {
            return Ok(Value::Bool(words[0] & (1 << bit) != 0));
        }
        let bytes = self.ordered_bytes(words);
        let raw = match self.data_type {
            DataType::Bool => return Ok(Value::Bool(words[0] != 0)),
            DataType::String(_) => return decode_string(&bytes),
            DataType::U16 => Value::U64(u64::from(u16::from_be_bytes(arr(&bytes)))),
            DataType::I16 => Value::I64(i64::from(i16::from_be_bytes(arr(&bytes)))),
            DataType::U32 => Value::U64(u64::from(u32::from_be_bytes(arr(&bytes)))),
            DataType::I32 => Value::I64(i64::from(i32::from_be_bytes(arr(&bytes)))),
            DataType::U64 => Value::U64(u64::from_be_bytes(arr(&bytes))),
            DataType::I64 => Value::I64(i64::from_be_bytes(arr(&bytes))),
            DataType::F32 => Value::F64(finite(f32_as_f64(f32::from_be_bytes(arr(&bytes))))?),
            DataType::F64 => Value::F64(finite(f64::from_be_bytes(arr(&bytes)))?),
        };
        if !self.is_scaled() {
            return Ok(match (raw, self.decimals) {
                (Value::F64(x), Some(d)) => Value::F64(round_to(x, d)),
                (raw, _) => raw,
            });
        }
        let x = raw.as_f64().unwrap_or_default();
        let scaled = finite(x * self.scale.unwrap_or(1.0) + self.offset.unwrap_or(0.0))?;
        Ok(Value::F64(match self.decimals {
            Some(d) => round_to(scaled, d),
            None => scaled,
        }))
    }

    /// Encodes a value into the tag's registers, undoing scale and offset.
    pub fn encode_registers(&self, value: &Value) -> Result<Vec<u16>, EncodeError> {
        let type_err = || EncodeError::Type {
            value: value.type_name(),
            data_type: self.data_type,
        };
        if self.bit.is_some() {
            // A single bit needs the rest of the register: the caller reads, modifies, writes.
            return Err(EncodeError::OutOfRange(
                "a bit inside a register is written by read-modify-write, not encoded alone".into(),
            ));
        }
        let bytes: Vec<u8> = match self.data_type {
            DataType::Bool => match value {
                Value::Bool(b) => u16::from(*b).to_be_bytes().to_vec(),
                _ => return Err(type_err()),
            },
            DataType::String(n) => match value {
                Value::String(s) => {
                    let capacity = usize::from(n) * 2;
                    if s.len() > capacity {
                        return Err(EncodeError::OutOfRange(format!(
                            "{} bytes do not fit in {n} registers",
                            s.len()
                        )));
                    }
                    let mut b = s.as_bytes().to_vec();
                    b.resize(capacity, 0);
                    b
                }
                _ => return Err(type_err()),
            },
            data_type => {
                let raw = self.unscale(value).ok_or_else(type_err)?;
                encode_number(data_type, raw)?
            }
        };
        Ok(self.ordered_words(&bytes))
    }

    /// The raw (device-side) number for a value, undoing scale and offset.
    fn unscale(&self, value: &Value) -> Option<Raw> {
        if self.is_scaled() {
            let x = value
                .as_f64()
                .filter(|_| !matches!(value, Value::Bool(_)))?;
            return Some(Raw::Float(
                (x - self.offset.unwrap_or(0.0)) / self.scale.unwrap_or(1.0),
            ));
        }
        match value {
            Value::I64(v) => Some(Raw::Int(i128::from(*v))),
            Value::U64(v) => Some(Raw::Int(i128::from(*v))),
            Value::F64(v) => Some(Raw::Float(*v)),
            Value::Bool(_) | Value::String(_) => None,
        }
    }

    /// Bytes of the value, most significant first, from registers in device order.
    fn ordered_bytes(&self, words: &[u16]) -> Vec<u8> {
        let mut ordered: Vec<u16> = words.to_vec();
        if self.word_order == WordOrder::Little && !matches!(self.data_type, DataType::String(_)) {
            ordered.reverse();
        }
        ordered
            .iter()
            .flat_map(|w| match self.byte_order {
                ByteOrder::Big => w.to_be_bytes(),
                ByteOrder::Little => w.to_le_bytes(),
            })
            .collect()
    }

    /// Registers in device order from bytes most significant first.
    fn ordered_words(&self, bytes: &[u8]) -> Vec<u16> {
        let mut words: Vec<u16> = bytes
            .chunks(2)
            .map(|c| {
                let pair = [c[0], c.get(1).copied().unwrap_or(0)];
                match self.byte_order {
                    ByteOrder::Big => u16::from_be_bytes(pair),
                    ByteOrder::Little => u16::from_le_bytes(pair),
                }
            })
            .collect();
        if self.word_order == WordOrder::Little && !matches!(self.data_type, DataType::String(_)) {
            words.reverse();
        }
        words
    }
}

enum Raw {
    Int(i128),
    Float(f64),
}

fn encode_number(data_type: DataType, raw: Raw) -> Result<Vec<u8>, EncodeError> {
    if let Raw::Float(x) = raw
        && !x.is_finite()
    {
        return Err(EncodeError::OutOfRange(format!(
            "{x} is not a finite number"
        )));
    }
    match (data_type, raw) {
        (DataType::F32, Raw::Float(x)) => {
            // Whether it rounds to a finite f32, not `x <= f32::MAX`: the decoded form of
            // f32::MAX, 3.4028235e38, lies just above it and must be writable back.
            let f = x as f32;
            if f.is_infinite() {
                return Err(EncodeError::OutOfRange(format!("{x} does not fit in f32")));
            }
            Ok(f.to_be_bytes().to_vec())
        }
        (DataType::F32, Raw::Int(i)) => Ok((i as f32).to_be_bytes().to_vec()),
        (DataType::F64, Raw::Float(x)) => Ok(x.to_be_bytes().to_vec()),
        (DataType::F64, Raw::Int(i)) => Ok((i as f64).to_be_bytes().to_vec()),
        (int_type, raw) => {
            let i = match raw {
                Raw::Int(i) => i,
                Raw::Float(x) => {
                    let rounded = x.round();
                    if (x - rounded).abs() > 1e-6 * x.abs().max(1.0) {
                        return Err(EncodeError::OutOfRange(format!(
                            "{x} is not a whole number and {int_type} holds only whole numbers"
                        )));
                    }
                    rounded as i128
                }
            };
            let range_err =
                || EncodeError::OutOfRange(format!("{i} is outside the range of {int_type}"));
            Ok(match int_type {
                DataType::U16 => u16::try_from(i)
                    .map_err(|_| range_err())?
                    .to_be_bytes()
                    .to_vec(),
                DataType::I16 => i16::try_from(i)
                    .map_err(|_| range_err())?
                    .to_be_bytes()
                    .to_vec(),
                DataType::U32 => u32::try_from(i)
                    .map_err(|_| range_err())?
                    .to_be_bytes()
                    .to_vec(),
                DataType::I32 => i32::try_from(i)
                    .map_err(|_| range_err())?
                    .to_be_bytes()
                    .to_vec(),
                DataType::U64 => u64::try_from(i)
                    .map_err(|_| range_err())?
                    .to_be_bytes()
                    .to_vec(),
                DataType::I64 => i64::try_from(i)
                    .map_err(|_| range_err())?
                    .to_be_bytes()
                    .to_vec(),
                _ => return Err(range_err()),
            })
        }
    }
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// The f64 closest to the f32's shortest decimal form: a device's 22.849432f32 becomes
/// 22.849432, not 22.84943199157715, so stored and displayed values read as the device meant.
fn f32_as_f64(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn finite(x: f64) -> Result<f64, DecodeError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(DecodeError::OutOfRange(format!(
            "the device reported {x}, not a finite number"
        )))
    }
}

fn decode_string(bytes: &[u8]) -> Result<Value, DecodeError> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let text = std::str::from_utf8(&bytes[..end])
        .map_err(|e| DecodeError::Invalid(format!("string is not valid UTF-8: {e}")))?;
    Ok(Value::String(text.trim_end().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(t: DataType, w: WordOrder, b: ByteOrder) -> TagCodec {
        TagCodec {
            word_order: w,
            byte_order: b,
            ..TagCodec::new(t)
        }
    }

    // IEEE 754: 12.5 = 0x4148_0000, -3.75 = 0xC070_0000, 1.0f64 = 0x3FF0_0000_0000_0000.
    #[test]
    fn f32_in_all_four_orders() {
        use {ByteOrder as B, WordOrder as W};
        let cases = [
            (W::Big, B::Big, [0x4148, 0x0000]),       // ABCD
            (W::Little, B::Big, [0x0000, 0x4148]),    // CDAB
            (W::Big, B::Little, [0x4841, 0x0000]),    // BADC
            (W::Little, B::Little, [0x0000, 0x4841]), // DCBA
        ];
        for (w, b, words) in cases {
            let c = codec(DataType::F32, w, b);
            assert_eq!(
                c.decode_registers(&words),
                Ok(Value::F64(12.5)),
                "{w:?}/{b:?}"
            );
            assert_eq!(
                c.encode_registers(&Value::F64(12.5)).unwrap(),
                words,
                "{w:?}/{b:?}"
            );
        }
        let c = codec(DataType::F32, WordOrder::Little, ByteOrder::Big);
        assert_eq!(c.decode_registers(&[0x0000, 0xC070]), Ok(Value::F64(-3.75)));
    }

    #[test]
    fn integers_keep_sign_and_width() {
        let i16c = TagCodec::new(DataType::I16);
        // -1234 as two's complement 16-bit is 0xFB2E.
        assert_eq!(i16c.decode_registers(&[0xFB2E]), Ok(Value::I64(-1234)));
        assert_eq!(
            TagCodec::new(DataType::U16).decode_registers(&[0xFB2E]),
            Ok(Value::U64(64302))
        );
        // 4_000_000_000 = 0xEE6B_2800.
        let u32c = TagCodec::new(DataType::U32);
        assert_eq!(
            u32c.decode_registers(&[0xEE6B, 0x2800]),
            Ok(Value::U64(4_000_000_000))
        );
        // -100_000 = 0xFFFE_7960.
        let i32c = TagCodec::new(DataType::I32);
        assert_eq!(
            i32c.decode_registers(&[0xFFFE, 0x7960]),
            Ok(Value::I64(-100_000))
        );
        let f64c = TagCodec::new(DataType::F64);
        assert_eq!(
            f64c.decode_registers(&[0x3FF0, 0, 0, 0]),
            Ok(Value::F64(1.0))
        );
        let i64c = codec(DataType::I64, WordOrder::Little, ByteOrder::Big);
        assert_eq!(
            i64c.decode_registers(&[0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF]),
            Ok(Value::I64(-2))
        );
    }

    #[test]
    fn f32_values_keep_their_decimal_form() {
        let c = TagCodec::new(DataType::F32);
        let words = c.encode_registers(&Value::F64(22.849432)).unwrap();
        assert_eq!(c.decode_registers(&words), Ok(Value::F64(22.849432)));
        let words = c.encode_registers(&Value::F64(0.1)).unwrap();
        assert_eq!(c.decode_registers(&words), Ok(Value::F64(0.1)));
    }

    // Found by the `register_codec` fuzz target (fuzz/): -f32::MAX (CDAB words FFFF FF7F)
    // decodes to its shortest form -3.4028235e38, which as an f64 lies just beyond f32::MAX,
    // and encode refused it, so a tag could not be written with the value it had just read.
    #[test]
    fn f32_limits_round_trip() {
        let c = codec(DataType::F32, WordOrder::Little, ByteOrder::Big);
        let words = [0xFFFF, 0xFF7F];
        let value = c.decode_registers(&words).unwrap();
        assert_eq!(value, Value::F64(-3.4028235e38));
        assert_eq!(c.encode_registers(&value).unwrap(), words);
        let c = TagCodec::new(DataType::F32);
        assert_eq!(
            c.encode_registers(&Value::F64(3.4028235e38)).unwrap(),
            [0x7F7F, 0xFFFF]
        );
        assert!(c.encode_registers(&Value::F64(3.5e38)).is_err());
        assert!(c.encode_registers(&Value::F64(-3.5e38)).is_err());
    }

    #[test]
    fn nan_and_infinity_are_errors_not_values() {
        let c = TagCodec::new(DataType::F32);
        assert!(matches!(
            c.decode_registers(&[0x7FC0, 0]),
            Err(DecodeError::OutOfRange(_))
        ));
        assert!(matches!(
            c.decode_registers(&[0x7F80, 0]),
            Err(DecodeError::OutOfRange(_))
        ));
        assert!(c.encode_registers(&Value::F64(f64::NAN)).is_err());
    }

    #[test]
    fn wrong_register_count_is_a_decode_error() {
        let c = TagCodec::new(DataType::U32);
        assert_eq!(
            c.decode_registers(&[1]),
            Err(DecodeError::Length {
                expected: 2,
                got: 1
            })
        );
    }

    #[test]
    fn scaled_integers_come_out_as_an_engineer_writes_them() {
        let c = TagCodec {
            scale: Some(0.1),
            decimals: Some(implied_decimals(Some(0.1), None)),
            ..TagCodec::new(DataType::U16)
        };
        // 538 × 0.1 is 53.800000000000004 in f64 arithmetic.
        assert_eq!(c.decode_registers(&[538]), Ok(Value::F64(53.8)));
        assert_eq!(c.decode_registers(&[538]).unwrap().to_string(), "53.8");
        assert_eq!(implied_decimals(Some(0.1), None), 1);
        assert_eq!(implied_decimals(Some(0.25), Some(-40.0)), 2);
        assert_eq!(implied_decimals(Some(2.0), Some(273.15)), 2);
        assert_eq!(implied_decimals(None, None), 0);
        assert_eq!(round_to(21.456, 2), 21.46);
        assert_eq!(round_to(-0.05, 1), -0.1);
        assert_eq!(round_to(1e300, 15), 1e300);
    }

    #[test]
    fn scale_and_offset_apply_both_ways() {
        let c = TagCodec {
            scale: Some(0.1),
            offset: Some(-40.0),
            ..TagCodec::new(DataType::U16)
        };
        assert_eq!(
            c.decode_registers(&[650]),
            Ok(Value::F64(650.0 * 0.1 - 40.0))
        );
        assert_eq!(c.encode_registers(&Value::F64(25.0)).unwrap(), vec![650]);
        assert!(
            c.encode_registers(&Value::F64(-50.0)).is_err(),
            "raw -100 does not fit u16"
        );
    }

    #[test]
    fn bits_inside_registers() {
        let c = TagCodec {
            bit: Some(3),
            ..TagCodec::new(DataType::Bool)
        };
        assert_eq!(c.decode_registers(&[0b1000]), Ok(Value::Bool(true)));
        assert_eq!(c.decode_registers(&[0b0111]), Ok(Value::Bool(false)));
    }

    #[test]
    fn strings_pack_two_bytes_per_register() {
        let c = TagCodec::new(DataType::String(3));
        assert_eq!(
            c.decode_registers(&[0x4142, 0x4300, 0]),
            Ok(Value::String("ABC".into()))
        );
        assert_eq!(
            c.encode_registers(&Value::String("ABC".into())).unwrap(),
            [0x4142, 0x4300, 0]
        );
        assert!(
            c.decode_registers(&[0xFFFE, 0, 0]).is_err(),
            "invalid UTF-8"
        );
        assert!(
            c.encode_registers(&Value::String("ABCDEFG".into()))
                .is_err()
        );
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let c = TagCodec::new(DataType::I16);
        assert!(c.encode_registers(&Value::I64(40_000)).is_err());
        assert!(c.encode_registers(&Value::F64(1.5)).is_err());
        assert_eq!(c.encode_registers(&Value::F64(-2.0)).unwrap(), vec![0xFFFE]);
        assert!(c.encode_registers(&Value::String("1".into())).is_err());
    }

    #[test]
    fn addresses_parse_and_explain_mistakes() {
        assert_eq!(
            "holding:5.3".parse::<Address>(),
            Ok(Address {
                table: Table::Holding,
                offset: 5,
                bit: Some(3)
            })
        );
        assert_eq!(
            "coil:0".parse::<Address>(),
            Ok(Address {
                table: Table::Coil,
                offset: 0,
                bit: None
            })
        );
        let err = "holdng:0".parse::<Address>().unwrap_err();
        assert!(
            err.to_string().contains("unknown table \"holdng\""),
            "{err}"
        );
        assert!("holding:70000".parse::<Address>().is_err());
        assert!("holding:1.16".parse::<Address>().is_err());
        assert!("coil:1.2".parse::<Address>().is_err());
        assert!("holding".parse::<Address>().is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn orders() -> impl Strategy<Value = (WordOrder, ByteOrder)> {
            prop_oneof![
                Just((WordOrder::Big, ByteOrder::Big)),
                Just((WordOrder::Little, ByteOrder::Big)),
                Just((WordOrder::Big, ByteOrder::Little)),
                Just((WordOrder::Little, ByteOrder::Little)),
            ]
        }

        proptest! {
            #[test]
            fn i32_round_trips((w, b) in orders(), v in any::<i32>()) {
                let c = codec(DataType::I32, w, b);
                let words = c.encode_registers(&Value::I64(v.into())).unwrap();
                prop_assert_eq!(c.decode_registers(&words), Ok(Value::I64(v.into())));
            }

            #[test]
            fn u64_round_trips((w, b) in orders(), v in any::<u64>()) {
                let c = codec(DataType::U64, w, b);
                let words = c.encode_registers(&Value::U64(v)).unwrap();
                prop_assert_eq!(c.decode_registers(&words), Ok(Value::U64(v)));
            }

            #[test]
            fn f32_round_trips((w, b) in orders(), v in any::<f32>().prop_filter("finite", |v| v.is_finite())) {
                let c = codec(DataType::F32, w, b);
                let words = c.encode_registers(&Value::F64(v.into())).unwrap();
                let Ok(Value::F64(back)) = c.decode_registers(&words) else { panic!("not a float") };
                prop_assert_eq!(back as f32, v, "the device's f32 is what comes back");
            }

            #[test]
            fn decode_never_panics(words in proptest::collection::vec(any::<u16>(), 0..6), t in 0usize..10) {
                let types = [DataType::Bool, DataType::U16, DataType::I16, DataType::U32, DataType::I32,
                    DataType::U64, DataType::I64, DataType::F32, DataType::F64, DataType::String(2)];
                let _ = TagCodec::new(types[t]).decode_registers(&words);
            }
        }
    }
}
