//! MQTT client options from the line document.

use std::time::Duration;

use fieldline_core::config::MqttConfig;
use rumqttc::MqttOptions;

/// Options for a persistent-session client: the broker keeps QoS 1 messages for it while it
/// is away, so nothing published in the meantime is lost.
pub fn options(config: &MqttConfig, client_id: &str) -> crate::Result<MqttOptions> {
    let (host, port) = config
        .address
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().ok()?,
            ))
        })
        .ok_or_else(|| crate::Error::MqttAddress(config.address.clone()))?;
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(config.keep_alive.max(Duration::from_secs(5)))
        .set_clean_session(false)
        .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    if let Some(user) = &config.username {
        let password = match &config.password {
            Some(secret) => crate::secret::resolve(secret)?,
            None => String::new(),
        };
        options.set_credentials(user.clone(), password);
    }
    Ok(options)
}

/// How long a client waits at most between attempts to reach its broker: short, because a
/// broker is local infrastructure that comes back quickly, and every second away is a second
/// the line is not publishing.
pub const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(2);
