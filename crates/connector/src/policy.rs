//! The origin policies of VPC Services, as one connection received them on its control
//! stream: a [`PolicyStore`] written by the session's control loop, read through
//! [`Policies`] by the streams of that connection.
//!
//! A stream names a service and the policy generation it was opened against
//! ([`ServiceRef`]). The control stream and the data streams are separate QUIC streams, so a
//! stream may arrive before its policy: [`Policies::wait`] waits for the generation (bounded
//! by the caller's limit) instead of failing at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use underpass_proto::{OriginPolicy, ProxyErrorReply, ProxyStatus, ServiceId, ServiceRef};

/// Removed services remembered (so that a late stream for one is refused at once); beyond
/// this the memory starts over and such a stream waits out its limit instead.
const MAX_REMOVED: usize = 4096;

/// A service's policy as the connector keeps it: the policy without its CA bundle, and the
/// bundle with an identity that cache and pool keys can hash cheaply.
#[derive(Debug)]
pub(crate) struct ServiceOrigin {
    policy: OriginPolicy,
    ca: Option<CaBundle>,
}

/// Extra trust anchors (PEM) for an origin, identified by the SHA-256 of their text: a
/// bundle is hashed once when its policy arrives, then compared and hashed by digest only
/// (a 512 KiB bundle is never hashed or copied per request).
#[derive(Clone)]
pub(crate) struct CaBundle {
    digest: [u8; 32],
    pem: Arc<str>,
}

/// What one connection knows about services: their policies, and the generation at which
/// each removed service disappeared.
#[derive(Debug, Default)]
struct Snapshot {
    services: HashMap<ServiceId, Arc<ServiceOrigin>>,
    removed: HashMap<ServiceId, u64>,
}

/// The writing side, owned by the connection's control loop.
pub(crate) struct PolicyStore {
    snapshot: watch::Sender<Snapshot>,
}

/// The reading side, one per stream (cheap to clone).
#[derive(Clone)]
pub(crate) struct Policies {
    snapshot: watch::Receiver<Snapshot>,
}

impl ServiceOrigin {
    /// Keep `policy`, taking its CA bundle out and identifying it.
    pub(crate) fn new(mut policy: OriginPolicy) -> Self {
        let ca = policy.ca_pem.take().map(CaBundle::new);
        ServiceOrigin { policy, ca }
    }

    /// The policy (its `ca_pem` is always `None`: see [`ServiceOrigin::ca`]).
    pub(crate) fn policy(&self) -> &OriginPolicy {
        &self.policy
    }

    /// The service's CA bundle, if it has one.
    pub(crate) fn ca(&self) -> Option<&CaBundle> {
        self.ca.as_ref()
    }

    /// Whether this is a TCP service (`connect()` only); otherwise an HTTP one.
    pub(crate) fn is_tcp(&self) -> bool {
        self.policy.tcp_port.is_some()
    }

    /// The service's name, for messages.
    pub(crate) fn name(&self) -> &str {
        &self.policy.name
    }
}

impl CaBundle {
    /// Identify `pem`.
    pub(crate) fn new(pem: String) -> Self {
        CaBundle {
            digest: Sha256::digest(pem.as_bytes()).into(),
            pem: Arc::from(pem),
        }
    }

    /// The bundle's text.
    pub(crate) fn pem(&self) -> &str {
        &self.pem
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for CaBundle {}

impl std::hash::Hash for CaBundle {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaBundle(sha256:{}…, {} bytes)",
            hex::encode(&self.digest[..6]),
            self.pem.len()
        )
    }
}

impl PolicyStore {
    /// An empty store and its first reader.
    pub(crate) fn new() -> (PolicyStore, Policies) {
        let (snapshot, reader) = watch::channel(Snapshot::default());
        (PolicyStore { snapshot }, Policies { snapshot: reader })
    }

    /// Store a policy that arrived complete. An older generation than the one held is
    /// ignored (the edge's generations only grow).
    pub(crate) fn insert(&self, policy: OriginPolicy) {
        let service = ServiceOrigin::new(policy);
        let id = service.policy.service.id;
        let generation = service.policy.service.generation;
        self.snapshot.send_if_modified(|snapshot| {
            let newer = snapshot
                .services
                .get(&id)
                .is_none_or(|held| held.policy.service.generation <= generation);
            if newer {
                snapshot.removed.remove(&id);
                snapshot.services.insert(id, Arc::new(service));
            }
            newer
        });
    }

    /// Forget a service: streams naming its known generations are refused from now on.
    pub(crate) fn remove(&self, id: ServiceId) {
        self.snapshot.send_if_modified(|snapshot| {
            let Some(held) = snapshot.services.remove(&id) else {
                return false;
            };
            if snapshot.removed.len() >= MAX_REMOVED {
                snapshot.removed.clear();
            }
            snapshot.removed.insert(id, held.policy.service.generation);
            true
        });
    }

    /// Services held now.
    pub(crate) fn len(&self) -> usize {
        self.snapshot.borrow().services.len()
    }
}

impl Policies {
    /// The policy of `service` at its generation or a later one, waiting up to `limit` for it
    /// to arrive. Refused with `destination_unavailable` if it does not come in time, the
    /// service was removed, or the connection's control stream ended.
    pub(crate) async fn wait(
        &self,
        service: ServiceRef,
        limit: Duration,
    ) -> Result<Arc<ServiceOrigin>, ProxyErrorReply> {
        enum Found {
            Policy(Arc<ServiceOrigin>),
            Removed,
        }
        let lookup = |snapshot: &Snapshot| match snapshot.services.get(&service.id) {
            Some(held) if held.policy.service.generation >= service.generation => {
                Some(Found::Policy(held.clone()))
            }
            _ => match snapshot.removed.get(&service.id) {
                Some(&gone) if gone >= service.generation => Some(Found::Removed),
                _ => None,
            },
        };
        let unavailable = |why: &str| ProxyErrorReply {
            status: ProxyStatus::DestinationUnavailable,
            details: format!(
                "no policy for service {} generation {}: {why}",
                hex::encode(service.id.0),
                service.generation
            ),
        };
        // The common case: the policy came with the connection, long before the stream.
        if let Some(found) = lookup(&self.snapshot.borrow()) {
            return match found {
                Found::Policy(policy) => Ok(policy),
                Found::Removed => Err(unavailable("the service was removed")),
            };
        }
        let mut snapshot = self.snapshot.clone();
        let waited = tokio::time::timeout(limit, async {
            let mut found = None;
            // Err: the store is gone (the control loop ended); nothing more will come.
            let _ = snapshot
                .wait_for(|snapshot| {
                    found = lookup(snapshot);
                    found.is_some()
                })
                .await;
            found
        })
        .await;
        match waited {
            Ok(Some(Found::Policy(policy))) => Ok(policy),
            Ok(Some(Found::Removed)) => Err(unavailable("the service was removed")),
            Ok(None) => Err(unavailable("the control stream ended")),
            Err(_) => Err(unavailable(&format!(
                "none arrived within {} ms",
                limit.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use underpass_proto::{Host, TlsVerification};

    use super::*;

    fn policy(generation: u64, ca: Option<&str>) -> OriginPolicy {
        OriginPolicy {
            service: ServiceRef {
                id: ServiceId([1; 16]),
                generation,
            },
            name: "api".into(),
            host: Host::Name("api.internal".into()),
            resolvers: Vec::new(),
            http_port: Some(8080),
            https_port: None,
            tcp_port: None,
            tls: TlsVerification::VerifyFull,
            ca_pem: ca.map(str::to_owned),
        }
    }

    fn wanted(generation: u64) -> ServiceRef {
        ServiceRef {
            id: ServiceId([1; 16]),
            generation,
        }
    }

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_held_generation_or_a_later_one_is_found_at_once() {
        let (store, policies) = PolicyStore::new();
        store.insert(policy(3, Some("PEM")));
        let found = policies.wait(wanted(2), SHORT).await.unwrap(); // generation 3 is held
        assert_eq!(found.policy().service.generation, 3);
        assert_eq!(found.ca().map(CaBundle::pem), Some("PEM"));
        assert_eq!(found.policy().ca_pem, None);
        // An older generation arriving late does not replace a newer one.
        store.insert(policy(1, None));
        let found = policies.wait(wanted(3), SHORT).await.unwrap(); // still generation 3
        assert!(found.ca().is_some());
    }

    #[tokio::test]
    async fn a_stream_waits_for_its_generation() {
        let (store, policies) = PolicyStore::new();
        store.insert(policy(1, None));
        let waiting = tokio::spawn(async move { policies.wait(wanted(2), Duration::MAX).await });
        tokio::task::yield_now().await;
        store.insert(policy(2, None));
        let found = waiting.await.unwrap().unwrap(); // the task does not panic; gen 2 came
        assert_eq!(found.policy().service.generation, 2);
    }

    #[tokio::test]
    async fn missing_and_removed_services_are_destination_unavailable() {
        let (store, policies) = PolicyStore::new();
        let err = policies.wait(wanted(1), SHORT).await.unwrap_err();
        assert_eq!(err.status, ProxyStatus::DestinationUnavailable);
        assert!(err.details.contains("within 50 ms"), "{}", err.details);
        assert!(
            err.details.contains(&hex::encode([1u8; 16])),
            "{}",
            err.details
        );

        store.insert(policy(4, None));
        store.remove(ServiceId([1; 16]));
        assert_eq!(store.len(), 0);
        let err = policies.wait(wanted(4), Duration::MAX).await.unwrap_err();
        assert!(err.details.contains("removed"), "{}", err.details);

        drop(store);
        let err = policies.wait(wanted(5), Duration::MAX).await.unwrap_err();
        assert!(
            err.details.contains("control stream ended"),
            "{}",
            err.details
        );
    }

    #[test]
    fn bundles_compare_by_digest() {
        let a = CaBundle::new("same".into());
        let b = CaBundle::new("same".into());
        let c = CaBundle::new("other".into());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(format!("{a:?}").contains("4 bytes"));
    }
}
