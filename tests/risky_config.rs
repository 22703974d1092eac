//! Risky configuration is called out (issue 15, point 4): the real `underpass` and
//! `underpass-edge` binaries run `check-config` on real files with real modes (chmod), and
//! `run` / `serve` at start. A warning names the key and the path and exits 0; a refusal (a
//! token, config or state file others can write) exits 64 and the program does not start.
//!
//! Nothing here is dialed or bound beyond loopback: the non-loopback addresses are values in
//! config files that only `check-config` reads.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use underpass_e2e::connector_process::connector_binary;
use underpass_e2e::edge_process::edge_binary;
use underpass_e2e::free_port;
use underpass_e2e::process::{poll_until, read_lossy, ChildGuard, Probe};
use underpass_proto::{TunnelId, TunnelSecret, TunnelToken};

const EX_USAGE: i32 = 64;
/// How long a refused `run` / `serve` may take to exit, or a started one to log its start.
const START_LIMIT: Duration = Duration::from_secs(20);
const REFUSED: &str = "(refused: nothing legitimate needs this)";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, mode);
}

/// A program with none of the environment that would change where its settings come from.
fn command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for name in [
        "UNDERPASS_TOKEN",
        "UNDERPASS_EDGE_CONFIG",
        "UNDERPASS_LOG_FORMAT",
        "CREDENTIALS_DIRECTORY",
        "RUST_LOG",
    ] {
        command.env_remove(name);
    }
    command
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn ran(output: Output) -> Ran {
    Ran {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn underpass(args: &[&str]) -> Ran {
    ran(command(&connector_binary())
        .args(args)
        .output()
        .expect("run underpass"))
}

fn edge(config: &Path, args: &[&str]) -> Ran {
    ran(command(&edge_binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run underpass-edge"))
}

/// Asserts `stderr` has a line starting with `start` and containing each of `parts`.
fn assert_line(stderr: &str, start: &str, parts: &[&str]) {
    let line = stderr
        .lines()
        .find(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{stderr}"));
    for part in parts {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
}

/// Starts `command` (stdout and stderr to files in `dir`) and waits until it exits (returns
/// its status and stderr) or its stderr shows `started` (returns `None` and the stderr).
fn start(command: Command, name: &str, dir: &Path, started: &str) -> (Option<ExitStatus>, String) {
    let mut child = ChildGuard::spawn(command, name, dir).expect("spawn");
    let stderr = dir.join(format!("{name}.stderr"));
    let mut status = None;
    let seen = poll_until(
        &format!("{name} exits or logs {started:?}"),
        START_LIMIT,
        || {
            if let Ok(Some(exited)) = child.try_wait() {
                status = Some(exited);
                return Probe::Ready;
            }
            if read_lossy(&stderr).contains(started) {
                Probe::Ready
            } else {
                Probe::NotYet
            }
        },
    );
    seen.unwrap_or_else(|e| panic!("{e:#}\n{}", child.output()));
    child.kill();
    (status, read_lossy(&stderr))
}

// --- The connector -----------------------------------------------------------------------

/// A tunnel token whose edge is a free loopback port nothing listens on.
fn token() -> TunnelToken {
    let port = free_port("127.0.0.1".parse().expect("literal"));
    TunnelToken {
        tunnel_id: TunnelId([0x15; 16]),
        secret: TunnelSecret([0x5e; 32]),
        edges: vec![format!("127.0.0.1:{port}")],
        server_name: "edge.underpass.test".into(),
        ca_pin: [4; 32],
    }
}

/// A folder with `tunnel.token` (0600) and `connector.toml` (0644: `token_file` and `body`).
fn connector_files(body: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("tunnel.token");
    write(&token_file, &format!("{}\n", token().encode()), 0o600);
    let config = dir.path().join("connector.toml");
    write(
        &config,
        &format!("token_file = \"tunnel.token\"\n{body}"),
        0o644,
    );
    (dir, token_file, config)
}

#[test]
fn a_token_file_others_can_read_is_a_warning_and_one_they_can_write_is_refused() {
    let (dir, token_file, config) = connector_files("[[route]]\ndestination = \"127.20.0.0/16\"\n");
    let (token_path, config_path) = (
        token_file.display().to_string(),
        config.display().to_string(),
    );
    let check = || underpass(&["check-config", &config_path]);

    let private = check();
    assert!(private.status.success(), "{}", private.stderr);
    assert!(!private.stderr.contains("warning:"), "{}", private.stderr);
    assert!(private.stdout.contains(": OK"), "{}", private.stdout);

    // A group that root lets read a secret is deliberate (a Kubernetes Secret mounted 0440):
    // only a file owned by someone else is called out for it.
    let root = std::fs::metadata(&token_file).expect("stat").uid() == 0;
    for (mode, who) in [
        (0o640, (!root).then_some("the group can read it")),
        (0o604, Some("other users can read it")),
        (
            0o644,
            Some(if root {
                "other users can read it"
            } else {
                "the group and other users can read it"
            }),
        ),
    ] {
        chmod(&token_file, mode);
        let out = check();
        assert_eq!(out.status.code(), Some(0), "{mode:o}: {}", out.stderr);
        let Some(who) = who else {
            assert!(!out.stderr.contains("warning:"), "{mode:o}: {}", out.stderr);
            continue;
        };
        assert_line(
            &out.stderr,
            &format!("warning: token_file {token_path}: mode {mode:04o}: {who}"),
            &[
                "register as this tunnel's connector",
                &format!("chmod 600 {token_path}"),
            ],
        );
        assert!(out.stdout.contains(": OK"), "{}", out.stdout);
    }

    // Writable by others: refused, by check-config and by run, which exits before dialing.
    chmod(&token_file, 0o606);
    let out = check();
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", out.stderr);
    assert_line(
        &out.stderr,
        &format!("error: token_file {token_path}: mode 0606: other users can read it"),
        &["other users can write it", REFUSED],
    );
    assert!(!out.stdout.contains(": OK"), "{}", out.stdout);
    let mut run = command(&connector_binary());
    run.args(["run", "--config", &config_path]);
    let (status, stderr) = start(run, "refused-run", dir.path(), "connector starting");
    assert_eq!(status.and_then(|s| s.code()), Some(EX_USAGE), "{stderr}");
    assert_line(
        &stderr,
        &format!("error: token_file {token_path}: mode 0606"),
        &[REFUSED],
    );

    // The config file too: whoever writes it chooses the routes.
    chmod(&token_file, 0o600);
    chmod(&config, 0o646);
    let out = check();
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", out.stderr);
    assert_line(
        &out.stderr,
        &format!("error: config file {config_path}: mode 0646: other users can write it"),
        &["can add routes", REFUSED],
    );
}

#[test]
fn run_logs_each_warning_once_at_start() {
    let (dir, token_file, config) = connector_files("[[route]]\ndestination = \"127.20.0.0/16\"\n");
    chmod(&token_file, 0o644);
    let mut run = command(&connector_binary());
    run.args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info");
    let (status, stderr) = start(run, "warned-run", dir.path(), "connector starting");
    assert_eq!(status, None, "run exited: {stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("risky configuration"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    for part in [
        "WARN",
        "key=token_file",
        &format!("path={}", token_file.display()),
        "mode 0644",
    ] {
        assert!(
            warnings[0].contains(part),
            "{part:?} not in {:?}",
            warnings[0]
        );
    }
}

#[test]
fn an_inline_token_in_a_readable_config_file_is_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("connector.toml");
    write(
        &config,
        &format!("token = \"{}\"\n", token().encode()),
        0o644,
    );
    let out = underpass(&["check-config", &config.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_line(
        &out.stderr,
        &format!("warning: token {}: mode 0644", config.display()),
        &["holds the tunnel token (`token`", "chmod 600"],
    );
    chmod(&config, 0o600);
    let out = underpass(&["check-config", &config.display().to_string()]);
    assert!(!out.stderr.contains("warning:"), "{}", out.stderr);
}

#[test]
fn routes_to_everything_an_open_metadata_endpoint_and_a_denied_resolver_are_warnings() {
    let check = |body: &str| {
        let (dir, _, config) = connector_files(body);
        let out = underpass(&["check-config", &config.display().to_string()]);
        assert_eq!(out.status.code(), Some(0), "{body}: {}", out.stderr);
        assert!(out.stdout.contains(": OK"), "{}", out.stdout);
        (dir, config.display().to_string(), out.stderr)
    };

    let (_dir, config, stderr) = check(
        "deny = []\n\
         [[route]]\ndestination = \"0.0.0.0/0\"\n\
         [[route]]\ndestination = \"::/0\"\nports = \"443\"\n\
         [[route]]\ndestination = \"*.com\"\n",
    );
    assert_line(
        &stderr,
        &format!("warning: route[0].destination = \"0.0.0.0/0\" in {config}: routes every IPv4"),
        &["only by the deny list (0 entries)"],
    );
    assert_line(
        &stderr,
        &format!("warning: route[1].destination = \"::/0\" in {config}: routes every IPv6"),
        &["on ports 443"],
    );
    assert_line(
        &stderr,
        &format!("warning: route[2].destination = \"*.com\" in {config}: matches every name"),
        &["dns.strict_resolved"],
    );
    assert_line(
        &stderr,
        &format!(
            "warning: deny = [] in {config}: route[0].destination = \"0.0.0.0/0\" allows \
             169.254.169.254 port 80"
        ),
        &["metadata", "169.254.169.254/32"],
    );
    // The IPv6 metadata endpoint is reached by name: `*.com` routes names on every port.
    assert_line(
        &stderr,
        &format!("warning: deny = [] in {config}: the deny list does not cover fd00:ec2::254"),
        &["fd00:ec2::254/128"],
    );
    assert_eq!(stderr.matches("warning:").count(), 5, "{stderr}");

    // The case of the issue: the link-local range routed, the deny list emptied.
    let (_dir, config, stderr) = check("deny = []\n[[route]]\ndestination = \"169.254.0.0/16\"\n");
    assert_line(
        &stderr,
        &format!(
            "warning: deny = [] in {config}: route[0].destination = \"169.254.0.0/16\" allows \
             169.254.169.254 port 80"
        ),
        &[],
    );
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");

    // A local stub resolver inside a deny list that keeps the connector's own host out.
    let (_dir, config, stderr) = check(
        "deny = [\"127.0.0.0/8\", \"169.254.169.254/32\", \"fd00:ec2::254/128\"]\n\
         [[route]]\ndestination = \"*.corp.test\"\n\
         [dns]\nresolvers = [\"127.0.0.53:53\"]\n\
         [admin]\nlisten = \"0.0.0.0:20241\"\n",
    );
    assert_line(
        &stderr,
        &format!(
            "warning: dns.resolvers[0] = \"127.0.0.53:53\" in {config}: it is inside deny[0] \
             (127.0.0.0/8)"
        ),
        &["own DNS queries there"],
    );
    assert_line(
        &stderr,
        &format!("warning: admin.listen = \"0.0.0.0:20241\" in {config}: "),
        &["not on loopback"],
    );
    assert_eq!(stderr.matches("warning:").count(), 2, "{stderr}");

    // What the tests route every day is not called out.
    let (_dir, _, stderr) = check(
        "[[route]]\ndestination = \"127.0.0.0/8\"\n\
         [[route]]\ndestination = \"*.internal\"\n\
         [admin]\nlisten = \"127.0.0.1:20241\"\n",
    );
    assert!(!stderr.contains("warning:"), "{stderr}");
}

// --- The edge ------------------------------------------------------------------------------

/// A folder with `edge.toml` (0644: `state_dir = "state"`, QUIC on any free loopback port, and
/// `body`) and the state directory `tunnel create prod` made: the folder, the state directory
/// and the config file.
fn edge_home(body: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    write(
        &config,
        &format!(
            "state_dir = \"state\"\nlisten = \"127.0.0.1:0\"\n\
             public_addresses = [\"127.0.0.1:7844\"]\n{body}"
        ),
        0o644,
    );
    let created = edge(&config, &["tunnel", "create", "prod"]);
    assert!(created.status.success(), "{}", created.stderr);
    let state = dir.path().join("state");
    (dir, state, config)
}

#[test]
fn edge_state_files_others_can_read_are_warnings_and_ones_they_can_write_are_refused() {
    let (home, state, config) = edge_home("");
    let home = home.path();
    let tunnels = state.join("tunnels.json");
    let check = || edge(&config, &["check-config"]);

    let private = check();
    assert_eq!(private.status.code(), Some(0), "{}", private.stderr);
    assert!(!private.stderr.contains("warning:"), "{}", private.stderr);
    assert!(
        private.stderr.contains("0 warning(s)"),
        "{}",
        private.stderr
    );

    chmod(&tunnels, 0o644);
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_line(
        &out.stderr,
        &format!("warning: state_dir {}: mode 0644: ", tunnels.display()),
        &[
            "other users can read it",
            "tunnel secrets",
            &format!("chmod 600 {}", tunnels.display()),
        ],
    );
    assert!(out.stderr.contains("1 warning(s)"), "{}", out.stderr);

    // `serve` logs it once at start, and serves.
    let mut serve = command(&edge_binary());
    serve
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info");
    let (status, stderr) = start(serve, "warned-serve", home, "edge started");
    assert_eq!(status, None, "serve exited: {stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("risky configuration"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    for part in [
        "WARN",
        "key=state_dir",
        &format!("path={}", tunnels.display()),
    ] {
        assert!(
            warnings[0].contains(part),
            "{part:?} not in {:?}",
            warnings[0]
        );
    }

    // Writable by others: refused by check-config, and serve exits before binding.
    chmod(&tunnels, 0o666);
    let out = check();
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", out.stderr);
    assert_line(
        &out.stderr,
        &format!("error: state_dir {}: mode 0666: ", tunnels.display()),
        &["other users can write it", REFUSED],
    );
    assert!(!out.stderr.contains("config is valid"), "{}", out.stderr);
    let mut serve = command(&edge_binary());
    serve.arg("--config").arg(&config).arg("serve");
    let (status, stderr) = start(serve, "refused-serve", home, "edge started");
    assert_eq!(status.and_then(|s| s.code()), Some(EX_USAGE), "{stderr}");
    assert_line(
        &stderr,
        &format!("error: state_dir {}: mode 0666", tunnels.display()),
        &[REFUSED],
    );
    chmod(&tunnels, 0o600);

    // The PKI keys and the directory database are secrets too.
    let key = state.join("ca.key");
    chmod(&key, 0o604);
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_line(
        &out.stderr,
        &format!(
            "warning: state_dir {}: mode 0604: other users can read it",
            key.display()
        ),
        &["CA key"],
    );
    chmod(&key, 0o600);
    let token = edge(
        &config,
        &["token", "create", "--account", "acme", "--role", "read"],
    );
    assert!(token.status.success(), "{}", token.stderr);
    let db = state.join("directory.db");
    chmod(&db, 0o604);
    let out = check();
    assert_line(
        &out.stderr,
        &format!(
            "warning: state_dir {}: mode 0604: other users can read it",
            db.display()
        ),
        &["API token hashes"],
    );
    chmod(&db, 0o600);

    // The state directory and the config file, others can add to or rewrite: refused.
    chmod(&state, 0o777);
    let out = check();
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", out.stderr);
    assert_line(
        &out.stderr,
        &format!("error: state_dir {}: mode 0777: ", state.display()),
        &["can add or replace files in it", "chmod 700", REFUSED],
    );
    chmod(&state, 0o700);
    chmod(&config, 0o646);
    let out = check();
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", out.stderr);
    assert_line(
        &out.stderr,
        &format!("error: config file {}: mode 0646: ", config.display()),
        &["other users can write it", REFUSED],
    );
    chmod(&config, 0o644);
    assert_eq!(check().status.code(), Some(0));
}

#[test]
fn edge_listeners_beyond_loopback_are_warnings() {
    let (_home, _state, config) = edge_home(
        "[[network]]\nname = \"corp\"\ntunnel = \"prod\"\n\
         [[binding]]\nname = \"LOCAL\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"corp\"\n\
         [[binding]]\nname = \"PUBLIC\"\nlisten = \"0.0.0.0:0\"\nnetwork = \"corp\"\n\
         [admin]\nlisten = \"0.0.0.0:0\"\n",
    );
    let out = edge(&config, &["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let config_path = config.display().to_string();
    assert_line(
        &out.stderr,
        &format!("warning: binding \"PUBLIC\": listen = \"0.0.0.0:0\" in {config_path}: "),
        &["no authentication", "network \"corp\"", "127.0.0.1"],
    );
    assert_line(
        &out.stderr,
        &format!("warning: admin.listen = \"0.0.0.0:0\" in {config_path}: "),
        &["without TLS", "admin.tls_cert"],
    );
    assert!(!out.stderr.contains("\"LOCAL\""), "{}", out.stderr);
    assert!(out.stderr.contains("2 warning(s)"), "{}", out.stderr);
}
