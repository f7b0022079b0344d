//! `lb probe` and `lb check`: tiny HTTP clients so the scratch image needs
//! no shell or curl for health checks and the Helm test.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A probe or check failure, with a message for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not an http:// URL.
    #[error("invalid URL `{0}`: expected http://HOST[:PORT]/PATH")]
    Url(String),
    /// No answer in time.
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    /// Connection or protocol failure.
    #[error("{0}: {1}")]
    Request(String, String),
    /// A non-2xx answer.
    #[error("{0}: answered {1}")]
    Status(String, u16),
    /// The split is not exact.
    #[error("{0}")]
    Split(String),
}

fn parse(url: &str) -> Result<Uri, ClientError> {
    let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(ClientError::Url(url.to_owned()));
    }
    Ok(uri)
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(
    c: &Client<HttpConnector, Empty<Bytes>>,
    uri: &Uri,
    timeout: Duration,
) -> Result<(u16, Bytes), ClientError> {
    let url = uri.to_string();
    let req = Request::get(uri.clone())
        .body(Empty::new())
        .map_err(|_| ClientError::Url(url.clone()))?;
    let fut = async {
        let resp = c
            .request(req)
            .await
            .map_err(|e| ClientError::Request(url.clone(), format!("{e:#}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Request(url.clone(), e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ClientError::Timeout(url.clone(), timeout))?
}

/// GETs `url`; Ok if it answers 2xx.
pub async fn probe(url: &str, timeout: Duration) -> Result<(), ClientError> {
    let uri = parse(url)?;
    let (status, _) = get(&client(), &uri, timeout).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ClientError::Status(url.to_owned(), status))
    }
}

/// Sends `requests` GETs to `url` over keep-alive connections and counts the
/// answers per body (the backend's host name). Ok when exactly
/// `expect_backends` names each got `requests / expect_backends`.
pub async fn check(
    url: &str,
    requests: usize,
    expect_backends: usize,
    timeout: Duration,
) -> Result<BTreeMap<String, usize>, (ClientError, BTreeMap<String, usize>)> {
    let mut counts = BTreeMap::new();
    let fail = |e, c: &BTreeMap<String, usize>| (e, c.clone());
    if expect_backends == 0 || !requests.is_multiple_of(expect_backends) {
        return Err(fail(
            ClientError::Split(format!(
                "{requests} requests cannot split evenly over {expect_backends} backends"
            )),
            &counts,
        ));
    }
    let uri = parse(url).map_err(|e| fail(e, &counts))?;
    let c = client();
    for _ in 0..requests {
        let (status, body) = get(&c, &uri, timeout).await.map_err(|e| fail(e, &counts))?;
        if !(200..300).contains(&status) {
            return Err(fail(ClientError::Status(url.to_owned(), status), &counts));
        }
        let name = String::from_utf8_lossy(&body).trim().to_owned();
        *counts.entry(name).or_insert(0) += 1;
    }
    let share = requests / expect_backends;
    if counts.len() != expect_backends || counts.values().any(|n| *n != share) {
        return Err(fail(
            ClientError::Split(format!(
                "expected {expect_backends} backends with {share} requests each, got {counts:?}"
            )),
            &counts,
        ));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse("http://127.0.0.1:9090/readyz").is_ok());
        assert!(parse("https://x/").is_err());
        assert!(parse("not a url").is_err());
    }

    #[tokio::test]
    async fn probe_unreachable_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = probe(&format!("http://{addr}/"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Request(..)), "{e}");
    }

    #[tokio::test]
    async fn uneven_split_is_rejected_up_front() {
        let e = check("http://127.0.0.1:1/", 99, 2, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.0.to_string().contains("evenly"));
    }
}
