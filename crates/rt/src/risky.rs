//! Risky configuration: settings that work but expose something, found by `check-config` and
//! at start. Each program has its own checks (`config/risky.rs` in the connector and the
//! edge); this module holds what they share: the [`Finding`] they return, how one is printed
//! and logged, and the check of a file's mode ([`FileCheck`]).
//!
//! A finding is a [`Severity::Warning`] when a legitimate deployment may need the setting, and
//! a [`Severity::Refusal`] only where nothing legitimate does (a secret, a config file or a
//! state directory that other users can write): `check-config` then exits 64 and the program
//! does not start. The reasons for each choice are in `docs/security.md` ("Risky
//! configuration").

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::warn;

/// Mode bits: readable by the group, readable by others, writable by others. Writable by the
/// group is not called out: with a private group per user and umask 002 (the default of many
/// distributions) every file a user writes is, and that group is the user alone.
const GROUP_READ: u32 = 0o040;
const OTHER_READ: u32 = 0o004;
const OTHER_WRITE: u32 = 0o002;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Printed (`check-config`) or logged at `warn` (start); the program runs.
    Warning,
    /// The program does not start and `check-config` exits 64.
    Refusal,
}

/// Where a finding is: a file whose mode is at fault, or a setting in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The file named by the key (a token file, `tunnels.json` in `state_dir`).
    File(PathBuf),
    /// The key's value, in this config file (`None`: from the command line).
    Setting(Option<PathBuf>),
}

/// One risky setting: the key and the file, why it is risky, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Warning or refusal.
    pub severity: Severity,
    /// The key as written (`token_file`, `route[0].destination = "0.0.0.0/0"`,
    /// `binding "API": listen = 0.0.0.0:8080`, `state_dir`).
    pub key: String,
    /// The file at fault, or the config file holding the key.
    pub place: Place,
    /// Why it is risky.
    pub risk: String,
    /// What to do about it.
    pub remedy: String,
}

impl Finding {
    /// A finding about a setting in `config` (the file it was read from, if any).
    pub fn setting(
        severity: Severity,
        key: impl Into<String>,
        config: Option<&Path>,
        risk: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            key: key.into(),
            place: Place::Setting(config.map(Path::to_owned)),
            risk: risk.into(),
            remedy: remedy.into(),
        }
    }

    /// The path named: the file at fault or the config file (empty for a command-line flag).
    pub fn path(&self) -> String {
        match &self.place {
            Place::File(path) | Place::Setting(Some(path)) => path.display().to_string(),
            Place::Setting(None) => String::new(),
        }
    }

    /// Whether the program must not start with it.
    pub fn is_refusal(&self) -> bool {
        self.severity == Severity::Refusal
    }
}

impl fmt::Display for Finding {
    /// `token_file /etc/underpass/tunnel.token: mode 0644 lets ...; chmod 600 ...`, or
    /// `route[0].destination = "0.0.0.0/0" in /etc/underpass/connector.toml: ...; ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.place {
            Place::File(path) => write!(f, "{} {}", self.key, path.display())?,
            Place::Setting(Some(path)) => write!(f, "{} in {}", self.key, path.display())?,
            Place::Setting(None) => f.write_str(&self.key)?,
        }
        write!(f, ": {}; {}", self.risk, self.remedy)?;
        if self.is_refusal() {
            f.write_str(" (refused: nothing legitimate needs this)")?;
        }
        Ok(())
    }
}

/// Print `findings` for `check-config` on stderr: `warning: ...` and `error: ...` lines.
pub fn print(findings: &[Finding]) {
    for finding in findings {
        let label = match finding.severity {
            Severity::Warning => "warning",
            Severity::Refusal => "error",
        };
        eprintln!("{label}: {finding}");
    }
}

/// Log the warnings among `findings` at `warn`, once each (at start).
pub fn log_warnings(findings: &[Finding]) {
    for finding in findings.iter().filter(|f| !f.is_refusal()) {
        warn!(
            key = %finding.key,
            path = %finding.path(),
            risk = %finding.risk,
            remedy = %finding.remedy,
            "risky configuration"
        );
    }
}

/// What a checked file is, which decides what its mode may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Holds a secret: no one but its owner should read it.
    Secret,
    /// Anyone may read it, but what it says is trusted (a CA bundle, a config file).
    Trusted,
    /// A directory whose files are trusted: no one but its owner should add or replace one.
    Directory,
}

/// A file to check: the key naming it, the path, what it is and what its mode would expose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    /// The key naming it (`token_file`, `state_dir`, `admin.tls_key`).
    pub key: String,
    /// The file.
    pub path: PathBuf,
    /// What it is.
    pub kind: FileKind,
    /// What a reader gets (for [`FileKind::Secret`]): "the tunnel token: whoever has it ...".
    pub read_risk: &'static str,
    /// What a writer gets: "whoever can write it can send this connector to their own edge".
    pub write_risk: &'static str,
}

/// What [`FileCheck::check`] looks at: a file's permission bits and its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// The permission bits (`0o7777` at most).
    pub mode: u32,
    /// Owned by root (uid 0).
    pub root_owned: bool,
}

impl FileStat {
    /// Permission bits `mode` of a file not owned by root.
    pub fn mode(mode: u32) -> Self {
        FileStat {
            mode,
            root_owned: false,
        }
    }
}

impl FileCheck {
    /// The file's mode and owner now, or `None` when it does not exist or cannot be looked at
    /// (a missing file is created with a private mode; an unreadable one fails elsewhere with
    /// its own error). Follows symbolic links: what counts is the file read.
    pub fn stat(&self) -> Option<FileStat> {
        std::fs::metadata(&self.path).ok().map(|meta| FileStat {
            mode: meta.mode() & 0o7777,
            root_owned: meta.uid() == 0,
        })
    }

    /// The finding for this file, if any. A warning: a secret readable by others, or by the
    /// group unless root owns it (root granting a group read access is deliberate, as for
    /// PostgreSQL's key files and a Kubernetes Secret mounted 0440 for an `fsGroup`). A
    /// refusal: a file (or directory) writable by others.
    pub fn check(&self, stat: FileStat) -> Option<Finding> {
        let FileStat { mode, root_owned } = stat;
        let mut risks = Vec::new();
        let mut severity = Severity::Warning;
        if self.kind == FileKind::Secret {
            let group_read = if root_owned { 0 } else { GROUP_READ };
            if let Some(who) = who(mode, group_read, OTHER_READ) {
                risks.push(format!("{who} can read it: {}", self.read_risk));
            }
        }
        if mode & OTHER_WRITE != 0 {
            severity = Severity::Refusal;
            let what = match self.kind {
                FileKind::Directory => "add or replace files in it",
                FileKind::Secret | FileKind::Trusted => "write it",
            };
            risks.push(format!("other users can {what}: {}", self.write_risk));
        }
        if risks.is_empty() {
            return None;
        }
        let private = match self.kind {
            FileKind::Secret => "600",
            FileKind::Trusted => "644",
            FileKind::Directory => "700",
        };
        let path = self.path.display();
        Some(Finding {
            severity,
            key: self.key.clone(),
            place: Place::File(self.path.clone()),
            risk: format!("mode {mode:04o}: {}", risks.join("; ")),
            remedy: format!("chmod {private} {path}"),
        })
    }

    /// [`FileCheck::check`] on the file as it is now; nothing for a file that does not exist.
    pub fn run(&self) -> Option<Finding> {
        self.stat().and_then(|stat| self.check(stat))
    }
}

/// "the group", "other users" or "the group and other users", by which of the two bits `mode`
/// has.
fn who(mode: u32, group: u32, other: u32) -> Option<&'static str> {
    match (mode & group != 0, mode & other != 0) {
        (true, true) => Some("the group and other users"),
        (true, false) => Some("the group"),
        (false, true) => Some("other users"),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> FileCheck {
        FileCheck {
            key: "token_file".into(),
            path: PathBuf::from("/etc/underpass/tunnel.token"),
            kind: FileKind::Secret,
            read_risk: "it holds the token",
            write_risk: "a new token redirects the connector",
        }
    }

    #[test]
    fn private_modes_are_fine() {
        for mode in [0o600, 0o400, 0o700] {
            assert_eq!(secret().check(FileStat::mode(mode)), None, "{mode:o}");
        }
        // Root letting a group read a secret is deliberate (a Kubernetes Secret, 0440).
        let root = FileStat {
            mode: 0o440,
            root_owned: true,
        };
        assert_eq!(secret().check(root), None);
        let trusted = FileCheck {
            kind: FileKind::Trusted,
            ..secret()
        };
        assert_eq!(trusted.check(FileStat::mode(0o644)), None);
        assert_eq!(trusted.check(FileStat::mode(0o444)), None);
        let dir = FileCheck {
            kind: FileKind::Directory,
            ..secret()
        };
        assert_eq!(dir.check(FileStat::mode(0o755)), None);
        assert_eq!(dir.check(FileStat::mode(0o775)), None);
        assert_eq!(trusted.check(FileStat::mode(0o664)), None);
    }

    #[test]
    fn readable_secrets_are_warnings() {
        let cases = [
            (
                0o644,
                "mode 0644: the group and other users can read it: it holds the token",
            ),
            (0o640, "mode 0640: the group can read it"),
            (0o604, "mode 0604: other users can read it"),
            // Group-writable is not called out (a private group per user, umask 002).
            (
                0o660,
                "mode 0660: the group can read it: it holds the token",
            ),
        ];
        for (mode, expected) in cases {
            let finding = secret().check(FileStat::mode(mode)).expect("a finding");
            assert_eq!(finding.severity, Severity::Warning, "{mode:o}");
            assert!(
                finding.risk.contains(expected),
                "{mode:o}: {}",
                finding.risk
            );
            assert!(
                !finding.risk.contains("write"),
                "{mode:o}: {}",
                finding.risk
            );
            assert_eq!(finding.remedy, "chmod 600 /etc/underpass/tunnel.token");
        }
        // Others reading it is a warning whoever owns it.
        let root = FileStat {
            mode: 0o444,
            root_owned: true,
        };
        let finding = secret().check(root).expect("a finding");
        assert!(
            finding
                .risk
                .starts_with("mode 0444: other users can read it"),
            "{}",
            finding.risk
        );
    }

    #[test]
    fn writable_by_others_is_refused() {
        let finding = secret().check(FileStat::mode(0o666)).expect("a finding");
        assert_eq!(finding.severity, Severity::Refusal);
        assert!(
            finding
                .risk
                .ends_with("; other users can write it: a new token redirects the connector"),
            "{}",
            finding.risk
        );
        let text = finding.to_string();
        assert!(
            text.starts_with("token_file /etc/underpass/tunnel.token: mode 0666: "),
            "{text}"
        );
        assert!(
            text.ends_with("(refused: nothing legitimate needs this)"),
            "{text}"
        );
        let dir = FileCheck {
            kind: FileKind::Directory,
            key: "state_dir".into(),
            ..secret()
        };
        // The sticky bit does not help: others may still add the files the program creates.
        let finding = dir.check(FileStat::mode(0o1777)).expect("a finding");
        assert_eq!(finding.severity, Severity::Refusal);
        assert!(
            finding
                .risk
                .starts_with("mode 1777: other users can add or replace files in it: "),
            "{}",
            finding.risk
        );
        assert!(finding.remedy.starts_with("chmod 700 "));
    }

    #[test]
    fn settings_name_the_key_and_the_config_file() {
        let finding = Finding::setting(
            Severity::Warning,
            "route[0].destination = \"0.0.0.0/0\"",
            Some(Path::new("/etc/underpass/connector.toml")),
            "every IPv4 address",
            "route only the networks needed",
        );
        assert_eq!(
            finding.to_string(),
            "route[0].destination = \"0.0.0.0/0\" in /etc/underpass/connector.toml: every \
             IPv4 address; route only the networks needed"
        );
        assert_eq!(finding.path(), "/etc/underpass/connector.toml");
        let flag = Finding::setting(Severity::Warning, "--route ::/0", None, "r", "m");
        assert_eq!(flag.to_string(), "--route ::/0: r; m");
        assert_eq!(flag.path(), "");
    }
}
