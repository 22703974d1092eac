//! `underpass service install` and `underpass service uninstall`: put the systemd unit, the
//! config file and the token where the unit expects them, and take them away again.
//!
//! Neither runs `systemctl`: both print the commands to run next. That keeps an install into a
//! directory (`--root`, for an image, a chroot or a test) the same code path as an install on
//! the host, and leaves starting a network daemon to the operator.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use underpass_proto::{TokenError, TunnelToken};
use underpass_rt::{EX_FAILURE, EX_USAGE};

use crate::config::{
    redact, ConfigError, ConnectorConfig, Overrides, DEFAULT_CONFIG_FILE, TOKEN_ENV,
};

/// The unit file shipped in `deploy/systemd/`, installed as is (but see [`UNIT_BINARY`]).
pub const UNIT: &str = include_str!("../../../deploy/systemd/underpass.service");

/// Where [`UNIT`]'s `Exec*=` lines expect the binary. An install on the host (`--root /`)
/// from a binary somewhere else points them at that binary instead, as `cloudflared service
/// install` does: a unit naming a path that does not exist would fail at every start with
/// status 203/EXEC. An install under another root keeps this path, because the running
/// binary's path means nothing on the system that root becomes.
pub const UNIT_BINARY: &str = "/usr/local/bin/underpass";

/// The unit, relative to the root.
pub const UNIT_PATH: &str = "etc/systemd/system/underpass.service";
/// The token, relative to the root (the unit's `LoadCredential=token:` source).
pub const TOKEN_PATH: &str = "etc/underpass/tunnel.token";

const HELP: &str = "\
Files written (under --root, default /):
  etc/systemd/system/underpass.service  the unit (mode 0644)
  etc/underpass/connector.toml          the config: a copy of --config, or generated from
                                        --route and --admin-listen (mode 0644, no token in it)
  etc/underpass/tunnel.token            the token (mode 0600), passed to the service as the
                                        systemd credential `token` (LoadCredential=)

The token comes from --token, --token-file or UNDERPASS_TOKEN, in that order; it is checked
and never printed. Existing files are kept unless --force is given. systemctl is never run:
the commands to run next are printed.

Exit status: 0 installed or removed; 64 bad command line, token, route or config file;
1 a file cannot be read or written, or exists already (without --force).";

/// `underpass service`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install the systemd unit, the config file and the token (never runs systemctl).
    #[command(after_long_help = HELP)]
    Install(InstallArgs),
    /// Remove what `service install` wrote. Run `systemctl disable --now underpass` first.
    Uninstall(UninstallArgs),
}

/// `underpass service install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Read the tunnel token from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The tunnel token (`upt1_...`). Prefer --token-file or UNDERPASS_TOKEN: command lines
    /// are visible to other users of the host.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Install a copy of this config file instead of generating one. It must not set `token`
    /// or `token_file`.
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["routes", "admin_listen"])]
    pub config: Option<PathBuf>,
    /// A route for the generated config file: `CIDR`, `IP`, `HOST` or `*.SUFFIX`, optionally
    /// `=PORTS` (`10.0.0.0/8`, `db.internal=5432`). Repeatable.
    #[arg(long = "route", value_name = "DEST[=PORTS]")]
    pub routes: Vec<String>,
    /// `[admin] listen` of the generated config file (127.0.0.1:20241 is the documented
    /// choice).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Install under this directory instead of `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Overwrite files that exist already.
    #[arg(long)]
    pub force: bool,
}

/// `underpass service uninstall`.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Remove from under this directory instead of `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Remove the files even though the unit is still enabled.
    #[arg(long)]
    pub force: bool,
}

/// Why an install or an uninstall did not happen. Messages name the path or flag at fault and
/// never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No token was given.
    #[error("no tunnel token: pass --token-file FILE (or --token TOKEN, or set {TOKEN_ENV})")]
    NoToken,
    /// The token given does not decode.
    #[error("the token from {from} is not a tunnel token: {reason}")]
    BadToken {
        /// Where it came from (`--token-file FILE`, `--token`, `UNDERPASS_TOKEN`).
        from: String,
        /// Why it does not decode.
        reason: TokenError,
    },
    /// A `--route` flag or the config file to copy is invalid.
    #[error("{}", redact(&.0.to_string()))]
    Config(ConfigError),
    /// The config file to copy sets the token itself, which would win over the credential.
    #[error(
        "{}: sets `{key}`, which would win over the token the unit passes as a credential \
         (and the service's dynamic user cannot read a root-only token file); remove it, \
         the token goes to /{TOKEN_PATH}",
        path.display()
    )]
    ConfigHasToken {
        /// The config file.
        path: PathBuf,
        /// `token` or `token_file`.
        key: &'static str,
    },
    /// The running binary is somewhere the unit cannot execute it from.
    #[error(
        "the unit cannot run {}: {reason}; install the binary first \
         (install -m 0755 {} {UNIT_BINARY}) and run that one",
        path.display(),
        path.display()
    )]
    Executable {
        /// The binary.
        path: PathBuf,
        /// Why the unit cannot run it.
        reason: String,
    },
    /// Files exist and `--force` was not given.
    #[error("already exists: {}; pass --force to overwrite", list(.0))]
    Exists(Vec<PathBuf>),
    /// The unit is still enabled (a `*.wants/underpass.service` link exists).
    #[error(
        "underpass is still enabled ({}): run `systemctl disable --now underpass` first, or \
         pass --force",
        .0.display()
    )]
    Enabled(PathBuf),
    /// A file or directory could not be read, written or removed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `read`, `write`, `create directory`, `remove`.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl ServiceError {
    /// The exit status: 64 for what the command line got wrong, 1 for the file system.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServiceError::Exists(_) | ServiceError::Enabled(_) | ServiceError::Io { .. } => {
                EX_FAILURE
            }
            _ => EX_USAGE,
        }
    }
}

/// Run a `service` subcommand; prints what it did (stdout) or why not (stderr).
pub fn main(command: ServiceCommand) -> ExitCode {
    let result = match command {
        ServiceCommand::Install(args) => install(&args),
        ServiceCommand::Uninstall(args) => uninstall(&args),
    };
    match result {
        Ok(report) => {
            // Printing to a closed terminal is not worth failing over.
            let _ = io::stdout().write_all(report.as_bytes());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Install; returns the report to print. Everything is checked before anything is written.
pub fn install(args: &InstallArgs) -> Result<String, ServiceError> {
    let (token_text, token) = install_token(args)?;
    let config_path = args.root.join(config_rel());
    let (config_text, config_summary) = match &args.config {
        Some(path) => (
            copied_config(path, &token_text)?,
            format!("copy of {}", path.display()),
        ),
        None => generated_config(&args.routes, args.admin_listen, &token_text, &config_path)?,
    };
    let unit = if is_host_root(&args.root) {
        let binary = std::env::current_exe()
            .and_then(fs::canonicalize)
            .map_err(|source| ServiceError::Io {
                action: "locate",
                path: PathBuf::from("this binary"),
                source,
            })?;
        // It is running, so it exists; a mode that cannot be read is not worth refusing over.
        let mode = fs::metadata(&binary)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o755);
        executable_check(&binary, mode, UNIT)?;
        unit_text(UNIT, &binary)
    } else {
        UNIT.to_owned()
    };
    let unit_path = args.root.join(UNIT_PATH);
    let token_path = args.root.join(TOKEN_PATH);
    if !args.force {
        let existing: Vec<PathBuf> = [&unit_path, &config_path, &token_path]
            .into_iter()
            .filter(|path| path.symlink_metadata().is_ok())
            .cloned()
            .collect();
        if !existing.is_empty() {
            return Err(ServiceError::Exists(existing));
        }
    }
    // The unit last, so that a daemon-reload never sees it without its files.
    for (path, text, mode) in [
        (&config_path, config_text.as_str(), 0o644),
        (&token_path, &format!("{}\n", token_text.trim()), 0o600),
        (&unit_path, unit.as_str(), 0o644),
    ] {
        if let Some(dir) = path.parent() {
            create_dirs(dir)?;
        }
        write_file(path, text, mode)?;
    }

    let mut report = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(report, "wrote {} (mode 0644)", unit_path.display());
    let _ = writeln!(
        report,
        "wrote {} (mode 0644, {config_summary})",
        config_path.display()
    );
    let _ = writeln!(
        report,
        "wrote {} (mode 0600, tunnel {})",
        token_path.display(),
        hex::encode(token.tunnel_id.0)
    );
    if args.config.is_none() && args.routes.is_empty() {
        let _ = writeln!(
            report,
            "note: no --route: every stream is refused until {} has a [[route]]",
            config_path.display()
        );
    }
    if !is_host_root(&args.root) && !args.root.join(&UNIT_BINARY[1..]).exists() {
        let _ = writeln!(
            report,
            "note: the unit runs {UNIT_BINARY}, which is not under {} yet",
            args.root.display()
        );
    }
    report.push_str(
        "\nNext, as root:\n  systemctl daemon-reload\n  systemctl enable --now underpass\n  \
         systemctl status underpass\n  journalctl -u underpass\n",
    );
    Ok(report)
}

/// Uninstall; returns the report to print.
pub fn uninstall(args: &UninstallArgs) -> Result<String, ServiceError> {
    if !args.force {
        if let Some(link) = enabled_link(&args.root.join(UNIT_PATH)) {
            return Err(ServiceError::Enabled(link));
        }
    }
    let mut report = String::new();
    let mut removed = 0;
    for rel in [UNIT_PATH, config_rel(), TOKEN_PATH] {
        let path = args.root.join(rel);
        match fs::remove_file(&path) {
            Ok(()) => {
                removed += 1;
                let _ = writeln!(report, "removed {}", path.display());
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let _ = writeln!(report, "not present: {}", path.display());
            }
            Err(source) => {
                return Err(ServiceError::Io {
                    action: "remove",
                    path,
                    source,
                })
            }
        }
    }
    // Only when empty: anything else in it is the operator's.
    let dir = args.root.join(TOKEN_PATH);
    if let Some(dir) = dir.parent() {
        if fs::remove_dir(dir).is_ok() {
            let _ = writeln!(report, "removed {} (empty)", dir.display());
        }
    }
    if removed > 0 {
        report.push_str(
            "\nIf the service still runs: systemctl stop underpass\nThen, as root:\n  \
             systemctl daemon-reload\n",
        );
    }
    Ok(report)
}

/// The config file's path relative to the root: where `run` looks without `--config`.
fn config_rel() -> &'static str {
    DEFAULT_CONFIG_FILE.trim_start_matches('/')
}

/// The token text and the token it decodes to, from `--token`, `--token-file` or the
/// environment.
fn install_token(args: &InstallArgs) -> Result<(String, TunnelToken), ServiceError> {
    let (text, from) = if let Some(text) = &args.token {
        (text.clone(), "--token".to_owned())
    } else if let Some(path) = &args.token_file {
        let text = fs::read_to_string(path).map_err(|source| ServiceError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        (text, format!("--token-file {}", path.display()))
    } else {
        match std::env::var(TOKEN_ENV) {
            Ok(text) if !text.trim().is_empty() => (text, TOKEN_ENV.to_owned()),
            _ => return Err(ServiceError::NoToken),
        }
    };
    let token =
        TunnelToken::decode(&text).map_err(|reason| ServiceError::BadToken { from, reason })?;
    Ok((text.trim().to_owned(), token))
}

/// The text of the config file to copy, checked as `check-config` would check it (with the
/// token to install standing in for the token sources).
fn copied_config(path: &Path, token: &str) -> Result<String, ServiceError> {
    let text = fs::read_to_string(path).map_err(|source| ServiceError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    ConnectorConfig::from_toml(&text, path, base, &token_override(token, &[]))
        .map_err(ServiceError::Config)?;
    // It parsed, so it is a table; the keys are checked here because the token override
    // above hides them from validation.
    let table: toml::Table = text.parse().unwrap_or_default();
    for key in ["token", "token_file"] {
        if table.contains_key(key) {
            return Err(ServiceError::ConfigHasToken {
                path: path.to_owned(),
                key,
            });
        }
    }
    Ok(text)
}

/// A config file with `routes` and `admin`, and a summary of it for the report.
fn generated_config(
    routes: &[String],
    admin: Option<SocketAddr>,
    token: &str,
    path: &Path,
) -> Result<(String, String), ServiceError> {
    // First as flags, so that an error names the flag rather than a line of a generated file.
    ConnectorConfig::load(None, &token_override(token, routes)).map_err(ServiceError::Config)?;
    let mut text = format!(
        "# Underpass connector configuration, written by `underpass service install`.\n\
         # Every key with its default: deploy/connector.example.toml; reference: \
         docs/connector.md.\n\
         # Check it after editing: underpass check-config --config {DEFAULT_CONFIG_FILE}\n\
         #\n\
         # No `token` or `token_file` here: the token is in /{TOKEN_PATH} (mode\n\
         # 0600), which the unit passes to the service as the systemd credential `token`; a\n\
         # key here would win over it.\n"
    );
    if routes.is_empty() {
        text.push_str(
            "\n# No routes yet: every stream is refused until there is a [[route]], e.g.\n\
             # [[route]]\n# destination = \"10.0.1.0/24\"\n# ports = \"80,443\"\n",
        );
    }
    for route in routes {
        let (destination, ports) = match route.split_once('=') {
            Some((destination, ports)) => (destination, Some(ports)),
            None => (route.as_str(), None),
        };
        let _ = write!(
            text,
            "\n[[route]]\ndestination = {}\n",
            toml_string(destination)
        );
        if let Some(ports) = ports {
            let _ = writeln!(text, "ports = {}", toml_string(ports));
        }
    }
    match admin {
        Some(addr) => {
            let _ = write!(
                text,
                "\n[admin]\nlisten = {}\n",
                toml_string(&addr.to_string())
            );
        }
        None => text.push_str(
            "\n# /healthz, /ready and /metrics:\n# [admin]\n# listen = \"127.0.0.1:20241\"\n",
        ),
    }
    // What `check-config` will say of the file; failing here would be a bug above.
    let base = path.parent().unwrap_or(Path::new("."));
    ConnectorConfig::from_toml(&text, path, base, &token_override(token, &[]))
        .map_err(ServiceError::Config)?;
    let summary = format!("{} route(s)", routes.len());
    Ok((text, summary))
}

fn token_override(token: &str, routes: &[String]) -> Overrides {
    Overrides {
        token: Some(token.to_owned()),
        routes: routes.to_vec(),
        ..Overrides::default()
    }
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Whether `root` is this host's `/` (then the unit runs this binary).
fn is_host_root(root: &Path) -> bool {
    fs::canonicalize(root).is_ok_and(|root| root == Path::new("/"))
}

/// Refuse a binary the unit could not execute: one the unit's own sandbox hides, one other
/// users cannot execute (the unit runs it as a dynamic user), or a path that would need
/// quoting in an `Exec*=` line.
fn executable_check(binary: &Path, mode: u32, unit: &str) -> Result<(), ServiceError> {
    let fail = |reason: String| ServiceError::Executable {
        path: binary.to_owned(),
        reason,
    };
    let text = binary.to_str().unwrap_or_default();
    if text.is_empty()
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
    {
        return Err(fail("its path would need quoting in ExecStart=".to_owned()));
    }
    let set = |key: &str| {
        unit.lines()
            .filter_map(|line| line.trim().strip_prefix(key))
            .any(|value| matches!(value.trim(), "yes" | "true" | "tmpfs"))
    };
    let mut hidden = Vec::new();
    if set("ProtectHome=") {
        hidden.push((
            "ProtectHome=",
            ["/home/", "/root/", "/run/user/"].as_slice(),
        ));
    }
    if set("PrivateTmp=") {
        hidden.push(("PrivateTmp=", ["/tmp/", "/var/tmp/"].as_slice()));
    }
    for (key, prefixes) in hidden {
        if let Some(prefix) = prefixes.iter().find(|prefix| text.starts_with(**prefix)) {
            return Err(fail(format!(
                "the unit's {key} hides {prefix} from the service"
            )));
        }
    }
    if mode & 0o001 == 0 {
        return Err(fail(format!(
            "its mode {:04o} does not let the service's dynamic user execute it",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// `unit` with its `Exec*=` lines running `binary` instead of [`UNIT_BINARY`].
fn unit_text(unit: &str, binary: &Path) -> String {
    let binary = binary.to_string_lossy();
    let mut out = String::with_capacity(unit.len());
    for line in unit.split_inclusive('\n') {
        if line.trim_start().starts_with("Exec") {
            out.push_str(&line.replace(UNIT_BINARY, &binary));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// A link `systemctl enable` made for `unit` (`*.wants/NAME` or `*.requires/NAME` next to it).
fn enabled_link(unit: &Path) -> Option<PathBuf> {
    let dir = unit.parent()?;
    let name = unit.file_name()?;
    fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let link = entry.path().join(name);
        ((file.ends_with(".wants") || file.ends_with(".requires"))
            && link.symlink_metadata().is_ok())
        .then_some(link)
    })
}

/// Create `dir` and its missing parents with mode 0755 (whatever the umask: the service's
/// dynamic user must be able to enter them).
fn create_dirs(dir: &Path) -> Result<(), ServiceError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    let io_error = |source| ServiceError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    };
    match DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_error),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(error) => Err(io_error(error)),
    }
}

/// Write `path` atomically with `mode`: a temporary file next to it, created 0600 (so that the
/// token is never readable by others, not even for a moment), then renamed over it.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), ServiceError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&temporary);
        ServiceError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        }
    })
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_binary_it_is_rewritten_for() {
        assert!(UNIT
            .lines()
            .any(|l| l.starts_with("ExecStart=") && l.contains(UNIT_BINARY)));
        let unit = unit_text(UNIT, Path::new("/opt/underpass/bin/underpass"));
        // Comments (the install steps at the top) keep the path.
        assert!(
            !unit
                .lines()
                .any(|l| l.starts_with("Exec") && l.contains(UNIT_BINARY)),
            "{unit}"
        );
        assert!(
            unit.contains("ExecStart=/opt/underpass/bin/underpass "),
            "{unit}"
        );
        // Nothing but the Exec lines changes.
        assert_eq!(unit.lines().count(), UNIT.lines().count());
    }

    #[test]
    fn binaries_the_unit_cannot_run_are_refused() {
        let unit = "[Service]\nProtectHome=yes\nPrivateTmp=yes\n";
        assert!(executable_check(Path::new("/usr/bin/underpass"), 0o755, unit).is_ok());
        for (path, mode, reason) in [
            ("/home/me/target/release/underpass", 0o755, "ProtectHome="),
            ("/root/underpass", 0o755, "ProtectHome="),
            ("/tmp/underpass", 0o755, "PrivateTmp="),
            ("/opt/my underpass", 0o755, "quoting"),
            ("/opt/underpass%i", 0o755, "quoting"),
            ("/usr/bin/underpass", 0o750, "0750"),
        ] {
            let error = executable_check(Path::new(path), mode, unit).unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains(reason) && message.contains(path),
                "{message}"
            );
            assert_eq!(error.exit_code(), EX_USAGE);
        }
        // Without the sandbox options, /home is fine.
        assert!(executable_check(Path::new("/home/me/underpass"), 0o755, "").is_ok());
    }

    #[test]
    fn toml_strings_round_trip() {
        for text in ["10.0.0.0/8", "a\"b", "x'y\\z", "line\nbreak"] {
            let table: toml::Table = format!("key = {}", toml_string(text)).parse().unwrap();
            assert_eq!(table["key"].as_str(), Some(text));
        }
    }
}
