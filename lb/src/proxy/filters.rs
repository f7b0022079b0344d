//! What a route rule's filters do to a request and its response, once for
//! every transport: the redirect's `Location`, path rewrites, CORS. The
//! header edits are the header rule table's (`headers.rs` for `HeaderMap`s,
//! `fast/head.rs` for raw heads); the decision to answer locally is the
//! attempt core's (`Worker::decide`).

use std::fmt::Write as _;

use http::header::{self, HeaderName, HeaderValue};

use crate::discovery::route::{
    CookieAffinity, Cors, PathMatch, PathRewrite, Pattern, Redirect, TemplatePart, template_parts,
};
use crate::selection::RequestView;

/// Appends the request target sent upstream for a request to `path` with
/// `query` under a path rewrite: the rewritten path ([`rewrite_path`]) and
/// the query. A capture template may bring its own query (nginx's
/// `rewrite /new?a=1`): the request's follows it after `&`, and a template
/// ending in `?` drops the request's query, as nginx does.
pub fn rewrite_target(
    rewrite: &PathRewrite,
    matched: &PathMatch,
    path: &str,
    query: Option<&str>,
    out: &mut String,
) {
    let start = out.len();
    rewrite_path(rewrite, matched, path, out);
    let own_query = match rewrite {
        PathRewrite::Captures(_) => out[start..].find('?').map(|i| start + i),
        _ => None,
    };
    match (own_query, query) {
        (Some(q), _) if q + 1 == out.len() => {
            out.truncate(q);
        }
        (Some(_), Some(query)) => {
            out.push('&');
            out.push_str(query);
        }
        (None, Some(query)) => {
            out.push('?');
            out.push_str(query);
        }
        (_, None) => {}
    }
}

/// Appends `path` rewritten by `rewrite` to `out`; `matched` is the path
/// condition that took the request (a prefix rewrite replaces what it
/// matched, a capture rewrite uses its groups).
pub fn rewrite_path(rewrite: &PathRewrite, matched: &PathMatch, path: &str, out: &mut String) {
    let start = out.len();
    match (rewrite, matched) {
        (PathRewrite::ReplaceFull(p), _) => out.push_str(p),
        (PathRewrite::ReplacePrefix(with), PathMatch::Prefix(prefix)) => {
            let rest = &path[PathMatch::normalized_prefix(prefix).len().min(path.len())..];
            let with = PathMatch::normalized_prefix(with);
            // `/strip` → `/`: `/strip/x` becomes `/x`, `/strip` becomes `/`.
            out.push_str(with);
            out.push_str(rest);
            if with.is_empty() && rest.is_empty() {
                out.push('/');
            }
        }
        (PathRewrite::Captures(template), PathMatch::Regex(pattern)) => {
            expand(template, pattern, path, out);
        }
        // The model refuses these pairs (`Rule::validate`); keep the path.
        _ => out.push_str(path),
    }
    if !out[start..].starts_with('/') {
        out.insert(start, '/');
    }
}

/// Appends `template` with `pattern`'s groups in `path` substituted (the
/// parts of [`template_parts`]); `path` itself when it does not match.
fn expand(template: &str, pattern: &Pattern, path: &str, out: &mut String) {
    let Some(caps) = pattern.regex().captures(path) else {
        out.push_str(path);
        return;
    };
    for part in template_parts(template) {
        match part {
            TemplatePart::Text(t) => out.push_str(t),
            TemplatePart::Group(n) => out.push_str(caps.get(n).map_or("", |m| m.as_str())),
            TemplatePart::Named(name) => {
                if pattern.regex().capture_names().any(|n| n == Some(name)) {
                    out.push_str(caps.name(name).map_or("", |m| m.as_str()));
                } else {
                    out.push('$');
                    out.push_str(name);
                }
            }
        }
    }
}

/// The `Location` of a redirect for a request to `host` (its `Host` value)
/// on a connection speaking `scheme`, with this path and query. Each part
/// the redirect leaves out is the request's own. The port: the redirect's;
/// else the scheme's well-known one when the redirect changes the scheme;
/// else the one the client addressed (its `Host`, which is the listener's
/// port as the client sees it). A well-known port is left out.
pub fn redirect_location(
    redirect: &Redirect,
    matched: &PathMatch,
    scheme: &str,
    host: Option<&str>,
    path: &str,
    query: Option<&str>,
) -> Option<HeaderValue> {
    let (req_host, req_port) = split_host(host.unwrap_or(""));
    let scheme = redirect.scheme.as_deref().unwrap_or(scheme);
    let port = match (redirect.port, &redirect.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => req_port,
    };
    let default_port = match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let hostname = redirect.hostname.as_deref().unwrap_or(req_host);
    let mut out = String::with_capacity(64);
    out.push_str(scheme);
    out.push_str("://");
    out.push_str(hostname);
    if let Some(p) = port.filter(|p| Some(*p) != default_port) {
        let _ = write!(out, ":{p}");
    }
    match &redirect.path {
        Some(rewrite) => rewrite_path(rewrite, matched, path, &mut out),
        None => out.push_str(path),
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    HeaderValue::from_str(&out).ok()
}

/// A `Host` value as name (IPv6 in brackets kept) and port.
fn split_host(host: &str) -> (&str, Option<u16>) {
    let host = host.trim();
    let (name, port) = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => (&host[..i], host[i + 1..].parse().ok()),
        _ => (host, None),
    };
    (name, port)
}

/// The request's `Origin`, if it sent exactly one usable value.
pub fn origin(req: &dyn RequestView) -> Option<String> {
    let mut found = None;
    let mut count = 0;
    req.any_header(&header::ORIGIN, &mut |v| {
        count += 1;
        found = std::str::from_utf8(v).ok().map(str::to_owned);
        false
    });
    found.filter(|_| count == 1)
}

/// Whether the request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(req: &dyn RequestView) -> bool {
    req.method() == "OPTIONS"
        && req.any_header(&header::ORIGIN, &mut |_| true)
        && req.any_header(&header::ACCESS_CONTROL_REQUEST_METHOD, &mut |_| true)
}

/// The `Access-Control-Allow-Origin` value for `origin`, when allowed:
/// `*` when any origin is and credentials are not, else the origin itself.
fn allowed_origin(cors: &Cors, origin: &str) -> Option<HeaderValue> {
    if cors.allows_any() && !cors.allow_credentials {
        Some(HeaderValue::from_static("*"))
    } else if cors.allows(origin) {
        HeaderValue::from_str(origin).ok()
    } else {
        None
    }
}

fn join<T>(items: &[T], name: impl Fn(&T) -> &str) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    let joined: Vec<&str> = items.iter().map(name).collect();
    HeaderValue::from_str(&joined.join(", ")).ok()
}

/// The headers of the LB's answer to a preflight from `origin` (none when
/// the origin is not allowed: the browser then refuses the request).
pub fn preflight_headers(cors: &Cors, origin: &str) -> Vec<(HeaderName, HeaderValue)> {
    let Some(allow) = allowed_origin(cors, origin) else {
        return Vec::new();
    };
    let mut out = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow)];
    if let Some(v) = join(&cors.allow_methods, |m| m.as_str()) {
        out.push((header::ACCESS_CONTROL_ALLOW_METHODS, v));
    }
    if let Some(v) = join(&cors.allow_headers, HeaderName::as_str) {
        out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
    }
    if let Some(age) = cors.max_age {
        out.push((header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age)));
    }
    if cors.allow_credentials {
        out.push((
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    out.push((header::VARY, HeaderValue::from_static("Origin")));
    out
}

/// The CORS headers added to a forwarded response for a request from
/// `origin`.
pub fn response_cors_headers(cors: &Cors, origin: &str) -> Vec<(HeaderName, HeaderValue)> {
    let Some(allow) = allowed_origin(cors, origin) else {
        return Vec::new();
    };
    let mut out = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow)];
    if let Some(v) = join(&cors.expose_headers, HeaderName::as_str) {
        out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
    }
    if cors.allow_credentials {
        out.push((
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    out.push((header::VARY, HeaderValue::from_static("Origin")));
    out
}

/// The affinity key in the request's cookie `name` (16 hex digits), if it
/// sent one.
pub fn affinity_cookie_key(req: &dyn RequestView, name: &str) -> Option<u64> {
    let mut key = None;
    req.any_header(&header::COOKIE, &mut |v| {
        let Ok(v) = std::str::from_utf8(v) else {
            return false;
        };
        key = v.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name && v.len() == 16)
                .then(|| u64::from_str_radix(v, 16).ok())
                .flatten()
        });
        key.is_some()
    });
    key
}

/// The `Set-Cookie` that makes a client stick to the endpoint with this
/// affinity key.
pub fn affinity_set_cookie(affinity: &CookieAffinity, key: u64) -> Option<HeaderValue> {
    let mut v = format!(
        "{}={key:016x}; Path={}; HttpOnly",
        affinity.name,
        affinity.path.as_deref().unwrap_or("/")
    );
    if let Some(age) = affinity.max_age {
        let _ = write!(v, "; Max-Age={}", age.as_secs());
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::discovery::route::{Pattern, RedirectStatus};
    use crate::selection::route::SimpleRequest;

    fn rewrite(r: &PathRewrite, m: &PathMatch, path: &str) -> String {
        let mut out = String::new();
        rewrite_path(r, m, path, &mut out);
        out
    }

    #[test]
    fn prefix_rewrites_replace_what_matched_element_wise() {
        let m = PathMatch::Prefix("/prefix/one".into());
        let r = PathRewrite::ReplacePrefix("/one".into());
        assert_eq!(rewrite(&r, &m, "/prefix/one/two"), "/one/two");
        assert_eq!(rewrite(&r, &m, "/prefix/one"), "/one");
        assert_eq!(rewrite(&r, &m, "/prefix/one/"), "/one/");
        let strip = PathMatch::Prefix("/strip-prefix".into());
        let root = PathRewrite::ReplacePrefix("/".into());
        assert_eq!(rewrite(&root, &strip, "/strip-prefix/three"), "/three");
        assert_eq!(rewrite(&root, &strip, "/strip-prefix"), "/");
        let m = PathMatch::Prefix("/prefix/rewrite-path-and-modify-headers".into());
        let r = PathRewrite::ReplacePrefix("/prefix".into());
        assert_eq!(
            rewrite(&r, &m, "/prefix/rewrite-path-and-modify-headers/one"),
            "/prefix/one"
        );
        let everything = PathMatch::Prefix("/".into());
        assert_eq!(
            rewrite(
                &PathRewrite::ReplacePrefix("/app".into()),
                &everything,
                "/x"
            ),
            "/app/x"
        );
    }

    #[test]
    fn full_and_capture_rewrites() {
        let m = PathMatch::Prefix("/full".into());
        assert_eq!(
            rewrite(
                &PathRewrite::ReplaceFull("/one".into()),
                &m,
                "/full/one/two"
            ),
            "/one"
        );
        // ingress-nginx's documented rewrite-target example.
        let m = PathMatch::Regex(Pattern::new("/something(/|$)(.*)").unwrap());
        let r = PathRewrite::Captures("/$2".into());
        assert_eq!(rewrite(&r, &m, "/something"), "/");
        assert_eq!(rewrite(&r, &m, "/something/"), "/");
        assert_eq!(rewrite(&r, &m, "/something/new"), "/new");
        let named = PathMatch::Regex(Pattern::new("/v(?<ver>[0-9]+)/(?<rest>.*)").unwrap());
        let r = PathRewrite::Captures("/${rest}/version-${ver}".into());
        assert_eq!(rewrite(&r, &named, "/v2/users"), "/users/version-2");
        let r = PathRewrite::Captures("no-slash-$1".into());
        let m = PathMatch::Regex(Pattern::new("/(.*)").unwrap());
        assert_eq!(rewrite(&r, &m, "/x"), "/no-slash-x", "always a path");
    }

    #[test]
    fn capture_templates_read_as_nginx_reads_them() {
        let m =
            PathMatch::Regex(Pattern::new("/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(?<word>k)?.*").unwrap());
        let cases = [
            // One digit each: `$10` is group 1 and a `0`, `$1a` group 1 and
            // an `a` (the regex crate would read a group named `1a`).
            ("/$10", "/a0"),
            ("/$1a", "/aa"),
            ("/$9$1", "/ia"),
            // `$0` is not a group; a lone or trailing `$` is text.
            ("/$0", "/$0"),
            ("/a$", "/a$"),
            ("/$-$1", "/$-a"),
            // Named groups, bare or braced; a name that is no group (an
            // nginx variable) stays as written; a group that took no part
            // is empty.
            ("/$word/${word}x", "/k/kx"),
            ("/$host/$1", "/$host/a"),
            ("/${x y}", "/${x y}"),
        ];
        for (template, want) in cases {
            let r = PathRewrite::Captures(template.into());
            assert_eq!(rewrite(&r, &m, "/abcdefghijk/rest"), want, "{template}");
        }
        let r = PathRewrite::Captures("/[$word]".into());
        assert_eq!(
            rewrite(&r, &m, "/abcdefghij"),
            "/[]",
            "group not taking part"
        );
        assert_eq!(
            rewrite(&r, &m, "/nomatch"),
            "/nomatch",
            "no match: path kept"
        );
    }

    #[test]
    fn rewritten_targets_keep_the_query_after_the_templates_own() {
        let target = |template: &str, path: &str, query: Option<&str>| {
            let m = PathMatch::Regex(Pattern::new("/api(/|$)(.*)").unwrap());
            let mut out = String::new();
            rewrite_target(
                &PathRewrite::Captures(template.into()),
                &m,
                path,
                query,
                &mut out,
            );
            out
        };
        assert_eq!(target("/$2", "/api/users", Some("id=7")), "/users?id=7");
        assert_eq!(target("/$2", "/api/users", None), "/users");
        assert_eq!(
            target("/v2/$2?via=api", "/api/users", Some("id=7")),
            "/v2/users?via=api&id=7",
            "nginx appends the request's arguments after the template's"
        );
        assert_eq!(
            target("/$2?", "/api/users", Some("id=7")),
            "/users",
            "a trailing `?` drops them"
        );
        let prefix = PathMatch::Prefix("/a".into());
        let mut out = String::new();
        rewrite_target(
            &PathRewrite::ReplacePrefix("/b".into()),
            &prefix,
            "/a/x",
            Some("q=1"),
            &mut out,
        );
        assert_eq!(out, "/b/x?q=1");
    }

    fn location(r: &Redirect, scheme: &str, host: &str, target: &str) -> String {
        let (path, query) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        let m = PathMatch::Prefix("/".into());
        redirect_location(r, &m, scheme, Some(host), path, query)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn redirect_ports_follow_the_gateway_api() {
        let host = |h: &str| Redirect {
            hostname: Some(h.into()),
            ..Redirect::default()
        };
        let r = host("example.org");
        assert_eq!(
            location(&r, "http", "gw", "/a?b=1"),
            "http://example.org/a?b=1"
        );
        assert_eq!(
            location(&r, "http", "gw:8080", "/a"),
            "http://example.org:8080/a",
            "no scheme, no port: the port the client addressed"
        );
        let port = |p| Redirect {
            port: Some(p),
            ..host("example.org")
        };
        assert_eq!(
            location(&port(80), "http", "gw:8080", "/"),
            "http://example.org/"
        );
        assert_eq!(
            location(&port(8080), "http", "gw", "/"),
            "http://example.org:8080/"
        );
        let https = |p| Redirect {
            scheme: Some("https".into()),
            port: p,
            ..host("example.org")
        };
        assert_eq!(
            location(&https(None), "http", "gw:8080", "/"),
            "https://example.org/",
            "a new scheme: its well-known port"
        );
        assert_eq!(
            location(&https(Some(443)), "http", "gw", "/"),
            "https://example.org/"
        );
        assert_eq!(
            location(&https(Some(8443)), "http", "gw", "/"),
            "https://example.org:8443/"
        );
        assert_eq!(
            location(&Redirect::default(), "https", "gw:443", "/x"),
            "https://gw/x"
        );
        assert_eq!(
            location(&Redirect::default(), "http", "[::1]:8080", "/x"),
            "http://[::1]:8080/x"
        );
        let path = Redirect {
            path: Some(PathRewrite::ReplaceFull("/new".into())),
            status: RedirectStatus::MOVED_PERMANENTLY,
            ..Redirect::default()
        };
        assert_eq!(location(&path, "http", "gw", "/old?q"), "http://gw/new?q");
    }

    #[test]
    fn affinity_cookies() {
        let affinity = CookieAffinity {
            name: "route".into(),
            max_age: Some(std::time::Duration::from_secs(3600)),
            path: None,
        };
        assert_eq!(
            affinity_set_cookie(&affinity, 0xab).unwrap(),
            "route=00000000000000ab; Path=/; HttpOnly; Max-Age=3600"
        );
        let headers = [("cookie", "a=1; route=00000000000000ab; b=2")];
        let req = SimpleRequest {
            headers: &headers,
            ..SimpleRequest::get("/")
        };
        assert_eq!(affinity_cookie_key(&req, "route"), Some(0xab));
        assert_eq!(affinity_cookie_key(&req, "other"), None);
        let bad = [("cookie", "route=zz; route=1")];
        let req = SimpleRequest {
            headers: &bad,
            ..SimpleRequest::get("/")
        };
        assert_eq!(affinity_cookie_key(&req, "route"), None, "not a key");
    }

    #[test]
    fn cors() {
        let cors = Cors {
            allow_origins: vec!["https://a.example".into()],
            allow_methods: vec![Method::GET, Method::PUT],
            allow_headers: vec![HeaderName::from_static("x-token")],
            expose_headers: vec![HeaderName::from_static("x-id")],
            allow_credentials: true,
            max_age: Some(600),
        };
        let pre = preflight_headers(&cors, "https://a.example");
        let get = |h: &[(HeaderName, HeaderValue)], n: &str| {
            h.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            get(&pre, "access-control-allow-origin").unwrap(),
            "https://a.example"
        );
        assert_eq!(
            get(&pre, "access-control-allow-methods").unwrap(),
            "GET, PUT"
        );
        assert_eq!(
            get(&pre, "access-control-allow-headers").unwrap(),
            "x-token"
        );
        assert_eq!(get(&pre, "access-control-max-age").unwrap(), "600");
        assert_eq!(
            get(&pre, "access-control-allow-credentials").unwrap(),
            "true"
        );
        assert!(preflight_headers(&cors, "https://evil.example").is_empty());
        assert_eq!(
            get(
                &preflight_headers(&cors, "HTTPS://A.example"),
                "access-control-allow-origin"
            )
            .unwrap(),
            "HTTPS://A.example",
            "origins compare ignoring case (ingress-nginx's `~*`); the request's is echoed"
        );
        let wild = Cors {
            allow_origins: vec!["https://*.a.example:8443".into()],
            ..Cors::default()
        };
        for (origin, allowed) in [
            ("https://x.a.example:8443", true),
            ("https://X-1.A.example:8443", true),
            ("https://a.example:8443", false),
            ("https://.a.example:8443", false),
            ("https://x.y.a.example:8443", false),
            ("https://x.a.example", false),
            ("http://x.a.example:8443", false),
            ("https://x_y.a.example:8443", false),
        ] {
            assert_eq!(
                !preflight_headers(&wild, origin).is_empty(),
                allowed,
                "{origin}"
            );
        }
        let resp = response_cors_headers(&cors, "https://a.example");
        assert_eq!(get(&resp, "access-control-expose-headers").unwrap(), "x-id");
        let any = Cors {
            allow_origins: vec!["*".into()],
            ..Cors::default()
        };
        assert_eq!(
            get(
                &preflight_headers(&any, "https://b.example"),
                "access-control-allow-origin"
            )
            .unwrap(),
            "*"
        );
        let headers = [
            ("origin", "https://a.example"),
            ("access-control-request-method", "PUT"),
        ];
        let pre = SimpleRequest {
            method: "OPTIONS",
            path: "/",
            query: None,
            headers: &headers,
        };
        assert!(is_preflight(&pre));
        assert_eq!(origin(&pre).as_deref(), Some("https://a.example"));
        assert!(!is_preflight(&SimpleRequest {
            method: "GET",
            ..pre
        }));
        assert!(!is_preflight(&SimpleRequest {
            headers: &headers[..1],
            ..pre
        }));
    }
}
