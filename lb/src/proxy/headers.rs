//! Header rules for forwarded requests and responses (RFC 9110 §7.6), in
//! one table ([`rule`]) that both head writers use: the fast path's, which
//! rewrites raw bytes (`fast/head.rs`), and the `HeaderMap` one below, used
//! by the hyper path.

use std::net::IpAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::discovery::ListenerId;
use crate::discovery::route::HeaderEdits;

/// How a header field is treated when a message is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Forwarded as it is.
    Keep,
    /// Connection-specific (RFC 9110 §7.6.1): removed in both directions.
    HopByHop,
    /// `Connection`: hop-by-hop, and the fields it names are too.
    Connection,
    /// `Upgrade`: hop-by-hop, except in an upgrade handshake.
    Upgrade,
    /// `Transfer-Encoding`: hop-by-hop (each hop frames its own body).
    TransferEncoding,
    /// `Content-Length`: kept (it frames the body), never duplicated.
    ContentLength,
    /// `Host`: kept, or replaced by `--host-header`; mirrored in
    /// `X-Forwarded-Host`.
    Host,
    /// `Expect`: kept (only the hyper path handles `100-continue`).
    Expect,
    /// `X-Forwarded-For`: the client's address is appended.
    ForwardedFor,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host`: replaced (a client's own
    /// values cannot be trusted).
    ForwardedReplaced,
}

/// Every field with a rule other than [`Rule::Keep`], lower case, ordered by
/// length (which [`rule`] relies on; a test checks it).
const TABLE: [(&str, Rule); 12] = [
    ("te", Rule::HopByHop),
    ("host", Rule::Host),
    ("expect", Rule::Expect),
    ("upgrade", Rule::Upgrade),
    ("connection", Rule::Connection),
    ("keep-alive", Rule::HopByHop),
    ("content-length", Rule::ContentLength),
    ("x-forwarded-for", Rule::ForwardedFor),
    ("proxy-connection", Rule::HopByHop),
    ("x-forwarded-host", Rule::ForwardedReplaced),
    ("transfer-encoding", Rule::TransferEncoding),
    ("x-forwarded-proto", Rule::ForwardedReplaced),
];

/// Longest name in [`TABLE`] plus one.
const MAX_LEN: usize = TABLE[TABLE.len() - 1].0.len() + 1;

/// `BY_LEN[n]..BY_LEN[n + 1]`: the entries of [`TABLE`] whose name is `n`
/// bytes long (empty for most lengths).
const BY_LEN: [u8; MAX_LEN + 1] = {
    let mut starts = [0u8; MAX_LEN + 1];
    let mut len = 0;
    while len <= MAX_LEN {
        let mut i = 0;
        while i < TABLE.len() && TABLE[i].0.len() < len {
            i += 1;
        }
        starts[len] = i as u8;
        len += 1;
    }
    starts
};

/// The rule for a field name (compared case-insensitively). Called for
/// every header of every request and response on the fast path: one or two
/// comparisons with the table's names of the same length, none for most
/// names.
#[inline]
pub fn rule(name: &[u8]) -> Rule {
    if name.len() >= MAX_LEN {
        return Rule::Keep;
    }
    let same_length = &TABLE[usize::from(BY_LEN[name.len()])..usize::from(BY_LEN[name.len() + 1])];
    for (known, rule) in same_length {
        if name.eq_ignore_ascii_case(known.as_bytes()) {
            return *rule;
        }
    }
    Rule::Keep
}

/// Whether a field with this rule is removed when forwarded (`upgrade`:
/// the message is an upgrade handshake, which keeps `Upgrade`).
pub fn is_hop_by_hop(rule: Rule, upgrade: bool) -> bool {
    match rule {
        Rule::HopByHop | Rule::Connection | Rule::TransferEncoding => true,
        Rule::Upgrade => !upgrade,
        _ => false,
    }
}

/// The comma-separated tokens of a `Connection` value, trimmed, empty ones
/// skipped.
pub fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

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
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| connection_tokens(v.as_bytes()))
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// Removes hop-by-hop headers ([`rule`]), including those named in
/// `Connection`. With `keep_upgrade`, `Upgrade` survives and
/// `Connection: upgrade` is restored, so an upgrade handshake can pass
/// through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| connection_tokens(v.as_bytes()))
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    // An upgrade handshake keeps one `Upgrade` (the first).
    let upgrade = keep_upgrade
        .then(|| headers.remove(header::UPGRADE))
        .flatten();
    for &(name, rule) in &TABLE {
        if is_hop_by_hop(rule, false) {
            headers.remove(name);
        }
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
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(client_ip.proto),
    );
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

/// Whether a route's header edits may touch the field `name`: only fields
/// the table leaves to the client ([`Rule::Keep`]); the LB's own
/// (hop-by-hop, framing, `Host`, `X-Forwarded-*`) are never edited.
#[inline]
pub fn editable(name: &[u8]) -> bool {
    rule(name) == Rule::Keep
}

/// Whether `edits` replace or remove the field `name`, so that the
/// message's own fields of that name are dropped.
#[inline]
pub fn edited_away(edits: &HeaderEdits, name: &[u8]) -> bool {
    edits
        .remove
        .iter()
        .chain(edits.set.iter().map(|(n, _)| n))
        .any(|n| n.as_str().len() == name.len() && name.eq_ignore_ascii_case(n.as_str().as_bytes()))
}

/// The fields `edits` add to a message, in order: `set` then `add`, only
/// [`editable`] ones.
pub fn added_fields(edits: &HeaderEdits) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
    edits
        .set
        .iter()
        .chain(edits.add.iter())
        .filter(|(n, _)| editable(n.as_str().as_bytes()))
}

/// Applies a route's header edits to a message's headers: `remove`, then
/// `set`, then `add`, on [`editable`] fields only.
pub fn apply_edits(headers: &mut HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        if editable(name.as_str().as_bytes()) {
            headers.remove(name);
        }
    }
    for (name, value) in &edits.set {
        if editable(name.as_str().as_bytes()) {
            headers.insert(name.clone(), value.clone());
        }
    }
    for (name, value) in &edits.add {
        if editable(name.as_str().as_bytes()) {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A client connection as the forwarding headers describe it: its address,
/// rendered once per connection as a header value, and the scheme it came
/// in on (`X-Forwarded-Proto`).
#[derive(Debug, Clone)]
pub struct ClientIp {
    /// The address.
    pub ip: IpAddr,
    value: HeaderValue,
    /// `http`, or `https` for a connection to the TLS listener.
    pub proto: &'static str,
    /// The client's port (0 when unknown), for the access log.
    pub port: u16,
    /// The listener it connected to (routes are scoped by listener).
    pub listener: ListenerId,
}

impl ClientIp {
    /// A client on the TLS listener.
    pub fn tls(ip: IpAddr) -> Self {
        Self {
            proto: "https",
            listener: ListenerId::TLS,
            ..Self::new(ip)
        }
    }

    /// Renders `ip` (IPv4-mapped IPv6 addresses as IPv4); a plain-HTTP
    /// client.
    pub fn new(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let value = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            ip,
            value,
            proto: "http",
            port: 0,
            listener: ListenerId::PLAIN,
        }
    }

    /// The same client, with its port (for the access log).
    pub fn at_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The client's socket address (port 0 when unknown).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port)
    }

    /// The address as header-value bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.value.as_bytes()
    }

    /// The address as a header value (shared, not copied).
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
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
    fn the_table_is_ordered_by_length_and_every_name_is_found() {
        assert!(TABLE.windows(2).all(|w| w[0].0.len() <= w[1].0.len()));
        for (name, want) in TABLE {
            assert_eq!(rule(name.as_bytes()), want, "{name}");
            assert_eq!(rule(name.to_ascii_uppercase().as_bytes()), want, "{name}");
        }
        for other in [
            "",
            "h",
            "hos",
            "hosts",
            "x-forwarded-fo",
            "content-type",
            "via",
            "x-forwarded-proto-x",
        ] {
            assert_eq!(rule(other.as_bytes()), Rule::Keep, "{other}");
        }
        assert_eq!(rule(&[b'a'; 300]), Rule::Keep);
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
    fn tls_clients_are_forwarded_as_https() {
        let mut h = map(&[("host", "a"), ("x-forwarded-proto", "http")]);
        let tls = ClientIp::tls("10.1.2.3".parse().unwrap());
        forward_request_headers(&mut h, Version::HTTP_2, &tls, false, None);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["via"], "2 roundhouse");
    }

    #[test]
    fn mapped_ipv6_is_rendered_as_ipv4() {
        let c = ClientIp::new("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(c.value, "127.0.0.1");
    }

    #[test]
    fn route_edits_touch_only_the_clients_fields() {
        let edits = HeaderEdits {
            set: vec![
                (
                    HeaderName::from_static("x-set"),
                    HeaderValue::from_static("new"),
                ),
                (
                    HeaderName::from_static("via"),
                    HeaderValue::from_static("x"),
                ),
            ],
            add: vec![
                (
                    HeaderName::from_static("x-add"),
                    HeaderValue::from_static("2"),
                ),
                (
                    HeaderName::from_static("x-forwarded-for"),
                    HeaderValue::from_static("6.6.6.6"),
                ),
            ],
            remove: vec![
                HeaderName::from_static("x-gone"),
                HeaderName::from_static("connection"),
            ],
        };
        let mut h = map(&[
            ("x-set", "old"),
            ("x-set", "older"),
            ("x-add", "1"),
            ("x-gone", "1"),
            ("connection", "keep-alive"),
        ]);
        apply_edits(&mut h, &edits);
        assert_eq!(h["x-set"], "new");
        assert_eq!(h.get_all("x-set").iter().count(), 1);
        let added: Vec<_> = h.get_all("x-add").iter().collect();
        assert_eq!(added, ["1", "2"]);
        assert!(!h.contains_key("x-gone"));
        assert!(
            h.contains_key("connection"),
            "the LB's own fields are not edited"
        );
        assert!(!h.contains_key("x-forwarded-for"));
        assert!(edited_away(&edits, b"X-Set") && edited_away(&edits, b"x-gone"));
        assert!(!edited_away(&edits, b"x-add"));
        let names: Vec<_> = added_fields(&edits).map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["x-set", "via", "x-add"],
            "x-forwarded-for is the LB's (its own Via is appended anyway)"
        );
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
