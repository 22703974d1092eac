//! The `underpass` binary: `check-config` on good and bad files, exit statuses.

use std::path::Path;
use std::process::{Command, Output};

use underpass_proto::{TunnelId, TunnelSecret, TunnelToken};

const EX_USAGE: i32 = 64;

fn token() -> TunnelToken {
    TunnelToken {
        tunnel_id: TunnelId([0xab; 16]),
        secret: TunnelSecret([0x5e; 32]),
        edges: vec!["127.0.0.1:7844".into()],
        server_name: "edge.underpass.test".into(),
        ca_pin: [7; 32],
    }
}

fn underpass(args: &[&str], env_token: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_underpass"));
    command
        .args(args)
        .env_remove("UNDERPASS_TOKEN")
        .env_remove("RUST_LOG");
    if let Some(token) = env_token {
        command.env("UNDERPASS_TOKEN", token);
    }
    command.output().expect("run underpass")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn check_config_accepts_a_good_file_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let encoded = token().encode();
    let file = write(
        dir.path(),
        "connector.toml",
        &format!(
            r#"token = "{encoded}"
deny = ["169.254.0.0/16"]

[[route]]
destination = "127.20.0.0/16"
ports = "6379"

[[route]]
destination = "*.corp.test"
"#
        ),
    );
    let out = underpass(&["check-config", &file], None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains(&hex::encode([0xab; 16])), "{stdout}");
    assert!(stdout.contains("127.0.0.1:7844"), "{stdout}");
    assert!(stdout.contains("routes:        2"), "{stdout}");
    assert!(stdout.contains("169.254.0.0/16"), "{stdout}");
    assert!(
        !stdout.contains(&encoded[5..30]),
        "the token leaked: {stdout}"
    );
}

#[test]
fn check_config_rejects_a_bad_file_with_status_64() {
    let dir = tempfile::tempdir().unwrap();
    let encoded = token().encode();
    let cases = [
        (
            "unknown.toml",
            format!("token = \"{encoded}\"\nrouts = []\n"),
            "routs",
        ),
        (
            "cidr.toml",
            format!("token = \"{encoded}\"\n[[route]]\ndestination = \"10.0.0.0/40\"\n"),
            "route[0].destination",
        ),
        ("notoml.toml", "this is not toml".to_owned(), "notoml.toml"),
        ("notoken.toml", "deny = []\n".to_owned(), "UNDERPASS_TOKEN"),
    ];
    for (name, body, key) in cases {
        let file = write(dir.path(), name, &body);
        let out = underpass(&["check-config", &file], None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(EX_USAGE), "{name}: {stderr}");
        assert!(
            stderr.contains(key),
            "{name}: {stderr:?} does not name {key}"
        );
    }
    let missing = dir.path().join("missing.toml");
    let out = underpass(&["check-config", missing.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(EX_USAGE));
    assert!(text(&out.stderr).contains("missing.toml"));
}

#[test]
fn token_comes_from_the_environment_or_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "c.toml", "deny = []\n");
    let encoded = token().encode();
    let out = underpass(&["check-config", &file], Some(&encoded));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("UNDERPASS_TOKEN"));

    let token_file = write(dir.path(), "token", &encoded);
    let out = underpass(&["check-config", &file, "--token-file", &token_file], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("--token-file"));

    let out = underpass(&["check-config", &file, "--token", "upt1_nope"], None);
    assert_eq!(out.status.code(), Some(EX_USAGE));
    assert!(text(&out.stderr).contains("--token"));
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    assert_eq!(
        underpass(&["frobnicate"], None).status.code(),
        Some(EX_USAGE)
    );
    assert_eq!(underpass(&[], None).status.code(), Some(EX_USAGE));
    // A bad flag, on `run` and on `check-config`, with its name in the message.
    let out = underpass(&["run", "--no-such-flag"], None);
    assert_eq!(out.status.code(), Some(EX_USAGE));
    assert!(text(&out.stderr).contains("--no-such-flag"));
    let out = underpass(&["check-config", "x.toml", "--bogus"], None);
    assert_eq!(out.status.code(), Some(EX_USAGE));
    assert_eq!(
        underpass(&["run", "--token", "a", "--token-file", "b"], None)
            .status
            .code(),
        Some(EX_USAGE)
    );
    let help = underpass(&["run", "--help"], None);
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("--dangerous-accept-any-edge-certificate"));
    assert!(underpass(&["--version"], None).status.success());
}

#[test]
fn run_with_a_bad_config_exits_64_before_dialing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "c.toml", "[limits]\nmax_streams = 0\n");
    let out = underpass(
        &["run", "--config", &file, "--token", &token().encode()],
        None,
    );
    assert_eq!(out.status.code(), Some(EX_USAGE));
    assert!(text(&out.stderr).contains("limits.max_streams"));
    let out = underpass(&["run"], None);
    assert_eq!(out.status.code(), Some(EX_USAGE));
    assert!(text(&out.stderr).contains("no tunnel token"));
}

#[test]
fn check_config_takes_the_file_as_config_flag_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.toml",
        "[[route]]\ndestination = \"127.20.0.0/16\"\nports = \"8080\"\n",
    );
    let encoded = token().encode();
    for args in [
        ["check-config", "--config", file.as_str()],
        ["check-config", "-c", file.as_str()],
    ] {
        let out = underpass(&args, Some(&encoded));
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(stdout.contains(&format!("{file}: OK")), "{stdout}");
        assert!(stdout.contains("127.20.0.0/16 ports 8080"), "{stdout}");
    }
    // Both at once is ambiguous.
    let out = underpass(&["check-config", &file, "--config", &file], Some(&encoded));
    assert_eq!(out.status.code(), Some(EX_USAGE));
    // Neither: the file `run` and the unit use.
    let default = "/etc/underpass/connector.toml";
    if !Path::new(default).exists() {
        let out = underpass(&["check-config"], Some(&encoded));
        assert_eq!(out.status.code(), Some(EX_USAGE));
        assert!(text(&out.stderr).contains(default), "{}", text(&out.stderr));
    }
}

#[test]
fn help_lists_the_environment_files_and_exit_statuses() {
    for args in [&["--help"][..], &["run", "--help"], &["help", "run"]] {
        let out = underpass(args, None);
        let help = text(&out.stdout);
        assert!(out.status.success(), "{args:?}");
        for needle in [
            "UNDERPASS_TOKEN",
            "RUST_LOG",
            "CREDENTIALS_DIRECTORY",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "/run/secrets/underpass-token",
            "/etc/underpass/connector.toml",
            "Exit status",
            "  0 ",
            "  64 ",
            "  1 ",
        ] {
            assert!(help.contains(needle), "{args:?}: no {needle:?} in\n{help}");
        }
    }
    // The short help points at the long one.
    let short = text(&underpass(&["-h"], None).stdout);
    assert!(short.contains("underpass --help"), "{short}");
    let out = underpass(&["service", "install", "--help"], None);
    assert!(text(&out.stdout).contains("tunnel.token"));
}
