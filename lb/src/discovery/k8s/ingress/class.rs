//! Which Ingresses are roundhouse's: the IngressClass rules.
//!
//! An IngressClass is ours when its `spec.controller` is [`CONTROLLER`]
//! (and, with `--ingress-class`, its name is one of those given). An
//! Ingress is ours when:
//!
//! 1. its `spec.ingressClassName` names one of our classes; otherwise
//! 2. (no class name) its legacy `kubernetes.io/ingress.class` annotation
//!    names one of our classes (the annotation is deprecated; roundhouse
//!    reads it as a class name, so the IngressClass must exist); otherwise
//! 3. (neither) one of our classes is the cluster's default
//!    (`ingressclass.kubernetes.io/is-default-class: "true"`) and no other
//!    class is also marked default (with two defaults nobody can tell which
//!    controller an Ingress without a class belongs to, so roundhouse takes
//!    none of them).
//!
//! Everything else belongs to another controller and is not looked at.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::ResourceExt;

/// roundhouse's IngressClass controller name.
pub const CONTROLLER: &str = "roundhouse.dev/ingress-controller";
/// The annotation that makes an IngressClass the cluster's default.
pub const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// The deprecated class annotation on an Ingress.
pub const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";

/// Why an Ingress is ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// `spec.ingressClassName`.
    ClassName,
    /// The deprecated `kubernetes.io/ingress.class` annotation.
    LegacyAnnotation,
    /// No class at all, and our class is the default.
    DefaultClass,
}

/// Our classes, as of the current IngressClass objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classes {
    ours: BTreeSet<String>,
    /// Our class that is the only default in the cluster, if any.
    default: Option<String>,
}

impl Classes {
    /// Our classes among `all`; `only`, if not empty, limits them by name.
    pub fn of<'a>(all: impl IntoIterator<Item = &'a IngressClass>, only: &[String]) -> Self {
        let mut ours = BTreeSet::new();
        let mut defaults = Vec::new();
        for class in all {
            let name = class.name_any();
            let mine = class.spec.as_ref().and_then(|s| s.controller.as_deref())
                == Some(CONTROLLER)
                && (only.is_empty() || only.contains(&name));
            if class.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true") {
                defaults.push((name.clone(), mine));
            }
            if mine {
                ours.insert(name);
            }
        }
        let default = match defaults.as_slice() {
            [(name, true)] => Some(name.clone()),
            _ => None,
        };
        Self { ours, default }
    }

    /// Our class names.
    pub fn names(&self) -> &BTreeSet<String> {
        &self.ours
    }

    /// Whether `ingress` is ours, and why.
    pub fn claims(&self, ingress: &Ingress) -> Option<Claim> {
        let class_name = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        if let Some(name) = class_name {
            return self.ours.contains(name).then_some(Claim::ClassName);
        }
        if let Some(name) = ingress.annotations().get(LEGACY_CLASS) {
            return self
                .ours
                .contains(name.trim())
                .then_some(Claim::LegacyAnnotation);
        }
        self.default.as_ref().map(|_| Claim::DefaultClass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IngressClassSpec, IngressSpec};
    use kube::api::ObjectMeta;

    fn class(name: &str, controller: &str, default: Option<&str>) -> IngressClass {
        IngressClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: default.map(|d| {
                    [(DEFAULT_CLASS.to_owned(), d.to_owned())]
                        .into_iter()
                        .collect()
                }),
                ..ObjectMeta::default()
            },
            spec: Some(IngressClassSpec {
                controller: Some(controller.into()),
                parameters: None,
            }),
        }
    }

    fn ingress(class_name: Option<&str>, legacy: Option<&str>) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some("web".into()),
                annotations: legacy.map(|l| {
                    [(LEGACY_CLASS.to_owned(), l.to_owned())]
                        .into_iter()
                        .collect()
                }),
                ..ObjectMeta::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: class_name.map(str::to_owned),
                ..IngressSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn class_name_then_legacy_annotation_then_the_only_default() {
        let all = [
            class("roundhouse", CONTROLLER, Some("true")),
            class("nginx", "k8s.io/ingress-nginx", None),
        ];
        let c = Classes::of(&all, &[]);
        assert_eq!(c.names().iter().collect::<Vec<_>>(), ["roundhouse"]);
        assert_eq!(
            c.claims(&ingress(Some("roundhouse"), None)),
            Some(Claim::ClassName)
        );
        assert_eq!(c.claims(&ingress(Some("nginx"), None)), None);
        assert_eq!(
            c.claims(&ingress(Some("nginx"), Some("roundhouse"))),
            None,
            "the class name wins over the annotation"
        );
        assert_eq!(
            c.claims(&ingress(None, Some("roundhouse"))),
            Some(Claim::LegacyAnnotation)
        );
        assert_eq!(c.claims(&ingress(None, Some("nginx"))), None);
        assert_eq!(c.claims(&ingress(None, None)), Some(Claim::DefaultClass));
        assert_eq!(
            c.claims(&ingress(Some("missing"), None)),
            None,
            "a class that does not exist is nobody's"
        );
    }

    #[test]
    fn no_default_when_another_class_is_also_default_or_ours_is_not() {
        let two = [
            class("roundhouse", CONTROLLER, Some("true")),
            class("nginx", "k8s.io/ingress-nginx", Some("true")),
        ];
        assert_eq!(Classes::of(&two, &[]).claims(&ingress(None, None)), None);
        let theirs = [
            class("roundhouse", CONTROLLER, Some("false")),
            class("nginx", "k8s.io/ingress-nginx", Some("true")),
        ];
        let c = Classes::of(&theirs, &[]);
        assert_eq!(c.claims(&ingress(None, None)), None);
        assert_eq!(
            c.claims(&ingress(Some("roundhouse"), None)),
            Some(Claim::ClassName)
        );
    }

    #[test]
    fn the_class_flag_limits_our_classes_by_name() {
        let all = [
            class("public", CONTROLLER, None),
            class("internal", CONTROLLER, None),
        ];
        let c = Classes::of(&all, &["internal".to_owned()]);
        assert_eq!(c.claims(&ingress(Some("public"), None)), None);
        assert_eq!(
            c.claims(&ingress(Some("internal"), None)),
            Some(Claim::ClassName)
        );
        let both = Classes::of(&all, &[]);
        assert_eq!(both.names().len(), 2);
    }
}
