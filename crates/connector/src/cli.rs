//! The `underpass` command line.
//!
//! Exit status: 0 on success, 64 ([`EX_USAGE`]) for a bad command line or configuration, 1
//! ([`EX_FAILURE`]) when the connector fails at run time; the same as the edge's.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing::error;
use underpass_rt::{init_tracing, runtime, terminate_signal, EX_FAILURE, EX_USAGE};
use underpass_transport::tls::EdgeVerification;

use crate::config::{ConnectorConfig, Overrides, TOKEN_ENV};
use crate::supervisor;

/// Underpass connector: dials out to the edge and serves binding traffic to private services.
#[derive(Debug, Parser)]
#[command(name = "underpass", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to the edge and serve until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Validate a config file and print a summary, without connecting.
    CheckConfig(CheckArgs),
}

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
}

/// `underpass check-config`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
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
    init_tracing("info");
    match cli.command {
        Command::CheckConfig(args) => check_config(args),
        Command::Run(args) => run(args),
    }
}

fn overrides(token: TokenArgs, routes: Vec<String>) -> Overrides {
    Overrides {
        token: token.token,
        token_file: token.token_file,
        env_token: std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty()),
        routes,
    }
}

fn check_config(args: CheckArgs) -> ExitCode {
    let overrides = overrides(args.token, Vec::new());
    match ConnectorConfig::load(Some(&args.file), &overrides) {
        Ok(config) => {
            println!("{}: OK", args.file.display());
            print!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EX_USAGE)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let overrides = overrides(args.token, args.routes);
    let mut config = match ConnectorConfig::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.dangerous_accept_any_edge_certificate {
        config.edge.verification = EdgeVerification::DangerousNoVerify;
    }
    let runtime = match runtime(config.worker_threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EX_FAILURE);
        }
    };
    match runtime.block_on(supervisor::run(config, terminate_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "connector failed");
            ExitCode::from(EX_FAILURE)
        }
    }
}
