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
        .tags()
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

#[tokio::test]
async fn browse_over_an_encrypted_endpoint_needs_the_server_trusted() -> anyhow::Result<()> {
    let spec = json!({"variables": [{"name": "Speed", "type": "Float", "value": 1.5}]});
    let peer = OpcuaPeer::start(
        &spec,
        OpcuaOptions {
            secure: true,
            ..Default::default()
        },
    )
    .await?;
    let browse = |pki: &str, trust: Option<std::path::PathBuf>| {
        let mut command = tokio::process::Command::new(BIN);
        command
            .args(["opcua", "browse", &peer.endpoint()])
            .args(["--security-policy", "aes128-sha256-rsaoaep"])
            .args(["--security-mode", "sign-and-encrypt", "--pki-dir"])
            .arg(peer.dir().join(pki));
        if let Some(cert) = trust {
            command.arg("--trust").arg(cert);
        }
        command.output()
    };
    let refused = browse("pki-untrusting", None).await?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "an unknown server is refused");
    assert!(stderr.contains("BadCertificateUntrusted"), "{stderr}");
    assert!(refused.stdout.is_empty());

    let out = browse("pki-trusting", Some(peer.server_certificate())).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("  - { name: speed, address: \"ns=2;s=Speed\", type: f32 }\n"),
        "{stdout}"
    );
    peer.stop().await;
    Ok(())
}
