//! The certificates of the Ingresses' `tls` sections: each `secretName` is
//! a `kubernetes.io/tls` Secret in the Ingress's namespace, served by the
//! TLS listener and chosen by SNI (the existing certificate machinery).
//!
//! Each Secret is checked here the way the TLS listener will load it (PEM
//! chain with an X.509 leaf, a private key rustls can sign with, the key
//! matching the certificate): the listener swaps in a whole set or nothing,
//! so one bad Secret must be left out here, and reported, rather than keep
//! every other certificate from being served.

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::discovery::CertPair;

/// Whether `pair` can be served, and why not.
pub fn check(pair: &CertPair) -> Result<(), String> {
    let chain = CertificateDer::pem_slice_iter(&pair.chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt is not PEM certificates: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("tls.crt holds no certificate".into());
    };
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("tls.crt's first certificate is not valid X.509: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&pair.key_pem)
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let signer = provider::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key cannot be used: {e}"))?;
    CertifiedKey::new(chain, signer)
        .keys_match()
        .map_err(|e| format!("tls.key does not belong to tls.crt: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> CertPair {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap()
        .self_signed(&key)
        .unwrap();
        CertPair {
            name: "secret/x".into(),
            chain_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }
    }

    #[test]
    fn a_good_pair_passes_and_broken_ones_say_why() {
        let good = pair(&["a.example"]);
        assert_eq!(check(&good), Ok(()));
        let other = pair(&["b.example"]);
        let mismatched = CertPair {
            key_pem: other.key_pem.clone(),
            ..good.clone()
        };
        assert!(check(&mismatched).unwrap_err().contains("does not belong"));
        let no_cert = CertPair {
            chain_pem: b"not pem".to_vec(),
            ..good.clone()
        };
        assert!(check(&no_cert).unwrap_err().contains("no certificate"));
        let no_key = CertPair {
            key_pem: b"".to_vec(),
            ..good
        };
        assert!(check(&no_key).unwrap_err().contains("tls.key"));
    }
}
