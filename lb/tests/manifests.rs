//! The deployment files agree with the code: the CRD files are exactly
//! `lb crd`'s output, and the Role grants exactly the API calls the
//! controller makes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lb::discovery::k8s::REQUIRED_RBAC;
use serde::Deserialize;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn crd_files_are_the_generated_crd() {
    let generated = lb::crd::crd_yaml();
    for path in [
        "manifests/01-crd.yaml",
        "helm/roundhouse/crds/upstreams.yaml",
    ] {
        assert!(
            read(path) == generated,
            "{path} differs from `lb crd`; regenerate: cargo run -q -p lb -- crd > {path}"
        );
    }
}

#[test]
fn role_grants_exactly_what_the_code_uses() {
    let text = read("manifests/10-rbac.yaml");
    let mut roles = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        assert_ne!(v["kind"], "ClusterRole", "no cluster-wide RBAC");
        if v["kind"] == "Role" {
            roles.push(v);
        }
    }
    assert_eq!(roles.len(), 1);
    let mut granted: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for rule in roles[0]["rules"].as_sequence().unwrap() {
        for g in rule["apiGroups"].as_sequence().unwrap() {
            for r in rule["resources"].as_sequence().unwrap() {
                let verbs = granted
                    .entry((g.as_str().unwrap().into(), r.as_str().unwrap().into()))
                    .or_default();
                verbs.extend(
                    rule["verbs"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned()),
                );
                verbs.sort();
            }
        }
    }
    let needed: BTreeMap<(String, String), Vec<String>> = REQUIRED_RBAC
        .iter()
        .map(|(g, r, verbs)| {
            let mut v: Vec<String> = verbs.iter().map(|s| (*s).to_owned()).collect();
            v.sort();
            (((*g).to_owned(), (*r).to_owned()), v)
        })
        .collect();
    assert_eq!(
        granted, needed,
        "manifests/10-rbac.yaml must grant exactly REQUIRED_RBAC"
    );
}
