//! The Gateway API conformance suite's core tests of the `GATEWAY-HTTP`
//! profile (v1.6.1: the tests whose features are only Gateway, HTTPRoute
//! and ReferenceGrant), reproduced: one test per upstream test, with the
//! same objects (written here), the same requests and the same expected
//! outcomes, against the real `lb` binary, the fake API server and echo
//! backends. docs/gateway-api.md has the table: upstream test, this test,
//! result.

mod common;
#[path = "gateway/harness.rs"]
mod harness;

use common::fake_api::Kind;
use harness::*;

/// GatewayClassObservedGenerationBump: the class is accepted, and after a
/// spec change its conditions name the new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_class_observed_generation_bump() {
    let c = Cluster::base();
    let _lb = c.lb(&[]);
    c.wait_status(
        Kind::GatewayClass,
        "",
        CLASS,
        "Accepted with generation 1",
        |s| has(&s["conditions"], "Accepted", "True", "Accepted") && latest(s, 1),
    )
    .await;
    let mut class = c.api.get(Kind::GatewayClass, "", CLASS).unwrap();
    class["spec"]["description"] = "new".into();
    c.api.put(Kind::GatewayClass, class);
    c.wait_status(
        Kind::GatewayClass,
        "",
        CLASS,
        "Accepted with generation 2",
        |s| has(&s["conditions"], "Accepted", "True", "Accepted") && latest(s, 2),
    )
    .await;
    let s = c.status(Kind::GatewayClass, "", CLASS);
    let features: Vec<&str> = s["supportedFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for core in ["Gateway", "HTTPRoute", "ReferenceGrant"] {
        assert!(features.contains(&core), "{features:?}");
    }
}

/// HTTPRouteSimpleSameNamespace: a route in the Gateway's namespace
/// reaches its backend; the route is Accepted with resolved references.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_simple_same_namespace() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: gateway-conformance-infra-test, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace}]
  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]
"#,
    );
    let lb = c.lb(&["gateway-conformance-infra/same-namespace"]);
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "gateway-conformance-infra-test",
        "Accepted, ResolvedRefs",
        |s| {
            route_has(s, "same-namespace", "Accepted", "True", "Accepted")
                && route_has(s, "same-namespace", "ResolvedRefs", "True", "ResolvedRefs")
        },
    )
    .await;
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "same-namespace",
        "Programmed with an address",
        |s| {
            has(&s["conditions"], "Programmed", "True", "")
                && s["addresses"][0]["value"] == "127.0.0.1"
        },
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::backend(INFRA, "infra-backend-v1"),
    )
    .await;
}

/// The route-attached case shared by most tests: a route in `yaml`
/// attached to Gateway `gw`, served by one LB for that Gateway, once the
/// route is Accepted on it.
async fn serve(c: &Cluster, yaml: &str, gw: &str, routes: &[(&str, &str)]) -> Lb {
    c.apply(yaml);
    let lb = c.lb(&[&format!("{INFRA}/{gw}")]);
    for (ns, name) in routes {
        c.wait_status(Kind::HttpRoute, ns, name, "Accepted", |s| {
            route_has(s, gw, "Accepted", "True", "Accepted")
        })
        .await;
    }
    lb
}

// === Gateway and GatewayClass ===

/// GatewayListenerUnsupportedProtocol (GatewayInvalidListeners...): a
/// Gateway whose only listener has an unknown protocol is not accepted;
/// with one valid listener it is, reason ListenersNotValid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_listener_unsupported_protocol() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway-only-unsupported-protocols, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners: [{name: invalid, port: 1111, protocol: INVALID}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway-supported-and-unsupported-protocols, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: invalid, port: 1111, protocol: INVALID}
"#,
    );
    let _one = c.lb(&["gateway-conformance-infra/gateway-only-unsupported-protocols"]);
    let _two = c.lb(&["gateway-conformance-infra/gateway-supported-and-unsupported-protocols"]);
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-only-unsupported-protocols",
        "not accepted",
        |s| {
            latest(s, 1)
                && has(&s["conditions"], "Accepted", "False", "ListenersNotValid")
                && listener(s, "invalid").is_some_and(|l| {
                    has(&l["conditions"], "Accepted", "False", "UnsupportedProtocol")
                        && l["supportedKinds"] == serde_json::json!([])
                        && l["attachedRoutes"] == 0
                })
        },
    )
    .await;
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-supported-and-unsupported-protocols",
        "accepted",
        |s| {
            latest(s, 1)
                && has(&s["conditions"], "Accepted", "True", "ListenersNotValid")
                && listener(s, "http").is_some_and(|l| {
                    has(&l["conditions"], "Accepted", "True", "Accepted")
                        && l["supportedKinds"]
                            .as_array()
                            .is_some_and(|k| k.iter().any(|k| k["kind"] == "HTTPRoute"))
                })
                && listener(s, "invalid").is_some_and(|l| {
                    has(&l["conditions"], "Accepted", "False", "UnsupportedProtocol")
                })
        },
    )
    .await;
}

/// GatewayInvalidParametersRef: infrastructure parameters are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_invalid_parameters_ref() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway-invalid-parameters-ref, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners: [{name: http, port: 80, protocol: HTTP}]
  infrastructure: {parametersRef: {group: invalid.io, kind: InvalidParameters, name: invalid}}
"#,
    );
    let _lb = c.lb(&["gateway-conformance-infra/gateway-invalid-parameters-ref"]);
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-invalid-parameters-ref",
        "InvalidParameters",
        |s| latest(s, 1) && has(&s["conditions"], "Accepted", "False", "InvalidParameters"),
    )
    .await;
}

/// GatewayInvalidRouteKind: unknown route kinds in allowedRoutes are
/// ResolvedRefs=False InvalidRouteKinds; the known ones stay supported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_invalid_route_kind() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway-only-invalid-route-kind, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}, kinds: [{kind: InvalidRoute}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway-supported-and-invalid-route-kind, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {namespaces: {from: All}, kinds: [{kind: InvalidRoute}, {kind: HTTPRoute}]}
"#,
    );
    let _a = c.lb(&["gateway-conformance-infra/gateway-only-invalid-route-kind"]);
    let _b = c.lb(&["gateway-conformance-infra/gateway-supported-and-invalid-route-kind"]);
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-only-invalid-route-kind",
        "InvalidRouteKinds, no kinds",
        |s| {
            listener(s, "http").is_some_and(|l| {
                has(
                    &l["conditions"],
                    "ResolvedRefs",
                    "False",
                    "InvalidRouteKinds",
                ) && l["supportedKinds"] == serde_json::json!([])
                    && l["attachedRoutes"] == 0
            })
        },
    )
    .await;
    c.wait_status(Kind::Gateway, INFRA, "gateway-supported-and-invalid-route-kind", "InvalidRouteKinds, HTTPRoute", |s| {
        listener(s, "http").is_some_and(|l| {
            has(&l["conditions"], "ResolvedRefs", "False", "InvalidRouteKinds")
                && l["supportedKinds"]
                    == serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}])
        })
    })
    .await;
}

/// GatewayInvalidTLSConfiguration: a missing Secret, a wrong group, a
/// wrong kind, a malformed Secret: each listener ResolvedRefs=False
/// InvalidCertificateRef.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_invalid_tls_configuration() {
    let c = Cluster::base();
    let gw = |name: &str, cert: &str| {
        format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: gateway-conformance-infra}}
spec:
  gatewayClassName: "{{GATEWAY_CLASS_NAME}}"
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    allowedRoutes: {{namespaces: {{from: All}}}}
    tls: {{certificateRefs: [{cert}]}}
"#
        )
    };
    c.apply(&gw(
        "gateway-certificate-nonexistent-secret",
        r#"{group: "", kind: Secret, name: nonexistent-certificate}"#,
    ));
    c.apply(&gw(
        "gateway-certificate-unsupported-group",
        r#"{group: wrong.group.company.io, kind: Secret, name: tls-validity-checks-certificate}"#,
    ));
    c.apply(&gw(
        "gateway-certificate-unsupported-kind",
        r#"{group: "", kind: WrongKind, name: tls-validity-checks-certificate}"#,
    ));
    c.apply(&gw(
        "gateway-certificate-malformed-secret",
        r#"{group: "", kind: Secret, name: malformed-certificate}"#,
    ));
    c.api.put(
        Kind::Secret,
        serde_json::json!({"metadata": {"name": "malformed-certificate", "namespace": INFRA},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": "bm90IGEgY2VydGlmaWNhdGUK", "tls.key": "bm90IGEga2V5Cg=="}}),
    );
    let _lb = c.lb(&[]);
    for name in [
        "gateway-certificate-nonexistent-secret",
        "gateway-certificate-unsupported-group",
        "gateway-certificate-unsupported-kind",
        "gateway-certificate-malformed-secret",
    ] {
        c.wait_status(Kind::Gateway, INFRA, name, "InvalidCertificateRef", |s| {
            latest(s, 1)
                && listener(s, "https").is_some_and(|l| {
                    has(
                        &l["conditions"],
                        "ResolvedRefs",
                        "False",
                        "InvalidCertificateRef",
                    ) && l["supportedKinds"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k["kind"] == "HTTPRoute"))
                        && l["attachedRoutes"] == 0
                })
        })
        .await;
    }
}

/// The Gateway of the Secret ReferenceGrant tests, in the infra namespace,
/// using Secret `certificate` of the web-backend namespace.
const SECRET_GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: GWNAME, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    allowedRoutes: {namespaces: {from: All}}
    tls: {certificateRefs: [{group: "", kind: Secret, name: certificate, namespace: gateway-conformance-web-backend}]}
"#;

fn secret_grant(
    name: &str,
    ns: &str,
    from: (&str, &str, &str),
    to: (&str, &str, Option<&str>),
) -> String {
    let to_name = to.2.map(|n| format!(", name: {n}")).unwrap_or_default();
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: {name}, namespace: {ns}}}
spec:
  from: [{{group: "{}", kind: {}, namespace: {}}}]
  to: [{{group: "{}", kind: {}{to_name}}}]
"#,
        from.0, from.1, from.2, to.0, to.1
    )
}

const GW_GROUP: &str = "gateway.networking.k8s.io";

/// GatewaySecretMissingReferenceGrant: no grant: RefNotPermitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_secret_missing_reference_grant() {
    let c = Cluster::base();
    c.apply(&SECRET_GATEWAY.replace("GWNAME", "gateway-secret-missing-reference-grant"));
    let _lb = c.lb(&["gateway-conformance-infra/gateway-secret-missing-reference-grant"]);
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-secret-missing-reference-grant",
        "RefNotPermitted",
        |s| {
            listener(s, "https").is_some_and(|l| {
                has(&l["conditions"], "ResolvedRefs", "False", "RefNotPermitted")
                    && l["attachedRoutes"] == 0
            })
        },
    )
    .await;
}

/// GatewaySecretInvalidReferenceGrant: grants that differ in namespace,
/// from-group, from-kind, from-namespace, to-group, to-kind or to-name
/// do not permit the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_secret_invalid_reference_grant() {
    let c = Cluster::base();
    c.apply(&SECRET_GATEWAY.replace("GWNAME", "gateway-secret-invalid-reference-grant"));
    let ok_from = (GW_GROUP, "Gateway", INFRA);
    for (name, ns, from, to) in [
        (
            "wrong-namespace",
            APP,
            ok_from,
            ("", "Secret", Some("certificate")),
        ),
        (
            "wrong-from-group",
            WEB,
            ("not-the-group", "Gateway", INFRA),
            ("", "Secret", Some("certificate")),
        ),
        (
            "wrong-from-kind",
            WEB,
            (GW_GROUP, "HTTPRoute", INFRA),
            ("", "Secret", Some("certificate")),
        ),
        (
            "wrong-from-namespace",
            WEB,
            (GW_GROUP, "Gateway", "elsewhere"),
            ("", "Secret", Some("certificate")),
        ),
        (
            "wrong-to-group",
            WEB,
            ok_from,
            ("not-the-group", "Secret", Some("certificate")),
        ),
        (
            "wrong-to-kind",
            WEB,
            ok_from,
            ("", "Service", Some("certificate")),
        ),
        (
            "wrong-to-name",
            WEB,
            ok_from,
            ("", "Secret", Some("not-the-certificate")),
        ),
    ] {
        c.apply(&secret_grant(
            &format!("reference-grant-{name}"),
            ns,
            from,
            to,
        ));
    }
    let _lb = c.lb(&["gateway-conformance-infra/gateway-secret-invalid-reference-grant"]);
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-secret-invalid-reference-grant",
        "RefNotPermitted",
        |s| {
            listener(s, "https")
                .is_some_and(|l| has(&l["conditions"], "ResolvedRefs", "False", "RefNotPermitted"))
        },
    )
    .await;
}

/// GatewaySecretReferenceGrantAllInNamespace and ...Specific: a grant for
/// every Secret of the namespace, or for that one, permits the reference:
/// the listener is Programmed and serves TLS with that certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_secret_reference_grant_all_in_namespace() {
    secret_reference_grant("gateway-secret-reference-grant-all-in-namespace", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_secret_reference_grant_specific() {
    secret_reference_grant(
        "gateway-secret-reference-grant-specific",
        Some("certificate"),
    )
    .await;
}

async fn secret_reference_grant(gw: &str, to_name: Option<&str>) {
    let c = Cluster::base();
    c.apply(&SECRET_GATEWAY.replace("GWNAME", gw));
    c.apply(&secret_grant(
        "reference-grant",
        WEB,
        (GW_GROUP, "Gateway", INFRA),
        ("", "Secret", to_name),
    ));
    let lb = c.lb(&[&format!("{INFRA}/{gw}")]);
    c.wait_status(Kind::Gateway, INFRA, gw, "listener programmed", |s| {
        latest(s, 1)
            && has(&s["conditions"], "Accepted", "True", "")
            && has(&s["conditions"], "Programmed", "True", "")
            && listener(s, "https").is_some_and(|l| {
                has(&l["conditions"], "ResolvedRefs", "True", "")
                    && has(&l["conditions"], "Programmed", "True", "")
            })
    })
    .await;
    // The certificate is served: a TLS handshake verified against it.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match c
            .send_tls(lb.tls, "example.org", &Req::get("example.org", "/"))
            .await
        {
            Ok(a) => {
                assert_eq!(a.status, 404, "no route attached: {a:?}");
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "TLS: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// GatewayObservedGenerationBump: after a listener is added, every
/// condition names the new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_observed_generation_bump() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway-observed-generation-bump, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
"#,
    );
    let _lb = c.lb(&["gateway-conformance-infra/gateway-observed-generation-bump"]);
    let name = "gateway-observed-generation-bump";
    c.wait_status(Kind::Gateway, INFRA, name, "generation 1", |s| latest(s, 1))
        .await;
    let mut gw = c.api.get(Kind::Gateway, INFRA, name).unwrap();
    gw["spec"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
        {"name": "alternate", "hostname": "foo.com", "port": 80, "protocol": "HTTP",
         "allowedRoutes": {"namespaces": {"from": "All"}}}));
    c.api.put(Kind::Gateway, gw);
    c.wait_status(
        Kind::Gateway,
        INFRA,
        name,
        "generation 2 and two listeners",
        |s| {
            latest(s, 2)
                && listener(s, "alternate")
                    .is_some_and(|l| has(&l["conditions"], "Accepted", "True", ""))
        },
    )
    .await;
}

/// GatewayWithAttachedRoutes: attachedRoutes counts accepted routes per
/// listener, also on a listener whose references do not resolve; a route
/// whose hostnames miss the listener's is NoMatchingListenerHostname.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_with_attached_routes() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway-with-one-attached-route, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      kinds: [{kind: HTTPRoute}]
      namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: gateway-conformance-infra}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http-route-1, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{kind: Gateway, name: gateway-with-one-attached-route, namespace: gateway-conformance-infra}]
  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway-with-two-attached-routes, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    hostname: foo.example.com
    allowedRoutes:
      kinds: [{kind: HTTPRoute}]
      namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: gateway-conformance-infra}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http-route-2, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{kind: Gateway, name: gateway-with-two-attached-routes, namespace: gateway-conformance-infra}]
  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http-route-3, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{kind: Gateway, name: gateway-with-two-attached-routes, namespace: gateway-conformance-infra}]
  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http-route-not-accepted, namespace: gateway-conformance-infra}
spec:
  hostnames: [not-accepted.test.com]
  parentRefs: [{kind: Gateway, name: gateway-with-two-attached-routes, namespace: gateway-conformance-infra}]
  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: unresolved-gateway-with-one-attached-unresolved-route, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - name: tls
    port: 443
    protocol: HTTPS
    allowedRoutes:
      kinds: [{kind: HTTPRoute}]
      namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: gateway-conformance-infra}}}
    tls: {certificateRefs: [{group: "", kind: Secret, name: does-not-exist}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http-route-4, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{kind: Gateway, name: unresolved-gateway-with-one-attached-unresolved-route, namespace: gateway-conformance-infra, sectionName: tls}]
  rules: [{backendRefs: [{name: does-not-exist, port: 8080}]}]
"#,
    );
    let _a = c.lb(&["gateway-conformance-infra/gateway-with-one-attached-route"]);
    let _b = c.lb(&["gateway-conformance-infra/gateway-with-two-attached-routes"]);
    let _c =
        c.lb(&["gateway-conformance-infra/unresolved-gateway-with-one-attached-unresolved-route"]);
    let good = |n: i64| {
        move |s: &serde_json::Value| {
            listener(s, "http").is_some_and(|l| {
                has(&l["conditions"], "Accepted", "True", "")
                    && has(&l["conditions"], "ResolvedRefs", "True", "")
                    && l["attachedRoutes"] == n
            })
        }
    };
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-with-one-attached-route",
        "one route",
        good(1),
    )
    .await;
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-with-two-attached-routes",
        "two routes",
        good(2),
    )
    .await;
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "http-route-not-accepted",
        "NoMatchingListenerHostname",
        |s| {
            route_has(
                s,
                "gateway-with-two-attached-routes",
                "Accepted",
                "False",
                "NoMatchingListenerHostname",
            )
        },
    )
    .await;
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "unresolved-gateway-with-one-attached-unresolved-route",
        "one unresolved route",
        |s| {
            listener(s, "tls").is_some_and(|l| {
                has(&l["conditions"], "Programmed", "False", "")
                    && has(&l["conditions"], "ResolvedRefs", "False", "")
                    && l["attachedRoutes"] == 1
            })
        },
    )
    .await;
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "http-route-4",
        "accepted, refs unresolved",
        |s| {
            let gw = "unresolved-gateway-with-one-attached-unresolved-route";
            route_has(s, gw, "Accepted", "True", "")
                && route_has(s, gw, "ResolvedRefs", "False", "BackendNotFound")
        },
    )
    .await;
}

// === HTTPRoute status ===

/// HTTPRouteInvalidCrossNamespaceParentRef: a route from another namespace
/// on a `Same` listener is NotAllowedByListeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_cross_namespace_parent_ref() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: invalid-cross-namespace-parent-ref, namespace: gateway-conformance-web-backend}
spec:
  parentRefs: [{name: same-namespace, namespace: gateway-conformance-infra}]
  rules: [{backendRefs: [{name: web-backend, port: 8080}]}]
"#,
    );
    let _lb = c.lb(&["gateway-conformance-infra/same-namespace"]);
    c.wait_status(
        Kind::HttpRoute,
        WEB,
        "invalid-cross-namespace-parent-ref",
        "NotAllowedByListeners",
        |s| {
            route_has(
                s,
                "same-namespace",
                "Accepted",
                "False",
                "NotAllowedByListeners",
            ) && latest(s, 1)
        },
    )
    .await;
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "same-namespace",
        "no route attached",
        |s| listener(s, "http").is_some_and(|l| l["attachedRoutes"] == 0),
    )
    .await;
}

/// HTTPRouteInvalidParentRefNotMatchingSectionName: NoMatchingParent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_parentref_not_matching_section_name() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: httproute-listener-not-matching-section-name, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace, namespace: gateway-conformance-infra, port: 80, sectionName: http1}]
  rules: [{backendRefs: [{name: infra-backend-v1, kind: Service, port: 8080}]}]
"#,
    );
    let _lb = c.lb(&["gateway-conformance-infra/same-namespace"]);
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "httproute-listener-not-matching-section-name",
        "NoMatchingParent",
        |s| route_has(s, "same-namespace", "Accepted", "False", "NoMatchingParent"),
    )
    .await;
}

/// HTTPRouteObservedGenerationBump: after a spec change the route's
/// conditions name the new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_observed_generation_bump() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: observed-generation-bump, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace}]
  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]
"#,
    );
    let _lb = c.lb(&["gateway-conformance-infra/same-namespace"]);
    let name = "observed-generation-bump";
    c.wait_status(Kind::HttpRoute, INFRA, name, "generation 1", |s| {
        latest(s, 1) && route_has(s, "same-namespace", "Accepted", "True", "")
    })
    .await;
    let mut r = c.api.get(Kind::HttpRoute, INFRA, name).unwrap();
    r["spec"]["rules"][0]["backendRefs"][0]["name"] = "infra-backend-v2".into();
    c.api.put(Kind::HttpRoute, r);
    c.wait_status(Kind::HttpRoute, INFRA, name, "generation 2", |s| {
        latest(s, 2) && route_has(s, "same-namespace", "Accepted", "True", "")
    })
    .await;
}

/// Another controller's entries in a route's status.parents are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_status_keeps_other_controllers_entries() {
    let c = Cluster::base();
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shared, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace}, {name: elsewhere}]
  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]
status:
  parents:
  - parentRef: {name: elsewhere}
    controllerName: example.com/other-controller
    conditions: [{type: Accepted, status: "True", reason: Accepted, message: "", lastTransitionTime: "2026-01-01T00:00:00Z"}]
"#,
    );
    let _lb = c.lb(&["gateway-conformance-infra/same-namespace"]);
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "shared",
        "ours added, theirs kept",
        |s| {
            route_has(s, "same-namespace", "Accepted", "True", "")
                && s["parents"].as_array().is_some_and(|p| {
                    p.len() == 2
                        && p.iter()
                            .any(|e| e["controllerName"] == "example.com/other-controller")
                })
        },
    )
    .await;
}

// === HTTPRoute routing ===

fn route(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";
const V3: &str = "infra-backend-v3";

/// HTTPRouteCrossNamespace: a route in a namespace the listener's
/// selector admits reaches a backend of its own namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_cross_namespace() {
    let c = Cluster::base();
    let lb = serve(
        &c,
        &route(
            "cross-namespace",
            WEB,
            "  parentRefs: [{name: backend-namespaces, namespace: gateway-conformance-infra}]\n  rules: [{backendRefs: [{name: web-backend, port: 8080}]}]",
        ),
        "backend-namespaces",
        &[(WEB, "cross-namespace")],
    )
    .await;
    c.wait_status(
        Kind::HttpRoute,
        WEB,
        "cross-namespace",
        "ResolvedRefs",
        |s| {
            route_has(
                s,
                "backend-namespaces",
                "ResolvedRefs",
                "True",
                "ResolvedRefs",
            )
        },
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::backend(WEB, "web-backend"),
    )
    .await;
}

/// HTTPRouteExactPathMatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_exact_path_matching() {
    let c = Cluster::base();
    let lb = serve(
        &c,
        &route(
            "exact-matching",
            INFRA,
            "  parentRefs: [{name: same-namespace}]\n  rules:\n  - {matches: [{path: {type: Exact, value: /one}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}\n  - {matches: [{path: {type: Exact, value: /two}}], backendRefs: [{name: infra-backend-v2, port: 8080}]}",
        ),
        "same-namespace",
        &[(INFRA, "exact-matching")],
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/one"),
        &Expect::backend(INFRA, V1),
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/two"),
        &Expect::backend(INFRA, V2),
    )
    .await;
    for path in ["/", "/one/example", "/two/", "/Two"] {
        expect(
            lb.plain,
            &Req::get("example.com", path),
            &Expect::status(404),
        )
        .await;
    }
}

/// HTTPRouteHeaderMatching: exact header matches, ANDed within a match,
/// ORed across matches; the most header conditions win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_header_matching() {
    let c = Cluster::base();
    let lb = serve(
        &c,
        &route(
            "header-matching",
            INFRA,
            r#"  parentRefs: [{name: same-namespace}]
  rules:
  - {matches: [{headers: [{name: version, value: one}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]}
  - {matches: [{headers: [{name: version, value: two}]}], backendRefs: [{name: infra-backend-v2, port: 8080}]}
  - {matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]}
  - {matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]}
  - {matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}], backendRefs: [{name: infra-backend-v2, port: 8080}]}"#,
        ),
        "same-namespace",
        &[(INFRA, "header-matching")],
    )
    .await;
    let r = |h: &[(&str, &str)]| {
        h.iter()
            .fold(Req::get("example.com", "/"), |r, (k, v)| r.header(k, v))
    };
    for (headers, want) in [
        (&[("Version", "one")][..], Some(V1)),
        (&[("Version", "two")], Some(V2)),
        (&[("Version", "two"), ("Color", "orange")], Some(V1)),
        (&[("Version", "two"), ("Color", "blue")], Some(V2)),
        (&[("Color", "orange")], None),
        (&[("Some-Other-Header", "one")], None),
        (&[("Color", "blue")], Some(V1)),
        (&[("Color", "green")], Some(V1)),
        (&[("Color", "red")], Some(V2)),
        (&[("Color", "yellow")], Some(V2)),
        (&[("Color", "purple")], None),
    ] {
        let e = match want {
            Some(b) => Expect::backend(INFRA, b),
            None => Expect::status(404),
        };
        expect(lb.plain, &r(headers), &e).await;
    }
}

/// HTTPRouteHostnameIntersection: route hostnames intersected with the
/// listeners' (exact and wildcard both ways); no intersection: not attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_hostname_intersection() {
    let c = Cluster::base();
    let mut yaml = String::from(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: httproute-hostname-intersection, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - {name: listener-1, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}, hostname: very.specific.com}
  - {name: listener-2, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}, hostname: "*.wildcard.io"}
  - {name: listener-3, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}, hostname: "*.anotherwildcard.io"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: httproute-hostname-intersection-all, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - {name: listener-1, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}
---
"#,
    );
    let gw = "  parentRefs: [{name: httproute-hostname-intersection, namespace: gateway-conformance-infra}]\n";
    for (name, hosts, prefix, backend) in [
        (
            "specific-host-matches-listener-specific-host",
            r#"[non.matching.com, "*.nonmatchingwildcard.io", very.specific.com]"#,
            "/s1",
            V1,
        ),
        (
            "specific-host-matches-listener-wildcard-host",
            "[non.matching.com, wildcard.io, foo.wildcard.io, bar.wildcard.io, foo.bar.wildcard.io]",
            "/s2",
            V2,
        ),
        (
            "wildcard-host-matches-listener-specific-host",
            r#"[non.matching.com, "*.specific.com"]"#,
            "/s3",
            V3,
        ),
        (
            "wildcard-host-matches-listener-wildcard-host",
            r#"["*.anotherwildcard.io"]"#,
            "/s4",
            V1,
        ),
        (
            "no-intersecting-hosts",
            "[specific.but.wrong.com, wildcard.io]",
            "/s5",
            V2,
        ),
    ] {
        yaml.push_str(&route(
            name,
            INFRA,
            &format!("{gw}  hostnames: {hosts}\n  rules: [{{matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}], backendRefs: [{{name: {backend}, port: 8080}}]}}]"),
        ));
    }
    yaml.push_str(&route(
        "httproute-hostname-intersection-all",
        INFRA,
        "  parentRefs: [{name: httproute-hostname-intersection-all, namespace: gateway-conformance-infra}]\n  hostnames: [first.com, sub.first.com, second.com, sub.second.com]\n  rules: [{backendRefs: [{name: infra-backend-v2, port: 8080}]}]",
    ));
    c.apply(&yaml);
    let lb = c.lb(&["gateway-conformance-infra/httproute-hostname-intersection"]);
    let all = c.lb(&["gateway-conformance-infra/httproute-hostname-intersection-all"]);
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "no-intersecting-hosts",
        "NoMatchingListenerHostname",
        |s| {
            route_has(
                s,
                "httproute-hostname-intersection",
                "Accepted",
                "False",
                "NoMatchingListenerHostname",
            )
        },
    )
    .await;
    for (host, path, want) in [
        ("very.specific.com", "/s1", Some(V1)),
        ("very.specific.com:1234", "/s1", Some(V1)),
        ("non.matching.com", "/s1", None),
        ("foo.nonmatchingwildcard.io", "/s1", None),
        ("foo.wildcard.io", "/s1", None),
        ("very.specific.com", "/non-matching-prefix", None),
        ("foo.wildcard.io", "/s2", Some(V2)),
        ("bar.wildcard.io", "/s2", Some(V2)),
        ("foo.bar.wildcard.io", "/s2", Some(V2)),
        ("non.matching.com", "/s2", None),
        ("wildcard.io", "/s2", None),
        ("very.specific.com", "/s2", None),
        ("foo.wildcard.io", "/non-matching-prefix", None),
        ("very.specific.com", "/s3", Some(V3)),
        ("non.matching.com", "/s3", None),
        ("foo.specific.com", "/s3", None),
        ("foo.wildcard.io", "/s3", None),
        ("foo.anotherwildcard.io", "/s4", Some(V1)),
        ("bar.anotherwildcard.io", "/s4", Some(V1)),
        ("foo.bar.anotherwildcard.io", "/s4", Some(V1)),
        ("anotherwildcard.io", "/s4", None),
        ("foo.wildcard.io", "/s4", None),
        ("very.specific.com", "/s4", None),
        ("foo.anotherwildcard.io", "/non-matching-prefix", None),
        ("specific.but.wrong.com", "/s5", None),
        ("wildcard.io", "/s5", None),
    ] {
        let e = match want {
            Some(b) => Expect::backend(INFRA, b),
            None => Expect::status(404),
        };
        expect(lb.plain, &Req::get(host, path), &e).await;
    }
    for (host, want) in [
        ("first.com", Some(V2)),
        ("sub.first.com", Some(V2)),
        ("second.com", Some(V2)),
        ("sub.second.com", Some(V2)),
        ("third.com", None),
        ("sub.third.com", None),
    ] {
        let e = match want {
            Some(b) => Expect::backend(INFRA, b),
            None => Expect::status(404),
        };
        expect(all.plain, &Req::get(host, "/"), &e).await;
    }
}

/// HTTPRouteHTTPSListener: routes on HTTPS listeners, by SNI and host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_https_listener() {
    let c = Cluster::base();
    let mut yaml = route(
        "httproute-https-test",
        INFRA,
        "  parentRefs: [{name: same-namespace-with-https-listener}]\n  hostnames: [example.org]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    );
    yaml.push_str(&route(
        "httproute-https-test-no-hostname",
        INFRA,
        "  parentRefs: [{name: same-namespace-with-https-listener, sectionName: https-with-hostname}]\n  rules: [{backendRefs: [{name: infra-backend-v2, port: 8080}]}]",
    ));
    let gw = "same-namespace-with-https-listener";
    let lb = serve(
        &c,
        &yaml,
        gw,
        &[
            (INFRA, "httproute-https-test"),
            (INFRA, "httproute-https-test-no-hostname"),
        ],
    )
    .await;
    for (host, want) in [
        ("example.org", Some(V1)),
        ("unknown-example.org", None),
        ("second-example.org", Some(V2)),
    ] {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let got = c.send_tls(lb.tls, host, &Req::get(host, "/")).await;
            let ok = match (&got, want) {
                (Ok(a), Some(b)) => a.status == 200 && a.pod().starts_with(&format!("{b}-")),
                (Ok(a), None) => a.status == 404,
                _ => false,
            };
            if ok {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{host}: {got:?}");
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

/// HTTPRouteInvalidBackendRefUnknownKind: ResolvedRefs=False InvalidKind; 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_backendref_unknown_kind() {
    let c = Cluster::base();
    let name = "invalid-backend-ref-unknown-kind";
    let lb = serve(
        &c,
        &route(
            name,
            INFRA,
            "  parentRefs: [{name: same-namespace}]\n  rules: [{backendRefs: [{group: unknownkind.example.com, kind: NonExistent, name: infra-backend-v1, port: 8080}]}]",
        ),
        "same-namespace",
        &[(INFRA, name)],
    )
    .await;
    c.wait_status(Kind::HttpRoute, INFRA, name, "InvalidKind", |s| {
        route_has(s, "same-namespace", "ResolvedRefs", "False", "InvalidKind")
    })
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/v2"),
        &Expect::status(500),
    )
    .await;
}

/// HTTPRouteInvalidCrossNamespaceBackendRef: no ReferenceGrant: RefNotPermitted; 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_cross_namespace_backend_ref() {
    let c = Cluster::base();
    let name = "invalid-cross-namespace-backend-ref";
    let lb = serve(
        &c,
        &route(
            name,
            INFRA,
            "  parentRefs: [{name: same-namespace}]\n  rules: [{backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]}]",
        ),
        "same-namespace",
        &[(INFRA, name)],
    )
    .await;
    c.wait_status(Kind::HttpRoute, INFRA, name, "RefNotPermitted", |s| {
        route_has(
            s,
            "same-namespace",
            "ResolvedRefs",
            "False",
            "RefNotPermitted",
        )
    })
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::status(500),
    )
    .await;
}

/// HTTPRouteInvalidNonExistentBackendRef: BackendNotFound; 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_nonexistent_backendref() {
    let c = Cluster::base();
    let name = "invalid-nonexistent-backend-ref";
    let lb = serve(
        &c,
        &route(
            name,
            INFRA,
            "  parentRefs: [{name: same-namespace}]\n  rules: [{backendRefs: [{name: nonexistent, namespace: gateway-conformance-infra, port: 8080}]}]",
        ),
        "same-namespace",
        &[(INFRA, name)],
    )
    .await;
    c.wait_status(Kind::HttpRoute, INFRA, name, "BackendNotFound", |s| {
        route_has(
            s,
            "same-namespace",
            "ResolvedRefs",
            "False",
            "BackendNotFound",
        )
    })
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::status(500),
    )
    .await;
}

fn service_grant(name: &str, ns: &str, from: (&str, &str, &str), to: (&str, &str, &str)) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  from: [{{group: \"{}\", kind: {}, namespace: {}}}]\n  to: [{{group: \"{}\", kind: {}, name: {}}}]\n---\n",
        from.0, from.1, from.2, to.0, to.1, to.2
    )
}

/// HTTPRouteInvalidReferenceGrant: grants that are wrong in one field
/// each do not permit the cross-namespace backend: RefNotPermitted, 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_reference_grant() {
    let c = Cluster::base();
    let ok_from = (GW_GROUP, "HTTPRoute", INFRA);
    let mut yaml = String::new();
    for (name, ns, from, to) in [
        (
            "wrong-namespace",
            INFRA,
            ok_from,
            ("", "Service", "web-backend"),
        ),
        (
            "wrong-from-group",
            WEB,
            ("not-the-group", "HTTPRoute", INFRA),
            ("", "Service", "web-backend"),
        ),
        (
            "wrong-from-kind",
            WEB,
            (GW_GROUP, "Gateway", INFRA),
            ("", "Service", "web-backend"),
        ),
        (
            "wrong-from-namespace",
            WEB,
            (GW_GROUP, "HTTPRoute", "elsewhere"),
            ("", "Service", "web-backend"),
        ),
        (
            "wrong-to-group",
            WEB,
            ok_from,
            ("not-the-group", "Service", "web-backend"),
        ),
        ("wrong-to-kind", WEB, ok_from, ("", "Secret", "web-backend")),
        (
            "wrong-to-name",
            WEB,
            ok_from,
            ("", "Service", "not-the-service"),
        ),
    ] {
        yaml.push_str(&service_grant(
            &format!("reference-grant-{name}"),
            ns,
            from,
            to,
        ));
    }
    yaml.push_str(&route(
        "reference-grant",
        INFRA,
        "  parentRefs: [{name: same-namespace}]\n  rules: [{backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]}]",
    ));
    let lb = serve(&c, &yaml, "same-namespace", &[(INFRA, "reference-grant")]).await;
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "reference-grant",
        "RefNotPermitted",
        |s| {
            route_has(
                s,
                "same-namespace",
                "ResolvedRefs",
                "False",
                "RefNotPermitted",
            )
        },
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::status(500),
    )
    .await;
}

/// HTTPRouteListenerHostnameMatching: a route bound to a listener by
/// sectionName serves that listener's hostname only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_listener_hostname_matching() {
    let c = Cluster::base();
    let mut yaml = String::from(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: httproute-listener-hostname-matching, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - {name: listener-1, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}, hostname: bar.com}
  - {name: listener-2, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}, hostname: foo.bar.com}
  - {name: listener-3, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}, hostname: "*.bar.com"}
  - {name: listener-4, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}, hostname: "*.foo.com"}
---
"#,
    );
    let p = |l: &str| {
        format!(
            "{{name: httproute-listener-hostname-matching, namespace: gateway-conformance-infra, sectionName: {l}}}"
        )
    };
    yaml.push_str(&route("backend-v1", INFRA, &format!("  parentRefs: [{}]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]", p("listener-1"))));
    yaml.push_str(&route("backend-v2", INFRA, &format!("  parentRefs: [{}]\n  rules: [{{backendRefs: [{{name: infra-backend-v2, port: 8080}}]}}]", p("listener-2"))));
    yaml.push_str(&route("backend-v3", INFRA, &format!("  parentRefs: [{}, {}]\n  rules: [{{backendRefs: [{{name: infra-backend-v3, port: 8080}}]}}]", p("listener-3"), p("listener-4"))));
    let lb = serve(
        &c,
        &yaml,
        "httproute-listener-hostname-matching",
        &[
            (INFRA, "backend-v1"),
            (INFRA, "backend-v2"),
            (INFRA, "backend-v3"),
        ],
    )
    .await;
    for (host, want) in [
        ("bar.com", Some(V1)),
        ("foo.bar.com", Some(V2)),
        ("baz.bar.com", Some(V3)),
        ("boo.bar.com", Some(V3)),
        ("multiple.prefixes.bar.com", Some(V3)),
        ("multiple.prefixes.foo.com", Some(V3)),
        ("foo.com", None),
        ("no.matching.host", None),
    ] {
        let e = match want {
            Some(b) => Expect::backend(INFRA, b),
            None => Expect::status(404),
        };
        expect(lb.plain, &Req::get(host, "/"), &e).await;
    }
}

const MATCHING_RULES: &str = "  rules:\n  - {matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]}\n  - {matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}], backendRefs: [{name: infra-backend-v2, port: 8080}]}";

/// HTTPRouteMatching: prefix matches on segment boundaries, headers,
/// and their precedence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matching() {
    let c = Cluster::base();
    let lb = serve(
        &c,
        &route(
            "matching",
            INFRA,
            &format!("  parentRefs: [{{name: same-namespace}}]\n{MATCHING_RULES}"),
        ),
        "same-namespace",
        &[(INFRA, "matching")],
    )
    .await;
    for (path, header, want) in [
        ("/", None, V1),
        ("/example", None, V1),
        ("/", Some("one"), V1),
        ("/v2", None, V2),
        ("/v2/example", None, V2),
        ("/", Some("two"), V2),
        ("/v2/", None, V2),
        ("/v2example", None, V1),
        ("/foo/v2/example", None, V1),
    ] {
        let mut r = Req::get("example.com", path);
        if let Some(v) = header {
            r = r.header("Version", v);
        }
        expect(lb.plain, &r, &Expect::backend(INFRA, want)).await;
    }
}

/// HTTPRouteMatchingAcrossRoutes: two routes with overlapping hostnames
/// merge their rules by precedence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matching_across_routes() {
    let c = Cluster::base();
    let mut yaml = route(
        "matching-part1",
        INFRA,
        "  parentRefs: [{name: same-namespace}]\n  hostnames: [example.com, example.net]\n  rules:\n  - {matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]}",
    );
    yaml.push_str(&route(
        "matching-part2",
        INFRA,
        "  parentRefs: [{name: same-namespace}]\n  hostnames: [example.com]\n  rules:\n  - {matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}], backendRefs: [{name: infra-backend-v2, port: 8080}]}",
    ));
    let lb = serve(
        &c,
        &yaml,
        "same-namespace",
        &[(INFRA, "matching-part1"), (INFRA, "matching-part2")],
    )
    .await;
    for (host, path, header, want) in [
        ("example.com", "/", None, V1),
        ("example.com", "/example", None, V1),
        ("example.net", "/example", None, V1),
        ("example.com", "/example", Some("one"), V1),
        ("example.com", "/v2", None, V2),
        ("example.net", "/v2", None, V1),
        ("example.com", "/v2/example", None, V2),
        ("example.com", "/", Some("two"), V2),
    ] {
        let mut r = Req::get(host, path);
        if let Some(v) = header {
            r = r.header("Version", v);
        }
        expect(lb.plain, &r, &Expect::backend(INFRA, want)).await;
    }
}

/// HTTPRouteMultipleGateways: two Gateways on port 80, each with its own
/// `/` route and one shared route, isolated: one LB per Gateway (the
/// deployment docs/gateway-api.md describes for isolated Gateways).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_multiple_gateways() {
    let c = Cluster::base();
    let mut yaml = route(
        "multiple-gateways-shared-route",
        INFRA,
        "  parentRefs: [{name: same-namespace}, {name: all-namespaces}]\n  rules: [{matches: [{path: {type: PathPrefix, value: /shared}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    );
    yaml.push_str(&route(
        "same-namespace-dedicated-route",
        INFRA,
        "  parentRefs: [{name: same-namespace}]\n  rules: [{matches: [{path: {type: PathPrefix, value: /}}], backendRefs: [{name: infra-backend-v2, port: 8080}]}]",
    ));
    yaml.push_str(&route(
        "all-namespaces-dedicated-route",
        INFRA,
        "  parentRefs: [{name: all-namespaces}]\n  rules: [{matches: [{path: {type: PathPrefix, value: /}}], backendRefs: [{name: infra-backend-v3, port: 8080}]}]",
    ));
    c.apply(&yaml);
    let same = c.lb(&["gateway-conformance-infra/same-namespace"]);
    let all = c.lb(&["gateway-conformance-infra/all-namespaces"]);
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "multiple-gateways-shared-route",
        "accepted by both",
        |s| {
            route_has(s, "same-namespace", "Accepted", "True", "")
                && route_has(s, "all-namespaces", "Accepted", "True", "")
        },
    )
    .await;
    expect(
        same.plain,
        &Req::get("example.com", "/shared"),
        &Expect::backend(INFRA, V1),
    )
    .await;
    expect(
        all.plain,
        &Req::get("example.com", "/shared"),
        &Expect::backend(INFRA, V1),
    )
    .await;
    expect(
        same.plain,
        &Req::get("example.com", "/"),
        &Expect::backend(INFRA, V2),
    )
    .await;
    expect(
        all.plain,
        &Req::get("example.com", "/"),
        &Expect::backend(INFRA, V3),
    )
    .await;
}

/// HTTPRouteNoBackendRefs: rules without backends answer 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_no_backend_refs() {
    let c = Cluster::base();
    let lb = serve(
        &c,
        &route(
            "omitted-backendrefs",
            INFRA,
            "  parentRefs: [{name: same-namespace}]\n  rules:\n  - {matches: [{path: {type: Exact, value: /omitted-no-forward}}]}\n  - {matches: [{path: {type: Exact, value: /empty-no-forward}}], backendRefs: []}\n  - {matches: [{path: {type: PathPrefix, value: /}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}",
        ),
        "same-namespace",
        &[(INFRA, "omitted-backendrefs")],
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/forward"),
        &Expect::backend(INFRA, V1),
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/omitted-no-forward"),
        &Expect::status(500),
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/empty-no-forward"),
        &Expect::status(500),
    )
    .await;
}

/// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant: the rule whose
/// backend is not granted answers 500, the other one serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_partially_invalid_via_invalid_reference_grant() {
    let c = Cluster::base();
    let mut yaml = service_grant(
        "invalid-reference-grant",
        APP,
        (GW_GROUP, "HTTPRoute", INFRA),
        ("", "Service", "app-backend-v1"),
    );
    yaml.push_str(&route(
        "invalid-reference-grant",
        INFRA,
        "  parentRefs: [{name: same-namespace}]\n  rules:\n  - {matches: [{path: {type: PathPrefix, value: /v2}}], backendRefs: [{name: app-backend-v2, namespace: gateway-conformance-app-backend, port: 8080}]}\n  - {backendRefs: [{name: app-backend-v1, namespace: gateway-conformance-app-backend, port: 8080}]}",
    ));
    let lb = serve(
        &c,
        &yaml,
        "same-namespace",
        &[(INFRA, "invalid-reference-grant")],
    )
    .await;
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "invalid-reference-grant",
        "RefNotPermitted",
        |s| {
            route_has(
                s,
                "same-namespace",
                "ResolvedRefs",
                "False",
                "RefNotPermitted",
            )
        },
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/v2"),
        &Expect::status(500),
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::backend(APP, "app-backend-v1"),
    )
    .await;
}

/// HTTPRoutePathMatchOrder: Exact before prefix, longest prefix first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_path_match_order() {
    let c = Cluster::base();
    let lb = serve(
        &c,
        &route(
            "path-matching-order",
            INFRA,
            "  parentRefs: [{name: same-namespace}]\n  rules:\n  - {matches: [{path: {type: Exact, value: /match}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}\n  - {matches: [{path: {type: Exact, value: /match/exact}}], backendRefs: [{name: infra-backend-v2, port: 8080}]}\n  - {matches: [{path: {type: Exact, value: /match/exact/one}}], backendRefs: [{name: infra-backend-v3, port: 8080}]}\n  - {matches: [{path: {type: PathPrefix, value: /match/}}], backendRefs: [{name: infra-backend-v3, port: 8080}]}\n  - {matches: [{path: {type: PathPrefix, value: /match/prefix/}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}\n  - {matches: [{path: {type: PathPrefix, value: /match/prefix/one}}], backendRefs: [{name: infra-backend-v2, port: 8080}]}",
        ),
        "same-namespace",
        &[(INFRA, "path-matching-order")],
    )
    .await;
    for (path, want) in [
        ("/match/exact/one", V3),
        ("/match/exact", V2),
        ("/match", V1),
        ("/match/prefix/one/any", V2),
        ("/match/prefix/any", V1),
        ("/match/any", V3),
    ] {
        expect(
            lb.plain,
            &Req::get("example.com", path),
            &Expect::backend(INFRA, want),
        )
        .await;
    }
}

/// HTTPRouteRedirectHostAndStatus: redirect to another host, 302 by
/// default, or the status asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_host_and_status() {
    let c = Cluster::base();
    let lb = serve(
        &c,
        &route(
            "redirect-host-and-status",
            INFRA,
            "  parentRefs: [{name: same-namespace}]\n  rules:\n  - {matches: [{path: {type: PathPrefix, value: /hostname-redirect}}], filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]}\n  - {matches: [{path: {type: PathPrefix, value: /host-and-status}}], filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, hostname: example.org}}]}",
        ),
        "same-namespace",
        &[(INFRA, "redirect-host-and-status")],
    )
    .await;
    for (path, status) in [("/hostname-redirect", 302), ("/host-and-status", 301)] {
        let a = expect(
            lb.plain,
            &Req::get("example.com", path),
            &Expect::status(status),
        )
        .await;
        let location = a.header("location").unwrap_or_default();
        assert_eq!(location, format!("http://example.org{path}"), "{a:?}");
    }
}

/// HTTPRouteReferenceGrant: a grant permits the cross-namespace backend;
/// without it (deleted) the share answers 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_reference_grant() {
    let c = Cluster::base();
    let mut yaml = service_grant(
        "reference-grant",
        WEB,
        (GW_GROUP, "HTTPRoute", INFRA),
        ("", "Service", "web-backend"),
    );
    yaml.push_str(&route(
        "reference-grant",
        INFRA,
        "  parentRefs: [{name: same-namespace}]\n  rules: [{backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]}]",
    ));
    let lb = serve(&c, &yaml, "same-namespace", &[(INFRA, "reference-grant")]).await;
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "reference-grant",
        "ResolvedRefs",
        |s| route_has(s, "same-namespace", "ResolvedRefs", "True", ""),
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::backend(WEB, "web-backend"),
    )
    .await;
    c.api.delete(Kind::ReferenceGrant, WEB, "reference-grant");
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::status(500),
    )
    .await;
    c.wait_status(
        Kind::HttpRoute,
        INFRA,
        "reference-grant",
        "RefNotPermitted",
        |s| {
            route_has(
                s,
                "same-namespace",
                "ResolvedRefs",
                "False",
                "RefNotPermitted",
            )
        },
    )
    .await;
}

/// HTTPRouteRequestHeaderModifier: set, add, remove (names compared
/// case-insensitively) on the request the backend sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_header_modifier() {
    let c = Cluster::base();
    let rule = |prefix: &str, modifier: &str| {
        format!(
            "  - {{matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}], filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}], backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}\n"
        )
    };
    let mut spec = String::from("  parentRefs: [{name: same-namespace}]\n  rules:\n");
    spec.push_str(&rule(
        "/set",
        "{set: [{name: X-Header-Set, value: set-overwrites-values}]}",
    ));
    spec.push_str(&rule(
        "/add",
        "{add: [{name: X-Header-Add, value: add-appends-values}]}",
    ));
    spec.push_str(&rule("/remove", "{remove: [X-Header-Remove]}"));
    spec.push_str(&rule(
        "/multiple",
        "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, X-Header-Remove-2]}",
    ));
    spec.push_str(&rule(
        "/case-insensitivity",
        "{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}",
    ));
    let lb = serve(
        &c,
        &route("request-header-modifier", INFRA, spec.trim_end()),
        "same-namespace",
        &[(INFRA, "request-header-modifier")],
    )
    .await;
    let ok = Expect::backend(INFRA, V1);
    let seen = |a: &Answer, h: &str| a.seen(h);
    let a = expect(
        lb.plain,
        &Req::get("example.com", "/set").header("Some-Other-Header", "val"),
        &ok,
    )
    .await;
    assert_eq!(
        seen(&a, "X-Header-Set").as_deref(),
        Some("set-overwrites-values")
    );
    assert_eq!(seen(&a, "Some-Other-Header").as_deref(), Some("val"));
    let a = expect(
        lb.plain,
        &Req::get("example.com", "/set").header("X-Header-Set", "some-other-value"),
        &ok,
    )
    .await;
    assert_eq!(
        seen(&a, "X-Header-Set").as_deref(),
        Some("set-overwrites-values")
    );
    let a = expect(lb.plain, &Req::get("example.com", "/add"), &ok).await;
    assert_eq!(
        seen(&a, "X-Header-Add").as_deref(),
        Some("add-appends-values")
    );
    let a = expect(
        lb.plain,
        &Req::get("example.com", "/add").header("X-Header-Add", "some-other-value"),
        &ok,
    )
    .await;
    assert_eq!(
        seen(&a, "X-Header-Add").as_deref(),
        Some("some-other-value,add-appends-values")
    );
    let a = expect(
        lb.plain,
        &Req::get("example.com", "/remove").header("X-Header-Remove", "val"),
        &ok,
    )
    .await;
    assert_eq!(seen(&a, "X-Header-Remove"), None);
    let a = expect(
        lb.plain,
        &Req::get("example.com", "/multiple")
            .header("Another-Header", "another-header-val")
            .header("X-Header-Remove-1", "val")
            .header("X-Header-Remove-2", "val")
            .header("X-Header-Set-2", "set-val-2")
            .header("X-Header-Add-2", "add-val-2"),
        &ok,
    )
    .await;
    for (h, v) in [
        ("Another-Header", "another-header-val"),
        ("X-Header-Set-1", "header-set-1"),
        ("X-Header-Set-2", "header-set-2"),
        ("X-Header-Add-1", "header-add-1"),
        ("X-Header-Add-2", "add-val-2,header-add-2"),
        ("X-Header-Add-3", "header-add-3"),
    ] {
        assert_eq!(seen(&a, h).as_deref(), Some(v), "{h}: {a:?}");
    }
    assert_eq!(
        (seen(&a, "X-Header-Remove-1"), seen(&a, "X-Header-Remove-2")),
        (None, None)
    );
    let a = expect(
        lb.plain,
        &Req::get("example.com", "/case-insensitivity")
            .header("x-header-set", "original-val-set")
            .header("x-header-add", "original-val-add")
            .header("x-header-remove", "original-val-remove")
            .header("Another-Header", "another-header-val"),
        &ok,
    )
    .await;
    assert_eq!(seen(&a, "X-Header-Set").as_deref(), Some("header-set"));
    assert_eq!(
        seen(&a, "X-Header-Add").as_deref(),
        Some("original-val-add,header-add")
    );
    assert_eq!(
        seen(&a, "Another-Header").as_deref(),
        Some("another-header-val")
    );
    assert_eq!(seen(&a, "X-Header-Remove"), None);
}

/// HTTPRouteServiceTypes: a headless Service, a Service without a
/// selector and manually managed EndpointSlices (IPv4 and IPv6), and a
/// headless one with manual slices: all reach the pods behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_service_types() {
    let c = Cluster::base();
    let v1_ports: Vec<u16> = c.services[0].pods.iter().map(|p| p.addr.port()).collect();
    for (name, headless) in [
        ("manual-endpointslices", false),
        ("headless", true),
        ("headless-manual-endpointslices", true),
    ] {
        let mut spec = serde_json::json!({"ports": [{"name": "first-port", "protocol": "TCP", "port": 8080, "targetPort": 3000}]});
        if headless {
            spec["clusterIP"] = "None".into();
        }
        c.api.put(
            Kind::Service,
            serde_json::json!({"metadata": {"name": name, "namespace": INFRA}, "spec": spec}),
        );
        for (i, port) in v1_ports.iter().enumerate() {
            c.api.put(
                Kind::Slice,
                serde_json::json!({"metadata": {"name": format!("{name}-ip4-{i}"), "namespace": INFRA,
                                    "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "first-port", "port": port, "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                                   "targetRef": {"kind": "Pod", "name": format!("infra-backend-v1-{i}")}}]}),
            );
        }
        // An IPv6 slice of the same Service (no IPv6 endpoint answers here:
        // its endpoint is not ready, as on a cluster without IPv6 pods).
        c.api.put(
            Kind::Slice,
            serde_json::json!({"metadata": {"name": format!("{name}-ip6"), "namespace": INFRA,
                                "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv6",
                "ports": [{"name": "first-port", "port": 3000, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["::1"], "conditions": {"ready": false}}]}),
        );
    }
    let lb = serve(
        &c,
        &route(
            "service-types",
            INFRA,
            "  parentRefs: [{name: same-namespace}]\n  rules:\n  - {matches: [{path: {type: Exact, value: /manual-endpointslices}}], backendRefs: [{name: manual-endpointslices, port: 8080}]}\n  - {matches: [{path: {type: Exact, value: /headless}}], backendRefs: [{name: headless, port: 8080}]}\n  - {matches: [{path: {type: Exact, value: /headless-manual-endpointslices}}], backendRefs: [{name: headless-manual-endpointslices, port: 8080}]}",
        ),
        "same-namespace",
        &[(INFRA, "service-types")],
    )
    .await;
    for path in [
        "/manual-endpointslices",
        "/headless",
        "/headless-manual-endpointslices",
    ] {
        expect(
            lb.plain,
            &Req::get("example.com", path),
            &Expect::backend(INFRA, V1),
        )
        .await;
    }
}

/// HTTPRouteWeight: 70/30/0 across three Services. The upstream suite
/// allows a tolerance; roundhouse's split is exact: over 100 requests
/// (one cycle of the summed weights) exactly 70 and 30, none to weight 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_weight() {
    let c = Cluster::base();
    let lb = serve(
        &c,
        &route(
            "weighted-backends",
            INFRA,
            "  parentRefs: [{name: same-namespace}]\n  rules:\n  - backendRefs:\n    - {name: infra-backend-v1, port: 8080, weight: 70}\n    - {name: infra-backend-v2, port: 8080, weight: 30}\n    - {name: infra-backend-v3, port: 8080, weight: 0}",
        ),
        "same-namespace",
        &[(INFRA, "weighted-backends")],
    )
    .await;
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::status(200),
    )
    .await;
    // Whatever the cursor's position, any 100 consecutive requests are
    // one full cycle.
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let a = send(lb.plain, &Req::get("example.com", "/")).await.unwrap();
        let svc = a
            .pod()
            .rsplit_once('-')
            .map(|(s, _)| s.to_owned())
            .unwrap_or_default();
        *counts.entry(svc).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        [(V1.to_owned(), 70), (V2.to_owned(), 30)]
            .into_iter()
            .collect(),
        "exact 70/30, nothing to weight 0"
    );
}

/// GatewayModifyListeners: a listener added to a Gateway serves its route;
/// a listener removed stops serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_modify_listeners() {
    let c = Cluster::base();
    let https = r#"{name: https, port: 443, protocol: HTTPS, hostname: secure.test.com, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{group: "", kind: Secret, name: tls-validity-checks-certificate, namespace: gateway-conformance-infra}]}}"#;
    let mut yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gateway-add-listener, namespace: gateway-conformance-infra}}\nspec:\n  gatewayClassName: \"{{GATEWAY_CLASS_NAME}}\"\n  listeners:\n  - {https}\n---\n"
    );
    yaml.push_str(&format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gateway-remove-listener, namespace: gateway-conformance-infra}}\nspec:\n  gatewayClassName: \"{{GATEWAY_CLASS_NAME}}\"\n  listeners:\n  - {https}\n  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}\n---\n"
    ));
    yaml.push_str(&route("http-route-1", INFRA, "  parentRefs: [{kind: Gateway, name: gateway-add-listener, namespace: gateway-conformance-infra}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]"));
    yaml.push_str(&route("http-route-2", INFRA, "  parentRefs: [{kind: Gateway, name: gateway-remove-listener, namespace: gateway-conformance-infra}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]"));
    c.apply(&yaml);
    let add = c.lb(&["gateway-conformance-infra/gateway-add-listener"]);
    let remove = c.lb(&["gateway-conformance-infra/gateway-remove-listener"]);
    // Add an HTTP listener with a hostname: it takes the route too.
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-add-listener",
        "generation 1",
        |s| latest(s, 1),
    )
    .await;
    let mut gw = c
        .api
        .get(Kind::Gateway, INFRA, "gateway-add-listener")
        .unwrap();
    gw["spec"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
        {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "data.test.com",
         "allowedRoutes": {"namespaces": {"from": "All"}}}));
    c.api.put(Kind::Gateway, gw);
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-add-listener",
        "two listeners, one route each",
        |s| {
            latest(s, 2)
                && ["https", "http"].iter().all(|n| {
                    listener(s, n).is_some_and(|l| {
                        has(&l["conditions"], "Accepted", "True", "")
                            && has(&l["conditions"], "ResolvedRefs", "True", "")
                            && l["attachedRoutes"] == 1
                    })
                })
        },
    )
    .await;
    expect(
        add.plain,
        &Req::get("data.test.com", "/"),
        &Expect::backend(INFRA, V1),
    )
    .await;
    // Remove the HTTPS listener of the other Gateway: the HTTP one stays.
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-remove-listener",
        "generation 1",
        |s| latest(s, 1),
    )
    .await;
    expect(
        remove.plain,
        &Req::get("example.com", "/"),
        &Expect::backend(INFRA, V1),
    )
    .await;
    let mut gw = c
        .api
        .get(Kind::Gateway, INFRA, "gateway-remove-listener")
        .unwrap();
    gw["spec"]["listeners"]
        .as_array_mut()
        .unwrap()
        .retain(|l| l["name"] != "https");
    c.api.put(Kind::Gateway, gw);
    c.wait_status(
        Kind::Gateway,
        INFRA,
        "gateway-remove-listener",
        "one listener left",
        |s| {
            latest(s, 2)
                && s["listeners"].as_array().is_some_and(|l| l.len() == 1)
                && listener(s, "http").is_some_and(|l| l["attachedRoutes"] == 1)
        },
    )
    .await;
    expect(
        remove.plain,
        &Req::get("example.com", "/"),
        &Expect::backend(INFRA, V1),
    )
    .await;
}

// === GRPCRoute (standard channel; not in the GATEWAY-HTTP core list) ===

/// GRPCRoute: calls of one gRPC service go to its backends over h2c,
/// balanced per call: 100 calls on ONE HTTP/2 connection split exactly
/// 50/50; another service's calls go elsewhere; an unknown service gets 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcroute_per_call_exact_split() {
    let c = Cluster::base();
    let mut grpc = Vec::new();
    for (svc, pods) in [("grpc-hosts", 2), ("grpc-other", 1)] {
        c.api.put(
            Kind::Service,
            serde_json::json!({"metadata": {"name": svc, "namespace": INFRA},
                "spec": {"ports": [{"name": "grpc", "port": 9000, "appProtocol": "kubernetes.io/h2c"}]}}),
        );
        for i in 0..pods {
            let b = common::H2cBackend::start(&format!("{svc}-{i}"), true).await;
            c.api.put(
                Kind::Slice,
                serde_json::json!({"metadata": {"name": format!("{svc}-{i}"), "namespace": INFRA,
                                    "labels": {"kubernetes.io/service-name": svc}},
                    "addressType": "IPv4",
                    "ports": [{"name": "grpc", "port": b.addr.port(), "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}],
                    "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                                   "targetRef": {"kind": "Pod", "name": format!("{svc}-{i}")}}]}),
            );
            grpc.push(b);
        }
    }
    c.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: hosts, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace}]
  rules:
  - matches: [{method: {service: roundhouse.v1.Hosts}}]
    backendRefs: [{name: grpc-hosts, port: 9000}]
  - matches: [{method: {service: example.Other, method: Call}}]
    backendRefs: [{name: grpc-other, port: 9000}]
"#,
    );
    let lb = c.lb(&["gateway-conformance-infra/same-namespace"]);
    c.wait_status(
        Kind::GrpcRoute,
        INFRA,
        "hosts",
        "Accepted, ResolvedRefs",
        |s| {
            route_has(s, "same-namespace", "Accepted", "True", "Accepted")
                && route_has(s, "same-namespace", "ResolvedRefs", "True", "ResolvedRefs")
        },
    )
    .await;
    let call = |path: &str| {
        http::Request::post(format!("http://example.com{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
                0, 0, 0, 0, 0,
            ])))
            .unwrap()
    };
    // Wait for the route to serve, on a connection of its own.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut tx = common::h2c_client(lb.plain).await;
        let (status, _, body, _) = common::h2_send(&mut tx, call("/roundhouse.v1.Hosts/Get")).await;
        if status == 200 && body.starts_with("grpc-hosts-") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let mut tx = common::h2c_client(lb.plain).await;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let (status, _, body, trailers) =
            common::h2_send(&mut tx, call("/roundhouse.v1.Hosts/Get")).await;
        assert_eq!(status, 200);
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        *counts.entry(body.trim().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        [
            ("grpc-hosts-0".to_owned(), 50),
            ("grpc-hosts-1".to_owned(), 50)
        ]
        .into_iter()
        .collect(),
        "one HTTP/2 connection, balanced per call"
    );
    let (status, _, body, _) = common::h2_send(&mut tx, call("/example.Other/Call")).await;
    assert_eq!((status.as_u16(), body.trim()), (200, "grpc-other-0"));
    // The LB's own answer to a call no rule matches is a gRPC status (HTTP
    // 200, grpc-status not OK), not a backend's.
    let (_, headers, body, trailers) =
        common::h2_send(&mut tx, call("/example.Other/Unknown")).await;
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        grpc_status.is_some_and(|s| s != "0") && !body.starts_with("grpc-"),
        "a method no rule matches is not routed: {headers:?} {body:?}"
    );
}

/// Without the Gateway API CRDs the lb keeps running: one WARN line saying
/// what to install, `/readyz` 503 while they are missing, and ready with the
/// route served once they appear, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_crds_are_logged_once_and_not_ready_until_installed() {
    let c = Cluster::base();
    c.apply(&route(
        "after-crds",
        INFRA,
        "  parentRefs: [{name: same-namespace}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    ));
    c.api.hide_group(GW_GROUP, true);
    let lb = c.lb(&["gateway-conformance-infra/same-namespace"]);
    let deadline = std::time::Instant::now() + PATIENCE;
    while lb
        .logged("the Gateway API CRDs are not installed")
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line: {}",
            lb.log.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lb.readyz().await, 503, "not ready without the CRDs");
    // A few seconds of retries (back-off up to 2 s): still one such line.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(lb.readyz().await, 503);
    let lines = lb.logged("the Gateway API CRDs are not installed");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("v1.6"),
        "{lines:#?}"
    );
    c.api.hide_group(GW_GROUP, false);
    expect(
        lb.plain,
        &Req::get("example.com", "/"),
        &Expect::backend(INFRA, V1),
    )
    .await;
    assert_eq!(lb.readyz().await, 200);
}
