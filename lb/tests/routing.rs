//! The route model through the real data plane (sockets, an in-process LB,
//! routes given directly as a `RoutingConfig`; the Kubernetes adapters are
//! tested elsewhere): exact weighted splits, invalid shares, matching and
//! precedence, header modifiers, rewrites, redirects, fixed responses,
//! timeouts, listener scoping, the access filters, gRPC by method — each on
//! the transports it concerns: the HTTP/1.1 fast path (bodiless requests),
//! the hyper path (a request with a body) and HTTP/2 (h2c).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lb::discovery::route::{
    Action, Backend, BackendRef, Cidr, Cors, FixedResponse, HeaderEdits, HeaderMatch, ListenerId,
    Listeners, Match, Order, PathMatch, PathRewrite, Pattern, QueryMatch, Redirect, RedirectStatus,
    Rewrite, Route, RouteKind, Rule, RulePolicy, Scope, SourceRanges, ValueMatch, WeightedBackend,
};
use lb::discovery::{EndpointSpec, HostMatch, Origin, Protocol, RoutingConfig, UpstreamPolicy};

// ---------------------------------------------------------------------------
// Building routes
// ---------------------------------------------------------------------------

fn backend_of(name: &str, endpoints: Vec<EndpointSpec>, protocol: Protocol) -> Arc<Backend> {
    Arc::new(Backend {
        name: name.into(),
        endpoints,
        protocol,
        policy: UpstreamPolicy::default(),
    })
}

fn backend(b: &TestBackend) -> Arc<Backend> {
    backend_of(
        &format!("ns/{}:80", b.name),
        vec![b.spec()],
        Protocol::Http1,
    )
}

fn to(b: Arc<Backend>, weight: u32) -> WeightedBackend {
    WeightedBackend {
        weight,
        target: BackendRef::Resolved(b),
    }
}

fn forward(matches: Vec<Match>, shares: Vec<WeightedBackend>) -> Rule {
    Rule {
        name: None,
        matches,
        filters: Default::default(),
        action: Action::Forward(shares),
        policy: RulePolicy::default(),
    }
}

fn route(name: &str, created: i64, hosts: &[&str], rules: Vec<Rule>) -> Route {
    Route {
        origin: Origin {
            kind: RouteKind::HttpRoute,
            namespace: "ns".into(),
            name: name.into(),
        },
        order: Order {
            created: Some(created),
        },
        scopes: vec![Scope {
            listeners: Listeners::ALL,
            hostnames: hosts.iter().map(|h| HostMatch::parse(h).unwrap()).collect(),
        }],
        rules,
    }
}

fn config(routes: Vec<Route>) -> RoutingConfig {
    RoutingConfig {
        upstreams: vec![],
        routes: routes.into_iter().map(std::sync::Arc::new).collect(),
    }
}

fn edits(
    set: &[(&'static str, &'static str)],
    add: &[(&'static str, &'static str)],
    remove: &[&'static str],
) -> HeaderEdits {
    let pair = |(n, v): &(&'static str, &'static str)| {
        (HeaderName::from_static(n), HeaderValue::from_static(v))
    };
    HeaderEdits {
        set: set.iter().map(pair).collect(),
        add: add.iter().map(pair).collect(),
        remove: remove.iter().map(|n| HeaderName::from_static(n)).collect(),
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// How a request reaches the LB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// A bodiless HTTP/1.1 request: the fast path.
    Fast,
    /// An HTTP/1.1 request with a body: the hyper path.
    Hyper,
    /// HTTP/2 with prior knowledge.
    H2c,
}

const ALL: [Via; 3] = [Via::Fast, Via::Hyper, Via::H2c];

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    /// The echo backend's description of what it received.
    fn echo(&self) -> backend::Echo {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {} {}", self.status, self.body))
    }
}

/// One request through `via`; `headers` include `host` when given.
async fn send(
    lb: SocketAddr,
    via: Via,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let body = match via {
        Via::Hyper => Full::new(Bytes::from_static(b"some body")),
        _ => Full::default(),
    };
    let host = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map_or("test", |(_, v)| v);
    let mut req = match via {
        Via::H2c => Request::builder().uri(format!("http://{host}{target}")),
        _ => Request::builder().uri(target).header("host", host),
    }
    .method(method);
    for (n, v) in headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
    {
        req = req.header(*n, *v);
    }
    let req = req.body(body).unwrap();
    let resp = match via {
        Via::H2c => {
            let mut tx = h2c_client(lb).await;
            tx.ready().await.unwrap();
            tx.send_request(req).await.unwrap()
        }
        _ => {
            let stream = tokio::net::TcpStream::connect(lb).await.unwrap();
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            tx.send_request(req).await.unwrap()
        }
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A GET (with a body for [`Via::Hyper`], which the fast path hands over).
async fn get(lb: SocketAddr, via: Via, target: &str, headers: &[(&str, &str)]) -> Answer {
    send(lb, via, Method::GET, target, headers).await
}

/// Counts of the backend names answering `n` requests over ONE connection
/// (HTTP/1.1 keep-alive or one HTTP/2 connection), and of other statuses.
async fn split_one_connection(lb: SocketAddr, via: Via, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    match via {
        Via::H2c => {
            let mut tx = h2c_client(lb).await;
            for _ in 0..n {
                let (status, _, body, _) = h2_send(&mut tx, h2_get("/host")).await;
                *counts.entry(label(status, &body)).or_default() += 1;
            }
        }
        _ => {
            let mut c = Conn::open(lb).await.unwrap();
            for _ in 0..n {
                let req = Request::builder().uri("/host").header("host", "test");
                let body = if via == Via::Hyper {
                    Full::new(Bytes::from_static(b"x"))
                } else {
                    Full::default()
                };
                let (status, body) = c.send(req.body(body).unwrap()).await.unwrap();
                *counts.entry(label(status, &body)).or_default() += 1;
            }
        }
    }
    counts
}

fn label(status: StatusCode, body: &str) -> String {
    if status == StatusCode::OK {
        body.trim().to_owned()
    } else {
        status.as_u16().to_string()
    }
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

// ---------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_80_20_split_is_exact_through_one_connection_and_many() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let lb = TestLb::start(config(vec![route(
        "weighted",
        1,
        &[],
        vec![forward(
            vec![],
            vec![to(backend(&a), 80), to(backend(&b), 20)],
        )],
    )]));
    for via in ALL {
        assert_eq!(
            split_one_connection(lb.addr, via, 100).await,
            counts(&[("a", 80), ("b", 20)]),
            "{via:?}, one connection"
        );
    }
    // 100 connections, one request each (spread over the LB's workers).
    let mut many = BTreeMap::new();
    for _ in 0..100 {
        let (status, body) = get_once(lb.addr, "/host").await.unwrap();
        *many.entry(label(status, &body)).or_default() += 1;
    }
    assert_eq!(many, counts(&[("a", 80), ("b", 20)]), "100 connections");
    // And in parallel: 4 connections of 50 requests each, concurrently.
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(split_one_connection(lb.addr, Via::Fast, 50)))
        .collect();
    let mut total = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    assert_eq!(
        total,
        counts(&[("a", 160), ("b", 40)]),
        "concurrent clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_spread_over_each_backends_endpoints_and_zero_gets_nothing() {
    let [a1, a2, b, z] = ["a1", "a2", "b", "z"].map(TestBackend::start);
    let two = backend_of("ns/a:80", vec![a1.spec(), a2.spec()], Protocol::Http1);
    let lb = TestLb::start(config(vec![route(
        "w",
        1,
        &[],
        vec![forward(
            vec![],
            vec![to(two, 3), to(backend(&b), 1), to(backend(&z), 0)],
        )],
    )]));
    assert_eq!(
        split_one_connection(lb.addr, Via::Fast, 200).await,
        counts(&[("a1", 75), ("a2", 75), ("b", 50)])
    );
    assert_eq!(z.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_share_answers_500_in_proportion_and_no_backend_is_500() {
    let a = TestBackend::start("a");
    let invalid = WeightedBackend {
        weight: 1,
        target: BackendRef::Invalid("Service ns/missing not found".into()),
    };
    let lb = TestLb::start(config(vec![
        route(
            "half",
            1,
            &[],
            vec![forward(
                vec![Match::prefix("/host")],
                vec![to(backend(&a), 1), invalid],
            )],
        ),
        route(
            "none",
            2,
            &[],
            vec![forward(vec![Match::prefix("/none")], vec![])],
        ),
        route(
            "empty",
            3,
            &[],
            vec![forward(
                vec![Match::prefix("/empty")],
                vec![to(backend_of("ns/empty:80", vec![], Protocol::Http1), 1)],
            )],
        ),
    ]));
    for via in ALL {
        assert_eq!(
            split_one_connection(lb.addr, via, 100).await,
            counts(&[("a", 50), ("500", 50)]),
            "{via:?}"
        );
        assert_eq!(get(lb.addr, via, "/none", &[]).await.status, 500, "{via:?}");
        assert_eq!(
            get(lb.addr, via, "/empty", &[]).await.status,
            503,
            "{via:?}"
        );
    }
    assert_eq!(
        lb.counter("roundhouse_local_responses_total{reason=\"invalid_backend\"}"),
        150
    );
    assert_eq!(
        lb.counter("roundhouse_local_responses_total{reason=\"no_backends\"}"),
        3
    );
}

// ---------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_match_by_host_path_method_headers_and_query_on_every_transport() {
    let names = [
        "any",
        "exact-path",
        "prefix",
        "method",
        "header",
        "query",
        "host",
        "wild",
    ];
    let echo: Vec<TestBackend> = names.iter().map(|n| TestBackend::echo(n, "ns")).collect();
    let to_echo = |i: usize| vec![to(backend(&echo[i]), 1)];
    let header = |n: &'static str, v: &str| HeaderMatch {
        name: HeaderName::from_static(n),
        value: ValueMatch::Exact(v.into()),
    };
    let lb = TestLb::start(config(vec![
        route("any", 1, &[], vec![forward(vec![], to_echo(0))]),
        route(
            "exact",
            2,
            &[],
            vec![forward(vec![Match::exact("/a/b")], to_echo(1))],
        ),
        route(
            "prefix",
            3,
            &[],
            vec![forward(vec![Match::prefix("/a")], to_echo(2))],
        ),
        route(
            "method",
            4,
            &[],
            vec![forward(
                vec![Match {
                    method: Some(Method::DELETE),
                    ..Match::prefix("/a")
                }],
                to_echo(3),
            )],
        ),
        route(
            "header",
            5,
            &[],
            vec![forward(
                vec![Match {
                    headers: vec![header("version", "two")],
                    ..Match::prefix("/a")
                }],
                to_echo(4),
            )],
        ),
        route(
            "query",
            6,
            &[],
            vec![forward(
                vec![Match {
                    query: vec![QueryMatch {
                        name: "v".into(),
                        value: ValueMatch::Regex(Pattern::new("[0-9]+").unwrap()),
                    }],
                    ..Match::prefix("/a")
                }],
                to_echo(5),
            )],
        ),
        route(
            "host",
            7,
            &["one.example"],
            vec![forward(vec![], to_echo(6))],
        ),
        route("wild", 8, &["*.example"], vec![forward(vec![], to_echo(7))]),
    ]));
    /// Method, target, headers, the backend that must answer.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 10] = [
        ("GET", "/x", &[], "any"),
        ("GET", "/a/b", &[], "exact-path"),
        ("GET", "/a/b/c", &[], "prefix"),
        ("GET", "/ab", &[], "any"),
        ("DELETE", "/a/c", &[("version", "two")], "method"),
        ("GET", "/a/c", &[("version", "two")], "header"),
        ("GET", "/a/c?x=1&v=42", &[], "query"),
        ("GET", "/a/c?v=x", &[], "prefix"),
        ("GET", "/a", &[("host", "One.Example:8080")], "host"),
        ("GET", "/a", &[("host", "two.example")], "wild"),
    ];
    for via in ALL {
        for (method, target, headers, want) in cases {
            let method: Method = method.parse().unwrap();
            let a = send(lb.addr, via, method.clone(), target, headers).await;
            assert_eq!(a.status, 200, "{via:?} {method} {target}: {}", a.body);
            let echo = a.echo();
            assert_eq!(echo.name, want, "{via:?} {method} {target} {headers:?}");
            assert_eq!(echo.path, target, "{via:?}: the path is forwarded as sent");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_match_is_404_and_listeners_scope_routes() {
    let e = TestBackend::echo("e", "ns");
    let mut tls_only = route(
        "tls",
        1,
        &[],
        vec![forward(
            vec![Match::prefix("/tls")],
            vec![to(backend(&e), 1)],
        )],
    );
    tls_only.scopes[0].listeners = Listeners::only(ListenerId::TLS);
    let mut plain = route(
        "plain",
        2,
        &["only.example"],
        vec![forward(vec![], vec![to(backend(&e), 1)])],
    );
    plain.scopes[0].listeners = Listeners::only(ListenerId::PLAIN);
    let lb = TestLb::start(config(vec![tls_only, plain]));
    for via in ALL {
        assert_eq!(
            get(lb.addr, via, "/tls", &[]).await.status,
            404,
            "{via:?}: TLS only"
        );
        assert_eq!(
            get(lb.addr, via, "/tls", &[("host", "only.example")])
                .await
                .status,
            200,
            "{via:?}"
        );
        assert_eq!(
            get(lb.addr, via, "/", &[("host", "other.example")])
                .await
                .status,
            404,
            "{via:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_apply_both_ways_on_every_transport() {
    let e = TestBackend::echo("e", "ns");
    let mut rule = forward(vec![Match::prefix("/mod")], vec![to(backend(&e), 1)]);
    rule.filters.request_headers = edits(
        &[
            ("x-header-set", "set-overwrites-values"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
        &[
            ("x-header-add", "header-val-1"),
            ("x-header-add-append", "header-val-2"),
        ],
        &["x-header-remove"],
    );
    rule.filters.response_headers = edits(
        &[("x-resp-set", "overwritten")],
        &[("x-resp-add", "added")],
        &["x-resp-remove"],
    );
    let lb = TestLb::start(config(vec![route("mod", 1, &[], vec![rule])]));
    for via in ALL {
        let a = get(
            lb.addr,
            via,
            "/mod/x",
            &[
                ("x-header-set", "original"),
                ("x-header-add-append", "append-val-1"),
                ("x-header-remove", "gone"),
                (
                    "x-echo-set-header",
                    "X-Resp-Set: from-backend, X-Resp-Remove: bye, X-Resp-Add: first",
                ),
            ],
        )
        .await;
        assert_eq!(a.status, 200, "{via:?}: {}", a.body);
        let echo = a.echo();
        let h = |n: &str| echo.headers.get(n).cloned().unwrap_or_default();
        assert_eq!(h("x-header-set"), ["set-overwrites-values"], "{via:?}");
        assert_eq!(h("x-header-add"), ["header-val-1"], "{via:?}");
        assert_eq!(
            h("x-header-add-append"),
            ["append-val-1", "header-val-2"],
            "{via:?}"
        );
        assert!(h("x-header-remove").is_empty(), "{via:?}");
        assert_eq!(h("x-forwarded-for"), ["127.0.0.1"], "{via:?}: the LB's own");
        assert_eq!(h("x-forwarded-proto"), ["http"], "{via:?}");
        let resp = |n: &str| -> Vec<&str> {
            a.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(resp("x-resp-set"), ["overwritten"], "{via:?}");
        assert_eq!(resp("x-resp-add"), ["first", "added"], "{via:?}");
        assert!(resp("x-resp-remove").is_empty(), "{via:?}");
        assert!(!a.headers.contains_key("connection") || via != Via::H2c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrites_change_path_and_host_but_not_the_forwarded_host() {
    let e = TestBackend::echo("e", "ns");
    let rewrite = |m: Match, host: Option<&'static str>, path: PathRewrite| {
        let mut r = forward(vec![m], vec![to(backend(&e), 1)]);
        r.filters.rewrite = Some(Rewrite {
            hostname: host.map(HeaderValue::from_static),
            path: Some(path),
        });
        r
    };
    let lb = TestLb::start(config(vec![route(
        "rw",
        1,
        &[],
        vec![
            rewrite(
                Match::prefix("/prefix/one"),
                Some("rewritten.example"),
                PathRewrite::ReplacePrefix("/one".into()),
            ),
            rewrite(
                Match::prefix("/strip"),
                None,
                PathRewrite::ReplacePrefix("/".into()),
            ),
            rewrite(
                Match::prefix("/full"),
                None,
                PathRewrite::ReplaceFull("/one".into()),
            ),
            rewrite(
                Match {
                    path: PathMatch::Regex(Pattern::new("/something(/|$)(.*)").unwrap()),
                    ..Match::default()
                },
                None,
                PathRewrite::Captures("/$2".into()),
            ),
        ],
    )]));
    for via in ALL {
        for (target, path, host) in [
            ("/prefix/one/two?q=1", "/one/two?q=1", "rewritten.example"),
            ("/strip/three", "/three", "orig.example"),
            ("/strip", "/", "orig.example"),
            ("/full/one/two", "/one", "orig.example"),
            ("/something/new", "/new", "orig.example"),
            ("/something", "/", "orig.example"),
        ] {
            let a = get(lb.addr, via, target, &[("host", "orig.example")]).await;
            assert_eq!(a.status, 200, "{via:?} {target}: {}", a.body);
            let echo = a.echo();
            assert_eq!(echo.path, path, "{via:?} {target}");
            assert_eq!(echo.host, host, "{via:?} {target}");
            assert_eq!(
                echo.headers["x-forwarded-host"],
                ["orig.example"],
                "{via:?} {target}: the client's host"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_fixed_responses_are_answered_by_the_lb() {
    let e = TestBackend::echo("e", "ns");
    let redirect = |path: &str, r: Redirect| Rule {
        action: Action::Redirect(r),
        ..forward(vec![Match::prefix(path)], vec![])
    };
    let lb = TestLb::start(config(vec![route(
        "r",
        1,
        &[],
        vec![
            redirect(
                "/host-and-status",
                Redirect {
                    hostname: Some("example.org".into()),
                    status: RedirectStatus::MOVED_PERMANENTLY,
                    ..Redirect::default()
                },
            ),
            redirect(
                "/https",
                Redirect {
                    scheme: Some("https".into()),
                    ..Redirect::default()
                },
            ),
            redirect(
                "/port",
                Redirect {
                    port: Some(8443),
                    path: Some(PathRewrite::ReplacePrefix("/moved".into())),
                    status: RedirectStatus::new(307).unwrap(),
                    ..Redirect::default()
                },
            ),
            Rule {
                action: Action::Respond(FixedResponse {
                    status: StatusCode::IM_A_TEAPOT,
                    body: "short and stout\n".into(),
                }),
                ..forward(vec![Match::exact("/teapot")], vec![])
            },
            forward(vec![], vec![to(backend(&e), 1)]),
        ],
    )]));
    for via in ALL {
        let host = [("host", "gw.example:8080")];
        let a = get(lb.addr, via, "/host-and-status/x?y=1", &host).await;
        assert_eq!(a.status, 301, "{via:?}");
        assert_eq!(
            a.headers["location"], "http://example.org:8080/host-and-status/x?y=1",
            "{via:?}"
        );
        let a = get(lb.addr, via, "/https/a", &host).await;
        assert_eq!(
            (a.status, &a.headers["location"]),
            (
                StatusCode::FOUND,
                &HeaderValue::from_static("https://gw.example/https/a")
            ),
            "{via:?}"
        );
        let a = get(lb.addr, via, "/port/a", &host).await;
        assert_eq!(a.status, 307, "{via:?}");
        assert_eq!(
            a.headers["location"], "http://gw.example:8443/moved/a",
            "{via:?}"
        );
        let a = get(lb.addr, via, "/teapot", &host).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (418, "short and stout\n"),
            "{via:?}"
        );
        assert_eq!(
            get(lb.addr, via, "/other", &host).await.status,
            200,
            "{via:?}"
        );
    }
    assert_eq!(e.hits(), 3, "only the last rule reached the backend");
    assert_eq!(
        lb.counter("roundhouse_local_responses_total{reason=\"redirect\"}"),
        9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_filters_cors_and_body_limits() {
    let e = TestBackend::echo("e", "ns");
    let with = |path: &str, f: fn(&mut lb::discovery::route::Filters)| {
        let mut r = forward(vec![Match::prefix(path)], vec![to(backend(&e), 1)]);
        f(&mut r.filters);
        r
    };
    let lb = TestLb::start(config(vec![route(
        "f",
        1,
        &[],
        vec![
            with("/denied", |f| {
                f.source = Some(SourceRanges {
                    allow: vec![],
                    deny: vec![Cidr::parse("127.0.0.0/8").unwrap()],
                })
            }),
            with("/not-allowed", |f| {
                f.source = Some(SourceRanges {
                    allow: vec![Cidr::parse("10.0.0.0/8").unwrap()],
                    deny: vec![],
                })
            }),
            with("/allowed", |f| {
                f.source = Some(SourceRanges {
                    allow: vec![Cidr::parse("127.0.0.1").unwrap()],
                    deny: vec![],
                })
            }),
            with("/cors", |f| {
                f.cors = Some(Cors {
                    allow_origins: vec!["https://app.example".into()],
                    allow_methods: vec![Method::GET, Method::PUT],
                    allow_headers: vec![HeaderName::from_static("x-token")],
                    expose_headers: vec![HeaderName::from_static("x-id")],
                    allow_credentials: false,
                    max_age: Some(60),
                })
            }),
            with("/small", |f| f.max_body_bytes = Some(4)),
        ],
    )]));
    for via in ALL {
        assert_eq!(
            get(lb.addr, via, "/denied", &[]).await.status,
            403,
            "{via:?}"
        );
        assert_eq!(
            get(lb.addr, via, "/not-allowed", &[]).await.status,
            403,
            "{via:?}"
        );
        assert_eq!(
            get(lb.addr, via, "/allowed", &[]).await.status,
            200,
            "{via:?}"
        );
        let pre = send(
            lb.addr,
            via,
            Method::OPTIONS,
            "/cors",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "PUT"),
            ],
        )
        .await;
        assert_eq!(pre.status, 204, "{via:?}");
        assert_eq!(
            pre.headers["access-control-allow-origin"],
            "https://app.example"
        );
        assert_eq!(pre.headers["access-control-allow-methods"], "GET, PUT");
        assert_eq!(pre.headers["access-control-max-age"], "60");
        let a = get(lb.addr, via, "/cors", &[("origin", "https://app.example")]).await;
        assert_eq!(a.status, 200, "{via:?}");
        assert_eq!(
            a.headers["access-control-allow-origin"], "https://app.example",
            "{via:?}"
        );
        assert_eq!(
            a.headers["access-control-expose-headers"], "x-id",
            "{via:?}"
        );
        let other = get(lb.addr, via, "/cors", &[("origin", "https://evil.example")]).await;
        assert!(
            !other.headers.contains_key("access-control-allow-origin"),
            "{via:?}"
        );
    }
    // "some body" is 9 bytes: over the rule's 4 (the hyper path reads bodies).
    assert_eq!(get(lb.addr, Via::Hyper, "/small", &[]).await.status, 413);
    assert_eq!(get(lb.addr, Via::Fast, "/small", &[]).await.status, 200);
    assert_eq!(
        e.hits(),
        3 * 3 + 1,
        "403s, preflights and the 413 never reach it"
    );
}

/// A rule's body limit (an Ingress's proxy-body-size) also holds for an
/// HTTP/2 request body without a length, counted as it streams to an
/// HTTP/1.1 endpoint: refused with 413 once past the limit, and the
/// connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_body_limit_holds_for_http2_bodies_without_a_length() {
    // Reads the whole body before answering, so only the LB can answer 413.
    let e = TestBackend::with_service("e", |req: Request<hyper::body::Incoming>| async move {
        let answer = match req.into_body().collect().await {
            Ok(body) => format!("len={}", body.to_bytes().len()),
            // The LB gave up on the request (past the limit).
            Err(e) => format!("cut: {e}"),
        };
        http::Response::new(Full::new(Bytes::from(answer)))
    });
    let mut small = forward(vec![Match::prefix("/small")], vec![to(backend(&e), 1)]);
    small.filters.max_body_bytes = Some(1000);
    let lb = TestLb::start(config(vec![route("limits", 1, &[], vec![small])]));
    let tcp = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let (tx, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let post = || Request::post("http://test/small").body(()).unwrap();
    let mut open = tx.clone().ready().await.unwrap();
    let (resp, mut body) = open.send_request(post(), false).unwrap();
    for _ in 0..5 {
        // The stream may be answered and reset before all of it is sent.
        if body
            .send_data(Bytes::from(vec![b'x'; 1000]), false)
            .is_err()
        {
            break;
        }
    }
    let resp = within(HANG, resp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Under the limit, on the same connection: forwarded whole.
    let mut open = tx.clone().ready().await.unwrap();
    let (resp, mut body) = open.send_request(post(), false).unwrap();
    body.send_data(Bytes::from(vec![b'x'; 600]), true).unwrap();
    let resp = within(HANG, resp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut rx = resp.into_body();
    let mut out = Vec::new();
    while let Some(data) = rx.data().await {
        out.extend_from_slice(&data.unwrap());
    }
    assert_eq!(out, b"len=600");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_timeouts_answer_504() {
    // An endpoint that accepts requests and never answers.
    let hang = TestBackend::with_service("hang", |_req| async {
        std::future::pending::<()>().await;
        unreachable!()
    });
    let spec = hang.spec();
    let mut backend_timeout = forward(
        vec![Match::prefix("/backend")],
        vec![to(
            backend_of("ns/hang:80", vec![spec.clone()], Protocol::Http1),
            1,
        )],
    );
    backend_timeout.policy.backend_request_timeout = Some(Duration::from_millis(200));
    let mut request_timeout = forward(
        vec![Match::prefix("/request")],
        vec![to(backend_of("ns/hang:80", vec![spec], Protocol::Http1), 1)],
    );
    request_timeout.policy.request_timeout = Some(Duration::from_millis(200));
    let lb = TestLb::start(config(vec![route(
        "t",
        1,
        &[],
        vec![backend_timeout, request_timeout],
    )]));
    for via in ALL {
        for path in ["/backend", "/request"] {
            let a = within(Duration::from_secs(10), get(lb.addr, via, path, &[])).await;
            assert_eq!(a.status, 504, "{via:?} {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_sticks_after_a_round_robin_first_pick() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let both = backend_of("ns/ab:80", vec![a.spec(), b.spec()], Protocol::Http1);
    let mut rule = forward(vec![], vec![to(both, 1)]);
    rule.filters.affinity = Some(lb::discovery::route::CookieAffinity {
        name: "route".into(),
        max_age: Some(Duration::from_secs(60)),
        path: None,
    });
    let lb = TestLb::start(config(vec![route("sticky", 1, &[], vec![rule])]));
    for via in [Via::Fast, Via::H2c] {
        // First picks rotate and each gets its cookie.
        let first = get(lb.addr, via, "/host", &[]).await;
        let second = get(lb.addr, via, "/host", &[]).await;
        assert_ne!(first.body, second.body, "{via:?}: round-robin first picks");
        let cookie = first.headers["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            cookie.starts_with("route=") && cookie.contains("Max-Age=60"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_owned();
        for _ in 0..5 {
            let again = get(lb.addr, via, "/host", &[("cookie", &pair)]).await;
            assert_eq!(again.body, first.body, "{via:?}: sticks");
            assert!(
                !again.headers.contains_key("set-cookie"),
                "{via:?}: already set"
            );
        }
        // A cookie naming no endpoint is a new pick with a new cookie.
        let stale = get(
            lb.addr,
            via,
            "/host",
            &[("cookie", "route=0123456789abcdef")],
        )
        .await;
        assert_eq!(stale.status, 200);
        assert!(stale.headers.contains_key("set-cookie"), "{via:?}");
    }
}

// ---------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_methods_route_by_path_and_balance_per_call() {
    let (g1, g2) = (
        H2cBackend::start("g1", true).await,
        H2cBackend::start("g2", true).await,
    );
    let other = H2cBackend::start("other", true).await;
    let grpc = backend_of("ns/grpc:50051", vec![g1.spec(), g2.spec()], Protocol::H2c);
    let lb = TestLb::start(config(vec![Route {
        origin: Origin {
            kind: RouteKind::GrpcRoute,
            namespace: "ns".into(),
            name: "hosts".into(),
        },
        ..route(
            "hosts",
            1,
            &[],
            vec![
                forward(
                    vec![Match::exact("/roundhouse.v1.Hosts/Get")],
                    vec![to(grpc, 1)],
                ),
                forward(
                    vec![Match::prefix("/roundhouse.v1.Other")],
                    vec![to(
                        backend_of("ns/other:50051", vec![other.spec()], Protocol::H2c),
                        1,
                    )],
                ),
            ],
        )
    }]));
    let call = |path: &str| {
        Request::post(format!("http://test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap()
    };
    // Nagle off: a call is a HEADERS and a DATA frame, written apart.
    let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut tx = h2_client(stream).await;
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        let (status, _, body, trailers) = h2_send(&mut tx, call("/roundhouse.v1.Hosts/Get")).await;
        assert_eq!(status, 200);
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        *seen.entry(body.trim().to_owned()).or_default() += 1;
    }
    assert_eq!(
        seen,
        counts(&[("g1", 50), ("g2", 50)]),
        "per call, one channel"
    );
    let (_, _, body, _) = h2_send(&mut tx, call("/roundhouse.v1.Other/Any")).await;
    assert_eq!(body.trim(), "other");
    let (status, headers, _, _) = h2_send(&mut tx, call("/roundhouse.v1.Hosts/Put")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "12", "no route: UNIMPLEMENTED");
    drop(tx);
    lb.stop().unwrap();
}
