//! Starting what is measured: the origins (iperf3, nginx, the echo server), Underpass (edge +
//! connector) and rathole with its TLS transport, each on free ports of 127.0.0.1, each waited
//! for by polling until it answers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client;
use crate::procs::{
    free_tcp_port, free_udp_port, local, run_captured, wait_listening, Proc, TunnelPids, POLL,
};

/// How long anything may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Each binding's `max_connections`: above the idle-stream and concurrent-connection workloads
/// (10,000 and 2,000), so the edge's default of 1,024 does not cap what is measured.
const MAX_CONNECTIONS: usize = 30_000;

/// Log filter of the tunnel processes: warnings only, so logging costs no CPU, unless
/// `UNDERPASS_BENCH_RUST_LOG` asks for more (for debugging the harness).
fn log_filter() -> String {
    std::env::var("UNDERPASS_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".to_owned())
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `underpass-edge`.
    pub edge: PathBuf,
    /// `underpass` (the connector).
    pub connector: PathBuf,
    /// This harness (for the echo server).
    pub harness: PathBuf,
    /// rathole 0.5.0.
    pub rathole: PathBuf,
    /// nginx.
    pub nginx: PathBuf,
}

/// The origin servers.
pub struct Origins {
    /// iperf3 server port.
    pub iperf: u16,
    /// nginx port (serves `/small.html`).
    pub nginx: u16,
    /// Echo server port.
    pub echo: u16,
    /// The processes (iperf3, nginx, echo), held so they stop when `Origins` is dropped.
    _procs: Vec<Proc>,
}

/// The path nginx serves the small file at.
pub const SMALL_FILE: &str = "/small.html";

impl Origins {
    /// Start iperf3, nginx and the echo server; return once each listens (and nginx serves).
    pub fn start(tools: &Tools, work: &Path) -> Result<Origins> {
        let iperf = free_tcp_port()?;
        let nginx = free_tcp_port()?;
        let echo = free_tcp_port()?;

        let mut iperf_proc = Proc::spawn(
            "iperf3-server",
            Path::new("iperf3"),
            &args(&["-s", "-B", "127.0.0.1", "-p", &iperf.to_string()]),
            &[],
            work,
        )?;
        wait_listening(&mut iperf_proc, iperf, READY_TIMEOUT)?;

        let mut nginx_proc = start_nginx(tools, work, nginx)?;
        wait_listening(&mut nginx_proc, nginx, READY_TIMEOUT)?;
        let status = client::http_get_status(local(nginx), None, SMALL_FILE)?;
        if status != 200 {
            bail!("nginx answers {status} for {SMALL_FILE}");
        }

        let mut echo_proc = Proc::spawn(
            "echo",
            &tools.harness,
            &args(&["echo", "--listen", &local(echo).to_string()]),
            &[],
            work,
        )?;
        wait_listening(&mut echo_proc, echo, READY_TIMEOUT)?;
        client::ping(local(echo))?;

        Ok(Origins {
            iperf,
            nginx,
            echo,
            _procs: vec![iperf_proc, nginx_proc, echo_proc],
        })
    }
}

fn start_nginx(tools: &Tools, work: &Path, port: u16) -> Result<Proc> {
    let root = work.join("nginx");
    let www = root.join("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("small.html"), small_page())?;
    let dir = root.display();
    // One process (no master), keep-alive without a request cap so wrk's connections stay up
    // for the whole measurement on every path, no access log. `sendfile off`: the head and
    // the small body leave in one write (with sendfile they are two segments, and a relay
    // that writes them separately to a socket without TCP_NODELAY — rathole 0.5.0 sets it
    // on neither its visitor nor its origin sockets — stalls on Nagle + delayed ACK).
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\nworker_rlimit_nofile 65536;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  default_type text/html;\n\
         \x20 sendfile off;\n  tcp_nodelay on;\n\
         \x20 keepalive_timeout 120s;\n  keepalive_requests 100000000;\n\
         \x20 client_body_temp_path {dir}/tmp-body;\n  proxy_temp_path {dir}/tmp-proxy;\n\
         \x20 fastcgi_temp_path {dir}/tmp-fastcgi;\n  uwsgi_temp_path {dir}/tmp-uwsgi;\n\
         \x20 scgi_temp_path {dir}/tmp-scgi;\n\
         \x20 server {{\n    listen 127.0.0.1:{port};\n    root {dir}/www;\n  }}\n}}\n"
    );
    let conf_path = root.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    Proc::spawn(
        "nginx",
        &tools.nginx,
        &args(&[
            "-p",
            &root.display().to_string(),
            "-c",
            &conf_path.display().to_string(),
            "-e",
            &root.join("error.log").display().to_string(),
        ]),
        &[],
        work,
    )
}

/// A 615-byte page, the size of nginx's default index page.
fn small_page() -> String {
    let head = "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to the bench!</title>\n</head>\n\
                <body>\n<h1>Welcome to the bench!</h1>\n<p>";
    let tail = "</p>\n</body>\n</html>\n";
    let filler = 615 - head.len() - tail.len();
    let text: String = "This page is served by nginx to measure small keep-alive requests. "
        .chars()
        .cycle()
        .take(filler)
        .collect();
    format!("{head}{text}{tail}")
}

/// Ports of Underpass's bindings.
#[derive(Debug, Clone, Copy)]
pub struct UnderpassPorts {
    /// TCP binding to iperf3.
    pub iperf: u16,
    /// TCP binding to nginx.
    pub nginx: u16,
    /// TCP binding to the echo server.
    pub echo: u16,
    /// HTTP proxy binding of the VPC Network (`fetch()`, `connect()`).
    pub proxy: u16,
}

/// The configuration of an Underpass edge + connector pair, written once, started as often as
/// needed.
pub struct UnderpassSetup {
    dir: PathBuf,
    /// The bindings.
    pub ports: UnderpassPorts,
}

impl UnderpassSetup {
    /// Write the edge config, create the tunnel, write the connector config, in `work/name`.
    /// `protocol` is the connector's `protocol` key; `None` keeps its default (`auto`).
    pub fn prepare(
        tools: &Tools,
        work: &Path,
        origins: &Origins,
        name: &str,
        protocol: Option<&str>,
    ) -> Result<UnderpassSetup> {
        let dir = work.join(name);
        fs::create_dir_all(&dir)?;
        let quic = free_udp_port()?;
        let ports = UnderpassPorts {
            iperf: free_tcp_port()?,
            nginx: free_tcp_port()?,
            echo: free_tcp_port()?,
            proxy: free_tcp_port()?,
        };
        let mut edge = format!(
            "state_dir = \"state\"\nlisten = \"127.0.0.1:{quic}\"\n\n\
             [[network]]\nname = \"loopback\"\ntunnel = \"bench\"\n\n\
             [[binding]]\nname = \"PROXY\"\nlisten = \"127.0.0.1:{}\"\nnetwork = \"loopback\"\nmax_connections = {MAX_CONNECTIONS}\n",
            ports.proxy
        );
        for (name, origin, binding) in [
            ("iperf", origins.iperf, ports.iperf),
            ("nginx", origins.nginx, ports.nginx),
            ("echo", origins.echo, ports.echo),
        ] {
            edge.push_str(&format!(
                "\n[[service]]\nname = \"{name}\"\ntype = \"tcp\"\ntunnel = \"bench\"\n\
                 host = {{ ipv4 = \"127.0.0.1\" }}\ntcp_port = {origin}\n\n\
                 [[binding]]\nname = \"{name}_tcp\"\nlisten = \"127.0.0.1:{binding}\"\n\
                 service = \"{name}\"\nmode = \"tcp\"\nmax_connections = {MAX_CONNECTIONS}\n"
            ));
        }
        let edge_conf = dir.join("edge.toml");
        fs::write(&edge_conf, edge)?;
        let token = run_captured(
            "underpass-edge tunnel create",
            Command::new(&tools.edge)
                .arg("--config")
                .arg(&edge_conf)
                .args(["tunnel", "create", "bench"])
                .env("RUST_LOG", "warn"),
            READY_TIMEOUT,
        )?;
        let token = token.trim();
        if !token.starts_with("upt1_") {
            bail!("`tunnel create` printed no token: {token:?}");
        }
        fs::write(dir.join("token"), format!("{token}\n"))?;
        // The host's resolv.conf names a non-loopback server: point DNS at loopback (nothing
        // here resolves names anyway).
        // Parallel connections: the connector's default unless the run asks for another
        // count (`scripts/bench --connections N`).
        let connections = std::env::var("UNDERPASS_BENCH_CONNECTIONS")
            .ok()
            .filter(|n| !n.is_empty())
            .map(|n| format!("connections = {n}\n"))
            .unwrap_or_default();
        let protocol = protocol
            .map(|p| format!("protocol = \"{p}\"\n"))
            .unwrap_or_default();
        fs::write(
            dir.join("connector.toml"),
            format!(
                "token_file = \"token\"\n{connections}{protocol}\n[[route]]\ndestination = \"127.0.0.0/8\"\n\n\
                 [dns]\nresolvers = [\"127.0.0.1:1\"]\n\n[limits]\nmax_streams = 30000\n"
            ),
        )?;
        Ok(UnderpassSetup { dir, ports })
    }

    /// Start the edge and the connector; return once `connect()` through the proxy binding and
    /// every TCP binding reach their origin.
    pub fn start(&self, tools: &Tools, origins: &Origins) -> Result<Underpass> {
        let mut edge = Proc::spawn(
            "underpass-edge",
            &tools.edge,
            &args(&[
                "--config",
                &self.dir.join("edge.toml").display().to_string(),
                "serve",
            ]),
            &[("RUST_LOG", &log_filter())],
            &self.dir,
        )?;
        for port in [
            self.ports.proxy,
            self.ports.iperf,
            self.ports.nginx,
            self.ports.echo,
        ] {
            wait_listening(&mut edge, port, READY_TIMEOUT)?;
        }
        let mut connector = Proc::spawn(
            "underpass-connector",
            &tools.connector,
            &args(&[
                "run",
                "--config",
                &self.dir.join("connector.toml").display().to_string(),
            ]),
            &[("RUST_LOG", &log_filter())],
            &self.dir,
        )?;
        // Registered once CONNECT answers 200 instead of 503 destination_unavailable.
        let echo = local(origins.echo);
        poll_until("Underpass connector registration", || {
            edge.check_alive()?;
            connector.check_alive()?;
            Ok(client::ping_via_connect(local(self.ports.proxy), echo))
        })?;
        client::ping(local(self.ports.echo)).context("ping through the echo TCP binding")?;
        let status = client::http_get_status(local(self.ports.nginx), None, SMALL_FILE)
            .context("GET through the nginx TCP binding")?;
        if status != 200 {
            bail!("GET through the nginx TCP binding: {status}");
        }
        let status =
            client::http_get_status(local(self.ports.proxy), Some(origins.nginx), SMALL_FILE)
                .context("fetch() through the proxy binding")?;
        if status != 200 {
            bail!("fetch() through the proxy binding: {status}");
        }
        Ok(Underpass { edge, connector })
    }
}

/// A running edge + connector.
pub struct Underpass {
    /// The edge.
    pub edge: Proc,
    /// The connector.
    pub connector: Proc,
}

impl Underpass {
    /// The process ids, for the CPU and memory figures.
    pub fn pids(&self) -> TunnelPids {
        TunnelPids {
            server: self.edge.pid(),
            client: self.connector.pid(),
        }
    }
}

/// Ports of rathole's server-side services (where visitors connect).
#[derive(Debug, Clone, Copy)]
pub struct RatholePorts {
    /// To iperf3.
    pub iperf: u16,
    /// To nginx.
    pub nginx: u16,
    /// To the echo server.
    pub echo: u16,
}

/// rathole server + client configuration with the TLS transport.
pub struct RatholeSetup {
    dir: PathBuf,
    control: u16,
    /// The visitor ports.
    pub ports: RatholePorts,
}

impl RatholeSetup {
    /// Generate a CA and a `localhost` certificate (ECDSA P-256, like Underpass's), the server's
    /// PKCS#12 identity, and both configs.
    pub fn prepare(work: &Path, origins: &Origins) -> Result<RatholeSetup> {
        let dir = work.join("rathole");
        fs::create_dir_all(&dir)?;
        make_certificates(&dir)?;
        let control = free_tcp_port()?;
        let ports = RatholePorts {
            iperf: free_tcp_port()?,
            nginx: free_tcp_port()?,
            echo: free_tcp_port()?,
        };
        let d = dir.display();
        let mut server = format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"bench\"\n\n\
             [server.transport]\ntype = \"tls\"\n[server.transport.tls]\n\
             pkcs12 = \"{d}/identity.pfx\"\npkcs12_password = \"bench\"\n"
        );
        let mut client = format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\ndefault_token = \"bench\"\n\n\
             [client.transport]\ntype = \"tls\"\n[client.transport.tls]\n\
             trusted_root = \"{d}/ca.pem\"\nhostname = \"localhost\"\n"
        );
        for (name, visitor, origin) in [
            ("iperf", ports.iperf, origins.iperf),
            ("nginx", ports.nginx, origins.nginx),
            ("echo", ports.echo, origins.echo),
        ] {
            server.push_str(&format!(
                "\n[server.services.{name}]\nbind_addr = \"127.0.0.1:{visitor}\"\n"
            ));
            client.push_str(&format!(
                "\n[client.services.{name}]\nlocal_addr = \"127.0.0.1:{origin}\"\n"
            ));
        }
        fs::write(dir.join("server.toml"), server)?;
        fs::write(dir.join("client.toml"), client)?;
        Ok(RatholeSetup {
            dir,
            control,
            ports,
        })
    }

    /// Start server and client; return once every service answers through the tunnel.
    pub fn start(&self, tools: &Tools) -> Result<Rathole> {
        let mut server = Proc::spawn(
            "rathole-server",
            &tools.rathole,
            &args(&[
                "--server",
                &self.dir.join("server.toml").display().to_string(),
            ]),
            &[("RUST_LOG", &log_filter())],
            &self.dir,
        )?;
        wait_listening(&mut server, self.control, READY_TIMEOUT)?;
        let mut client = Proc::spawn(
            "rathole-client",
            &tools.rathole,
            &args(&[
                "--client",
                &self.dir.join("client.toml").display().to_string(),
            ]),
            &[("RUST_LOG", &log_filter())],
            &self.dir,
        )?;
        // The server opens a service's port once the client's control channel for it is up.
        for port in [self.ports.iperf, self.ports.nginx, self.ports.echo] {
            wait_listening(&mut server, port, READY_TIMEOUT)?;
        }
        poll_until("rathole data channel", || {
            server.check_alive()?;
            client.check_alive()?;
            Ok(client::ping(local(self.ports.echo)))
        })?;
        let status = client::http_get_status(local(self.ports.nginx), None, SMALL_FILE)?;
        if status != 200 {
            bail!("GET through rathole: {status}");
        }
        Ok(Rathole { server, client })
    }
}

/// A running rathole server + client.
pub struct Rathole {
    /// The server (the edge's counterpart).
    pub server: Proc,
    /// The client (the connector's counterpart).
    pub client: Proc,
}

fn make_certificates(dir: &Path) -> Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: Vec<Vec<&str>> = vec![
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/CN=underpass-bench CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "30",
            "-extfile",
            "server.ext",
        ],
        vec![
            "pkcs12",
            "-export",
            "-out",
            "identity.pfx",
            "-inkey",
            "server.key",
            "-in",
            "server.pem",
            "-certfile",
            "ca.pem",
            "-passout",
            "pass:bench",
        ],
    ];
    fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n",
    )?;
    for step in steps {
        run_captured(
            &format!("openssl {}", step[0]),
            Command::new("openssl").args(&step).current_dir(dir),
            Duration::from_secs(30),
        )?;
    }
    Ok(())
}

/// Retry `attempt` every [`POLL`] until its inner result is `Ok`, for at most
/// [`READY_TIMEOUT`]; an outer error (a process died) ends the wait at once.
fn poll_until(what: &str, mut attempt: impl FnMut() -> Result<Result<()>>) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match attempt()? {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                return Err(error.context(format!("{what}: not ready after {READY_TIMEOUT:?}")))
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Owned arguments from string slices.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
