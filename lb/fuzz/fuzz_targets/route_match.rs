//! Request → rule matching on arbitrary Host values and paths, through the
//! routing table built from `Upstream`-shaped routes.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use lb::discovery::route::{ListenerId, prefix_matches};
use lb::discovery::{EndpointSpec, RouteMatch, RoutingConfig, UpstreamConfig};
use lb::metrics::Metrics;
use lb::selection::route::{SimpleRequest, normalize_host};
use lb::selection::{Balancer, Policy};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    routes: Vec<(Option<String>, Option<String>)>,
    requests: Vec<(Option<String>, String)>,
}

fuzz_target!(|input: Input| {
    let upstreams: Vec<UpstreamConfig> = input
        .routes
        .into_iter()
        .take(8)
        .enumerate()
        .map(|(i, (host, path_prefix))| {
            let mut u = UpstreamConfig::catch_all(
                format!("u{i}"),
                vec![EndpointSpec::new("127.0.0.1:8000".parse().unwrap())],
            );
            u.route = RouteMatch { host, path_prefix };
            u
        })
        .collect();
    let balancer = Balancer::new(Policy::default(), Arc::new(Metrics::default()));
    balancer.apply(&RoutingConfig {
        upstreams: upstreams.clone(),
        routes: Vec::new(),
    });
    let table = balancer.load();
    assert_eq!(table.routes.len(), upstreams.len());

    for (host, target) in input.requests.iter().take(16) {
        if let Some(h) = host {
            let n = normalize_host(h);
            assert!(n.len() <= h.len(), "normalize_host grew {h:?} to {n:?}");
        }
        let req = SimpleRequest::get(target);
        let path = req.path;
        let found = table.routes.find(ListenerId::PLAIN, host.as_deref(), &req);
        if let Some(hit) = found {
            let u = upstreams
                .iter()
                .find(|u| *u.name == *hit.rule.label)
                .expect("a rule is named after its upstream");
            let prefix = u.route.path_prefix.as_deref().unwrap_or("/");
            assert!(
                prefix_matches(prefix, path),
                "{} chosen for {path:?} but its prefix {prefix:?} does not match",
                u.name
            );
            // A host-specific upstream is only chosen for its own host.
            if let Some(want) = &u.route.host {
                let got = host.as_deref().map(normalize_host).unwrap_or_default();
                let got = got.strip_suffix('.').unwrap_or(got);
                assert!(
                    want.trim_end_matches('.').eq_ignore_ascii_case(got),
                    "{} (host {want:?}) chosen for host {host:?}",
                    u.name
                );
            }
        } else {
            // Nothing chosen: no catch-all upstream may match the path.
            for u in &upstreams {
                if u.route.host.is_none() {
                    let prefix = u.route.path_prefix.as_deref().unwrap_or("/");
                    assert!(
                        !prefix_matches(prefix, path),
                        "{} matches {path:?} but none chosen",
                        u.name
                    );
                }
            }
        }
        for u in &upstreams {
            if let Some(p) = &u.route.path_prefix {
                if prefix_matches(p, path) {
                    assert!(
                        path.starts_with(p.strip_suffix('/').unwrap_or(p)),
                        "prefix_matches({p:?}, {path:?}) but the path does not start with it"
                    );
                }
            }
        }
    }
});
