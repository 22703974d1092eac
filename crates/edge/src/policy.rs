//! Which origin policies a connector connection has been sent, and what brings it up to date.
//!
//! After `RegisterAccepted` the edge sends the policy of every service of the connection's
//! tunnel ([`ControlMessage::ServicePolicy`] and its CA chunks); whenever the directory
//! snapshot changes it sends the policies whose generation changed and
//! [`ControlMessage::ServiceRemoved`] for services that are gone. Stream headers then name only
//! the service and generation.

use std::collections::HashMap;

use tracing::error;
use underpass_proto::{ControlMessage, ServiceId};

use crate::model::{Directory, Tunnel};

/// The policies one connection knows, by service and generation.
#[derive(Debug, Default)]
pub(crate) struct SentPolicies {
    sent: HashMap<ServiceId, u64>,
}

impl SentPolicies {
    /// Nothing sent yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The control messages that bring the connection from what it was sent to `directory`'s
    /// services of `tunnel`, and records them as sent. A policy that cannot be encoded (which
    /// validation rules out) is logged and left out: streams naming it are refused by the
    /// connector when the policy never comes.
    pub(crate) fn update(&mut self, directory: &Directory, tunnel: &Tunnel) -> Vec<ControlMessage> {
        let mut messages = Vec::new();
        let mut current = HashMap::new();
        for service in directory.services_of(tunnel) {
            current.insert(service.id, service.generation);
            if self.sent.get(&service.id) == Some(&service.generation) {
                continue;
            }
            match service.policy().to_messages() {
                Ok(policy) => {
                    messages.extend(policy);
                    self.sent.insert(service.id, service.generation);
                }
                Err(problem) => {
                    error!(service = %service.name, error = %problem, "cannot send the policy");
                }
            }
        }
        let removed: Vec<ServiceId> = self
            .sent
            .keys()
            .filter(|id| !current.contains_key(id))
            .copied()
            .collect();
        for id in removed {
            self.sent.remove(&id);
            messages.push(ControlMessage::ServiceRemoved(id));
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use underpass_proto::{TunnelId, TunnelSecret, CA_CHUNK_LEN};

    use super::*;
    use crate::model::tests::http_service;
    use crate::model::{Service, TunnelRef};

    fn tunnel(name: &str, id: u8) -> Tunnel {
        Tunnel {
            id: TunnelId([id; 16]),
            name: name.into(),
            secret: TunnelSecret([0; 32]),
            created_at: 0,
        }
    }

    fn directory(services: &[Service]) -> Directory {
        Directory {
            services: services.iter().cloned().map(Arc::new).collect(),
            ..Directory::default()
        }
    }

    fn kinds(messages: &[ControlMessage]) -> Vec<&'static str> {
        messages
            .iter()
            .map(|m| match m {
                ControlMessage::ServicePolicy(_) => "policy",
                ControlMessage::ServicePolicyCa(_) => "ca",
                ControlMessage::ServiceRemoved(_) => "removed",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn sends_each_generation_once_and_removals() {
        let prod = tunnel("prod", 1);
        let api = Service {
            ca_pem: Some(Arc::from("A".repeat(CA_CHUNK_LEN + 1))),
            ..http_service("api", Some(80), None)
        };
        let web = http_service("web", None, Some(443));
        let other = Service {
            tunnel: TunnelRef::new("staging"),
            ..http_service("other", Some(80), None)
        };
        let mut sent = SentPolicies::new();
        let first = sent.update(&directory(&[api.clone(), web.clone(), other]), &prod);
        assert_eq!(kinds(&first), ["policy", "ca", "ca", "policy"]);
        assert!(sent
            .update(&directory(&[api.clone(), web.clone()]), &prod)
            .is_empty());

        let newer = Service {
            generation: 2,
            ca_pem: None,
            ..api
        };
        let changed = sent.update(&directory(&[newer, web.clone()]), &prod);
        let [ControlMessage::ServicePolicy(policy)] = &changed[..] else {
            panic!("one policy, no CA: {changed:?}");
        };
        assert_eq!(policy.service.generation, 2);

        let removed = sent.update(&directory(&[web]), &prod);
        assert_eq!(
            removed,
            [ControlMessage::ServiceRemoved(crate::model::service_id(
                "api"
            ))]
        );
    }
}
