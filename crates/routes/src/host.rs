//! Hostnames: normalisation (case, trailing dot, IDN to punycode), patterns and their table.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

use crate::error::{excerpt, RouteError};

/// Longest hostname in ASCII form, in bytes (RFC 1035 section 2.3.4, without the root dot).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label in ASCII form, in bytes.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest input accepted before IDNA processing. UTS #46 mapping can shrink a name (ignored
/// code points vanish), so the limit is above 253, but bounded so hostile input is rejected
/// before any work proportional to its size.
const MAX_INPUT_LEN: usize = 1024;

/// Normalise a hostname for matching: UTS #46 (IDNA) mapping, which lowercases and turns
/// internationalised labels into punycode (`Bücher.Example.` becomes `xn--bcher-kva.example`),
/// then one trailing dot dropped.
///
/// Rejected: empty names and empty labels, labels over 63 bytes and names over 253 bytes (in
/// ASCII form), characters other than letters, digits, `-` and `_`, labels starting or ending
/// with `-`, IDNA errors (bad punycode, disallowed code points, bidi rule), and names whose
/// last label is numeric (`127.1`, `0177.0.0.1`, `10.0.0.5`, `foo.0x10`): those read as IPv4
/// literals to resolvers and URL parsers, so they are refused as ambiguous. IP literals are
/// handled by [`crate::parse_ip_strict`], never by name routes.
///
/// `_` is allowed because real internal names use it (service records, container names).
pub fn normalize_hostname(name: &str) -> Result<String, RouteError> {
    if name.len() > MAX_INPUT_LEN {
        return Err(RouteError::NameTooLong { len: name.len() });
    }
    let ascii: Cow<'_, str> = if is_plain_ascii(name) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Uts46::new()
            .to_ascii(
                name.as_bytes(),
                // Our own ASCII check below gives precise errors and allows `_`.
                AsciiDenyList::EMPTY,
                Hyphens::Allow,
                DnsLength::Ignore,
            )
            .map_err(|_| RouteError::InvalidIdn {
                name: excerpt(name),
            })?
    };
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    check_ascii_name(name, ascii)?;
    Ok(ascii.to_owned())
}

/// Whether `name` is plain ASCII that UTS #46 would only lowercase: letters, digits, `-`,
/// `_`, `.`, and no punycode label (`xn--`) needing validation.
fn is_plain_ascii(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name
            .split('.')
            .any(|label| label.len() >= 4 && label[..4].eq_ignore_ascii_case("xn--"))
}

/// The DNS rules on the ASCII form; `input` is what the caller gave, for error messages.
fn check_ascii_name(input: &str, ascii: &str) -> Result<(), RouteError> {
    if ascii.is_empty() {
        return Err(RouteError::EmptyName);
    }
    if ascii.len() > MAX_NAME_LEN {
        return Err(RouteError::NameTooLong { len: ascii.len() });
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(RouteError::EmptyLabel {
                name: excerpt(input),
            });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(RouteError::LabelTooLong {
                label: excerpt(label),
                len: label.len(),
            });
        }
        if let Some(ch) = label
            .chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
        {
            return Err(RouteError::InvalidCharacter {
                name: excerpt(input),
                ch,
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(RouteError::HyphenAtLabelEdge {
                label: excerpt(label),
            });
        }
    }
    // Invariant: `split` always yields at least one item.
    let last = ascii.rsplit('.').next().expect("split yields an item");
    if is_numeric_label(last) {
        return Err(RouteError::NumericName {
            name: excerpt(input),
        });
    }
    Ok(())
}

/// A label an IPv4 parser would read as a number: all decimal digits, or `0x` followed by
/// hex digits (the WHATWG URL "ends in a number" rule).
fn is_numeric_label(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || label.bytes().all(|b| b.is_ascii_digit())
}

/// A hostname route pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Exactly this normalised name.
    Exact(String),
    /// Any name strictly below this normalised suffix, at any depth: `*.corp.example`
    /// (stored as `corp.example`) matches `db.corp.example` and `a.b.corp.example`, not
    /// `corp.example` itself.
    Wildcard(String),
}

impl HostPattern {
    /// Parse `name` or `*.suffix`; the name or suffix is normalised with
    /// [`normalize_hostname`]. A `*` anywhere else, a bare `*` and `*.` are rejected: a
    /// catch-all name route would let the edge reach anything resolvable.
    pub fn parse(s: &str) -> Result<Self, RouteError> {
        if let Some(suffix) = s.strip_prefix("*.") {
            if suffix.is_empty() || suffix == "." || suffix.contains('*') {
                return Err(RouteError::InvalidWildcard {
                    pattern: excerpt(s),
                });
            }
            return normalize_hostname(suffix).map(HostPattern::Wildcard);
        }
        if s.contains('*') {
            return Err(RouteError::InvalidWildcard {
                pattern: excerpt(s),
            });
        }
        normalize_hostname(s).map(HostPattern::Exact)
    }

    /// Whether this pattern matches `name`, which must already be normalised.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => name == exact,
            HostPattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl fmt::Display for HostPattern {
    /// In [`HostPattern::parse`] syntax: `db.internal` or `*.corp.example`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Hostname patterns with a value each. Exact names beat wildcards; among wildcards the
/// longest suffix wins.
#[derive(Debug, Clone)]
pub(crate) struct HostTable<V> {
    exact: HashMap<String, V>,
    wildcard: HashMap<String, V>,
}

impl<V> Default for HostTable<V> {
    fn default() -> Self {
        HostTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<V> HostTable<V> {
    /// Insert a pattern, replacing the value of the same pattern if present.
    pub(crate) fn insert(&mut self, pattern: HostPattern, value: V) {
        match pattern {
            HostPattern::Exact(name) => self.exact.insert(name, value),
            HostPattern::Wildcard(suffix) => self.wildcard.insert(suffix, value),
        };
    }

    /// The most specific pattern matching the normalised `name`, with its value.
    pub(crate) fn find(&self, name: &str) -> Option<(HostPattern, &V)> {
        if let Some(value) = self.exact.get(name) {
            return Some((HostPattern::Exact(name.to_owned()), value));
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Suffixes after each dot, longest first: the first hit is the most specific.
        name.match_indices('.').find_map(|(dot, _)| {
            let suffix = &name[dot + 1..];
            self.wildcard
                .get(suffix)
                .map(|value| (HostPattern::Wildcard(suffix.to_owned()), value))
        })
    }

    /// Number of patterns.
    pub(crate) fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// The patterns and values, exact names first, in no particular order within each kind.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (HostPattern, &V)> + '_ {
        let exact = self
            .exact
            .iter()
            .map(|(name, v)| (HostPattern::Exact(name.clone()), v));
        let wildcard = self
            .wildcard
            .iter()
            .map(|(suffix, v)| (HostPattern::Wildcard(suffix.clone()), v));
        exact.chain(wildcard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_accepts() {
        let cases = [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("DB.Internal.", "db.internal"),
            ("localhost", "localhost"),
            ("db", "db"),
            ("my_service.local", "my_service.local"),
            ("_sip._tcp.example.com", "_sip._tcp.example.com"),
            ("a-b.c-d", "a-b.c-d"),
            ("r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com"),
            ("1password.com", "1password.com"),
            ("123.example", "123.example"),
            ("10.0.0.5.nip", "10.0.0.5.nip"),
            // IDN: mapped and punycoded (UTS #46, nontransitional).
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example.", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
            ("faß.de", "xn--fa-hia.de"),
            ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
            // Full-width letters and ideographic full stop map to ASCII.
            ("ｅｘａｍｐｌｅ。com", "example.com"),
            // Exactly at the limits.
            (
                &*format!("{}.com", "a".repeat(63)),
                &*format!("{}.com", "a".repeat(63)),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_hostname(input).as_deref(), Ok(want), "{input:?}");
        }
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest.len(), 253);
        assert_eq!(normalize_hostname(&longest), Ok(longest.clone()));
        assert_eq!(normalize_hostname(&format!("{longest}.")), Ok(longest));
    }

    #[test]
    fn normalize_rejects() {
        let too_long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        let label64 = format!("{}.com", "a".repeat(64));
        // Each case names the error it expects by a predicate over the variant.
        type Expect = fn(&RouteError) -> bool;
        let cases: Vec<(&str, Expect)> = vec![
            ("", |e| matches!(e, RouteError::EmptyName)),
            (".", |e| matches!(e, RouteError::EmptyName)),
            ("a..b", |e| matches!(e, RouteError::EmptyLabel { .. })),
            (".a", |e| matches!(e, RouteError::EmptyLabel { .. })),
            ("a.b..", |e| matches!(e, RouteError::EmptyLabel { .. })),
            (&too_long, |e| {
                matches!(e, RouteError::NameTooLong { len: 254 })
            }),
            (&label64, |e| {
                matches!(e, RouteError::LabelTooLong { len: 64, .. })
            }),
            ("exa mple.com", |e| {
                matches!(e, RouteError::InvalidCharacter { ch: ' ', .. })
            }),
            ("a/b", |e| {
                matches!(e, RouteError::InvalidCharacter { ch: '/', .. })
            }),
            ("user@host", |e| {
                matches!(e, RouteError::InvalidCharacter { ch: '@', .. })
            }),
            ("host:80", |e| {
                matches!(e, RouteError::InvalidCharacter { ch: ':', .. })
            }),
            ("::1", |e| {
                matches!(e, RouteError::InvalidCharacter { ch: ':', .. })
            }),
            ("*.example.com", |e| {
                matches!(e, RouteError::InvalidCharacter { ch: '*', .. })
            }),
            ("a\0b", |e| matches!(e, RouteError::InvalidCharacter { .. })),
            ("a%2eb", |e| {
                matches!(e, RouteError::InvalidCharacter { ch: '%', .. })
            }),
            // Full-width solidus maps to '/'.
            ("a／b.com", |e| {
                matches!(e, RouteError::InvalidCharacter { ch: '/', .. })
            }),
            ("-a.com", |e| {
                matches!(e, RouteError::HyphenAtLabelEdge { .. })
            }),
            ("a-.com", |e| {
                matches!(e, RouteError::HyphenAtLabelEdge { .. })
            }),
            ("127.1", |e| matches!(e, RouteError::NumericName { .. })),
            ("0177.0.0.1", |e| {
                matches!(e, RouteError::NumericName { .. })
            }),
            ("2130706433", |e| {
                matches!(e, RouteError::NumericName { .. })
            }),
            ("10.0.0.5", |e| matches!(e, RouteError::NumericName { .. })),
            ("10.0.0.5.", |e| matches!(e, RouteError::NumericName { .. })),
            ("0x7f.0.0.1", |e| {
                matches!(e, RouteError::NumericName { .. })
            }),
            ("foo.0x1f", |e| matches!(e, RouteError::NumericName { .. })),
            ("foo.0x", |e| matches!(e, RouteError::NumericName { .. })),
            // Full-width digits map to ASCII digits: still numeric.
            ("１２７.０.０.１", |e| {
                matches!(e, RouteError::NumericName { .. })
            }),
            ("xn--zz", |e| matches!(e, RouteError::InvalidIdn { .. })),
            ("xn--a.com", |e| matches!(e, RouteError::InvalidIdn { .. })),
        ];
        for (input, check) in cases {
            let got = normalize_hostname(input);
            assert!(
                matches!(&got, Err(e) if check(e)),
                "{:?}: {got:?}",
                excerpt(input)
            );
        }
        let huge = "a".repeat(MAX_INPUT_LEN + 1);
        assert_eq!(
            normalize_hostname(&huge),
            Err(RouteError::NameTooLong {
                len: MAX_INPUT_LEN + 1
            })
        );
    }

    #[test]
    fn pattern_parse_table() {
        let ok = [
            ("db.internal", HostPattern::Exact("db.internal".into())),
            ("DB.Internal.", HostPattern::Exact("db.internal".into())),
            (
                "*.corp.example",
                HostPattern::Wildcard("corp.example".into()),
            ),
            (
                "*.Corp.Example.",
                HostPattern::Wildcard("corp.example".into()),
            ),
            ("*.com", HostPattern::Wildcard("com".into())),
            (
                "*.bücher.example",
                HostPattern::Wildcard("xn--bcher-kva.example".into()),
            ),
        ];
        for (input, want) in ok {
            assert_eq!(HostPattern::parse(input), Ok(want), "{input}");
        }
        for input in [
            "*", "*.", "*..", "**.a.com", "*a.com", "a.*.com", "a.com.*", "*.*.com",
        ] {
            assert!(
                matches!(
                    HostPattern::parse(input),
                    Err(RouteError::InvalidWildcard { .. })
                ),
                "{input}: {:?}",
                HostPattern::parse(input)
            );
        }
        assert!(matches!(
            HostPattern::parse("*.a..b"),
            Err(RouteError::EmptyLabel { .. })
        ));
        assert!(matches!(
            HostPattern::parse("*.10.0.0.1"),
            Err(RouteError::NumericName { .. })
        ));
    }

    #[test]
    fn pattern_display_round_trips() {
        for text in ["db.internal", "*.corp.example"] {
            let pattern = HostPattern::parse(text).unwrap();
            assert_eq!(pattern.to_string(), text);
            assert_eq!(HostPattern::parse(&pattern.to_string()), Ok(pattern));
        }
    }

    #[test]
    fn pattern_matches_table() {
        let wildcard = HostPattern::parse("*.corp.example").unwrap();
        let exact = HostPattern::parse("db.corp.example").unwrap();
        let cases = [
            ("db.corp.example", true, true),
            ("a.b.corp.example", true, false),
            ("corp.example", false, false),
            ("xcorp.example", false, false),
            ("db.corp.example.evil", false, false),
            ("example", false, false),
            (".corp.example", false, false),
        ];
        for (name, want_wildcard, want_exact) in cases {
            assert_eq!(wildcard.matches(name), want_wildcard, "wildcard {name}");
            assert_eq!(exact.matches(name), want_exact, "exact {name}");
        }
    }

    #[test]
    fn table_precedence() {
        let mut table = HostTable::default();
        for (i, pattern) in [
            "*.example",
            "*.corp.example",
            "db.corp.example",
            "*.a.corp.example",
        ]
        .iter()
        .enumerate()
        {
            table.insert(HostPattern::parse(pattern).unwrap(), i);
        }
        let cases: &[(&str, Option<(&str, usize)>)] = &[
            ("db.corp.example", Some(("db.corp.example", 2))),
            ("web.corp.example", Some(("*.corp.example", 1))),
            ("x.db.corp.example", Some(("*.corp.example", 1))),
            ("b.a.corp.example", Some(("*.a.corp.example", 3))),
            ("a.corp.example", Some(("*.corp.example", 1))),
            ("corp.example", Some(("*.example", 0))),
            ("other.example", Some(("*.example", 0))),
            ("example", None),
            ("example.org", None),
        ];
        for (name, want) in cases {
            let got = table.find(name).map(|(p, v)| (p.to_string(), *v));
            assert_eq!(got, want.map(|(p, v)| (p.to_string(), v)), "{name}");
        }
        table.insert(HostPattern::parse("*.corp.example").unwrap(), 9);
        assert_eq!(table.len(), 4);
        assert_eq!(table.find("web.corp.example").map(|(_, v)| *v), Some(9));
    }
}
