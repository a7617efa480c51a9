//! Bytes from a serial-line device → the adapter's line framer → each parser → tag decoding,
//! as the serial-line driver sees them, in chunks of any size.
//!
//! Checked besides "no panic": a line never exceeds the limit, a Good value fits its tag's
//! type (a float is finite, an integer within range), and a line the framer returns is
//! exactly the bytes between line endings.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use fieldline_adapter::drivers::serial_line::parser::{Frame, Framer, Parser, decode};
use fieldline_core::{
    Value,
    config::{TagConfig, serial_line::LineParser},
};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64;

fn tags(addresses: &[&str]) -> Vec<fieldline_core::config::ResolvedValueTag> {
    let types = ["bool", "i16", "u16", "i64", "u64", "f32", "f64", "string"];
    let mut out = Vec::new();
    for address in addresses {
        for ty in types {
            let yaml = format!("{{ name: t, address: \"{address}\", type: {ty} }}");
            if let Ok(tag) = serde_yaml::from_str::<TagConfig>(&yaml)
                && let Ok(resolved) = tag.resolve_value()
            {
                out.push(resolved);
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(choice) = u8::arbitrary(&mut u) else {
        return;
    };
    let (config, addresses) = match choice % 3 {
        0 => (
            LineParser::KeyValue {
                pair_separator: ",".into(),
                key_separator: ":".into(),
            },
            vec!["TEMP", "HUM"],
        ),
        1 => (LineParser::Json, vec!["/temp", "/a/0", "/s"]),
        _ => (
            LineParser::Regex {
                pattern: r"T=(?P<temp>\S+) H=(?P<hum>\S+)".into(),
            },
            vec!["temp", "hum"],
        ),
    };
    let Ok(parser) = Parser::new(&config) else {
        return;
    };
    let tags = tags(&addresses);
    let mut framer = Framer::new(MAX);
    while let Ok(chunk) = <&[u8]>::arbitrary(&mut u) {
        if chunk.is_empty() && u.is_empty() {
            break;
        }
        for frame in framer.push(chunk) {
            let Frame::Line(line) = frame else { continue };
            assert!(
                line.len() <= MAX,
                "a line of {} bytes passed the limit",
                line.len()
            );
            assert!(!line.contains(&b'\n'));
            let Ok(text) = std::str::from_utf8(&line) else {
                continue;
            };
            let Ok(fields) = parser.parse(text) else {
                continue;
            };
            for tag in &tags {
                let Some(field) = fields.get(&tag.address) else {
                    continue;
                };
                if let Ok(value) = decode(tag, field) {
                    if let Value::F64(x) = value {
                        assert!(x.is_finite(), "{x} decoded as a Good value");
                    }
                    assert!(tag.value_type.convert(value.clone()).is_ok(), "{value:?}");
                }
            }
        }
    }
    framer.reset();
});
