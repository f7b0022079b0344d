//! Request → upstream matching: exact host before any host, then the longest
//! path prefix on a segment boundary.

use std::collections::HashMap;
use std::sync::Arc;

use super::Upstream;
use crate::discovery::RouteMatch;

/// Upstreams under one host, longest path prefix first.
type PrefixList = Vec<(Box<str>, Arc<Upstream>)>;

/// Upstreams ordered for matching.
#[derive(Debug, Default)]
pub struct Routes {
    by_host: HashMap<Box<str>, PrefixList>,
    any_host: PrefixList,
}

/// Normalises a `Host` value for matching: lower case, without port.
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

/// True when `path` is under `prefix` on a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" || prefix.is_empty() {
        return true;
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

impl Routes {
    /// Builds the matcher. Ties (same host, same prefix) go to the upstream
    /// whose name sorts first, so the choice is stable across replicas.
    pub fn new(upstreams: &[Arc<Upstream>]) -> Self {
        let mut routes = Routes::default();
        let mut sorted: Vec<&Arc<Upstream>> = upstreams.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for u in sorted {
            let RouteMatch { host, path_prefix } = &u.route;
            let prefix: Box<str> = path_prefix.as_deref().unwrap_or("/").into();
            let list = match host {
                Some(h) => routes
                    .by_host
                    .entry(h.to_ascii_lowercase().into_boxed_str())
                    .or_default(),
                None => &mut routes.any_host,
            };
            list.push((prefix, u.clone()));
        }
        let by_len = |a: &(Box<str>, Arc<Upstream>), b: &(Box<str>, Arc<Upstream>)| {
            let la = a.0.trim_end_matches('/').len();
            let lb = b.0.trim_end_matches('/').len();
            lb.cmp(&la)
        };
        for list in routes.by_host.values_mut() {
            list.sort_by(by_len);
        }
        routes.any_host.sort_by(by_len);
        routes
    }

    /// The upstream for a request with this `Host` value and path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Upstream>> {
        if !self.by_host.is_empty()
            && let Some(host) = host
        {
            let host = normalize_host(host);
            let hit = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(host.to_ascii_lowercase().as_str())
            } else {
                self.by_host.get(host)
            };
            if let Some(found) = hit.and_then(|list| first_match(list, path)) {
                return Some(found);
            }
        }
        first_match(&self.any_host, path)
    }

    /// Number of upstreams.
    pub fn len(&self) -> usize {
        self.any_host.len() + self.by_host.values().map(Vec::len).sum::<usize>()
    }

    /// True without upstreams.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn first_match<'a>(list: &'a [(Box<str>, Arc<Upstream>)], path: &str) -> Option<&'a Arc<Upstream>> {
    list.iter()
        .find(|(prefix, _)| prefix_matches(prefix, path))
        .map(|(_, u)| u)
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
    fn prefixes_match_on_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(prefix_matches("/api", "/api?x=1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/", "/anything"));
    }
}
