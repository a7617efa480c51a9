//! OPC UA driver: monitored items in subscriptions (or a Read each poll) on an OPC UA server,
//! writes through the Write service with read-back.
//!
//! `client` turns the device's settings into a client (PKI, trust list, endpoint, identity),
//! `convert` maps data values to samples and values to variants, `plan` spreads tags over
//! subscriptions within the server's limits, and `driver` owns the session.

pub mod client;
pub mod convert;
mod driver;
pub mod plan;

use std::str::FromStr;

use fieldline_core::config::{OpcuaDeviceConfig, ResolvedValueTag};
use fieldline_runtime::CancellationToken;
use opcua::types::NodeId;
use tokio::sync::mpsc;

use super::{DeviceContext, WriteRequest};

/// The device's tags with their parsed NodeIds; the problems when there are any.
fn resolve(device: &OpcuaDeviceConfig) -> crate::Result<(Vec<ResolvedValueTag>, Vec<NodeId>)> {
    let mut tags = Vec::with_capacity(device.tags.len());
    let mut nodes = Vec::with_capacity(device.tags.len());
    let mut problems = Vec::new();
    for t in &device.tags {
        match t.resolve_value() {
            Ok(tag) => {
                match NodeId::from_str(&tag.address) {
                    Ok(node) => nodes.push(node),
                    Err(_) => problems.push(format!(
                        "tag {}: {:?} is not a NodeId (e.g. ns=2;s=Temperature or ns=2;i=42)",
                        t.name, tag.address
                    )),
                }
                tags.push(tag);
            }
            Err(p) => problems.extend(
                p.into_iter()
                    .map(|(field, m)| format!("tag {}.{field}: {m}", t.name)),
            ),
        }
    }
    if problems.is_empty() {
        Ok((tags, nodes))
    } else {
        Err(crate::Error::setting(problems.join("; ")).at(&device.name, "tags"))
    }
}

/// Whether `device` can be driven; the reason when not.
pub fn check(device: &OpcuaDeviceConfig) -> crate::Result<()> {
    resolve(device).map(drop)
}

/// Runs the device until `stop`.
pub async fn run(
    device: OpcuaDeviceConfig,
    cx: DeviceContext,
    writes: &mut mpsc::Receiver<WriteRequest>,
    stop: CancellationToken,
) {
    match resolve(&device) {
        Ok((tags, nodes)) => {
            driver::Driver::new(device, cx, tags, nodes)
                .run(writes, stop)
                .await
        }
        Err(error) => {
            tracing::error!(device = %device.name, %error, "device cannot be driven");
        }
    }
}
