//! The connector's container image, built and run as an operator would:
//!
//! - `scripts/release` builds the static, stripped binaries (one release build, in this
//!   test's target folder, so a CI run builds it once) and `scripts/container` builds the
//!   `FROM scratch` image from it, offline;
//! - the image runs read-only as UID 65532 with the config and the token mounted read-only
//!   (the token at `/run/secrets/underpass-token`), resolves the edge's name (static glibc:
//!   `/etc/hosts`) and a private name (hickory, through dnsmasq), registers, and a `connect()`
//!   and a `fetch()` through a binding succeed;
//! - with no CA store in the image, HTTPS origins are verified against the compiled-in web
//!   roots: an origin signed by an unknown CA is refused as such, not for a lack of anchors;
//! - `podman stop` (the image's STOPSIGNAL, SIGTERM) drains: `/ready` turns 503, the open
//!   stream goes on, and the container exits 0 once it is done.
//!
//! Needs podman and runc (`scripts/test` installs them); without them the test fails, saying
//! how to install them. The podman flags
//! (`--runtime runc`, rlimits no higher than the current ones) are what this sandbox needs,
//! not what the image requires. No assertion depends on a timing: every wait polls for a
//! state, bounded by [`LIMIT`], which only guards a hang.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use underpass_e2e::dnsmasq::Dnsmasq;
use underpass_e2e::edge_home::EdgeHome;
use underpass_e2e::edge_process::TUNNEL;
use underpass_e2e::load::fetch_exchange;
use underpass_e2e::pattern_origin::PatternOrigin;
use underpass_e2e::ports::free_port;
use underpass_e2e::{admin, http1, repo_root, EchoServer, TestPki};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(60);
/// How long one exchange may stall before it counts as hung (a guard, too).
const STALL: Duration = Duration::from_secs(20);
/// The user the image runs as.
const UID: u32 = 65532;
/// The edge's name as the connector dials it: only the container's `/etc/hosts` knows it.
const EDGE_NAME: &str = "edge.container.test";
/// A private name only the test's DNS server knows.
const ECHO_NAME: &str = "echo.private.container.test";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test IP")
}

/// Runs `podman ARGS` and returns its output.
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run podman {args:?}: {e}"))
}

/// `podman ARGS`, which must succeed; returns its stdout, trimmed.
fn podman_ok(args: &[&str]) -> String {
    let output = podman(args);
    assert!(
        output.status.success(),
        "podman {args:?} failed with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Why podman cannot be used here at all, if it cannot.
fn podman_unusable() -> Option<String> {
    match Command::new("podman")
        .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
        .output()
    {
        Err(e) => Some(format!(
            "podman is not installed ({e}); scripts/test installs it (podman, runc, uidmap, \
             fuse-overlayfs)"
        )),
        Ok(output) if !output.status.success() => Some(format!(
            "`podman info` fails on this machine: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// `CARGO_TARGET_DIR`, else the target folder of this test executable
/// (`<target>/<profile>/deps/container-…`): the release build lands next to the workspace's
/// other builds, and a second run reuses it.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .nth(3)
        .expect("the test executable is in <target>/<profile>/deps")
        .to_path_buf()
}

/// Runs a repository script, which must succeed; returns its stdout.
fn script(name: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let path = repo_root().join("scripts").join(name);
    let mut command = Command::new(&path);
    command.args(args).current_dir(repo_root());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scripts/{name} {args:?} failed with {}:\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// An image tag and a container name, removed when dropped.
struct PodmanGuard {
    image: String,
    container: String,
}

impl Drop for PodmanGuard {
    fn drop(&mut self) {
        // Best effort: a failure here must not hide the test's own.
        let _ = podman(&["rm", "--force", "--ignore", &self.container]);
        let _ = podman(&["rmi", "--force", &self.image]);
    }
}

/// Writes `text` to `path` with `mode`, owned by the image's user.
fn write_owned(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write a file for the container");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    std::os::unix::fs::chown(path, Some(UID), Some(UID)).expect("chown to the image's user");
}

/// An HTTPS origin whose certificate comes from a CA the connector does not know.
async fn untrusted_tls_origin(ip: IpAddr) -> SocketAddr {
    let pki = TestPki::new("Container test untrusted CA");
    let name = ip.to_string();
    let acceptor = TlsAcceptor::from(pki.server_config(&[name.as_str()]));
    let listener = TcpListener::bind((ip, 0))
        .await
        .expect("bind the TLS origin");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _pki = pki;
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // The client refuses the certificate: the handshake fails, as it should.
            tokio::spawn(async move { drop(acceptor.accept(stream).await) });
        }
    });
    addr
}

/// Polls `/ready` until its status is `want`; panics with the container's log past [`LIMIT`].
async fn wait_ready_status(admin_addr: SocketAddr, want: u16, container: &str) {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(response) = admin::get(admin_addr, "/ready").await {
            if response.status == want {
                return;
            }
        }
        let running = podman_ok(&["inspect", "--format", "{{.State.Running}}", container]);
        assert!(
            running == "true" || want != 200,
            "the container exited before /ready answered {want}:\n{}",
            container_log(container)
        );
        assert!(
            Instant::now() < deadline,
            "GET /ready did not answer {want} within {LIMIT:?}:\n{}",
            container_log(container)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn container_log(container: &str) -> String {
    let output = podman(&["logs", container]);
    format!(
        "--- podman logs {container} ---\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A line of `/proc/PID/status`, e.g. `Uid` or `VmRSS`.
fn proc_status(pid: &str, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scratch_image_serves_read_only_as_65532_and_drains_on_stop() {
    if let Some(reason) = podman_unusable() {
        panic!("the container test cannot run: {reason}");
    }

    // One static release build, in this test's target folder; then the image, offline.
    let dist = tempfile::tempdir().expect("a folder for the release binaries");
    let target = target_dir();
    let built = tokio::task::spawn_blocking({
        let dist = dist.path().to_owned();
        move || {
            script(
                "release",
                &["--out", dist.to_str().expect("a UTF-8 path")],
                &[("CARGO_TARGET_DIR", &target)],
            )
        }
    })
    .await
    .expect("the release build thread");
    println!("{built}");
    let binary = dist.path().join("underpass");
    let sums = std::fs::read_to_string(dist.path().join("SHA256SUMS")).expect("SHA256SUMS");
    assert!(
        sums.contains("  underpass\n") && sums.contains("  underpass-edge\n"),
        "{sums}"
    );

    let unique = format!("{}-{}", std::process::id(), free_port(ip("127.0.0.1")));
    let guard = PodmanGuard {
        image: format!("localhost/underpass-e2e:{unique}"),
        container: format!("underpass-e2e-{unique}"),
    };
    let image_build = tokio::task::spawn_blocking({
        let (binary, image) = (binary.clone(), guard.image.clone());
        move || {
            script(
                "container",
                &["--binary", binary.to_str().expect("UTF-8"), "--tag", &image],
                &[],
            )
        }
    })
    .await
    .expect("the image build thread");
    println!("{image_build}");

    // What the image promises, from its configuration.
    let config = podman_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &guard.image,
    ]);
    let config: serde_json::Value = serde_json::from_str(&config).expect("the image config");
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/underpass", "run"])
    );
    assert_eq!(config["StopSignal"], "SIGTERM", "{config}");
    assert!(config["ExposedPorts"]["20241/tcp"].is_object(), "{config}");
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .expect("underpass --version");
    let version = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a version")
        .to_owned();
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"], version,
        "{config}"
    );
    let size: u64 = podman_ok(&["image", "inspect", "--format", "{{.Size}}", &guard.image])
        .parse()
        .expect("the image size");
    let binary_size = std::fs::metadata(&binary).expect("the binary").len();
    println!(
        "image {}: {size} bytes; the binary: {binary_size} bytes",
        guard.image
    );
    assert!(
        size < binary_size + 1024 * 1024,
        "the image holds more than the binary: {size} bytes for a {binary_size}-byte binary"
    );

    // The edge (on a name only the container's /etc/hosts resolves), the origins, and a DNS
    // server for the private name.
    let echo = EchoServer::start(ip("127.73.1.1"));
    let origin = PatternOrigin::start(ip("127.73.2.1"));
    let tls_origin = untrusted_tls_origin(ip("127.73.3.1")).await;
    let dns = Dnsmasq::builder(ip("127.73.0.53"))
        .record(ECHO_NAME, echo.addr().ip())
        .start()
        .await;
    let home = EdgeHome::create_with_admin(&format!(
        "[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"net\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"net\"\n"
    ));
    let edge = home.start().await;
    let binding = edge.binding_addr("net");

    // The config and the token, readable by the image's user only, mounted read-only.
    let files = tempfile::tempdir().expect("a folder for the mounts");
    let admin_addr = SocketAddr::new(ip("127.0.0.1"), free_port(ip("127.0.0.1")));
    let config_path = files.path().join("connector.toml");
    write_owned(
        &config_path,
        &format!(
            "connections = 2\n\
             [[route]]\ndestination = \"127.73.0.0/16\"\n\n\
             [[route]]\ndestination = \"*.private.container.test\"\n\n\
             [edge]\naddresses = [\"{EDGE_NAME}:{port}\"]\n\n\
             [dns]\nresolvers = [\"{dns}\"]\n\n\
             [timeouts]\ndrain_ms = 120000\n",
            port = edge.quic_addr().port(),
            dns = dns.addr(),
        ),
        0o400,
    );
    let token_path = files.path().join("token");
    write_owned(&token_path, &format!("{}\n", home.token().encode()), 0o400);

    let mount = |from: &Path, to: &str| format!("{}:{to}:ro", from.display());
    let run_args = [
        "--runtime".to_owned(),
        "runc".to_owned(),
        "run".to_owned(),
        "--detach".to_owned(),
        "--name".to_owned(),
        guard.container.clone(),
        "--read-only".to_owned(),
        "--user".to_owned(),
        format!("{UID}:{UID}"),
        "--network".to_owned(),
        "host".to_owned(),
        "--ulimit".to_owned(),
        "nofile=1024:1024".to_owned(),
        "--ulimit".to_owned(),
        "nproc=4096:4096".to_owned(),
        "--add-host".to_owned(),
        format!("{EDGE_NAME}:127.0.0.1"),
        "--env".to_owned(),
        "RUST_LOG=info".to_owned(),
        "--volume".to_owned(),
        mount(&config_path, "/etc/underpass/connector.toml"),
        "--volume".to_owned(),
        mount(&token_path, "/run/secrets/underpass-token"),
        guard.image.clone(),
        // In place of the image's CMD (the admin listener on 0.0.0.0:20241): a free loopback
        // port, since the container shares the host's network here. The config and the token
        // are found where they are mounted, with no flag naming them.
        "--admin-listen".to_owned(),
        admin_addr.to_string(),
    ];
    let run_args: Vec<&str> = run_args.iter().map(String::as_str).collect();
    let started = Instant::now();
    podman_ok(&run_args);
    wait_ready_status(admin_addr, 200, &guard.container).await;
    println!("registered {:?} after podman run", started.elapsed());

    // It runs as 65532, the binary from the image.
    let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &guard.container]);
    let uid = proc_status(&pid, "Uid");
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "Uid: {uid}"
    );
    println!(
        "idle connector in the container: VmRSS {}",
        proc_status(&pid, "VmRSS")
    );

    // connect(), to a private name resolved by the connector.
    let target = format!("{ECHO_NAME}:{}", echo.addr().port());
    let answer = http1::connect(binding, &target, STALL).await;
    assert_eq!(
        answer.status,
        200,
        "CONNECT {target}: {}\n{}",
        answer.head,
        container_log(&guard.container)
    );
    let mut tunnel = answer.stream;
    tunnel
        .write_all(b"ping through the container")
        .await
        .expect("write");
    let mut echoed = vec![0u8; b"ping through the container".len()];
    tokio::time::timeout(STALL, tunnel.read_exact(&mut echoed))
        .await
        .expect("the echo stalled")
        .expect("read the echo");
    assert_eq!(echoed, b"ping through the container");

    // fetch(), every body byte checked.
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
        "fetch through the container: {outcome:?}\n{}",
        container_log(&guard.container)
    );

    // HTTPS with no CA store in the image: the compiled-in roots are used (and said so), so
    // an unknown CA is an unknown issuer, not "no trust anchors".
    let stream = TcpStream::connect(binding)
        .await
        .expect("connect to the binding");
    let request = format!(
        "GET https://{tls_origin}/ HTTP/1.1\r\nHost: {tls_origin}\r\nConnection: close\r\n\r\n"
    );
    let response = tokio::time::timeout(STALL, http1::exchange(stream, request.as_bytes()))
        .await
        .expect("the HTTPS fetch stalled")
        .expect("the HTTPS fetch");
    assert_eq!(
        response.proxy_error(),
        Some("tls_certificate_error"),
        "{response:?}"
    );
    let proxy_status = response.header("proxy-status").unwrap_or_default();
    assert!(proxy_status.contains("unknown issuer"), "{proxy_status}");
    let log = container_log(&guard.container);
    assert!(
        log.contains("config=/etc/underpass/connector.toml")
            && log.contains("token_from=secret file /run/secrets/underpass-token"),
        "the mounted config and token were not the ones used:\n{log}"
    );
    assert!(
        log.contains("web roots compiled into the connector"),
        "no word of the compiled-in roots:\n{log}"
    );

    // podman stop: SIGTERM (the image's STOPSIGNAL); the open stream holds the drain.
    let stop = tokio::task::spawn_blocking({
        let container = guard.container.clone();
        move || podman(&["stop", "--time", "300", &container])
    });
    wait_ready_status(admin_addr, 503, &guard.container).await;
    let (status, body) = admin::get_json(admin_addr, "/ready")
        .await
        .expect("GET /ready");
    assert_eq!(
        (status, &body["draining"]),
        (503, &serde_json::json!(true)),
        "{body}"
    );
    tunnel
        .write_all(b"still open while draining")
        .await
        .expect("write");
    let mut echoed = vec![0u8; b"still open while draining".len()];
    tokio::time::timeout(STALL, tunnel.read_exact(&mut echoed))
        .await
        .expect("the echo stalled while draining")
        .expect("read the echo while draining");
    assert_eq!(echoed, b"still open while draining");
    tunnel.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(STALL, tunnel.read_to_end(&mut rest))
        .await
        .expect("the echo's EOF stalled")
        .expect("read to EOF");
    let stopped = tokio::time::timeout(LIMIT, stop)
        .await
        .expect("podman stop hangs")
        .expect("the stop thread");
    assert!(stopped.status.success(), "podman stop: {stopped:?}");
    let exit_code = podman_ok(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &guard.container,
    ]);
    let log = container_log(&guard.container);
    assert_eq!(exit_code, "0", "{log}");
    assert!(log.contains("connector stopped forced=0"), "{log}");
    drop(edge);
    drop(guard);
}
