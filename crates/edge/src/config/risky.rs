//! Risky configuration of an edge: what `check-config` prints and `serve` logs at start
//! ([`underpass_rt::risky`]). Every check is a pure function of the loaded configuration and,
//! for files, of their permission bits; [`EdgeConfig::risky_findings`] looks the bits up.
//!
//! Warnings: a secret in the state directory (`tunnels.json`, `directory.db`, the PKI keys,
//! `reset.key`) or `admin.tls_key` readable by the group or others, a binding listening beyond
//! loopback (a production edge may do that on purpose), the admin listener beyond loopback
//! without TLS. Refusals: the state directory, a file in it, the config file or a CA or key
//! file others can write.

use std::path::Path;

use underpass_rt::risky::{FileCheck, FileKind, Finding, Severity};

use super::file::EdgeConfig;
use crate::db::DATABASE_FILE;
use crate::state::{CA_CERT, CA_KEY, EDGE_CHAIN, EDGE_KEY, EDGE_NAMES, RESET_KEY};
use crate::tunnels::TUNNELS_FILE;

const PKI_WRITE_RISK: &str = "whoever can write it can replace the edge's certificate or CA \
                              (and with the CA, the pin new tokens carry) and impersonate the \
                              edge to connectors";
const DIRECTORY_READ_RISK: &str = "it holds the tunnel secrets and API token hashes of the \
                                   directory API's objects, and whoever has a tunnel secret can \
                                   register connectors that receive the tunnel's traffic";
const DIRECTORY_WRITE_RISK: &str = "whoever can write it can add API tokens, tunnels and \
                                    bindings";

/// The files of the state directory worth checking: name, kind, read risk, write risk.
const STATE_FILES: &[(&str, FileKind, &str, &str)] = &[
    (
        TUNNELS_FILE,
        FileKind::Secret,
        "it holds the tunnel secrets, and whoever has one can make that tunnel's token and \
         register connectors that receive the traffic of its bindings",
        "whoever can write it can add a tunnel or change a secret, and register connectors \
         that receive the bindings' traffic",
    ),
    (
        DATABASE_FILE,
        FileKind::Secret,
        DIRECTORY_READ_RISK,
        DIRECTORY_WRITE_RISK,
    ),
    (
        "directory.db-wal",
        FileKind::Secret,
        DIRECTORY_READ_RISK,
        DIRECTORY_WRITE_RISK,
    ),
    (
        CA_KEY,
        FileKind::Secret,
        "it is the CA key, and whoever has it can issue edge certificates every connector of \
         this edge trusts",
        PKI_WRITE_RISK,
    ),
    (
        EDGE_KEY,
        FileKind::Secret,
        "it is the edge's TLS key, and whoever has it can impersonate the edge to connectors",
        PKI_WRITE_RISK,
    ),
    (
        RESET_KEY,
        FileKind::Secret,
        "it is the QUIC stateless-reset key, and whoever has it can cut the edge's connections \
         from the network path",
        "whoever can write it can choose the key, and cut the edge's connections from the \
         network path",
    ),
    (CA_CERT, FileKind::Trusted, "", PKI_WRITE_RISK),
    (EDGE_CHAIN, FileKind::Trusted, "", PKI_WRITE_RISK),
    (EDGE_NAMES, FileKind::Trusted, "", PKI_WRITE_RISK),
];

impl EdgeConfig {
    /// Every risky setting of this configuration (read from `config_file`, if given), the
    /// files' modes looked up now (a file that does not exist yet is created private and is
    /// not checked). Refusals first.
    pub fn risky_findings(&self, config_file: Option<&Path>) -> Vec<Finding> {
        let mut findings: Vec<Finding> = file_checks(self, config_file)
            .iter()
            .filter_map(FileCheck::run)
            .collect();
        findings.extend(setting_findings(self, config_file));
        findings.sort_by_key(|finding| std::cmp::Reverse(finding.severity));
        findings
    }
}

/// The files whose modes matter: the config file, the state directory and its files, the
/// admin listener's certificate and key, the services' CA bundles.
fn file_checks(config: &EdgeConfig, config_file: Option<&Path>) -> Vec<FileCheck> {
    let mut checks = Vec::new();
    if let Some(path) = config_file {
        checks.push(FileCheck {
            key: "config file".to_owned(),
            path: path.to_owned(),
            kind: FileKind::Trusted,
            read_risk: "",
            write_risk: "whoever can write it can add bindings, services and networks, and the \
                         edge serves what it says",
        });
    }
    checks.push(FileCheck {
        key: "state_dir".to_owned(),
        path: config.state_dir.clone(),
        kind: FileKind::Directory,
        read_risk: "",
        write_risk: "the edge trusts the tunnels, keys and database it finds there",
    });
    for &(name, kind, read_risk, write_risk) in STATE_FILES {
        checks.push(FileCheck {
            key: "state_dir".to_owned(),
            path: config.state_dir.join(name),
            kind,
            read_risk,
            write_risk,
        });
    }
    if let Some(path) = &config.admin.tls_key {
        checks.push(FileCheck {
            key: "admin.tls_key".to_owned(),
            path: path.clone(),
            kind: FileKind::Secret,
            read_risk: "it is the admin listener's TLS key, and whoever has it can impersonate \
                        the admin listener and collect the API tokens sent to it",
            write_risk: "whoever can write it can replace the admin listener's identity",
        });
    }
    if let Some(path) = &config.admin.tls_cert {
        checks.push(FileCheck {
            key: "admin.tls_cert".to_owned(),
            path: path.clone(),
            kind: FileKind::Trusted,
            read_risk: "",
            write_risk: "whoever can write it can replace the admin listener's identity",
        });
    }
    for service in &config.services {
        if let Some(path) = &service.tls.ca_file {
            checks.push(FileCheck {
                key: format!("service {:?}: tls.ca_file", service.name),
                path: path.clone(),
                kind: FileKind::Trusted,
                read_risk: "",
                write_risk: "whoever can write it can add a CA the connector then trusts for \
                             this service, and read or change its HTTPS traffic",
            });
        }
    }
    checks
}

/// The findings about values in the configuration (no file is looked at).
fn setting_findings(config: &EdgeConfig, config_file: Option<&Path>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for binding in &config.bindings {
        if binding.listen.ip().to_canonical().is_loopback() {
            continue;
        }
        let target = match (&binding.network, &binding.service) {
            (Some(network), _) => format!("every destination of network {network:?}"),
            (None, Some(service)) => format!("service {service:?}"),
            (None, None) => "what it serves".to_owned(),
        };
        findings.push(Finding::setting(
            Severity::Warning,
            format!(
                "binding {:?}: listen = \"{}\"",
                binding.name, binding.listen
            ),
            config_file,
            format!(
                "the binding listens beyond loopback and has no authentication: anyone who can \
                 reach {} reaches {target}",
                binding.listen
            ),
            "listen on 127.0.0.1 next to the Workers runtime; if other hosts must reach it, \
             firewall the port to them",
        ));
    }
    if let Some(addr) = config.admin.listen {
        if !addr.ip().to_canonical().is_loopback() && config.admin.tls_cert.is_none() {
            findings.push(Finding::setting(
                Severity::Warning,
                format!("admin.listen = \"{addr}\""),
                config_file,
                "the admin listener is beyond loopback without TLS: the directory API's bearer \
                 tokens, and the tunnel tokens and secrets it returns, cross the network in \
                 clear text",
                "set admin.tls_cert and admin.tls_key, or listen on 127.0.0.1",
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use underpass_rt::risky::FileStat;

    use super::super::file::{AdminConfig, BindingConfig};
    use super::*;

    const CONFIG: &str = "/etc/underpass/edge.toml";

    fn config() -> EdgeConfig {
        EdgeConfig::new("/var/lib/underpass")
    }

    fn keys(findings: &[Finding]) -> Vec<String> {
        findings.iter().map(|f| f.key.clone()).collect()
    }

    #[test]
    fn loopback_listeners_have_no_findings() {
        let mut config = config();
        config.bindings.push(BindingConfig::network(
            "NET",
            "127.0.0.1:8080".parse().unwrap(), // literal
            "corp",
        ));
        config.bindings.push(BindingConfig::service(
            "API",
            "[::1]:8081".parse().unwrap(), // literal
            "api",
        ));
        config.admin.listen = Some("127.0.0.1:20242".parse().unwrap()); // literal
        assert_eq!(setting_findings(&config, Some(Path::new(CONFIG))), vec![]);
    }

    #[test]
    fn a_binding_beyond_loopback_is_a_warning() {
        let mut config = config();
        config.bindings.push(BindingConfig::network(
            "NET",
            "0.0.0.0:8080".parse().unwrap(), // literal
            "corp",
        ));
        let found = setting_findings(&config, Some(Path::new(CONFIG)));
        assert_eq!(keys(&found), ["binding \"NET\": listen = \"0.0.0.0:8080\""]);
        assert_eq!(found[0].severity, Severity::Warning);
        assert!(
            found[0].risk.contains("network \"corp\""),
            "{}",
            found[0].risk
        );
        assert!(found[0].to_string().starts_with(&format!(
            "binding \"NET\": listen = \"0.0.0.0:8080\" in {CONFIG}: "
        )));
    }

    #[test]
    fn an_admin_listener_beyond_loopback_needs_tls() {
        let mut config = config();
        config.admin.listen = Some("0.0.0.0:20242".parse().unwrap()); // literal
        let found = setting_findings(&config, None);
        assert_eq!(keys(&found), ["admin.listen = \"0.0.0.0:20242\""]);
        assert_eq!(found[0].severity, Severity::Warning);
        config.admin = AdminConfig {
            tls_cert: Some(PathBuf::from("/etc/underpass/admin.pem")),
            tls_key: Some(PathBuf::from("/etc/underpass/admin.key")),
            ..config.admin
        };
        assert_eq!(setting_findings(&config, None), vec![]);
    }

    #[test]
    fn state_files_are_checked_by_kind() {
        let mut config = config();
        config.admin.tls_key = Some(PathBuf::from("/etc/underpass/admin.key"));
        let checks = file_checks(&config, Some(Path::new(CONFIG)));
        let find = |path: &str| {
            checks
                .iter()
                .find(|c| c.path == Path::new(path))
                .unwrap_or_else(|| panic!("{path} is checked"))
        };
        let tunnels = find("/var/lib/underpass/tunnels.json");
        assert_eq!(tunnels.key, "state_dir");
        assert_eq!(tunnels.check(FileStat::mode(0o600)), None);
        let read = tunnels
            .check(FileStat::mode(0o640))
            .expect("readable by the group");
        assert_eq!(read.severity, Severity::Warning);
        assert!(read.risk.contains("tunnel secrets"), "{}", read.risk);
        assert!(read
            .to_string()
            .starts_with("state_dir /var/lib/underpass/tunnels.json: mode 0640: "));
        for path in [
            "/var/lib/underpass/directory.db",
            "/var/lib/underpass/ca.key",
            "/var/lib/underpass/edge.key",
            "/var/lib/underpass/reset.key",
            "/etc/underpass/admin.key",
        ] {
            assert!(find(path).check(FileStat::mode(0o644)).is_some(), "{path}");
            assert_eq!(
                find(path).check(FileStat::mode(0o622)).map(|f| f.severity),
                Some(Severity::Refusal),
                "{path}"
            );
        }
        // Certificates are public; the config file too; neither may be written by others.
        for path in ["/var/lib/underpass/ca.pem", CONFIG] {
            assert_eq!(find(path).check(FileStat::mode(0o644)), None, "{path}");
            assert_eq!(
                find(path).check(FileStat::mode(0o666)).map(|f| f.severity),
                Some(Severity::Refusal),
                "{path}"
            );
        }
        let dir = find("/var/lib/underpass");
        assert_eq!(dir.check(FileStat::mode(0o755)), None);
        assert_eq!(dir.check(FileStat::mode(0o775)), None);
        assert_eq!(
            dir.check(FileStat::mode(0o777)).map(|f| f.severity),
            Some(Severity::Refusal)
        );
    }
}
