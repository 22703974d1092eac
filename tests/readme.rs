//! The README's operator walkthrough works as printed: its commands, extracted from
//! `README.md` (the ```` ```sh ```` blocks between `<!-- walkthrough:start -->` and
//! `<!-- walkthrough:end -->`), run unchanged in `bash -e`, from a copy of the repository's
//! `examples/` in a temporary folder, as a new user would paste them.
//!
//! - Each `curl` prints what the `#>` lines after it promise (`…` stands for whatever varies).
//! - The last step stops everything the walkthrough started: no process of its process group is
//!   left when the shell exits.
//!
//! The walkthrough's build step (`cargo build --release` before the start marker, putting the
//! binaries on `PATH`) is replaced by the binaries of this build, put first on `PATH` the same
//! way: the ones the other end-to-end tests run (`cargo build` in the test's profile, a no-op
//! when they are fresh). The walkthrough uses the example configs' fixed loopback ports; they
//! must be free (not while `scripts/demo` runs).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use underpass_e2e::connector_process::connector_binary;
use underpass_e2e::edge_process::edge_binary;
use underpass_e2e::process::read_lossy;
use underpass_e2e::repo_root;

const START: &str = "<!-- walkthrough:start -->";
const END: &str = "<!-- walkthrough:end -->";
/// What a promised output line starts with.
const PROMISE: &str = "#>";
/// A whole walkthrough takes a few seconds; this only stops a hung one.
const DEADLINE: Duration = Duration::from_secs(120);

/// The fixed addresses of `examples/edge.toml`, `examples/connector.toml` and the walkthrough's
/// private services (TCP), and the edge's QUIC listener (UDP).
const TCP_PORTS: [&str; 8] = [
    "127.0.0.1:8888",
    "127.0.0.1:8889",
    "127.0.0.1:8890",
    "127.0.0.1:8891",
    "127.0.0.1:8892",
    "127.0.0.1:20241",
    "127.20.0.10:8080",
    "127.20.0.50:8443",
];
const UDP_PORT: &str = "127.0.0.1:7844";

/// Files the walkthrough writes into `examples/`: not copied from a checkout that has them.
const GENERATED: [&str; 5] = [
    "tunnel.token",
    "edge-state",
    "private",
    "edge.log",
    "connector.log",
];

/// One `curl` of the walkthrough and the output lines it promises.
#[derive(Debug)]
struct Curl {
    command: String,
    promises: Vec<String>,
}

/// The shell text of the walkthrough: its `sh` blocks, in order.
fn walkthrough(readme: &str) -> String {
    let start = readme
        .find(START)
        .expect("README.md has the walkthrough start marker");
    let end = readme
        .find(END)
        .expect("README.md has the walkthrough end marker");
    assert!(start < end, "the start marker comes first");
    let section = &readme[start + START.len()..end];
    let mut script = String::new();
    let mut in_block = false;
    for line in section.lines() {
        match line.trim_end() {
            "```sh" if !in_block => in_block = true,
            "```" if in_block => in_block = false,
            _ if in_block => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(!in_block, "every block of the walkthrough is closed");
    assert!(!script.trim().is_empty(), "the walkthrough has commands");
    script
}

/// Every `curl` command line of `script` with the `#>` lines right after it.
fn curls(script: &str) -> Vec<Curl> {
    let mut curls: Vec<Curl> = Vec::new();
    let mut last_was_curl_or_promise = false;
    for line in script.lines() {
        let line = line.trim();
        if line.starts_with("curl ") {
            curls.push(Curl {
                command: line.to_owned(),
                promises: Vec::new(),
            });
            last_was_curl_or_promise = true;
        } else if let Some(promise) = line.strip_prefix(PROMISE) {
            assert!(
                last_was_curl_or_promise,
                "a {PROMISE} line follows a curl: {line}"
            );
            let curl = curls.last_mut().expect("checked above");
            curl.promises.push(promise.trim().to_owned());
        } else {
            last_was_curl_or_promise = false;
        }
    }
    curls
}

/// Whether `line` matches `promise`, where `…` in the promise matches any text.
fn matches(promise: &str, line: &str) -> bool {
    let mut parts = promise.split('…');
    let first = parts.next().unwrap_or_default(); // split yields at least one part
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (index, part) in parts.iter().enumerate() {
        if index + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Copy `from` into `to` recursively, leaving out what a walkthrough run generated.
fn copy_examples(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name();
        if GENERATED.iter().any(|g| name == *g) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().expect("a file type").is_dir() {
            copy_examples(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

fn assert_ports_free() {
    for addr in TCP_PORTS {
        let addr: SocketAddr = addr.parse().expect("a literal address");
        if let Err(error) = TcpListener::bind(addr) {
            panic!(
                "the walkthrough needs TCP {addr} free, but it is not ({error}): stop what uses \
                 it (scripts/demo? an earlier walkthrough?)"
            );
        }
    }
    if let Err(error) = UdpSocket::bind(UDP_PORT) {
        panic!("the walkthrough needs UDP {UDP_PORT} free, but it is not ({error})");
    }
}

/// The walkthrough's shell, in a process group of its own so that whatever it leaves running
/// can be found and killed.
struct Shell {
    child: Child,
}

impl Shell {
    fn group(&self) -> Pid {
        // The shell leads its group (process_group(0)); a pid fits an i32 on Linux.
        Pid::from_raw(i32::try_from(self.child.id()).expect("a Linux pid"))
    }

    /// Wait for the shell to exit, at most `DEADLINE`.
    fn wait(&mut self) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < DEADLINE {
            if let Some(status) = self.child.try_wait().expect("wait for bash") {
                return Some(status);
            }
            // A timeout, not a synchronisation: the exit is what is waited for.
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The processes of the group still alive, as `pid command` lines.
    fn leftovers(&self) -> Vec<String> {
        let group = self.group().as_raw().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let pid = entry.ok()?.file_name().into_string().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
                let after = &stat[stat.rfind(')')? + 2..];
                let fields: Vec<&str> = after.split(' ').collect();
                let (state, pgrp) = (fields.first()?, fields.get(2)?);
                if *pgrp != group || *state == "Z" {
                    return None;
                }
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                Some(format!("{pid} {}", cmdline.trim()))
            })
            .collect()
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Whatever the outcome, nothing of the walkthrough outlives the test.
        match killpg(self.group(), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => eprintln!("cannot kill the walkthrough's processes: {error}"),
        }
        let _ = self.child.wait();
    }
}

/// The directory of `binary`, which must be named `name`.
fn bin_dir(binary: &Path, name: &str) -> PathBuf {
    assert_eq!(
        binary.file_name().and_then(|n| n.to_str()),
        Some(name),
        "{}",
        binary.display()
    );
    binary.parent().expect("a binary in a folder").to_path_buf()
}

#[test]
fn the_readme_walkthrough_works_as_printed() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let script = walkthrough(&readme);
    let curls = curls(&script);
    assert!(
        curls.len() >= 5 && curls.iter().all(|c| !c.promises.is_empty()),
        "every curl of the walkthrough promises its output: {curls:#?}"
    );
    // The build step the test stands in for: the same binaries, on PATH.
    let before = &readme[..readme.find(START).expect("checked")];
    let build = &before[before.rfind("## ").expect("the walkthrough has a heading")..];
    for expected in [
        "cargo build --release --locked -p underpass-edge -p underpass-connector",
        "export PATH=\"${CARGO_TARGET_DIR:-$PWD/target}/release:$PATH\"",
    ] {
        assert!(build.contains(expected), "the build step has {expected:?}");
    }
    for tool in ["bash", "curl", "python3", "openssl"] {
        assert!(
            underpass_e2e::process::find_program(tool).is_ok(),
            "the walkthrough needs {tool} (apt-get install {tool})"
        );
    }
    assert_ports_free();

    let edge_dir = bin_dir(&edge_binary(), "underpass-edge");
    let connector_dir = bin_dir(&connector_binary(), "underpass");
    let path = std::env::join_paths([edge_dir, connector_dir].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("a PATH");

    let root = tempfile::tempdir().expect("a temporary folder");
    copy_examples(&repo_root().join("examples"), &root.path().join("examples"));
    let outputs = tempfile::tempdir().expect("a temporary folder");
    // Only `curl` is wrapped: it runs as written, and its output is also kept, numbered, for
    // the checks below.
    let prelude = format!(
        "underpass_curl=0\n\
         curl() {{\n\
         \x20   underpass_curl=$((underpass_curl + 1))\n\
         \x20   printf '%s\\n' \"$*\" > '{dir}'/$underpass_curl.args\n\
         \x20   command curl \"$@\" | tee '{dir}'/$underpass_curl.out\n\
         \x20   return \"${{PIPESTATUS[0]}}\"\n\
         }}\n",
        dir = outputs.path().display()
    );
    std::fs::write(
        root.path().join("walkthrough.sh"),
        format!("{prelude}{script}"),
    )
    .expect("write the script");
    let stdout = root.path().join("stdout.txt");
    let stderr = root.path().join("stderr.txt");
    let mut command = Command::new("bash");
    command
        .args(["-e", "walkthrough.sh"])
        .current_dir(root.path())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"));
    // A user's shell: none of the variables the programs or curl read.
    for name in [
        "RUST_LOG",
        "UNDERPASS_TOKEN",
        "UNDERPASS_EDGE_CONFIG",
        "UNDERPASS_LOG_FORMAT",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CARGO_TARGET_DIR",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(name);
    }
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut shell = Shell {
        child: command.spawn().expect("run bash"),
    };
    let status = shell.wait();
    let examples = root.path().join("examples");
    let report = || {
        format!(
            "stdout:\n{}\nstderr:\n{}\nedge.log:\n{}\nconnector.log:\n{}",
            read_lossy(&stdout),
            read_lossy(&stderr),
            read_lossy(&examples.join("edge.log")),
            read_lossy(&examples.join("connector.log")),
        )
    };
    let Some(status) = status else {
        panic!(
            "the walkthrough did not finish within {DEADLINE:?}\n{}",
            report()
        );
    };
    let leftovers = shell.leftovers();
    assert!(
        status.success(),
        "the walkthrough failed: {status}\n{}",
        report()
    );

    for (index, curl) in curls.iter().enumerate() {
        let number = index + 1;
        let args = read_lossy(&outputs.path().join(format!("{number}.args")));
        assert_eq!(
            format!("curl {}", args.trim_end()),
            curl.command.replace(['\'', '"'], ""),
            "curl #{number} ran\n{}",
            report()
        );
        let output = read_lossy(&outputs.path().join(format!("{number}.out")));
        let lines: Vec<&str> = output.lines().map(|l| l.trim_end_matches('\r')).collect();
        for promise in &curl.promises {
            assert!(
                lines.iter().any(|line| matches(promise, line)),
                "`{}` printed\n{output}\nwithout the promised line\n{promise}\n{}",
                curl.command,
                report()
            );
        }
    }
    assert!(
        !outputs
            .path()
            .join(format!("{}.args", curls.len() + 1))
            .exists(),
        "no curl ran that the test did not see"
    );

    assert!(
        leftovers.is_empty(),
        "the stop step left processes running:\n{}\n{}",
        leftovers.join("\n"),
        report()
    );
    // ... and the clean-up removed what the walkthrough wrote.
    for generated in GENERATED {
        assert!(
            !examples.join(generated).exists(),
            "examples/{generated} is left after the walkthrough"
        );
    }
}

#[test]
fn promises_match_with_ellipses() {
    assert!(matches("abc", "abc"));
    assert!(!matches("abc", "abcd"));
    assert!(matches(r#"{"id":"…","n":…}"#, r#"{"id":"0123","n":2}"#));
    assert!(!matches(r#"{"id":"…","n":…}"#, r#"{"id":"0123"}"#));
    assert!(matches("…", "anything"));
    assert!(matches("a…b…c", "aXbYc"));
    assert!(!matches("a…b…c", "aXcYb"));
}
