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
#[ignore = "needs the data plane that routes by RoutingConfig.routes (gw-dataplane step 2)"]
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
#[allow(dead_code)]
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
