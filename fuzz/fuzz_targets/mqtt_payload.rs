//! MQTT payloads from a third party → the adapter's JSON mapper (typed tags, payload
//! timestamps) and Sparkplug B decoder and state machine, as the MQTT ingest driver sees them.
//!
//! Checked besides "no panic": a Good sample's value fits its tag's type, a Bad one carries no
//! value, and an oversized payload is refused before it is read.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use fieldline_adapter::drivers::mqtt::{json::JsonMapper, sparkplug::Node};
use fieldline_core::{
    Sample,
    config::{DeviceConfig, LineConfig},
};
use fieldline_proto::sparkplug::Payload;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const LINE: &str = "line: l
devices:
  - name: cnc
    type: t
    protocol: mqtt
    endpoint: \"127.0.0.1:1883\"
    mqtt: { format: json, topics: [cnc/+/status], timestamp: /ts, timestamp_format: unix-ms, max_payload: 4KiB }
    tags:
      - { name: speed, address: /spindle/speed, type: f64 }
      - { name: count, address: /count, type: u16 }
      - { name: mode, address: \"cnc/1/status#/mode\", type: string }
      - { name: run, address: /run, type: bool }
      - { name: big, address: /big, type: i64 }
";

fn check(samples: &[Sample], tags: &[fieldline_core::config::ResolvedValueTag]) {
    for s in samples {
        match &s.value {
            Some(v) if s.quality.is_good() => {
                if let Some(tag) = tags.iter().find(|t| t.name == s.tag) {
                    assert!(tag.value_type.convert(v.clone()).is_ok(), "{s:?}");
                }
                if let fieldline_core::Value::F64(x) = v {
                    assert!(x.is_finite(), "{s:?}");
                }
            }
            Some(_) => assert!(!s.quality.is_bad(), "a Bad sample with a value: {s:?}"),
            None => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(config) = LineConfig::from_yaml(LINE) else {
        return;
    };
    let Some(DeviceConfig::Mqtt(device)) = config.devices.first() else {
        return;
    };
    let settings = &device.mqtt;
    let tags: Vec<_> = device
        .tags
        .iter()
        .filter_map(|t| t.resolve_value().ok())
        .collect();
    let mut u = Unstructured::new(data);
    let Ok(json) = bool::arbitrary(&mut u) else {
        return;
    };
    if json {
        let Ok(mapper) = JsonMapper::new(device, settings) else {
            return;
        };
        let topic = if bool::arbitrary(&mut u).unwrap_or(false) {
            "cnc/1/status"
        } else {
            "cnc/2/status"
        };
        let payload = u.take_rest();
        match mapper.map(topic, payload, 1) {
            Ok(mapped) => {
                assert!(payload.len() <= 4096);
                check(&mapped.samples, &tags);
            }
            Err(_) => {}
        }
        return;
    }
    // Sparkplug: a sequence of messages on the node's and device's topics.
    let mut node = Node::new("plant", "edge1", Some("cnc"), tags.clone());
    let topics = [
        "spBv1.0/plant/NBIRTH/edge1",
        "spBv1.0/plant/NDATA/edge1",
        "spBv1.0/plant/NDEATH/edge1",
        "spBv1.0/plant/DBIRTH/edge1/cnc",
        "spBv1.0/plant/DDATA/edge1/cnc",
        "spBv1.0/plant/DDEATH/edge1/cnc",
        "spBv1.0/plant/DDATA/edge1/other",
    ];
    let mut now = 0i64;
    while let (Ok(which), Ok(bytes)) = (u8::arbitrary(&mut u), <&[u8]>::arbitrary(&mut u)) {
        now += 1;
        let topic = topics[usize::from(which) % topics.len()];
        let payload = Payload::decode(bytes).ok();
        let outcome = node.handle(topic, payload.as_ref(), now);
        check(&outcome.samples, &tags);
        if u.is_empty() {
            break;
        }
    }
});
