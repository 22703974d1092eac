//! Where the directory comes from. A [`DirectoryStore`] publishes the current [`Directory`] as
//! a live snapshot (`watch<Arc<Directory>>`): the binding front reads it on every request and
//! each connector connection re-sends the origin policies that changed.
//!
//! The configuration file is the one store today ([`ConfigDirectory`]): its directory is read
//! once, at start. A store that changes at run time publishes a new snapshot with
//! [`ConfigDirectory::publish`], which also numbers policy generations: a service keeps its
//! generation while its policy is unchanged and gets a higher one whenever it changes (or
//! comes back after being removed), so generations only grow for the life of the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use underpass_proto::ServiceId;

use crate::model::{BindingTarget, Directory, Service};

/// A source of the directory.
pub(crate) trait DirectoryStore: Send + Sync + 'static {
    /// The current directory, and every later one.
    fn subscribe(&self) -> watch::Receiver<Arc<Directory>>;
}

/// The directory of the configuration file.
#[derive(Debug)]
pub(crate) struct ConfigDirectory {
    current: watch::Sender<Arc<Directory>>,
    /// The highest generation each service id ever had, removed services included.
    generations: Mutex<HashMap<ServiceId, u64>>,
}

impl ConfigDirectory {
    /// A store publishing `directory` (every service at generation 1).
    pub(crate) fn new(directory: Directory) -> Self {
        let store = ConfigDirectory {
            current: watch::Sender::new(Arc::new(Directory::default())),
            generations: Mutex::new(HashMap::new()),
        };
        store.publish(directory);
        store
    }

    /// Replace the directory. Generations are renumbered against the current snapshot: an
    /// unchanged service keeps its generation, a changed or new one gets its highest so far
    /// plus one.
    pub(crate) fn publish(&self, directory: Directory) {
        let previous = self.current.borrow().clone();
        // Every critical section leaves the map consistent, so a poisoned lock is usable.
        let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let services: Vec<Arc<Service>> = directory
            .services
            .iter()
            .map(|service| {
                let generation = match previous.service(service.id) {
                    Some(old) if old.same_policy(service) => old.generation,
                    _ => generations.get(&service.id).copied().unwrap_or(0) + 1,
                };
                generations.insert(service.id, generation);
                Arc::new(Service {
                    generation,
                    ..(**service).clone()
                })
            })
            .collect();
        drop(generations);
        let bindings = directory
            .bindings
            .iter()
            .map(|binding| match &binding.target {
                BindingTarget::Service(service) => {
                    // A binding's service is one of the directory's (checked by the
                    // conversion); keep the binding as it is otherwise.
                    match services.iter().find(|s| s.id == service.id) {
                        Some(renumbered) => Arc::new(crate::model::Binding {
                            target: BindingTarget::Service(renumbered.clone()),
                            ..(**binding).clone()
                        }),
                        None => binding.clone(),
                    }
                }
                BindingTarget::Network(_) => binding.clone(),
            })
            .collect();
        self.current.send_replace(Arc::new(Directory {
            networks: directory.networks,
            services,
            bindings,
        }));
    }
}

impl DirectoryStore for ConfigDirectory {
    fn subscribe(&self) -> watch::Receiver<Arc<Directory>> {
        self.current.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::http_service;
    use crate::model::{Binding, BindingMode};
    use underpass_proto::TlsVerification;

    fn directory(services: Vec<Service>) -> Directory {
        let services: Vec<Arc<Service>> = services.into_iter().map(Arc::new).collect();
        let bindings = services
            .iter()
            .map(|s| {
                Arc::new(Binding {
                    name: s.name.to_uppercase(),
                    listen: "127.0.0.1:0".parse().unwrap(), // literal
                    mode: BindingMode::Proxy,
                    target: BindingTarget::Service(s.clone()),
                    max_connections: 1,
                })
            })
            .collect();
        Directory {
            networks: Vec::new(),
            services,
            bindings,
        }
    }

    fn generation(store: &ConfigDirectory, name: &str) -> Option<u64> {
        let snapshot = store.subscribe().borrow().clone();
        let service = snapshot.services.iter().find(|s| s.name == name)?;
        let BindingTarget::Service(bound) = &snapshot.binding(&name.to_uppercase())?.target else {
            panic!("service binding");
        };
        assert_eq!(
            bound.generation, service.generation,
            "binding sees the same"
        );
        Some(service.generation)
    }

    #[test]
    fn generations_grow_only_when_a_policy_changes() {
        let api = http_service("api", Some(80), None);
        let web = http_service("web", Some(80), None);
        let store = ConfigDirectory::new(directory(vec![api.clone(), web.clone()]));
        let mut changes = store.subscribe();
        assert_eq!(generation(&store, "api"), Some(1));

        // Same policies again: same generations (a new snapshot is still published).
        store.publish(directory(vec![api.clone(), web.clone()]));
        assert!(changes.has_changed().unwrap()); // sender alive
        assert_eq!(generation(&store, "api"), Some(1));

        let changed = Service {
            tls: TlsVerification::Disabled,
            ..api.clone()
        };
        store.publish(directory(vec![changed, web.clone()]));
        assert_eq!(generation(&store, "api"), Some(2));
        assert_eq!(generation(&store, "web"), Some(1));

        // Removed, then back with its first policy: still a higher generation.
        store.publish(directory(vec![web.clone()]));
        assert_eq!(generation(&store, "api"), None);
        store.publish(directory(vec![api, web]));
        assert_eq!(generation(&store, "api"), Some(3));
        changes.borrow_and_update();
    }
}
