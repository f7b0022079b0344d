//! The first bytes a client sends, whatever they are: the plain port's
//! HTTP/2 preface detection, the TLS listener's rustls server (with the
//! LB's own configuration: versions, ALPN, resumption), and the LB's HTTP/2
//! server (the `h2` crate, built by `lb::proxy::h2::server_builder` with
//! the LB's default limits) answering every stream it accepts. Nothing may
//! panic, and the preface detection must agree with a plain prefix
//! comparison.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use lb::proxy::h2::{Limits, server_builder};
use lb::proxy::stream::h2_preface;
use lb::proxy::tls::{CertPair, CertStore, server_config};
use tokio::io::AsyncWriteExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn tls() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["fuzz.example".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let store = CertStore::new(&[CertPair {
                name: "fuzz".into(),
                chain_pem: cert.pem().into_bytes(),
                key_pem: key.serialize_pem().into_bytes(),
            }])
            .unwrap();
            server_config(store).unwrap()
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    // 1. The preface check is exactly a prefix comparison.
    let n = data.len().min(PREFACE.len());
    let expected = if data[..n] != PREFACE[..n] {
        Some(false)
    } else if n == PREFACE.len() {
        Some(true)
    } else {
        None
    };
    assert_eq!(h2_preface(data), expected);

    // 2. rustls with the LB's configuration, fed the bytes in two reads.
    let mut conn = rustls::ServerConnection::new(tls()).unwrap();
    let (a, b) = data.split_at(data.len() / 2);
    for part in [a, b] {
        let mut rd = part;
        while !rd.is_empty() {
            match conn.read_tls(&mut rd) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if conn.process_new_packets().is_err() {
                break;
            }
        }
        let mut sink = Vec::new();
        while conn.wants_write() {
            if conn.write_tls(&mut sink).is_err() {
                break;
            }
        }
    }

    // 3. The LB's HTTP/2 server, given the preface and then the bytes, on
    //    an in-memory pipe; every stream it accepts is answered at once
    //    (its body left unread); bounded by a (paused) timer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let limits = Limits {
            max_streams: 100,
            max_header_list: 32 * 1024,
        };
        let input = data.to_vec();
        let feed = async move {
            let _ = client.write_all(PREFACE).await;
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            // Keep reading so the server never blocks on a full pipe.
            let mut sink = [0u8; 4096];
            while tokio::io::AsyncReadExt::read(&mut client, &mut sink)
                .await
                .is_ok_and(|n| n > 0)
            {}
        };
        let serve = async {
            let Ok(mut conn) = server_builder(&limits).handshake::<_, Bytes>(server).await else {
                return;
            };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                if let Ok(mut tx) = respond.send_response(http::Response::new(()), false) {
                    let _ = tx.send_data(Bytes::from_static(b"ok"), true);
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(feed, serve);
        })
        .await;
    });
});
