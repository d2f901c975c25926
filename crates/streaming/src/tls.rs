//! TLS for the streaming server: a certificate chain and key in PEM files, as kubelet's and containerd's
//! streaming servers take them, and optionally the CAs whose client certificates it requires (kubelet's
//! streaming proxy presents its own). HTTP/1.1 is the only ALPN protocol offered: both upgrades start there.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ServerError;

/// A server configuration from `cert` (the chain, leaf first) and `key` (PKCS#8, PKCS#1 or SEC1); with
/// `client_ca`, a client must present a certificate signed by one of that file's CAs.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let bad = |path: &Path, reason: String| ServerError::Tls { path: path.to_path_buf(), reason };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e.to_string()))? {
                roots.add(certificate.map_err(|e| bad(ca, e.to_string()))?).map_err(|e| bad(ca, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad(ca, "no CA certificate in the file".into()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(key, format!("the key does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
