//! The `underpass` command line.
//!
//! Exit status: 0 on success, 64 ([`EX_USAGE`]) for a bad command line or configuration, 1
//! ([`EX_FAILURE`]) when the connector fails at run time; the same as the edge's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing::{error, info, warn};
use underpass_rt::risky::{self, Finding};
use underpass_rt::{init_tracing, runtime, LogFormat, Signal, Signals, EX_FAILURE, EX_USAGE};
use underpass_transport::tls::EdgeVerification;

use crate::config::{
    redact, ConfigError, ConnectorConfig, Overrides, ProtocolChoice, Provenance,
    DEFAULT_CONFIG_FILE, TOKEN_ENV,
};
use crate::service::ServiceCommand;
use crate::supervisor::{Connector, ConnectorError, ConnectorHandle};

/// Underpass connector: dials out to the edge and serves binding traffic to private services.
#[derive(Debug, Parser)]
#[command(
    name = "underpass",
    version = underpass_rt::VERSION,
    about,
    long_about = None,
    after_help = "Environment variables, files and exit statuses: underpass --help",
    after_long_help = ENVIRONMENT_HELP
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to the edge and serve until SIGINT or SIGTERM (then drain; a second signal
    /// exits at once). SIGHUP reloads the config file's routes, deny list, DNS and limits.
    #[command(
        after_help = "Environment variables, files and exit statuses: underpass run --help",
        after_long_help = ENVIRONMENT_HELP
    )]
    Run(RunArgs),
    /// Validate a config file and print a summary, without connecting.
    ///
    /// Warns about risky settings (a token others can read, a route to everything) and
    /// refuses, with status 64, a token or config file others can write.
    #[command(after_long_help = ENVIRONMENT_HELP)]
    CheckConfig(CheckArgs),
    /// Install or remove the systemd service (unit, config file and token).
    #[command(subcommand)]
    Service(ServiceCommand),
}

/// What `--help` says after the flags (the top level, `run` and `check-config`).
const ENVIRONMENT_HELP: &str = "\
Environment:
  UNDERPASS_TOKEN        the tunnel token
  CREDENTIALS_DIRECTORY  set by systemd: the token is its credential `token`
                         (LoadCredential=token:/etc/underpass/tunnel.token)
  RUST_LOG               log filter (default: info; e.g. info,underpass_connector=debug)
  NOTIFY_SOCKET          set by systemd (Type=notify): READY=1 once registered, STATUS=,
                         STOPPING=1 when the drain starts
  WATCHDOG_USEC          set by systemd (WatchdogSec=): WATCHDOG=1 at half that interval

Files:
  /etc/underpass/connector.toml  the config file when there is no --config (if it exists)
  /run/secrets/underpass-token   the token as a container secret
  /etc/underpass/tunnel.token    where `service install` puts the token (mode 0600)

Token sources, first match wins: --token, --token-file, UNDERPASS_TOKEN, the config file's
`token` or `token_file`, $CREDENTIALS_DIRECTORY/token, /run/secrets/underpass-token.

Exit status:
  0   success, also after SIGTERM/SIGINT and the drain
  64  bad command line or configuration (the message names the flag, key or file)
  1   failure at run time, or a second SIGTERM/SIGINT (exit before the drain ends)

Reference: docs/connector.md";

/// Where the token comes from (overrides the config file; see `docs/connector.md`).
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The tunnel token (`upt1_...`). Prefer --token-file or UNDERPASS_TOKEN: command lines are
    /// visible to other users of the host.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the tunnel token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `underpass run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file (TOML).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Token sources.
    #[command(flatten)]
    pub token: TokenArgs,
    /// Allow a destination: `CIDR`, `IP`, `HOST` or `*.SUFFIX`, optionally `=PORTS`
    /// (`10.0.0.0/8`, `db.internal=5432`, `127.20.0.0/16=6379,8000-8999`). Repeatable; added
    /// to the config file's routes.
    #[arg(long = "route", value_name = "DEST[=PORTS]")]
    pub routes: Vec<String>,
    /// Do not verify the edge's certificate. Anyone on the network path can then impersonate
    /// the edge. For experiments only.
    #[arg(long)]
    pub dangerous_accept_any_edge_certificate: bool,
    /// Serve /healthz, /ready and /metrics on this address (overrides `[admin] listen`;
    /// 127.0.0.1:20241 is the documented choice).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Log format: `text` or `json` (one JSON object a line). Overrides `log_format`.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Transport to the edge: `auto` (QUIC, falling back to HTTP/2 per connection where UDP
    /// is blocked, and back), `quic` or `http2`. Overrides `protocol`.
    #[arg(long, value_name = "PROTOCOL")]
    pub protocol: Option<ProtocolChoice>,
}

/// `underpass check-config`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file (TOML); the same as --config. Default: /etc/underpass/connector.toml.
    #[arg(value_name = "FILE", conflicts_with = "config")]
    pub file: Option<PathBuf>,
    /// The config file (TOML), as for `run`.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Token sources.
    #[command(flatten)]
    pub token: TokenArgs,
}

/// Parse the command line, run, and return the exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version are not errors.
            let code = if error.use_stderr() { EX_USAGE } else { 0 };
            // Printing to a closed terminal is not worth failing over.
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::CheckConfig(args) => check_config(args),
        Command::Run(args) => run(args),
        Command::Service(command) => crate::service::main(command),
    }
}

fn overrides(token: &TokenArgs, routes: &[String]) -> Overrides {
    Overrides {
        token: token.token.clone(),
        token_file: token.token_file.clone(),
        env_token: std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty()),
        routes: routes.to_vec(),
        ..Overrides::default()
    }
    .with_host_sources()
}

fn check_config(args: CheckArgs) -> ExitCode {
    init_tracing("warn", LogFormat::Text);
    let overrides = overrides(&args.token, &[]);
    // Unlike `run`, never without a file: checking nothing would say nothing.
    let file = args
        .config
        .or(args.file)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    match ConnectorConfig::load(Some(&file), &overrides) {
        Ok(config) => {
            let findings = config.risky_findings(&Provenance {
                config_file: Some(&file),
                ..Provenance::default()
            });
            risky::print(&findings);
            if findings.iter().any(Finding::is_refusal) {
                return ExitCode::from(EX_USAGE);
            }
            println!("{}: OK", file.display());
            print!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", redact(&error.to_string()));
            ExitCode::from(EX_USAGE)
        }
    }
}

/// The configuration `args` describe: the file (if any), then the flags over it.
fn load(args: &RunArgs, overrides: &Overrides) -> Result<ConnectorConfig, ConfigError> {
    let mut config = ConnectorConfig::load(args.config.as_deref(), overrides)?;
    if args.dangerous_accept_any_edge_certificate {
        config.edge.verification = EdgeVerification::DangerousNoVerify;
    }
    if let Some(addr) = args.admin_listen {
        config.admin_listen = Some(addr);
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if let Some(protocol) = args.protocol {
        config.protocol = protocol;
    }
    Ok(config)
}

/// The risky settings of `config`, loaded from `args` (docs/security.md, "Risky
/// configuration").
fn risky_findings(config: &ConnectorConfig, args: &RunArgs) -> Vec<Finding> {
    config.risky_findings(&Provenance {
        config_file: args.config.as_deref(),
        flag_routes: args.routes.len(),
        admin_flag: args.admin_listen.is_some(),
    })
}

fn run(mut args: RunArgs) -> ExitCode {
    // Where `service install` and the container image put the file.
    if args.config.is_none() {
        args.config = crate::config::default_config_file();
    }
    let overrides = overrides(&args.token, &args.routes);
    let config = match load(&args, &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {}", redact(&error.to_string()));
            return ExitCode::from(EX_USAGE);
        }
    };
    let findings = risky_findings(&config, &args);
    if findings.iter().any(Finding::is_refusal) {
        let refusals: Vec<Finding> = findings.into_iter().filter(Finding::is_refusal).collect();
        risky::print(&refusals);
        return ExitCode::from(EX_USAGE);
    }
    init_tracing("info", config.log_format);
    risky::log_warnings(&findings);
    info!(
        version = underpass_rt::VERSION,
        config = %args.config.as_deref().map_or_else(|| "none".into(), |p| p.display().to_string()),
        token_from = %config.token_source,
        "underpass connector starting"
    );
    let runtime = match runtime(config.worker_threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EX_FAILURE);
        }
    };
    match runtime.block_on(serve(config, &args, &overrides)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "connector failed");
            eprintln!("error: {e}");
            ExitCode::from(EX_FAILURE)
        }
    }
}

/// Run until SIGTERM/SIGINT (drain, then return; a second one exits at once); SIGHUP
/// reloads the configuration.
async fn serve(
    config: ConnectorConfig,
    args: &RunArgs,
    overrides: &Overrides,
) -> Result<(), ConnectorError> {
    let mut signals = Signals::new()
        .map_err(|e| ConnectorError::Supervisor(format!("cannot listen for signals: {e}")))?;
    let mut connector = Connector::new(config)?;
    connector.bind_admin().await?;
    let mut handle = connector.spawn();
    loop {
        tokio::select! {
            result = handle.wait() => return result,
            signal = signals.next() => match signal {
                Signal::Terminate if !handle.is_stopping() => {
                    info!("signal received: draining; a second one exits at once");
                    handle.stop();
                }
                Signal::Terminate => {
                    warn!("second signal: exiting at once");
                    std::process::exit(i32::from(EX_FAILURE));
                }
                Signal::Hangup => reload(&handle, args, overrides),
            },
        }
    }
}

/// SIGHUP: read the configuration again and apply what can be applied; a bad file is refused
/// with its reason and the running configuration kept.
fn reload(handle: &ConnectorHandle, args: &RunArgs, overrides: &Overrides) {
    let Some(path) = &args.config else {
        warn!("SIGHUP: no config file to reload (started without --config); nothing changes");
        return;
    };
    info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let config = match load(args, overrides) {
        Ok(config) => config,
        Err(error) => {
            error!(
                config = %path.display(),
                error = %redact(&error.to_string()),
                "configuration NOT reloaded: the file is invalid; the running configuration is \
                 kept"
            );
            return;
        }
    };
    let findings = risky_findings(&config, args);
    if let Some(refusal) = findings.iter().find(|f| f.is_refusal()) {
        error!(
            config = %path.display(),
            error = %refusal,
            "configuration NOT reloaded: it is refused as risky; the running configuration is \
             kept"
        );
        return;
    }
    risky::log_warnings(&findings);
    let (routes, deny, max_streams) = (config.routes.len(), config.deny.len(), config.max_streams);
    match handle.reload(config) {
        Ok(report) => {
            info!(
                routes,
                deny,
                max_streams,
                routes_changed = report.routes_changed,
                "configuration reloaded: new streams use it"
            );
            if !report.restart_needed.is_empty() {
                warn!(
                    keys = %report.restart_needed.join(", "),
                    "these keys changed but take effect only after a restart; their running \
                     values are kept"
                );
            }
        }
        Err(error) => error!(
            %error,
            "configuration NOT reloaded; the running configuration is kept"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "underpass",
            "run",
            "--admin-listen",
            "127.0.0.1:20241",
            "--log-format",
            "json",
        ])
        .expect("valid flags");
        let Command::Run(args) = cli.command else {
            panic!("run expected");
        };
        assert_eq!(
            args.admin_listen,
            Some("127.0.0.1:20241".parse().expect("addr"))
        );
        assert_eq!(args.log_format, Some(LogFormat::Json));
        assert!(Cli::try_parse_from(["underpass", "run", "--log-format", "xml"]).is_err());
    }
}
