//! The index of the `Upstream` source: the watch stores
//! ([`super::store`]) and what they resolve to, kept up to date
//! incrementally. A slice change re-resolves only the Upstreams of that
//! slice's Service; a change of an Upstream's status alone (our own write
//! coming back) re-resolves nothing; conflicts ([`super::conflicts`]) are
//! settled again only among the Upstreams whose match the change touched.
//! The translation of one Upstream is [`super::upstream`]'s; endpoint
//! resolution is [`super::endpoints`]'s.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::watcher::Event;

use super::conflicts::{Contender, settle};
use super::endpoints::service_of;
use super::store::{Buffered, Touched};
use super::upstream::{Resolved, conflicted, resolve, resolve_all};
use crate::crd::Upstream;
use crate::discovery::RoutingConfig;

pub use super::endpoints::{H2C_APP_PROTOCOL, SERVICE_LABEL};
pub use super::upstream::Reason;

/// Both stores and what they resolve to.
#[derive(Debug, Default)]
pub struct Index {
    slices: Buffered<EndpointSlice>,
    upstreams: Buffered<Upstream>,
    /// Each Upstream resolved on its own.
    base: BTreeMap<String, Resolved>,
    /// After conflicts: what is routed and what the statuses say.
    resolved: BTreeMap<String, Resolved>,
}

/// Settles the conflicts of `names` (and of `old`, a match one of them had).
fn settle_upstreams(
    base: &BTreeMap<String, Resolved>,
    live: &BTreeMap<String, Upstream>,
    resolved: &mut BTreeMap<String, Resolved>,
    names: &[String],
    old: Option<<Resolved as Contender>::Claim>,
    now: &Time,
) {
    settle(
        base,
        |n| {
            live.get(n)
                .and_then(|u| u.metadata.creation_timestamp.as_ref())
        },
        resolved,
        names,
        old,
        |n, b, winner| conflicted(b, winner, live.get(n), now),
    );
}

impl Index {
    /// True once both watchers have completed their first list.
    pub fn synced(&self) -> bool {
        self.slices.synced() && self.upstreams.synced()
    }

    /// Applies an EndpointSlice event; true when routing may have changed.
    pub fn apply_slice(&mut self, event: Event<EndpointSlice>, now: &Time) -> bool {
        let services: Vec<String> = match self.slices.apply(event) {
            Touched::Nothing => return false,
            Touched::All => return self.resolve_everything(now),
            Touched::One { name, old } => {
                let new = self.slices.live().get(&name);
                old.as_ref()
                    .and_then(service_of)
                    .into_iter()
                    .chain(new.and_then(service_of))
                    .map(str::to_owned)
                    .collect()
            }
        };
        if !self.synced() {
            return false;
        }
        let names: Vec<String> = self
            .upstreams
            .live()
            .iter()
            .filter(|(_, u)| services.contains(&u.spec.service))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &names {
            self.resolve_one(name, now);
        }
        settle_upstreams(
            &self.base,
            self.upstreams.live(),
            &mut self.resolved,
            &names,
            None,
            now,
        );
        !names.is_empty()
    }

    /// Applies an Upstream event; true when routing may have changed.
    pub fn apply_upstream(&mut self, event: Event<Upstream>, now: &Time) -> bool {
        let (name, old) = match self.upstreams.apply(event) {
            Touched::Nothing => return false,
            Touched::All => return self.resolve_everything(now),
            Touched::One { name, old } => (name, old),
        };
        if !self.synced() {
            return false;
        }
        match (old, self.upstreams.live().get(&name)) {
            (Some(old), Some(new))
                if old.spec == new.spec && old.metadata.generation == new.metadata.generation =>
            {
                // Only the status (or metadata) moved: nothing to resolve.
                false
            }
            (_, Some(_)) => {
                let old = self.base.get(&name).and_then(Contender::claim);
                self.resolve_one(&name, now);
                let names = [name];
                settle_upstreams(
                    &self.base,
                    self.upstreams.live(),
                    &mut self.resolved,
                    &names,
                    old,
                    now,
                );
                true
            }
            (_, None) => {
                let Some(gone) = self.base.remove(&name) else {
                    return false;
                };
                let names = [name];
                settle_upstreams(
                    &self.base,
                    self.upstreams.live(),
                    &mut self.resolved,
                    &names,
                    gone.claim(),
                    now,
                );
                true
            }
        }
    }

    fn resolve_everything(&mut self, now: &Time) -> bool {
        if !self.synced() {
            return false;
        }
        let (_, base) = resolve_all(self.upstreams.live(), self.slices.live(), now);
        self.base = base;
        let gone: Vec<String> = self
            .resolved
            .keys()
            .filter(|n| !self.base.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.resolved.remove(&n);
        }
        let names: Vec<String> = self.base.keys().cloned().collect();
        settle_upstreams(
            &self.base,
            self.upstreams.live(),
            &mut self.resolved,
            &names,
            None,
            now,
        );
        true
    }

    fn resolve_one(&mut self, name: &str, now: &Time) {
        let Some(u) = self.upstreams.live().get(name) else {
            return;
        };
        let slices: Vec<&EndpointSlice> = self
            .slices
            .live()
            .values()
            .filter(|s| service_of(s) == Some(u.spec.service.as_str()))
            .collect();
        let r = resolve(u, &slices, now);
        self.base.insert(name.to_owned(), r);
    }

    /// The routing snapshot of the current resolutions.
    pub fn routing(&self) -> RoutingConfig {
        RoutingConfig {
            upstreams: self
                .resolved
                .values()
                .filter_map(|r| r.upstream.clone())
                .collect(),
            routes: Vec::new(),
        }
    }

    /// Each Upstream's resolution (conflicts settled), by name.
    pub fn resolved(&self) -> &BTreeMap<String, Resolved> {
        &self.resolved
    }

    /// The live Upstream objects.
    pub fn upstreams(&self) -> &BTreeMap<String, Upstream> {
        self.upstreams.live()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::UpstreamSpec;
    use crate::discovery::k8s::endpoints::tests::{ep, slice};

    fn upstream(name: &str, yaml: &str) -> Upstream {
        let mut u = Upstream::new(name, serde_yaml::from_str::<UpstreamSpec>(yaml).unwrap());
        u.metadata.generation = Some(3);
        u
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::now())
    }

    #[test]
    fn index_resolves_incrementally_and_ignores_status_only_changes() {
        let now = now();
        let mut index = Index::default();
        index.apply_slice(Event::Init, &now);
        index.apply_slice(
            Event::InitApply(slice(
                "one-a",
                "one",
                &[("http", 80)],
                vec![ep("10.0.0.1", None, None, None, "p")],
            )),
            &now,
        );
        assert!(
            !index.apply_slice(Event::InitDone, &now),
            "upstreams not synced yet"
        );
        index.apply_upstream(Event::Init, &now);
        index.apply_upstream(Event::InitApply(upstream("a", "service: one\n")), &now);
        index.apply_upstream(
            Event::InitApply(upstream("b", "service: two\nmatch: {pathPrefix: /b}\n")),
            &now,
        );
        assert!(index.apply_upstream(Event::InitDone, &now));
        assert_eq!(index.resolved()["a"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["b"].reason, Reason::ServiceNotFound);

        // A slice of Service `two` re-resolves `b` only.
        let before_a = index.resolved()["a"].clone();
        assert!(index.apply_slice(
            Event::Apply(slice(
                "two-a",
                "two",
                &[("http", 80)],
                vec![ep("10.0.0.2", None, None, None, "q")]
            )),
            &now,
        ));
        assert_eq!(index.resolved()["b"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["a"], before_a);
        // A slice of a Service nobody uses changes nothing.
        assert!(!index.apply_slice(
            Event::Apply(slice("x-a", "unused", &[("http", 80)], vec![])),
            &now,
        ));

        // Our own status write coming back: no re-resolution.
        let mut with_status = upstream("a", "service: one\n");
        with_status.status = Some(index.resolved()["a"].status.clone());
        assert!(!index.apply_upstream(Event::Apply(with_status), &now));
        // A spec change (new generation) re-resolves.
        let mut changed = upstream("a", "service: two\n");
        changed.metadata.generation = Some(4);
        assert!(index.apply_upstream(Event::Apply(changed), &now));
        assert_eq!(
            index.routing().upstreams[0].endpoints[0].addr.to_string(),
            "10.0.0.2:80"
        );
        // Deleting an Upstream drops it from routing.
        assert!(index.apply_upstream(Event::Delete(upstream("b", "service: two\n")), &now));
        assert_eq!(index.routing().upstreams.len(), 1);
    }

    fn created(mut u: Upstream, second: i64) -> Upstream {
        u.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + second).unwrap(),
        ));
        u
    }

    fn synced_index(slices: Vec<EndpointSlice>, ups: Vec<Upstream>, now: &Time) -> Index {
        let mut index = Index::default();
        index.apply_slice(Event::Init, now);
        for s in slices {
            index.apply_slice(Event::InitApply(s), now);
        }
        index.apply_slice(Event::InitDone, now);
        index.apply_upstream(Event::Init, now);
        for u in ups {
            index.apply_upstream(Event::InitApply(u), now);
        }
        assert!(index.apply_upstream(Event::InitDone, now));
        index
    }

    fn routed(index: &Index) -> Vec<String> {
        index
            .routing()
            .upstreams
            .iter()
            .map(|u| u.name.to_string())
            .collect()
    }

    #[test]
    fn exact_match_conflicts_go_to_the_oldest_then_the_name() {
        let now = now();
        let s = slice(
            "s-a",
            "s",
            &[("http", 80)],
            vec![ep("10.0.0.1", None, None, None, "p")],
        );
        let mut index = synced_index(
            vec![s],
            vec![
                // `zed` is the oldest catch-all: it beats `alpha` and `beta`.
                created(upstream("alpha", "service: s\n"), 20),
                created(upstream("zed", "service: s\nmatch: {pathPrefix: /}\n"), 10),
                created(upstream("beta", "service: s\n"), 20),
                // Same host (any case) and prefix (`/api` = `/api/`); same age: by name.
                created(
                    upstream(
                        "api-b",
                        "service: s\nmatch: {host: A.example, pathPrefix: /api/}\n",
                    ),
                    5,
                ),
                created(
                    upstream(
                        "api-a",
                        "service: s\nmatch: {host: a.example, pathPrefix: /api}\n",
                    ),
                    5,
                ),
                // Partial overlaps are legal.
                created(
                    upstream(
                        "api-v1",
                        "service: s\nmatch: {host: a.example, pathPrefix: /api/v1}\n",
                    ),
                    1,
                ),
                created(
                    upstream(
                        "other-host",
                        "service: s\nmatch: {host: b.example, pathPrefix: /api}\n",
                    ),
                    1,
                ),
                // An invalid spec takes no part.
                created(upstream("broken", "service: s\nport: 0\n"), 0),
            ],
            &now,
        );
        assert_eq!(routed(&index), ["api-a", "api-v1", "other-host", "zed"]);
        let r = &index.resolved()["alpha"];
        assert_eq!(
            (r.reason, r.conflict.as_deref()),
            (Reason::Conflict, Some("zed"))
        );
        assert_eq!(r.status.conditions[0].status, "False");
        assert_eq!(r.status.conditions[0].reason, "Conflict");
        assert!(
            r.status.conditions[0].message.contains("Upstream zed"),
            "{:?}",
            r.status.conditions
        );
        assert_eq!(
            (r.status.ready_endpoints, r.status.ready.as_deref()),
            (0, Some("0/1"))
        );
        assert_eq!(index.resolved()["beta"].conflict.as_deref(), Some("zed"));
        assert_eq!(index.resolved()["api-b"].conflict.as_deref(), Some("api-a"));
        assert_eq!(index.resolved()["zed"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["broken"].reason, Reason::InvalidSpec);

        // The winner goes: the next oldest (`alpha`, by name) takes over.
        assert!(index.apply_upstream(Event::Delete(upstream("zed", "service: s\n")), &now));
        assert_eq!(index.resolved()["alpha"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["beta"].conflict.as_deref(), Some("alpha"));
        assert!(routed(&index).contains(&"alpha".to_owned()));
        // A loser moves to its own prefix: both route.
        let mut moved = created(
            upstream("beta", "service: s\nmatch: {pathPrefix: /beta}\n"),
            20,
        );
        moved.metadata.generation = Some(4);
        assert!(index.apply_upstream(Event::Apply(moved), &now));
        assert_eq!(index.resolved()["beta"].reason, Reason::EndpointsAvailable);
        assert_eq!(index.resolved()["alpha"].reason, Reason::EndpointsAvailable);
        // A slice change keeps the conflict (and updates both sides).
        index.apply_slice(
            Event::Apply(slice(
                "s-a",
                "s",
                &[("http", 80)],
                vec![
                    ep("10.0.0.1", None, None, None, "p"),
                    ep("10.0.0.2", None, None, None, "q"),
                ],
            )),
            &now,
        );
        let b = &index.resolved()["api-b"];
        assert_eq!((b.reason, b.status.endpoints.len()), (Reason::Conflict, 2));
        assert_eq!(index.resolved()["api-a"].status.ready_endpoints, 2);
        assert_eq!(
            routed(&index),
            ["alpha", "api-a", "api-v1", "beta", "other-host"]
        );
        // A re-list settles everything again, the same way.
        let before = index.resolved().clone();
        index.apply_upstream(Event::Init, &now);
        for (_, u) in index.upstreams().clone() {
            index.apply_upstream(Event::InitApply(u), &now);
        }
        index.apply_upstream(Event::InitDone, &now);
        assert_eq!(index.resolved(), &before);
    }
}
