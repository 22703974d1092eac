//! The systemd units of `deploy/systemd/` and the `Type=notify` protocol, as far as they can be
//! checked without systemd as PID 1 (it is not PID 1 here; its tools work):
//!
//! - `systemd-analyze verify` accepts both units, which start the documented commands, and
//!   `systemd-analyze security --offline=true` rates each at most 2.0 ("OK");
//! - the connector, with `NOTIFY_SOCKET` on a datagram socket this test reads and
//!   `WATCHDOG_USEC` set, sends no `READY=1` while it cannot register (it says why in a
//!   `STATUS=` line), `READY=1` once when it has, its connections in `STATUS=`, `WATCHDOG=1`
//!   again and again, `STOPPING=1` on SIGTERM, and exits 0; the edge sends `READY=1` once its
//!   listeners are bound (they accept at once), its connectors in `STATUS=`, `WATCHDOG=1`, and
//!   `STOPPING=1` on SIGTERM;
//! - the connector runs in the unit's sandbox as far as it can be reproduced without systemd
//!   (ignored: needs root): an unprivileged user with no capabilities, no new privileges,
//!   umask 0077, no HOME, a read-only root file system, private /tmp and empty /home, the
//!   token in a `CREDENTIALS_DIRECTORY` only that user can read; it notifies `READY=1` and
//!   serves a `connect()` and a `fetch()` through the edge.
//!
//! No assertion depends on a timing: every wait is for a datagram, a log line or an exit,
//! bounded by [`LIMIT`], which only guards a hang.

use std::net::{IpAddr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixDatagram;
use tokio::sync::watch;
use underpass_e2e::connector_process::connector_binary;
use underpass_e2e::edge_home::EdgeHome;
use underpass_e2e::edge_process::{edge_binary, TUNNEL};
use underpass_e2e::load::fetch_exchange;
use underpass_e2e::pattern_origin::PatternOrigin;
use underpass_e2e::process::{self, find_program, read_lossy, ChildGuard};
use underpass_e2e::{http1, repo_root, EchoServer};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);
/// How long one exchange may stall before it counts as hung (a guard, too).
const STALL: Duration = Duration::from_secs(10);
/// `WATCHDOG_USEC` for the programs: a keep-alive every second.
const WATCHDOG_USEC: &str = "2000000";
/// The unprivileged user (and group) of the sandbox test: `nobody`.
const NOBODY: u32 = 65534;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test IP")
}

fn units_dir() -> PathBuf {
    repo_root().join("deploy/systemd")
}

/// `systemd-analyze ARGS`.
fn systemd_analyze(args: &[&str]) -> std::process::Output {
    let program = find_program("systemd-analyze").unwrap_or_else(|e| panic!("{e:#}"));
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run systemd-analyze {args:?}: {e}"))
}

/// The value of the first `key=` line of a unit.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("the unit has no {key}=\n{unit}"))
}

/// A systemd time span such as `45s`, `2min` or `1min 30s`.
fn seconds(span: &str) -> u64 {
    span.split_whitespace()
        .map(|part| {
            let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let value: u64 = digits
                .parse()
                .unwrap_or_else(|_| panic!("a span: {span:?}"));
            match &part[digits.len()..] {
                "" | "s" | "sec" => value,
                "min" | "m" => value * 60,
                other => panic!("unit {other:?} in {span:?}"),
            }
        })
        .sum()
}

/// The default of `key` (milliseconds) as the example config of `example` documents it.
fn documented_ms(example: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(repo_root().join("deploy").join(example))
        .unwrap_or_else(|e| panic!("read deploy/{example}: {e}"));
    text.lines()
        .find_map(|line| {
            line.strip_prefix(key)?
                .trim()
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("deploy/{example} has no {key} line"))
}

#[test]
fn both_units_verify_and_score_at_most_2_0() {
    let units = [
        (
            "underpass.service",
            "/usr/local/bin/underpass",
            connector_binary(),
            "run --config /etc/underpass/connector.toml",
            documented_ms("connector.example.toml", "drain_ms"),
        ),
        (
            "underpass-edge.service",
            "/usr/local/bin/underpass-edge",
            edge_binary(),
            "--config /etc/underpass/edge.toml serve",
            documented_ms("edge.example.toml", "drain_grace_ms"),
        ),
    ];
    // `verify` insists that ExecStart's program exists and is executable, and nothing is
    // installed in /usr/local/bin here: it checks a copy that starts the binaries of this
    // build instead, otherwise the same file.
    let copies = tempfile::tempdir().expect("a folder for the copies");
    for (name, program, built, args, drain_ms) in units {
        let path = units_dir().join(name);
        let unit = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let exec_start = format!("{program} {args}");
        assert_eq!(unit_value(&unit, "ExecStart"), exec_start, "{name}");
        assert_eq!(unit_value(&unit, "Type"), "notify", "{name}");
        assert_eq!(unit_value(&unit, "NotifyAccess"), "main", "{name}");
        assert_eq!(unit_value(&unit, "Restart"), "on-failure", "{name}");
        assert_eq!(
            unit_value(&unit, "ExecReload"),
            "/bin/kill -HUP $MAINPID",
            "{name}"
        );
        assert!(seconds(unit_value(&unit, "WatchdogSec")) > 0, "{name}");
        let stop = seconds(unit_value(&unit, "TimeoutStopSec"));
        assert!(
            stop * 1000 > drain_ms,
            "{name}: TimeoutStopSec={stop}s is not longer than the drain ({drain_ms} ms)"
        );

        let copy = copies.path().join(name);
        let rewritten = unit.replace(
            &format!("ExecStart={program} "),
            &format!("ExecStart={} ", built.display()),
        );
        std::fs::write(&copy, rewritten).expect("write the copy");
        let copy_text = copy.to_str().expect("a UTF-8 path");
        let verify = systemd_analyze(&["verify", copy_text]);
        let complaints = String::from_utf8_lossy(&verify.stderr).into_owned();
        assert!(
            verify.status.success() && !complaints.contains(name),
            "systemd-analyze verify {name}: {}\n{complaints}",
            verify.status
        );

        // The file as shipped: --offline reads only the unit.
        let shipped = path.to_str().expect("a UTF-8 path");
        let security = systemd_analyze(&["security", "--offline=true", shipped]);
        let report = String::from_utf8_lossy(&security.stdout).into_owned();
        let score: f64 = report
            .lines()
            .find_map(|line| {
                let (_, rest) = line.split_once("Overall exposure level for ")?;
                rest.split_once(": ")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "no overall exposure level for {name} ({}):\n{report}{}",
                    security.status,
                    String::from_utf8_lossy(&security.stderr)
                )
            });
        println!("systemd-analyze security --offline=true {name}: {score}");
        assert!(score <= 2.0, "{name} scores {score}:\n{report}");
    }
}

/// A service manager's notification socket, read all along by a task of its own (its queue
/// holds only a few datagrams), with every line received so far.
struct Manager {
    /// The `NOTIFY_SOCKET` value.
    env: String,
    lines: watch::Receiver<Vec<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Manager {
    /// A socket file at `path`, as systemd's `/run/systemd/notify`.
    fn at_path(path: &Path) -> Manager {
        let socket =
            UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        Manager::reading(socket, path.display().to_string())
    }

    /// An abstract socket (`@name`), reachable across mount namespaces and by any user.
    fn abstract_socket() -> Manager {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "underpass-systemd-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("an abstract address");
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind");
        socket.set_nonblocking(true).expect("non-blocking");
        let socket = UnixDatagram::from_std(socket).expect("a tokio socket");
        Manager::reading(socket, format!("@{name}"))
    }

    fn reading(socket: UnixDatagram, env: String) -> Manager {
        let (sender, lines) = watch::channel(Vec::new());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = socket.recv(&mut buf).await {
                let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
                sender.send_modify(|lines| lines.extend(datagram.lines().map(str::to_owned)));
            }
        });
        Manager { env, lines, task }
    }

    /// Every line received so far.
    fn lines(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }

    /// Waits until `done` holds for the lines received; returns them. Panics after [`LIMIT`]
    /// with what was received and `context()` (the program's log).
    async fn wait_until(
        &self,
        what: &str,
        context: impl Fn() -> String,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let mut lines = self.lines.clone();
        let waited = tokio::time::timeout(LIMIT, async {
            lines.wait_for(|lines| done(lines)).await.map(|l| l.clone())
        })
        .await;
        match waited {
            Ok(Ok(lines)) => lines,
            _ => panic!(
                "never notified {what} within {LIMIT:?}; received {:#?}\n{}",
                self.lines(),
                context()
            ),
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many of `lines` are `line`.
fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

/// The lines after the first `line`, if it is there.
fn after<'a>(lines: &'a [String], line: &str) -> Option<&'a [String]> {
    let at = lines.iter().position(|l| l == line)?;
    Some(&lines[at + 1..])
}

/// Polls the child until it exits (at most [`LIMIT`]).
async fn wait_exit(child: &mut ChildGuard) -> ExitStatus {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("check the child") {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running {LIMIT:?} later\n{}",
            child.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address of binding `name` in the edge's log (`binding listening binding=… addr=…`).
fn binding_addr(log: &str, name: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|line| line.contains("binding listening"))
        .find(|line| line.contains(&format!("binding={name} ")))?
        .split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_is_ready_only_once_registered_and_both_programs_keep_the_manager_told() {
    let (connector_bin, edge_bin) =
        tokio::task::spawn_blocking(|| (connector_binary(), edge_binary()))
            .await
            .expect("the build thread");
    let dir = tempfile::Builder::new()
        .prefix("underpass-systemd-notify-")
        .tempdir()
        .expect("create tempdir");
    // The edge's config and state, with its QUIC address and the token known before it runs.
    let home = EdgeHome::create(&format!(
        "[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"net\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"net\"\n"
    ));
    let (edge_config, token) = (home.config_path().to_owned(), home.token());
    let token_file = dir.path().join("tunnel.token");
    std::fs::write(&token_file, token.encode()).expect("write the token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the token");
    let connector_config = dir.path().join("connector.toml");
    std::fs::write(
        &connector_config,
        format!(
            "token_file = {token_file:?}\nconnections = 2\n\n\
             [[route]]\ndestination = \"127.74.0.0/16\"\n\n\
             [timeouts]\nregister_ms = 1000\n\n\
             [reconnect]\ninitial_ms = 100\nmax_ms = 400\n",
            token_file = token_file.display().to_string()
        ),
    )
    .expect("write connector.toml");

    // The connector first, with the edge not running yet: it cannot register.
    let connector_manager = Manager::at_path(&dir.path().join("connector-notify.sock"));
    let mut command = Command::new(&connector_bin);
    command
        .arg("run")
        .arg("--config")
        .arg(&connector_config)
        .env("RUST_LOG", "info")
        .env_remove("UNDERPASS_TOKEN")
        .env("NOTIFY_SOCKET", &connector_manager.env)
        .env("WATCHDOG_USEC", WATCHDOG_USEC);
    let mut connector =
        ChildGuard::spawn(command, "connector", dir.path()).expect("spawn the connector");
    let connector_log = || read_lossy(&dir.path().join("connector.stderr"));
    process::wait_log("a failed attempt", LIMIT, connector_log, |log| {
        log.contains("cannot connect to the edge")
    })
    .await;
    let lines = connector_manager
        .wait_until("why nothing is registered", connector_log, |lines| {
            lines
                .iter()
                .any(|l| l.starts_with("STATUS=no connection registered: no answer from the edge"))
        })
        .await;
    assert_eq!(
        count(&lines, "READY=1"),
        0,
        "ready before registering: {lines:#?}"
    );

    // The edge: ready once its listeners are bound, so its binding accepts at once.
    let edge_manager = Manager::at_path(&dir.path().join("edge-notify.sock"));
    let mut command = Command::new(&edge_bin);
    command
        .arg("--config")
        .arg(&edge_config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &edge_manager.env)
        .env("WATCHDOG_USEC", WATCHDOG_USEC);
    let mut edge = ChildGuard::spawn(command, "edge", dir.path()).expect("spawn the edge");
    let edge_log = || read_lossy(&dir.path().join("edge.stderr"));
    edge_manager
        .wait_until("the edge's READY=1", edge_log, |lines| {
            lines.iter().any(|l| l == "READY=1")
        })
        .await;
    let log = edge_log();
    assert!(log.contains("edge started"), "{log}");
    let binding = binding_addr(&log, "net")
        .unwrap_or_else(|| panic!("READY=1 before the binding listens:\n{log}"));
    tokio::net::TcpStream::connect(binding)
        .await
        .unwrap_or_else(|e| panic!("the binding {binding} after READY=1: {e}\n{log}"));

    // The connector registers: READY=1, its connections in STATUS, the keep-alive goes on.
    let lines = connector_manager
        .wait_until(
            "READY=1, then 2 keep-alives and both connections",
            connector_log,
            |lines| {
                after(lines, "READY=1").is_some_and(|rest| {
                    count(rest, "WATCHDOG=1") >= 2
                        && rest
                            .iter()
                            .any(|l| l == "STATUS=2/2 connections registered, 0 streams")
                })
            },
        )
        .await;
    assert!(
        connector_log().contains("registered with the edge"),
        "{}",
        connector_log()
    );
    assert!(
        count(&lines, "WATCHDOG=1") >= 2,
        "the keep-alive runs before registration too: {lines:#?}"
    );
    edge_manager
        .wait_until("the connector in the edge's status", edge_log, |lines| {
            lines
                .iter()
                .any(|l| l == "STATUS=1 connectors registered (2 connections), 0 streams")
                && count(lines, "WATCHDOG=1") >= 1
        })
        .await;

    // SIGTERM: STOPPING=1 and the drain in STATUS, then exit 0; READY=1 was sent once.
    process::signal(
        connector.id(),
        nix::sys::signal::Signal::SIGTERM,
        "the connector",
    );
    let lines = connector_manager
        .wait_until("STOPPING=1 and the drain", connector_log, |lines| {
            after(lines, "STOPPING=1")
                .is_some_and(|rest| rest.iter().any(|l| l.starts_with("STATUS=draining: ")))
        })
        .await;
    let status = wait_exit(&mut connector).await;
    assert_eq!(status.code(), Some(0), "{}", connector.output());
    assert_eq!(count(&lines, "READY=1"), 1, "{lines:#?}");
    println!("the connector notified: {lines:#?}");

    process::signal(edge.id(), nix::sys::signal::Signal::SIGTERM, "the edge");
    edge_manager
        .wait_until("the edge's STOPPING=1", edge_log, |lines| {
            lines.iter().any(|l| l == "STOPPING=1")
        })
        .await;
    let status = wait_exit(&mut edge).await;
    assert_eq!(status.code(), Some(0), "{}", edge.output());
    let lines = edge_manager.lines();
    assert_eq!(count(&lines, "READY=1"), 1, "{lines:#?}");
    println!("the edge notified: {lines:#?}");
}

/// Run as root in a mount namespace of its own, then as `nobody`: what the unit's sandbox
/// does that can be done without systemd. Mounts: an empty tmpfs on /tmp (PrivateTmp), on
/// /home, /root and /run/user (ProtectHome), then the root file system read-only
/// (ProtectSystem=strict). Then the process: UMask=0077, no supplementary groups,
/// NoNewPrivileges, an empty capability bounding set, no inheritable or ambient capabilities
/// (CapabilityBoundingSet=, AmbientCapabilities=).
const SANDBOX: &str = r#"
set -eu
mount -t tmpfs -o mode=1777,nosuid,nodev private-tmp /tmp
for home in /home /root /run/user; do
    if [ -d "$home" ]; then mount -t tmpfs -o mode=0755,nosuid,nodev protect-home "$home"; fi
done
mount -o remount,bind,ro /
cd /
umask 0077
exec setpriv --reuid 65534 --regid 65534 --clear-groups --no-new-privs \
    --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- "$@"
"#;

/// A `/proc/PID/status` field.
fn proc_status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The mount options and the file system type of the mount on `point` (the topmost) in
/// `mountinfo` (`/proc/PID/mountinfo`: the point is the 5th field, the options the 6th, the
/// type the one after the ` - ` separator).
fn mount_of(mountinfo: &str, point: &str) -> (String, String) {
    mountinfo
        .lines()
        .rev()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount.split_whitespace().collect();
            (fields.get(4) == Some(&point)).then(|| {
                let fs_type = fs.split_whitespace().next().unwrap_or_default();
                let options = fields.get(5).copied().unwrap_or_default();
                (options.to_owned(), fs_type.to_owned())
            })
        })
        .unwrap_or_else(|| panic!("no mount on {point}:\n{mountinfo}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (a mount namespace, setpriv to another user); run by scripts/test --ignored"]
async fn the_connector_serves_in_the_units_sandbox_as_an_unprivileged_user() {
    let euid = proc_status(std::process::id(), "Uid");
    assert_eq!(
        euid.split_whitespace().nth(1),
        Some("0"),
        "this test builds the sandbox as root, then drops to uid {NOBODY}"
    );
    let program = tokio::task::spawn_blocking(connector_binary)
        .await
        .expect("the build thread");
    let echo = EchoServer::start(ip("127.74.1.1"));
    let origin = PatternOrigin::start(ip("127.74.2.1"));
    let home = EdgeHome::create(&format!(
        "[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"net\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"net\"\n"
    ));
    let edge = home.start().await;
    let binding = edge.binding_addr("net");

    // Outside /tmp, which the sandbox replaces: the build's own temporary folder. The config
    // (no token in it) is readable by all, as /etc/underpass/connector.toml; the credential
    // only by the service's user, as systemd's $CREDENTIALS_DIRECTORY.
    let dir = tempfile::Builder::new()
        .prefix("underpass-systemd-sandbox-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create tempdir");
    let mode = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    mode(dir.path(), 0o755);
    let config = dir.path().join("connector.toml");
    std::fs::write(
        &config,
        "connections = 2\n\n[[route]]\ndestination = \"127.74.0.0/16\"\n",
    )
    .expect("write connector.toml");
    mode(&config, 0o644);
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).expect("create the credentials folder");
    let token = credentials.join("token");
    std::fs::write(&token, format!("{}\n", home.token().encode())).expect("write the token");
    for (path, m) in [(&token, 0o400), (&credentials, 0o500)] {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown");
        mode(path, m);
    }

    let manager = Manager::abstract_socket();
    let mut command = Command::new(find_program("unshare").unwrap_or_else(|e| panic!("{e:#}")));
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SANDBOX,
            "sandbox",
        ])
        .arg(&program)
        .arg("run")
        .arg("--config")
        .arg(&config)
        // What systemd passes, and nothing else: no HOME, USER or token variable.
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("RUST_LOG", "info")
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("NOTIFY_SOCKET", &manager.env)
        .env("WATCHDOG_USEC", WATCHDOG_USEC);
    let mut connector =
        ChildGuard::spawn(command, "connector", dir.path()).expect("spawn the sandbox");
    let log = || read_lossy(&dir.path().join("connector.stderr"));
    manager
        .wait_until("READY=1 from the sandbox", log, |lines| {
            lines.iter().any(|l| l == "READY=1")
        })
        .await;

    // unshare, sh and setpriv each exec the next: the pid is the connector's.
    let pid = connector.id();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("/proc/PID/exe");
    assert_eq!(exe, program, "{}", log());
    let uid = proc_status(pid, "Uid");
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["65534"; 4],
        "Uid: {uid}"
    );
    let gid = proc_status(pid, "Gid");
    assert_eq!(
        gid.split_whitespace().collect::<Vec<_>>(),
        ["65534"; 4],
        "Gid: {gid}"
    );
    assert_eq!(proc_status(pid, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "Umask"), "0077");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("/proc/PID/environ");
    assert!(
        !environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(b"HOME=")),
        "HOME is set"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let (root_options, _) = mount_of(&mounts, "/");
    assert!(root_options.starts_with("ro,"), "/ is writable:\n{mounts}");
    let (_, tmp_type) = mount_of(&mounts, "/tmp");
    assert_eq!(tmp_type, "tmpfs", "{mounts}");

    // connect(): bytes there and back.
    let target = echo.addr().to_string();
    let answer = http1::connect(binding, &target, STALL).await;
    assert_eq!(
        answer.status,
        200,
        "CONNECT {target}: {}\n{}",
        answer.head,
        log()
    );
    let mut tunnel = answer.stream;
    let ping = b"ping from the sandbox";
    tunnel.write_all(ping).await.expect("write");
    let mut echoed = vec![0u8; ping.len()];
    tokio::time::timeout(STALL, tunnel.read_exact(&mut echoed))
        .await
        .expect("the echo stalled")
        .expect("read the echo");
    assert_eq!(echoed, ping);
    drop(tunnel);

    // fetch(): every body byte checked.
    let (outcome, _) = fetch_exchange(
        binding,
        origin.addr(),
        200_000,
        16 * 1024,
        Duration::ZERO,
        STALL,
    )
    .await;
    assert!(
        outcome.is_ok(),
        "fetch from the sandbox: {outcome:?}\n{}",
        log()
    );

    // As under systemd: SIGTERM, STOPPING=1, exit 0.
    process::signal(pid, nix::sys::signal::Signal::SIGTERM, "the connector");
    manager
        .wait_until("STOPPING=1 from the sandbox", log, |lines| {
            lines.iter().any(|l| l == "STOPPING=1")
        })
        .await;
    let status = wait_exit(&mut connector).await;
    assert_eq!(status.code(), Some(0), "{}", connector.output());
    println!("the sandboxed connector logged:\n{}", log());
    drop(edge);
}
