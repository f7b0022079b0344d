//! Request → rule matching.
//!
//! Every match of every rule of every route becomes one entry, filed under
//! the hostnames its route serves: exact names in a map, `*.` wildcards in a
//! map by suffix, and the rest under "any host". A request's host picks the
//! buckets to look in, most specific first (its exact name, then its
//! wildcard suffixes longest first, then any host), and the first bucket
//! with a matching entry decides. Inside a bucket the entries are sorted by
//! the route model's [`Precedence`], so the first entry whose conditions
//! hold wins. A small bucket is scanned in that order; a large one (many
//! rules for one host) is indexed by exact path and by prefix, so a lookup
//! costs a few hash probes (one per `/`-separated element of the path), not
//! a scan. Method, headers and query are only read for an entry that has
//! conditions on them, so a table without such matches never reads them.
//!
//! Buckets are shared between tables: a new table copies the map of its
//! predecessor and rebuilds only the buckets of the hosts whose routes
//! changed ([`Routes::updated`]), so a change to one route costs that
//! route's hosts, not the whole table.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

use http::HeaderName;

use super::rule::RouteRule;
use crate::discovery::route::{
    HeaderMatch, HostMatch, ListenerId, Listeners, Match, PathMatch, Precedence, QueryMatch,
};

/// What matching may read of a request besides its host and path; each
/// transport implements it over its own parsed head.
pub trait RequestView {
    /// The method.
    fn method(&self) -> &str;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The query (after `?`), if any.
    fn query(&self) -> Option<&str>;
    /// Whether some value of the header `name` satisfies `f`.
    fn any_header(&self, name: &HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

/// Normalises a `Host` value for matching: without port (lower-casing is
/// the caller's, only when needed).
pub fn normalize_host(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A bucket this large or smaller is scanned; a larger one is indexed.
const SCAN_LIMIT: usize = 16;

/// [`SCAN_LIMIT`], for the table's tests.
#[cfg(test)]
pub(crate) const SCAN_LIMIT_FOR_TESTS: usize = SCAN_LIMIT;

/// Conditions beyond the path.
#[derive(Debug)]
struct Conditions {
    method: Option<http::Method>,
    headers: Box<[HeaderMatch]>,
    query: Box<[QueryMatch]>,
}

impl Conditions {
    fn hold(&self, req: &dyn RequestView) -> bool {
        if let Some(m) = &self.method
            && m.as_str() != req.method()
        {
            return false;
        }
        let headers_ok = self
            .headers
            .iter()
            .all(|h| req.any_header(&h.name, &mut |v| h.value.matches(v)));
        headers_ok
            && self.query.iter().all(|q| {
                first_param(req.query(), &q.name).is_some_and(|v| q.value.matches(v.as_bytes()))
            })
    }
}

/// The value of the first parameter called `name` in `query` (`a=1&b`:
/// `b` has the value `""`).
fn first_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// A path condition as the matcher tests it.
#[derive(Debug)]
enum PathTest {
    /// Every path (`Prefix /`).
    Any,
    /// This path.
    Exact(Box<str>),
    /// This prefix, without its trailing `/`, element-wise.
    Prefix(Box<str>),
    /// The whole path matches.
    Regex(crate::discovery::route::Pattern),
}

impl PathTest {
    fn new(path: &PathMatch) -> Self {
        match path {
            PathMatch::Exact(p) => PathTest::Exact(p.clone()),
            PathMatch::Prefix(p) => match PathMatch::normalized_prefix(p) {
                "" => PathTest::Any,
                p => PathTest::Prefix(p.into()),
            },
            PathMatch::Regex(r) => PathTest::Regex(r.clone()),
        }
    }
}

/// One match of one rule, filed under one host.
#[derive(Debug)]
struct Entry {
    rule: Arc<RouteRule>,
    listeners: Listeners,
    test: PathTest,
    /// The match's path condition as the model gives it (for rewrites).
    path: PathMatch,
    conditions: Option<Box<Conditions>>,
}

impl Entry {
    #[inline]
    fn path_matches(&self, path: &str) -> bool {
        match &self.test {
            PathTest::Any => true,
            PathTest::Exact(p) => **p == *path,
            PathTest::Prefix(p) => {
                path.len() >= p.len()
                    && path.as_bytes().starts_with(p.as_bytes())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathTest::Regex(r) => r.is_match(path),
        }
    }

    #[inline]
    fn accepts(&self, listener: ListenerId, req: &dyn RequestView) -> bool {
        self.listeners.contains(listener) && self.conditions.as_ref().is_none_or(|c| c.hold(req))
    }
}

/// The entries for one host, in precedence order.
#[derive(Debug, Default)]
struct Bucket {
    entries: Vec<Entry>,
    index: Option<Box<PathIndex>>,
}

/// A large bucket's index: entry positions by exact path and by prefix
/// (without its trailing `/`), each list in precedence order.
#[derive(Debug, Default)]
struct PathIndex {
    exact: HashMap<Box<str>, Vec<u32>, RandomState>,
    prefix: HashMap<Box<str>, Vec<u32>, RandomState>,
    /// Positions of the non-exact entries, when some are regular
    /// expressions (which cannot be probed by prefix): scanned in order.
    ordered: Option<Vec<u32>>,
}

impl Bucket {
    fn seal(&mut self) {
        if self.entries.len() <= SCAN_LIMIT {
            return;
        }
        let mut index = PathIndex::default();
        let mut regex = false;
        for (i, e) in self.entries.iter().enumerate() {
            let i = i as u32;
            match &e.path {
                PathMatch::Exact(p) => index.exact.entry(p.clone()).or_default().push(i),
                PathMatch::Prefix(p) => index
                    .prefix
                    .entry(PathMatch::normalized_prefix(p).into())
                    .or_default()
                    .push(i),
                PathMatch::Regex(_) => regex = true,
            }
        }
        if regex {
            index.ordered = Some(
                (0..self.entries.len() as u32)
                    .filter(|i| !matches!(self.entries[*i as usize].path, PathMatch::Exact(_)))
                    .collect(),
            );
        }
        self.index = Some(Box::new(index));
    }

    /// The first entry that takes the request (its path is `path`).
    #[inline]
    fn find(&self, listener: ListenerId, path: &str, req: &dyn RequestView) -> Option<&Entry> {
        let Some(index) = &self.index else {
            return self
                .entries
                .iter()
                .find(|e| e.path_matches(path) && e.accepts(listener, req));
        };
        let take = |list: &[u32]| {
            list.iter()
                .map(|i| &self.entries[*i as usize])
                .find(|e| e.path_matches(path) && e.accepts(listener, req))
        };
        if let Some(hit) = index.exact.get(path).and_then(|l| take(l)) {
            return Some(hit);
        }
        if let Some(ordered) = &index.ordered {
            return take(ordered);
        }
        // Every prefix of the path that ends at an element boundary,
        // longest first; the empty one (`Prefix /`) last, whatever the
        // path starts with, as an unindexed bucket's `PathTest::Any`.
        let bytes = path.as_bytes();
        let mut end = path.len();
        loop {
            if (end == path.len() || end == 0 || bytes[end] == b'/')
                && let Some(hit) = index.prefix.get(&path[..end]).and_then(|l| take(l))
            {
                return Some(hit);
            }
            if end == 0 {
                return None;
            }
            end -= 1;
        }
    }
}

/// The rules of one routing snapshot, ordered for matching.
#[derive(Debug, Default, Clone)]
pub struct Routes {
    /// By exact hostname. foldhash, seeded per process: the keys come from
    /// route objects, and lookups with a client's `Host` cannot degrade a
    /// map whose keys they do not choose.
    exact: HashMap<Box<str>, Arc<Bucket>, RandomState>,
    /// By suffix (without `*.`).
    wildcard: HashMap<Box<str>, Arc<Bucket>, RandomState>,
    any_host: Arc<Bucket>,
    /// Number of rules.
    rules: usize,
}

/// Where a bucket is filed: an exact hostname, a wildcard, or any host
/// (`None`).
pub type HostKey = Option<HostMatch>;

/// A rule that matched, with the path condition that matched it (a prefix
/// rewrite replaces what it matched; a capture rewrite uses its groups).
#[derive(Debug, Clone, Copy)]
pub struct Hit<'t> {
    /// The rule.
    pub rule: &'t RouteRule,
    /// The path condition of the match that took the request.
    pub path: &'t PathMatch,
}

/// One match of one rule filed under one host, for [`Routes::updated`].
#[derive(Debug)]
pub struct Filed<'a> {
    /// The rule.
    pub rule: &'a Arc<RouteRule>,
    /// The match.
    pub matched: &'a Match,
    /// Its precedence.
    pub precedence: Precedence<'a>,
    /// The route's position in the snapshot: the last tie-break, so that
    /// a bucket is the same however it was reached.
    pub position: usize,
    /// The listeners it applies on under this host.
    pub listeners: Listeners,
}

/// A bucket of `filed`, in precedence order.
fn bucket(mut filed: Vec<Filed<'_>>) -> Bucket {
    filed.sort_by(|a, b| {
        a.precedence
            .cmp(&b.precedence)
            .then(a.position.cmp(&b.position))
    });
    let mut bucket = Bucket {
        entries: Vec::with_capacity(filed.len()),
        index: None,
    };
    for f in filed {
        let m = f.matched;
        let conditional = m.method.is_some() || !m.headers.is_empty() || !m.query.is_empty();
        bucket.entries.push(Entry {
            rule: f.rule.clone(),
            listeners: f.listeners,
            test: PathTest::new(&m.path),
            path: m.path.clone(),
            conditions: conditional.then(|| {
                Box::new(Conditions {
                    method: m.method.clone(),
                    headers: m.headers.clone().into_boxed_slice(),
                    query: m.query.clone().into_boxed_slice(),
                })
            }),
        });
    }
    bucket.seal();
    bucket
}

impl Routes {
    /// This index with the buckets of some hosts rebuilt from what is
    /// filed under them now (nothing: the bucket goes), the others shared;
    /// `rules` is the new table's number of rules.
    pub fn updated<'a>(
        &self,
        buckets: impl IntoIterator<Item = (&'a HostKey, Vec<Filed<'a>>)>,
        rules: usize,
    ) -> Routes {
        let mut routes = Routes {
            rules,
            ..self.clone()
        };
        for (host, filed) in buckets {
            let b = (!filed.is_empty()).then(|| Arc::new(bucket(filed)));
            match (host, b) {
                (None, b) => routes.any_host = b.unwrap_or_default(),
                (Some(HostMatch::Exact(h)), Some(b)) => {
                    routes.exact.insert(h.clone(), b);
                }
                (Some(HostMatch::Exact(h)), None) => {
                    routes.exact.remove(h);
                }
                (Some(HostMatch::Wildcard(s)), Some(b)) => {
                    routes.wildcard.insert(s.clone(), b);
                }
                (Some(HostMatch::Wildcard(s)), None) => {
                    routes.wildcard.remove(s);
                }
            }
        }
        routes
    }

    /// The rule for a request on `listener` with this `Host` value.
    #[inline]
    pub fn find<'t>(
        &'t self,
        listener: ListenerId,
        host: Option<&str>,
        req: &dyn RequestView,
    ) -> Option<Hit<'t>> {
        let hit = |e: &'t Entry| Hit {
            rule: &e.rule,
            path: &e.path,
        };
        let path = req.path();
        if self.by_host()
            && let Some(host) = host
        {
            let host = normalize_host(host);
            let lower;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = host.to_ascii_lowercase();
                lower.as_str()
            } else {
                host
            };
            let host = host.strip_suffix('.').unwrap_or(host);
            if let Some(e) = self
                .exact
                .get(host)
                .and_then(|b| b.find(listener, path, req))
            {
                return Some(hit(e));
            }
            if !self.wildcard.is_empty() {
                // `*.b.example` then `*.example` for `a.b.example`.
                let mut rest = host;
                while let Some((_, suffix)) = rest.split_once('.') {
                    if let Some(e) = self
                        .wildcard
                        .get(suffix)
                        .and_then(|b| b.find(listener, path, req))
                    {
                        return Some(hit(e));
                    }
                    rest = suffix;
                }
            }
        }
        self.any_host.find(listener, path, req).map(hit)
    }

    /// Whether some rules are filed by hostname: [`Routes::find`] ignores
    /// the `Host` it is given otherwise.
    #[inline]
    pub fn by_host(&self) -> bool {
        !(self.exact.is_empty() && self.wildcard.is_empty())
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// True without rules.
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }
}

/// A request given as plain parts (tests, fuzzing, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimpleRequest<'a> {
    /// Method (`GET` when empty).
    pub method: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Query.
    pub query: Option<&'a str>,
    /// Headers, names in lower case.
    pub headers: &'a [(&'a str, &'a str)],
}

impl RequestView for SimpleRequest<'_> {
    fn method(&self) -> &str {
        if self.method.is_empty() {
            "GET"
        } else {
            self.method
        }
    }

    fn path(&self) -> &str {
        self.path
    }

    fn query(&self) -> Option<&str> {
        self.query
    }

    fn any_header(&self, name: &HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
            .any(|(_, v)| f(v.as_bytes()))
    }
}

impl<'a> SimpleRequest<'a> {
    /// A `GET` of `target` (path and query).
    pub fn get(target: &'a str) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        SimpleRequest {
            path,
            query,
            ..SimpleRequest::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.com:8080"), "Example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("example.com"), "example.com");
    }

    #[test]
    fn query_parameters_first_occurrence() {
        assert_eq!(first_param(Some("a=1&b=2&a=3"), "a"), Some("1"));
        assert_eq!(first_param(Some("a&b=2"), "a"), Some(""));
        assert_eq!(first_param(Some("ab=1"), "a"), None);
        assert_eq!(first_param(None, "a"), None);
    }
}
