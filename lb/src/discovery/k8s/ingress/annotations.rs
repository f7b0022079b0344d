//! ingress-nginx annotations (`nginx.ingress.kubernetes.io/…`) parsed and
//! checked into what the route model can express.
//!
//! [`parse`] reads an Ingress's annotations once and returns what they ask
//! for ([`Annotations`]) plus every [`Problem`]: an annotation under the
//! prefix that roundhouse does not implement, a value that does not parse,
//! or one that is parsed but has no effect here. Nothing is dropped
//! silently: the source turns each problem into a Kubernetes Event on the
//! Ingress, a log line and a metric (once per object generation).
//!
//! Values are read the way ingress-nginx reads them: booleans as Go's
//! `strconv.ParseBool` (`true`, `True`, `1`, `t`, …), timeouts as whole
//! seconds, sizes as nginx sizes (`8m`, `512k`, `1g`, bytes without a
//! unit). An invalid value falls back to ingress-nginx's default for it,
//! except where falling back would open something up: an allow- or
//! deny-list with no usable entry denies every client.

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::discovery::Protocol;
use crate::discovery::route::{
    Cidr, CookieAffinity, Cors, PathRewrite, Pattern, Redirect, RedirectStatus, SourceRanges,
    TemplatePart, template_parts,
};

/// The prefix of the annotations read here.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Every annotation under [`PREFIX`] that roundhouse reads (without the
/// prefix). Anything else under the prefix is reported as unsupported.
pub const SUPPORTED: &[&str] = &[
    "affinity",
    "allowlist-source-range",
    "app-root",
    "backend-protocol",
    "canary",
    "canary-by-cookie",
    "canary-by-header",
    "canary-by-header-pattern",
    "canary-by-header-value",
    "canary-weight",
    "canary-weight-total",
    "cors-allow-credentials",
    "cors-allow-headers",
    "cors-allow-methods",
    "cors-allow-origin",
    "cors-expose-headers",
    "cors-max-age",
    "denylist-source-range",
    "enable-cors",
    "force-ssl-redirect",
    "permanent-redirect",
    "permanent-redirect-code",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "rewrite-target",
    "session-cookie-max-age",
    "session-cookie-name",
    "session-cookie-path",
    "ssl-redirect",
    "temporal-redirect",
    "temporal-redirect-code",
    "upstream-vhost",
    "use-regex",
    "whitelist-source-range",
];

/// The annotations a canary Ingress may set; ingress-nginx ignores every
/// other one there (the main Ingress's apply).
const CANARY_OWN: &[&str] = &[
    "canary",
    "canary-by-cookie",
    "canary-by-header",
    "canary-by-header-pattern",
    "canary-by-header-value",
    "canary-weight",
    "canary-weight-total",
];

/// ingress-nginx's default CORS methods.
pub const CORS_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
/// ingress-nginx's default CORS request headers.
pub const CORS_HEADERS: &str = "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
/// ingress-nginx's default CORS `max-age`, in seconds (20 days).
pub const CORS_MAX_AGE: u32 = 1_728_000;
/// ingress-nginx's default affinity cookie name.
pub const COOKIE_NAME: &str = "INGRESSCOOKIE";

/// What is wrong with an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// An annotation under the prefix that roundhouse does not implement.
    Unsupported,
    /// A value that cannot be used (the default, or nothing, applies).
    Invalid,
    /// Understood, but without effect here (said why in the message).
    NotApplied,
}

impl ProblemKind {
    /// The Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            ProblemKind::Unsupported => "UnsupportedAnnotation",
            ProblemKind::Invalid => "InvalidAnnotation",
            ProblemKind::NotApplied => "AnnotationNotApplied",
        }
    }

    /// The `result` label of the annotation metric.
    pub fn label(self) -> &'static str {
        match self {
            ProblemKind::Unsupported => "unsupported",
            ProblemKind::Invalid => "invalid",
            ProblemKind::NotApplied => "not_applied",
        }
    }
}

/// One annotation problem, for an Event, a log line and a metric.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// The full annotation name.
    pub annotation: String,
    /// What is wrong.
    pub kind: ProblemKind,
    /// For people.
    pub message: String,
}

/// The backend protocol asked for (`backend-protocol`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BackendProtocol {
    /// Not set: the Service port's `appProtocol` decides (as for every kind).
    #[default]
    Unset,
    /// `HTTP`, `GRPC` or `H2C`.
    Known(Protocol),
    /// A value roundhouse cannot speak to a backend (`HTTPS`, `GRPCS`,
    /// `AUTO_HTTP`, `FCGI`): the Ingress's backends answer 500.
    Unsupported(String),
}

/// How a canary's header selects it (`canary-by-header*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderRule {
    /// `always` sends the request to the canary, `never` keeps it off.
    AlwaysNever,
    /// This value sends it to the canary (`canary-by-header-value`).
    Value(String),
    /// A value matching this sends it (`canary-by-header-pattern`; a
    /// match anywhere in the value, as `ngx.re.match` does).
    Pattern(Pattern),
}

/// A canary Ingress's settings (`canary: "true"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    /// `canary-weight`: this many of every `total` requests (exact split).
    pub weight: u32,
    /// `canary-weight-total` (default 100).
    pub total: u32,
    /// `canary-by-header` and how its value is read.
    pub header: Option<(HeaderName, HeaderRule)>,
    /// `canary-by-cookie`: a cookie valued `always` or `never`.
    pub cookie: Option<String>,
}

/// Who may use the Ingress's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// These ranges (403 for other clients).
    Ranges(SourceRanges),
    /// A list was given but nothing in it is usable: every client is
    /// refused (never opened up by a typo).
    DenyAll(String),
}

/// What an Ingress's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// `ssl-redirect` (default true): plain HTTP to a TLS host is
    /// redirected to HTTPS (308).
    pub ssl_redirect: bool,
    /// `force-ssl-redirect`: redirected even without TLS on the Ingress.
    pub force_ssl_redirect: bool,
    /// `proxy-body-size` in bytes (`0`: no limit of the Ingress's own);
    /// `None` when not given or unusable: the Ingress default applies
    /// (`--ingress-max-body-size`, ingress-nginx's 1m).
    pub max_body_bytes: Option<u64>,
    /// `proxy-connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// `proxy-read-timeout`: how long an attempt waits for the response
    /// head.
    pub read_timeout: Option<Duration>,
    /// `use-regex`: paths are case-insensitive regular expressions,
    /// anchored at the start.
    pub use_regex: bool,
    /// `rewrite-target`: the path sent upstream (with `$1`… from the
    /// path's capture groups); also makes the paths regular expressions.
    pub rewrite_target: Option<String>,
    /// `app-root`: `/` is redirected (302) here.
    pub app_root: Option<String>,
    /// `temporal-redirect` or `permanent-redirect`: every path answers
    /// with this redirect.
    pub redirect: Option<Redirect>,
    /// `upstream-vhost`: the `Host` sent upstream.
    pub upstream_vhost: Option<HeaderValue>,
    /// `backend-protocol`.
    pub protocol: BackendProtocol,
    /// `canary: "true"` and its settings.
    pub canary: Option<Canary>,
    /// `affinity: cookie` and its cookie.
    pub affinity: Option<CookieAffinity>,
    /// `whitelist-source-range` / `allowlist-source-range` and
    /// `denylist-source-range`.
    pub access: Option<Access>,
    /// `enable-cors` and its settings.
    pub cors: Option<Cors>,
}

impl Default for Annotations {
    fn default() -> Self {
        Self {
            ssl_redirect: true,
            force_ssl_redirect: false,
            max_body_bytes: None,
            connect_timeout: None,
            read_timeout: None,
            use_regex: false,
            rewrite_target: None,
            app_root: None,
            redirect: None,
            upstream_vhost: None,
            protocol: BackendProtocol::Unset,
            canary: None,
            affinity: None,
            access: None,
            cors: None,
        }
    }
}

impl Annotations {
    /// Whether the Ingress's paths are regular expressions: `use-regex`, or
    /// a `rewrite-target` (ingress-nginx turns both into regex locations).
    pub fn regex_paths(&self) -> bool {
        self.use_regex || self.rewrite_target.is_some()
    }
}

/// Reads the annotations under [`PREFIX`] one by one, collecting problems.
struct Reader<'a> {
    all: BTreeMap<&'a str, &'a str>,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.all.get(name).map(|v| v.trim())
    }

    fn problem(&mut self, name: &str, kind: ProblemKind, message: impl Into<String>) {
        self.problems.push(Problem {
            annotation: format!("{PREFIX}{name}"),
            kind,
            message: message.into(),
        });
    }

    fn invalid(&mut self, name: &str, value: &str, why: impl std::fmt::Display) {
        self.problem(
            name,
            ProblemKind::Invalid,
            format!("{PREFIX}{name}: {value:?} {why}"),
        );
    }

    fn bool(&mut self, name: &str, default: bool) -> bool {
        let Some(v) = self.get(name) else {
            return default;
        };
        match parse_bool(v) {
            Some(b) => b,
            None => {
                self.invalid(
                    name,
                    v,
                    format!("is not a boolean (\"true\" or \"false\"); {default} applies"),
                );
                default
            }
        }
    }

    fn seconds(&mut self, name: &str) -> Option<Duration> {
        let v = self.get(name)?;
        match v.parse::<u32>() {
            Ok(0) => {
                self.invalid(name, v, "must be at least 1 second; not applied");
                None
            }
            Ok(s) => Some(Duration::from_secs(s.into())),
            Err(_) => {
                self.invalid(
                    name,
                    v,
                    "is not a whole number of seconds (e.g. \"60\"); not applied",
                );
                None
            }
        }
    }

    fn int(&mut self, name: &str) -> Option<u32> {
        let v = self.get(name)?;
        match v.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.invalid(name, v, "is not a whole number; not applied");
                None
            }
        }
    }
}

/// Go's `strconv.ParseBool`, which ingress-nginx uses.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// An nginx size: bytes, or a number with `k`, `m` or `g` (binary
/// multiples; `b` also means bytes), case-insensitive.
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, unit) = match v.as_bytes().last()? {
        b'0'..=b'9' => (v, 1),
        c => {
            let unit = match c.to_ascii_lowercase() {
                b'b' => 1,
                b'k' => 1 << 10,
                b'm' => 1 << 20,
                b'g' => 1 << 30,
                _ => return None,
            };
            (&v[..v.len() - 1], unit)
        }
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// Comma-separated entries, trimmed, empty ones left out.
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A redirect target of `permanent-redirect`/`temporal-redirect`: an
/// absolute `http` or `https` URL. The query of the request is kept
/// (ingress-nginx drops it); a URL with its own query is refused.
fn redirect_to(url: &str, status: RedirectStatus) -> Result<Redirect, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("is not a URL ({e}); not applied"))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => return Err("is not an absolute http:// or https:// URL; not applied".into()),
    };
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err("has no host; not applied".into());
    };
    if uri.query().is_some() {
        return Err(
            "has a query string, which roundhouse cannot put in a redirect; not applied".into(),
        );
    }
    if url.contains('#') {
        return Err("has a fragment; not applied".into());
    }
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    Ok(Redirect {
        scheme: Some(scheme.into()),
        hostname: Some(host.to_ascii_lowercase().into()),
        path: Some(PathRewrite::ReplaceFull(path.into())),
        port: Some(port),
        status,
    })
}

/// A redirect status annotation's value: a code roundhouse can send, else
/// the default (ingress-nginx falls back for codes outside 300–30x too).
fn redirect_code(r: &mut Reader<'_>, name: &str, default: RedirectStatus) -> RedirectStatus {
    let Some(v) = r.get(name) else {
        return default;
    };
    match v.parse::<u16>().ok().and_then(RedirectStatus::new) {
        Some(s) => s,
        None => {
            r.invalid(
                name,
                v,
                format!(
                    "is not a redirect status roundhouse sends (301, 302, 303, 307, 308); {} applies",
                    default.code().as_u16()
                ),
            );
            default
        }
    }
}

/// A `rewrite-target` roundhouse can substitute into: a path starting
/// with `/` or a group (the result always starts with `/`) whose text (the template's parts other than `$1`…`$9` and
/// `$name`/`${name}`, see [`template_parts`]) is made of request-target
/// characters. Whether each `$name` is a named group of the Ingress's
/// paths is checked with the paths.
fn check_template(t: &str) -> Result<(), &'static str> {
    if !t.starts_with(['/', '$']) {
        return Err("is not a path (starting with / or a capture group)");
    }
    let text_ok = template_parts(t).all(|part| match part {
        TemplatePart::Text(text) => text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)),
        TemplatePart::Group(_) | TemplatePart::Named(_) => true,
    });
    if text_ok {
        Ok(())
    } else {
        Err("has characters that are not allowed in a URL path (spaces, quotes, `#`, `{`, …)")
    }
}

/// An absolute path without spaces or control characters (a target of
/// `app-root`, `session-cookie-path`).
fn is_path(v: &str) -> bool {
    v.starts_with('/') && v.bytes().all(|b| b.is_ascii_graphic()) && !v.contains('#')
}

fn source_list(r: &mut Reader<'_>, name: &str) -> Option<Result<Vec<Cidr>, String>> {
    let v = r.get(name)?;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for entry in list(v) {
        match Cidr::parse(entry) {
            Ok(c) => good.push(c),
            Err(_) => bad.push(entry.to_owned()),
        }
    }
    if good.is_empty() {
        let why = format!(
            "{PREFIX}{name}: no valid address or range in {v:?}; every client is refused (403)"
        );
        r.problem(name, ProblemKind::Invalid, why.clone());
        return Some(Err(why));
    }
    if !bad.is_empty() {
        r.invalid(
            name,
            v,
            format!("has entries that are not addresses or CIDR ranges, left out: {bad:?}"),
        );
    }
    Some(Ok(good))
}

fn access(r: &mut Reader<'_>) -> Option<Access> {
    let allow_name = if r.get("allowlist-source-range").is_some() {
        "allowlist-source-range"
    } else {
        "whitelist-source-range"
    };
    if allow_name == "allowlist-source-range" && r.get("whitelist-source-range").is_some() {
        r.problem(
            "whitelist-source-range",
            ProblemKind::NotApplied,
            format!(
                "{PREFIX}whitelist-source-range is ignored: {PREFIX}allowlist-source-range is also set and is used"
            ),
        );
    }
    let allow = source_list(r, allow_name);
    let deny = source_list(r, "denylist-source-range");
    match (allow, deny) {
        (None, None) => None,
        (Some(Err(why)), _) | (_, Some(Err(why))) => Some(Access::DenyAll(why)),
        (allow, deny) => Some(Access::Ranges(SourceRanges {
            allow: allow.and_then(Result::ok).unwrap_or_default(),
            deny: deny.and_then(Result::ok).unwrap_or_default(),
        })),
    }
}

fn cors(r: &mut Reader<'_>) -> Option<Cors> {
    let settings = [
        "cors-allow-origin",
        "cors-allow-methods",
        "cors-allow-headers",
        "cors-expose-headers",
        "cors-allow-credentials",
        "cors-max-age",
    ];
    if !r.bool("enable-cors", false) {
        for s in settings {
            if r.get(s).is_some() {
                r.problem(
                    s,
                    ProblemKind::NotApplied,
                    format!("{PREFIX}{s} has no effect without {PREFIX}enable-cors: \"true\""),
                );
            }
        }
        return None;
    }
    let mut origins: Vec<Box<str>> = Vec::new();
    let given = r.get("cors-allow-origin");
    for origin in list(given.unwrap_or("*")) {
        if origin == "*" {
            origins = vec!["*".into()];
            break;
        }
        if !valid_origin(origin) {
            r.invalid(
                "cors-allow-origin",
                origin,
                "is not an origin (scheme://host[:port], or scheme://*.host[:port]); left out",
            );
            continue;
        }
        origins.push(origin.to_ascii_lowercase().into());
    }
    if origins.is_empty() {
        r.problem(
            "cors-allow-origin",
            ProblemKind::Invalid,
            format!(
                "{PREFIX}cors-allow-origin: no usable origin; no origin is allowed (preflights are answered without Access-Control-Allow-Origin)"
            ),
        );
    }
    let methods = match r.get("cors-allow-methods") {
        Some(v) => match list(v)
            .map(|m| {
                (m.bytes().all(|b| b.is_ascii_alphabetic()))
                    .then(|| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                    .flatten()
            })
            .collect::<Option<Vec<_>>>()
        {
            Some(m) if !m.is_empty() => m,
            _ => {
                r.invalid(
                    "cors-allow-methods",
                    v,
                    format!("is not a list of methods; the default ({CORS_METHODS}) applies"),
                );
                methods_of(CORS_METHODS)
            }
        },
        None => methods_of(CORS_METHODS),
    };
    let headers = |r: &mut Reader<'_>, name: &str, default: &str, star: bool| match r.get(name) {
        Some(v) => match names(v, star) {
            Some(h) => h,
            None => {
                r.invalid(
                    name,
                    v,
                    format!("is not a list of header names; the default ({default:?}) applies"),
                );
                names(default, star).unwrap_or_default()
            }
        },
        None => names(default, star).unwrap_or_default(),
    };
    let allow_headers = headers(r, "cors-allow-headers", CORS_HEADERS, false);
    let expose_headers = headers(r, "cors-expose-headers", "", true);
    let allow_credentials = r.bool("cors-allow-credentials", true);
    let max_age = match r.get("cors-max-age") {
        Some(v) => match v.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                r.invalid(
                    "cors-max-age",
                    v,
                    format!("is not a whole number of seconds; {CORS_MAX_AGE} applies"),
                );
                CORS_MAX_AGE
            }
        },
        None => CORS_MAX_AGE,
    };
    Some(Cors {
        allow_origins: origins,
        allow_methods: methods,
        allow_headers,
        expose_headers,
        allow_credentials,
        max_age: Some(max_age),
    })
}

fn methods_of(list_: &str) -> Vec<Method> {
    list(list_)
        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
        .collect()
}

/// Header names of a comma-separated list (`*` allowed when `star`).
fn names(v: &str, star: bool) -> Option<Vec<HeaderName>> {
    list(v)
        .map(|h| {
            if h == "*" && !star {
                return None;
            }
            HeaderName::from_bytes(h.as_bytes()).ok()
        })
        .collect()
}

/// `scheme://host[:port]` (or `null`), or `scheme://*.host[:port]` (any
/// one label in place of the `*`), as ingress-nginx accepts an origin.
fn valid_origin(o: &str) -> bool {
    if o == "null" {
        return true;
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let rest = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_lowercase())
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok())
}

fn canary(r: &mut Reader<'_>) -> Option<Canary> {
    let on = r.bool("canary", false);
    let settings = [
        "canary-weight",
        "canary-weight-total",
        "canary-by-header",
        "canary-by-header-value",
        "canary-by-header-pattern",
        "canary-by-cookie",
    ];
    if !on {
        for s in settings {
            if r.get(s).is_some() {
                r.problem(
                    s,
                    ProblemKind::NotApplied,
                    format!("{PREFIX}{s} has no effect without {PREFIX}canary: \"true\""),
                );
            }
        }
        return None;
    }
    let total = match r.int("canary-weight-total") {
        Some(0) => {
            r.invalid(
                "canary-weight-total",
                "0",
                "must be at least 1; 100 applies",
            );
            100
        }
        Some(t) => t,
        None => 100,
    };
    let weight = match r.int("canary-weight") {
        Some(w) if w > total => {
            r.invalid(
                "canary-weight",
                &w.to_string(),
                format!("is above the total ({total}); {total} applies (every request)"),
            );
            total
        }
        Some(w) => w,
        None => 0,
    };
    let header = match r.get("canary-by-header") {
        Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => {
                let value = r.get("canary-by-header-value").filter(|v| !v.is_empty());
                let pattern = r.get("canary-by-header-pattern").filter(|v| !v.is_empty());
                let rule = match (value, pattern) {
                    (Some(v), p) => {
                        if p.is_some() {
                            r.problem(
                                "canary-by-header-pattern",
                                ProblemKind::NotApplied,
                                format!("{PREFIX}canary-by-header-pattern is ignored when {PREFIX}canary-by-header-value is set"),
                            );
                        }
                        Some(HeaderRule::Value(v.to_owned()))
                    }
                    (None, Some(p)) => match Pattern::new(&format!("(?s:.*)(?:{p})(?s:.*)")) {
                        Ok(pat) => Some(HeaderRule::Pattern(pat)),
                        Err(e) => {
                            r.invalid(
                                "canary-by-header-pattern",
                                p,
                                format!("is not a regular expression roundhouse accepts ({e}); the header does not select the canary"),
                            );
                            None
                        }
                    },
                    (None, None) => Some(HeaderRule::AlwaysNever),
                };
                rule.map(|rule| (name, rule))
            }
            Err(_) => {
                r.invalid(
                    "canary-by-header",
                    h,
                    "is not a header name; no header selects the canary",
                );
                None
            }
        },
        None => {
            for s in ["canary-by-header-value", "canary-by-header-pattern"] {
                if r.get(s).is_some() {
                    r.problem(
                        s,
                        ProblemKind::NotApplied,
                        format!("{PREFIX}{s} has no effect without {PREFIX}canary-by-header"),
                    );
                }
            }
            None
        }
    };
    let cookie = match r.get("canary-by-cookie") {
        Some(c)
            if !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            Some(c.to_owned())
        }
        Some(c) => {
            r.invalid(
                "canary-by-cookie",
                c,
                "is not a cookie name (letters, digits, - _ .); no cookie selects the canary",
            );
            None
        }
        None => None,
    };
    Some(Canary {
        weight,
        total,
        header,
        cookie,
    })
}

fn affinity(r: &mut Reader<'_>) -> Option<CookieAffinity> {
    let settings = [
        "session-cookie-name",
        "session-cookie-max-age",
        "session-cookie-path",
    ];
    match r.get("affinity") {
        Some("cookie") => {}
        Some(other) => {
            let other = other.to_owned();
            r.invalid(
                "affinity",
                &other,
                "is not an affinity type roundhouse has (only \"cookie\"); no affinity",
            );
            return None;
        }
        None => {
            for s in settings {
                if r.get(s).is_some() {
                    r.problem(
                        s,
                        ProblemKind::NotApplied,
                        format!("{PREFIX}{s} has no effect without {PREFIX}affinity: cookie"),
                    );
                }
            }
            return None;
        }
    }
    let name = match r.get("session-cookie-name") {
        Some(n)
            if !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b)) =>
        {
            n
        }
        Some(n) => {
            r.invalid(
                "session-cookie-name",
                n,
                format!("is not a cookie name; {COOKIE_NAME} applies"),
            );
            COOKIE_NAME
        }
        None => COOKIE_NAME,
    };
    let max_age = r.seconds("session-cookie-max-age");
    let path = match r.get("session-cookie-path") {
        Some(p) if is_path(p) && !p.contains(';') => Some(p.into()),
        Some(p) => {
            r.invalid(
                "session-cookie-path",
                p,
                "is not a path; the rule's path applies",
            );
            None
        }
        None => None,
    };
    Some(CookieAffinity {
        name: name.into(),
        max_age,
        path,
    })
}

/// Reads `annotations` (all of an Ingress's; those outside [`PREFIX`] are
/// not looked at).
pub fn parse(annotations: &BTreeMap<String, String>) -> (Annotations, Vec<Problem>) {
    let all: BTreeMap<&str, &str> = annotations
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|n| (n, v.as_str())))
        .collect();
    let mut r = Reader {
        all,
        problems: Vec::new(),
    };
    let unknown: Vec<String> = r
        .all
        .keys()
        .filter(|k| !SUPPORTED.contains(k))
        .map(|k| (*k).to_owned())
        .collect();
    for name in unknown {
        r.problem(
            &name,
            ProblemKind::Unsupported,
            format!(
                "{PREFIX}{name} is not supported by roundhouse and has no effect (docs/ingress.md lists what is)"
            ),
        );
    }
    let mut a = Annotations {
        canary: canary(&mut r),
        ..Annotations::default()
    };
    if a.canary.is_some() {
        // ingress-nginx ignores the rest on a canary: the main Ingress's
        // annotations apply to its requests.
        let ignored: Vec<String> = r
            .all
            .keys()
            .filter(|k| SUPPORTED.contains(k) && !CANARY_OWN.contains(k))
            .map(|k| (*k).to_owned())
            .collect();
        for name in ignored {
            r.problem(
                &name,
                ProblemKind::NotApplied,
                format!(
                    "{PREFIX}{name} is ignored on a canary Ingress: the main Ingress's annotations apply"
                ),
            );
        }
        return (a, r.problems);
    }
    a.ssl_redirect = r.bool("ssl-redirect", true);
    a.force_ssl_redirect = r.bool("force-ssl-redirect", false);
    if let Some(v) = r.get("proxy-body-size") {
        match parse_size(v) {
            Some(n) => a.max_body_bytes = Some(n),
            None => r.invalid(
                "proxy-body-size",
                v,
                "is not a size (e.g. \"8m\", \"512k\"); the default (--ingress-max-body-size) applies",
            ),
        }
    }
    a.connect_timeout = r.seconds("proxy-connect-timeout");
    a.read_timeout = r.seconds("proxy-read-timeout");
    if r.seconds("proxy-send-timeout").is_some() {
        r.problem(
            "proxy-send-timeout",
            ProblemKind::NotApplied,
            format!(
                "{PREFIX}proxy-send-timeout: roundhouse has no timeout between two writes to a backend; not applied"
            ),
        );
    }
    a.use_regex = r.bool("use-regex", false);
    if let Some(t) = r.get("rewrite-target") {
        match check_template(t) {
            Ok(()) => a.rewrite_target = Some(t.to_owned()),
            Err(why) => r.invalid("rewrite-target", t, format!("{why}; no rewrite")),
        }
    }
    if let Some(root) = r.get("app-root") {
        if is_path(root) && root != "/" {
            a.app_root = Some(root.to_owned());
        } else {
            r.invalid(
                "app-root",
                root,
                "is not a path other than / (without spaces); no redirect",
            );
        }
    }
    let temporal = r.get("temporal-redirect").filter(|v| !v.is_empty());
    let permanent = r.get("permanent-redirect").filter(|v| !v.is_empty());
    if let Some(url) = temporal {
        let code = redirect_code(&mut r, "temporal-redirect-code", RedirectStatus::FOUND);
        match redirect_to(url, code) {
            Ok(redirect) => a.redirect = Some(redirect),
            Err(why) => r.invalid("temporal-redirect", url, why),
        }
        if permanent.is_some() {
            r.problem(
                "permanent-redirect",
                ProblemKind::NotApplied,
                format!(
                    "{PREFIX}permanent-redirect is ignored: {PREFIX}temporal-redirect is also set and wins (as in ingress-nginx)"
                ),
            );
        }
    } else if let Some(url) = permanent {
        let code = redirect_code(
            &mut r,
            "permanent-redirect-code",
            RedirectStatus::MOVED_PERMANENTLY,
        );
        match redirect_to(url, code) {
            Ok(redirect) => a.redirect = Some(redirect),
            Err(why) => r.invalid("permanent-redirect", url, why),
        }
    }
    for (code, url) in [
        ("temporal-redirect-code", "temporal-redirect"),
        ("permanent-redirect-code", "permanent-redirect"),
    ] {
        if r.get(code).is_some() && r.get(url).is_none() {
            r.problem(
                code,
                ProblemKind::NotApplied,
                format!("{PREFIX}{code} has no effect without {PREFIX}{url}"),
            );
        }
    }
    if let Some(v) = r.get("upstream-vhost") {
        match HeaderValue::from_str(v) {
            Ok(h) if !v.is_empty() && !v.contains(['/', ' ', '@']) => a.upstream_vhost = Some(h),
            _ => r.invalid(
                "upstream-vhost",
                v,
                "is not a host name (host or host:port); the client's Host is sent",
            ),
        }
    }
    if let Some(v) = r.get("backend-protocol") {
        a.protocol = match v.to_ascii_uppercase().as_str() {
            "HTTP" => BackendProtocol::Known(Protocol::Http1),
            "GRPC" | "H2C" => BackendProtocol::Known(Protocol::H2c),
            "HTTPS" | "GRPCS" | "AUTO_HTTP" | "FCGI" => {
                r.problem(
                    "backend-protocol",
                    ProblemKind::Unsupported,
                    format!(
                        "{PREFIX}backend-protocol {v:?} is not supported (HTTP, GRPC and H2C are); \
                         the Ingress's backends answer 500"
                    ),
                );
                BackendProtocol::Unsupported(v.to_owned())
            }
            _ => {
                r.invalid(
                    "backend-protocol",
                    v,
                    "is not a backend protocol (HTTP, GRPC, H2C); HTTP applies",
                );
                BackendProtocol::Unset
            }
        };
    }
    a.affinity = affinity(&mut r);
    a.access = access(&mut r);
    a.cors = cors(&mut r);
    (a, r.problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| {
                let k = if k.contains('/') {
                    (*k).to_owned()
                } else {
                    format!("{PREFIX}{k}")
                };
                (k, (*v).to_owned())
            })
            .collect()
    }

    fn problems(p: &[Problem]) -> Vec<(String, ProblemKind)> {
        p.iter()
            .map(|p| (p.annotation.trim_start_matches(PREFIX).to_owned(), p.kind))
            .collect()
    }

    #[test]
    fn nothing_set_is_ingress_nginx_defaults() {
        let (a, p) = parse(&ann(&[("kubernetes.io/ingress.class", "nginx")]));
        assert_eq!(a, Annotations::default());
        assert!(a.ssl_redirect && !a.force_ssl_redirect && !a.regex_paths());
        assert!(p.is_empty());
    }

    #[test]
    fn unknown_annotations_under_the_prefix_are_reported_each() {
        let (_, p) = parse(&ann(&[
            ("configuration-snippet", "more_set_headers \"X: y\";"),
            ("limit-rps", "5"),
            ("example.com/other", "x"),
        ]));
        assert_eq!(
            problems(&p),
            [
                ("configuration-snippet".into(), ProblemKind::Unsupported),
                ("limit-rps".into(), ProblemKind::Unsupported),
            ]
        );
        assert!(p[0].message.contains("not supported"), "{}", p[0].message);
        assert_eq!(ProblemKind::Unsupported.reason(), "UnsupportedAnnotation");
    }

    #[test]
    fn booleans_sizes_and_seconds_read_as_ingress_nginx_reads_them() {
        for (v, want) in [
            ("true", Some(true)),
            ("True", Some(true)),
            ("1", Some(true)),
            ("f", Some(false)),
            ("FALSE", Some(false)),
            ("yes", None),
            ("", None),
        ] {
            assert_eq!(parse_bool(v), want, "{v:?}");
        }
        for (v, want) in [
            ("8m", Some(8 << 20)),
            ("8M", Some(8 << 20)),
            ("512k", Some(512 << 10)),
            ("1g", Some(1 << 30)),
            ("100", Some(100)),
            ("100b", Some(100)),
            ("0", Some(0)),
            ("m", None),
            ("1.5m", None),
            ("-1", None),
            ("8 m", None),
            ("99999999999999999999g", None),
        ] {
            assert_eq!(parse_size(v), want, "{v:?}");
        }
        let (a, p) = parse(&ann(&[
            ("proxy-body-size", "8m"),
            ("proxy-connect-timeout", "5"),
            ("proxy-read-timeout", "120"),
            ("ssl-redirect", "false"),
            ("force-ssl-redirect", "true"),
        ]));
        assert_eq!(a.max_body_bytes, Some(8 << 20));
        assert_eq!(a.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(a.read_timeout, Some(Duration::from_secs(120)));
        assert!(!a.ssl_redirect && a.force_ssl_redirect);
        assert!(p.is_empty(), "{p:?}");
        let (a, _) = parse(&ann(&[("proxy-body-size", "0")]));
        assert_eq!(a.max_body_bytes, Some(0), "0: no limit of its own");
        let (a, _) = parse(&ann(&[]));
        assert_eq!(a.max_body_bytes, None, "not given: the default");
    }

    #[test]
    fn invalid_values_are_reported_and_fall_back() {
        let (a, p) = parse(&ann(&[
            ("proxy-body-size", "lots"),
            ("proxy-connect-timeout", "5s"),
            ("proxy-read-timeout", "0"),
            ("ssl-redirect", "nope"),
            ("use-regex", "maybe"),
            ("backend-protocol", "QUIC"),
            ("upstream-vhost", "a b"),
            ("app-root", "app"),
            ("rewrite-target", "no slash"),
        ]));
        assert_eq!(a.max_body_bytes, None);
        assert_eq!(a.connect_timeout, None);
        assert_eq!(a.read_timeout, None);
        assert!(a.ssl_redirect, "the default");
        assert!(!a.use_regex);
        assert_eq!(a.protocol, BackendProtocol::Unset);
        assert_eq!(a.upstream_vhost, None);
        assert_eq!(a.app_root, None);
        assert_eq!(a.rewrite_target, None);
        let mut got = problems(&p);
        got.sort();
        let mut want: Vec<(String, ProblemKind)> = [
            "app-root",
            "backend-protocol",
            "proxy-body-size",
            "proxy-connect-timeout",
            "proxy-read-timeout",
            "rewrite-target",
            "ssl-redirect",
            "upstream-vhost",
            "use-regex",
        ]
        .iter()
        .map(|n| ((*n).to_owned(), ProblemKind::Invalid))
        .collect();
        want.sort();
        assert_eq!(got, want);
        let ssl = p
            .iter()
            .find(|p| p.annotation.ends_with("ssl-redirect"))
            .unwrap();
        assert!(
            ssl.message.contains("\"nope\"") && ssl.message.contains("true applies"),
            "{}",
            ssl.message
        );
    }

    #[test]
    fn backend_protocols() {
        for (v, want) in [
            ("HTTP", BackendProtocol::Known(Protocol::Http1)),
            ("grpc", BackendProtocol::Known(Protocol::H2c)),
            ("H2C", BackendProtocol::Known(Protocol::H2c)),
            ("HTTPS", BackendProtocol::Unsupported("HTTPS".into())),
            ("GRPCS", BackendProtocol::Unsupported("GRPCS".into())),
        ] {
            let (a, p) = parse(&ann(&[("backend-protocol", v)]));
            assert_eq!(a.protocol, want, "{v}");
            let unsupported = matches!(want, BackendProtocol::Unsupported(_));
            assert_eq!(
                problems(&p),
                if unsupported {
                    vec![("backend-protocol".to_owned(), ProblemKind::Unsupported)]
                } else {
                    vec![]
                }
            );
        }
    }

    #[test]
    fn redirects_temporal_wins_and_codes_fall_back() {
        let (a, p) = parse(&ann(&[("permanent-redirect", "https://www.example.com")]));
        let r = a.redirect.unwrap();
        assert_eq!(r.status, RedirectStatus::MOVED_PERMANENTLY);
        assert_eq!(r.scheme.as_deref(), Some("https"));
        assert_eq!(r.hostname.as_deref(), Some("www.example.com"));
        assert_eq!(r.port, Some(443));
        assert_eq!(r.path, Some(PathRewrite::ReplaceFull("/".into())));
        assert!(p.is_empty());
        let (a, p) = parse(&ann(&[
            ("permanent-redirect", "http://a.example:8080/x/y"),
            ("permanent-redirect-code", "308"),
        ]));
        let r = a.redirect.unwrap();
        assert_eq!((r.status.code().as_u16(), r.port), (308, Some(8080)));
        assert_eq!(r.path, Some(PathRewrite::ReplaceFull("/x/y".into())));
        assert!(p.is_empty());
        let (a, p) = parse(&ann(&[
            ("temporal-redirect", "https://t.example/"),
            ("temporal-redirect-code", "305"),
            ("permanent-redirect", "https://p.example/"),
        ]));
        let r = a.redirect.unwrap();
        assert_eq!(r.hostname.as_deref(), Some("t.example"));
        assert_eq!(r.status, RedirectStatus::FOUND, "305 is not sent: 302");
        assert_eq!(
            problems(&p),
            [
                ("temporal-redirect-code".into(), ProblemKind::Invalid),
                ("permanent-redirect".into(), ProblemKind::NotApplied),
            ]
        );
        for bad in [
            "www.example.com",
            "ftp://x.example",
            "https://x.example/?a=1",
            "https://",
        ] {
            let (a, p) = parse(&ann(&[("permanent-redirect", bad)]));
            assert_eq!(a.redirect, None, "{bad}");
            assert_eq!(
                problems(&p),
                [("permanent-redirect".into(), ProblemKind::Invalid)],
                "{bad}"
            );
        }
    }

    #[test]
    fn source_ranges_skip_bad_entries_and_deny_everyone_when_none_is_usable() {
        let (a, p) = parse(&ann(&[(
            "whitelist-source-range",
            "10.0.0.0/8, 192.168.1.1,bogus",
        )]));
        let Some(Access::Ranges(r)) = a.access else {
            panic!("{:?}", a.access)
        };
        assert_eq!(r.allow.len(), 2);
        assert!(r.deny.is_empty());
        assert_eq!(
            problems(&p),
            [("whitelist-source-range".into(), ProblemKind::Invalid)]
        );
        let (a, _) = parse(&ann(&[("whitelist-source-range", "bogus, 300.1.1.1")]));
        assert!(matches!(a.access, Some(Access::DenyAll(_))), "fails closed");
        let (a, _) = parse(&ann(&[("denylist-source-range", "x")]));
        assert!(matches!(a.access, Some(Access::DenyAll(_))), "fails closed");
        let (a, p) = parse(&ann(&[
            ("allowlist-source-range", "10.0.0.0/8"),
            ("whitelist-source-range", "0.0.0.0/0"),
            ("denylist-source-range", "10.9.0.0/16"),
        ]));
        let Some(Access::Ranges(r)) = a.access else {
            panic!()
        };
        assert_eq!(r.allow, [Cidr::parse("10.0.0.0/8").unwrap()]);
        assert_eq!(r.deny, [Cidr::parse("10.9.0.0/16").unwrap()]);
        assert_eq!(
            problems(&p),
            [("whitelist-source-range".into(), ProblemKind::NotApplied)]
        );
    }

    #[test]
    fn cors_defaults_and_settings() {
        let (a, p) = parse(&ann(&[("enable-cors", "true")]));
        let c = a.cors.unwrap();
        assert_eq!(c.allow_origins, [Box::<str>::from("*")]);
        assert_eq!(c.allow_methods.len(), 6);
        assert_eq!(c.allow_headers.len(), 9);
        assert!(c.expose_headers.is_empty());
        assert!(c.allow_credentials);
        assert_eq!(c.max_age, Some(CORS_MAX_AGE));
        assert!(p.is_empty());
        let (a, p) = parse(&ann(&[
            ("enable-cors", "true"),
            (
                "cors-allow-origin",
                "https://a.example:4443, http://B.example, https://*.c.example, bad",
            ),
            ("cors-allow-methods", "PUT, get"),
            ("cors-allow-headers", "X-Forwarded-For, X-app123-XPTO"),
            ("cors-expose-headers", "*, X-CustomResponseHeader"),
            ("cors-allow-credentials", "false"),
            ("cors-max-age", "600"),
        ]));
        let c = a.cors.unwrap();
        assert_eq!(
            c.allow_origins,
            [
                Box::<str>::from("https://a.example:4443"),
                "http://b.example".into(),
                "https://*.c.example".into(),
            ]
        );
        assert_eq!(c.allow_methods, [Method::PUT, Method::GET]);
        assert_eq!(c.allow_headers[1].as_str(), "x-app123-xpto");
        assert_eq!(c.expose_headers[0].as_str(), "*");
        assert!(!c.allow_credentials);
        assert_eq!(c.max_age, Some(600));
        assert_eq!(
            problems(&p),
            [("cors-allow-origin".into(), ProblemKind::Invalid)]
        );
        assert!(p[0].message.contains("\"bad\""), "{}", p[0].message);
        let (a, p) = parse(&ann(&[("cors-allow-origin", "https://a.example")]));
        assert_eq!(a.cors, None);
        assert_eq!(
            problems(&p),
            [("cors-allow-origin".into(), ProblemKind::NotApplied)]
        );
    }

    #[test]
    fn canary_settings_and_what_a_canary_ignores() {
        let (a, p) = parse(&ann(&[
            ("canary", "true"),
            ("canary-weight", "20"),
            ("canary-by-header", "X-Canary"),
            ("rewrite-target", "/"),
            ("affinity", "cookie"),
        ]));
        let c = a.canary.unwrap();
        assert_eq!((c.weight, c.total), (20, 100));
        assert_eq!(
            c.header,
            Some((HeaderName::from_static("x-canary"), HeaderRule::AlwaysNever))
        );
        assert_eq!(a.affinity, None, "the main Ingress's applies");
        assert_eq!(a.rewrite_target, None, "the main Ingress's applies");
        assert_eq!(
            problems(&p),
            [
                ("affinity".into(), ProblemKind::NotApplied),
                ("rewrite-target".into(), ProblemKind::NotApplied),
            ]
        );
        let (a, p) = parse(&ann(&[
            ("canary", "true"),
            ("canary-weight", "150"),
            ("canary-weight-total", "1000"),
            ("canary-by-header", "x-v"),
            ("canary-by-header-value", "blue"),
            ("canary-by-header-pattern", "gr(e|a)y"),
            ("canary-by-cookie", "beta"),
        ]));
        let c = a.canary.unwrap();
        assert_eq!((c.weight, c.total), (150, 1000));
        assert_eq!(c.header.unwrap().1, HeaderRule::Value("blue".into()));
        assert_eq!(c.cookie.as_deref(), Some("beta"));
        assert_eq!(
            problems(&p),
            [("canary-by-header-pattern".into(), ProblemKind::NotApplied)]
        );
        let (a, _) = parse(&ann(&[
            ("canary", "true"),
            ("canary-by-header", "x-v"),
            ("canary-by-header-pattern", "gr(e|a)y"),
        ]));
        let HeaderRule::Pattern(pat) = a.canary.unwrap().header.unwrap().1 else {
            panic!()
        };
        assert!(pat.is_match("light-grey") && pat.is_match("gray") && !pat.is_match("green"));
        let (a, p) = parse(&ann(&[("canary", "true"), ("canary-weight", "101")]));
        assert_eq!(a.canary.unwrap().weight, 100);
        assert_eq!(
            problems(&p),
            [("canary-weight".into(), ProblemKind::Invalid)]
        );
        let (a, p) = parse(&ann(&[("canary-weight", "10")]));
        assert_eq!(a.canary, None);
        assert_eq!(
            problems(&p),
            [("canary-weight".into(), ProblemKind::NotApplied)]
        );
    }

    #[test]
    fn cookie_affinity() {
        let (a, p) = parse(&ann(&[
            ("affinity", "cookie"),
            ("session-cookie-name", "route"),
            ("session-cookie-max-age", "172800"),
            ("session-cookie-path", "/app"),
        ]));
        assert_eq!(
            a.affinity,
            Some(CookieAffinity {
                name: "route".into(),
                max_age: Some(Duration::from_secs(172_800)),
                path: Some("/app".into()),
            })
        );
        assert!(p.is_empty());
        let (a, p) = parse(&ann(&[
            ("affinity", "cookie"),
            ("session-cookie-name", "a b"),
        ]));
        assert_eq!(a.affinity.unwrap().name.as_ref(), COOKIE_NAME);
        assert_eq!(
            problems(&p),
            [("session-cookie-name".into(), ProblemKind::Invalid)]
        );
        let (a, p) = parse(&ann(&[("affinity", "ip")]));
        assert_eq!(a.affinity, None);
        assert_eq!(problems(&p), [("affinity".into(), ProblemKind::Invalid)]);
    }

    #[test]
    fn rewrite_and_regex() {
        let (a, p) = parse(&ann(&[("rewrite-target", "/$2"), ("use-regex", "true")]));
        assert_eq!(a.rewrite_target.as_deref(), Some("/$2"));
        assert!(a.use_regex && a.regex_paths());
        assert!(p.is_empty());
        let (a, _) = parse(&ann(&[("rewrite-target", "/")]));
        assert!(a.regex_paths(), "rewrite-target alone makes regex paths");
        for good in [
            "/$1/x?a=1&b=$2",
            "/${name}-$1",
            "/a$",
            "/~user/$9;v=1",
            "$1",
        ] {
            let (a, p) = parse(&ann(&[("rewrite-target", good)]));
            assert_eq!(a.rewrite_target.as_deref(), Some(good));
            assert!(p.is_empty(), "{good}: {p:?}");
        }
        for bad in [
            "a/$1",
            "https://x/$1",
            "/a b",
            "/a#b",
            "/{x",
            "/\"a\"",
            "/${a b}",
        ] {
            let (a, p) = parse(&ann(&[("rewrite-target", bad)]));
            assert_eq!(a.rewrite_target, None, "{bad}");
            assert_eq!(
                problems(&p),
                [("rewrite-target".into(), ProblemKind::Invalid)],
                "{bad}"
            );
        }
        let (a, _) = parse(&ann(&[("app-root", "/app1")]));
        assert_eq!(a.app_root.as_deref(), Some("/app1"));
        let (a, p) = parse(&ann(&[("proxy-send-timeout", "60")]));
        assert_eq!(a, Annotations::default());
        assert_eq!(
            problems(&p),
            [("proxy-send-timeout".into(), ProblemKind::NotApplied)]
        );
    }
}
