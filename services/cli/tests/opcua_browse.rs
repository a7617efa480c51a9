//! `fieldline opcua browse` against a real OPC UA server (asyncua): the printed `tags:`
//! section loads as the tags of a line document and names the server's variables.

use fieldline_core::config::LineConfig;
use fieldline_testkit::{
    opcua::{OpcuaOptions, OpcuaPeer},
    serde_json::json,
};

const BIN: &str = env!("CARGO_BIN_EXE_fieldline");

#[tokio::test]
async fn browse_prints_tags_for_a_line_document() -> anyhow::Result<()> {
    let spec = json!({
        "folder": "Press",
        "variables": [
            {"name": "Oil Temperature", "type": "Double", "value": 40.5},
            {"name": "Strokes", "type": "UInt32", "value": 3},
            {"name": "Recipe", "type": "String", "value": "a", "writable": true},
            {"name": "Enabled", "type": "Boolean", "value": true, "writable": true}
        ]
    });
    let peer = OpcuaPeer::start(&spec, OpcuaOptions::default()).await?;
    let pki = peer.dir().join("pki-browse");
    let out = tokio::process::Command::new(BIN)
        .args([
            "opcua",
            "browse",
            &peer.endpoint(),
            "--depth",
            "3",
            "--pki-dir",
        ])
        .arg(&pki)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("# ns=2;s=Oil Temperature | Oil Temperature | Double | read\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| Recipe | String | read/write"),
        "{stdout}"
    );

    let tags = stdout
        .split_once("tags:\n")
        .map(|(_, t)| t)
        .ok_or_else(|| anyhow::anyhow!("no tags: section in {stdout}"))?;
    let indented: String = tags.lines().map(|l| format!("  {l}\n")).collect();
    let doc = format!(
        "line: l1\ndevices:\n  - name: press\n    type: press\n    protocol: opcua\n    endpoint: \"{}\"\n    tags:\n{indented}",
        peer.endpoint()
    );
    let config = LineConfig::from_yaml(&doc).map_err(|e| anyhow::anyhow!("{e}\n{doc}"))?;
    let found: Vec<(String, String, String, bool)> = config.devices[0]
        .tags
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.address.clone(),
                t.data_type.clone(),
                t.writable,
            )
        })
        .collect();
    let expect =
        |n: &str, a: &str, t: &str, w: bool| (n.to_string(), a.to_string(), t.to_string(), w);
    assert_eq!(
        found,
        vec![
            expect("oil_temperature", "ns=2;s=Oil Temperature", "f64", false),
            expect("strokes", "ns=2;s=Strokes", "u32", false),
            expect("recipe", "ns=2;s=Recipe", "string", true),
            expect("enabled", "ns=2;s=Enabled", "bool", true),
        ]
    );
    peer.stop().await;
    Ok(())
}
