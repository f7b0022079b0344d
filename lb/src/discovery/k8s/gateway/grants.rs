//! Who may refer to what across namespaces (ReferenceGrant), and which
//! namespaces a listener's `allowedRoutes` admits (label selectors).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::super::gateway_api::ReferenceGrant;

/// One side of a reference: group (`""`: core), kind, namespace.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// API group.
    pub group: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Namespace.
    pub namespace: &'a str,
}

/// Whether a reference from `from` to the object `name` of `to` is allowed:
/// always within one namespace, else only with a ReferenceGrant in `to`'s
/// namespace that lists `from` and `to` (the whole kind, or that name).
pub fn permitted<'a>(
    grants: impl IntoIterator<Item = &'a ReferenceGrant>,
    from: Side<'_>,
    to: Side<'_>,
    name: &str,
) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    grants.into_iter().any(|g| {
        g.namespace().as_deref() == Some(to.namespace)
            && g.spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            })
            && g.spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name.as_deref().is_none_or(|n| n == name)
            })
    })
}

/// Whether `labels` satisfy `selector` (`matchLabels` and
/// `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`; an
/// unknown operator matches nothing).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// The labels of namespace `name` (none if it is unknown).
pub fn namespace_labels<'a>(
    namespaces: &'a BTreeMap<String, Namespace>,
    name: &str,
) -> Option<&'a BTreeMap<String, String>> {
    namespaces.get(name).map(|n| n.labels())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::k8s::gateway_api::{
        ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn grant(ns: &str, from_ns: &str, to_name: Option<&str>) -> ReferenceGrant {
        let mut g = ReferenceGrant::new(
            "g",
            ReferenceGrantSpec {
                from: vec![ReferenceGrantFrom {
                    group: "gateway.networking.k8s.io".into(),
                    kind: "HTTPRoute".into(),
                    namespace: from_ns.into(),
                }],
                to: vec![ReferenceGrantTo {
                    group: String::new(),
                    kind: "Service".into(),
                    name: to_name.map(str::to_owned),
                }],
            },
        );
        g.metadata.namespace = Some(ns.into());
        g
    }

    fn route(ns: &str) -> Side<'_> {
        Side {
            group: "gateway.networking.k8s.io",
            kind: "HTTPRoute",
            namespace: ns,
        }
    }

    fn service(ns: &str) -> Side<'_> {
        Side {
            group: "",
            kind: "Service",
            namespace: ns,
        }
    }

    #[test]
    fn cross_namespace_references_need_a_matching_grant() {
        assert!(
            permitted([], route("a"), service("a"), "s"),
            "same namespace"
        );
        assert!(!permitted([], route("a"), service("b"), "s"));
        let all = grant("b", "a", None);
        assert!(permitted([&all], route("a"), service("b"), "s"));
        assert!(
            !permitted([&all], route("c"), service("b"), "s"),
            "other from-namespace"
        );
        let one = grant("b", "a", Some("t"));
        assert!(
            !permitted([&one], route("a"), service("b"), "s"),
            "other name"
        );
        assert!(permitted([&one], route("a"), service("b"), "t"));
        let elsewhere = grant("c", "a", None);
        assert!(
            !permitted([&elsewhere], route("a"), service("b"), "s"),
            "a grant must sit in the target's namespace"
        );
        let secret = Side {
            group: "",
            kind: "Secret",
            namespace: "b",
        };
        assert!(!permitted([&all], route("a"), secret, "s"), "other kind");
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels: BTreeMap<String, String> = [
            ("team".to_owned(), "a".to_owned()),
            ("env".into(), "prod".into()),
        ]
        .into();
        let mut s = LabelSelector {
            match_labels: Some([("team".to_owned(), "a".to_owned())].into()),
            match_expressions: None,
        };
        assert!(selects(&s, &labels));
        s.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "env".into(),
            operator: "In".into(),
            values: Some(vec!["dev".into()]),
        }]);
        assert!(!selects(&s, &labels));
        s.match_expressions = Some(vec![
            LabelSelectorRequirement {
                key: "env".into(),
                operator: "NotIn".into(),
                values: Some(vec!["dev".into()]),
            },
            LabelSelectorRequirement {
                key: "gone".into(),
                operator: "DoesNotExist".into(),
                values: None,
            },
        ]);
        assert!(selects(&s, &labels));
        assert!(
            selects(&LabelSelector::default(), &labels),
            "empty selects all"
        );
    }
}
