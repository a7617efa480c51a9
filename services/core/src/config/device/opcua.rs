//! Settings of an OPC UA server (`protocol: opcua`). A tag's `address` is a NodeId such as
//! `ns=2;s=Line1.Temperature`.

use std::{path::PathBuf, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{validate_tags, validate_timing};
use crate::config::{Problems, SecretRef, TagConfig};

/// An OPC UA server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcuaDeviceConfig {
    /// Device name, `[a-z0-9_-]`, unique within the line.
    pub name: String,
    /// Device type; selects plugins, alarms and control rules.
    #[serde(rename = "type")]
    pub device_type: String,
    /// The server's `opc.tcp://host:port/path` endpoint URL.
    pub endpoint: String,
    /// Security, identity, subscriptions.
    #[serde(default)]
    pub opcua: OpcuaSettings,
    /// How often to read the tags in `mode: poll`, e.g. `500ms`; the sampling interval when
    /// subscribing unless `opcua.sampling_interval` sets one.
    #[serde(default = "super::default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Time limit for connecting and for each request.
    #[serde(default = "super::default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Longest pause between reconnect attempts (the backoff doubles up to this).
    #[serde(default = "super::default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// The tags to read; each `address` is a NodeId.
    pub tags: Vec<TagConfig>,
}

/// How to connect to an OPC UA server and what to ask of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcuaSettings {
    /// Security policy of the endpoint to use: `none`, `basic256sha256` or
    /// `aes128-sha256-rsaoaep`. Anything but `none` needs `security_mode` sign or
    /// sign-and-encrypt.
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    /// Message security: `none`, `sign` or `sign-and-encrypt`; `none` exactly when the policy
    /// is `none`.
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// Who the adapter is to the server: anonymous (the default), a user name with a password
    /// from a secret, or an X.509 certificate and its private key.
    #[serde(default)]
    pub identity: Identity,
    /// The adapter's application URI. It is written into the client certificate the adapter
    /// creates, and servers check that the two agree.
    #[serde(default = "default_application_uri")]
    pub application_uri: String,
    /// Folder of the adapter's own certificate and key (`own/cert.der`,
    /// `private/private.pem`, created when missing) and of its trust list (`trusted/`, with
    /// refused server certificates copied to `rejected/`).
    #[serde(default = "default_pki_dir")]
    pub pki_dir: PathBuf,
    /// Server certificates (DER or PEM files) to trust; they are added to the trust list at
    /// start.
    #[serde(default)]
    pub trusted_server_certificates: Vec<PathBuf>,
    /// Trust a server certificate that is not in the trust list (and add it). Off by default:
    /// an unknown server is refused.
    #[serde(default)]
    pub trust_unknown_servers: bool,
    /// `subscribe` (monitored items; the server reports changes) or `poll` (a Read of every
    /// tag each `poll_interval`).
    #[serde(default)]
    pub mode: ReadMode,
    /// How often the server samples each monitored item, e.g. `100ms`; the device's
    /// `poll_interval` when absent. `0s` asks for the fastest rate the server offers.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub sampling_interval: Option<Duration>,
    /// How often the server sends the changes it collected, e.g. `500ms`; the device's
    /// `poll_interval` when absent.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub publishing_interval: Option<Duration>,
    /// Most monitored items in one subscription; more tags are spread over several
    /// subscriptions. The server's own limit, when it publishes one, also applies.
    #[serde(default = "default_max_items_per_subscription")]
    pub max_items_per_subscription: u32,
}

impl Default for OpcuaSettings {
    fn default() -> Self {
        Self {
            security_policy: SecurityPolicy::default(),
            security_mode: SecurityMode::default(),
            identity: Identity::default(),
            application_uri: default_application_uri(),
            pki_dir: default_pki_dir(),
            trusted_server_certificates: Vec::new(),
            trust_unknown_servers: false,
            mode: ReadMode::default(),
            sampling_interval: None,
            publishing_interval: None,
            max_items_per_subscription: default_max_items_per_subscription(),
        }
    }
}

fn default_application_uri() -> String {
    "urn:fieldline:adapter".into()
}
fn default_pki_dir() -> PathBuf {
    PathBuf::from("pki")
}
fn default_max_items_per_subscription() -> u32 {
    1000
}

/// OPC UA security policies the adapter speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SecurityPolicy {
    /// No signing or encryption.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Basic256Sha256.
    #[serde(rename = "basic256sha256")]
    Basic256Sha256,
    /// Aes128_Sha256_RsaOaep.
    #[serde(rename = "aes128-sha256-rsaoaep")]
    Aes128Sha256RsaOaep,
}

/// OPC UA message security modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityMode {
    /// Messages are neither signed nor encrypted.
    #[default]
    None,
    /// Messages are signed.
    Sign,
    /// Messages are signed and encrypted.
    SignAndEncrypt,
}

/// Whether values are reported by the server or read on schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Monitored items in subscriptions: the server reports changes.
    #[default]
    Subscribe,
    /// A Read of every tag each `poll_interval`.
    Poll,
}

/// The user identity the adapter presents when it activates its session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Identity {
    /// No user.
    Anonymous {},
    /// A user name and password.
    Username {
        /// The user name.
        username: String,
        /// The password comes from a secret, never from this document.
        password: SecretRef,
    },
    /// An X.509 user certificate and its private key.
    Certificate {
        /// The user certificate (DER or PEM).
        cert: PathBuf,
        /// The certificate's private key (PEM).
        key: PathBuf,
    },
}

impl Default for Identity {
    fn default() -> Self {
        Identity::Anonymous {}
    }
}

impl OpcuaDeviceConfig {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if !self.endpoint.starts_with("opc.tcp://") {
            problems.push(
                format!("{at}.endpoint"),
                format!("{:?} is not an opc.tcp:// endpoint URL", self.endpoint),
            );
        }
        self.opcua.validate(&format!("{at}.opcua"), problems);
        validate_timing(self.poll_interval, self.timeout, at, problems);
        validate_tags(&self.tags, at, problems, TagConfig::resolve_value);
    }
}

impl OpcuaSettings {
    fn validate(&self, at: &str, problems: &mut Problems) {
        let s = self;
        let mut err = |path: String, message: String| problems.push(path, message);
        match (s.security_policy, s.security_mode) {
            (SecurityPolicy::None, SecurityMode::None) => {}
            (SecurityPolicy::None, _) => err(
                format!("{at}.security_mode"),
                "security policy none allows security mode none only".into(),
            ),
            (_, SecurityMode::None) => err(
                format!("{at}.security_mode"),
                "a security policy other than none needs sign or sign-and-encrypt".into(),
            ),
            _ => {}
        }
        match &s.identity {
            Identity::Anonymous {} => {}
            Identity::Username { username, password } => {
                if username.trim().is_empty() {
                    err(
                        format!("{at}.identity.username"),
                        "must not be empty".into(),
                    );
                }
                if let Some(problem) = password.problem() {
                    err(format!("{at}.identity.password"), problem.into());
                }
            }
            Identity::Certificate { cert, key } => {
                for (field, path) in [("cert", cert), ("key", key)] {
                    if path.as_os_str().is_empty() {
                        err(
                            format!("{at}.identity.{field}"),
                            "must be a file path".into(),
                        );
                    }
                }
            }
        }
        if !s.application_uri.contains(':') {
            err(
                format!("{at}.application_uri"),
                format!("{:?} is not a URI", s.application_uri),
            );
        }
        if s.pki_dir.as_os_str().is_empty() {
            err(format!("{at}.pki_dir"), "must be a folder path".into());
        }
        for (i, path) in s.trusted_server_certificates.iter().enumerate() {
            let known = path.extension().is_some_and(|e| e == "der" || e == "pem");
            if !known {
                err(
                    format!("{at}.trusted_server_certificates[{i}]"),
                    format!("{} is not a .der or .pem file", path.display()),
                );
            }
        }
        if s.publishing_interval
            .is_some_and(|p| p < Duration::from_millis(10))
        {
            err(
                format!("{at}.publishing_interval"),
                "must be at least 10ms".into(),
            );
        }
        if s.max_items_per_subscription == 0 {
            err(
                format!("{at}.max_items_per_subscription"),
                "must be at least 1".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{DeviceConfig, LineConfig};

    use super::*;

    fn line(opcua: &str) -> String {
        format!(
            "line: l1
devices:
  - name: press
    type: press
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840/
{opcua}
    tags:
      - name: temperature
        address: ns=2;s=Temperature
        type: f64
        deadband_percent: 2
"
        )
    }

    #[test]
    fn full_settings_load() {
        let config = LineConfig::from_yaml(&line(
            "    opcua:
      security_policy: aes128-sha256-rsaoaep
      security_mode: sign-and-encrypt
      identity: { kind: username, username: op, password: { env: OPCUA_PASSWORD } }
      pki_dir: /var/lib/fieldline/pki
      trusted_server_certificates: [/etc/fieldline/server.der]
      mode: poll
      sampling_interval: 100ms
      publishing_interval: 500ms
      max_items_per_subscription: 50",
        ))
        .unwrap();
        let s = settings(&config.devices[0]);
        assert_eq!(s.security_policy, SecurityPolicy::Aes128Sha256RsaOaep);
        assert_eq!(s.security_mode, SecurityMode::SignAndEncrypt);
        assert_eq!(
            s.identity,
            Identity::Username {
                username: "op".into(),
                password: SecretRef::env("OPCUA_PASSWORD"),
            }
        );
        assert_eq!(s.mode, ReadMode::Poll);
        assert_eq!(s.sampling_interval, Some(Duration::from_millis(100)));
        assert_eq!(s.max_items_per_subscription, 50);
        assert!(!s.trust_unknown_servers);
    }

    fn settings(device: &DeviceConfig) -> OpcuaSettings {
        match device {
            DeviceConfig::Opcua(d) => d.opcua.clone(),
            other => panic!("{} is not an opcua device", other.name()),
        }
    }

    #[test]
    fn the_example_line_loads() {
        let config = LineConfig::from_yaml(include_str!(
            "../../../../../deploy/examples/opcua-line.yaml"
        ))
        .unwrap();
        let press = settings(config.device("press").unwrap());
        assert_eq!(press.security_policy, SecurityPolicy::Basic256Sha256);
        assert_eq!(press.mode, ReadMode::Subscribe);
        let oven = settings(config.device("oven").unwrap());
        assert_eq!(oven.mode, ReadMode::Poll);
    }

    #[test]
    fn absent_section_means_defaults() {
        let config = LineConfig::from_yaml(&line("")).unwrap();
        assert_eq!(settings(&config.devices[0]), OpcuaSettings::default());
        let s = OpcuaSettings::default();
        assert_eq!(s.security_policy, SecurityPolicy::None);
        assert_eq!(s.identity, Identity::Anonymous {});
        assert_eq!(s.max_items_per_subscription, 1000);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let errors = LineConfig::from_yaml(&line(
            "    opcua:
      security_policy: basic256sha256
      identity: { kind: username, username: ' ', password: {} }
      trusted_server_certificates: [server.crt]
      publishing_interval: 1ms
      max_items_per_subscription: 0",
        ))
        .unwrap_err()
        .to_string();
        for expected in [
            "devices[0].opcua.security_mode: a security policy other than none",
            "devices[0].opcua.identity.username: must not be empty",
            "devices[0].opcua.identity.password: set env",
            "devices[0].opcua.trusted_server_certificates[0]: server.crt is not",
            "devices[0].opcua.publishing_interval: must be at least 10ms",
            "devices[0].opcua.max_items_per_subscription: must be at least 1",
        ] {
            assert!(
                errors.contains(expected),
                "{expected:?} missing in {errors}"
            );
        }
    }

    #[test]
    fn unknown_fields_and_modes_are_refused() {
        for wrong in [
            "    opcua: { security_policy: basic128rsa15, security_mode: sign }",
            "    opcua: { security_mode: sign }",
            "    opcua: { identity: { kind: anonymous, username: x } }",
            "    opcua: { identity: { kind: certificate, cert: a.der } }",
            "    opcua: { publish_interval: 1s }",
        ] {
            assert!(
                LineConfig::from_yaml(&line(wrong)).is_err(),
                "{wrong} must be refused"
            );
        }
    }
}
