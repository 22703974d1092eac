//! Dialing private destinations: the route check before any packet leaves, name resolution,
//! the re-check of every resolved address and requested name server (`name_policy`),
//! and Happy Eyeballs (RFC 8305) connects.
//!
//! Every failure is a [`ProxyErrorReply`] carrying the RFC 9209 code the edge reports to the
//! binding's caller.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::debug;
use underpass_proto::{DialTarget, Host, ProxyErrorReply, ProxyStatus};
use underpass_routes::{Decision, RouteSpec, RouteTable};

use crate::config::{ConnectorConfig, DnsSettings};
use crate::metrics::DialMetrics;
use crate::name_policy::NamePolicy;
use crate::resolve::{Resolver, SystemDnsError};

/// RFC 8305 "Connection Attempt Delay": the next address is tried this long after the
/// previous attempt started, unless that attempt failed sooner.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Longest `details` text built from several failed attempts.
const MAX_DETAILS: usize = 512;

/// Checks, resolves and dials destinations for the streams of every connection.
pub struct Dialer {
    routes: RouteTable<()>,
    resolver: Resolver,
    /// What names may reach: resolved addresses and requested name servers.
    names: NamePolicy,
    connect_timeout: Duration,
    attempt_delay: Duration,
    /// Latency histograms, when the connector keeps metrics.
    metrics: Option<DialMetrics>,
}

impl Dialer {
    /// A dialer enforcing `routes` (whose deny list must already be set), resolving with
    /// `dns`, giving each connect `connect_timeout` in total.
    pub fn new(
        routes: RouteTable<()>,
        dns: &DnsSettings,
        connect_timeout: Duration,
    ) -> Result<Self, SystemDnsError> {
        let resolver = Resolver::new(&dns.resolvers, dns.timeout)?;
        Ok(Dialer {
            routes,
            names: NamePolicy::new(dns.strict_resolved, resolver.servers()),
            resolver,
            connect_timeout,
            attempt_delay: ATTEMPT_DELAY,
            metrics: None,
        })
    }

    /// The same dialer, recording resolution and dial latencies into `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: DialMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The dialer a configuration describes.
    pub fn from_config(config: &ConnectorConfig) -> Result<Self, SystemDnsError> {
        Dialer::new(route_table(config), &config.dns, config.timeouts.connect)
    }

    /// Check `target` against the routes, resolve it if it is a name, and connect.
    ///
    /// The returned socket has `TCP_NODELAY` set.
    pub async fn dial(&self, target: &DialTarget) -> Result<TcpStream, ProxyErrorReply> {
        let started = Instant::now();
        let dialed = self.check_and_connect(target).await;
        if let Some(metrics) = &self.metrics {
            metrics.dial(started.elapsed(), dialed.is_ok());
        }
        dialed
    }

    async fn check_and_connect(&self, target: &DialTarget) -> Result<TcpStream, ProxyErrorReply> {
        let port = target.port;
        let candidates = match &target.host {
            Host::Ip(ip) => vec![self.check_ip(ip.to_canonical(), port)?],
            Host::Name(name) => match ip_literal(name) {
                Some(ip) => vec![self.check_ip(ip, port)?],
                None => self.resolve_allowed(name, port, &target.resolvers).await?,
            },
        };
        let addrs: Vec<SocketAddr> = interleave(candidates)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        let stream = happy_eyeballs(&addrs, self.attempt_delay, self.connect_timeout).await?;
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
        Ok(stream)
    }

    /// The route decision for an IP destination.
    fn check_ip(&self, ip: IpAddr, port: u16) -> Result<IpAddr, ProxyErrorReply> {
        match self.routes.lookup_ip(ip, port) {
            Decision::Allowed(_) => Ok(ip),
            Decision::Refused(refusal) => Err(ProxyErrorReply {
                status: refusal.status,
                details: refusal.to_string(),
            }),
        }
    }

    /// Check a name against the routes and the name servers it would ask, resolve it, and
    /// keep only the addresses the name may reach.
    async fn resolve_allowed(
        &self,
        name: &str,
        port: u16,
        resolvers: &[SocketAddr],
    ) -> Result<Vec<IpAddr>, ProxyErrorReply> {
        if let Decision::Refused(refusal) = self.routes.lookup_name(name, port) {
            return Err(ProxyErrorReply {
                status: refusal.status,
                details: refusal.to_string(),
            });
        }
        // Resolve the name the route matched: lowercase, no trailing dot, IDN as punycode.
        let normalized = underpass_routes::normalize_hostname(name);
        let name = normalized.as_deref().unwrap_or(name);
        self.names.check_resolvers(&self.routes, name, resolvers)?;
        let started = Instant::now();
        let resolved = self.resolver.lookup(name, resolvers).await;
        if let Some(metrics) = &self.metrics {
            metrics.dns(started.elapsed(), resolved.is_ok());
        }
        self.names.admit(&self.routes, name, port, resolved?)
    }
}

/// The route table a configuration describes: its routes and its deny list.
pub fn route_table(config: &ConnectorConfig) -> RouteTable<()> {
    let mut table = RouteTable::new();
    for route in &config.routes {
        match &route.destination {
            RouteSpec::Cidr(net) => table.insert_cidr(*net, route.ports.clone(), ()),
            RouteSpec::Host(pattern) => {
                table.insert_hostname(pattern.clone(), route.ports.clone(), ())
            }
        }
    }
    table.set_deny_list(config.deny.clone());
    table
}

/// A name that is really an IP literal (`127.0.0.1`, `::1`, `[::1]`, strictly parsed), as an
/// address; IPv4-mapped IPv6 addresses become IPv4.
fn ip_literal(name: &str) -> Option<IpAddr> {
    underpass_routes::parse_ip_strict(name).ok()
}

/// Order addresses for Happy Eyeballs: families alternate, IPv6 first, each family in the
/// resolver's order, duplicates removed.
pub fn interleave(addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut v6 = Vec::new();
    let mut v4 = Vec::new();
    for ip in addrs {
        let list = if ip.is_ipv6() { &mut v6 } else { &mut v4 };
        if !list.contains(&ip) {
            list.push(ip);
        }
    }
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut v6, mut v4) = (v6.into_iter(), v4.into_iter());
    loop {
        match (v6.next(), v4.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Connect to the first of `addrs` that answers, in order, starting the next attempt
/// `attempt_delay` after the previous one unless it failed sooner (RFC 8305 §5). The first
/// success wins and the other attempts are cancelled; all of it within `timeout`.
pub async fn happy_eyeballs(
    addrs: &[SocketAddr],
    attempt_delay: Duration,
    timeout: Duration,
) -> Result<TcpStream, ProxyErrorReply> {
    let Some(&first) = addrs.first() else {
        return Err(ProxyErrorReply {
            status: ProxyStatus::ProxyInternalError,
            details: "no address to connect to".into(),
        });
    };
    let mut failures = Vec::new();
    let outcome = tokio::time::timeout(timeout, async {
        if addrs.len() == 1 {
            // The common case (an IP destination): no task, no timer.
            return TcpStream::connect(first)
                .await
                .map_err(|error| failures.push((first, error)));
        }
        race(addrs, attempt_delay, &mut failures).await
    })
    .await;
    match outcome {
        Ok(Ok(stream)) => {
            debug!(addr = %stream.peer_addr().map_or(first, |a| a), "connected");
            Ok(stream)
        }
        Ok(Err(())) => Err(failure_reply(&failures)),
        Err(_) => Err(ProxyErrorReply {
            status: ProxyStatus::ConnectionTimeout,
            details: timeout_details(addrs, timeout, &failures),
        }),
    }
}

/// The staggered race; `Err(())` once every attempt failed (the failures are in `failures`).
async fn race(
    addrs: &[SocketAddr],
    attempt_delay: Duration,
    failures: &mut Vec<(SocketAddr, io::Error)>,
) -> Result<TcpStream, ()> {
    // Dropping the set (on success, or when the caller's timeout fires) aborts the attempts
    // still running and closes any socket they had opened.
    let mut attempts = JoinSet::new();
    let mut started = 0;
    let delay = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(delay);
    loop {
        tokio::select! {
            joined = attempts.join_next(), if !attempts.is_empty() => {
                match joined {
                    Some(Ok((_, Ok(stream)))) => return Ok(stream),
                    Some(Ok((addr, Err(error)))) => {
                        debug!(%addr, %error, "connect attempt failed");
                        failures.push((addr, error));
                    }
                    // A connect task does not panic, and the set is not aborted while we run.
                    Some(Err(_)) | None => {}
                }
                if started == addrs.len() && attempts.is_empty() {
                    return Err(());
                }
                // A failure frees the way for the next address at once.
                delay.as_mut().reset(tokio::time::Instant::now());
            }
            () = &mut delay, if started < addrs.len() => {
                let addr = addrs[started];
                started += 1;
                attempts.spawn(async move { (addr, TcpStream::connect(addr).await) });
                delay.as_mut().reset(tokio::time::Instant::now() + attempt_delay);
            }
        }
    }
}

/// How a failed connect maps to a Proxy-Status code, most telling first.
fn classify(error: &io::Error) -> (u8, ProxyStatus) {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => (0, ProxyStatus::ConnectionRefused),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            (1, ProxyStatus::DestinationIpUnroutable)
        }
        io::ErrorKind::AddrNotAvailable => (1, ProxyStatus::DestinationIpUnroutable),
        io::ErrorKind::TimedOut => (2, ProxyStatus::ConnectionTimeout),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            (3, ProxyStatus::ConnectionRefused)
        }
        _ => (4, ProxyStatus::ProxyInternalError),
    }
}

fn failure_reply(failures: &[(SocketAddr, io::Error)]) -> ProxyErrorReply {
    let status = failures
        .iter()
        .map(|(_, error)| classify(error))
        .min_by_key(|(rank, _)| *rank)
        .map_or(ProxyStatus::ProxyInternalError, |(_, status)| status);
    let mut details = String::new();
    for (addr, error) in failures {
        if !details.is_empty() {
            details.push_str("; ");
        }
        details.push_str(&format!("connect to {addr}: {error}"));
        if details.len() > MAX_DETAILS {
            details.truncate(MAX_DETAILS);
            details.push_str("...");
            break;
        }
    }
    ProxyErrorReply { status, details }
}

fn timeout_details(
    addrs: &[SocketAddr],
    timeout: Duration,
    failures: &[(SocketAddr, io::Error)],
) -> String {
    let tried: Vec<String> = addrs.iter().take(8).map(|a| a.to_string()).collect();
    let mut details = format!(
        "no connection within {} ms to {}",
        timeout.as_millis(),
        tried.join(", ")
    );
    if !failures.is_empty() {
        details.push_str(&format!(" ({} attempt(s) failed earlier)", failures.len()));
    }
    details
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
    }

    #[test]
    fn interleave_alternates_families_ipv6_first() {
        let ordered = interleave(vec![v4(1), v4(2), v4(3), v6(1), v6(2)]);
        assert_eq!(ordered, [v6(1), v4(1), v6(2), v4(2), v4(3)]);
        assert_eq!(interleave(vec![v4(2), v4(1), v4(2)]), [v4(2), v4(1)]);
        assert_eq!(interleave(vec![]), Vec::<IpAddr>::new());
    }

    #[test]
    fn ip_literals_are_recognised() {
        assert_eq!(ip_literal("127.0.0.1"), Some(v4(1)));
        assert_eq!(ip_literal("[::1]"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(ip_literal("::ffff:127.0.0.9"), Some(v4(9)));
        assert_eq!(ip_literal("db.internal"), None);
    }

    #[test]
    fn classification_prefers_refused_over_unreachable() {
        let failures = vec![
            (
                SocketAddr::new(v6(1), 1),
                io::Error::from(io::ErrorKind::NetworkUnreachable),
            ),
            (
                SocketAddr::new(v4(1), 1),
                io::Error::from(io::ErrorKind::ConnectionRefused),
            ),
        ];
        let reply = failure_reply(&failures);
        assert_eq!(reply.status, ProxyStatus::ConnectionRefused);
        assert!(reply.details.contains("[fd00::1]:1"), "{}", reply.details);
        let reply = failure_reply(&failures[..1]);
        assert_eq!(reply.status, ProxyStatus::DestinationIpUnroutable);
    }
}
