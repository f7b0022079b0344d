//! Watch stores: the objects of one watched kind as the index sees them.
//!
//! A [`Buffered`] store only replaces its contents when a re-list is
//! complete: between `Init` and `InitDone` the old contents stay in service
//! and the new objects are buffered (kubert's `index` resets the same way),
//! so a re-list never empties routing. Each store keys its objects by a key
//! function: the name for a watch of one namespace, `namespace/name` for a
//! watch of every namespace ([`by_namespace_and_name`]).

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::runtime::watcher::Event;

/// The key of an object in a store.
pub type KeyFn<K> = fn(&K) -> String;

/// The object's name (a store of one namespace, or of a cluster-scoped kind).
pub fn by_name<K: kube::Resource>(obj: &K) -> String {
    obj.name_any()
}

/// `namespace/name`, or `name` for an object without a namespace (a store
/// fed by a watch of every namespace).
pub fn by_namespace_and_name<K: kube::Resource>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

/// A store fed by watcher events that only replaces its contents when a
/// re-list is complete: between `Init` and `InitDone` the old contents stay
/// in service and new objects are buffered.
#[derive(Debug)]
pub struct Buffered<K> {
    live: BTreeMap<String, K>,
    pending: Option<BTreeMap<String, K>>,
    synced: bool,
    key: KeyFn<K>,
}

impl<K: kube::Resource> Default for Buffered<K> {
    fn default() -> Self {
        Self::keyed(by_name)
    }
}

/// What a watcher event changed in a [`Buffered`] store.
#[derive(Debug)]
pub enum Touched<K> {
    /// Nothing visible (buffered during a re-list, or an unknown delete).
    Nothing,
    /// Everything may have changed (a re-list completed).
    All,
    /// One object, by key; `old` is what it replaced, if anything.
    One {
        /// The object's key in the store.
        name: String,
        /// The previous version.
        old: Option<K>,
    },
}

impl<K: kube::Resource> Buffered<K> {
    /// An empty store whose objects are keyed by `key`.
    pub fn keyed(key: KeyFn<K>) -> Self {
        Self {
            live: BTreeMap::new(),
            pending: None,
            synced: false,
            key,
        }
    }

    /// Applies one event and says what changed in the live contents.
    pub fn apply(&mut self, event: Event<K>) -> Touched<K> {
        match event {
            Event::Init => {
                self.pending = Some(BTreeMap::new());
                Touched::Nothing
            }
            Event::InitApply(obj) => {
                let name = (self.key)(&obj);
                self.pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, obj);
                Touched::Nothing
            }
            Event::InitDone => {
                self.live = self.pending.take().unwrap_or_default();
                self.synced = true;
                Touched::All
            }
            Event::Apply(obj) => {
                let name = (self.key)(&obj);
                let old = self.live.insert(name.clone(), obj);
                Touched::One { name, old }
            }
            Event::Delete(obj) => {
                let name = (self.key)(&obj);
                match self.live.remove(&name) {
                    Some(old) => Touched::One {
                        name,
                        old: Some(old),
                    },
                    None => Touched::Nothing,
                }
            }
        }
    }

    /// True once a first complete list has been applied.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The live objects by key.
    pub fn live(&self) -> &BTreeMap<String, K> {
        &self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::ObjectMeta;

    fn slice(name: &str, ns: Option<&str>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: ns.map(str::to_owned),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: None,
        }
    }

    #[test]
    fn buffered_store_keeps_old_set_during_relist() {
        let mut store = Buffered::<EndpointSlice>::default();
        let a = slice("a", None);
        let b = slice("b", None);
        store.apply(Event::Init);
        store.apply(Event::InitApply(a.clone()));
        assert!(!store.synced());
        assert!(matches!(store.apply(Event::InitDone), Touched::All));
        assert_eq!(store.live().len(), 1);
        // A re-list: until InitDone, the old contents stay.
        store.apply(Event::Init);
        store.apply(Event::InitApply(b.clone()));
        assert_eq!(store.live().keys().collect::<Vec<_>>(), ["a"]);
        store.apply(Event::InitDone);
        assert_eq!(store.live().keys().collect::<Vec<_>>(), ["b"]);
        assert!(matches!(
            store.apply(Event::Delete(b)),
            Touched::One { old: Some(_), .. }
        ));
        assert!(matches!(store.apply(Event::Delete(a)), Touched::Nothing));
    }

    #[test]
    fn a_store_of_every_namespace_keys_by_namespace_and_name() {
        let mut store = Buffered::<EndpointSlice>::keyed(by_namespace_and_name);
        store.apply(Event::Apply(slice("a", Some("one"))));
        store.apply(Event::Apply(slice("a", Some("two"))));
        store.apply(Event::Apply(slice("cluster", None)));
        assert_eq!(
            store.live().keys().collect::<Vec<_>>(),
            ["cluster", "one/a", "two/a"]
        );
        assert!(matches!(
            store.apply(Event::Delete(slice("a", Some("one")))),
            Touched::One { ref name, .. } if name == "one/a"
        ));
    }
}
