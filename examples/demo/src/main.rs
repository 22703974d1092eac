//! `underpass-demo`: the whole system on one machine, for a first try (`scripts/demo`).
//!
//! Starts, all on loopback: a private HTTP API, the same API over HTTPS and a toy Redis-protocol
//! TCP service (in-process, on 127.20.0.x addresses that play a private subnet); an edge with a
//! VPC Network binding and two VPC Service bindings; a connector holding a freshly generated
//! tunnel token. It checks each binding once, prints commands to paste, writes a workerd config
//! that runs the Workers examples of `examples/` against it, and stays up until Ctrl-C.

mod check;
mod services;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use underpass_connector::{Connector, ConnectorConfig};
use underpass_e2e::workerd::capnp::{self, WorkerSpec};
use underpass_e2e::{repo_root, TestPki};
use underpass_edge::config::{
    BindingConfig, CertVerificationMode, EdgeConfig, NetworkConfig, ServiceConfig, ServiceHost,
    ServiceKind, ServiceTls,
};
use underpass_edge::tunnels::TunnelStore;
use underpass_edge::Edge;

use services::Services;

/// The tunnel the demo creates.
const TUNNEL: &str = "demo";
/// `env.API_TOKEN` of the POST example, and the bearer token the demo API expects.
const API_TOKEN: &str = "demo-api-token";
/// The private HTTP API.
const HTTP_API: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 20, 0, 10)), 8080);
/// The private HTTPS API (the examples' `https://127.20.0.50/api/data`).
const HTTPS_API: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 20, 0, 50)), 8443);
/// The private TCP service (the examples' `127.20.0.50:6379`).
const TCP_SERVICE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 20, 0, 50)), 6379);
/// The routes the connector announces.
const SUBNET: &str = "127.20.0.0/24";

/// The Workers examples, with the binding each one uses and its offset from `--port-base + 10`.
const EXAMPLES: [(&str, Bind); 5] = [
    ("get-users.js", Bind::Users),
    ("post-user.js", Bind::Users),
    ("fetch-https.js", Bind::Data),
    ("connect-redis-string.js", Bind::Network),
    ("connect-redis-object.js", Bind::Network),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bind {
    Network,
    Users,
    Data,
}

/// Runs an edge, a connector and private services on loopback, and prints commands to try.
#[derive(Debug, Parser)]
#[command(name = "underpass-demo", version)]
struct Args {
    /// First of the loopback ports used: the VPC Network binding listens on PORT, the VPC
    /// Service bindings on PORT+1 (HTTP API) and PORT+2 (HTTPS API); workerd examples on
    /// PORT+10 to PORT+14.
    #[arg(long, default_value_t = 8888, value_name = "PORT")]
    port_base: u16,
    /// Keep the edge state, CA and workerd config here instead of a temporary folder.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("underpass-demo: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("underpass-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ports = Ports::new(args.port_base)?;
    let (_temp, dir) = match &args.state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            (None, dir.clone())
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("underpass-demo-")
                .tempdir()
                .context("create a temporary folder")?;
            let path = temp.path().to_path_buf();
            (Some(temp), path)
        }
    };

    // The private services, with a CA of their own for the HTTPS one.
    let pki = TestPki::new("Underpass demo origin CA");
    let ca_file = dir.join("origin-ca.pem");
    std::fs::write(&ca_file, pki.ca_pem()).context("write the origin CA")?;
    let tls = pki.server_config(&[&HTTPS_API.ip().to_string()]);
    let services = Services::start(HTTP_API, HTTPS_API, tls, TCP_SERVICE, API_TOKEN).await?;

    // The edge, its tunnel, and the connector holding the tunnel's token.
    // As an operator would: create the tunnel, start the edge, hand the token to the connector.
    let config = edge_config(&dir, &ports, &ca_file);
    underpass_edge::state::ensure_dir(&config.state_dir).context("create the edge state")?;
    let store = TunnelStore::open(&config.state_dir).context("open the tunnel store")?;
    // A --state-dir kept from an earlier run already has the tunnel.
    if store.resolve(TUNNEL).is_none() {
        store.create(TUNNEL).context("create the demo tunnel")?;
    }
    drop(store);
    let edge = Edge::start(config)
        .await
        .context("start the edge (a binding port taken? try --port-base)")?;
    let token = edge
        .token(TUNNEL)
        .context("the edge does not know the demo tunnel")?;
    let connector_config = ConnectorConfig::builder(token.clone())
        .route_ports(SUBNET, "6379,8080,8443")
        .drain_timeout(Duration::from_secs(2))
        .build()
        .context("connector configuration")?;
    let connector = Connector::start(connector_config).context("start the connector")?;
    connector
        .wait_registered(Duration::from_secs(20))
        .await
        .context("the connector did not register with the edge")?;

    let checks = check::all(&ports).await;
    let workerd_config = write_workerd_config(&dir, &ports)?;
    print_banner(&dir, &ports, &token.encode(), &checks, &workerd_config);

    wait_for_signal().await;
    println!("\nStopping: connector, edge, services.");
    connector.shutdown().await.context("stop the connector")?;
    edge.shutdown().await;
    services.shutdown().await;
    println!("Stopped.");
    Ok(())
}

/// The loopback ports of the bindings and workerd sockets.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The VPC Network binding.
    pub network: SocketAddr,
    /// The VPC Service binding to the HTTP API.
    pub users: SocketAddr,
    /// The VPC Service binding to the HTTPS API.
    pub data: SocketAddr,
    workerd_base: u16,
}

impl Ports {
    fn new(base: u16) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1024..=65_000).contains(&base),
            "--port-base must be between 1024 and 65000"
        );
        let at = |offset: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base + offset);
        Ok(Ports {
            network: at(0),
            users: at(1),
            data: at(2),
            workerd_base: base + 10,
        })
    }

    fn binding(&self, bind: Bind) -> SocketAddr {
        match bind {
            Bind::Network => self.network,
            Bind::Users => self.users,
            Bind::Data => self.data,
        }
    }

    fn workerd(&self, index: usize) -> SocketAddr {
        // At most five examples: the offset fits.
        let offset = u16::try_from(index).unwrap_or(0);
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.workerd_base + offset)
    }
}

fn edge_config(dir: &Path, ports: &Ports, ca_file: &Path) -> EdgeConfig {
    let mut config = EdgeConfig::new(dir.join("edge-state"));
    config.listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    config.networks.push(NetworkConfig {
        name: "private-net".to_owned(),
        tunnel: TUNNEL.to_owned(),
    });
    let http_service =
        |name: &str, addr: SocketAddr, https: bool, ca: Option<PathBuf>| ServiceConfig {
            name: name.to_owned(),
            kind: ServiceKind::Http,
            tunnel: TUNNEL.to_owned(),
            host: ServiceHost::ip(addr.ip()),
            tcp_port: None,
            http_port: (!https).then_some(addr.port()),
            https_port: https.then_some(addr.port()),
            tls: ServiceTls {
                cert_verification_mode: CertVerificationMode::VerifyFull,
                ca_file: ca,
            },
        };
    config
        .services
        .push(http_service("users-api", HTTP_API, false, None));
    config.services.push(http_service(
        "data-api",
        HTTPS_API,
        true,
        Some(ca_file.to_path_buf()),
    ));
    config.bindings = vec![
        BindingConfig::network("MY_NETWORK", ports.network, "private-net"),
        BindingConfig::service("MY_SERVICE", ports.users, "users-api"),
        BindingConfig::service("MY_HTTPS_SERVICE", ports.data, "data-api"),
    ];
    config
}

/// Writes the examples and a workerd config serving each on its own port; returns its path.
fn write_workerd_config(dir: &Path, ports: &Ports) -> anyhow::Result<PathBuf> {
    let workerd_dir = dir.join("workerd");
    std::fs::create_dir_all(&workerd_dir).context("create the workerd folder")?;
    let examples = examples_dir();
    let mut workers = Vec::new();
    for (index, (file, bind)) in EXAMPLES.iter().enumerate() {
        let script = std::fs::read_to_string(examples.join(file))
            .with_context(|| format!("read examples/{file}"))?;
        std::fs::write(workerd_dir.join(file), script).with_context(|| format!("copy {file}"))?;
        let name = file.trim_end_matches(".js");
        let mut worker = WorkerSpec::new(name, file, &ports.workerd(index).to_string())
            .proxy("MY_BINDING", ports.binding(*bind));
        if *file == "post-user.js" {
            worker = worker.text("API_TOKEN", API_TOKEN);
        }
        workers.push(worker);
    }
    let config = workerd_dir.join("config.capnp");
    std::fs::write(&config, capnp::render(&workers)).context("write the workerd config")?;
    Ok(config)
}

fn examples_dir() -> PathBuf {
    repo_root().join("examples")
}

/// How to run workerd here: a binary found locally, else `npx` with the version `scripts/test`
/// pins, else `None`.
fn workerd_command() -> Option<String> {
    if let Some(path) = std::env::var_os("UNDERPASS_WORKERD") {
        return Some(PathBuf::from(path).display().to_string());
    }
    let cached = repo_root().join(".cache/workerd/node_modules/.bin/workerd");
    if cached.is_file() {
        return Some(cached.display().to_string());
    }
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
            .unwrap_or(false)
    };
    if on_path("workerd") {
        return Some("workerd".to_owned());
    }
    if on_path("npx") {
        let version = include_str!("../../../scripts/test")
            .lines()
            .find_map(|line| line.strip_prefix("WORKERD_VERSION="))
            .map(|v| v.trim_matches('"').to_owned());
        return Some(match version {
            Some(version) => format!("npx --yes workerd@{version}"),
            None => "npx --yes workerd".to_owned(),
        });
    }
    None
}

fn print_banner(
    dir: &Path,
    ports: &Ports,
    token: &str,
    checks: &[check::Outcome],
    workerd_config: &Path,
) {
    let network = ports.network;
    let users = ports.users;
    let data = ports.data;
    let tcp_ip = TCP_SERVICE.ip();
    let tcp_port = TCP_SERVICE.port();
    println!(
        "\nUnderpass demo: edge + connector + private services, all on loopback.\n\
         State: {dir}\n\
         Tunnel token (what `underpass run --token-file FILE` or UNDERPASS_TOKEN takes):\n  {token}\n\n\
         Private services (127.20.0.0/24 plays a private subnet):\n  \
           http://{HTTP_API}   JSON API: GET /users, POST /users (Bearer {API_TOKEN})\n  \
           https://{HTTPS_API}  GET /api/data over TLS (certificate from the demo CA)\n  \
           {TCP_SERVICE}          toy Redis protocol: PING -> +PONG\n\n\
         Bindings (HTTP/1.1 forward proxies served by the edge):\n  \
           {network}  VPC Network  \"private-net\": the URL or CONNECT address decides\n  \
           {users}  VPC Service  \"users-api\" -> {HTTP_API} (http)\n  \
           {data}  VPC Service  \"data-api\"  -> {HTTPS_API} (https, verify_full)\n",
        dir = dir.display(),
    );
    println!("Self-check through the tunnel:");
    for outcome in checks {
        let mark = if outcome.ok { "ok  " } else { "FAIL" };
        println!("  [{mark}] {}: {}", outcome.what, outcome.detail);
    }
    println!(
        "\nTry it from another terminal:\n\n  \
         # fetch() through the VPC Network binding: the URL's host and port are the destination\n  \
         curl --proxy http://{network} http://{HTTP_API}/users\n\n  \
         # fetch() through the VPC Service binding: the URL's host only becomes the Host header\n  \
         curl --proxy http://{users} http://internal-api.company.local/users\n\n  \
         # the POST example, by hand\n  \
         curl --proxy http://{users} -H 'Authorization: Bearer {API_TOKEN}' \\\n       \
         -H 'Content-Type: application/json' -d '{{\"name\":\"John Doe\",\"email\":\"john@example.com\"}}' \\\n       \
         http://internal-api.company.local/users\n\n  \
         # an HTTPS origin: the edge's service only offers https, the connector speaks TLS\n  \
         curl --proxy http://{data} http://127.20.0.50/api/data\n\n  \
         # connect(): a CONNECT tunnel through the VPC Network binding, then Redis PING\n  \
         printf 'PING\\r\\n' | ncat --proxy {network} --proxy-type http {tcp_ip} {tcp_port}\n  \
         printf 'PING\\r\\nQUIT\\r\\n' | curl -s -p --proxy http://{network} telnet://{TCP_SERVICE}\n\n  \
         # a destination outside the connector's routes: refused, and the header says why\n  \
         curl -i --proxy http://{network} http://127.20.1.1:8080/users\n"
    );
    let examples: Vec<String> = EXAMPLES
        .iter()
        .enumerate()
        .map(|(index, (file, _))| format!("  curl http://{}/    # {file}", ports.workerd(index)))
        .collect();
    match workerd_command() {
        Some(workerd) => println!(
            "The Workers examples (examples/*.js) in the real Workers runtime:\n\n  \
             {workerd} serve {config}\n\nthen, from a third terminal:\n\n{}\n",
            examples.join("\n"),
            config = workerd_config.display()
        ),
        None => println!(
            "The Workers examples need workerd (npm package `workerd`): install Node.js and npm, \
             or run scripts/test once, then:\n  workerd serve {}\n",
            workerd_config.display()
        ),
    }
    println!("Ctrl-C stops everything.");
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
