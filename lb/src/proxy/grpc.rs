//! What the proxy knows about gRPC, for every transport that can carry it
//! (the HTTP/2 transport, `h2/`, and the hyper path, `general.rs`): which
//! requests are gRPC calls, and the deadline a call carries.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};

static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a request is a gRPC call (RFC-less but universal:
/// `content-type: application/grpc`, optionally `+proto` and so on).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A `grpc-timeout` value (`1H`, `5M`, `30S`, `100m`, `10u`, `1n`: at most
/// eight digits and a unit), or `None` when absent or malformed.
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn grpc_requests_and_timeouts() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(is_grpc(&h(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&h(&[("content-type", "application/grpc+proto")])));
        assert!(!is_grpc(&h(&[("content-type", "application/json")])));
        assert!(!is_grpc(&h(&[])));
        for (v, want) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("5M", Some(Duration::from_secs(300))),
            ("30S", Some(Duration::from_secs(30))),
            ("100m", Some(Duration::from_millis(100))),
            ("250u", Some(Duration::from_micros(250))),
            ("7n", Some(Duration::from_nanos(7))),
            ("123456789S", None),
            ("m", None),
            ("10x", None),
            ("-1S", None),
        ] {
            assert_eq!(grpc_timeout(&h(&[("grpc-timeout", v)])), want, "{v}");
        }
    }
}
