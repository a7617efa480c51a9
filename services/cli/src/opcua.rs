//! `fieldline opcua browse`: walks an OPC UA server's address space from the Objects folder
//! and prints its variables with a `tags:` section ready for a line document.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use fieldline_adapter::drivers::opcua::client::setup;

use crate::Error;
use fieldline_core::config::opcua::{OpcuaSettings, SecurityMode, SecurityPolicy};
use opcua::{
    client::Session,
    types::{
        AttributeId, BrowseDescription, BrowseDirection, NodeClass, NodeId, ObjectId, ReadValueId,
        ReferenceTypeId, TimestampsToReturn, Variant,
    },
};

/// What to browse and how to connect.
#[derive(Debug, Clone, clap::Args)]
pub struct BrowseArgs {
    /// `opc.tcp://host:port/path`.
    pub endpoint: String,
    /// How many levels below Objects to descend.
    #[arg(long, default_value_t = 5)]
    pub depth: usize,
    /// Also list the server's own nodes (namespace 0).
    #[arg(long)]
    pub all_namespaces: bool,
    /// none, basic256sha256 or aes128-sha256-rsaoaep.
    #[arg(long, default_value = "none", value_parser = parse_policy)]
    pub security_policy: SecurityPolicy,
    /// none, sign or sign-and-encrypt.
    #[arg(long, default_value = "none", value_parser = parse_mode)]
    pub security_mode: SecurityMode,
    /// Folder of this client's certificate and trust list (created when missing).
    #[arg(long, default_value = "pki")]
    pub pki_dir: PathBuf,
    /// A server certificate to trust (DER or PEM); may be repeated.
    #[arg(long)]
    pub trust: Vec<PathBuf>,
    /// Trust whatever certificate the server presents.
    #[arg(long)]
    pub trust_unknown_server: bool,
    /// Time limit for connecting and for each request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

fn parse_policy(s: &str) -> Result<SecurityPolicy, serde_yaml::Error> {
    serde_plain(s)
}

fn parse_mode(s: &str) -> Result<SecurityMode, serde_yaml::Error> {
    serde_plain(s)
}

/// Parses a config enum from its YAML spelling; clap names the option and the value.
fn serde_plain<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, serde_yaml::Error> {
    serde_yaml::from_str(s)
}

/// One variable found on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub node_id: String,
    pub browse_name: String,
    /// The OPC UA data type's name (`Double`), or its NodeId when not a built-in scalar.
    pub data_type: String,
    /// The Fieldline tag type, when the data type maps to one.
    pub tag_type: Option<&'static str>,
    pub readable: bool,
    pub writable: bool,
}

/// The name and Fieldline type of a built-in OPC UA scalar type (namespace 0 numeric ids).
pub fn data_type(id: &NodeId) -> (String, Option<&'static str>) {
    let builtin = match (id.namespace, id.as_u32()) {
        (0, Some(n)) => match n {
            1 => Some(("Boolean", "bool")),
            2 => Some(("SByte", "i16")),
            3 => Some(("Byte", "u16")),
            4 => Some(("Int16", "i16")),
            5 => Some(("UInt16", "u16")),
            6 => Some(("Int32", "i32")),
            7 => Some(("UInt32", "u32")),
            8 => Some(("Int64", "i64")),
            9 => Some(("UInt64", "u64")),
            10 => Some(("Float", "f32")),
            11 => Some(("Double", "f64")),
            12 => Some(("String", "string")),
            21 => Some(("LocalizedText", "string")),
            _ => None,
        },
        _ => None,
    };
    match builtin {
        Some((name, tag)) => (name.to_string(), Some(tag)),
        None => (id.to_string(), None),
    }
}

/// A tag name from a browse name: lower case, `[a-z0-9_-]` only, unique among `taken`.
pub fn tag_name(browse_name: &str, taken: &mut HashSet<String>) -> String {
    let mut name: String = browse_name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    name = name.trim_matches('_').to_string();
    if name.is_empty() {
        name = "tag".into();
    }
    let mut unique = name.clone();
    let mut n = 2;
    while !taken.insert(unique.clone()) {
        unique = format!("{name}_{n}");
        n += 1;
    }
    unique
}

/// The listing and `tags:` section for `variables`.
pub fn render(variables: &[Variable]) -> String {
    let mut out = String::from("# NodeId | browse name | data type | access\n");
    for v in variables {
        let access = match (v.readable, v.writable) {
            (true, true) => "read/write",
            (true, false) => "read",
            (false, true) => "write",
            (false, false) => "none",
        };
        out.push_str(&format!(
            "# {} | {} | {} | {access}\n",
            v.node_id, v.browse_name, v.data_type
        ));
    }
    out.push_str("tags:\n");
    let mut taken = HashSet::new();
    for v in variables {
        let name = tag_name(&v.browse_name, &mut taken);
        let Some(tag_type) = v.tag_type else {
            out.push_str(&format!(
                "  # {name}: {} has data type {}, which no tag type holds\n",
                v.node_id, v.data_type
            ));
            continue;
        };
        let writable = if v.writable { ", writable: true" } else { "" };
        out.push_str(&format!(
            "  - {{ name: {name}, address: {:?}, type: {tag_type}{writable} }}\n",
            v.node_id
        ));
    }
    out
}

/// Connects, browses and prints.
pub async fn browse(args: BrowseArgs) -> crate::Result<()> {
    if !args.endpoint.starts_with("opc.tcp://") {
        return Err(Error::NotOpcua(args.endpoint));
    }
    let settings = OpcuaSettings {
        security_policy: args.security_policy,
        security_mode: args.security_mode,
        pki_dir: args.pki_dir.clone(),
        trusted_server_certificates: args.trust.clone(),
        trust_unknown_servers: args.trust_unknown_server,
        ..OpcuaSettings::default()
    };
    let mut setup = setup(&args.endpoint, args.timeout, &settings, "Fieldline browser")?;
    let (session, event_loop) = setup
        .client
        .connect_to_matching_endpoint(setup.endpoint.clone(), setup.identity.clone())
        .await
        .map_err(|status| Error::OpcuaConnect {
            endpoint: args.endpoint.clone(),
            status: status.to_string(),
        })?;
    session.disable_reconnects();
    let mut events = event_loop.spawn();
    tokio::select! {
        connected = tokio::time::timeout(args.timeout, session.wait_for_connection()) => {
            if !connected.unwrap_or(false) {
                return Err(Error::OpcuaNoSession {
                    endpoint: args.endpoint,
                    after: args.timeout,
                });
            }
        }
        ended = &mut events => {
            let status = ended.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            return Err(Error::OpcuaSession {
                endpoint: args.endpoint,
                status,
            });
        }
    }
    let variables = walk(&session, args.depth, args.all_namespaces).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
    events.abort();
    crate::output::print(&render(&variables?))?;
    Ok(())
}

/// Every variable below Objects, depth first, down to `depth` levels.
async fn walk(session: &Session, depth: usize, all: bool) -> crate::Result<Vec<Variable>> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(NodeId::from(ObjectId::ObjectsFolder), 0usize)];
    while let Some((node, level)) = stack.pop() {
        if level >= depth || !seen.insert(node.clone()) {
            continue;
        }
        let description = BrowseDescription {
            node_id: node.clone(),
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: NodeClass::Object as u32 | NodeClass::Variable as u32,
            result_mask: 0x3f,
        };
        let results = session
            .browse(&[description], 1000, None)
            .await
            .map_err(|status| Error::OpcuaCall {
                what: format!("browsing {node}"),
                status: status.to_string(),
            })?;
        let mut children = Vec::new();
        for r in results
            .into_iter()
            .flat_map(|r| r.references.unwrap_or_default())
        {
            let child = r.node_id.node_id.clone();
            if child.namespace == 0 && !all {
                continue;
            }
            let name = r.browse_name.name.value().clone().unwrap_or_default();
            children.push((child, name, r.node_class));
        }
        let variables: Vec<_> = children
            .iter()
            .filter(|(_, _, class)| *class == NodeClass::Variable)
            .collect();
        if !variables.is_empty() {
            let reads: Vec<ReadValueId> = variables
                .iter()
                .flat_map(|(id, _, _)| {
                    [AttributeId::DataType, AttributeId::UserAccessLevel].map(|a| ReadValueId {
                        node_id: id.clone(),
                        attribute_id: a as u32,
                        ..Default::default()
                    })
                })
                .collect();
            let values = session
                .read(&reads, TimestampsToReturn::Neither, 0.0)
                .await
                .map_err(|status| Error::OpcuaCall {
                    what: format!("reading the variables of {node}"),
                    status: status.to_string(),
                })?;
            for (k, (id, name, _)) in variables.iter().enumerate() {
                let (data_type, tag_type) = match values.get(2 * k).and_then(|v| v.value.as_ref()) {
                    Some(Variant::NodeId(t)) => data_type(t),
                    _ => ("unknown".to_string(), None),
                };
                let access = match values.get(2 * k + 1).and_then(|v| v.value.as_ref()) {
                    Some(Variant::Byte(a)) => *a,
                    _ => 0,
                };
                found.push(Variable {
                    node_id: id.to_string(),
                    browse_name: name.clone(),
                    data_type,
                    tag_type,
                    readable: access & 0x01 != 0,
                    writable: access & 0x02 != 0,
                });
            }
        }
        // Variables may have children too (properties, structure members).
        for (id, _, _) in children.into_iter().rev() {
            stack.push((id, level + 1));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized_and_unique() {
        let mut taken = HashSet::new();
        assert_eq!(tag_name("Temperature", &mut taken), "temperature");
        assert_eq!(
            tag_name("Motor 1.Speed (rpm)", &mut taken),
            "motor_1_speed__rpm"
        );
        assert_eq!(tag_name("temperature", &mut taken), "temperature_2");
        assert_eq!(tag_name("°", &mut taken), "tag");
    }

    #[test]
    fn built_in_types_map_to_tag_types() {
        assert_eq!(
            data_type(&NodeId::new(0, 11u32)),
            ("Double".into(), Some("f64"))
        );
        assert_eq!(
            data_type(&NodeId::new(0, 7u32)),
            ("UInt32".into(), Some("u32"))
        );
        assert_eq!(data_type(&NodeId::new(0, 13u32)).1, None);
        assert_eq!(data_type(&NodeId::new(2, 11u32)).1, None);
    }

    #[test]
    fn the_tags_section_lists_usable_variables() {
        let v = |name: &str, tag_type, writable| Variable {
            node_id: format!("ns=2;s={name}"),
            browse_name: name.into(),
            data_type: "Double".into(),
            tag_type,
            readable: true,
            writable,
        };
        let out = render(&[v("Speed", Some("f64"), true), v("Blob", None, false)]);
        assert!(out.contains(
            "  - { name: speed, address: \"ns=2;s=Speed\", type: f64, writable: true }\n"
        ));
        assert!(out.contains("# ns=2;s=Speed | Speed | Double | read/write\n"));
        assert!(
            out.contains("  # blob: ns=2;s=Blob has data type Double, which no tag type holds")
        );
    }
}
