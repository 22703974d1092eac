//! Risky configuration of a connector: what `check-config` prints and `run` logs at start
//! ([`underpass_rt::risky`]). Every check is a pure function of the loaded configuration and,
//! for files, of their permission bits; [`ConnectorConfig::risky_findings`] looks the bits up.
//!
//! Warnings: a secret (the token file, or a config file holding `token`) readable by the group
//! or others, a route to every IPv4 or IPv6 address, a wildcard over a whole top-level domain, a cloud metadata endpoint routed but not denied, one of the
//! connector's own resolvers inside the deny list, an admin listener beyond loopback.
//! Refusals: the token file or the config file writable by others.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use underpass_routes::{canonical_ip, canonical_net, special_range, HostPattern, RouteSpec};
use underpass_rt::risky::{FileCheck, FileKind, Finding, Severity};

use super::{ConnectorConfig, Route, TokenSource};

/// The port cloud instance metadata services answer on.
const METADATA_PORT: u16 = 80;

/// Top-level labels meant for private or special use (RFC 6761, RFC 6762 appendix G, ICANN's
/// `.internal`): a wildcard over one of them stays inside the private network.
const PRIVATE_TLDS: &[&str] = &[
    "internal",
    "local",
    "localhost",
    "localdomain",
    "test",
    "example",
    "invalid",
    "lan",
    "home",
    "corp",
    "intranet",
    "private",
];

const TOKEN_READ_RISK: &str = "it holds the tunnel token, and whoever has the token can \
                               register as this tunnel's connector and receive the streams \
                               meant for it";
const TOKEN_WRITE_RISK: &str = "whoever can write it can swap in a token of theirs (it names \
                                the edge and its CA pin) and have this connector serve the \
                                private network to their edge";
const CONFIG_WRITE_RISK: &str = "whoever can write it can add routes, empty the deny list or \
                                 change the edge, and the connector serves what it says";

/// Where the settings came from, so that a finding names the key as the operator wrote it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Provenance<'a> {
    /// The config file, if there is one.
    pub config_file: Option<&'a Path>,
    /// How many of the routes came from `--route` flags (the last ones).
    pub flag_routes: usize,
    /// `admin_listen` came from `--admin-listen`.
    pub admin_flag: bool,
}

impl ConnectorConfig {
    /// Every risky setting of this configuration, the files' modes looked up now (a file
    /// that does not exist is not checked). Refusals first.
    pub fn risky_findings(&self, provenance: &Provenance<'_>) -> Vec<Finding> {
        let mut findings: Vec<Finding> = file_checks(self, provenance.config_file)
            .iter()
            .filter_map(FileCheck::run)
            .collect();
        findings.extend(setting_findings(self, provenance));
        findings.sort_by_key(|finding| std::cmp::Reverse(finding.severity));
        findings
    }
}

/// The files whose modes matter: where the token came from, and the config file.
fn file_checks(config: &ConnectorConfig, config_file: Option<&Path>) -> Vec<FileCheck> {
    let token = |key: &str, path: &PathBuf| FileCheck {
        key: key.to_owned(),
        path: path.clone(),
        kind: FileKind::Secret,
        read_risk: TOKEN_READ_RISK,
        write_risk: TOKEN_WRITE_RISK,
    };
    let mut checks = Vec::new();
    match &config.token_source {
        TokenSource::ConfigFile(path) => checks.push(token("token_file", path)),
        TokenSource::FlagFile(path) => checks.push(token("--token-file", path)),
        TokenSource::Credential(path) => checks.push(token("$CREDENTIALS_DIRECTORY/token", path)),
        TokenSource::Secret(path) => checks.push(token("secret file", path)),
        TokenSource::Flag | TokenSource::Env | TokenSource::ConfigInline | TokenSource::Code => {}
    }
    if let Some(path) = config_file {
        checks.push(if config.token_source == TokenSource::ConfigInline {
            FileCheck {
                key: "token".to_owned(),
                path: path.to_owned(),
                kind: FileKind::Secret,
                read_risk: "it holds the tunnel token (`token`; a 0600 `token_file` keeps it \
                            apart from the settings), and whoever has the token can register \
                            as this tunnel's connector",
                write_risk: CONFIG_WRITE_RISK,
            }
        } else {
            FileCheck {
                key: "config file".to_owned(),
                path: path.to_owned(),
                kind: FileKind::Trusted,
                read_risk: "",
                write_risk: CONFIG_WRITE_RISK,
            }
        });
    }
    checks
}

/// The findings about values in the configuration (no file is looked at).
fn setting_findings(config: &ConnectorConfig, provenance: &Provenance<'_>) -> Vec<Finding> {
    let file = provenance.config_file;
    let from_file = config.routes.len().saturating_sub(provenance.flag_routes);
    let route_key = |index: usize, route: &Route| {
        if index < from_file {
            format!("route[{index}].destination = {:?}", route.destination_text)
        } else {
            format!("--route {}", route.destination_text)
        }
    };
    let route_place = |index: usize| (index < from_file).then_some(file).flatten();
    let mut findings = Vec::new();

    for (index, route) in config.routes.iter().enumerate() {
        if let Some(risk) = route_risk(route, config) {
            findings.push(Finding::setting(
                Severity::Warning,
                route_key(index, route),
                route_place(index),
                risk.0,
                risk.1,
            ));
        }
    }

    for metadata in underpass_routes::DEFAULT_DENY {
        let ip = metadata.addr();
        if config
            .deny
            .iter()
            .any(|net| canonical_net(*net).contains(&ip))
        {
            continue;
        }
        let deny_key = if config.deny.is_empty() {
            "deny = []"
        } else {
            "deny"
        };
        let remedy = format!(
            "add \"{metadata}\" to deny (or remove the deny key: the default list denies the \
             metadata endpoints)"
        );
        let routed = config.routes.iter().enumerate().find(|(_, route)| {
            matches!(route.destination, RouteSpec::Cidr(net) if canonical_net(net).contains(&ip))
                && route.ports.contains(METADATA_PORT)
        });
        if let Some((index, route)) = routed {
            findings.push(Finding::setting(
                Severity::Warning,
                deny_key,
                file,
                format!(
                    "{} allows {ip} port {METADATA_PORT}, the cloud instance metadata \
                     endpoint, which hands the host's cloud credentials to anyone who asks, and \
                     the deny list does not cover it",
                    route_key(index, route)
                ),
                remedy,
            ));
            continue;
        }
        // A special-purpose address (169.254.169.254 is link-local) is dialed through a name
        // only when an IP route allows it, which the branch above reports; fd00:ec2::254 is an
        // ordinary unique-local address, reached by any name the private DNS points at it.
        let by_name = special_range(ip).is_none()
            && !config.dns.strict_resolved
            && config.routes.iter().any(|route| {
                matches!(route.destination, RouteSpec::Host(_))
                    && route.ports.contains(METADATA_PORT)
            });
        if by_name {
            findings.push(Finding::setting(
                Severity::Warning,
                deny_key,
                file,
                format!(
                    "the deny list does not cover {ip} (a cloud instance metadata endpoint, \
                     which hands out the host's credentials), and hostname routes are resolved \
                     without dns.strict_resolved: a name the private DNS points at it is dialed"
                ),
                remedy,
            ));
        }
    }

    for (index, resolver) in config.dns.resolvers.iter().enumerate() {
        let ip = canonical_ip(resolver.ip());
        let Some((deny_index, net)) = config
            .deny
            .iter()
            .enumerate()
            .find(|(_, net)| canonical_net(**net).contains(&ip))
        else {
            continue;
        };
        findings.push(Finding::setting(
            Severity::Warning,
            format!("dns.resolvers[{index}] = \"{resolver}\""),
            file,
            format!(
                "it is inside deny[{deny_index}] ({net}): the connector still sends its own DNS \
                 queries there (the deny list applies to what streams dial), while a VPC \
                 Service that names it in resolver_ips is refused"
            ),
            format!(
                "if this resolver is meant (a cloud's link-local DNS, a local stub resolver), \
                 narrow deny[{deny_index}] so that it leaves {ip} out; otherwise use another \
                 resolver"
            ),
        ));
    }

    if let Some(addr) = config.admin_listen {
        if !is_loopback(addr.ip()) {
            let (key, place) = if provenance.admin_flag {
                (format!("--admin-listen {addr}"), None)
            } else {
                (format!("admin.listen = \"{addr}\""), file)
            };
            findings.push(Finding::setting(
                Severity::Warning,
                key,
                place,
                "the admin listener is not on loopback: /healthz, /ready and /metrics (with the \
                 edges, routes and stream counters) answer anyone who can reach it, without \
                 authentication or TLS",
                "listen on 127.0.0.1 or [::1] and scrape it from the host, or firewall the port",
            ));
        }
    }
    findings
}

/// Why `route` is risky and what to do, if it is.
fn route_risk(route: &Route, config: &ConnectorConfig) -> Option<(String, String)> {
    match &route.destination {
        RouteSpec::Cidr(net) => {
            let net = canonical_net(*net);
            if net.prefix_len() != 0 {
                return None;
            }
            let family = match net {
                IpNet::V4(_) => "IPv4",
                IpNet::V6(_) => "IPv6",
            };
            Some((
                format!(
                    "routes every {family} address: the connector dials any host it can reach \
                     ({}), held back only by the deny list ({} entries)",
                    ports_text(route),
                    config.deny.len()
                ),
                "route only the networks the private services live in (like 10.20.0.0/16)"
                    .to_owned(),
            ))
        }
        RouteSpec::Host(HostPattern::Wildcard(suffix)) => {
            let top_level = !suffix.contains('.') && !PRIVATE_TLDS.contains(&suffix.as_str());
            if !top_level || config.dns.strict_resolved {
                return None;
            }
            Some((
                format!(
                    "matches every name under the top-level domain .{suffix}: if it is a public \
                     one, whatever its DNS answers is dialed ({}; only special-purpose addresses \
                     need an IP route)",
                    ports_text(route)
                ),
                "route the names the services use (like *.corp.example), or set \
                 dns.strict_resolved = true so that resolved addresses must be inside an IP \
                 route too"
                    .to_owned(),
            ))
        }
        RouteSpec::Host(HostPattern::Exact(_)) => None,
    }
}

fn ports_text(route: &Route) -> String {
    if route.ports.is_any() {
        "on every port".to_owned()
    } else {
        format!("on ports {}", route.ports)
    }
}

/// Loopback, IPv4-mapped loopback included.
fn is_loopback(ip: IpAddr) -> bool {
    canonical_ip(ip).is_loopback()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use underpass_proto::{TunnelId, TunnelSecret, TunnelToken};
    use underpass_rt::risky::FileStat;

    use super::*;

    const CONFIG: &str = "/etc/underpass/connector.toml";

    fn token() -> TunnelToken {
        TunnelToken {
            tunnel_id: TunnelId([1; 16]),
            secret: TunnelSecret([2; 32]),
            edges: vec!["127.0.0.1:7844".into()],
            server_name: "edge.underpass.test".into(),
            ca_pin: [3; 32],
        }
    }

    fn builder() -> super::super::ConnectorConfigBuilder {
        ConnectorConfig::builder(token())
    }

    fn findings(config: &ConnectorConfig) -> Vec<Finding> {
        setting_findings(
            config,
            &Provenance {
                config_file: Some(Path::new(CONFIG)),
                ..Provenance::default()
            },
        )
    }

    fn keys(findings: &[Finding]) -> Vec<String> {
        findings.iter().map(|f| f.key.clone()).collect()
    }

    #[test]
    fn an_ordinary_config_has_no_findings() {
        let config = builder()
            .route("127.0.0.0/8")
            .route_ports("127.20.0.0/16", "80,443")
            .route("*.corp.example")
            .route("*.internal")
            .route("db.internal")
            .resolvers(&["127.0.0.53:53".parse().unwrap()]) // literal
            .admin_listen("127.0.0.1:20241".parse().unwrap()) // literal
            .build()
            .unwrap(); // valid
        assert_eq!(findings(&config), vec![]);
        // The default deny list covers the metadata endpoints whatever the routes.
        let config = builder().route("169.254.0.0/16").build().unwrap(); // valid
        assert_eq!(findings(&config), vec![]);
    }

    #[test]
    fn routes_to_everything_are_warnings() {
        let config = builder()
            .route("0.0.0.0/0")
            .route_ports("::/0", "443")
            .route("::ffff:0.0.0.0/96")
            .route("*.com")
            .build()
            .unwrap(); // valid
        let found = findings(&config);
        assert_eq!(
            keys(&found),
            [
                "route[0].destination = \"0.0.0.0/0\"",
                "route[1].destination = \"::/0\"",
                "route[2].destination = \"::ffff:0.0.0.0/96\"",
                "route[3].destination = \"*.com\"",
            ]
        );
        assert!(found.iter().all(|f| f.severity == Severity::Warning));
        assert!(
            found[0].risk.contains("every IPv4 address"),
            "{}",
            found[0].risk
        );
        assert!(found[1].risk.contains("every IPv6 address"));
        assert!(
            found[1].risk.contains("(on ports 443)"),
            "{}",
            found[1].risk
        );
        assert!(
            found[2].risk.contains("every IPv4 address"),
            "the mapped form"
        );
        assert!(found[3].risk.contains("top-level domain .com"));
        assert!(found[0].to_string().starts_with(&format!(
            "route[0].destination = \"0.0.0.0/0\" in {CONFIG}: "
        )));
        // With strict resolution a wildcard reaches only what the IP routes allow.
        let strict = builder()
            .route("*.com")
            .strict_resolved(true)
            .build()
            .unwrap(); // valid
        assert_eq!(findings(&strict), vec![]);
    }

    #[test]
    fn flag_routes_are_named_as_flags() {
        let mut config = builder().route("10.0.0.0/8").build().unwrap(); // valid
        let flag = builder().route("0.0.0.0/0").build().unwrap(); // valid
        config.routes.extend(flag.routes);
        let found = setting_findings(
            &config,
            &Provenance {
                config_file: Some(Path::new(CONFIG)),
                flag_routes: 1,
                admin_flag: false,
            },
        );
        assert_eq!(keys(&found), ["--route 0.0.0.0/0"]);
        assert_eq!(found[0].path(), "");
    }

    #[test]
    fn a_routed_metadata_endpoint_needs_the_deny_list() {
        let empty: [&str; 0] = [];
        let config = builder()
            .route("169.254.0.0/16")
            .deny(&empty)
            .build()
            .unwrap(); // valid
        let found = findings(&config);
        assert_eq!(keys(&found), ["deny = []"]);
        assert!(
            found[0].risk.contains(
                "route[0].destination = \"169.254.0.0/16\" allows 169.254.169.254 port 80"
            ),
            "{}",
            found[0].risk
        );
        assert!(found[0].remedy.contains("169.254.169.254/32"));

        // A deny list without the endpoint is the same; one with it, or a route that does not
        // allow port 80, is fine.
        let other = builder()
            .route("169.254.169.0/24")
            .deny(&["127.0.0.0/8"])
            .build()
            .unwrap(); // valid
        assert_eq!(keys(&findings(&other)), ["deny"]);
        let covered = builder()
            .route("169.254.0.0/16")
            .deny(&["169.254.0.0/16"])
            .build()
            .unwrap(); // valid
        assert_eq!(findings(&covered), vec![]);
        let port = builder()
            .route_ports("169.254.0.0/16", "5432")
            .deny(&empty)
            .build()
            .unwrap(); // valid
        assert_eq!(findings(&port), vec![]);

        // AWS's IPv6 endpoint is an ordinary address: a hostname route reaches it by name.
        let named = builder()
            .route("*.corp.example")
            .deny(&empty)
            .build()
            .unwrap(); // valid
        let found = findings(&named);
        assert_eq!(keys(&found), ["deny = []"]);
        assert!(found[0].risk.contains("fd00:ec2::254"), "{}", found[0].risk);
        let strict = builder()
            .route("*.corp.example")
            .deny(&empty)
            .strict_resolved(true)
            .build()
            .unwrap(); // valid
        assert_eq!(findings(&strict), vec![]);
    }

    #[test]
    fn a_denied_resolver_is_a_warning() {
        let resolvers: Vec<SocketAddr> = vec![
            "[::1]:53".parse().unwrap(),      // literal
            "127.0.0.53:53".parse().unwrap(), // literal
        ];
        let config = builder()
            .route("*.corp.example")
            .deny(&["127.0.0.0/8", "169.254.169.254/32", "fd00:ec2::254/128"])
            .resolvers(&resolvers)
            .build()
            .unwrap(); // valid
        let found = findings(&config);
        assert_eq!(keys(&found), ["dns.resolvers[1] = \"127.0.0.53:53\""]);
        assert!(found[0].risk.contains("deny[0] (127.0.0.0/8)"));
        assert_eq!(found[0].severity, Severity::Warning);
    }

    #[test]
    fn an_admin_listener_beyond_loopback_is_a_warning() {
        let config = builder()
            .admin_listen("0.0.0.0:20241".parse().unwrap()) // literal
            .build()
            .unwrap(); // valid
        assert_eq!(
            keys(&findings(&config)),
            ["admin.listen = \"0.0.0.0:20241\""]
        );
        let mapped = builder()
            .admin_listen("[::ffff:127.0.0.1]:20241".parse().unwrap()) // literal
            .build()
            .unwrap(); // valid
        assert_eq!(findings(&mapped), vec![]);
    }

    #[test]
    fn token_files_are_checked_as_secrets() {
        let mut config = builder().build().unwrap(); // valid
        config.token_source = TokenSource::ConfigFile(PathBuf::from("/etc/underpass/t.token"));
        let checks = file_checks(&config, Some(Path::new(CONFIG)));
        assert_eq!(checks.len(), 2);
        let token = &checks[0];
        assert_eq!(token.key, "token_file");
        assert_eq!(token.check(FileStat::mode(0o600)), None);
        let read = token
            .check(FileStat::mode(0o644))
            .expect("readable by others");
        assert_eq!(read.severity, Severity::Warning);
        assert_eq!(read.path(), "/etc/underpass/t.token");
        let write = token
            .check(FileStat::mode(0o602))
            .expect("writable by others");
        assert_eq!(write.severity, Severity::Refusal);
        // The config file may be read by anyone, unless it holds the token.
        let config_file = &checks[1];
        assert_eq!(config_file.key, "config file");
        assert_eq!(config_file.check(FileStat::mode(0o644)), None);
        assert_eq!(
            config_file.check(FileStat::mode(0o646)).map(|f| f.severity),
            Some(Severity::Refusal)
        );
        config.token_source = TokenSource::ConfigInline;
        let checks = file_checks(&config, Some(Path::new(CONFIG)));
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].key, "token");
        assert!(checks[0].check(FileStat::mode(0o644)).is_some());
        config.token_source = TokenSource::FlagFile(PathBuf::from("t"));
        assert_eq!(file_checks(&config, None)[0].key, "--token-file");
        config.token_source = TokenSource::Env;
        assert!(file_checks(&config, None).is_empty());
    }
}
