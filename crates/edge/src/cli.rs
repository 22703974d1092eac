//! The `underpass-edge` command line. `main.rs` calls [`main`].
//!
//! Only a `tunnel create` / `tunnel token` / `tunnel rotate-secret` token goes to stdout (and
//! the `tunnel list` and `tunnel info` tables), so `TOKEN=$(underpass-edge tunnel create NAME)`
//! works; hints and logs go to stderr.
//!
//! Exit status: 0 on success (`--help` and `--version` included), 64 (EX_USAGE) for a bad
//! command line or configuration, 1 for anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use underpass_rt::risky::{self, Finding};
use underpass_rt::{LogFormat, EX_FAILURE, EX_USAGE};

use crate::config::EdgeConfig;
use crate::model::utc_date;
use crate::start::{token_addresses, EdgeError};
use crate::state::Pki;
use crate::tunnels::{Tunnel, TunnelStore};

/// What `--help` prints after the options: the environment and the exit status, which clap
/// does not list by itself (the man page has them too).
const AFTER_HELP: &str = "\
Environment:
  UNDERPASS_EDGE_CONFIG  the config file, when --config is not given
  UNDERPASS_LOG_FORMAT   the log format (text or json), when --log-format is not given
  RUST_LOG               the log filter (default: info for serve, warn for the other
                         commands), e.g. RUST_LOG=underpass_edge=debug

Exit status:
  0   success (--help and --version included)
  64  a bad command line or configuration (EX_USAGE)
  1   any other failure (a port in use, an unreadable state directory, ...)";

/// The Underpass edge: accepts connectors, serves bindings as HTTP forward proxies.
#[derive(Debug, Parser)]
#[command(
    name = "underpass-edge",
    version = underpass_rt::VERSION,
    about,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The edge's config file (TOML).
    #[arg(long, short, global = true, env = "UNDERPASS_EDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: `text` or `json` (one JSON object a line). Overrides the config's
    /// `log_format`.
    #[arg(
        long,
        global = true,
        env = "UNDERPASS_LOG_FORMAT",
        value_name = "text|json"
    )]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the edge until SIGINT or SIGTERM (a second one exits at once); SIGHUP reloads the
    /// config file's networks, services and bindings.
    Serve,
    /// Manage tunnels in the state directory.
    Tunnel {
        /// What to do with tunnels.
        #[command(subcommand)]
        command: TunnelCommand,
    },
    /// Validate the config file and exit; warn about networks and services whose tunnel does
    /// not exist (yet) in the state directory.
    ///
    /// Also warns about risky settings (a secret others can read, a binding beyond loopback)
    /// and refuses, with status 64, a state directory or a file others can write.
    CheckConfig,
    /// Manage the admin API's tokens in the state directory's database (on the edge host,
    /// without the API: this is how an account's first Admin token is made).
    Token {
        /// What to do with API tokens.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage an account's VPC Services, VPC Networks, bindings, tunnels and API tokens
    /// through a running edge's directory API (its admin listener); needs no config file.
    #[command(after_help = crate::cli_vpc::AFTER_HELP)]
    Vpc {
        // Where the API is and who asks (`--api`, `--api-token`, `--account`, `--json`).
        #[command(flatten)]
        api: crate::cli_vpc::ApiArgs,
        /// What to manage.
        // Boxed: a service's options are large beside the other commands.
        #[command(subcommand)]
        command: Box<crate::cli_vpc::VpcCommand>,
    },
}

/// A `token` subcommand.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make an API token and print it on stdout, once: only its hash is kept. The account is
    /// created if it does not exist.
    Create {
        /// The account (tenant) the token acts in.
        #[arg(long)]
        account: String,
        /// What it may do: `read` (list and view), `bind` (also bind services and networks by
        /// network id) or `admin` (everything).
        #[arg(long, value_parser = ["read", "bind", "admin"])]
        role: String,
        /// A label for the token, shown when tokens are listed.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

/// A `tunnel` subcommand.
#[derive(Debug, Subcommand)]
pub enum TunnelCommand {
    /// Create a tunnel and print its token on stdout.
    Create {
        /// The tunnel's name (A-Z a-z 0-9 - _ .).
        name: String,
    },
    /// List tunnels (no secrets).
    List,
    /// Print the token of an existing tunnel on stdout.
    Token {
        /// The tunnel's name or id.
        name: String,
    },
    /// Delete a tunnel; a running edge closes its connections within 2 s and refuses its
    /// connectors from then on.
    Delete {
        /// The tunnel's name or id.
        name: String,
    },
    /// Give a tunnel a new secret and print its new token on stdout; connectors on the old
    /// token are disconnected and refused.
    RotateSecret {
        /// The tunnel's name or id.
        name: String,
    },
    /// Show the connectors of a tunnel, as the running edge sees them (asks its `[admin]`
    /// listener).
    Info {
        /// The tunnel's name or id.
        name: String,
    },
}

/// Parse the process's command line and run it; returns the process exit status. A bad
/// command line exits 64 (EX_USAGE), as a bad configuration does; `--help` and `--version`
/// print and exit 0.
pub fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => run(cli),
        Err(error) => {
            // clap writes help and version to stdout, errors to stderr.
            let _ = error.print();
            match error.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EX_USAGE),
            }
        }
    }
}

/// Run a parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> ExitCode {
    // `vpc` talks to a running edge's API: it needs no config file.
    if let Command::Vpc { api, command } = cli.command {
        return vpc(api, *command, cli.log_format);
    }
    let Some(path) = cli.config.as_deref() else {
        eprintln!("error: --config FILE is required (or set UNDERPASS_EDGE_CONFIG)");
        return ExitCode::from(EX_USAGE);
    };
    let config = match EdgeConfig::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // A one-shot command only reports problems; its own output says what it did.
    let level = match cli.command {
        Command::Serve => "info",
        _ => "warn",
    };
    underpass_rt::init_tracing(level, cli.log_format.unwrap_or(config.log_format));
    let result = match cli.command {
        Command::Serve => {
            // Refused before anything is bound; the warnings are logged once.
            let findings = config.risky_findings(Some(path));
            if findings.iter().any(Finding::is_refusal) {
                let refusals: Vec<Finding> =
                    findings.into_iter().filter(Finding::is_refusal).collect();
                risky::print(&refusals);
                return ExitCode::from(EX_USAGE);
            }
            risky::log_warnings(&findings);
            serve(config, path)
        }
        Command::CheckConfig => {
            let findings = config.risky_findings(Some(path));
            risky::print(&findings);
            if findings.iter().any(Finding::is_refusal) {
                return ExitCode::from(EX_USAGE);
            }
            let warnings = tunnel_warnings(&config, path);
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            eprintln!(
                "{}: config is valid ({} network(s), {} service(s), {} binding(s), {} \
                 warning(s))",
                path.display(),
                config.networks.len(),
                config.services.len(),
                config.bindings.len(),
                warnings.len() + findings.len()
            );
            Ok(())
        }
        Command::Tunnel { command } => tunnel(command, &config, path),
        Command::Token { command } => token(command, &config),
        Command::Vpc { .. } => unreachable!("vpc is dispatched before the config is loaded"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            match error {
                EdgeError::Config(_)
                | EdgeError::NoPublicAddress(_)
                | EdgeError::NoAdmin
                | EdgeError::BadTunnelReference(_) => ExitCode::from(EX_USAGE),
                _ => ExitCode::from(EX_FAILURE),
            }
        }
    }
}

/// Run a `vpc` command: one `error: ` line per line of a failure; 64 for a bad command line or
/// a request the API refused as invalid (400), 1 for anything else.
fn vpc(
    api: crate::cli_vpc::ApiArgs,
    command: crate::cli_vpc::VpcCommand,
    log_format: Option<LogFormat>,
) -> ExitCode {
    use crate::cli_vpc::VpcError;
    underpass_rt::init_tracing("warn", log_format.unwrap_or_default());
    match crate::cli_vpc::run(api, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            for line in error.to_string().lines() {
                eprintln!("error: {line}");
            }
            match error {
                VpcError::Usage(_) | VpcError::Api { status: 400, .. } => ExitCode::from(EX_USAGE),
                _ => ExitCode::from(EX_FAILURE),
            }
        }
    }
}

/// What `check-config` warns about: networks and services naming a tunnel the state directory
/// does not have. Not an error: a serving edge answers their bindings 502
/// `destination_unavailable` until the tunnel is created, and picks it up within
/// [`REFRESH_INTERVAL`](crate::tunnels::REFRESH_INTERVAL) of `tunnel create`, without a
/// restart.
fn tunnel_warnings(config: &EdgeConfig, path: &Path) -> Vec<String> {
    let store = match TunnelStore::open(&config.state_dir) {
        Ok(store) => store,
        Err(error) => {
            return vec![format!(
                "cannot read the tunnels ({error}); the tunnel keys of networks and services \
                 were not checked"
            )]
        }
    };
    let references = config
        .networks
        .iter()
        .map(|n| ("network", &n.name, &n.tunnel))
        .chain(
            config
                .services
                .iter()
                .map(|s| ("service", &s.name, &s.tunnel)),
        );
    references
        .filter(|(_, _, tunnel)| store.resolve(tunnel).is_none())
        .map(|(kind, name, tunnel)| {
            // Tunnels are not declared in the config: they come from `tunnel create`.
            let remedy = match crate::tunnels::parse_tunnel_id(tunnel) {
                Some(_) => "no tunnel has this id; `underpass-edge tunnel list` shows them".into(),
                None => format!(
                    "tunnels are not declared in the config: `underpass-edge --config {} \
                     tunnel create {tunnel}` creates it",
                    path.display()
                ),
            };
            format!(
                "{kind} {name:?}: tunnel = {tunnel:?}: no such tunnel in state_dir {} \
                 ({remedy}); until then the edge answers its bindings with 502 \
                 destination_unavailable",
                config.state_dir.display(),
            )
        })
        .collect()
}

fn token(command: TokenCommand, config: &EdgeConfig) -> Result<(), EdgeError> {
    use crate::db::{DirectoryBackend, SqliteBackend};
    match command {
        TokenCommand::Create {
            account,
            role,
            name,
        } => {
            if account.is_empty()
                || account.len() > 64
                || !account
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(EdgeError::Config(crate::config::ConfigError::Invalid(
                    format!("--account {account:?}: 1 to 64 of A-Z a-z 0-9 - _ ."),
                )));
            }
            crate::state::ensure_dir(&config.state_dir)?;
            let db = SqliteBackend::open(&config.state_dir)?;
            let account = db.ensure_account(&account)?;
            let (record, token) = db.create_token(&account.id, &name, &role)?;
            println!("{token}");
            eprintln!(
                "created {role} token {name:?} (id {}) for account {} (id {}). It is shown \
                 only now; send it as `Authorization: Bearer <token>` to the admin API, e.g. \
                 GET /accounts/{}/connectivity/directory/services",
                crate::api::schema::format_id(&record.id),
                account.name,
                crate::api::schema::format_id(&account.id),
                account.name,
            );
            Ok(())
        }
    }
}

fn serve(config: EdgeConfig, path: &Path) -> Result<(), EdgeError> {
    let runtime =
        underpass_rt::runtime(config.runtime.worker_threads).map_err(EdgeError::Runtime)?;
    runtime.block_on(crate::start::serve_with_signals(config, path))
}

fn tunnel(command: TunnelCommand, config: &EdgeConfig, path: &Path) -> Result<(), EdgeError> {
    let store = TunnelStore::open(&config.state_dir)?;
    match command {
        TunnelCommand::Create { name } => {
            // Everything the token needs is checked before the tunnel is saved.
            let edges = token_addresses(config, None)?;
            let pki = Pki::load_or_generate(&config.state_dir, &config.server_name)?;
            let tunnel = store.create(&name)?;
            let token = tunnel.token(edges, &config.server_name, pki.ca_pin);
            println!("{}", token.encode());
            eprintln!(
                "created tunnel {name} (id {}). Keep the token secret: save it to a file only \
                 the connector's user can read and run\n  \
                 underpass run --token-file FILE\n(or token_file = \"FILE\" in its config, or \
                 the token in UNDERPASS_TOKEN; not --token, which other users see in the \
                 process list), and serve it from a [[network]] or [[service]] with tunnel = \
                 \"{name}\" in {}.",
                tunnel.id_hex(),
                path.display()
            );
        }
        TunnelCommand::List => {
            println!("{:<32}  {:<20}  CREATED (UTC)", "ID", "NAME");
            for tunnel in store.list() {
                println!(
                    "{}  {:<20}  {}",
                    tunnel.id_hex(),
                    tunnel.name,
                    utc_date(tunnel.created_at)
                );
            }
        }
        TunnelCommand::Token { name } => {
            let edges = token_addresses(config, None)?;
            let tunnel: Tunnel = store
                .resolve(&name)
                .ok_or_else(|| crate::state::StateError::UnknownTunnel(name.clone()))?;
            let pki = Pki::load_or_generate(&config.state_dir, &config.server_name)?;
            println!(
                "{}",
                tunnel
                    .token(edges, &config.server_name, pki.ca_pin)
                    .encode()
            );
        }
        TunnelCommand::Delete { name } => {
            let tunnel = store.delete(&name)?;
            eprintln!(
                "deleted tunnel {} (id {}). A running edge closes its connections within {} s \
                 and refuses its connectors; remove the [[network]] and [[service]] entries \
                 naming it from {}.",
                tunnel.name,
                tunnel.id_hex(),
                crate::tunnels::REFRESH_INTERVAL.as_secs(),
                path.display()
            );
        }
        TunnelCommand::RotateSecret { name } => {
            // Everything the token needs is checked before the secret changes.
            let edges = token_addresses(config, None)?;
            let pki = Pki::load_or_generate(&config.state_dir, &config.server_name)?;
            let tunnel = store.rotate_secret(&name)?;
            println!(
                "{}",
                tunnel
                    .token(edges, &config.server_name, pki.ca_pin)
                    .encode()
            );
            eprintln!(
                "rotated the secret of tunnel {} (id {}). A running edge disconnects the \
                 connectors on the old token within {} s and refuses them from then on; run \
                 them with the new token.",
                tunnel.name,
                tunnel.id_hex(),
                crate::tunnels::REFRESH_INTERVAL.as_secs(),
            );
        }
        TunnelCommand::Info { name } => {
            let info = crate::admin::fetch_tunnel_info(config, &name)?;
            print!("{}", crate::admin::render_tunnel_info(&info));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "underpass-edge",
            "tunnel",
            "create",
            "prod",
            "--config",
            "e.toml",
        ])
        .unwrap(); // valid command line
        assert_eq!(cli.config.as_deref(), Some(Path::new("e.toml")));
        assert!(matches!(
            cli.command,
            Command::Tunnel {
                command: TunnelCommand::Create { .. }
            }
        ));
        let cli = Cli::try_parse_from([
            "underpass-edge",
            "--log-format",
            "json",
            "tunnel",
            "rotate-secret",
            "prod",
        ])
        .unwrap(); // valid command line
        assert_eq!(cli.log_format, Some(LogFormat::Json));
        assert!(matches!(
            cli.command,
            Command::Tunnel {
                command: TunnelCommand::RotateSecret { .. }
            }
        ));
        assert!(Cli::try_parse_from(["underpass-edge", "--log-format", "xml", "serve"]).is_err());
    }
}
