//! TLS material and client configurations. The server side of the one port
//! is built from a node's [`crate::credentials::Credentials`], which reload.

use std::{path::Path, sync::Arc};

use rustls::{RootCertStore, crypto::CryptoProvider};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::identity::PeerIdentity;

/// Why TLS material was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The node certificate has no molt identity.
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// The crypto provider molt uses everywhere (ring; AES-GCM first).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`provider`] as the process default, for libraries (tonic) that
/// build their own configs. Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A node's (or the operator's) CA, certificate chain and key, loaded once.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The cluster CA, PEM.
    pub ca_pem: Vec<u8>,
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
    /// The identity the certificate carries.
    pub identity: PeerIdentity,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { path: path.display().to_string(), message: e.to_string() })
}

impl TlsMaterial {
    /// Loads and checks the three PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::from_pem(read(ca)?, read(cert)?, read(key)?)
    }

    /// Checks PEM material already in memory.
    pub fn from_pem(ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, TlsError> {
        let m = Self { identity: placeholder_identity(), ca_pem, cert_pem, key_pem };
        m.roots()?;
        m.key()?;
        let chain = m.chain()?;
        let identity = PeerIdentity::from_cert_der(&chain[0])?;
        Ok(Self { identity, ..m })
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let chain: Vec<_> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::File { path: "certificate".into(), message: e.to_string() })?;
        if chain.is_empty() {
            return Err(TlsError::File { path: "certificate".into(), message: "no PEM certificate found".into() });
        }
        Ok(chain)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| TlsError::File { path: "key".into(), message: format!("no usable private key: {e}") })
    }

    /// The cluster CA as a root store.
    pub fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let c = c.map_err(|e| TlsError::File { path: "ca".into(), message: e.to_string() })?;
            roots.add(c)?;
        }
        if roots.is_empty() {
            return Err(TlsError::File { path: "ca".into(), message: "no CA certificate found".into() });
        }
        Ok(Arc::new(roots))
    }

    /// A client config presenting this certificate, trusting only the
    /// cluster CA. `alpn` lists the protocols to offer.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.key()?)?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

fn placeholder_identity() -> PeerIdentity {
    PeerIdentity { cluster: String::new(), role: crate::Role::Admin, node_id: "x".parse().expect("valid id") }
}

/// A client config trusting `ca_pem` with no client certificate (the REST
/// API with a token).
pub fn anonymous_client_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.map_err(|e| TlsError::File { path: "ca".into(), message: e.to_string() })?)?;
    }
    if roots.is_empty() {
        return Err(TlsError::File { path: "ca".into(), message: "no CA certificate found".into() });
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
