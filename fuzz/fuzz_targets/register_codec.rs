//! Register words from a device → typed value, and back.
//!
//! The adapter decodes every reply through `TagCodec::decode_registers` (or `decode_bit`), so
//! any word pattern, for any codec a valid configuration can build, must give a value or a
//! `DecodeError`, never a panic. A Good value must also survive being written back: encoding
//! it and decoding the result gives the same value.

#![no_main]

use arbitrary::Unstructured;
use fieldline_core::{
    Value,
    codec::{ByteOrder, DataType, TagCodec, WordOrder},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let codec = codec(u)?;
    let _ = codec.decode_bit(u.arbitrary()?);

    // Mostly the width the codec expects (what the adapter slices out of a reply), sometimes
    // any width, so the length check is exercised too.
    let len = if u.ratio(7, 8)? {
        usize::from(codec.register_count())
    } else {
        u.int_in_range(0..=260)?
    };
    let words = (0..len)
        .map(|_| u.arbitrary::<u16>())
        .collect::<arbitrary::Result<Vec<_>>>()?;

    if let Ok(value) = codec.decode_registers(&words) {
        check_round_trip(&codec, &words, &value);
    }

    // Commands write values that come from outside too: encoding any value must not panic.
    let value = match u.int_in_range(0..=4)? {
        0 => Value::Bool(u.arbitrary()?),
        1 => Value::I64(u.arbitrary()?),
        2 => Value::U64(u.arbitrary()?),
        3 => Value::F64(u.arbitrary()?),
        _ => Value::String(u.arbitrary()?),
    };
    if let Ok(words) = codec.encode_registers(&value) {
        assert_eq!(words.len(), usize::from(codec.register_count()));
        let _ = codec.decode_registers(&words);
    }
    Ok(())
}

/// Any codec a tag can resolve to (and a few more: scale on a bool is refused by `validate`,
/// but the codec must still not panic on it).
fn codec(u: &mut Unstructured<'_>) -> arbitrary::Result<TagCodec> {
    let data_type = match u.int_in_range(0..=9)? {
        0 => DataType::Bool,
        1 => DataType::U16,
        2 => DataType::I16,
        3 => DataType::U32,
        4 => DataType::I32,
        5 => DataType::U64,
        6 => DataType::I64,
        7 => DataType::F32,
        8 => DataType::F64,
        _ => DataType::String(u.int_in_range(1..=125)?),
    };
    let word_order = if u.arbitrary()? {
        WordOrder::Little
    } else {
        WordOrder::Big
    };
    let byte_order = if u.arbitrary()? {
        ByteOrder::Little
    } else {
        ByteOrder::Big
    };
    let bit = if u.ratio(1, 8)? {
        Some(u.int_in_range(0..=15)?)
    } else {
        None
    };
    Ok(TagCodec {
        data_type,
        word_order,
        byte_order,
        bit,
        scale: finite(u)?,
        offset: finite(u)?,
        decimals: if u.arbitrary()? {
            Some(u.int_in_range(0..=15)?)
        } else {
            None
        },
    })
}

fn finite(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<f64>> {
    if u.ratio(3, 4)? {
        return Ok(None);
    }
    let x: f64 = u.arbitrary()?;
    Ok(x.is_finite().then_some(x))
}

/// A Good value encodes, and the words decode to the same value. Scaled values go through
/// float arithmetic both ways and bit tags are written by read-modify-write, so for those only
/// the absence of panics is checked.
fn check_round_trip(codec: &TagCodec, words: &[u16], value: &Value) {
    if codec.bit.is_some() {
        assert!(codec.encode_registers(value).is_err());
        return;
    }
    let scaled = codec.scale.is_some() || codec.offset.is_some();
    if scaled && codec.data_type.is_numeric() {
        if let Ok(again) = codec.encode_registers(value) {
            let _ = codec.decode_registers(&again);
        }
        return;
    }
    let again = match codec.encode_registers(value) {
        Ok(again) => again,
        Err(e) => panic!("{value:?} decoded from {words:04x?} by {codec:?} does not encode: {e}"),
    };
    let back = codec
        .decode_registers(&again)
        .unwrap_or_else(|e| panic!("{again:04x?} (encoded {value:?}) does not decode: {e}"));
    match (codec.data_type, value, &back) {
        (DataType::F32, Value::F64(v), Value::F64(b)) => {
            // The decoded f64 is the f32's shortest decimal form: it must still be that f32.
            let device = f32_of(codec, words);
            assert_eq!(*v as f32, device, "{words:04x?} decoded to {v}");
            assert_eq!(*b as f32, *v as f32, "{value:?} came back as {back:?}");
        }
        _ => assert_eq!(&back, value, "{value:?} came back as {back:?}"),
    }
    // Integers and f64 are a bijection with their words; so is a string that filled every
    // byte (no NUL padding or trailing whitespace to trim away).
    let exact = match (codec.data_type, value) {
        (DataType::String(n), Value::String(s)) => s.len() == usize::from(n) * 2,
        (DataType::Bool | DataType::F32, _) => false,
        _ => true,
    };
    if exact {
        assert_eq!(again, words, "{value:?} re-encoded differently");
    }
}

/// The f32 the device sent, by the same layout rules as the codec, computed independently.
fn f32_of(codec: &TagCodec, words: &[u16]) -> f32 {
    let mut w = [words[0], words[1]];
    if codec.word_order == WordOrder::Little {
        w.reverse();
    }
    let bytes: Vec<u8> = w
        .iter()
        .flat_map(|w| match codec.byte_order {
            ByteOrder::Big => w.to_be_bytes(),
            ByteOrder::Little => w.to_le_bytes(),
        })
        .collect();
    f32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
