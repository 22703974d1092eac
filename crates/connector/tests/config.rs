//! Config file parsing and validation: every key, defaults, precedence of token sources, and
//! errors that name the key at fault.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use underpass_connector::config::{
    ConfigError, ConnectorConfig, Overrides, TokenSource, DEFAULT_CONNECT_MS, DEFAULT_MAX_STREAMS,
};
use underpass_proto::{TunnelId, TunnelSecret, TunnelToken};
use underpass_transport::tls::{DevPki, EdgeVerification};

fn token(id: u8) -> TunnelToken {
    TunnelToken {
        tunnel_id: TunnelId([id; 16]),
        secret: TunnelSecret([0x5e; 32]),
        edges: vec!["127.0.0.1:7844".into()],
        server_name: "edge.underpass.test".into(),
        ca_pin: [7; 32],
    }
}

fn parse(text: &str) -> Result<ConnectorConfig, ConfigError> {
    ConnectorConfig::from_toml(
        text,
        Path::new("connector.toml"),
        Path::new("."),
        &Overrides::default(),
    )
}

fn with_token(body: &str) -> String {
    format!("token = \"{}\"\n{body}", token(1).encode())
}

/// The message of an error, checked to name `key`.
fn error_naming(result: Result<ConnectorConfig, ConfigError>, key: &str) -> String {
    let message = match result {
        Ok(config) => panic!("expected an error naming {key}, got {config:?}"),
        Err(error) => error.to_string(),
    };
    assert!(message.contains(key), "{message:?} does not name {key:?}");
    message
}

#[test]
fn full_config_parses() {
    let text = with_token(
        r#"
connections = 2
log_format = "json"
deny = ["169.254.0.0/16", "127.66.0.1"]

[[route]]
destination = "127.20.0.0/16"
ports = "6379,8000-8999"

[[route]]
destination = "*.corp.test"

[dns]
resolvers = ["127.0.0.53:5353", "127.0.0.54", "[::1]:53"]
timeout_ms = 1500
strict_resolved = true

[limits]
max_streams = 50

[timeouts]
connect_ms = 750
header_ms = 2000
register_ms = 3000
drain_ms = 0
origin_idle_ms = 4000

[quic]
keep_alive_ms = 500
peer_timeout_ms = 2000
idle_timeout_ms = 40000
stream_receive_window = 1048576
connection_receive_window = 4194304
send_window = 4194304
max_concurrent_streams = 1000
socket_buffer = 1048576

[edge]
addresses = ["127.0.0.1:9000", "localhost:9001"]
server_name = "other.underpass.test"

[reconnect]
initial_ms = 10
max_ms = 100

[runtime]
worker_threads = 1

[admin]
listen = "127.0.0.1:20241"
"#,
    );
    let config = parse(&text).expect("valid config");
    assert_eq!(config.token, token(1));
    assert_eq!(config.token_source, TokenSource::ConfigInline);
    assert_eq!(config.connections, 2);
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes[0].destination_text, "127.20.0.0/16");
    assert_eq!(
        config.routes[0].ports_text.as_deref(),
        Some("6379,8000-8999")
    );
    assert_eq!(config.routes[1].ports_text, None);
    let announced = config.announced_routes();
    assert_eq!(announced[0].destination, "127.20.0.0/16");
    assert_eq!(announced[0].ports, [(6379, 6379), (8000, 8999)]);
    assert_eq!(announced[1].destination, "*.corp.test");
    let deny: Vec<String> = config.deny.iter().map(|n| n.to_string()).collect();
    assert_eq!(deny, ["169.254.0.0/16", "127.66.0.1/32"]);
    let resolvers: Vec<SocketAddr> = ["127.0.0.53:5353", "127.0.0.54:53", "[::1]:53"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(config.dns.resolvers, resolvers);
    assert_eq!(config.dns.timeout, Duration::from_millis(1500));
    assert!(config.dns.strict_resolved);
    assert!(config.summary().contains("resolved IPs:  strict"));
    assert_eq!(config.max_streams, 50);
    assert_eq!(config.timeouts.connect, Duration::from_millis(750));
    assert_eq!(config.timeouts.header, Duration::from_secs(2));
    assert_eq!(config.timeouts.register, Duration::from_secs(3));
    assert_eq!(config.timeouts.drain, Duration::ZERO);
    assert_eq!(config.timeouts.origin_idle, Duration::from_secs(4));
    assert_eq!(config.quic.keep_alive, Duration::from_millis(500));
    assert_eq!(config.quic.idle_timeout, Duration::from_secs(40));
    assert_eq!(config.quic.stream_receive_window, 1 << 20);
    assert_eq!(config.quic.connection_receive_window, 4 << 20);
    assert_eq!(config.quic.send_window, 4 << 20);
    assert_eq!(config.quic.max_concurrent_streams, 1000);
    assert_eq!(config.quic.socket_buffer, 1 << 20);
    assert_eq!(config.edge.addresses, ["127.0.0.1:9000", "localhost:9001"]);
    assert_eq!(config.edge.server_name, "other.underpass.test");
    assert!(matches!(config.edge.verification, EdgeVerification::Pin(pin) if pin == [7; 32]));
    assert_eq!(config.reconnect.initial, Duration::from_millis(10));
    assert_eq!(config.reconnect.max, Duration::from_millis(100));
    assert_eq!(config.worker_threads, 1);
    assert_eq!(config.quic.peer_timeout, Duration::from_millis(2000));
    assert_eq!(
        config.admin_listen,
        Some("127.0.0.1:20241".parse().expect("addr"))
    );
    assert_eq!(config.log_format, underpass_rt::LogFormat::Json);
}

#[test]
fn defaults_apply() {
    let config = parse(&with_token("")).expect("token alone is a valid config");
    assert_eq!(config.connections, 4);
    assert_eq!(config.admin_listen, None);
    assert_eq!(config.log_format, underpass_rt::LogFormat::Text);
    assert!(config.routes.is_empty());
    assert_eq!(config.deny, underpass_connector::config::default_deny());
    assert!(
        !config.deny.is_empty(),
        "the default deny list is not empty"
    );
    assert!(config.dns.resolvers.is_empty());
    assert!(
        !config.dns.strict_resolved,
        "names are trusted for ordinary addresses"
    );
    assert_eq!(config.max_streams, DEFAULT_MAX_STREAMS);
    assert_eq!(
        config.timeouts.connect,
        Duration::from_millis(DEFAULT_CONNECT_MS)
    );
    assert_eq!(config.edge.addresses, token(1).edges);
    assert_eq!(config.edge.server_name, token(1).server_name);
    assert_eq!(config.reconnect.initial, Duration::from_secs(1));
    assert_eq!(config.reconnect.max, Duration::from_secs(60));
    assert!(config.summary().contains("every stream will be refused"));
}

#[test]
fn empty_deny_list_denies_nothing() {
    let config = parse(&with_token("deny = []")).unwrap();
    assert!(config.deny.is_empty());
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let message = error_naming(parse(&with_token("tokn = \"x\"")), "tokn");
    assert!(message.contains("unknown field"), "{message}");
    let message = error_naming(
        parse(&with_token("[dns]\nresolver = [\"127.0.0.1\"]")),
        "resolver",
    );
    assert!(message.contains("unknown field"), "{message}");
    assert!(
        message.contains("connector.toml"),
        "names the file: {message}"
    );
    error_naming(
        parse(&with_token(
            "[[route]]\ndestination = \"10.0.0.0/8\"\nport = \"80\"",
        )),
        "port",
    );
    error_naming(parse(&with_token("[edge]\nca = \"x\"")), "ca");
    error_naming(parse(&with_token("[limit]\nmax_streams = 1")), "limit");
}

#[test]
fn wrong_types_name_the_key() {
    error_naming(
        parse(&with_token("[limits]\nmax_streams = \"many\"")),
        "max_streams",
    );
    error_naming(parse(&with_token("connections = 300")), "connections");
    error_naming(
        parse(&with_token("[dns]\nstrict_resolved = \"yes\"")),
        "strict_resolved",
    );
}

#[test]
fn bad_routes_name_the_route() {
    error_naming(
        parse(&with_token("[[route]]\ndestination = \"10.0.0.0/33\"")),
        "route[0].destination",
    );
    error_naming(
        parse(&with_token(
            "[[route]]\ndestination = \"10.0.0.0/8\"\n[[route]]\ndestination = \"db.test\"\nports = \"80-\"",
        )),
        "route[1].ports",
    );
    error_naming(
        parse(&with_token(
            "[[route]]\ndestination = \"10.0.0.0/8\"\nports = \"9000-8000\"",
        )),
        "route[0].ports",
    );
}

#[test]
fn bad_values_name_the_key() {
    error_naming(parse(&with_token("deny = [\"10.0.0.1/8\"]")), "deny[0]");
    error_naming(parse(&with_token("deny = [\"nonsense\"]")), "deny[0]");
    error_naming(
        parse(&with_token(
            "[dns]\nresolvers = [\"127.0.0.1\", \"dns.example\"]",
        )),
        "dns.resolvers[1]",
    );
    error_naming(
        parse(&with_token("[dns]\ntimeout_ms = 0")),
        "dns.timeout_ms",
    );
    error_naming(
        parse(&with_token("[limits]\nmax_streams = 0")),
        "limits.max_streams",
    );
    error_naming(
        parse(&with_token("[timeouts]\nconnect_ms = 0")),
        "timeouts.connect_ms",
    );
    error_naming(parse(&with_token("connections = 0")), "connections");
    error_naming(
        parse(&with_token(
            "[quic]\nkeep_alive_ms = 60000\nidle_timeout_ms = 30000",
        )),
        "quic",
    );
    error_naming(
        parse(&with_token("[edge]\naddresses = []")),
        "edge.addresses",
    );
    error_naming(
        parse(&with_token("[edge]\naddresses = [\"no-port\"]")),
        "edge.addresses[0]",
    );
    error_naming(
        parse(&with_token("[edge]\nserver_name = \" \"")),
        "edge.server_name",
    );
    error_naming(
        parse(&with_token("[reconnect]\ninitial_ms = 5000\nmax_ms = 10")),
        "reconnect.max_ms",
    );
    error_naming(parse("token = \"upt1_garbage!\""), "token");
    error_naming(parse("token = \"not a token\""), "token");
}

#[test]
fn a_missing_token_is_explained() {
    let message = error_naming(parse("[limits]\nmax_streams = 5"), "UNDERPASS_TOKEN");
    assert!(message.contains("--token"), "{message}");
    assert!(matches!(parse(""), Err(ConfigError::NoToken)));
}

#[test]
fn token_file_is_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{}\n", token(2).encode())).unwrap();
    let path = dir.path().join("connector.toml");
    std::fs::write(&path, "token_file = \"token\"\n").unwrap();
    let config = ConnectorConfig::load(Some(&path), &Overrides::default()).unwrap();
    assert_eq!(config.token, token(2));
    assert_eq!(
        config.token_source,
        TokenSource::ConfigFile(dir.path().join("token"))
    );

    std::fs::write(&path, "token_file = \"missing\"\n").unwrap();
    let message = error_naming(
        ConnectorConfig::load(Some(&path), &Overrides::default()),
        "token_file",
    );
    assert!(message.contains("missing"), "{message}");

    let both = format!(
        "token = \"{}\"\ntoken_file = \"token\"\n",
        token(1).encode()
    );
    std::fs::write(&path, both).unwrap();
    error_naming(
        ConnectorConfig::load(Some(&path), &Overrides::default()),
        "token_file",
    );
}

#[test]
fn token_precedence_flag_then_env_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("flag-token");
    std::fs::write(&token_file, token(4).encode()).unwrap();
    let file = with_token("");
    let load = |overrides: Overrides| {
        ConnectorConfig::from_toml(&file, Path::new("c.toml"), dir.path(), &overrides).unwrap()
    };
    let env = Overrides {
        env_token: Some(token(3).encode()),
        ..Overrides::default()
    };
    let config = load(env.clone());
    assert_eq!(
        (config.token, config.token_source),
        (token(3), TokenSource::Env)
    );
    let config = load(Overrides {
        token_file: Some(token_file.clone()),
        ..env.clone()
    });
    assert_eq!(config.token, token(4));
    assert_eq!(config.token_source, TokenSource::FlagFile(token_file));
    let config = load(Overrides {
        token: Some(token(5).encode()),
        ..env
    });
    assert_eq!(
        (config.token, config.token_source),
        (token(5), TokenSource::Flag)
    );

    // The environment alone is enough, with no file at all.
    let config = ConnectorConfig::load(
        None,
        &Overrides {
            env_token: Some(token(6).encode()),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(config.token, token(6));
    let bad_env = Overrides {
        env_token: Some("upt1_x".into()),
        ..Overrides::default()
    };
    error_naming(ConnectorConfig::load(None, &bad_env), "UNDERPASS_TOKEN");
}

#[test]
fn systemd_credential_then_container_secret_after_everything_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let secret = dir.path().join("underpass-token");
    let host = Overrides {
        credentials_dir: Some(credentials.clone()),
        secret_file: Some(secret.clone()),
        ..Overrides::default()
    };
    let load = |overrides: &Overrides| ConnectorConfig::load(None, overrides);

    // Neither file exists: no token, and the message says where one may come from.
    let message = error_naming(load(&host), "LoadCredential=token");
    assert!(
        message.contains("/run/secrets/underpass-token"),
        "{message}"
    );

    // The secret alone.
    std::fs::write(&secret, format!("{}\n", token(8).encode())).unwrap();
    let config = load(&host).unwrap();
    assert_eq!(
        (config.token, config.token_source),
        (token(8), TokenSource::Secret(secret.clone()))
    );

    // The credential beats the secret.
    let credential = credentials.join("token");
    std::fs::write(&credential, token(9).encode()).unwrap();
    let config = load(&host).unwrap();
    assert_eq!(
        (config.token, config.token_source),
        (token(9), TokenSource::Credential(credential.clone()))
    );

    // Anything explicit beats both: the environment, and the config file's own token.
    let config = load(&Overrides {
        env_token: Some(token(3).encode()),
        ..host.clone()
    })
    .unwrap();
    assert_eq!(config.token_source, TokenSource::Env);
    let config =
        ConnectorConfig::from_toml(&with_token(""), Path::new("c.toml"), dir.path(), &host)
            .unwrap();
    assert_eq!(config.token_source, TokenSource::ConfigInline);

    // A credential that is not a token is an error naming it, not a silent fall-through.
    std::fs::write(&credential, "not a token").unwrap();
    error_naming(load(&host), "$CREDENTIALS_DIRECTORY/token");

    // A credentials directory without a `token` credential is skipped.
    std::fs::remove_file(&credential).unwrap();
    assert_eq!(
        load(&host).unwrap().token_source,
        TokenSource::Secret(secret)
    );
}

#[test]
fn route_flags_add_routes() {
    let overrides = Overrides {
        token: Some(token(1).encode()),
        routes: vec!["127.20.0.0/16=6379".into(), "db.test".into()],
        ..Overrides::default()
    };
    let config = ConnectorConfig::load(None, &overrides).unwrap();
    let announced = config.announced_routes();
    assert_eq!(announced.len(), 2);
    assert_eq!(announced[0].ports, [(6379, 6379)]);
    assert_eq!(announced[1].destination, "db.test");
    let bad = Overrides {
        routes: vec!["127.20.0.0/16=http".into()],
        ..overrides
    };
    error_naming(
        ConnectorConfig::load(None, &bad),
        "--route 127.20.0.0/16=http",
    );
}

#[test]
fn edge_ca_file_replaces_the_pin() {
    let pki = DevPki::generate(&["edge.underpass.test".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_cert_pem).unwrap();
    std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, with_token("[edge]\nca_file = \"ca.pem\"")).unwrap();
    let config = ConnectorConfig::load(Some(&path), &Overrides::default()).unwrap();
    assert!(
        matches!(config.edge.verification, EdgeVerification::CaPem(ref pem) if pem == pki.ca_cert_pem.as_bytes())
    );

    std::fs::write(&path, with_token("[edge]\nca_file = \"bad.pem\"")).unwrap();
    error_naming(
        ConnectorConfig::load(Some(&path), &Overrides::default()),
        "edge.ca_file",
    );
    std::fs::write(&path, with_token("[edge]\nca_file = \"none.pem\"")).unwrap();
    error_naming(
        ConnectorConfig::load(Some(&path), &Overrides::default()),
        "edge.ca_file",
    );
    std::fs::write(
        &path,
        with_token("[edge]\nsystem_roots = true\nca_file = \"ca.pem\""),
    )
    .unwrap();
    error_naming(
        ConnectorConfig::load(Some(&path), &Overrides::default()),
        "system_roots",
    );
}

#[test]
fn secrets_never_show() {
    let config = parse(&with_token("")).unwrap();
    let encoded = token(1).encode();
    for text in [format!("{config:?}"), config.summary()] {
        assert!(!text.contains(&encoded[5..20]), "token leaked: {text}");
        assert!(!text.contains("94, 94"), "secret bytes leaked: {text}");
        assert!(!text.contains("5e5e5e"), "secret bytes leaked: {text}");
    }
    assert!(config.summary().contains(&hex::encode([1u8; 16])));
}

#[test]
fn builder_validates_like_the_file() {
    let config = ConnectorConfig::builder(token(1))
        .route_ports("127.20.0.0/16", "6379")
        .route("db.test")
        .deny(&["127.66.0.0/16"])
        .resolvers(&["127.0.0.53:53".parse().unwrap()])
        .max_streams(3)
        .connect_timeout(Duration::from_millis(300))
        .header_timeout(Duration::from_millis(400))
        .dns_timeout(Duration::from_millis(500))
        .strict_resolved(true)
        .drain_timeout(Duration::from_millis(600))
        .response_header_timeout(Duration::from_millis(700))
        .origin_idle_timeout(Duration::from_millis(800))
        .origin_http2(true)
        .reconnect(Duration::from_millis(10), Duration::from_millis(20))
        .connections(2)
        .build()
        .unwrap();
    assert_eq!(config.token_source, TokenSource::Code);
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.max_streams, 3);
    assert_eq!(config.deny.len(), 1);
    assert_eq!(config.dns.timeout, Duration::from_millis(500));
    assert!(config.dns.strict_resolved);
    assert_eq!(config.timeouts.drain, Duration::from_millis(600));
    assert_eq!(config.timeouts.response_header, Duration::from_millis(700));
    assert_eq!(config.timeouts.origin_idle, Duration::from_millis(800));
    assert!(config.timeouts.origin_http2);
    assert_eq!(config.connections, 2);
    error_naming(
        ConnectorConfig::builder(token(1))
            .route("10.0.0.0/99")
            .build(),
        "route[0].destination",
    );
}

/// A token that names no edge, or a builder given none, is refused when the configuration is
/// built, naming the key that fixes it (no division by zero when the first slot starts).
#[test]
fn a_token_or_builder_with_no_edge_is_refused_naming_edge_addresses() {
    let mut edgeless = token(1);
    edgeless.edges.clear();
    let message = error_naming(
        ConnectorConfig::builder(edgeless.clone()).build(),
        "edge.addresses",
    );
    assert!(message.contains("token names no edge"), "{message}");
    // Decoding refuses such a token already (proto), naming the key it came from.
    let text = format!("token = \"{}\"\n", edgeless.encode());
    let message = error_naming(parse(&text), "token");
    assert!(message.contains("no edge address"), "{message}");
    error_naming(
        ConnectorConfig::builder(token(1))
            .edge_addresses(&[])
            .build(),
        "edge.addresses",
    );
    // `edge.addresses` fixes it.
    let config = ConnectorConfig::builder(edgeless)
        .edge_addresses(&["127.0.0.1:7844".into()])
        .build()
        .expect("addresses given");
    assert_eq!(config.edge.addresses, ["127.0.0.1:7844"]);
    // A configuration emptied after it was built is refused by the connector, not divided by.
    let mut emptied = config;
    emptied.edge.addresses.clear();
    let error = underpass_connector::Connector::new(emptied)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("edge.addresses"), "{error}");
}

#[test]
fn quic_bounds_are_the_transports() {
    let message = error_naming(
        parse(&with_token(
            "[quic]
send_window = 0",
        )),
        "quic.send_window",
    );
    assert!(message.contains("above zero"), "{message}");
    error_naming(
        parse(&with_token(
            "[quic]
keep_alive_ms = 60000
idle_timeout_ms = 30000",
        )),
        "quic.keep_alive_ms (60000) must be below quic.idle_timeout_ms (30000)",
    );
    // The edge's key is accepted (and unused: the connector only dials).
    let config = parse(&with_token(
        "[quic]
max_handshakes = 8",
    ))
    .expect("valid");
    assert_eq!(config.quic.max_handshakes, 8);
    error_naming(
        parse(&with_token(
            "[quic]
keepalive_ms = 1",
        )),
        "keepalive_ms",
    );
}

#[test]
fn shipped_examples_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let overrides = Overrides {
        token: Some(token(1).encode()),
        ..Overrides::default()
    };
    let config = ConnectorConfig::load(
        Some(&root.join("deploy/connector.example.toml")),
        &overrides,
    )
    .expect("deploy/connector.example.toml is valid");
    assert_eq!(config.routes.len(), 4);
    assert_eq!(config.connections, 4);
    assert_eq!(
        config.admin_listen,
        Some("127.0.0.1:20241".parse().expect("addr"))
    );
    let config = ConnectorConfig::load(Some(&root.join("examples/connector.toml")), &overrides)
        .expect("examples/connector.toml is valid");
    assert!(!config.routes.is_empty());
}

#[test]
fn admin_listen_and_log_format_errors_name_the_key() {
    error_naming(
        parse(&with_token("[admin]\nlisten = \"localhost\"\n")),
        "admin.listen",
    );
    error_naming(parse(&with_token("log_format = \"xml\"\n")), "log_format");
    error_naming(parse(&with_token("[admin]\nlisten = 20241\n")), "listen");
}
