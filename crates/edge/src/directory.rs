//! Where the directory comes from. A [`DirectoryStore`] publishes the current [`Directory`] as
//! a live snapshot (`watch<Arc<Directory>>`): the binding front reads it on every request and
//! each connector connection re-sends the origin policies that changed.
//!
//! The configuration file is the one store today ([`ConfigDirectory`]): its directory is read
//! at start and again on every live reload (SIGHUP), which publishes the new snapshot with
//! [`ConfigDirectory::publish`]. Publishing also numbers policy generations: a service keeps
//! its generation while its policy is unchanged and gets a higher one whenever it changes (or
//! comes back after being removed), so generations only grow for the life of the store.
//!
//! A reload also changes which binding listeners run: [`ListenerPlan::between`] says which to
//! start and which to stop.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use underpass_proto::ServiceId;

use crate::model::{Binding, BindingTarget, Directory, Service};

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

/// Which binding listeners a directory change starts and stops. A binding whose listener
/// settings (`listen`, `mode`, `max_connections`) are unchanged keeps its listener: what it
/// serves is read from the directory on every request. One whose `listen` changed is stopped
/// and started again (remove + add).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ListenerPlan {
    /// Bindings to start a listener for (new, or changed).
    pub start: Vec<Arc<Binding>>,
    /// Names of the running bindings to stop (removed, or changed).
    pub stop: Vec<String>,
}

impl ListenerPlan {
    /// The plan from the `running` bindings to `wanted`, or why it cannot be done live.
    pub(crate) fn between(
        running: &[Arc<Binding>],
        wanted: &[Arc<Binding>],
    ) -> Result<Self, String> {
        let mut plan = ListenerPlan::default();
        for new in wanted {
            match running.iter().find(|old| old.name == new.name) {
                None => plan.start.push(new.clone()),
                Some(old) if same_listener(old, new) => {}
                Some(old) if old.listen == new.listen && new.listen.port() != 0 => {
                    return Err(format!(
                        "binding {:?}: mode and max_connections cannot change while it keeps \
                         listening on {}; restart the edge, or move the binding to another \
                         listen address",
                        new.name, new.listen
                    ));
                }
                Some(old) => {
                    plan.stop.push(old.name.clone());
                    plan.start.push(new.clone());
                }
            }
        }
        for old in running {
            if !wanted.iter().any(|new| new.name == old.name) {
                plan.stop.push(old.name.clone());
            }
        }
        // A fixed address still held by a listener this plan stops cannot be bound yet.
        let stopping: HashSet<&str> = plan.stop.iter().map(String::as_str).collect();
        for new in &plan.start {
            if new.listen.port() == 0 {
                continue;
            }
            let holder = running
                .iter()
                .find(|old| old.listen == new.listen && stopping.contains(old.name.as_str()));
            if let Some(holder) = holder {
                return Err(format!(
                    "binding {:?}: listen {} is still held by binding {:?}, which this reload \
                     stops; reload once without {:?}, then again with it",
                    new.name, new.listen, holder.name, new.name
                ));
            }
        }
        Ok(plan)
    }
}

fn same_listener(old: &Binding, new: &Binding) -> bool {
    old.listen == new.listen && old.mode == new.mode && old.max_connections == new.max_connections
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

    fn binding(name: &str, listen: &str, max_connections: usize) -> Arc<Binding> {
        let service = Arc::new(http_service("api", Some(80), None));
        Arc::new(Binding {
            name: name.into(),
            listen: listen.parse().unwrap(), // literal
            mode: BindingMode::Proxy,
            target: BindingTarget::Service(service),
            max_connections,
        })
    }

    #[test]
    fn listener_plans() {
        let a = binding("A", "127.0.0.1:1001", 10);
        let b = binding("B", "127.0.0.1:1002", 10);
        let running = [a.clone(), b.clone()];
        // Unchanged: nothing to do. Another target with the same listener: nothing either.
        assert_eq!(
            ListenerPlan::between(&running, &running).unwrap(), // same
            ListenerPlan::default()
        );
        // Added, removed, moved.
        let c = binding("C", "127.0.0.1:1003", 10);
        let moved = binding("B", "127.0.0.1:1004", 10);
        let plan = ListenerPlan::between(&running, &[moved.clone(), c.clone()]).unwrap(); // ok
        assert_eq!(plan.start, [moved, c]);
        assert_eq!(plan.stop, ["B", "A"]);
        // A limit change on the same fixed address cannot be done live.
        let limited = binding("A", "127.0.0.1:1001", 5);
        let error = ListenerPlan::between(&running, &[limited, b.clone()]).unwrap_err();
        assert!(error.contains("restart the edge"), "{error}");
        // Port 0 (a fresh port each time): a change is remove + add.
        let zero = [binding("Z", "127.0.0.1:0", 10)];
        let plan = ListenerPlan::between(&zero, &[binding("Z", "127.0.0.1:0", 5)]).unwrap(); // ok
        assert_eq!(plan.stop, ["Z"]);
        // Taking over the address of a binding being removed.
        let taker = binding("D", "127.0.0.1:1001", 10);
        let error = ListenerPlan::between(&running, &[b, taker]).unwrap_err();
        assert!(error.contains("still held by binding \"A\""), "{error}");
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
