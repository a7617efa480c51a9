//! Configuration text → addresses, data types and whole line documents.
//!
//! The line document comes from a file, a ConfigMap or a `ProductionLine` resource that
//! anyone with write access can edit; parsing and validation must report problems, never
//! panic. The address and type parsers are fuzzed on their own too, since short inputs reach
//! their corners far faster than a whole YAML document does.

#![no_main]

use fieldline_core::{
    codec::{Address, DataType},
    config::LineConfig,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(address) = text.parse::<Address>() {
        // What is accepted prints back to a form that parses to the same address.
        assert_eq!(address.to_string().parse::<Address>(), Ok(address));
    }
    if let Ok(data_type) = text.parse::<DataType>() {
        assert_eq!(data_type.to_string().parse::<DataType>(), Ok(data_type));
    }
    if let Ok(config) = LineConfig::from_yaml(text) {
        for device in config.devices.iter().filter_map(|d| d.modbus()) {
            for tag in &device.tags {
                let resolved = tag.resolve().expect("a validated tag resolves");
                // A valid tag's registers lie inside the table.
                let end =
                    u32::from(resolved.address.offset) + u32::from(resolved.codec.register_count());
                assert!(end <= 65536, "{tag:?} runs past the table");
            }
        }
    }
});
