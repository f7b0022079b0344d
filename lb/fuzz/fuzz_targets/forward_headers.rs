//! Header rewriting for forwarded requests and responses: whatever the
//! client (or backend) sends, no hop-by-hop header survives, X-Forwarded-*
//! cannot be spoofed, and a Via is added.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use http::Version;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use lb::proxy::headers::{ClientIp, forward_request_headers, forward_response_headers};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    ip: Ip,
    upgrade: bool,
    version: u8,
    pairs: Vec<(Name, Vec<u8>)>,
}

#[derive(Debug, Arbitrary)]
enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// Mostly interesting names, sometimes arbitrary ones.
#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    Raw(Vec<u8>),
}

const KNOWN: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
    "host",
    "content-length",
    "x-secret",
    "Connection",
];

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

fn build(pairs: &[(Name, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs.iter().take(64) {
        let name = match name {
            Name::Known(i) => HeaderName::from_bytes(KNOWN[*i as usize % KNOWN.len()].as_bytes()),
            Name::Raw(b) => HeaderName::from_bytes(b),
        };
        let (Ok(name), Ok(value)) = (name, HeaderValue::from_bytes(value)) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

fn check_hop_by_hop(h: &HeaderMap, upgrade: bool, had_upgrade: bool, side: &str) {
    for name in HOP_BY_HOP {
        let values: Vec<&HeaderValue> = h.get_all(name).iter().collect();
        if values.is_empty() {
            continue;
        }
        match name {
            "upgrade" if upgrade => assert_eq!(values.len(), 1, "{side}: one Upgrade"),
            "connection" if upgrade && had_upgrade => {
                assert_eq!(
                    values,
                    [&HeaderValue::from_static("upgrade")],
                    "{side}: Connection: upgrade only"
                )
            }
            _ => panic!("{side}: hop-by-hop {name} survived: {values:?} (upgrade={upgrade})"),
        }
    }
    if upgrade && h.contains_key("connection") {
        assert!(
            h.contains_key("upgrade"),
            "{side}: Connection: upgrade without Upgrade"
        );
    }
}

fuzz_target!(|input: Input| {
    let ip = match input.ip {
        Ip::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
        Ip::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
    };
    let client = ClientIp::new(ip);
    let rendered = client.ip.to_string();
    let version = match input.version % 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let original = build(&input.pairs);

    // Request direction.
    let mut req = original.clone();
    let had_upgrade = req.contains_key("upgrade");
    let vias_before = req.get_all("via").iter().count();
    forward_request_headers(&mut req, version, &client, input.upgrade, None);
    check_hop_by_hop(&req, input.upgrade, had_upgrade, "request");

    let xff: Vec<&HeaderValue> = req.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "exactly one X-Forwarded-For: {xff:?}");
    let xff = xff[0].as_bytes();
    assert!(
        xff.ends_with(rendered.as_bytes()),
        "X-Forwarded-For {:?} does not end with the client {rendered}",
        String::from_utf8_lossy(xff)
    );
    let proto: Vec<&HeaderValue> = req.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(
        proto,
        [&HeaderValue::from_static("http")],
        "X-Forwarded-Proto"
    );
    // X-Forwarded-Host is the Host that is forwarded, never the client's own.
    let xfh: Vec<&HeaderValue> = req.get_all("x-forwarded-host").iter().collect();
    match req.get("host") {
        Some(host) => assert_eq!(xfh, [host], "X-Forwarded-Host mirrors Host"),
        None => assert!(xfh.is_empty(), "X-Forwarded-Host without Host: {xfh:?}"),
    }
    let vias_after = req.get_all("via").iter().count();
    assert!(vias_after >= 1, "no Via");
    assert!(vias_after <= vias_before + 1, "more than one Via added");
    let last_via = req.get_all("via").iter().last().unwrap();
    assert!(
        last_via.as_bytes().ends_with(b" roundhouse"),
        "Via {last_via:?}"
    );

    // Response direction.
    let mut resp = original;
    let had_upgrade = resp.contains_key("upgrade");
    forward_response_headers(&mut resp, version, input.upgrade);
    check_hop_by_hop(&resp, input.upgrade, had_upgrade, "response");
    assert!(resp.get_all("via").iter().count() >= 1, "response: no Via");
});
