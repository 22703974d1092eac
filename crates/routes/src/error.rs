//! Why a route, name, address or port list was rejected.

use ipnet::IpNet;

/// Longest excerpt of caller input copied into an error, in bytes. Names can come from the
/// network; an error must not hold a megabyte of hostile text.
const MAX_EXCERPT: usize = 255;

/// A route, hostname, IP literal or port list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The hostname is empty (or is only the root dot).
    #[error("empty hostname")]
    EmptyName,
    /// The hostname is longer than 253 bytes in its ASCII (punycode) form, or the input is
    /// longer than any name that could normalise to 253 bytes.
    #[error("hostname is {len} bytes long; at most 253 allowed")]
    NameTooLong {
        /// Length of the name in bytes.
        len: usize,
    },
    /// The hostname has an empty label (`a..b`, `.a`, or two trailing dots).
    #[error("hostname {name:?} has an empty label")]
    EmptyLabel {
        /// The hostname (an excerpt if long).
        name: String,
    },
    /// A label is longer than 63 bytes in its ASCII (punycode) form.
    #[error("label {label:?} is {len} bytes long; at most 63 allowed")]
    LabelTooLong {
        /// The label (an excerpt).
        label: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The hostname holds a character that no hostname may contain (space, `/`, `:`, `@`,
    /// `*` outside a leading wildcard, ...).
    #[error("hostname {name:?} contains {ch:?}, which is not allowed in a hostname")]
    InvalidCharacter {
        /// The hostname (an excerpt if long).
        name: String,
        /// The first offending character, after IDNA mapping.
        ch: char,
    },
    /// A label starts or ends with a hyphen.
    #[error("label {label:?} starts or ends with a hyphen")]
    HyphenAtLabelEdge {
        /// The label (an excerpt).
        label: String,
    },
    /// The name's last label is numeric (`127.1`, `0177.0.0.1`, `foo.0x1f`): resolvers and
    /// URL parsers read such names as IPv4 literals, so routing them as names is ambiguous.
    #[error(
        "{name:?} looks like an IP address, not a hostname \
         (IPv4 literals must be four decimal octets without leading zeros)"
    )]
    NumericName {
        /// The name (an excerpt if long).
        name: String,
    },
    /// UTS #46 (IDNA) processing failed: invalid punycode, disallowed code points, bidi or
    /// joiner rule violations.
    #[error("{name:?} is not a valid internationalised domain name")]
    InvalidIdn {
        /// The name (an excerpt if long).
        name: String,
    },
    /// A wildcard pattern other than one leading `*.` in front of a valid name.
    #[error(
        "invalid hostname pattern {pattern:?}: only one leading \"*.\" before a name is allowed"
    )]
    InvalidWildcard {
        /// The pattern (an excerpt if long).
        pattern: String,
    },
    /// Not a strict IP literal (dotted-quad decimal IPv4, or IPv6).
    #[error(
        "{text:?} is not an IP address \
         (IPv4 must be four decimal octets without leading zeros; IPv6 in standard form)"
    )]
    InvalidIp {
        /// The text (an excerpt if long).
        text: String,
    },
    /// A CIDR whose prefix length is missing, not a number, or too long for its family.
    #[error("invalid prefix length in {text:?}")]
    InvalidPrefixLength {
        /// The CIDR text (an excerpt if long).
        text: String,
    },
    /// A CIDR with bits set after the prefix (`10.0.0.1/8`): a typo for the network or for a
    /// longer prefix, so it is refused rather than guessed.
    #[error("{text:?} has host bits set; did you mean {network}?")]
    HostBitsSet {
        /// The CIDR text (an excerpt if long).
        text: String,
        /// The network with host bits cleared.
        network: IpNet,
    },
    /// A port that is not a decimal number from 1 to 65535.
    #[error("invalid port {text:?}: expected a number from 1 to 65535")]
    InvalidPort {
        /// The offending entry (an excerpt if long).
        text: String,
    },
    /// Port 0 in a port set: no connection can be made to it.
    #[error("port 0 cannot be allowed: no connection can be made to it")]
    PortZero,
    /// A port range whose start is above its end.
    #[error("port range {start}-{end} is reversed")]
    ReversedPortRange {
        /// First port of the range as written.
        start: u16,
        /// Last port of the range as written.
        end: u16,
    },
    /// An empty entry in a port list (`80,,443`, trailing comma).
    #[error("empty entry in port list {text:?}")]
    EmptyPortEntry {
        /// The whole list (an excerpt if long).
        text: String,
    },
}

/// A copy of `s` short enough to keep in an error or a refusal.
pub(crate) fn excerpt(s: &str) -> String {
    if s.len() <= MAX_EXCERPT {
        return s.to_owned();
    }
    let mut end = MAX_EXCERPT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_truncates_on_a_char_boundary() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(200); // 400 bytes, 2 per char
        let cut = excerpt(&long);
        assert!(cut.ends_with("..."));
        assert!(cut.len() <= MAX_EXCERPT + 3);
        assert!(cut.trim_end_matches("...").chars().all(|c| c == 'é'));
    }
}
