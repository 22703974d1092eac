//! Live reload (SIGHUP): which parts of a new configuration a running connector takes, and
//! which need a restart.
//!
//! Applied to every new stream: the routes (`[[route]]` and `--route`), the deny list,
//! `[dns]`, `[limits]`, `timeouts.connect_ms` and `timeouts.header_ms`. Streams already open
//! keep the settings they started with, and no connection is dropped; changed routes are
//! announced to the edge on every connection (`ControlMessage::Routes`).
//!
//! Everything else (the token, `[edge]`, `connections`, `[quic]`, `[reconnect]`, the other
//! timeouts, `[admin]`, `log_format`, `[runtime]`) is read at start only: a reload that changes
//! one of them says so in its report (and the log), keeps the running value, and applies the
//! rest.

use std::fmt;

use crate::config::ConnectorConfig;
use crate::resolve::SystemDnsError;

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The routes differ from the running ones (they are announced to the edge).
    pub routes_changed: bool,
    /// Keys that changed but take effect only after a restart (their running values are
    /// kept).
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload was refused (the running configuration is kept).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new `[dns]` settings cannot be used.
    #[error(transparent)]
    Dns(SystemDnsError),
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.routes_changed {
            f.write_str("routes changed")?;
        } else {
            f.write_str("routes unchanged")?;
        }
        if !self.restart_needed.is_empty() {
            write!(f, "; needs a restart: {}", self.restart_needed.join(", "))?;
        }
        Ok(())
    }
}

/// What changes from `old` to `new`.
pub(crate) fn compare(old: &ConnectorConfig, new: &ConnectorConfig) -> ReloadReport {
    let mut restart_needed = Vec::new();
    let mut check = |key: &'static str, changed: bool| {
        if changed {
            restart_needed.push(key);
        }
    };
    check(
        "token",
        old.token.tunnel_id != new.token.tunnel_id || old.token.secret != new.token.secret,
    );
    check("connections", old.connections != new.connections);
    check("edge.addresses", old.edge.addresses != new.edge.addresses);
    check(
        "edge.server_name",
        old.edge.server_name != new.edge.server_name,
    );
    check(
        "edge (verification)",
        verification_key(&old.edge.verification) != verification_key(&new.edge.verification),
    );
    check(
        "quic",
        format!("{:?}", old.quic) != format!("{:?}", new.quic),
    );
    check("reconnect", old.reconnect != new.reconnect);
    let (a, b) = (&old.timeouts, &new.timeouts);
    check("timeouts.register_ms", a.register != b.register);
    check("timeouts.drain_ms", a.drain != b.drain);
    check(
        "timeouts.tls_handshake_ms",
        a.tls_handshake != b.tls_handshake,
    );
    check(
        "timeouts.response_header_ms",
        a.response_header != b.response_header,
    );
    check("timeouts.origin_idle_ms", a.origin_idle != b.origin_idle);
    check("timeouts.origin_http2", a.origin_http2 != b.origin_http2);
    check("admin.listen", old.admin_listen != new.admin_listen);
    check("log_format", old.log_format != new.log_format);
    check(
        "runtime.worker_threads",
        old.worker_threads != new.worker_threads,
    );
    ReloadReport {
        routes_changed: old.announced_routes() != new.announced_routes(),
        restart_needed,
    }
}

/// `new` with the keys a reload does not apply taken from `old` (what runs after the
/// reload).
pub(crate) fn carry_over(old: &ConnectorConfig, new: ConnectorConfig) -> ConnectorConfig {
    ConnectorConfig {
        routes: new.routes,
        deny: new.deny,
        dns: new.dns,
        max_streams: new.max_streams,
        timeouts: crate::config::Timeouts {
            connect: new.timeouts.connect,
            header: new.timeouts.header,
            ..old.timeouts
        },
        ..old.clone()
    }
}

/// What identifies a verification mode, for comparing (the type has no equality).
fn verification_key(verification: &underpass_transport::tls::EdgeVerification) -> String {
    use underpass_transport::tls::EdgeVerification;
    match verification {
        EdgeVerification::Pin(pin) => format!("pin:{}", hex::encode(pin)),
        EdgeVerification::CaPem(pem) => format!("ca:{}", hex::encode(sha2_digest(pem))),
        EdgeVerification::SystemRoots => "system".to_owned(),
        EdgeVerification::DangerousNoVerify => "none".to_owned(),
    }
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use underpass_proto::{TunnelId, TunnelSecret, TunnelToken};

    use super::*;

    fn token() -> TunnelToken {
        TunnelToken {
            tunnel_id: TunnelId([1; 16]),
            secret: TunnelSecret([2; 32]),
            edges: vec!["127.0.0.1:7844".into()],
            server_name: "underpass-edge".into(),
            ca_pin: [3; 32],
        }
    }

    #[test]
    fn reloadable_keys_apply_and_others_are_reported() {
        let old = ConnectorConfig::builder(token())
            .route("127.20.0.0/16")
            .build()
            .expect("valid");
        let new = ConnectorConfig::builder(token())
            .route("127.21.0.0/16")
            .connect_timeout(Duration::from_millis(1234))
            .drain_timeout(Duration::from_millis(1))
            .connections(2)
            .max_streams(7)
            .build()
            .expect("valid");
        let report = compare(&old, &new);
        assert!(report.routes_changed);
        assert_eq!(report.restart_needed, ["connections", "timeouts.drain_ms"]);
        let running = carry_over(&old, new);
        assert_eq!(running.routes[0].destination_text, "127.21.0.0/16");
        assert_eq!(running.max_streams, 7);
        assert_eq!(running.timeouts.connect, Duration::from_millis(1234));
        assert_eq!(running.timeouts.drain, old.timeouts.drain);
        assert_eq!(running.connections, old.connections);
        let again = compare(&running, &running.clone());
        assert!(!again.routes_changed && again.restart_needed.is_empty());
    }
}
