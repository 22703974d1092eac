//! `underpass-edge vpc …`: the directory API (`docs/directory-api.md`) from the command
//! line, shaped like wrangler's `vpc` commands. It asks a running edge's admin listener over
//! HTTP/1.1 (hyper, one connection per request, 30 s each; plain or TLS 1.3) and needs no
//! config file.
//!
//! Only what a command is for goes to stdout: a table (or the API's `result` as JSON with
//! `--json`), a token alone (`TOKEN=$(underpass-edge vpc tunnel create prod)`), the workerd
//! stanza of a binding. Hints go to stderr. The API token is sent, never printed: its `Debug`
//! is `***`, `--help` hides its environment value, and no message carries it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgGroup, Args, Subcommand};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use underpass_transport::tls::{self, EdgeVerification};

use crate::api_client::{self, Target};

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a page of 1000 objects is well under 1 MiB).
const MAX_ANSWER: usize = 16 << 20;
/// Objects asked for per page when a command lists everything (the API's maximum).
const PER_PAGE: usize = 1000;

/// What `vpc --help` prints after the options (the man page has it too).
pub const AFTER_HELP: &str = "\
Environment:
  UNDERPASS_API        the directory API, when --api is not given (http://HOST:PORT of
                       the edge's [admin] listen; https:// when it has tls_cert)
  UNDERPASS_API_CA     the CA bundle that verifies an https:// API, when --api-ca is
                       not given
  UNDERPASS_API_TOKEN  the API token, when --api-token is not given; prefer it to the
                       flag, which other users see in the process list
  UNDERPASS_ACCOUNT    the account, when --account is not given

Exit status:
  0   success
  64  a bad command line, a missing --api, --api-token or --account, or a request the
      API refused as invalid (400)
  1   any other failure (no answer from the API, a token or role refused, no such
      object, a name taken or an object still in use, ...)";

/// Where the API is and who asks: the options every `vpc` command takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Directory API options")]
pub struct ApiArgs {
    /// The directory API: `http://HOST:PORT` of the edge's `[admin] listen`, optionally with a
    /// path prefix; `https://` when the listener has `tls_cert` (the certificate is verified,
    /// with --api-ca or the system's roots).
    #[arg(
        long,
        global = true,
        env = "UNDERPASS_API",
        value_name = "URL",
        value_parser = ApiUrl::parse
    )]
    api: Option<ApiUrl>,
    /// The CA bundle (PEM) that verifies an `https://` API's certificate, instead of the
    /// system's root certificates.
    #[arg(long, global = true, env = "UNDERPASS_API_CA", value_name = "FILE")]
    api_ca: Option<PathBuf>,
    /// The API token (`upa1_…`). Prefer UNDERPASS_API_TOKEN: other users see a command line
    /// in the process list.
    #[arg(
        long,
        global = true,
        env = "UNDERPASS_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    api_token: Option<ApiToken>,
    /// The account (its name or id) whose objects the command works on.
    #[arg(long, global = true, env = "UNDERPASS_ACCOUNT", value_name = "NAME")]
    account: Option<String>,
    /// Print the API's `result` as pretty JSON instead of a table (a list: every page, as one
    /// array).
    #[arg(long, global = true)]
    json: bool,
}

/// A `vpc` subcommand.
#[derive(Debug, Subcommand)]
pub enum VpcCommand {
    /// VPC Services: one host (IP addresses or a hostname) behind a tunnel.
    Service {
        /// What to do with services.
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// VPC Networks: a tunnel's private network, or every tunnel of the account.
    Network {
        /// What to do with networks.
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Bindings: the listeners Workers reach services and networks through.
    Binding {
        /// What to do with bindings.
        #[command(subcommand)]
        command: BindingCommand,
    },
    /// The account's tunnels, which connectors register on.
    Tunnel {
        /// What to do with tunnels.
        #[command(subcommand)]
        command: TunnelCommand,
    },
    /// The account's API tokens (admin role).
    Token {
        /// What to do with API tokens.
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// A `vpc service` subcommand.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a VPC Service and show it.
    Create(ServiceArgs),
    /// List the account's VPC Services.
    List,
    /// Show one VPC Service.
    Get {
        /// The service's id (`vpc service list` shows it).
        id: String,
    },
    /// Replace a VPC Service (a full PUT): every option `create` needs, again; what is left
    /// out takes its default.
    Update {
        /// The service's id.
        id: String,
        /// The service as it is to be.
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Delete a VPC Service (refused while a binding serves it).
    Delete {
        /// The service's id.
        id: String,
    },
}

/// A VPC Service as `service create` and `service update` write it.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("host").required(true).multiple(true).args(["ipv4", "ipv6", "hostname"])
))]
pub struct ServiceArgs {
    /// Its name, unique in the account (A-Z a-z 0-9 _ . -).
    name: String,
    /// `http` (fetch(), on http_port and https_port) or `tcp` (connect(), on tcp_port).
    #[arg(long = "type", value_name = "http|tcp", value_parser = ["http", "tcp"])]
    kind: String,
    /// The tunnel whose connectors reach the host (`vpc tunnel list` shows ids).
    #[arg(long, value_name = "ID")]
    tunnel_id: String,
    /// The host's IPv4 address. With --ipv6 too: dual stack (the connector dials IPv4).
    #[arg(long, value_name = "ADDRESS")]
    ipv4: Option<String>,
    /// The host's IPv6 address.
    #[arg(long, value_name = "ADDRESS")]
    ipv6: Option<String>,
    /// The host's name, resolved by the connector inside the private network.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["ipv4", "ipv6"])]
    hostname: Option<String>,
    /// DNS servers for --hostname inside the private network, comma-separated IP addresses
    /// (port 53; at most 8). Default: the connector's own resolver.
    // Not `requires = "hostname"`: clap waives a requirement that conflicts with an argument
    // given, and --hostname conflicts with --ipv4; the "host" group asks for a host anyway.
    #[arg(
        long,
        value_name = "IP,...",
        value_delimiter = ',',
        conflicts_with_all = ["ipv4", "ipv6"]
    )]
    resolver_ips: Vec<String>,
    /// Plain HTTP port of an http service (default 80).
    #[arg(long, value_name = "PORT")]
    http_port: Option<u16>,
    /// HTTPS port of an http service (default 443).
    #[arg(long, value_name = "PORT")]
    https_port: Option<u16>,
    /// The port of a tcp service (required for --type tcp).
    #[arg(long, value_name = "PORT")]
    tcp_port: Option<u16>,
    /// What a tcp service speaks, a hint (like postgresql).
    #[arg(long, value_name = "PROTOCOL")]
    app_protocol: Option<String>,
    /// How the connector checks an HTTPS origin's certificate: chain and name (default),
    /// chain only, or not at all.
    #[arg(
        long,
        value_name = "MODE",
        value_parser = ["verify_full", "verify_ca", "disabled"]
    )]
    cert_verification_mode: Option<String>,
}

impl ServiceArgs {
    /// The public JSON body: only what was given, the API fills in the defaults.
    fn body(&self) -> Value {
        let host = match &self.hostname {
            Some(hostname) => {
                let mut resolver = json!({ "tunnel_id": self.tunnel_id });
                if !self.resolver_ips.is_empty() {
                    resolver["resolver_ips"] = json!(self.resolver_ips);
                }
                json!({ "hostname": hostname, "resolver_network": resolver })
            }
            None => {
                let mut host = json!({ "network": { "tunnel_id": self.tunnel_id } });
                if let Some(ipv4) = &self.ipv4 {
                    host["ipv4"] = json!(ipv4);
                }
                if let Some(ipv6) = &self.ipv6 {
                    host["ipv6"] = json!(ipv6);
                }
                host
            }
        };
        let mut body = json!({ "name": self.name, "type": self.kind, "host": host });
        for (field, port) in [
            ("http_port", self.http_port),
            ("https_port", self.https_port),
            ("tcp_port", self.tcp_port),
        ] {
            if let Some(port) = port {
                body[field] = json!(port);
            }
        }
        if let Some(protocol) = &self.app_protocol {
            body["app_protocol"] = json!(protocol);
        }
        if let Some(mode) = &self.cert_verification_mode {
            body["tls_settings"] = json!({ "cert_verification_mode": mode });
        }
        body
    }
}

/// A `vpc network` subcommand.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a VPC Network and show it.
    Create {
        /// Its name, unique in the account (A-Z a-z 0-9 _ . -).
        name: String,
        /// The tunnel whose network it is. Without: it spans every tunnel of the account, each
        /// destination going to the tunnel that announces the most specific route.
        #[arg(long, value_name = "ID")]
        tunnel_id: Option<String>,
    },
    /// List the account's VPC Networks.
    List,
    /// Show one VPC Network.
    Get {
        /// The network's id (`vpc network list` shows it).
        id: String,
    },
    /// Delete a VPC Network (refused while a binding serves it).
    Delete {
        /// The network's id.
        id: String,
    },
}

/// A `vpc binding` subcommand.
#[derive(Debug, Subcommand)]
pub enum BindingCommand {
    /// Create a binding (its listener starts at once) and show it, with the address it
    /// listens on.
    Create(BindingArgs),
    /// List the account's bindings.
    List,
    /// Show one binding.
    Get {
        /// The binding's id (`vpc binding list` shows it).
        id: String,
    },
    /// Delete a binding: new connections are refused, those open run to their end.
    Delete {
        /// The binding's id.
        id: String,
    },
    /// Print the workerd `external` service of a binding, found by name, to paste into the
    /// `services` list of a workerd config.capnp (a hint on stderr says how a Worker binds to
    /// it).
    Workerd {
        /// The binding's name (like MY_BINDING).
        name: String,
    },
}

/// A binding as `binding create` writes it.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target").required(true).args(["service_id", "network_id", "tunnel_id"])
))]
pub struct BindingArgs {
    /// Its name, as a Worker sees it (like MY_BINDING: letters, digits and _).
    name: String,
    /// Serve this VPC Service (bind role).
    #[arg(long, value_name = "ID")]
    service_id: Option<String>,
    /// Serve this VPC Network (bind role).
    #[arg(long, value_name = "ID")]
    network_id: Option<String>,
    /// Serve this tunnel's whole network directly (admin role).
    #[arg(long, value_name = "ID")]
    tunnel_id: Option<String>,
    /// The address its listener binds, IP:PORT. Default 127.0.0.1:0: any free port (the
    /// answer's address says which).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// `proxy`: the HTTP forward proxy fetch() and connect() use (default); `tcp`: a plain
    /// TCP port, for a tcp service only.
    #[arg(long, value_name = "proxy|tcp", value_parser = ["proxy", "tcp"])]
    mode: Option<String>,
}

impl BindingArgs {
    /// The public JSON body.
    fn body(&self) -> Value {
        let mut body = json!({ "name": self.name });
        for (field, value) in [
            ("service_id", &self.service_id),
            ("network_id", &self.network_id),
            ("tunnel_id", &self.tunnel_id),
            ("listen", &self.listen),
            ("mode", &self.mode),
        ] {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        body
    }
}

/// A `vpc tunnel` subcommand.
#[derive(Debug, Subcommand)]
pub enum TunnelCommand {
    /// Create a tunnel and print its connector token on stdout (admin role).
    Create {
        /// Its name, unique in the account (A-Z a-z 0-9 _ . -).
        name: String,
    },
    /// List the account's tunnels (no secrets).
    List,
    /// Print the connector token of a tunnel on stdout (admin role).
    Token {
        /// The tunnel's id (`vpc tunnel list` shows it).
        id: String,
    },
    /// Delete a tunnel (refused while a service, network or binding uses it); the edge closes
    /// its connector connections.
    Delete {
        /// The tunnel's id.
        id: String,
    },
}

/// A `vpc token` subcommand.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make an API token for the account and print it on stdout, once (admin role).
    Create {
        /// A label for people, shown when tokens are listed.
        #[arg(long, value_name = "LABEL")]
        name: String,
        /// What it may do: `read` (list and view), `bind` (also bind services, and networks
        /// by network id) or `admin` (everything).
        #[arg(long, value_name = "read|bind|admin", value_parser = ["read", "bind", "admin"])]
        role: String,
    },
    /// List the account's API tokens (never the tokens themselves).
    List,
    /// Delete an API token: it is refused from the next request on.
    Delete {
        /// The token's id (`vpc token list` shows it).
        id: String,
    },
}

/// Why a `vpc` command failed. `cli` prints it, one `error: ` line per line of its text.
#[derive(Debug, thiserror::Error)]
pub enum VpcError {
    /// A missing or malformed option or argument (exit status 64).
    #[error("{0}")]
    Usage(String),
    /// Nothing answered at the API's address, or the answer broke off.
    #[error(
        "no answer from the directory API at {url}; is [admin] listen set and the edge \
         running? ({detail})"
    )]
    NoAnswer {
        /// The API's URL as given.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The API refused the request: its status and each `errors[].message`, one a line. A
    /// 400 (a bad body or option) exits 64, anything else 1.
    #[error("{}", api_lines(.status, .messages))]
    Api {
        /// The HTTP status.
        status: u16,
        /// The envelope's error messages.
        messages: Vec<String>,
    },
    /// An object the command looked for by name is not in the account.
    #[error("{0}")]
    NotFound(String),
    /// The API answered something the command cannot use.
    #[error("unexpected answer from the directory API: {0}")]
    BadAnswer(String),
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// `STATUS: message`, one line per message.
fn api_lines(status: &u16, messages: &[String]) -> String {
    let lines: Vec<String> = messages.iter().map(|m| format!("{status}: {m}")).collect();
    lines.join("\n")
}

/// Run a `vpc` command: check the options, then ask the API on a current-thread runtime.
pub fn run(args: ApiArgs, command: VpcCommand) -> Result<(), VpcError> {
    let client = Client::new(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(VpcError::Runtime)?;
    runtime.block_on(execute(&client, args.json, command))
}

async fn execute(client: &Client, json: bool, command: VpcCommand) -> Result<(), VpcError> {
    let out = Output { json };
    match command {
        VpcCommand::Service { command } => match command {
            ServiceCommand::Create(service) => {
                let created = client.create(&SERVICE, &service.body()).await?;
                out.object(&SERVICE, &created);
            }
            ServiceCommand::List => out.list(&SERVICE, &client.list(&SERVICE).await?),
            ServiceCommand::Get { id } => out.object(&SERVICE, &client.get(&SERVICE, &id).await?),
            ServiceCommand::Update { id, service } => {
                let path = client.object_path(&SERVICE, &id)?;
                let body = service.body();
                let updated = client.result(Method::PUT, &path, Some(&body)).await?;
                out.object(&SERVICE, &updated);
            }
            ServiceCommand::Delete { id } => {
                out.deleted(&SERVICE, &client.delete(&SERVICE, &id).await?)
            }
        },
        VpcCommand::Network { command } => match command {
            NetworkCommand::Create { name, tunnel_id } => {
                let mut body = json!({ "name": name });
                if let Some(tunnel_id) = tunnel_id {
                    body["tunnel_id"] = json!(tunnel_id);
                }
                out.object(&NETWORK, &client.create(&NETWORK, &body).await?);
            }
            NetworkCommand::List => out.list(&NETWORK, &client.list(&NETWORK).await?),
            NetworkCommand::Get { id } => out.object(&NETWORK, &client.get(&NETWORK, &id).await?),
            NetworkCommand::Delete { id } => {
                out.deleted(&NETWORK, &client.delete(&NETWORK, &id).await?)
            }
        },
        VpcCommand::Binding { command } => match command {
            BindingCommand::Create(binding) => {
                let created = client.create(&BINDING, &binding.body()).await?;
                out.object(&BINDING, &created);
                if let Some(address) = created["address"].as_str() {
                    eprintln!(
                        "binding {} listens on {address}; `underpass-edge vpc binding workerd \
                         {}` prints its workerd service",
                        binding.name, binding.name
                    );
                }
            }
            BindingCommand::List => out.list(&BINDING, &client.list(&BINDING).await?),
            BindingCommand::Get { id } => out.object(&BINDING, &client.get(&BINDING, &id).await?),
            BindingCommand::Delete { id } => {
                out.deleted(&BINDING, &client.delete(&BINDING, &id).await?)
            }
            BindingCommand::Workerd { name } => workerd(client, &name).await?,
        },
        VpcCommand::Tunnel { command } => match command {
            TunnelCommand::Create { name } => {
                let created = client.create(&TUNNEL, &json!({ "name": name })).await?;
                out.token(&created)?;
                eprintln!(
                    "created tunnel {name} (id {id}). Keep the token secret: save it to a file \
                     only the connector's user can read and run\n  underpass run --token-file \
                     FILE\n(or the token in UNDERPASS_TOKEN), and name the tunnel with \
                     --tunnel-id {id} in services, networks and bindings.",
                    id = text(&created, "/id"),
                );
            }
            TunnelCommand::List => out.list(&TUNNEL, &client.list(&TUNNEL).await?),
            TunnelCommand::Token { id } => {
                let path = format!("{}/token", client.object_path(&TUNNEL, &id)?);
                out.token(&client.result(Method::GET, &path, None).await?)?;
            }
            TunnelCommand::Delete { id } => {
                out.deleted(&TUNNEL, &client.delete(&TUNNEL, &id).await?)
            }
        },
        VpcCommand::Token { command } => match command {
            TokenCommand::Create { name, role } => {
                let body = json!({ "name": name, "role": role });
                let created = client.create(&TOKEN, &body).await?;
                out.token(&created)?;
                eprintln!(
                    "created {role} token {name:?} (id {}). It is shown only now; give it to \
                     its user as UNDERPASS_API_TOKEN.",
                    text(&created, "/id"),
                );
            }
            TokenCommand::List => out.list(&TOKEN, &client.list(&TOKEN).await?),
            TokenCommand::Delete { id } => out.deleted(&TOKEN, &client.delete(&TOKEN, &id).await?),
        },
    }
    Ok(())
}

/// `binding workerd NAME`: the binding's workerd service on stdout, how to bind it on stderr.
async fn workerd(client: &Client, name: &str) -> Result<(), VpcError> {
    let bindings = client.list(&BINDING).await?;
    let Some(binding) = bindings.iter().find(|b| b["name"] == name) else {
        return Err(VpcError::NotFound(format!(
            "no binding named {name:?} in account {}; `underpass-edge vpc binding list` shows \
             them",
            client.account
        )));
    };
    if binding["mode"] == "tcp" {
        return Err(VpcError::Usage(format!(
            "binding {name} is a plain TCP port (mode tcp); a workerd external service needs a \
             binding in mode proxy"
        )));
    }
    let address = binding["address"]
        .as_str()
        .and_then(|text| text.parse::<SocketAddr>().ok())
        .ok_or_else(|| {
            VpcError::BadAnswer(format!("binding {name} has no address: it does not listen"))
        })?;
    println!("{}", workerd_stanza(name, dialable(address)));
    eprintln!(
        "a Worker binds to it with: bindings = [ (name = {q}, service = {q}) ]",
        q = capnp_quoted(name)
    );
    Ok(())
}

/// The workerd `external` service of a proxy binding listening on `address`, in the shape the
/// project's workerd tests write (`tests/support/workerd/capnp.rs`).
fn workerd_stanza(name: &str, address: SocketAddr) -> String {
    format!(
        "(name = {}, external = (address = {}, http = (style = proxy))),",
        capnp_quoted(name),
        capnp_quoted(&address.to_string())
    )
}

/// A Cap'n Proto text string literal.
fn capnp_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An address to dial: a binding listening on a wildcard address is reached on loopback.
fn dialable(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}

// ---------------------------------------------------------------------------------------------
// The API client

/// `--api`: `http://host:port` or `https://host:port`, and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl {
    /// As given, for messages.
    text: String,
    /// `host:port` as given, for the `Host` header.
    authority: String,
    /// The host to connect to (an IPv6 literal without its brackets).
    host: String,
    /// The port (80, or 443 for https, when the URL has none).
    port: u16,
    /// `https://`: TLS 1.3 to the listener.
    tls: bool,
    /// The path prefix without a trailing `/` (`""` at the root).
    prefix: String,
}

impl ApiUrl {
    /// Parse `--api`: the scheme `http` or `https`, a host, an optional port and path; no
    /// credentials, no query.
    fn parse(text: &str) -> Result<ApiUrl, String> {
        let example = "like http://127.0.0.1:20242";
        let uri: Uri = text
            .parse()
            .map_err(|error| format!("not a URL ({error}), {example}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(format!(
                    "{other}:// is not supported: the admin listener speaks http:// or \
                     https://, {example}"
                ))
            }
            None => return Err(format!("needs http:// and a host, {example}")),
        };
        let Some(authority) = uri.authority() else {
            return Err(format!("needs a host, {example}"));
        };
        if authority.as_str().contains('@') {
            return Err(
                "must not carry credentials: give the token with --api-token or \
                        UNDERPASS_API_TOKEN"
                    .to_owned(),
            );
        }
        if uri.query().is_some() {
            return Err(format!("must not have a query, {example}"));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(ApiUrl {
            text: text.to_owned(),
            authority: authority.as_str().to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            tls,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// `--api-token`: sent as `Authorization: Bearer`, never shown.
#[derive(Clone)]
pub struct ApiToken(String);

impl From<String> for ApiToken {
    fn from(token: String) -> ApiToken {
        ApiToken(token)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One kind of object: where the API keeps it and how a table shows it.
struct Kind {
    /// Its name in messages (`service`).
    name: &'static str,
    /// Its collection, after `/accounts/{account}/`.
    path: &'static str,
    /// Its columns: `list` shows those marked `in_list`, `get` every one.
    columns: &'static [Column],
}

/// One column of a table: its header and how to get its text from the API's JSON.
struct Column {
    header: &'static str,
    value: fn(&Value) -> String,
    in_list: bool,
}

const fn column(header: &'static str, value: fn(&Value) -> String) -> Column {
    Column {
        header,
        value,
        in_list: true,
    }
}

/// A column `get` shows and `list` does not.
const fn detail(header: &'static str, value: fn(&Value) -> String) -> Column {
    Column {
        header,
        value,
        in_list: false,
    }
}

const SERVICE: Kind = Kind {
    name: "service",
    path: "connectivity/directory/services",
    columns: &[
        column("ID", |v| text(v, "/service_id")),
        column("NAME", |v| text(v, "/name")),
        column("TYPE", |v| text(v, "/type")),
        column("HOST", service_host),
        column("PORTS", service_ports),
        column("TUNNEL", |v| {
            let network = text(v, "/host/network/tunnel_id");
            match network.as_str() {
                "-" => text(v, "/host/resolver_network/tunnel_id"),
                _ => network,
            }
        }),
        detail("TLS", |v| text(v, "/tls_settings/cert_verification_mode")),
        detail("CREATED (UTC)", |v| date(v, "/created_at")),
        detail("UPDATED (UTC)", |v| date(v, "/updated_at")),
    ],
};

const NETWORK: Kind = Kind {
    name: "network",
    path: "connectivity/directory/networks",
    columns: &[
        column("ID", |v| text(v, "/network_id")),
        column("NAME", |v| text(v, "/name")),
        column("TUNNEL", |v| match v["tunnel_id"].as_str() {
            Some(id) => id.to_owned(),
            None => "(every tunnel of the account)".to_owned(),
        }),
        detail("CREATED (UTC)", |v| date(v, "/created_at")),
        detail("UPDATED (UTC)", |v| date(v, "/updated_at")),
    ],
};

const BINDING: Kind = Kind {
    name: "binding",
    path: "connectivity/directory/bindings",
    columns: &[
        column("ID", |v| text(v, "/binding_id")),
        column("NAME", |v| text(v, "/name")),
        column("TARGET", |v| {
            ["service_id", "network_id", "tunnel_id"]
                .iter()
                .find_map(|field| {
                    let id = v[field].as_str()?;
                    Some(format!("{} {id}", field.trim_end_matches("_id")))
                })
                .unwrap_or_else(|| "-".to_owned())
        }),
        column("MODE", |v| text(v, "/mode")),
        column("ADDRESS", |v| text(v, "/address")),
        detail("LISTEN", |v| text(v, "/listen")),
        detail("CREATED (UTC)", |v| date(v, "/created_at")),
        detail("UPDATED (UTC)", |v| date(v, "/updated_at")),
    ],
};

const TUNNEL: Kind = Kind {
    name: "tunnel",
    path: "connectivity/tunnels",
    columns: &[
        column("ID", |v| text(v, "/id")),
        column("NAME", |v| text(v, "/name")),
        column("CREATED (UTC)", |v| date(v, "/created_at")),
    ],
};

const TOKEN: Kind = Kind {
    name: "token",
    path: "tokens",
    columns: &[
        column("ID", |v| text(v, "/id")),
        column("NAME", |v| text(v, "/name")),
        column("ROLE", |v| text(v, "/role")),
        column("CREATED (UTC)", |v| date(v, "/created_at")),
    ],
};

/// The string or number at `pointer`, `-` when there is none.
fn text(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => "-".to_owned(),
    }
}

/// An RFC 3339 UTC time as `2026-12-03 10:00:00`, the form `tunnel list` prints.
fn date(value: &Value, pointer: &str) -> String {
    text(value, pointer).replacen('T', " ", 1).replace('Z', "")
}

fn service_host(v: &Value) -> String {
    let host = &v["host"];
    if let Some(hostname) = host["hostname"].as_str() {
        let resolvers = host["resolver_network"]["resolver_ips"]
            .as_array()
            .map(|ips| ips.iter().filter_map(Value::as_str).collect::<Vec<_>>());
        return match resolvers {
            Some(ips) if !ips.is_empty() => format!("{hostname} (dns {})", ips.join(",")),
            _ => hostname.to_owned(),
        };
    }
    let ips: Vec<&str> = ["ipv4", "ipv6"]
        .iter()
        .filter_map(|field| host[field].as_str())
        .collect();
    if ips.is_empty() {
        "-".to_owned()
    } else {
        ips.join(",")
    }
}

fn service_ports(v: &Value) -> String {
    let ports: Vec<String> = ["http_port", "https_port", "tcp_port"]
        .iter()
        .filter_map(|field| {
            Some(format!(
                "{} {}",
                field.trim_end_matches("_port"),
                v[field].as_u64()?
            ))
        })
        .collect();
    let mut text = if ports.is_empty() {
        "-".to_owned()
    } else {
        ports.join(",")
    };
    if let Some(protocol) = v["app_protocol"].as_str() {
        text.push_str(&format!(" ({protocol})"));
    }
    text
}

/// How a command prints what the API answered.
struct Output {
    json: bool,
}

impl Output {
    fn list(&self, kind: &Kind, items: &[Value]) {
        if self.json {
            println!("{}", pretty(&Value::Array(items.to_vec())));
            return;
        }
        let columns: Vec<&Column> = kind.columns.iter().filter(|c| c.in_list).collect();
        let headers: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
        let mut rows = vec![headers];
        rows.extend(
            items
                .iter()
                .map(|item| columns.iter().map(|c| (c.value)(item)).collect()),
        );
        print!("{}", table(&rows));
    }

    fn object(&self, kind: &Kind, item: &Value) {
        if self.json {
            println!("{}", pretty(item));
            return;
        }
        let rows: Vec<Vec<String>> = kind
            .columns
            .iter()
            .map(|c| vec![c.header.to_owned(), (c.value)(item)])
            .collect();
        print!("{}", table(&rows));
    }

    fn deleted(&self, kind: &Kind, item: &Value) {
        if self.json {
            println!("{}", pretty(item));
        } else {
            eprintln!(
                "deleted {} {} (id {})",
                kind.name,
                text(item, "/name"),
                // The id field is the first column of every kind.
                kind.columns
                    .first()
                    .map_or_else(|| "-".to_owned(), |c| (c.value)(item))
            );
        }
    }

    /// A result carrying a token: the token alone, or the whole result with `--json`.
    fn token(&self, item: &Value) -> Result<(), VpcError> {
        if self.json {
            println!("{}", pretty(item));
            return Ok(());
        }
        let token = item["token"]
            .as_str()
            .ok_or_else(|| VpcError::BadAnswer("the answer carries no token".to_owned()))?;
        println!("{token}");
        Ok(())
    }
}

fn pretty(value: &Value) -> String {
    // Invariant: a `Value` always serializes (its map keys are strings).
    serde_json::to_string_pretty(value).expect("a JSON value serializes")
}

/// Rows of cells as aligned columns, two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One account's API at one edge, with one token.
struct Client {
    url: ApiUrl,
    /// How to reach it.
    target: Target,
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
    account: String,
}

impl Client {
    /// Check `--api`, `--api-token` and `--account`, naming every one missing.
    fn new(args: &ApiArgs) -> Result<Client, VpcError> {
        let mut missing = Vec::new();
        if args.api.is_none() {
            missing.push("--api URL (or UNDERPASS_API, like http://127.0.0.1:20242)");
        }
        if args.api_token.is_none() {
            missing.push("--api-token TOKEN (or UNDERPASS_API_TOKEN)");
        }
        if args.account.is_none() {
            missing.push("--account NAME (or UNDERPASS_ACCOUNT)");
        }
        let (Some(url), Some(ApiToken(token)), Some(account)) =
            (&args.api, &args.api_token, &args.account)
        else {
            return Err(VpcError::Usage(format!("missing {}", missing.join(", "))));
        };
        let mut authorization =
            HeaderValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
                VpcError::Usage(
                    "the API token is not a valid header value (it is printable ASCII, \
                     upa1_...)"
                        .to_owned(),
                )
            })?;
        authorization.set_sensitive(true);
        Ok(Client {
            target: target(url, args.api_ca.as_deref())?,
            url: url.clone(),
            authorization,
            account: path_segment("--account", account)?.to_owned(),
        })
    }

    fn collection_path(&self, kind: &Kind) -> String {
        format!(
            "{}/accounts/{}/{}",
            self.url.prefix, self.account, kind.path
        )
    }

    fn object_path(&self, kind: &Kind, id: &str) -> Result<String, VpcError> {
        let id = path_segment(&format!("the {} id", kind.name), id)?;
        Ok(format!("{}/{id}", self.collection_path(kind)))
    }

    async fn create(&self, kind: &Kind, body: &Value) -> Result<Value, VpcError> {
        self.result(Method::POST, &self.collection_path(kind), Some(body))
            .await
    }

    async fn get(&self, kind: &Kind, id: &str) -> Result<Value, VpcError> {
        self.result(Method::GET, &self.object_path(kind, id)?, None)
            .await
    }

    async fn delete(&self, kind: &Kind, id: &str) -> Result<Value, VpcError> {
        self.result(Method::DELETE, &self.object_path(kind, id)?, None)
            .await
    }

    /// Every object of a kind, page after page.
    async fn list(&self, kind: &Kind) -> Result<Vec<Value>, VpcError> {
        let mut items = Vec::new();
        for page in 1.. {
            let path = format!(
                "{}?page={page}&per_page={PER_PAGE}",
                self.collection_path(kind)
            );
            let envelope = self.envelope(Method::GET, &path, None).await?;
            let Some(batch) = envelope["result"].as_array() else {
                return Err(VpcError::BadAnswer("a list without a result array".into()));
            };
            items.extend(batch.iter().cloned());
            let total = envelope["result_info"]["total_count"].as_u64();
            let done = match total {
                Some(total) => items.len() as u64 >= total,
                None => true,
            };
            // An empty page ends it too, should the total change under the listing.
            if done || batch.is_empty() {
                break;
            }
        }
        Ok(items)
    }

    /// The `result` of a request that must succeed.
    async fn result(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, VpcError> {
        let mut envelope = self.envelope(method, path, body).await?;
        Ok(envelope["result"].take())
    }

    /// The whole envelope of a request that must succeed; its errors otherwise.
    async fn envelope(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, VpcError> {
        let (status, bytes) = self.send(method, path, body).await?;
        answer(status, &bytes)
    }

    /// One request on a connection of its own, within [`REQUEST_TIMEOUT`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), VpcError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.url.authority.as_str())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                format!("underpass-edge/{}", underpass_rt::VERSION),
            );
        let bytes = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(bytes))
            .map_err(|error| VpcError::Usage(format!("cannot make the request: {error}")))?;
        let no_answer = |detail: String| VpcError::NoAnswer {
            url: self.url.text.clone(),
            detail,
        };
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            api_client::exchange(&self.target, request, MAX_ANSWER),
        )
        .await
        .map_err(|_| no_answer(format!("nothing within {} s", REQUEST_TIMEOUT.as_secs())))?
        .map_err(no_answer)
    }
}

/// How to reach `url`: TLS 1.3 verified by `ca` (a PEM bundle) or the system's roots for
/// `https://`; `--api-ca` with `http://` is a mistake worth saying.
fn target(url: &ApiUrl, ca: Option<&std::path::Path>) -> Result<Target, VpcError> {
    if !url.tls {
        if let Some(ca) = ca {
            return Err(VpcError::Usage(format!(
                "--api-ca {} needs an https:// --api (the API at {} is plain HTTP)",
                ca.display(),
                url.text
            )));
        }
        return Ok(Target {
            host: url.host.clone(),
            port: url.port,
            tls: None,
        });
    }
    let verification =
        match ca {
            Some(path) => EdgeVerification::CaPem(std::fs::read(path).map_err(|error| {
                VpcError::Usage(format!("--api-ca {}: {error}", path.display()))
            })?),
            None => EdgeVerification::SystemRoots,
        };
    let config = tls::client_config(&verification, &[b"http/1.1"]).map_err(|error| {
        VpcError::Usage(match ca {
            Some(path) => format!("--api-ca {}: {error}", path.display()),
            None => format!("the TLS configuration for {}: {error}", url.text),
        })
    })?;
    let name = ServerName::try_from(url.host.clone()).map_err(|error| {
        VpcError::Usage(format!(
            "--api {}: not a TLS server name: {error}",
            url.text
        ))
    })?;
    Ok(Target {
        host: url.host.clone(),
        port: url.port,
        tls: Some((Arc::new(config), name)),
    })
}

/// An account or id as one path segment: `A-Z a-z 0-9 - _ .`, not starting with `.`.
fn path_segment<'a>(what: &str, text: &'a str) -> Result<&'a str, VpcError> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if valid {
        Ok(text)
    } else {
        Err(VpcError::Usage(format!(
            "{what} {text:?}: 1 to 64 of A-Z a-z 0-9 - _ . (a name, or an id as the lists \
             show it)"
        )))
    }
}

/// The envelope of a successful answer, or the API's errors.
fn answer(status: StatusCode, body: &[u8]) -> Result<Value, VpcError> {
    let envelope: Option<Value> = serde_json::from_slice(body).ok();
    match envelope {
        Some(envelope) if status.is_success() && envelope["success"] == true => Ok(envelope),
        Some(envelope) if envelope["errors"].is_array() => {
            let mut messages: Vec<String> = envelope["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|error| error["message"].as_str().map(str::to_owned))
                .collect();
            if messages.is_empty() {
                messages.push("the API gave no reason".to_owned());
            }
            Err(VpcError::Api {
                status: status.as_u16(),
                messages,
            })
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            Err(VpcError::Api {
                status: status.as_u16(),
                messages: vec![format!(
                    "not an answer of the directory API (is --api the edge's admin \
                     listener?): {text}"
                )],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<(ApiArgs, VpcCommand), clap::Error> {
        let cli = Cli::try_parse_from(["underpass-edge", "vpc"].iter().chain(args))?;
        match cli.command {
            Command::Vpc { api, command } => Ok((api, *command)),
            other => panic!("not a vpc command: {other:?}"),
        }
    }

    fn service_body(args: &[&str]) -> Value {
        let mut all = vec![
            "service",
            "create",
            "web",
            "--type",
            "http",
            "--tunnel-id",
            "T",
        ];
        all.extend(args);
        match parse(&all).expect("a valid command line").1 {
            VpcCommand::Service {
                command: ServiceCommand::Create(service),
            } => service.body(),
            other => panic!("not service create: {other:?}"),
        }
    }

    #[test]
    fn service_bodies_are_the_public_shape() {
        assert_eq!(
            service_body(&["--ipv4", "10.0.1.50"]),
            json!({ "name": "web", "type": "http",
                "host": { "ipv4": "10.0.1.50", "network": { "tunnel_id": "T" } } })
        );
        assert_eq!(
            service_body(&[
                "--ipv4",
                "10.0.1.50",
                "--ipv6",
                "fd00::50",
                "--https-port",
                "8443"
            ]),
            json!({ "name": "web", "type": "http", "https_port": 8443,
                "host": { "ipv4": "10.0.1.50", "ipv6": "fd00::50",
                    "network": { "tunnel_id": "T" } } })
        );
        assert_eq!(
            service_body(&[
                "--hostname",
                "db.corp",
                "--resolver-ips",
                "10.0.0.2,10.0.0.3",
                "--cert-verification-mode",
                "verify_ca",
            ]),
            json!({ "name": "web", "type": "http",
                "host": { "hostname": "db.corp", "resolver_network": {
                    "tunnel_id": "T", "resolver_ips": ["10.0.0.2", "10.0.0.3"] } },
                "tls_settings": { "cert_verification_mode": "verify_ca" } })
        );
    }

    #[test]
    fn hosts_are_checked_by_the_command_line() {
        let create = [
            "service",
            "create",
            "web",
            "--type",
            "http",
            "--tunnel-id",
            "T",
        ];
        let with = |extra: &[&str]| {
            let mut all = create.to_vec();
            all.extend(extra);
            parse(&all).map(|_| ())
        };
        assert!(with(&[]).is_err(), "a host is required");
        assert!(with(&["--hostname", "db", "--ipv4", "10.0.0.1"]).is_err());
        assert!(with(&["--hostname", "db", "--ipv6", "fd00::1"]).is_err());
        assert!(with(&["--ipv4", "10.0.0.1", "--resolver-ips", "10.0.0.2"]).is_err());
        assert!(with(&["--ipv4", "10.0.0.1", "--type", "udp"]).is_err());
        assert!(with(&["--ipv4", "10.0.0.1", "--ipv6", "fd00::1"]).is_ok());
        let targets = [
            "binding",
            "create",
            "B",
            "--service-id",
            "S",
            "--network-id",
            "N",
        ];
        assert!(parse(&targets).is_err(), "one target");
        assert!(parse(&["binding", "create", "B"]).is_err(), "a target");
        let (_, command) = parse(&[
            "binding",
            "create",
            "B",
            "--network-id",
            "N",
            "--mode",
            "proxy",
        ])
        .expect("valid");
        let VpcCommand::Binding {
            command: BindingCommand::Create(binding),
        } = command
        else {
            panic!("not binding create: {command:?}");
        };
        assert_eq!(
            binding.body(),
            json!({ "name": "B", "network_id": "N", "mode": "proxy" })
        );
    }

    #[test]
    fn api_options_are_global_and_the_token_stays_hidden() {
        let (api, _) = parse(&[
            "service",
            "list",
            "--api",
            "http://127.0.0.1:9090/edge/",
            "--api-token",
            "upa1_secret",
            "--account",
            "acme",
            "--json",
        ])
        .expect("valid");
        assert!(api.json);
        let url = api.api.clone().expect("--api");
        assert_eq!(
            (url.host.as_str(), url.port, url.prefix.as_str()),
            ("127.0.0.1", 9090, "/edge")
        );
        assert!(!format!("{api:?}").contains("secret"), "{api:?}");
        let client = Client::new(&api).expect("complete options");
        assert_eq!(
            client.collection_path(&SERVICE),
            "/edge/accounts/acme/connectivity/directory/services"
        );
        assert!(client.object_path(&SERVICE, "../x").is_err());
    }

    #[test]
    fn api_urls() {
        let url = ApiUrl::parse("http://[::1]:20242").expect("valid");
        assert_eq!(
            (url.host.as_str(), url.port, url.prefix.as_str()),
            ("::1", 20242, "")
        );
        assert_eq!(url.authority, "[::1]:20242");
        assert_eq!(
            ApiUrl::parse("http://edge.internal").expect("valid").port,
            80
        );
        let url = ApiUrl::parse("https://edge.internal/api/").expect("valid");
        assert_eq!(
            (url.port, url.tls, url.prefix.as_str()),
            (443, true, "/api")
        );
        for bad in [
            "ftp://127.0.0.1:1",
            "127.0.0.1:20242",
            "http://u:p@127.0.0.1:1",
            "http://127.0.0.1:1/?x=1",
            "",
        ] {
            assert!(ApiUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_options_are_all_named() {
        let (api, _) = parse(&["tunnel", "list"]).expect("valid");
        let api = ApiArgs {
            api: None,
            api_ca: None,
            api_token: None,
            account: None,
            ..api
        };
        let Err(VpcError::Usage(message)) = Client::new(&api) else {
            panic!("missing options are a usage error");
        };
        for name in [
            "UNDERPASS_API,",
            "UNDERPASS_API_TOKEN",
            "UNDERPASS_ACCOUNT",
            "--account",
        ] {
            assert!(message.contains(name), "{message}");
        }
    }

    #[test]
    fn answers() {
        let ok = br#"{"success": true, "errors": [], "messages": [], "result": {"id": 1}}"#;
        assert_eq!(answer(StatusCode::OK, ok).expect("ok")["result"]["id"], 1);
        let refused = br#"{"success": false, "errors": [{"code": 1001, "message": "a: bad"},
            {"code": 1001, "message": "b: bad"}], "messages": [], "result": null}"#;
        let error = answer(StatusCode::BAD_REQUEST, refused).expect_err("refused");
        assert_eq!(error.to_string(), "400: a: bad\n400: b: bad");
        let error = answer(StatusCode::BAD_GATEWAY, b"<html>").expect_err("not the API");
        assert!(
            error.to_string().starts_with("502: not an answer"),
            "{error}"
        );
    }

    #[test]
    fn tables_and_stanzas() {
        let rows = vec![
            vec!["ID".to_owned(), "NAME".to_owned(), "TYPE".to_owned()],
            vec!["1".to_owned(), "a-long-name".to_owned(), "http".to_owned()],
        ];
        assert_eq!(
            table(&rows),
            "ID  NAME         TYPE\n1   a-long-name  http\n"
        );
        let service = json!({ "type": "tcp", "tcp_port": 5432, "app_protocol": "postgresql",
            "host": { "hostname": "db", "resolver_network": { "tunnel_id": "T",
                "resolver_ips": ["10.0.0.2"] } } });
        assert_eq!(service_host(&service), "db (dns 10.0.0.2)");
        assert_eq!(service_ports(&service), "tcp 5432 (postgresql)");
        assert_eq!(
            date(&json!({ "at": "2026-12-03T10:00:00Z" }), "/at"),
            "2026-12-03 10:00:00"
        );
        assert_eq!(
            workerd_stanza(
                "MY_BINDING",
                dialable("0.0.0.0:8080".parse().expect("literal"))
            ),
            r#"(name = "MY_BINDING", external = (address = "127.0.0.1:8080", http = (style = proxy))),"#
        );
    }
}
