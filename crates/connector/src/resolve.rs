//! Name resolution with hickory-resolver: the connector's own resolver (the system's
//! `resolv.conf`, or configured name servers), per-request resolvers for VPC Services that name
//! their own `resolver_ips`, and the mapping of failures to Proxy-Status codes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, Protocol, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::error::{ResolveError, ResolveErrorKind};
use hickory_resolver::proto::error::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;
use tracing::debug;
use underpass_proto::{ProxyErrorReply, ProxyStatus};

/// Entries in the resolver cache (answers are kept for their TTL).
const CACHE_SIZE: usize = 1024;
/// Per-request resolver sets kept; beyond this the cache of them starts over.
const MAX_REQUEST_RESOLVERS: usize = 64;
/// Most name servers one request may name.
pub const MAX_RESOLVERS_PER_REQUEST: usize = 8;

/// The system resolver configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the system DNS configuration (resolv.conf): {0}; set [dns] resolvers")]
pub struct SystemDnsError(#[source] ResolveError);

/// Resolves names to addresses, A and AAAA in parallel, within a timeout.
pub struct Resolver {
    default: TokioAsyncResolver,
    /// The name servers `default` asks (configured, or from `resolv.conf`), each once.
    servers: Vec<SocketAddr>,
    per_request: Mutex<HashMap<Vec<SocketAddr>, TokioAsyncResolver>>,
    timeout: Duration,
}

impl Resolver {
    /// A resolver asking `servers` (UDP, then TCP), or the system's name servers when empty.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, SystemDnsError> {
        let (default, servers) = if servers.is_empty() {
            let (config, mut opts) =
                hickory_resolver::system_conf::read_system_conf().map_err(SystemDnsError)?;
            tune(&mut opts, timeout);
            let mut system = Vec::new();
            for server in config.name_servers() {
                if !system.contains(&server.socket_addr) {
                    system.push(server.socket_addr);
                }
            }
            (TokioAsyncResolver::tokio(config, opts), system)
        } else {
            (explicit(servers, timeout), servers.to_vec())
        };
        Ok(Resolver {
            default,
            servers,
            per_request: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    /// The name servers this resolver asks when a request names none: `[dns] resolvers`, or
    /// those of `resolv.conf`.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Every address of `name` (IPv6 and IPv4), using `servers` if the request named some.
    pub async fn lookup(
        &self,
        name: &str,
        servers: &[SocketAddr],
    ) -> Result<Vec<IpAddr>, ProxyErrorReply> {
        let resolver = if servers.is_empty() {
            self.default.clone()
        } else {
            self.request_resolver(servers)
        };
        let lookup = match tokio::time::timeout(self.timeout, resolver.lookup_ip(name)).await {
            Err(_) => {
                return Err(ProxyErrorReply {
                    status: ProxyStatus::DnsTimeout,
                    details: format!(
                        "no DNS answer for {name} within {} ms",
                        self.timeout.as_millis()
                    ),
                })
            }
            Ok(Err(error)) => return Err(resolve_error(name, &error)),
            Ok(Ok(lookup)) => lookup,
        };
        let mut addrs: Vec<IpAddr> = lookup.iter().collect();
        addrs.dedup();
        debug!(name, count = addrs.len(), "resolved");
        if addrs.is_empty() {
            return Err(ProxyErrorReply {
                status: ProxyStatus::DnsError,
                details: format!("no A or AAAA record for {name}"),
            });
        }
        Ok(addrs)
    }

    fn request_resolver(&self, servers: &[SocketAddr]) -> TokioAsyncResolver {
        // A poisoned lock only means another task panicked while inserting; the map is
        // still a valid cache.
        let mut cache = self
            .per_request
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(resolver) = cache.get(servers) {
            return resolver.clone();
        }
        if cache.len() >= MAX_REQUEST_RESOLVERS {
            cache.clear();
        }
        let resolver = explicit(servers, self.timeout);
        cache.insert(servers.to_vec(), resolver.clone());
        resolver
    }
}

fn tune(opts: &mut ResolverOpts, timeout: Duration) {
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Two tries per server fit in the overall timeout, which is what the stream waits for.
    opts.timeout = (timeout / 2).max(Duration::from_millis(50));
    opts.attempts = 2;
    opts.cache_size = CACHE_SIZE;
}

fn explicit(servers: &[SocketAddr], timeout: Duration) -> TokioAsyncResolver {
    let mut group = NameServerConfigGroup::with_capacity(servers.len() * 2);
    for &server in servers {
        group.push(NameServerConfig::new(server, Protocol::Udp));
    }
    for &server in servers {
        group.push(NameServerConfig::new(server, Protocol::Tcp));
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), group);
    let mut opts = ResolverOpts::default();
    tune(&mut opts, timeout);
    // Configured name servers are the whole truth: no /etc/hosts.
    opts.use_hosts_file = false;
    TokioAsyncResolver::tokio(config, opts)
}

/// Map a resolver failure to the Proxy-Status code the edge reports.
fn resolve_error(name: &str, error: &ResolveError) -> ProxyErrorReply {
    let (status, details) = match error.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => {
            let what = match *response_code {
                ResponseCode::NXDomain => "NXDOMAIN".to_owned(),
                ResponseCode::NoError => "no A or AAAA record".to_owned(),
                ResponseCode::ServFail => "SERVFAIL".to_owned(),
                ResponseCode::Refused => "REFUSED".to_owned(),
                other => other.to_string(),
            };
            (ProxyStatus::DnsError, format!("{what} for {name}"))
        }
        ResolveErrorKind::Timeout => (ProxyStatus::DnsTimeout, format!("DNS timeout for {name}")),
        ResolveErrorKind::Proto(proto) if matches!(proto.kind(), ProtoErrorKind::Timeout) => {
            (ProxyStatus::DnsTimeout, format!("DNS timeout for {name}"))
        }
        _ => (
            ProxyStatus::DnsError,
            format!("DNS lookup of {name} failed: {error}"),
        ),
    };
    ProxyErrorReply { status, details }
}
