//! The checks of a line document that span devices: unique names, serial ports of their
//! own, Modbus devices sharing a link, and each device type's processing against the tags
//! of its devices. Each device checks itself ([`DeviceConfig::validate`]).

use std::{collections::HashSet, net::SocketAddr};

use super::{ConfigError, DeviceConfig, LineConfig, Problems, SecretRef, device::serial_line};
use crate::names::name_problem;

impl LineConfig {
    /// Checks everything parsing cannot: names, addresses, types, ranges, uniqueness.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut problems = Problems::default();
        self.validate_services(&mut problems);
        self.validate_devices(&mut problems);
        self.validate_device_types(&mut problems);
        problems.into_result()
    }

    /// The broker, storage backends and secrets.
    fn validate_services(&self, problems: &mut Problems) {
        let mut err = |path: String, message: String| problems.push(path, message);
        if let Some(p) = name_problem(&self.line) {
            err("line".into(), format!("name {p}"));
        }
        if self.mqtt.address.parse::<SocketAddr>().is_err() && !self.mqtt.address.contains(':') {
            err(
                "mqtt.address".into(),
                format!("{:?} is not host:port", self.mqtt.address),
            );
        }
        if let Some(influx) = &self.storage.influx {
            if !(influx.url.starts_with("http://") || influx.url.starts_with("https://")) {
                err(
                    "storage.influx.url".into(),
                    format!("{:?} must start with http:// or https://", influx.url),
                );
            }
            if let Err(crate::Error::Config(found)) = influx.target() {
                for e in found.0 {
                    err(e.path, e.message);
                }
            }
        }
        if self.processor.max_batch_bytes.0 > 32 << 20 {
            err(
                "processor.max_batch_bytes".into(),
                format!(
                    "{} bytes is more than the 32MiB a batch may have on its way to storage",
                    self.processor.max_batch_bytes.0
                ),
            );
        }
        if self.processor.max_batch_bytes.0 < 1024 {
            err(
                "processor.max_batch_bytes".into(),
                format!(
                    "{} bytes is too small for a batch; give it at least 1KiB",
                    self.processor.max_batch_bytes.0
                ),
            );
        }
        if self.processor.max_batch_samples == 0 {
            err(
                "processor.max_batch_samples".into(),
                "must be at least 1".into(),
            );
        }
        if self.storage.batch.max_points == 0 {
            err(
                "storage.batch.max_points".into(),
                "must be at least 1".into(),
            );
        }
        if let Some(sql) = &self.storage.sql
            && !(sql.url.starts_with("mysql://")
                || sql.url.starts_with("mariadb://")
                || sql.url.starts_with("sqlite:"))
        {
            err(
                "storage.sql.url".into(),
                format!(
                    "{:?} must start with mysql://, mariadb:// or sqlite:",
                    sql.url
                ),
            );
        }
        if let Some(buffer) = &self.storage.buffer
            && buffer.max_size.0 < 1 << 20
        {
            err(
                "storage.buffer.max_size".into(),
                format!(
                    "{} bytes is too small; give it at least 1MiB",
                    buffer.max_size.0
                ),
            );
        }
        let outbox = &self.adapter.outbox;
        if outbox.max_size.0 < 512 << 10 {
            // Space is reclaimed a segment (an eighth, at least 64KiB) at a time.
            err(
                "adapter.outbox.max_size".into(),
                format!(
                    "{} bytes is too small; give it at least 512KiB",
                    outbox.max_size.0
                ),
            );
        }
        if outbox.memory.0 < 1 << 20 {
            err(
                "adapter.outbox.memory".into(),
                format!(
                    "{} bytes is too small; give it at least 1MiB",
                    outbox.memory.0
                ),
            );
        }
        if outbox.resend_after < std::time::Duration::from_secs(1) {
            err(
                "adapter.outbox.resend_after".into(),
                format!(
                    "{:?} would send everything again and again; give it at least 1s",
                    outbox.resend_after
                ),
            );
        }
        let secrets = [
            ("mqtt.password", self.mqtt.password.as_ref()),
            ("adapter.write_token", self.adapter.write_token.as_ref()),
            (
                "storage.influx.password",
                self.storage
                    .influx
                    .as_ref()
                    .and_then(|i| i.password.as_ref()),
            ),
            (
                "storage.influx.token",
                self.storage.influx.as_ref().and_then(|i| i.token.as_ref()),
            ),
            (
                "storage.sql.password",
                self.storage.sql.as_ref().and_then(|s| s.password.as_ref()),
            ),
        ];
        for (path, secret) in secrets {
            if let Some(problem) = secret.and_then(SecretRef::problem) {
                err(path.into(), problem.into());
            }
        }
    }

    /// Each device, then what devices share: names, serial ports, Modbus links.
    fn validate_devices(&self, problems: &mut Problems) {
        if self.devices.is_empty() {
            problems.push("devices", "a line needs at least one device");
        }
        let mut device_names = HashSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            let at = format!("devices[{i}]");
            if let Some(p) = name_problem(device.name()) {
                problems.push(format!("{at}.name"), format!("name {p}"));
            } else if !device_names.insert(device.name()) {
                problems.push(
                    format!("{at}.name"),
                    format!("device {:?} is defined twice", device.name()),
                );
            }
            device.validate(&at, problems);
        }
        serial_line::validate_ports(&self.devices, problems);
        // Modbus devices on one endpoint share a link: one protocol, one serial setting,
        // distinct unit ids.
        for (i, d) in self.devices.iter().enumerate() {
            let Some(modbus) = d.modbus() else {
                continue;
            };
            let Some((j, first)) = self
                .devices
                .iter()
                .enumerate()
                .take(i)
                .find(|(_, o)| o.endpoint() == d.endpoint() && o.modbus().is_some())
            else {
                continue;
            };
            let at = format!("devices[{i}]");
            if first.protocol() != d.protocol() {
                problems.push(
                    format!("{at}.protocol"),
                    format!(
                        "{} shares endpoint {:?} with devices[{j}], which is {}",
                        d.protocol().as_str(),
                        d.endpoint(),
                        first.protocol().as_str()
                    ),
                );
            } else if first.serial() != d.serial() {
                problems.push(
                    format!("{at}.serial"),
                    format!(
                        "differs from devices[{j}] on the same port {:?}",
                        d.endpoint()
                    ),
                );
            }
            if let Some((k, _)) = self.devices.iter().enumerate().take(i).find(|(_, o)| {
                o.endpoint() == d.endpoint()
                    && o.modbus().is_some_and(|m| m.unit_id == modbus.unit_id)
            }) {
                problems.push(
                    format!("{at}.unit_id"),
                    format!(
                        "unit {} on {:?} is already devices[{k}]",
                        modbus.unit_id,
                        d.endpoint()
                    ),
                );
            }
        }
    }

    /// The processing of each device type against the tags its devices have.
    fn validate_device_types(&self, problems: &mut Problems) {
        let mut err = |path: String, message: String| problems.push(path, message);
        for (type_name, processing) in &self.device_types {
            let at = format!("device_types.{type_name}");
            let devices: Vec<&DeviceConfig> = self
                .devices
                .iter()
                .filter(|d| d.device_type() == type_name)
                .collect();
            if devices.is_empty() {
                err(at.clone(), format!("no device has type {type_name:?}"));
                continue;
            }
            // Tags every device of the type has, and whether each is writable everywhere.
            let tags: Vec<(&str, bool)> = devices[0]
                .tags()
                .iter()
                .filter(|t| {
                    devices
                        .iter()
                        .all(|d| d.tags().iter().any(|o| o.name == t.name))
                })
                .map(|t| {
                    let writable = devices
                        .iter()
                        .all(|d| d.tags().iter().any(|o| o.name == t.name && o.writable));
                    (t.name.as_str(), writable)
                })
                .collect();
            for (path, message) in
                crate::plugin::validate_plugins(&processing.plugins, &format!("{at}.plugins"))
            {
                err(path, message);
            }
            let mut tags = tags;
            for (i, plugin) in processing.plugins.iter().enumerate() {
                for input in plugin.inputs() {
                    if !tags.iter().any(|(n, _)| *n == input) {
                        err(
                            format!("{at}.plugins[{i}]"),
                            format!(
                                "input {input:?} is not a tag of the devices of this type (or an earlier plugin's output)"
                            ),
                        );
                    }
                }
                for output in plugin.outputs() {
                    if tags.iter().any(|(n, _)| *n == output) {
                        err(
                            format!("{at}.plugins[{i}]"),
                            format!(
                                "output {output:?} is already a tag of the devices of this type"
                            ),
                        );
                    } else {
                        tags.push((output, false));
                    }
                }
            }
            let tag_names: Vec<&str> = tags.iter().map(|(n, _)| *n).collect();
            for (path, message) in crate::alarm::validate_alarms(
                &processing.alarms,
                &format!("{at}.alarms"),
                &tag_names,
            ) {
                err(path, message);
            }
            for (i, rule) in processing.rules.iter().enumerate() {
                for (path, message) in rule.validate(&format!("{at}.rules[{i}]"), &tags) {
                    err(path, message);
                }
                if let Some((j, _)) = processing
                    .rules
                    .iter()
                    .enumerate()
                    .take(i)
                    .find(|(_, o)| o.name() == rule.name())
                {
                    err(
                        format!("{at}.rules[{i}].name"),
                        format!("{:?} is already rules[{j}]", rule.name()),
                    );
                }
            }
        }
    }
}
