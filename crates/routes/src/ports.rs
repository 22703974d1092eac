//! Port sets: which destination ports a route allows.

use std::fmt;

use crate::error::{excerpt, RouteError};

/// The ports a route allows, as sorted, merged, inclusive ranges; no ranges means every port.
///
/// Ranges are normalised on construction (sorted, overlapping and adjacent ranges merged), so
/// two sets allowing the same ports compare equal, and [`PortSet::ranges`] is minimal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    /// Sorted, disjoint, non-adjacent, inclusive; empty means every port.
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    /// Every port.
    pub fn any() -> Self {
        PortSet { ranges: Vec::new() }
    }

    /// Every port (same as [`PortSet::any`]).
    pub fn all() -> Self {
        PortSet::any()
    }

    /// Parse a comma-separated list of ports and inclusive ranges: `"80"`, `"80,443"`,
    /// `"8000-8999,22"`. `""` and `"*"` mean every port. Whitespace around entries is
    /// ignored. Ports are decimal, 1 to 65535.
    pub fn parse(s: &str) -> Result<Self, RouteError> {
        let trimmed = s.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(PortSet::any());
        }
        let mut ranges = Vec::new();
        for entry in trimmed.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(RouteError::EmptyPortEntry { text: excerpt(s) });
            }
            let range = match entry.split_once('-') {
                Some((start, end)) => (parse_port(start.trim())?, parse_port(end.trim())?),
                None => {
                    let port = parse_port(entry)?;
                    (port, port)
                }
            };
            ranges.push(range);
        }
        PortSet::from_ranges(ranges)
    }

    /// A set from inclusive ranges; an empty vector means every port. Ranges may overlap and
    /// come in any order; each must have `start <= end` and must not include port 0.
    pub fn from_ranges(mut ranges: Vec<(u16, u16)>) -> Result<Self, RouteError> {
        for &(start, end) in &ranges {
            if start > end {
                return Err(RouteError::ReversedPortRange { start, end });
            }
            if start == 0 {
                return Err(RouteError::PortZero);
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                // Overlapping or adjacent (`1-5,6-9` is `1-9`).
                Some(last) if u32::from(start) <= u32::from(last.1) + 1 => {
                    last.1 = last.1.max(end);
                }
                _ => merged.push((start, end)),
            }
        }
        Ok(PortSet { ranges: merged })
    }

    /// Whether `port` is allowed.
    pub fn contains(&self, port: u16) -> bool {
        if self.ranges.is_empty() {
            return true;
        }
        // The range with the greatest start <= port is the only candidate.
        let after = self.ranges.partition_point(|&(start, _)| start <= port);
        after > 0 && port <= self.ranges[after - 1].1
    }

    /// The allowed ranges, sorted and merged; empty means every port.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// Whether every port is allowed.
    pub fn is_any(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl fmt::Display for PortSet {
    /// `*` for every port, otherwise the list in [`PortSet::parse`] syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("*");
        }
        for (i, &(start, end)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

/// One decimal port, 1 to 65535, digits only (no sign, no hex).
fn parse_port(text: &str) -> Result<u16, RouteError> {
    let invalid = || RouteError::InvalidPort {
        text: excerpt(text),
    };
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match text.parse::<u16>() {
        Ok(0) => Err(RouteError::PortZero),
        Ok(port) => Ok(port),
        Err(_) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases: &[(&str, &[(u16, u16)])] = &[
            ("", &[]),
            ("*", &[]),
            ("  * ", &[]),
            ("80", &[(80, 80)]),
            ("80,443", &[(80, 80), (443, 443)]),
            ("443, 80", &[(80, 80), (443, 443)]),
            ("8000-8999,22", &[(22, 22), (8000, 8999)]),
            ("8000 - 8999", &[(8000, 8999)]),
            ("1-65535", &[(1, 65535)]),
            ("65535", &[(65535, 65535)]),
            // Overlapping and adjacent ranges merge.
            ("10-20,15-30", &[(10, 30)]),
            ("1-5,6-9", &[(1, 9)]),
            ("5,5,5", &[(5, 5)]),
            ("100-200,150", &[(100, 200)]),
        ];
        for (text, want) in cases {
            let set = PortSet::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(set.ranges(), *want, "{text:?}");
        }
    }

    #[test]
    fn parse_rejects() {
        let cases: &[(&str, RouteError)] = &[
            ("0", RouteError::PortZero),
            ("0-80", RouteError::PortZero),
            (
                "65536",
                RouteError::InvalidPort {
                    text: "65536".into(),
                },
            ),
            (
                "100000",
                RouteError::InvalidPort {
                    text: "100000".into(),
                },
            ),
            ("-1", RouteError::InvalidPort { text: "".into() }),
            ("+80", RouteError::InvalidPort { text: "+80".into() }),
            (
                "0x50",
                RouteError::InvalidPort {
                    text: "0x50".into(),
                },
            ),
            (
                "http",
                RouteError::InvalidPort {
                    text: "http".into(),
                },
            ),
            ("80,*", RouteError::InvalidPort { text: "*".into() }),
            ("1-2-3", RouteError::InvalidPort { text: "2-3".into() }),
            (
                "90-80",
                RouteError::ReversedPortRange { start: 90, end: 80 },
            ),
            ("80,", RouteError::EmptyPortEntry { text: "80,".into() }),
            (
                "80,,443",
                RouteError::EmptyPortEntry {
                    text: "80,,443".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(PortSet::parse(text).as_ref(), Err(want), "{text:?}");
        }
    }

    #[test]
    fn from_ranges_validates_and_merges() {
        assert_eq!(PortSet::from_ranges(vec![]), Ok(PortSet::any()));
        assert_eq!(
            PortSet::from_ranges(vec![(443, 443), (80, 81), (82, 90)])
                .unwrap()
                .ranges(),
            &[(80, 90), (443, 443)]
        );
        assert_eq!(
            PortSet::from_ranges(vec![(9, 3)]),
            Err(RouteError::ReversedPortRange { start: 9, end: 3 })
        );
        assert_eq!(
            PortSet::from_ranges(vec![(0, 0)]),
            Err(RouteError::PortZero)
        );
        // Merging at the top of the port space must not overflow.
        assert_eq!(
            PortSet::from_ranges(vec![(65535, 65535), (60000, 65535)])
                .unwrap()
                .ranges(),
            &[(60000, 65535)]
        );
    }

    #[test]
    fn contains_table() {
        let set = PortSet::parse("22,80-89,443,8000-8999").unwrap();
        let cases = [
            (1, false),
            (21, false),
            (22, true),
            (23, false),
            (79, false),
            (80, true),
            (85, true),
            (89, true),
            (90, false),
            (443, true),
            (444, false),
            (7999, false),
            (8000, true),
            (8999, true),
            (9000, false),
            (65535, false),
        ];
        for (port, want) in cases {
            assert_eq!(set.contains(port), want, "port {port}");
        }
        let any = PortSet::any();
        assert!(any.is_any());
        for port in [0, 1, 80, 65535] {
            assert!(any.contains(port));
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["*", "80", "22,80-89,443", "1-65535"] {
            let set = PortSet::parse(text).unwrap();
            assert_eq!(set.to_string(), text);
            assert_eq!(PortSet::parse(&set.to_string()).unwrap(), set);
        }
        assert_eq!(PortSet::all(), PortSet::any());
        assert_eq!(PortSet::default(), PortSet::any());
    }
}
