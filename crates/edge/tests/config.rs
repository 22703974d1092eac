//! Config parsing and validation, from TOML text and files.

use std::io::Write;

use underpass_edge::config::{BindingMode, ConfigError, EdgeConfig, ServiceKind};

const EXAMPLE: &str = include_str!("../../../deploy/edge.example.toml");

fn invalid(text: &str) -> String {
    match EdgeConfig::from_toml(text).and_then(|c| c.validate()) {
        Ok(()) => panic!("config accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn the_example_is_valid() {
    let config = EdgeConfig::from_toml(EXAMPLE).expect("example parses");
    config.validate().expect("example validates");
    assert_eq!(config.public_addresses, ["edge.example.com:7844"]);
    assert_eq!(config.bindings.len(), 4);
    assert_eq!(config.bindings[3].mode, BindingMode::Tcp);
    assert_eq!(config.bindings[0].max_connections, 1024);
    assert_eq!(config.services[0].kind, ServiceKind::Tcp);
    assert_eq!(
        config.services[0].host.resolver_ips,
        vec!["10.0.0.2:53".parse().expect("literal")]
    );
    assert_eq!(config.quic.max_handshakes, Some(64));
}

#[test]
fn defaults() {
    let config = EdgeConfig::from_toml("state_dir = \"/tmp/x\"").expect("minimal config");
    config.validate().expect("minimal config is valid");
    assert_eq!(config.listen, "127.0.0.1:7844".parse().expect("literal"));
    assert_eq!(config.server_name, "underpass-edge");
    assert!(config.public_addresses.is_empty());
    assert_eq!(config.timeouts.connect_ms, 15_000);
}

#[test]
fn unknown_keys_are_refused() {
    let top = invalid("state_dir = \"/tmp/x\"\nlisten_addr = \"127.0.0.1:1\"\n");
    assert!(top.contains("listen_addr"), "{top}");
    let nested = invalid(
        "state_dir = \"/tmp/x\"\n[[network]]\nname = \"n\"\ntunnel = \"t\"\nsubnet = \"x\"\n",
    );
    assert!(nested.contains("subnet"), "{nested}");
    let host = invalid(
        "state_dir = \"/tmp/x\"\n[[service]]\nname = \"s\"\ntype = \"tcp\"\ntunnel = \"t\"\n\
         tcp_port = 1\nhost = { ip = \"127.0.0.1\" }\n",
    );
    assert!(host.contains("ip"), "{host}");
}

#[test]
fn binding_needs_exactly_one_target() {
    let base = "state_dir = \"/tmp/x\"\n[[network]]\nname = \"n\"\ntunnel = \"t\"\n\
                [[service]]\nname = \"s\"\ntype = \"tcp\"\ntunnel = \"t\"\ntcp_port = 1\n\
                host = { ipv4 = \"127.0.0.1\" }\n";
    let both = invalid(&format!(
        "{base}[[binding]]\nname = \"B\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"n\"\nservice = \"s\"\n"
    ));
    assert!(both.contains("exactly one"), "{both}");
    let neither = invalid(&format!(
        "{base}[[binding]]\nname = \"B\"\nlisten = \"127.0.0.1:0\"\n"
    ));
    assert!(neither.contains("exactly one"), "{neither}");
    let dangling = invalid(&format!(
        "{base}[[binding]]\nname = \"B\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"nope\"\n"
    ));
    assert!(dangling.contains("nope"), "{dangling}");
}

#[test]
fn tcp_mode_binding_needs_a_tcp_service() {
    let base = "state_dir = \"/tmp/x\"\n[[network]]\nname = \"n\"\ntunnel = \"t\"\n\
                [[service]]\nname = \"s\"\ntype = \"tcp\"\ntunnel = \"t\"\ntcp_port = 1\n\
                host = { ipv4 = \"127.0.0.1\" }\n\
                [[service]]\nname = \"h\"\ntype = \"http\"\ntunnel = \"t\"\n\
                host = { ipv4 = \"127.0.0.1\" }\n";
    let binding = |target: &str, mode: &str| {
        format!("{base}[[binding]]\nname = \"B\"\nlisten = \"127.0.0.1:0\"\n{target}\nmode = \"{mode}\"\n")
    };
    let config = EdgeConfig::from_toml(&binding("service = \"s\"", "tcp")).expect("parses");
    config
        .validate()
        .expect("a tcp binding to a tcp service is valid");
    assert_eq!(config.bindings[0].mode, BindingMode::Tcp);
    let network = invalid(&binding("network = \"n\"", "tcp"));
    assert!(network.contains("type = \"tcp\""), "{network}");
    let http = invalid(&binding("service = \"h\"", "tcp"));
    assert!(http.contains("type = \"tcp\""), "{http}");
    let unknown = invalid(&binding("service = \"s\"", "udp"));
    assert!(unknown.contains("udp"), "{unknown}");
    let proxy = EdgeConfig::from_toml(&binding("service = \"s\"", "proxy")).expect("parses");
    proxy.validate().expect("valid");
    assert_eq!(proxy.bindings[0].mode, BindingMode::Proxy);
}

#[test]
fn service_rules() {
    let service = |body: &str| {
        format!("state_dir = \"/tmp/x\"\n[[service]]\nname = \"s\"\ntunnel = \"t\"\n{body}\n")
    };
    let no_port = invalid(&service("type = \"tcp\"\nhost = { ipv4 = \"127.0.0.1\" }"));
    assert!(no_port.contains("tcp_port"), "{no_port}");
    let both_hosts = invalid(&service(
        "type = \"http\"\nhost = { ipv4 = \"127.0.0.1\", hostname = \"a.b\" }",
    ));
    assert!(both_hosts.contains("not both"), "{both_hosts}");
    let bad_mode = invalid(&service(
        "type = \"http\"\nhost = { ipv4 = \"127.0.0.1\" }\ntls = { cert_verification_mode = \"lax\" }",
    ));
    assert!(bad_mode.contains("lax"), "{bad_mode}");
    let bad_resolver = invalid(&service(
        "type = \"http\"\nhost = { hostname = \"a.b\", resolver_ips = [\"dns\"] }",
    ));
    assert!(bad_resolver.contains("resolver_ips"), "{bad_resolver}");
}

#[test]
fn load_resolves_relative_paths_and_reads_ca_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("edge.toml");
    let write = |text: &str| -> anyhow::Result<()> {
        std::fs::File::create(&config_path)?.write_all(text.as_bytes())?;
        Ok(())
    };
    let service = "state_dir = \"state\"\n[[service]]\nname = \"s\"\ntype = \"http\"\n\
                   tunnel = \"t\"\nhost = { ipv4 = \"127.0.0.1\" }\n\
                   tls = { cert_verification_mode = \"verify_ca\", ca_file = \"ca.pem\" }\n";
    write(service)?;
    let missing = EdgeConfig::load(&config_path).unwrap_err();
    assert!(matches!(missing, ConfigError::CaFile { .. }), "{missing}");

    std::fs::write(
        dir.path().join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    )?;
    let config = EdgeConfig::load(&config_path)?;
    assert_eq!(config.state_dir, dir.path().join("state"));
    assert!(config.bindings.is_empty());

    let read = EdgeConfig::load(&dir.path().join("absent.toml")).unwrap_err();
    assert!(matches!(read, ConfigError::Read { .. }), "{read}");
    Ok(())
}
