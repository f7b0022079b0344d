//! Header rewriting for forwarded requests and responses (RFC 9110 §7.6).

use std::net::IpAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers removed in both directions (RFC 9110 §7.6.1), besides
/// those named in `Connection`.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The `Via` pseudonym of this proxy.
pub const VIA_NAME: &str = "roundhouse";

fn via_value(version: Version) -> HeaderValue {
    match version {
        Version::HTTP_10 => HeaderValue::from_static("1.0 roundhouse"),
        Version::HTTP_2 => HeaderValue::from_static("2 roundhouse"),
        _ => HeaderValue::from_static("1.1 roundhouse"),
    }
}

/// True when the request asks for a protocol upgrade (e.g. WebSocket):
/// an `Upgrade` header and the `upgrade` token in `Connection`.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those named in `Connection`.
/// With `keep_upgrade`, `Upgrade` survives and `Connection: upgrade` is
/// restored, so an upgrade handshake can pass through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(header::CONNECTION)
        && conn.as_bytes() != b"keep-alive"
        && conn.as_bytes() != b"close"
    {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let upgrade = if keep_upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Rewrites a request's headers for forwarding: strips hop-by-hop headers,
/// appends the client to `X-Forwarded-For`, sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (replacing client-sent values, which cannot be
/// trusted), and appends `Via`. `Host` is kept unless `host_override` is set.
pub fn forward_request_headers(
    headers: &mut HeaderMap,
    version: Version,
    client_ip: &ClientIp,
    upgrade: bool,
    host_override: Option<&HeaderValue>,
) {
    strip_hop_by_hop(headers, upgrade);

    // X-Forwarded-For: existing list + this client.
    let xff = match headers.get_all(&X_FORWARDED_FOR).iter().count() {
        0 => None,
        _ => {
            let mut joined = Vec::with_capacity(64);
            for v in headers.get_all(&X_FORWARDED_FOR) {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.value.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
    };
    headers.insert(
        X_FORWARDED_FOR.clone(),
        xff.unwrap_or_else(|| client_ip.value.clone()),
    );
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    headers.append(header::VIA, via_value(version));
    if let Some(host) = host_override {
        headers.insert(header::HOST, host.clone());
    }
}

/// Rewrites a response's headers: strips hop-by-hop headers (keeping the
/// upgrade handshake for `101`) and appends `Via`.
pub fn forward_response_headers(headers: &mut HeaderMap, version: Version, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    headers.append(header::VIA, via_value(version));
}

/// A client address rendered once per connection as a header value.
#[derive(Debug, Clone)]
pub struct ClientIp {
    /// The address.
    pub ip: IpAddr,
    value: HeaderValue,
}

impl ClientIp {
    /// Renders `ip` (IPv4-mapped IPv6 addresses as IPv4).
    pub fn new(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let value = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { ip, value }
    }

    /// The address as header-value bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.value.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn client() -> ClientIp {
        ClientIp::new("10.1.2.3".parse().unwrap())
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        forward_request_headers(&mut h, Version::HTTP_11, &client(), false, None);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "transfer-encoding",
            "proxy-connection",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} survived");
        }
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn keeps_upgrade_handshake() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade_request(&h));
        forward_request_headers(&mut h, Version::HTTP_11, &client(), true, None);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "abc");
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[
            ("host", "example.com:8080"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed"),
            ("via", "1.0 other"),
        ]);
        forward_request_headers(&mut h, Version::HTTP_11, &client(), false, None);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com:8080");
        assert_eq!(h["host"], "example.com:8080", "Host kept as sent");
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, vec!["1.0 other", "1.1 roundhouse"]);
    }

    #[test]
    fn first_hop_and_host_override() {
        let mut h = map(&[("host", "a")]);
        let over = HeaderValue::from_static("b");
        forward_request_headers(&mut h, Version::HTTP_10, &client(), false, Some(&over));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["host"], "b");
        assert_eq!(h["x-forwarded-host"], "a");
        assert_eq!(h["via"], "1.0 roundhouse");
    }

    #[test]
    fn mapped_ipv6_is_rendered_as_ipv4() {
        let c = ClientIp::new("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(c.value, "127.0.0.1");
    }

    #[test]
    fn response_headers() {
        let mut h = map(&[("connection", "close"), ("content-length", "3")]);
        forward_response_headers(&mut h, Version::HTTP_11, false);
        assert!(!h.contains_key("connection"));
        assert_eq!(h["content-length"], "3");
        assert_eq!(h["via"], "1.1 roundhouse");
    }
}
