//! Request → upstream matching on arbitrary Host values and paths.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arbitrary::Arbitrary;
use lb::metrics::Metrics;
use lb::discovery::RouteMatch;
use lb::selection::route::{Routes, normalize_host, prefix_matches};
use lb::selection::{Endpoint, Policy, Strategy, Upstream};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    routes: Vec<(Option<String>, Option<String>)>,
    requests: Vec<(Option<String>, String)>,
}

fuzz_target!(|input: Input| {
    let metrics = Metrics::default();
    let addr: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    let upstreams: Vec<Arc<Upstream>> = input
        .routes
        .into_iter()
        .take(8)
        .enumerate()
        .map(|(i, (host, path_prefix))| {
            let name: Arc<str> = format!("u{i}").into();
            let endpoint = Arc::new(Endpoint::new(&name, addr, None, 1, &metrics));
            Arc::new(Upstream::new(
                name,
                RouteMatch { host, path_prefix },
                vec![endpoint],
                Policy::default(),
                Strategy::RoundRobin,
                Arc::new(AtomicUsize::new(0)),
            ))
        })
        .collect();
    let routes = Routes::new(&upstreams);
    assert_eq!(routes.len(), upstreams.len());

    for (host, path) in input.requests.iter().take(16) {
        if let Some(h) = host {
            let n = normalize_host(h);
            assert!(n.len() <= h.len(), "normalize_host grew {h:?} to {n:?}");
        }
        let found = routes.find(host.as_deref(), path);
        if let Some(u) = found {
            let prefix = u.route.path_prefix.as_deref().unwrap_or("/");
            assert!(
                prefix_matches(prefix, path),
                "{} chosen for {path:?} but its prefix {prefix:?} does not match",
                u.name
            );
            // A host-specific upstream is only chosen for its own host.
            if let Some(want) = &u.route.host {
                let got = host.as_deref().map(normalize_host).unwrap_or_default();
                assert!(
                    want.eq_ignore_ascii_case(got),
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
                        path.starts_with(p.trim_end_matches('/')),
                        "prefix_matches({p:?}, {path:?}) but the path does not start with it"
                    );
                }
            }
        }
        // Bare strings too, not only configured prefixes.
        if prefix_matches(path, path) {
            assert!(path.starts_with(path.trim_end_matches('/')));
        }
    }
});
