//! The `underpass-edge` binary: tunnel commands and config errors.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use underpass_proto::TunnelToken;
use underpass_transport::tls::pem_first_cert_pin;

const BIN: &str = env!("CARGO_BIN_EXE_underpass-edge");

fn edge(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("UNDERPASS_EDGE_CONFIG")
        .output()
        .expect("run underpass-edge")
}

/// Run the binary with exactly `args`.
fn edge_raw(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("UNDERPASS_EDGE_CONFIG")
        .output()
        .expect("run underpass-edge")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn tunnel_create_prints_only_a_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\nlisten = \"127.0.0.1:7844\"\npublic_addresses = [\"edge.test:7844\", \"[::1]:7844\"]\n",
    )?;

    let created = edge(&["tunnel", "create", "prod"], &config);
    assert!(created.status.success(), "{created:?}");
    let out = stdout(&created);
    assert_eq!(
        out.lines().count(),
        1,
        "stdout holds the token only: {out:?}"
    );
    let token = TunnelToken::decode(&out)?;
    assert_eq!(token.edges, ["edge.test:7844", "[::1]:7844"]);
    assert_eq!(token.server_name, "underpass-edge");
    let hint = String::from_utf8(created.stderr.clone())?;
    // The hint suggests a token file or the environment, never the token on a command line.
    assert!(hint.contains("underpass run --token-file FILE"), "{hint}");
    assert!(hint.contains("UNDERPASS_TOKEN"), "{hint}");
    assert!(!hint.contains("--token <"), "{hint}");

    // The CA pin in the token is the pin of the stored CA; secrets are 0600.
    let state = dir.path().join("state");
    let ca_pem = std::fs::read(state.join("ca.pem"))?;
    assert_eq!(token.ca_pin, pem_first_cert_pin(&ca_pem)?);
    for secret in ["ca.key", "edge.key", "tunnels.json"] {
        assert_eq!(mode(&state.join(secret)), 0o600, "{secret}");
    }
    assert_eq!(mode(&state), 0o700);
    let stored = std::fs::read_to_string(state.join("tunnels.json"))?;
    assert!(stored.contains(&hex::encode(token.secret.0)));

    // Same name again: refused, nothing on stdout.
    let again = edge(&["tunnel", "create", "prod"], &config);
    assert!(!again.status.success());
    assert!(again.stdout.is_empty());
    assert!(String::from_utf8(again.stderr)?.contains("exists already"));

    // The token is printed again, identical; the PKI is reused, not regenerated.
    let reprinted = edge(&["tunnel", "token", "prod"], &config);
    assert!(reprinted.status.success(), "{reprinted:?}");
    assert_eq!(TunnelToken::decode(&stdout(&reprinted))?, token);
    let by_id = edge(
        &["tunnel", "token", &hex::encode(token.tunnel_id.0)],
        &config,
    );
    assert_eq!(TunnelToken::decode(&stdout(&by_id))?, token);

    // The list names the tunnel and never shows a secret.
    edge(&["tunnel", "create", "staging"], &config);
    let list = edge(&["tunnel", "list"], &config);
    assert!(list.status.success());
    let listed = stdout(&list);
    assert!(
        listed.contains("prod") && listed.contains("staging"),
        "{listed}"
    );
    assert!(listed.contains(&hex::encode(token.tunnel_id.0)));
    assert!(!listed.contains(&hex::encode(token.secret.0)));

    let unknown = edge(&["tunnel", "token", "nope"], &config);
    assert!(!unknown.status.success());
    Ok(())
}

#[test]
fn bad_config_exits_64() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, "state_dir = \"state\"\nlisten_port = 7844\n")?;
    for args in [&["serve"][..], &["check-config"], &["tunnel", "list"]] {
        let output = edge(args, &config);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {output:?}");
        let stderr = String::from_utf8(output.stderr)?;
        assert!(stderr.contains("listen_port"), "{stderr}");
        assert!(output.stdout.is_empty());
    }
    // A wildcard listen address without public_addresses cannot make a token.
    std::fs::write(
        &config,
        "state_dir = \"state\"\nlisten = \"0.0.0.0:7844\"\n",
    )?;
    let output = edge(&["tunnel", "create", "prod"], &config);
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    assert!(String::from_utf8(output.stderr)?.contains("public_addresses"));
    // ... and no tunnel was saved.
    assert!(!dir.path().join("state/tunnels.json").exists());
    Ok(())
}

#[test]
fn a_bad_command_line_exits_64_and_help_exits_0() {
    for args in [
        &["--bogus"][..],
        &["serve", "--nope"],
        &["tunnel"],
        &["no-such-command"],
        &["tunnel", "create"],
    ] {
        let output = edge_raw(args);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {output:?}");
        assert!(!output.stderr.is_empty(), "{args:?}: says why");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    for args in [&["--help"][..], &["--version"], &["tunnel", "--help"]] {
        let output = edge_raw(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
        assert!(!output.stdout.is_empty(), "{args:?}: printed on stdout");
    }
    // No config at all is a usage error too.
    let output = edge_raw(&["check-config"]);
    assert_eq!(output.status.code(), Some(64), "{output:?}");
}

#[test]
fn config_errors_name_the_entry_and_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("edge.toml");
    let cases = [
        (
            "[[network]]\nname = \"corp\"\ntunnel = \"prod\"\n[[binding]]\nname = \"x\"\n\
             listen = \"nope\"\nnetwork = \"corp\"\n",
            "binding \"x\": listen: ",
        ),
        (
            "[[binding]]\nname = \"x\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"gone\"\n",
            "binding \"x\": network: no [[network]] named \"gone\"",
        ),
        (
            "[quic]\nkeep_alive_ms = 60000\nidle_timeout_ms = 30000\n",
            "quic.keep_alive_ms (60000) must be below quic.idle_timeout_ms (30000)",
        ),
        (
            "[[service]]\nname = \"api\"\ntype = \"http\"\ntunnel = \"prod\"\n\
             host = { ipv4 = \"10.0.0.1\" }\ntls = { ca_file = \"missing.pem\" }\n",
            "service \"api\": tls.ca_file ",
        ),
    ];
    for (body, expected) in cases {
        std::fs::write(&config, format!("state_dir = \"state\"\n{body}"))?;
        let output = edge(&["check-config"], &config);
        assert_eq!(output.status.code(), Some(64), "{body}: {output:?}");
        let stderr = String::from_utf8(output.stderr)?;
        assert!(stderr.contains(expected), "{body}: {stderr}");
    }
    Ok(())
}

#[test]
fn check_config_accepts_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/edge.example.toml");
    let output = edge(&["check-config"], &example);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn check_config_warns_about_a_tunnel_that_does_not_exist() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\n\
         [[network]]\nname = \"corp\"\ntunnel = \"prod\"\n\
         [[service]]\nname = \"api\"\ntype = \"http\"\ntunnel = \"staging\"\n\
         host = { ipv4 = \"127.20.0.10\" }\nhttp_port = 8080\n\
         [[binding]]\nname = \"NET\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"corp\"\n",
    )?;
    // No state directory yet: both references are unknown. A warning, not an error (a serving
    // edge picks the tunnel up once created), and check-config creates nothing.
    let output = edge(&["check-config"], &config);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8(output.stderr)?;
    assert!(
        stderr
            .contains("warning: network \"corp\": tunnel = \"prod\": no such tunnel in state_dir"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tunnel create prod` creates it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: service \"api\": tunnel = \"staging\""),
        "{stderr}"
    );
    assert!(stderr.contains("2 warning(s)"), "{stderr}");
    assert!(
        !dir.path().join("state").exists(),
        "check-config wrote nothing"
    );

    // Once the tunnel exists, by name or by id, its references are fine.
    let created = edge(&["tunnel", "create", "prod"], &config);
    assert!(created.status.success(), "{created:?}");
    let token = TunnelToken::decode(&stdout(&created))?;
    let text = std::fs::read_to_string(&config)?.replace(
        "tunnel = \"staging\"",
        &format!("tunnel = \"{}\"", hex::encode(token.tunnel_id.0)),
    );
    std::fs::write(&config, text)?;
    let output = edge(&["check-config"], &config);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8(output.stderr)?;
    assert!(!stderr.contains("warning:"), "{stderr}");
    assert!(stderr.contains("0 warning(s)"), "{stderr}");

    // An id that names no tunnel says so (`tunnel create` cannot make a given id).
    let text = std::fs::read_to_string(&config)?
        .replace(&hex::encode(token.tunnel_id.0), &"ab".repeat(16));
    std::fs::write(&config, text)?;
    let output = edge(&["check-config"], &config);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("no tunnel has this id"), "{stderr}");
    Ok(())
}

#[test]
fn help_lists_the_environment_and_the_exit_status() -> anyhow::Result<()> {
    let output = edge_raw(&["--help"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let help = stdout(&output);
    for expected in [
        "UNDERPASS_EDGE_CONFIG",
        "UNDERPASS_LOG_FORMAT",
        "RUST_LOG",
        "Exit status:",
        "64  a bad command line or configuration",
    ] {
        assert!(help.contains(expected), "{expected:?} in:\n{help}");
    }
    // --version names the commit it was built from.
    let version = stdout(&edge_raw(&["--version"]));
    assert!(version.contains("(commit "), "{version}");
    Ok(())
}
