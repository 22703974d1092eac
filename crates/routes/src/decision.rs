//! What a lookup decided, and why.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use underpass_proto::ProxyStatus;

use crate::host::HostPattern;
use crate::ports::PortSet;

/// The outcome of a route lookup.
#[derive(Debug)]
pub enum Decision<'a, T> {
    /// A route allows the destination; it says which.
    Allowed(RouteMatch<'a, T>),
    /// No route allows the destination; it says why and which Proxy-Status applies.
    Refused(Refusal),
}

impl<'a, T> Decision<'a, T> {
    /// Whether the destination may be dialed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }

    /// The Proxy-Status error type to report, if refused.
    pub fn status(&self) -> Option<ProxyStatus> {
        match self {
            Decision::Allowed(_) => None,
            Decision::Refused(refusal) => Some(refusal.status),
        }
    }

    /// The refusal, if refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Decision::Allowed(_) => None,
            Decision::Refused(refusal) => Some(refusal),
        }
    }

    /// The match as `Ok`, the refusal as `Err`, for `?`.
    pub fn into_result(self) -> Result<RouteMatch<'a, T>, Refusal> {
        match self {
            Decision::Allowed(matched) => Ok(matched),
            Decision::Refused(refusal) => Err(refusal),
        }
    }
}

impl<T> Clone for Decision<'_, T> {
    fn clone(&self) -> Self {
        match self {
            Decision::Allowed(matched) => Decision::Allowed(matched.clone()),
            Decision::Refused(refusal) => Decision::Refused(refusal.clone()),
        }
    }
}

/// The route that allowed a destination, and its payload.
#[derive(Debug)]
pub struct RouteMatch<'a, T> {
    /// Which route matched (as stored: host bits cleared, name normalised).
    pub route: MatchedRoute,
    /// The ports that route allows (the looked-up port is one of them).
    pub ports: &'a PortSet,
    /// The payload inserted with the route.
    pub payload: &'a T,
}

impl<T> Clone for RouteMatch<'_, T> {
    fn clone(&self) -> Self {
        RouteMatch {
            route: self.route.clone(),
            ports: self.ports,
            payload: self.payload,
        }
    }
}

/// A route, as named in a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MatchedRoute {
    /// A CIDR route (IPv4-mapped IPv6 networks are stored as IPv4).
    Cidr(IpNet),
    /// A hostname route.
    Host(HostPattern),
}

impl fmt::Display for MatchedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatchedRoute::Cidr(net) => write!(f, "{net}"),
            MatchedRoute::Host(pattern) => write!(f, "{pattern}"),
        }
    }
}

/// Why a destination was refused, with the Proxy-Status error type to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RefusalReason,
    /// The RFC 9209 error type for the reply: `destination_ip_prohibited` for IP
    /// destinations, `destination_not_found` for names.
    pub status: ProxyStatus,
    /// What was looked up.
    pub destination: Destination,
    /// The port that was looked up.
    pub port: u16,
}

/// The destination a refusal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An IP address, canonicalised (IPv4-mapped IPv6 shown as IPv4).
    Ip(IpAddr),
    /// A name: normalised if it was valid, otherwise an excerpt of the input.
    Name(String),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Ip(ip) => write!(f, "{ip}"),
            Destination::Name(name) => f.write_str(name),
        }
    }
}

/// Why no route allows a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// The IP is inside this deny-list network; the deny list wins over every route.
    Denied(IpNet),
    /// No route covers the IP or name.
    NoRoute,
    /// The most specific route covering the destination does not allow the port. Less
    /// specific routes are not consulted: a narrower route is a narrower policy.
    PortNotAllowed {
        /// The route that decided.
        route: MatchedRoute,
    },
    /// The name is not a valid hostname; the text says why.
    InvalidName(String),
}

impl fmt::Display for Refusal {
    /// One readable sentence: `10.0.0.5 is denied by 10.0.0.0/8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dest = &self.destination;
        match &self.reason {
            RefusalReason::Denied(net) => write!(f, "{dest} is denied by {net}"),
            RefusalReason::NoRoute => match dest {
                Destination::Ip(_) => write!(f, "{dest} is not inside any route"),
                Destination::Name(_) => write!(f, "no route for the name {dest}"),
            },
            RefusalReason::PortNotAllowed { route } => {
                let target = match dest {
                    Destination::Ip(ip) => SocketAddr::new(*ip, self.port).to_string(),
                    Destination::Name(name) => format!("{name}:{}", self.port),
                };
                write!(
                    f,
                    "{target} refused: route {route} does not allow port {}",
                    self.port
                )
            }
            RefusalReason::InvalidName(why) => {
                write!(f, "invalid destination name {:?}: {why}", dest.to_string())
            }
        }
    }
}

impl std::error::Error for Refusal {}
