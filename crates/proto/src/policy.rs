//! Service origin policies: what the connector needs to know about a VPC Service to dial it
//! (host, ports, resolvers, certificate verification, CA bundle), sent by the edge once per
//! connection on the control stream instead of in every stream header.
//!
//! A policy travels as one [`ServicePolicy`] message (defined with the other control messages)
//! followed by as many [`ServicePolicyCa`] chunks as its CA bundle needs ([`CA_CHUNK_LEN`]
//! bytes each, so any bundle up to [`MAX_CA_BUNDLE_LEN`]
//! travels within the frame limit). [`OriginPolicy::to_messages`] splits a policy,
//! [`PolicyAssembler`] puts it back together and refuses anything out of order.

use std::net::SocketAddr;

use crate::control::{ControlMessage, ServicePolicy, ServicePolicyCa};
use crate::stream::{DialTarget, Host, Scheme, ServiceRef, TlsVerification};

/// Bytes of CA bundle per [`ServicePolicyCa`] message: well below the frame limit.
pub const CA_CHUNK_LEN: usize = 32 * 1024;
/// The largest CA bundle a service may have (the edge refuses bigger ones at load time).
pub const MAX_CA_BUNDLE_LEN: usize = 4 * 1024 * 1024;

/// A complete origin policy, as the edge keeps it and the connector uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    /// The service and this policy's generation.
    pub service: ServiceRef,
    /// The service's name, for logs.
    pub name: String,
    /// The host to dial.
    pub host: Host,
    /// Resolvers for a hostname host; empty: the connector's own.
    pub resolvers: Vec<SocketAddr>,
    /// `http_port` of an HTTP service.
    pub http_port: Option<u16>,
    /// `https_port` of an HTTP service.
    pub https_port: Option<u16>,
    /// `tcp_port` of a TCP service.
    pub tcp_port: Option<u16>,
    /// How an HTTPS origin's certificate is verified.
    pub tls: TlsVerification,
    /// Extra trust anchors (PEM).
    pub ca_pem: Option<String>,
}

/// A policy that cannot be sent or was received out of order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The CA bundle is larger than [`MAX_CA_BUNDLE_LEN`].
    #[error(
        "service {service}: CA bundle of {len} bytes exceeds the {MAX_CA_BUNDLE_LEN}-byte limit"
    )]
    CaTooLarge {
        /// The service's name.
        service: String,
        /// The bundle's length.
        len: usize,
    },
    /// A CA chunk arrived for no policy, for another policy, or beyond the announced length.
    #[error("unexpected CA bundle chunk for a service policy")]
    UnexpectedChunk,
    /// A new policy started before the previous one's CA bundle was complete.
    #[error("service policy {0:?} started before the previous one was complete")]
    Interrupted(String),
    /// The assembled CA bundle is not UTF-8 (PEM is ASCII).
    #[error("service {0:?}: the CA bundle is not valid PEM text")]
    NotText(String),
}

impl OriginPolicy {
    /// Where an HTTP exchange with `scheme` dials: the host, `http_port` (default 80) or
    /// `https_port` (default 443).
    pub fn http_target(&self, scheme: Scheme) -> DialTarget {
        let port = match scheme {
            Scheme::Http => self.http_port.unwrap_or(80),
            Scheme::Https => self.https_port.unwrap_or(443),
        };
        self.target(port)
    }

    /// Where a TCP stream dials: the host and `tcp_port`; `None` for an HTTP service.
    pub fn tcp_target(&self) -> Option<DialTarget> {
        self.tcp_port.map(|port| self.target(port))
    }

    fn target(&self, port: u16) -> DialTarget {
        DialTarget {
            host: self.host.clone(),
            port,
            resolvers: self.resolvers.clone(),
        }
    }

    /// The control messages that carry this policy: a [`ServicePolicy`], then the CA bundle
    /// in chunks of [`CA_CHUNK_LEN`].
    pub fn to_messages(&self) -> Result<Vec<ControlMessage>, PolicyError> {
        let ca = self.ca_pem.as_deref().unwrap_or_default().as_bytes();
        let too_large = || PolicyError::CaTooLarge {
            service: self.name.clone(),
            len: ca.len(),
        };
        if ca.len() > MAX_CA_BUNDLE_LEN {
            return Err(too_large());
        }
        let ca_pem_len = u32::try_from(ca.len()).map_err(|_| too_large())?;
        let mut messages = Vec::with_capacity(1 + ca.len().div_ceil(CA_CHUNK_LEN));
        messages.push(ControlMessage::ServicePolicy(ServicePolicy {
            service: self.service,
            name: self.name.clone(),
            host: self.host.clone(),
            resolvers: self.resolvers.clone(),
            http_port: self.http_port,
            https_port: self.https_port,
            tcp_port: self.tcp_port,
            tls: self.tls,
            ca_pem_len,
        }));
        messages.extend(ca.chunks(CA_CHUNK_LEN).map(|chunk| {
            ControlMessage::ServicePolicyCa(ServicePolicyCa {
                service: self.service,
                chunk: chunk.to_vec(),
            })
        }));
        Ok(messages)
    }
}

/// Reassembles policies from the control stream, in order.
#[derive(Debug, Default)]
pub struct PolicyAssembler {
    pending: Option<(ServicePolicy, Vec<u8>)>,
}

impl PolicyAssembler {
    /// A new assembler with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take a [`ServicePolicy`]; returns the policy if it is complete (no CA bundle).
    pub fn policy(&mut self, head: ServicePolicy) -> Result<Option<OriginPolicy>, PolicyError> {
        if let Some((previous, _)) = self.pending.take() {
            return Err(PolicyError::Interrupted(previous.name));
        }
        let len = head.ca_pem_len as usize;
        if len > MAX_CA_BUNDLE_LEN {
            return Err(PolicyError::CaTooLarge {
                service: head.name,
                len,
            });
        }
        if len == 0 {
            return Ok(Some(complete(head, None)));
        }
        self.pending = Some((head, Vec::with_capacity(len)));
        Ok(None)
    }

    /// Take a [`ServicePolicyCa`] chunk; returns the policy once its bundle is complete.
    pub fn chunk(&mut self, chunk: ServicePolicyCa) -> Result<Option<OriginPolicy>, PolicyError> {
        let Some((head, mut ca)) = self.pending.take() else {
            return Err(PolicyError::UnexpectedChunk);
        };
        let expected = head.ca_pem_len as usize;
        if chunk.service != head.service || ca.len() + chunk.chunk.len() > expected {
            return Err(PolicyError::UnexpectedChunk);
        }
        ca.extend_from_slice(&chunk.chunk);
        if ca.len() < expected {
            self.pending = Some((head, ca));
            return Ok(None);
        }
        match String::from_utf8(ca) {
            Ok(pem) => Ok(Some(complete(head, Some(pem)))),
            Err(_) => Err(PolicyError::NotText(head.name)),
        }
    }
}

fn complete(head: ServicePolicy, ca_pem: Option<String>) -> OriginPolicy {
    OriginPolicy {
        service: head.service,
        name: head.name,
        host: head.host,
        resolvers: head.resolvers,
        http_port: head.http_port,
        https_port: head.https_port,
        tcp_port: head.tcp_port,
        tls: head.tls,
        ca_pem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::round_trip;
    use crate::stream::ServiceId;
    use crate::MAX_FRAME_LEN;

    fn policy(ca_len: usize) -> OriginPolicy {
        OriginPolicy {
            service: ServiceRef {
                id: ServiceId([9; 16]),
                generation: 2,
            },
            name: "internal-api".into(),
            host: Host::Name("api.internal".into()),
            resolvers: vec!["10.0.0.2:53".parse().unwrap()], // literal
            http_port: None,
            https_port: Some(8443),
            tcp_port: None,
            tls: TlsVerification::VerifyCa,
            ca_pem: (ca_len > 0).then(|| "A".repeat(ca_len)),
        }
    }

    fn reassemble(messages: Vec<ControlMessage>) -> Result<Vec<OriginPolicy>, PolicyError> {
        let mut assembler = PolicyAssembler::new();
        let mut done = Vec::new();
        for message in messages {
            let complete = match message {
                ControlMessage::ServicePolicy(head) => assembler.policy(head)?,
                ControlMessage::ServicePolicyCa(chunk) => assembler.chunk(chunk)?,
                other => panic!("unexpected {other:?}"),
            };
            done.extend(complete);
        }
        Ok(done)
    }

    #[test]
    fn policies_of_any_sensible_size_fit_frames_and_reassemble() {
        for len in [
            0,
            1,
            CA_CHUNK_LEN,
            CA_CHUNK_LEN + 1,
            512 * 1024,
            MAX_CA_BUNDLE_LEN,
        ] {
            let original = policy(len);
            let messages = original.to_messages().unwrap(); // below the limit
            assert_eq!(messages.len(), 1 + len.div_ceil(CA_CHUNK_LEN), "{len}");
            for message in &messages {
                assert!(round_trip(message).len() < MAX_FRAME_LEN);
            }
            assert_eq!(reassemble(messages).unwrap(), vec![original.clone()]); // in order
        }
    }

    #[test]
    fn oversized_and_out_of_order_policies_are_refused() {
        let err = policy(MAX_CA_BUNDLE_LEN + 1).to_messages().unwrap_err();
        assert!(matches!(err, PolicyError::CaTooLarge { .. }), "{err}");

        let mut messages = policy(CA_CHUNK_LEN * 2).to_messages().unwrap(); // below the limit
        let last = messages.pop().unwrap(); // three messages
        let mut interrupted = messages.clone();
        interrupted.push(messages[0].clone());
        assert!(matches!(
            reassemble(interrupted),
            Err(PolicyError::Interrupted(_))
        ));
        let mut extra = messages.clone();
        extra.push(last.clone());
        extra.push(last);
        assert_eq!(reassemble(extra), Err(PolicyError::UnexpectedChunk));
        assert_eq!(
            reassemble(messages[1..].to_vec()),
            Err(PolicyError::UnexpectedChunk)
        );
    }

    #[test]
    fn targets_follow_scheme_and_kind() {
        let p = policy(0);
        assert_eq!(p.http_target(Scheme::Https).port, 8443);
        assert_eq!(p.http_target(Scheme::Http).port, 80);
        assert_eq!(p.http_target(Scheme::Http).resolvers, p.resolvers);
        assert_eq!(p.tcp_target(), None);
        let tcp = OriginPolicy {
            tcp_port: Some(6379),
            ..p
        };
        assert_eq!(tcp.tcp_target().map(|t| t.port), Some(6379));
    }
}
