//! The JSON Schema of the line document, generated from the types above. Editors use it to
//! complete and check documents, and the `ProductionLine` resource is built on it.
//! `fieldline config schema` prints it; the copy in `deploy/line-config.schema.json` is
//! checked against it by this module's test.

use super::LineConfig;

/// The schema of a line document, as pretty-printed JSON with a trailing newline.
pub fn line_schema_json() -> String {
    let schema = schemars::schema_for!(LineConfig);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_schema_is_the_generated_one() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/line-config.schema.json"
        );
        let published = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            published == line_schema_json(),
            "{path} is not the schema of the line document; regenerate it with \
             `cargo run -p fieldline -- config schema > deploy/line-config.schema.json`"
        );
    }

    #[test]
    fn each_protocol_is_a_closed_variant_of_the_schema() {
        let schema: serde_json::Value = serde_json::from_str(&line_schema_json()).unwrap();
        let device = &schema["$defs"]["DeviceConfig"];
        let variants = device["oneOf"].as_array().expect("DeviceConfig is a oneOf");
        let protocols: Vec<&str> = variants
            .iter()
            .filter_map(|v| v["properties"]["protocol"]["const"].as_str())
            .collect();
        assert_eq!(
            protocols,
            ["modbus-tcp", "modbus-rtu", "serial-line", "opcua", "mqtt"]
        );
    }
}
