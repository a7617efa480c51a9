//! Parsing and validating whole line documents.

use std::time::Duration;

use super::*;

const GOOD: &str = r#"
line: packaging-1
devices:
  - name: filler
    type: filler-v2
    protocol: modbus-tcp
    endpoint: 127.0.0.1:5020
    unit_id: 1
    poll_interval: 500ms
    tags:
      - name: temperature
        address: holding:0
        type: f32
        word_order: big
        byte_order: big
        scale: 0.01
        unit: degC
        deadband: 0.05
      - name: pump_run
        address: coil:0
        type: bool
        writable: true
"#;

#[test]
fn the_design_example_is_valid() {
    let c = LineConfig::from_yaml(GOOD).unwrap();
    assert_eq!(c.line, "packaging-1");
    let d = c.devices[0].modbus().unwrap();
    assert_eq!(d.poll_interval, Duration::from_millis(500));
    assert_eq!(d.tags.len(), 2);
    assert_eq!(c.mqtt.address, "127.0.0.1:1883");
}

fn errors_of(yaml: &str) -> Vec<String> {
    match LineConfig::from_yaml(yaml) {
        Ok(_) => panic!("expected errors"),
        Err(ConfigErrors(errors)) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_problem_is_reported_with_its_path_at_once() {
    let yaml = GOOD
        .replace("address: holding:0", "address: holdng:0")
        .replace("name: pump_run", "name: Pump Run")
        .replace("type: bool", "type: f32")
        .replace("127.0.0.1:5020", "127.0.0.1");
    let errors = errors_of(&yaml);
    let expected = [
        "devices[0].endpoint: \"127.0.0.1\" is not host:port",
        "devices[0].tags[0].address: unknown table \"holdng\"; use coil, discrete, input or holding",
        "devices[0].tags[1].name: name \"Pump Run\" contains 'P'",
        "devices[0].tags[1].type: a coil holds one bit, so its type must be bool",
    ];
    for e in expected {
        assert!(
            errors.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

#[test]
fn unknown_fields_are_errors_with_a_path() {
    let errors = errors_of(&GOOD.replace("unit: degC", "unti: degC"));
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("unknown field `unti`"), "{errors:?}");
    assert!(errors[0].starts_with("devices[0].tags[0]"), "{errors:?}");
}

#[test]
fn unknown_protocol_is_an_error() {
    let errors = errors_of(&GOOD.replace("modbus-tcp", "modbus-udp"));
    assert!(errors[0].contains("modbus-udp"), "{errors:?}");
}

#[test]
fn duplicates_ranges_and_writability_are_checked() {
    let yaml = GOOD
        .replace("name: pump_run", "name: temperature")
        .replace("scale: 0.01", "scale: 0")
        .replace("deadband: 0.05", "deadband: -1")
        .replace("poll_interval: 500ms", "poll_interval: 1ms");
    let errors = errors_of(&yaml);
    for e in [
        "devices[0].tags[1].name: tag \"temperature\" is defined twice",
        "devices[0].tags[0].scale: 0 is not a usable scale",
        "devices[0].tags[0].deadband: -1 must be a number of at least 0",
        "devices[0].poll_interval: must be at least 10ms",
    ] {
        assert!(
            errors.iter().any(|got| got == e),
            "missing {e:?} in {errors:#?}"
        );
    }
    let ro = GOOD.replace("address: coil:0", "address: discrete:0");
    assert!(
        errors_of(&ro)
            .iter()
            .any(|e| e == "devices[0].tags[1].writable: discretes are read-only in Modbus")
    );
}

#[test]
fn rtu_devices_share_a_port_with_one_setting_and_distinct_units() {
    let rtu = |name: &str, unit: u8, baud: u32| {
        format!(
            "  - {{ name: {name}, type: t, protocol: modbus-rtu, endpoint: /dev/ttyUSB0, unit_id: {unit}, serial: {{ baud_rate: {baud}, parity: even }}, tags: [ {{ name: a, address: \"holding:0\", type: u16 }} ] }}\n"
        )
    };
    let ok = format!(
        "line: l\ndevices:\n{}{}",
        rtu("a", 1, 19200),
        rtu("b", 2, 19200)
    );
    let c = LineConfig::from_yaml(&ok).unwrap();
    assert_eq!(c.devices[1].serial().unwrap().parity, Parity::Even);
    let clash = format!(
        "line: l\ndevices:\n{}{}{}",
        rtu("a", 1, 19200),
        rtu("b", 1, 9600),
        rtu("c", 0, 19200)
    );
    let errors = errors_of(&clash);
    for e in [
        "devices[1].serial: differs from devices[0] on the same port \"/dev/ttyUSB0\"",
        "devices[1].unit_id: unit 1 on \"/dev/ttyUSB0\" is already devices[0]",
        "devices[2].unit_id: 0 is not an RTU slave address (1 to 247)",
    ] {
        assert!(
            errors.iter().any(|got| got == e),
            "missing {e:?} in {errors:#?}"
        );
    }
}

#[test]
fn buffer_sizes_take_units() {
    assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
    assert_eq!("1GiB".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
    assert_eq!("100MB".parse::<ByteSize>(), Ok(ByteSize(100_000_000)));
    assert!("12 parsecs".parse::<ByteSize>().is_err());
    let yaml = format!(
        "{GOOD}storage:\n  buffer:\n    dir: /var/lib/fieldline/buffer\n    max_size: 2GiB\n    when_full: drop_oldest\n"
    );
    let buffer = LineConfig::from_yaml(&yaml)
        .unwrap()
        .storage
        .buffer
        .unwrap();
    assert_eq!(
        (buffer.max_size, buffer.fsync, buffer.when_full),
        (ByteSize(2 << 30), FsyncPolicy::Always, WhenFull::DropOldest)
    );
    let tiny = yaml.replace("2GiB", "1000");
    assert!(
        errors_of(&tiny)
            .iter()
            .any(|e| e.starts_with("storage.buffer.max_size"))
    );
}

#[test]
fn malformed_yaml_is_an_error_not_a_panic() {
    for bad in [
        "",
        "line: [",
        "line: a\ndevices: 3",
        "\u{feff}line: x\ndevices: []",
    ] {
        assert!(LineConfig::from_yaml(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn secrets_are_written_as_env_or_file_maps() {
    let yaml = format!(
        "{GOOD}mqtt:\n  username: plant\n  password: {{ env: MQTT_PASSWORD }}\nstorage:\n  sql:\n    url: mysql://fieldline@db:3306/fieldline\n    password:\n      file: /run/secrets/sql\n"
    );
    let c = LineConfig::from_yaml(&yaml).unwrap();
    assert_eq!(c.mqtt.password, Some(SecretRef::env("MQTT_PASSWORD")));
    assert_eq!(
        c.storage.sql.unwrap().password,
        Some(SecretRef::file("/run/secrets/sql"))
    );
    let both = yaml.replace("{ env: MQTT_PASSWORD }", "{ env: A, file: /b }");
    assert!(
        errors_of(&both)
            .iter()
            .any(|e| e == "mqtt.password: set either env or file, not both")
    );
    let neither = yaml.replace("{ env: MQTT_PASSWORD }", "{}");
    assert!(
        errors_of(&neither)
            .iter()
            .any(|e| e.starts_with("mqtt.password: set env"))
    );
}

#[test]
fn type_and_semantic_problems_are_reported_together() {
    let yaml = GOOD
        .replace("poll_interval: 500ms", "poll_interval: fast")
        .replace("name: pump_run", "name: temperature");
    let problems = match LineConfig::from_yaml(&yaml) {
        Ok(_) => panic!("expected problems"),
        Err(ConfigErrors(problems)) => problems,
    };
    let found: Vec<(&str, Option<usize>)> =
        problems.iter().map(|p| (p.path.as_str(), p.line)).collect();
    assert_eq!(
        found,
        [
            ("devices[0].poll_interval", Some(9)),
            ("devices[0].tags[1].name", Some(19)),
        ],
        "{problems:#?}"
    );
}

#[test]
fn a_device_that_cannot_be_read_is_set_aside_and_the_others_still_checked() {
    let yaml = GOOD.replace(
        "devices:\n",
        "devices:\n  - { name: broken, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\" }\n",
    );
    let yaml = yaml.replace("scale: 0.01", "scale: 0");
    let errors = errors_of(&yaml);
    assert_eq!(
        errors,
        [
            "devices[0]: missing field `tags`",
            "devices[1].tags[0].scale: 0 is not a usable scale",
        ]
    );
}

#[test]
fn an_outbox_too_small_to_reclaim_space_is_refused_with_its_path() {
    let doc = format!(
        "{GOOD}adapter:\n  outbox: {{ max_size: 64KiB, memory: 100KiB, resend_after: 10ms }}\n"
    );
    let problems = errors_of(&doc);
    for path in [
        "adapter.outbox.max_size",
        "adapter.outbox.memory",
        "adapter.outbox.resend_after",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(path)),
            "{path} in {problems:?}"
        );
    }
}
