//! The LB with a fixed routing table of a chosen shape, for measuring what
//! routing costs per request (`bench/route-cost.sh` runs it under
//! callgrind). Not a product: `lb serve` is.
//!
//! ```text
//! route_cost SHAPE LISTEN ADMIN BACKEND...
//! ```
//!
//! Shapes (every one routes `GET /host` with `Host: r0.example.com` to the
//! backends, round-robin):
//! - `upstream`: one catch-all `Upstream` (what `lb serve --backend` builds);
//! - `upstream-host`: one `Upstream` for host `r0.example.com` and path
//!   prefix `/host`: the same match as `route`, in the `Upstream` shape;
//! - `route`: one HTTPRoute-style route: hostname `r0.example.com`, one rule
//!   `PathPrefix /host` to one backend (weight 1) holding the endpoints;
//! - `routes5`: one route for `r0.example.com` with 5 rules (`/a` … `/d`,
//!   `/host`), one backend;
//! - `many`: 1,000 routes of 5 rules each, for `r0.example.com` …
//!   `r999.example.com`, each with its own backend over the endpoints;
//! - `many-one-host`: the same 5,000 rules all for `r0.example.com`, route
//!   `i` under `/r{i}/…` except route 0 (one large, indexed bucket).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use lb::discovery::route::{Backend, Listeners, Match, Order, Route, RouteKind, Rule, Scope};
use lb::discovery::{
    EndpointSpec, FixedDiscovery, HostMatch, Origin, Protocol, RouteMatch, RoutingConfig,
    UpstreamConfig, UpstreamPolicy,
};
use lb::proxy::ProxyConfig;
use lb::selection::Policy;
use lb::server::{self, Bound, Settings};

fn route(i: usize, host: &str, prefixes: &[String], endpoints: &[EndpointSpec]) -> Route {
    let backend = Arc::new(Backend {
        name: format!("bench/svc-{i}:80").into(),
        endpoints: endpoints.to_vec(),
        protocol: Protocol::Http1,
        policy: UpstreamPolicy::default(),
    });
    Route {
        origin: Origin {
            kind: RouteKind::HttpRoute,
            namespace: "bench".into(),
            name: format!("route-{i}").into(),
        },
        order: Order {
            created: Some(i as i64),
        },
        scopes: vec![Scope {
            listeners: Listeners::ALL,
            hostnames: vec![HostMatch::parse(host).unwrap()],
        }],
        rules: prefixes
            .iter()
            .map(|p| Rule::forward(vec![Match::prefix(p)], backend.clone()))
            .collect(),
    }
}

fn five(prefix: &str) -> Vec<String> {
    ["a", "b", "c", "d", "host"]
        .iter()
        .map(|s| format!("{prefix}/{s}"))
        .collect()
}

fn routing(shape: &str, endpoints: Vec<EndpointSpec>) -> RoutingConfig {
    let routes = match shape {
        "upstream" => {
            return RoutingConfig {
                upstreams: vec![UpstreamConfig::catch_all("default", endpoints)],
                routes: Vec::new(),
            };
        }
        "upstream-host" => {
            let mut u = UpstreamConfig::catch_all("default", endpoints);
            u.route = RouteMatch {
                host: Some("r0.example.com".into()),
                path_prefix: Some("/host".into()),
            };
            return RoutingConfig {
                upstreams: vec![u],
                routes: Vec::new(),
            };
        }
        "route" => vec![route(0, "r0.example.com", &["/host".into()], &endpoints)],
        "routes5" => vec![route(0, "r0.example.com", &five(""), &endpoints)],
        "many" => (0..1000)
            .map(|i| route(i, &format!("r{i}.example.com"), &five(""), &endpoints))
            .collect(),
        "many-one-host" => (0..1000)
            .map(|i| {
                let prefix = if i == 0 {
                    String::new()
                } else {
                    format!("/r{i}")
                };
                route(i, "r0.example.com", &five(&prefix), &endpoints)
            })
            .collect(),
        other => panic!("unknown shape {other}"),
    };
    RoutingConfig {
        upstreams: Vec::new(),
        routes: routes.into_iter().map(std::sync::Arc::new).collect(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [shape, listen, admin, backends @ ..] = &args[..] else {
        eprintln!("usage: route_cost SHAPE LISTEN ADMIN BACKEND...");
        std::process::exit(2);
    };
    let endpoints = backends
        .iter()
        .map(|b| EndpointSpec::new(b.parse::<SocketAddr>().expect("BACKEND is ip:port")))
        .collect();
    let routing = routing(shape, endpoints);
    let settings = Settings {
        listen: listen.parse().expect("LISTEN is ip:port"),
        admin_listen: admin.parse().expect("ADMIN is ip:port"),
        proxy: ProxyConfig {
            workers: 1,
            ..ProxyConfig::default()
        },
        policy: Policy::default(),
        drain_delay: Duration::ZERO,
        tls: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let bound = Bound::bind(&settings).unwrap();
        server::run(
            settings,
            bound,
            Box::new(FixedDiscovery(routing)),
            lb::shutdown::signal().boxed(),
            |_| {},
        )
        .await
        .unwrap();
    });
}
