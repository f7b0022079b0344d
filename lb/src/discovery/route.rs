//! The route model: what every route kind translates into, with no
//! Kubernetes type in it.
//!
//! `Upstream` objects and the static sources (`--backend`, `--config`),
//! Gateway API `HTTPRoute` and `GRPCRoute`, and later `Ingress`, are each
//! one adapter onto these types; endpoint resolution happens in the
//! adapter, so the data plane (`selection`, `proxy`) receives [`Route`]s
//! whose backends already carry their endpoints.
//!
//! - A [`Route`] is one object's contribution: where it applies
//!   ([`Scope`]: listeners and hostnames), its [`Rule`]s, the object it came
//!   from ([`Origin`]) and its tie-break ([`Order`]).
//! - A [`Rule`] is an OR of [`Match`]es (each an AND of path, method,
//!   headers and query parameters), [`Filters`], an [`Action`] (forward to
//!   weighted backends, redirect, or answer) and a [`RulePolicy`].
//! - Precedence between matches of all rules of all routes is a total
//!   order: [`Precedence`] (the Gateway API's, documented there).
//!
//! Lowering the `Upstream` shape: [`super::UpstreamConfig::to_route`].

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::{EndpointSpec, Protocol, UpstreamPolicy};

// ---------------------------------------------------------------------------
// Scope: listeners and hostnames
// ---------------------------------------------------------------------------

/// A listener of the LB, by a small number a connection carries from its
/// accept: [`ListenerId::PLAIN`] is `--listen`, [`ListenerId::TLS`] is
/// `--tls-listen`; further ids are free for listeners opened per Gateway
/// listener (at most [`ListenerId::MAX`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u8);

impl ListenerId {
    /// The plain HTTP listener (`--listen`).
    pub const PLAIN: ListenerId = ListenerId(0);
    /// The TLS listener (`--tls-listen`).
    pub const TLS: ListenerId = ListenerId(1);
    /// The largest id.
    pub const MAX: u8 = 63;
}

/// A set of listeners (a bit per [`ListenerId`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listeners(u64);

impl Listeners {
    /// Every listener.
    pub const ALL: Listeners = Listeners(u64::MAX);
    /// No listener (a scope that serves nothing).
    pub const NONE: Listeners = Listeners(0);

    /// Just `id`.
    pub const fn only(id: ListenerId) -> Self {
        Listeners(1 << (id.0 & ListenerId::MAX))
    }

    /// This set and `id`.
    pub const fn with(self, id: ListenerId) -> Self {
        Listeners(self.0 | Self::only(id).0)
    }

    /// Both sets together.
    pub const fn union(self, other: Listeners) -> Self {
        Listeners(self.0 | other.0)
    }

    /// Whether `id` is in the set.
    #[inline]
    pub const fn contains(self, id: ListenerId) -> bool {
        self.0 & Self::only(id).0 != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners::ALL
    }
}

impl fmt::Debug for Listeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Listeners::ALL {
            return f.write_str("Listeners(all)");
        }
        let ids: Vec<u8> = (0..=ListenerId::MAX)
            .filter(|i| self.contains(ListenerId(*i)))
            .collect();
        write!(f, "Listeners({ids:?})")
    }
}

/// A hostname a route serves: exact, or `*.suffix` (any name with at least
/// one more label in front of the suffix: `*.example.com` matches
/// `a.example.com` and `a.b.example.com`, not `example.com`). Always lower
/// case, without a port or a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    /// This name only.
    Exact(Box<str>),
    /// Names ending in `.` + this suffix (stored without the `*.`).
    Wildcard(Box<str>),
}

/// A hostname that is not a valid DNS name or `*.` wildcard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hostname `{0}` (a DNS name, or `*.` and a DNS name; no IP, no port)")]
pub struct InvalidHostname(pub String);

impl HostMatch {
    /// Parses `name` or `*.name` (RFC 1123 labels, case-insensitive).
    pub fn parse(s: &str) -> Result<Self, InvalidHostname> {
        let bad = || InvalidHostname(s.to_owned());
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let labels_ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok || name.parse::<IpAddr>().is_ok() {
            return Err(bad());
        }
        let name: Box<str> = name.into();
        Ok(if wild {
            HostMatch::Wildcard(name)
        } else {
            HostMatch::Exact(name)
        })
    }

    /// Whether a request's host (lower case, no port) is served.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(name) => **name == *host,
            HostMatch::Wildcard(suffix) => wildcard_covers(suffix, host),
        }
    }

    /// The names served by both `self` and `other`, as one hostname, or
    /// `None` when no name is served by both (the Gateway API's
    /// listener/route hostname intersection).
    pub fn intersect(&self, other: &HostMatch) -> Option<HostMatch> {
        use HostMatch::{Exact, Wildcard};
        match (self, other) {
            (Exact(a), Exact(b)) => (a == b).then(|| self.clone()),
            (Exact(e), Wildcard(w)) | (Wildcard(w), Exact(e)) => {
                wildcard_covers(w, e).then(|| Exact(e.clone()))
            }
            (Wildcard(a), Wildcard(b)) => {
                if a == b || wildcard_covers(a, b) {
                    Some(Wildcard(b.clone()))
                } else if wildcard_covers(b, a) {
                    Some(Wildcard(a.clone()))
                } else {
                    None
                }
            }
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(n) => f.write_str(n),
            HostMatch::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Whether `host` ends in `.suffix` with at least one label before it.
fn wildcard_covers(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len() + 1
        && host.ends_with(suffix)
        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

/// The hostnames a route serves on a listener: the Gateway API's
/// intersection of the listener's hostname (`None`: any) with the route's
/// (empty: any). `Some(vec![])` means any host; `None` means the two have
/// no name in common (the route does not attach: the adapter reports
/// `NoMatchingListenerHostname`). Route hostnames that the listener does
/// not serve are left out; duplicates are removed.
pub fn intersect_hostnames(
    listener: Option<&HostMatch>,
    route: &[HostMatch],
) -> Option<Vec<HostMatch>> {
    let mut out: Vec<HostMatch> = match (listener, route) {
        (None, r) => r.to_vec(),
        (Some(l), []) => vec![l.clone()],
        (Some(l), r) => r.iter().filter_map(|h| l.intersect(h)).collect(),
    };
    if out.is_empty() && !(listener.is_none() && route.is_empty()) {
        return None;
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// Where a route applies: on these listeners, for these hostnames (empty:
/// any host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The listeners.
    pub listeners: Listeners,
    /// The hostnames; empty serves any host.
    pub hostnames: Vec<HostMatch>,
}

// ---------------------------------------------------------------------------
// Matches
// ---------------------------------------------------------------------------

/// A regular expression in the [`regex`] crate's dialect (RE2-like: no
/// look-around, no backreferences; linear-time matching), always matched
/// against the whole value: the pattern is compiled as `^(?:pattern)$`. An
/// adapter that wants a prefix match (ingress-nginx's `use-regex` locations
/// are prefix-anchored) appends `.*`; case-insensitivity is `(?i)`.
///
/// A path pattern ranks among other paths by a length ([`Specificity`]):
/// its source's, unless the adapter gives the length of what the user
/// wrote ([`Pattern::with_rank`]), so that decoration it adds (`(?i)`,
/// `.*`) does not move it ahead of longer paths.
#[derive(Clone)]
pub struct Pattern {
    source: Box<str>,
    rank: usize,
    compiled: regex::Regex,
}

/// The largest compiled size a [`Pattern`] may have (hostile objects must
/// not make the data plane build a huge automaton).
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;

impl Pattern {
    /// Compiles `source`, anchored at both ends; it ranks by its length.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Self::with_rank(source, source.len())
    }

    /// Compiles `source`, anchored at both ends, ranking among paths as a
    /// path of `rank` characters (what the user wrote, when the adapter
    /// decorates it).
    pub fn with_rank(source: &str, rank: usize) -> Result<Self, regex::Error> {
        let compiled = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            source: source.into(),
            rank,
            compiled,
        })
    }

    /// The pattern as written (without the anchors).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The length it ranks by among paths ([`Specificity`]).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }

    /// The compiled expression (for capture-group rewrites).
    pub fn regex(&self) -> &regex::Regex {
        &self.compiled
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.rank == other.rank
    }
}

impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

/// How a request's path (without the query) is matched. Matching is
/// case-sensitive and on the path as received (not percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// This path exactly (`/abc` matches neither `/abc/` nor `/abcd`).
    Exact(Box<str>),
    /// This prefix, element by element: `/abc` matches `/abc`, `/abc/` and
    /// `/abc/def`, not `/abcd`; a trailing `/` in the prefix is ignored.
    Prefix(Box<str>),
    /// The whole path matches this expression.
    Regex(Pattern),
}

impl PathMatch {
    /// `Prefix("/")`: every path.
    pub fn any() -> Self {
        PathMatch::Prefix("/".into())
    }

    /// The prefix without its trailing `/` (`""` for `/`): what
    /// [`prefix_matches`] compares.
    pub fn normalized_prefix(prefix: &str) -> &str {
        prefix.strip_suffix('/').unwrap_or(prefix)
    }
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::any()
    }
}

/// True when `path` is under `prefix` on a segment boundary (a trailing `/`
/// in the prefix is ignored; `/` and the empty prefix match every path, also
/// one that does not start with `/`, such as `OPTIONS *`'s `*`).
#[inline]
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = PathMatch::normalized_prefix(prefix);
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// How a header or query parameter value is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// This value exactly (case-sensitive).
    Exact(Box<str>),
    /// The whole value matches this expression.
    Regex(Pattern),
}

impl ValueMatch {
    /// Whether `value` matches.
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(v) => v.as_bytes() == value,
            ValueMatch::Regex(p) => std::str::from_utf8(value).is_ok_and(|v| p.is_match(v)),
        }
    }
}

/// A header the request must carry (the name compared case-insensitively;
/// with the header repeated, any one of its values may match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// The field name (lower case, as `http` keeps it).
    pub name: HeaderName,
    /// Its value.
    pub value: ValueMatch,
}

/// A query parameter the request must carry (the name compared exactly;
/// with the parameter repeated, the first occurrence counts, as the Gateway
/// API recommends). Names and values are compared as received, not
/// percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMatch {
    /// The parameter name.
    pub name: Box<str>,
    /// Its value.
    pub value: ValueMatch,
}

/// One alternative of a rule: every condition must hold (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// The path condition (default: every path).
    pub path: PathMatch,
    /// The method, if one is required.
    pub method: Option<Method>,
    /// Headers that must be present with these values.
    pub headers: Vec<HeaderMatch>,
    /// Query parameters that must be present with these values.
    pub query: Vec<QueryMatch>,
}

impl Match {
    /// A match on a path prefix only.
    pub fn prefix(prefix: &str) -> Self {
        Match {
            path: PathMatch::Prefix(prefix.into()),
            ..Match::default()
        }
    }

    /// A match on an exact path only.
    pub fn exact(path: &str) -> Self {
        Match {
            path: PathMatch::Exact(path.into()),
            ..Match::default()
        }
    }
}

// ---------------------------------------------------------------------------
// Precedence
// ---------------------------------------------------------------------------

/// How specific a [`Match`] is, as the Gateway API ranks matches across all
/// rules of all routes that apply to a request's host. Larger is more
/// specific; compared field by field in this order:
///
/// 1. the path kind: `Exact` before `Prefix` and `Regex`;
/// 2. the path length in characters (a prefix without its trailing `/`; a
///    regex: its [`Pattern::rank`], its pattern's length unless the adapter
///    said otherwise, ranked among prefixes of the same length just after
///    them — regex precedence is left to implementations by the Gateway
///    API, and this is ingress-nginx's longest-first order);
/// 3. a method condition;
/// 4. the number of header conditions;
/// 5. the number of query parameter conditions.
///
/// Hostname specificity comes before all of these (exact names, then
/// wildcards longest first, then any host) and is the routing table's
/// bucketing, not part of this key. Ties after all of it are broken by
/// [`Order`] (oldest route first, then `namespace/name`), then by rule
/// order and match order within a route. Ingress's documented order
/// (`Exact` before `Prefix`, longest path first) is this same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    exact: bool,
    length: usize,
    prefix_over_regex: bool,
    method: bool,
    headers: usize,
    query: usize,
}

impl Match {
    /// Its specificity (see [`Specificity`]).
    pub fn specificity(&self) -> Specificity {
        let (exact, length, prefix_over_regex) = match &self.path {
            PathMatch::Exact(p) => (true, p.len(), true),
            PathMatch::Prefix(p) => (false, PathMatch::normalized_prefix(p).len(), true),
            PathMatch::Regex(r) => (false, r.rank(), false),
        };
        Specificity {
            exact,
            length,
            prefix_over_regex,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query.len(),
        }
    }
}

/// A route's place among routes whose matches are equally specific. The
/// adapter fills it; the Gateway API's rule is the default: the oldest
/// route first, then `namespace/name` alphabetically (from the
/// [`Origin`]). Within a route, earlier rules and earlier matches win.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Order {
    /// Creation time, Unix seconds; `None` ranks after every known time.
    pub created: Option<i64>,
}

/// The full precedence key of one match of one rule of one route: smaller
/// sorts first (wins). Built by [`Precedence::of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precedence<'a> {
    /// The match's specificity (larger wins).
    pub specificity: Specificity,
    /// The route's creation time (older wins; unknown last).
    pub created: Option<i64>,
    /// The route's namespace and name (alphabetical).
    pub origin: (&'a str, &'a str),
    /// The rule's index in the route.
    pub rule: usize,
    /// The match's index in the rule.
    pub matched: usize,
}

impl<'a> Precedence<'a> {
    /// The key of `route.rules[rule]`'s match `m` (at index `matched`).
    pub fn of(route: &'a Route, rule: usize, m: &Match, matched: usize) -> Self {
        Precedence {
            specificity: m.specificity(),
            created: route.order.created,
            origin: (&route.origin.namespace, &route.origin.name),
            rule,
            matched,
        }
    }
}

impl Ord for Precedence<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .specificity
            .cmp(&self.specificity)
            .then_with(|| match (self.created, other.created) {
                (Some(a), Some(b)) => a.cmp(&b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .then_with(|| self.origin.cmp(&other.origin))
            .then_with(|| self.rule.cmp(&other.rule))
            .then_with(|| self.matched.cmp(&other.matched))
    }
}

impl PartialOrd for Precedence<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

// ---------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------

/// Header edits (the Gateway API's `RequestHeaderModifier` and
/// `ResponseHeaderModifier`), applied in this order: `remove`, then `set`
/// (replacing every field of that name), then `add` (appended, keeping
/// existing ones). Names are lower case. Headers the LB itself manages
/// (hop-by-hop fields, `X-Forwarded-*`, `Via`, `Content-Length`) cannot be
/// edited: an adapter reports such an edit as unsupported, and the data
/// plane ignores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Fields replaced by this value.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Fields appended.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Fields removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// How a path is rewritten (by a redirect's `Location` or a URL rewrite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// The whole path becomes this (the query is kept).
    ReplaceFull(Box<str>),
    /// The part of the path that the rule's `Prefix` match matched is
    /// replaced by this (element-wise: `/a` → `/b` turns `/a/x` into
    /// `/b/x`; the Gateway API's `ReplacePrefixMatch`). Only valid on a rule
    /// whose matches are all `Prefix` matches.
    ReplacePrefix(Box<str>),
    /// The rule's `Regex` path match's capture groups substituted into this
    /// template, as nginx's `rewrite` substitutes them (ingress-nginx's
    /// `rewrite-target`; see [`template_parts`]): `$1`…`$9`, one digit
    /// each, and `$name` or `${name}` for a named group. Only valid on a
    /// rule whose matches are all `Regex` matches. The whole path is
    /// replaced; the query is kept (after the template's own, if it has
    /// one).
    Captures(Box<str>),
}

/// One piece of a [`PathRewrite::Captures`] template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    /// Text copied as it is.
    Text(&'a str),
    /// `$1`…`$9`: that capture group (empty when it did not take part).
    Group(usize),
    /// `$name` or `${name}`: the group of that name, if the expression
    /// has one (nginx would read a variable of that name: an adapter
    /// reports such templates; the data plane copies the reference as
    /// text).
    Named(&'a str),
}

/// Splits a capture template the way nginx's script compiler reads a
/// `rewrite` replacement: `$` and one digit `1`–`9` is that group (`$12`
/// is group 1 then the text `2`; `$0` is not a group); `$` and a run of
/// letters, digits and `_` (or the same in braces) is a name; any other
/// `$` is text.
pub fn template_parts(template: &str) -> impl Iterator<Item = TemplatePart<'_>> {
    let mut rest = template;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let name_len = |s: &str| {
            s.bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count()
        };
        let Some(at) = rest.find('$') else {
            return Some(TemplatePart::Text(std::mem::take(&mut rest)));
        };
        if at > 0 {
            let (text, tail) = rest.split_at(at);
            rest = tail;
            return Some(TemplatePart::Text(text));
        }
        let after = &rest[1..];
        let (part, used) = match after.as_bytes().first() {
            Some(d @ b'1'..=b'9') => (TemplatePart::Group(usize::from(d - b'0')), 2),
            Some(b'{') => match after[1..].find('}') {
                Some(end) if end > 0 && name_len(&after[1..]) == end => {
                    (TemplatePart::Named(&after[1..=end]), end + 3)
                }
                _ => (TemplatePart::Text("$"), 1),
            },
            Some(_) if name_len(after) > 0 => {
                let n = name_len(after);
                (TemplatePart::Named(&after[..n]), n + 1)
            }
            _ => (TemplatePart::Text("$"), 1),
        };
        rest = &rest[used..];
        Some(part)
    })
}

/// A URL rewrite before forwarding (the Gateway API's `URLRewrite`; also
/// ingress-nginx's `rewrite-target` and `upstream-vhost`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// The `Host` sent to the backend (`X-Forwarded-Host` keeps the
    /// client's).
    pub hostname: Option<HeaderValue>,
    /// The path sent to the backend (the query is kept).
    pub path: Option<PathRewrite>,
}

/// A redirect's status code: 301, 302, 303, 307 or 308.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RedirectStatus(StatusCode);

impl RedirectStatus {
    /// `301 Moved Permanently`.
    pub const MOVED_PERMANENTLY: Self = RedirectStatus(StatusCode::MOVED_PERMANENTLY);
    /// `302 Found` (the Gateway API's default).
    pub const FOUND: Self = RedirectStatus(StatusCode::FOUND);
    /// `308 Permanent Redirect`.
    pub const PERMANENT_REDIRECT: Self = RedirectStatus(StatusCode::PERMANENT_REDIRECT);

    /// The status if `code` is a redirect status this model allows.
    pub fn new(code: u16) -> Option<Self> {
        matches!(code, 301 | 302 | 303 | 307 | 308)
            .then(|| StatusCode::from_u16(code).ok().map(RedirectStatus))
            .flatten()
    }

    /// The status code.
    pub fn code(self) -> StatusCode {
        self.0
    }
}

impl Default for RedirectStatus {
    fn default() -> Self {
        RedirectStatus::FOUND
    }
}

/// A redirect answered by the LB (the Gateway API's `RequestRedirect`;
/// ingress-nginx's `ssl-redirect`, `permanent-redirect`, `app-root`). Each
/// part left `None` is the request's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`.
    pub scheme: Option<Box<str>>,
    /// The host name (without port).
    pub hostname: Option<Box<str>>,
    /// The path.
    pub path: Option<PathRewrite>,
    /// The port. `None`: the scheme's well-known port when the scheme is
    /// changed, else the request's port (the Gateway API's rule); the
    /// well-known port of the resulting scheme is left out of `Location`.
    pub port: Option<u16>,
    /// The status code.
    pub status: RedirectStatus,
}

/// An address range (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A CIDR that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address range `{0}` (an IP address, optionally with /prefix-length)")]
pub struct InvalidCidr(pub String);

impl Cidr {
    /// Parses `addr` or `addr/len`; host bits are cleared.
    pub fn parse(s: &str) -> Result<Self, InvalidCidr> {
        let bad = || InvalidCidr(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
            None => max,
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Which clients may use a rule (ingress-nginx's `whitelist-source-range`
/// and `denylist-source-range`); anyone else gets `403`. A client in
/// `deny` is refused; with `allow` non-empty, a client outside it is
/// refused. The client is the connection's peer address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRanges {
    /// Only these (empty: everyone not denied).
    pub allow: Vec<Cidr>,
    /// Never these.
    pub deny: Vec<Cidr>,
}

impl SourceRanges {
    /// Whether `ip` may use the rule.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }
}

/// Cross-origin resource sharing (ingress-nginx's `enable-cors` and its
/// `cors-*` settings; the Gateway API's CORS filter): a preflight
/// (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
/// by the LB with `204`, and responses to an allowed origin get the
/// `Access-Control-*` headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins: `scheme://host[:port]` (compared ignoring ASCII
    /// case), `scheme://*.host[:port]` (the `*` standing for one DNS label,
    /// as in ingress-nginx: `https://*.example.com` allows
    /// `https://a.example.com`, not `https://a.b.example.com` or
    /// `https://example.com`), or `*`, which allows any origin (see
    /// [`Cors::allows`]).
    pub allow_origins: Vec<Box<str>>,
    /// `Access-Control-Allow-Methods`.
    pub allow_methods: Vec<Method>,
    /// `Access-Control-Allow-Headers`.
    pub allow_headers: Vec<HeaderName>,
    /// `Access-Control-Expose-Headers`.
    pub expose_headers: Vec<HeaderName>,
    /// `Access-Control-Allow-Credentials: true` (then the origin is echoed,
    /// never `*`).
    pub allow_credentials: bool,
    /// `Access-Control-Max-Age`, in seconds.
    pub max_age: Option<u32>,
}

impl Cors {
    /// Whether a request from `origin` (its `Origin` header) is allowed by
    /// an entry other than `*`.
    pub fn lists(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|allowed| origin_matches(allowed, origin))
    }

    /// Whether `*` is among the allowed origins.
    pub fn allows_any(&self) -> bool {
        self.allow_origins.iter().any(|o| &**o == "*")
    }

    /// Whether a request from `origin` is allowed (by `*` or a listed
    /// entry).
    pub fn allows(&self, origin: &str) -> bool {
        self.allows_any() || self.lists(origin)
    }
}

/// Whether `origin` is the allowed origin `allowed` (ASCII case ignored),
/// or one label in place of the `*` of `scheme://*.rest`.
fn origin_matches(allowed: &str, origin: &str) -> bool {
    if allowed.len() == origin.len() && allowed.eq_ignore_ascii_case(origin) {
        return true;
    }
    let Some(star) = allowed.find("://*.").map(|i| i + 3) else {
        return false;
    };
    let (head, tail) = (&allowed[..star], &allowed[star + 1..]);
    let starts = origin
        .get(..head.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(head));
    let ends = origin.len() >= head.len() + tail.len()
        && origin
            .get(origin.len() - tail.len()..)
            .is_some_and(|t| t.eq_ignore_ascii_case(tail));
    if !(starts && ends) {
        return false;
    }
    let label = &origin[head.len()..origin.len() - tail.len()];
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Session affinity: after a round-robin first pick, a client sticks to
/// its endpoint through a cookie the LB sets (ingress-nginx's
/// `affinity: cookie`, `session-cookie-name`, `session-cookie-max-age`).
/// A cookie naming an endpoint that is gone or ejected is ignored (a new
/// pick, and a new cookie).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAffinity {
    /// The cookie's name.
    pub name: Box<str>,
    /// Its `Max-Age`; `None`: a session cookie.
    pub max_age: Option<Duration>,
    /// Its `Path` (default `/`).
    pub path: Option<Box<str>>,
}

/// What a rule does to a request besides choosing where it goes, in the
/// order the data plane applies them: `source` (403), `cors` preflight,
/// `max_body_bytes` (413), `request_headers`, `rewrite`; and on the
/// response `response_headers`, then the CORS response headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Edits of the request's headers.
    pub request_headers: HeaderEdits,
    /// Edits of the response's headers.
    pub response_headers: HeaderEdits,
    /// Host and path rewrites.
    pub rewrite: Option<Rewrite>,
    /// Client address allow- and deny-lists.
    pub source: Option<SourceRanges>,
    /// CORS.
    pub cors: Option<Cors>,
    /// The largest request body (beyond: `413`), below `--max-body-bytes`.
    pub max_body_bytes: Option<u64>,
    /// Cookie affinity.
    pub affinity: Option<CookieAffinity>,
}

impl Filters {
    /// Whether the rule filters nothing.
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }
}

// ---------------------------------------------------------------------------
// Actions and backends
// ---------------------------------------------------------------------------

/// A resolved endpoint set: the ready endpoints of one Service port (or of
/// one `Upstream`, or the static list), the protocol they speak and their
/// health settings. Rules refer to it by `Arc`; rules that share a backend
/// (the same `name`) share its endpoints' health and counters. Names are
/// unique in a [`super::RoutingConfig`]: an adapter names a Service port
/// `namespace/service:port` (Upstream names have no `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Unique name; the `upstream` label of the endpoint metrics.
    pub name: Arc<str>,
    /// The endpoints that take new requests, in a stable order.
    pub endpoints: Vec<EndpointSpec>,
    /// What they speak (a Service port's `appProtocol: kubernetes.io/h2c`).
    pub protocol: Protocol,
    /// Connect timeout and ejection settings (`retries` and
    /// `response_header_timeout` here are the defaults of the rules that
    /// do not set their own: see [`RulePolicy`]).
    pub policy: UpstreamPolicy,
}

/// Where one share of a rule's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendRef {
    /// A resolved backend.
    Resolved(Arc<Backend>),
    /// A reference that could not be resolved (a missing Service, a kind
    /// that is not a Service, a cross-namespace reference without a
    /// ReferenceGrant): its share of requests is answered `500`, as the
    /// Gateway API requires. The reason is for logs.
    Invalid(Arc<str>),
}

/// One weighted share of a rule's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedBackend {
    /// Relative weight (0: no traffic). The split across all endpoints of
    /// all backends of a rule is exact per cycle of the summed weights:
    /// each backend's weight is spread over its endpoints by their own
    /// weights.
    pub weight: u32,
    /// Where it goes.
    pub target: BackendRef,
}

/// A response the LB gives itself for a rule (no backend involved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedResponse {
    /// Its status.
    pub status: StatusCode,
    /// Its body (`text/plain`).
    pub body: Box<str>,
}

/// What a rule does with a request it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward to these weighted backends. Empty, or every weight 0: `500`.
    Forward(Vec<WeightedBackend>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with this response.
    Respond(FixedResponse),
}

/// A rule's overrides of the LB-wide and backend settings; `None` keeps
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulePolicy {
    /// The Gateway API's `timeouts.request`: how long the LB waits for a
    /// response head, all attempts together.
    pub request_timeout: Option<Duration>,
    /// The Gateway API's `timeouts.backendRequest`: how long one attempt
    /// waits for a response head (`--response-header-timeout`).
    pub backend_request_timeout: Option<Duration>,
    /// Extra attempts on other endpoints of the chosen backend (`--retries`).
    pub retries: Option<u32>,
}

/// One rule of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The rule's name, if the object gives one (a Gateway API rule's
    /// `name`), for logs and status.
    pub name: Option<Arc<str>>,
    /// Alternatives (OR); empty means every request (`Prefix /`).
    pub matches: Vec<Match>,
    /// What is done to requests and responses.
    pub filters: Filters,
    /// Where requests go.
    pub action: Action,
    /// Timeouts and retries.
    pub policy: RulePolicy,
}

impl Rule {
    /// A rule forwarding everything it matches to one backend.
    pub fn forward(matches: Vec<Match>, backend: Arc<Backend>) -> Self {
        Rule {
            name: None,
            matches,
            filters: Filters::default(),
            action: Action::Forward(vec![WeightedBackend {
                weight: 1,
                target: BackendRef::Resolved(backend),
            }]),
            policy: RulePolicy::default(),
        }
    }

    /// The backends it forwards to (none for a redirect or a fixed
    /// response).
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        let shares = match &self.action {
            Action::Forward(shares) => shares.as_slice(),
            _ => &[],
        };
        shares.iter().filter_map(|s| match &s.target {
            BackendRef::Resolved(b) => Some(b),
            BackendRef::Invalid(_) => None,
        })
    }
}

// ---------------------------------------------------------------------------
// Routes and their origin
// ---------------------------------------------------------------------------

/// The kind of object a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// `--backend` or `--config`.
    Static,
    /// A roundhouse `Upstream`.
    Upstream,
    /// A Gateway API `HTTPRoute`.
    HttpRoute,
    /// A Gateway API `GRPCRoute`.
    GrpcRoute,
    /// A `networking.k8s.io/v1` `Ingress`.
    Ingress,
}

impl RouteKind {
    /// The kind's name, as logs and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Static => "static",
            RouteKind::Upstream => "Upstream",
            RouteKind::HttpRoute => "HTTPRoute",
            RouteKind::GrpcRoute => "GRPCRoute",
            RouteKind::Ingress => "Ingress",
        }
    }
}

/// The object a route came from, for logs, metrics and status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// Its kind.
    pub kind: RouteKind,
    /// Its namespace (empty for static routes).
    pub namespace: Arc<str>,
    /// Its name.
    pub name: Arc<str>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// One object's routes: where they apply, the rules, and where they came
/// from. Two routes with the same origin are allowed (an Ingress with rules
/// for two hosts can be one route per host); their rules keep their
/// indices for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The object.
    pub origin: Origin,
    /// Its tie-break among equally specific matches.
    pub order: Order,
    /// Where its rules apply (the union of the scopes; an empty list serves
    /// nothing).
    pub scopes: Vec<Scope>,
    /// Its rules.
    pub rules: Vec<Rule>,
}

/// A route that the data plane would have to reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoute {
    /// `ReplacePrefix` on a rule with a match that is not a `Prefix` match.
    #[error("rule {rule}: a prefix rewrite needs every match to be a path prefix match")]
    PrefixRewriteWithoutPrefix {
        /// The rule's index.
        rule: usize,
    },
    /// `Captures` on a rule with a match that is not a `Regex` match.
    #[error("rule {rule}: a capture rewrite needs every match to be a regular expression match")]
    CaptureRewriteWithoutRegex {
        /// The rule's index.
        rule: usize,
    },
    /// A backend without a name.
    #[error("rule {rule}: a backend has an empty name")]
    UnnamedBackend {
        /// The rule's index.
        rule: usize,
    },
}

impl Route {
    /// Checks what the types cannot: path rewrites that need a particular
    /// kind of path match, backend names. Adapters call it and report an
    /// error as the object's status; the data plane skips a rule that
    /// fails it.
    pub fn validate(&self) -> Result<(), InvalidRoute> {
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(i)?;
        }
        Ok(())
    }
}

impl Rule {
    /// [`Route::validate`] for the rule at index `index`.
    pub fn validate(&self, index: usize) -> Result<(), InvalidRoute> {
        let rewrites = [
            self.filters.rewrite.as_ref().and_then(|r| r.path.as_ref()),
            match &self.action {
                Action::Redirect(r) => r.path.as_ref(),
                _ => None,
            },
        ];
        let any_path = |f: fn(&PathMatch) -> bool| {
            !self.matches.is_empty() && self.matches.iter().all(|m| f(&m.path))
        };
        for rewrite in rewrites.into_iter().flatten() {
            match rewrite {
                PathRewrite::ReplacePrefix(_)
                    if !(self.matches.is_empty()
                        || any_path(|p| matches!(p, PathMatch::Prefix(_)))) =>
                {
                    return Err(InvalidRoute::PrefixRewriteWithoutPrefix { rule: index });
                }
                PathRewrite::Captures(_) if !any_path(|p| matches!(p, PathMatch::Regex(_))) => {
                    return Err(InvalidRoute::CaptureRewriteWithoutRegex { rule: index });
                }
                _ => {}
            }
        }
        if self.backends().any(|b| b.name.is_empty()) {
            return Err(InvalidRoute::UnnamedBackend { rule: index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostMatch {
        HostMatch::parse(s).unwrap()
    }

    #[test]
    fn hostnames_parse_lower_case_and_reject_ips_ports_and_bad_labels() {
        assert_eq!(
            h("Foo.Example.COM."),
            HostMatch::Exact("foo.example.com".into())
        );
        assert_eq!(
            h("*.example.com"),
            HostMatch::Wildcard("example.com".into())
        );
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "10.0.0.1",
            "example.com:80",
            "-a.example",
            "a-.example",
            "a.*.example",
            "**.example",
            "a_b.example",
            &"x".repeat(64),
        ] {
            assert!(HostMatch::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(h("*.example.com").to_string(), "*.example.com");
    }

    #[test]
    fn wildcards_need_one_more_label() {
        let w = h("*.example.com");
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("aexample.com"));
        assert!(!w.matches(".example.com"));
        assert!(h("a.example.com").matches("a.example.com"));
        assert!(!h("a.example.com").matches("b.example.com"));
    }

    #[test]
    fn hostname_intersection_follows_the_gateway_api() {
        // The spec's examples: a listener `test.example.com` takes routes
        // with no hostnames, `test.example.com` or `*.example.com`.
        let l = h("test.example.com");
        assert_eq!(intersect_hostnames(Some(&l), &[]), Some(vec![l.clone()]));
        assert_eq!(
            intersect_hostnames(Some(&l), std::slice::from_ref(&l)),
            Some(vec![l.clone()])
        );
        assert_eq!(
            intersect_hostnames(Some(&l), &[h("*.example.com")]),
            Some(vec![l.clone()])
        );
        assert_eq!(
            intersect_hostnames(Some(&l), &[h("other.example.com")]),
            None
        );
        // A listener `*.example.com` takes `*.example.com`,
        // `test.example.com`, `foo.test.example.com`, not `example.com` or
        // `test.example.net`; names it does not serve are left out.
        let w = h("*.example.com");
        assert_eq!(
            intersect_hostnames(
                Some(&w),
                &[
                    h("test.example.com"),
                    h("test.example.net"),
                    h("example.com")
                ]
            ),
            Some(vec![h("test.example.com")])
        );
        assert_eq!(
            intersect_hostnames(Some(&w), &[h("foo.test.example.com")]),
            Some(vec![h("foo.test.example.com")])
        );
        assert_eq!(
            intersect_hostnames(Some(&w), &[h("*.example.com")]),
            Some(vec![w.clone()])
        );
        // Wildcard with wildcard: the narrower one.
        assert_eq!(
            intersect_hostnames(Some(&w), &[h("*.foo.example.com")]),
            Some(vec![h("*.foo.example.com")])
        );
        assert_eq!(
            h("*.foo.example.com").intersect(&w),
            Some(h("*.foo.example.com"))
        );
        assert_eq!(intersect_hostnames(Some(&w), &[h("*.example.net")]), None);
        // No listener hostname: the route's, deduplicated; neither: any.
        assert_eq!(
            intersect_hostnames(None, &[h("b.example"), h("a.example"), h("b.example")]),
            Some(vec![h("a.example"), h("b.example")])
        );
        assert_eq!(intersect_hostnames(None, &[]), Some(vec![]));
    }

    #[test]
    fn listener_sets() {
        let s = Listeners::only(ListenerId::PLAIN);
        assert!(s.contains(ListenerId::PLAIN) && !s.contains(ListenerId::TLS));
        let both = s.with(ListenerId::TLS);
        assert!(both.contains(ListenerId::TLS));
        assert!(Listeners::ALL.contains(ListenerId(ListenerId::MAX)));
        assert!(Listeners::NONE.is_empty() && !Listeners::NONE.contains(ListenerId::PLAIN));
        assert_eq!(Listeners::default(), Listeners::ALL);
        assert_eq!(format!("{both:?}"), "Listeners([0, 1])");
    }

    #[test]
    fn prefixes_match_element_by_element() {
        for (prefix, path, want) in [
            ("/abc", "/abc", true),
            ("/abc", "/abc/", true),
            ("/abc", "/abc/def", true),
            ("/abc", "/abcd", false),
            ("/abc/", "/abc", true),
            ("/abc/", "/abc/def", true),
            ("/abc/", "/abcd", false),
            ("/", "/anything", true),
            ("/", "/", true),
            // `/` and the empty prefix take every path, also one without a
            // leading `/` (the matcher's `Prefix /` is "any"; the fuzz
            // target route_match found the two disagreeing on `*`).
            ("/", "*", true),
            ("", "x", true),
            ("", "", true),
            ("/a", "a", false),
            ("/a/b", "/a", false),
            ("/a/b", "/a/bc", false),
        ] {
            assert_eq!(prefix_matches(prefix, path), want, "{prefix} vs {path}");
        }
    }

    #[test]
    fn patterns_match_the_whole_value_and_compare_by_source() {
        let p = Pattern::new("/v[0-9]+/.*").unwrap();
        assert!(p.is_match("/v2/users"));
        assert!(!p.is_match("/api/v2/users"), "anchored at the start");
        let q = Pattern::new("/a|/b").unwrap();
        assert!(
            q.is_match("/b") && !q.is_match("/bc"),
            "alternation is grouped"
        );
        assert_eq!(p, Pattern::new("/v[0-9]+/.*").unwrap());
        assert_ne!(p, q);
        assert!(Pattern::new("(").is_err());
        assert!(
            Pattern::new("(?<!x)y").is_err(),
            "no look-behind in this dialect"
        );
        assert!(
            Pattern::new("a{1000}{1000}").is_err(),
            "a huge automaton is refused, not built"
        );
        assert!(ValueMatch::Regex(Pattern::new("v[12]").unwrap()).matches(b"v2"));
        assert!(
            !ValueMatch::Exact("V2".into()).matches(b"v2"),
            "values are case-sensitive"
        );
    }

    #[test]
    fn specificity_orders_as_the_gateway_api_says() {
        let exact = Match::exact("/a");
        let long = Match::prefix("/abc/");
        let short = Match::prefix("/ab");
        let method = Match {
            method: Some(Method::GET),
            ..Match::prefix("/ab")
        };
        let headers = Match {
            headers: vec![
                HeaderMatch {
                    name: HeaderName::from_static("x-a"),
                    value: ValueMatch::Exact("1".into()),
                },
                HeaderMatch {
                    name: HeaderName::from_static("x-b"),
                    value: ValueMatch::Exact("1".into()),
                },
            ],
            ..Match::prefix("/ab")
        };
        let one_header = Match {
            headers: headers.headers[..1].to_vec(),
            query: vec![
                QueryMatch {
                    name: "q".into(),
                    value: ValueMatch::Exact("1".into()),
                };
                3
            ],
            ..Match::prefix("/ab")
        };
        let query = Match {
            query: vec![QueryMatch {
                name: "q".into(),
                value: ValueMatch::Exact("1".into()),
            }],
            ..Match::prefix("/ab")
        };
        let regex = Match {
            path: PathMatch::Regex(Pattern::new("/a.").unwrap()),
            ..Match::default()
        };
        let mut all = [
            &query,
            &regex,
            &short,
            &headers,
            &one_header,
            &method,
            &long,
            &exact,
        ];
        all.sort_by_key(|m| std::cmp::Reverse(m.specificity()));
        assert_eq!(
            all,
            [
                &exact,
                &long,
                &method,
                &headers,
                &one_header,
                &query,
                &short,
                &regex
            ],
            "exact, longest prefix, method, most headers, most query params; \
             a regex after prefixes of its length"
        );
        let longer_regex = Match {
            path: PathMatch::Regex(Pattern::new("/abcd.*").unwrap()),
            ..Match::default()
        };
        assert!(
            longer_regex.specificity() > long.specificity(),
            "a longer regex ranks above a shorter prefix"
        );
        assert_eq!(
            Match::prefix("/abc/").specificity(),
            Match::prefix("/abc").specificity(),
            "a trailing slash does not count"
        );
    }

    fn route(ns: &str, name: &str, created: Option<i64>, rules: Vec<Rule>) -> Route {
        Route {
            origin: Origin {
                kind: RouteKind::HttpRoute,
                namespace: ns.into(),
                name: name.into(),
            },
            order: Order { created },
            scopes: vec![Scope::default()],
            rules,
        }
    }

    fn backend(name: &str) -> Arc<Backend> {
        Arc::new(Backend {
            name: name.into(),
            endpoints: vec![],
            protocol: Protocol::Http1,
            policy: UpstreamPolicy::default(),
        })
    }

    #[test]
    fn ties_go_to_the_oldest_route_then_namespace_name_then_rule_order() {
        let rule = |p: &str| Rule::forward(vec![Match::prefix(p)], backend("b"));
        let old = route("z", "z", Some(100), vec![rule("/"), rule("/")]);
        let new = route("a", "a", Some(200), vec![rule("/")]);
        let unknown = route("a", "a", None, vec![rule("/")]);
        let same_time = route("b", "a", Some(100), vec![rule("/")]);
        fn key<'r>(r: &'r Route, rule: usize) -> Precedence<'r> {
            Precedence::of(r, rule, &Match::prefix("/"), 0)
        }
        let mut keys = [
            key(&unknown, 0),
            key(&new, 0),
            key(&old, 1),
            key(&old, 0),
            key(&same_time, 0),
        ];
        keys.sort();
        let order: Vec<_> = keys.iter().map(|k| (k.origin, k.rule)).collect();
        assert_eq!(
            order,
            [
                (("b", "a"), 0),
                (("z", "z"), 0),
                (("z", "z"), 1),
                (("a", "a"), 0),
                (("a", "a"), 0),
            ]
        );
        // Specificity beats age.
        let specific = route("z", "young", Some(999), vec![rule("/x")]);
        assert!(
            Precedence::of(&specific, 0, &Match::prefix("/x"), 0) < key(&old, 0),
            "a longer prefix wins over an older route"
        );
    }

    #[test]
    fn a_pattern_can_rank_as_the_path_its_user_wrote() {
        let written = "/api";
        let decorated = Pattern::with_rank(&format!("(?i){written}.*"), written.len()).unwrap();
        assert_eq!(decorated.rank(), 4);
        assert_eq!(Pattern::new("(?i)/api.*").unwrap().rank(), 10);
        let regex = Match {
            path: PathMatch::Regex(decorated),
            ..Match::default()
        };
        assert!(
            Match::prefix("/api/v1").specificity() > regex.specificity(),
            "a longer prefix than what the user wrote wins"
        );
        assert!(Match::prefix("/ap").specificity() < regex.specificity());
        assert!(
            Match::prefix("/api").specificity() > regex.specificity(),
            "after a prefix of the same length"
        );
    }

    #[test]
    fn capture_templates_split_as_nginx_reads_them() {
        use TemplatePart::{Group, Named, Text};
        fn parts(t: &str) -> Vec<TemplatePart<'_>> {
            template_parts(t).collect()
        }
        assert_eq!(parts("/$2"), [Text("/"), Group(2)]);
        assert_eq!(parts("/$12"), [Text("/"), Group(1), Text("2")]);
        assert_eq!(parts("$1a"), [Group(1), Text("a")]);
        assert_eq!(parts("/$0"), [Text("/"), Named("0")]);
        assert_eq!(
            parts("/$name/${other}x"),
            [
                Text("/"),
                Named("name"),
                Text("/"),
                Named("other"),
                Text("x")
            ]
        );
        assert_eq!(parts("/a$"), [Text("/a"), Text("$")]);
        assert_eq!(parts("$$1"), [Text("$"), Group(1)]);
        assert_eq!(parts("/${}"), [Text("/"), Text("$"), Text("{}")]);
        assert_eq!(parts("/${a"), [Text("/"), Text("$"), Text("{a")]);
        assert_eq!(parts(""), []);
    }

    #[test]
    fn cors_origins_exact_any_or_one_label_wildcards() {
        let cors = |origins: &[&str]| Cors {
            allow_origins: origins.iter().map(|o| (*o).into()).collect(),
            ..Cors::default()
        };
        let c = cors(&["https://a.example", "https://*.b.example:8443"]);
        assert!(c.allows("https://a.example"));
        assert!(c.allows("HTTPS://A.EXAMPLE"), "case is ignored");
        assert!(!c.allows("https://a.example:443"));
        assert!(!c.allows("https://xa.example"));
        assert!(c.allows("https://x.b.example:8443"));
        assert!(!c.allows("https://b.example:8443"));
        assert!(!c.allows("https://x.y.b.example:8443"), "one label");
        assert!(!c.allows("https://x.b.example:84430"));
        assert!(!c.allows("https://é.b.example:8443"));
        assert!(!c.allows_any());
        assert!(cors(&["*"]).allows("https://anything.example"));
        assert!(!cors(&[]).allows("https://a.example"));
    }

    #[test]
    fn redirect_statuses() {
        for code in [301, 302, 303, 307, 308] {
            assert_eq!(RedirectStatus::new(code).unwrap().code().as_u16(), code);
        }
        for code in [200, 300, 304, 305, 306, 309, 404] {
            assert!(RedirectStatus::new(code).is_none(), "{code}");
        }
        assert_eq!(Redirect::default().status.code(), StatusCode::FOUND);
    }

    #[test]
    fn address_ranges() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8", "host bits cleared");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(
            c.contains("::ffff:10.0.0.9".parse().unwrap()),
            "IPv4-mapped counts as IPv4"
        );
        let one = Cidr::parse("192.168.1.5").unwrap();
        assert!(one.contains("192.168.1.5".parse().unwrap()));
        assert!(!one.contains("192.168.1.6".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "x/8",
            "10.0.0.0/+8",
            "::/129",
            "10/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        let ranges = SourceRanges {
            allow: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            deny: vec![Cidr::parse("10.9.0.0/16").unwrap()],
        };
        assert!(ranges.permits("10.1.0.1".parse().unwrap()));
        assert!(!ranges.permits("10.9.0.1".parse().unwrap()), "deny wins");
        assert!(
            !ranges.permits("192.168.0.1".parse().unwrap()),
            "not allowed"
        );
        assert!(SourceRanges::default().permits("192.168.0.1".parse().unwrap()));
    }

    #[test]
    fn rewrites_need_the_right_kind_of_match() {
        let with_rewrite = |matches: Vec<Match>, path: PathRewrite| {
            let mut r = Rule::forward(matches, backend("b"));
            r.filters.rewrite = Some(Rewrite {
                hostname: None,
                path: Some(path),
            });
            r
        };
        let regex = Match {
            path: PathMatch::Regex(Pattern::new("/a(.*)").unwrap()),
            ..Match::default()
        };
        let prefix = PathRewrite::ReplacePrefix("/x".into());
        let captures = PathRewrite::Captures("/$1".into());
        assert!(
            with_rewrite(vec![Match::prefix("/a")], prefix.clone())
                .validate(0)
                .is_ok()
        );
        assert!(
            with_rewrite(vec![], prefix.clone()).validate(0).is_ok(),
            "no match: Prefix /"
        );
        assert_eq!(
            with_rewrite(vec![Match::exact("/a")], prefix).validate(3),
            Err(InvalidRoute::PrefixRewriteWithoutPrefix { rule: 3 })
        );
        assert!(
            with_rewrite(vec![regex.clone()], captures.clone())
                .validate(0)
                .is_ok()
        );
        assert_eq!(
            with_rewrite(vec![regex, Match::prefix("/b")], captures).validate(1),
            Err(InvalidRoute::CaptureRewriteWithoutRegex { rule: 1 })
        );
        let mut redirect = Rule::forward(vec![Match::exact("/a")], backend("b"));
        redirect.action = Action::Redirect(Redirect {
            path: Some(PathRewrite::ReplacePrefix("/b".into())),
            ..Redirect::default()
        });
        assert!(redirect.validate(0).is_err(), "redirects are checked too");
        let unnamed = Rule::forward(vec![], backend(""));
        assert_eq!(
            unnamed.validate(0),
            Err(InvalidRoute::UnnamedBackend { rule: 0 })
        );
        let r = route(
            "ns",
            "r",
            None,
            vec![Rule::forward(vec![], backend("ok")), unnamed],
        );
        assert_eq!(r.validate(), Err(InvalidRoute::UnnamedBackend { rule: 1 }));
    }

    #[test]
    fn origins_display_kind_and_name() {
        let r = route("ns", "web", None, vec![]);
        assert_eq!(r.origin.to_string(), "HTTPRoute ns/web");
        let s = Origin {
            kind: RouteKind::Static,
            namespace: "".into(),
            name: "static".into(),
        };
        assert_eq!(s.to_string(), "static static");
    }
}
