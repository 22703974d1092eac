//! `underpass service install` and `uninstall`, run as the real binary into a temporary root:
//! the files, their modes, a unit `systemd-analyze verify` accepts, a config `check-config`
//! accepts, no overwriting without `--force`, and an uninstall that removes what was written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use underpass_proto::{TunnelId, TunnelSecret, TunnelToken};

const EX_USAGE: i32 = 64;
const EX_FAILURE: i32 = 1;
/// The path the shipped unit runs (`underpass_connector::service::UNIT_BINARY`).
const UNIT_BINARY: &str = "/usr/local/bin/underpass";

fn token() -> TunnelToken {
    TunnelToken {
        tunnel_id: TunnelId([0xcd; 16]),
        secret: TunnelSecret([0x5e; 32]),
        edges: vec!["127.0.0.1:7844".into()],
        server_name: "edge.underpass.test".into(),
        ca_pin: [7; 32],
    }
}

fn underpass(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_underpass"));
    command
        .args(args)
        .env_remove("UNDERPASS_TOKEN")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUST_LOG");
    command.envs(env.iter().copied());
    command.output().expect("run underpass")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// The three files an install writes under `root`.
fn installed(root: &Path) -> [PathBuf; 3] {
    [
        root.join("etc/systemd/system/underpass.service"),
        root.join("etc/underpass/connector.toml"),
        root.join("etc/underpass/tunnel.token"),
    ]
}

/// `systemd-analyze verify` on an installed unit.
///
/// verify insists that every `Exec*=` binary exists, and the unit under a `--root` install
/// names `/usr/local/bin/underpass`, which is the path on the system the root becomes, not on
/// this host. `systemd-analyze verify --root=ROOT` is no way out: it then looks for
/// `sysinit.target`, `/bin/kill` and every other dependency inside ROOT as well. So the unit is
/// checked as a copy (same file name, so the unit name is the same) whose `Exec*=` lines run
/// the binary under test, which is exactly what `service install --root /` itself writes when
/// the binary is not at /usr/local/bin. Everything else is verified as installed.
fn systemd_verify(unit: &Path) {
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("underpass.service");
    let original = std::fs::read_to_string(unit).unwrap();
    let rewritten: String = original
        .split_inclusive('\n')
        .map(|line| {
            if line.trim_start().starts_with("Exec") {
                line.replace(UNIT_BINARY, env!("CARGO_BIN_EXE_underpass"))
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_ne!(rewritten, original, "the unit runs no {UNIT_BINARY}");
    std::fs::write(&copy, rewritten).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/test installs it)");
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("Unknown"),
        "systemd-analyze verify warns:\n{stderr}"
    );
}

#[test]
fn install_writes_what_systemd_and_check_config_accept_and_uninstall_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let encoded = token().encode();
    let token_file = dir.path().join("given.token");
    std::fs::write(&token_file, format!("  {encoded}\n\n")).unwrap();
    let install = [
        "service",
        "install",
        "--root",
        str(&root),
        "--token-file",
        str(&token_file),
        "--route",
        "127.20.0.0/16=8080",
        "--admin-listen",
        "127.0.0.1:20241",
    ];

    let out = underpass(&install, &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for command in [
        "systemctl daemon-reload",
        "systemctl enable --now underpass",
        "systemctl status underpass",
        "journalctl -u underpass",
    ] {
        assert!(stdout.contains(command), "{command} missing: {stdout}");
    }
    assert!(
        !stdout.contains(&encoded[5..30]),
        "the token leaked: {stdout}"
    );

    let [unit, config, token_path] = installed(&root);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&config), 0o644);
    assert_eq!(mode(&token_path), 0o600);
    for made in ["etc", "etc/systemd", "etc/systemd/system", "etc/underpass"] {
        assert_eq!(mode(&root.join(made)), 0o755, "{made}");
    }
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap(),
        format!("{encoded}\n")
    );
    let config_text = std::fs::read_to_string(&config).unwrap();
    assert!(!config_text.contains("upt1_"), "{config_text}");
    // Under another root the unit is the shipped one, byte for byte.
    assert!(std::fs::read_to_string(&unit)
        .unwrap()
        .lines()
        .any(|line| line.starts_with("ExecStart=") && line.contains(UNIT_BINARY)));

    systemd_verify(&unit);

    // The config names no token: the service gets it as the credential `token`, which is what
    // systemd's LoadCredential=token:/etc/underpass/tunnel.token makes of the token file.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::copy(&token_path, credentials.join("token")).unwrap();
    let out = underpass(
        &["check-config", "--config", str(&config)],
        &[("CREDENTIALS_DIRECTORY", str(&credentials))],
    );
    let summary = text(&out.stdout);
    assert!(out.status.success(), "{summary}\n{}", text(&out.stderr));
    assert!(summary.contains("127.20.0.0/16 ports 8080"), "{summary}");
    assert!(summary.contains("systemd credential"), "{summary}");
    assert!(
        summary.contains("admin:         127.0.0.1:20241"),
        "{summary}"
    );

    // Again: refused, naming the files, which stay as they are.
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    let out = underpass(&install, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_FAILURE), "{stderr}");
    for path in installed(&root) {
        assert!(
            stderr.contains(str(&path)),
            "{stderr} does not name {}",
            path.display()
        );
    }
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# edited by the operator\n"
    );
    let mut forced = install.to_vec();
    forced.push("--force");
    let out = underpass(&forced, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), config_text);

    // Enabled (the link `systemctl enable` makes): uninstall refuses and says what to run.
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir(&wants).unwrap();
    std::os::unix::fs::symlink(&unit, wants.join("underpass.service")).unwrap();
    let uninstall = ["service", "uninstall", "--root", str(&root)];
    let out = underpass(&uninstall, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_FAILURE), "{stderr}");
    assert!(
        stderr.contains("systemctl disable --now underpass"),
        "{stderr}"
    );
    assert!(unit.exists());
    std::fs::remove_file(wants.join("underpass.service")).unwrap();

    let out = underpass(&uninstall, &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for path in installed(&root) {
        assert!(!path.exists(), "{} is still there", path.display());
        assert!(
            stdout.contains(&format!("removed {}", path.display())),
            "{stdout}"
        );
    }
    assert!(
        !root.join("etc/underpass").exists(),
        "the empty directory stays"
    );
    assert!(stdout.contains("systemctl daemon-reload"), "{stdout}");
    let out = underpass(&uninstall, &[]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("not present"));
}

#[test]
fn install_copies_a_config_and_refuses_bad_input_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let encoded = token().encode();
    let given = dir.path().join("mine.toml");
    let body = "# mine\ndeny = []\n\n[[route]]\ndestination = \"db.internal\"\nports = \"5432\"\n";
    std::fs::write(&given, body).unwrap();
    let out = underpass(
        &[
            "service",
            "install",
            "--root",
            str(&root),
            "--config",
            str(&given),
        ],
        &[("UNDERPASS_TOKEN", &encoded)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let [_, config, token_path] = installed(&root);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), body);
    assert_eq!(mode(&token_path), 0o600);

    let missing = dir.path().join("missing.token");
    let good = write(dir.path(), "good.token", &encoded);
    let with_token = |flags: &[&str]| {
        let mut flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        flags.extend(["--token-file".to_owned(), good.clone()]);
        flags
    };
    let cases = [
        // A config that sets the token would win over the unit's credential.
        (
            "token_file",
            with_token(&[
                "--config",
                &write(dir.path(), "t.toml", "token_file = \"x\"\n"),
            ]),
            EX_USAGE,
        ),
        (
            "route[0].ports",
            with_token(&[
                "--config",
                &write(
                    dir.path(),
                    "r.toml",
                    "[[route]]\ndestination = \"a\"\nports = \"x\"\n",
                ),
            ]),
            EX_USAGE,
        ),
        (
            "--route 10.0.0.0/40",
            with_token(&["--route", "10.0.0.0/40"]),
            EX_USAGE,
        ),
        ("UNDERPASS_TOKEN", vec![], EX_USAGE),
        // Not a token: refused, and what was given is not repeated.
        (
            "not a tunnel token",
            vec!["--token".into(), "upt1_secretsecretsecret".into()],
            EX_USAGE,
        ),
        (
            str(&missing),
            vec!["--token-file".into(), str(&missing).into()],
            EX_FAILURE,
        ),
    ];
    for (named, flags, code) in cases {
        let fresh = dir.path().join("fresh");
        let mut args = vec!["service", "install", "--root", str(&fresh)];
        args.extend(flags.iter().map(String::as_str));
        let out = underpass(&args, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{named}: {stderr}");
        assert!(stderr.contains(named), "{stderr:?} does not name {named}");
        assert!(!stderr.contains("secretsecret"), "{stderr}");
        assert!(!fresh.exists(), "{named}: something was written");
    }
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    str(&path).to_owned()
}
