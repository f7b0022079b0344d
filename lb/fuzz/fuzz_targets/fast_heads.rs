//! The fast path's own HTTP/1.1 parsing: whatever bytes a client or a
//! backend sends, nothing panics, and what the fast path forwards is one
//! well-formed head with exactly one Host, no hop-by-hop header and the
//! forwarding headers it sets itself; a chunked body's end is never placed
//! past the bytes scanned.
#![no_main]

use lb::proxy::fast::ChunkedScanner;
use lb::proxy::fast::head::{Limits, Request, Response, parse_request, parse_response};
use lb::proxy::headers::ClientIp;
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "expect",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let mut out = Vec::new();
    let client = if mode & 1 == 0 {
        ClientIp::new([10, 0, 0, 1].into())
    } else {
        ClientIp::tls([10, 0, 0, 1].into())
    };
    let limits = Limits {
        max_header_bytes: 1024 + usize::from(mode) * 16,
        max_headers: 1 + usize::from(mode % 64),
    };
    if let Request::Ready(head) = parse_request(bytes, limits, &client, None, &mut out) {
        assert!(head.len <= bytes.len() && head.len <= limits.max_header_bytes);
        let _ = (head.host(bytes), head.path(bytes));
        // The forwarded head is one complete, valid request head.
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&out) {
            Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "trailing bytes"),
            other => panic!("forwarded head does not parse: {other:?}"),
        }
        assert_eq!(req.version, Some(1));
        let count = |name: &str| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .count()
        };
        assert_eq!(count("host"), 1);
        for name in HOP_BY_HOP {
            assert_eq!(count(name), 0, "{name} forwarded");
        }
        assert_eq!(count("x-forwarded-for"), 1);
        assert_eq!(count("x-forwarded-proto"), 1);
        assert_eq!(count("x-forwarded-host"), 1);
    }
    match parse_response(bytes, mode & 1 == 1, mode & 2 == 2, None, &mut out) {
        Ok(Response::Ready(head)) => {
            assert!(head.len <= bytes.len());
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut headers);
            assert!(matches!(resp.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
            for h in resp.headers.iter() {
                let name = h.name.to_ascii_lowercase();
                assert!(
                    !["connection", "keep-alive", "proxy-connection", "te", "upgrade"]
                        .contains(&name.as_str())
                        || (name == "connection" && h.value == b"close"),
                    "{name} forwarded"
                );
            }
        }
        Ok(Response::Interim { len }) => assert!(len <= bytes.len()),
        Ok(Response::Partial) | Err(_) => {}
    }
    let mut scanner = ChunkedScanner::new();
    let mut at = 0;
    for piece in bytes.chunks(usize::from(mode % 7) + 1) {
        match scanner.scan(piece) {
            Ok(n) => {
                assert!(n <= piece.len());
                at += n;
                if scanner.is_done() {
                    break;
                }
                assert_eq!(n, piece.len());
            }
            Err(_) => break,
        }
    }
    assert!(at <= bytes.len());
});
