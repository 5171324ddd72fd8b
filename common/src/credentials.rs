//! A node's TLS credentials as files that may change under it: the
//! certificate and key are re-read when they change (`molt pki renew`), and
//! the revocation list (`molt pki revoke`) is checked at every handshake.
//!
//! The identity (cluster, role, node id) is fixed for the life of the node:
//! a renewed certificate naming anyone else is refused and the old one kept.
//! A certificate and key that do not match (one renamed before the other)
//! are not taken either; the next poll tries again. The CA is read once.

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use rustls::{
    DistinguishedName, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};

use crate::{
    identity::{PeerIdentity, serial_hex},
    tls::{TlsError, TlsMaterial, provider},
};

/// Node ids and certificate serials no longer trusted. One entry a line in
/// the file; `#` starts a comment; serials are hex (`:` and case ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    entries: HashSet<String>,
}

impl RevocationList {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(|l| l.replace(':', "").to_ascii_lowercase())
            .collect();
        Self { entries }
    }

    /// Whether `node` or the certificate `serial` is revoked.
    pub fn revokes(&self, node: &str, serial: &str) -> bool {
        let serial = serial.trim_start_matches('0');
        self.entries.contains(&node.to_ascii_lowercase())
            || self.entries.iter().any(|e| e.trim_start_matches('0') == serial && !serial.is_empty())
    }
}

/// What the files said last time they were read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Stamps(Vec<Option<(SystemTime, u64)>>);

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct Loaded {
    material: Arc<TlsMaterial>,
    certified: Arc<CertifiedKey>,
    revoked: Arc<RevocationList>,
    stamps: Stamps,
}

/// The credentials of a running node.
pub struct Credentials {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    revoked: Option<PathBuf>,
    identity: PeerIdentity,
    current: RwLock<Loaded>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

fn read_revoked(path: Option<&Path>) -> Result<RevocationList, TlsError> {
    match path {
        None => Ok(RevocationList::default()),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Ok(RevocationList::parse(&t)),
            // No file yet: nothing revoked (`molt pki revoke` creates it).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevocationList::default()),
            Err(e) => Err(TlsError::File { path: p.display().to_string(), message: e.to_string() }),
        },
    }
}

fn certified(material: &TlsMaterial) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&material.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File { path: "certificate".into(), message: e.to_string() })?;
    let key = PrivateKeyDer::from_pem_slice(&material.key_pem)
        .map_err(|e| TlsError::File { path: "key".into(), message: e.to_string() })?;
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

impl Credentials {
    /// Loads the files once (the node refuses to start if they are unusable).
    pub fn load(ca: &Path, cert: &Path, key: &Path, revoked: Option<&Path>) -> Result<Self, TlsError> {
        let stamps = Self::stamps_of(cert, key, revoked);
        let material = TlsMaterial::load(ca, cert, key)?;
        let certified = certified(&material)?;
        Ok(Self {
            ca: ca.to_owned(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            revoked: revoked.map(Path::to_owned),
            identity: material.identity.clone(),
            current: RwLock::new(Loaded {
                material: Arc::new(material),
                certified: Arc::new(certified),
                revoked: Arc::new(read_revoked(revoked)?),
                stamps,
            }),
        })
    }

    fn stamps_of(cert: &Path, key: &Path, revoked: Option<&Path>) -> Stamps {
        Stamps(vec![stamp(cert), stamp(key), revoked.and_then(stamp)])
    }

    /// Who this node is.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The certificate, key and CA in force now.
    pub fn material(&self) -> Arc<TlsMaterial> {
        self.current.read().expect("credentials lock").material.clone()
    }

    /// The revocation list in force now.
    pub fn revocations(&self) -> Arc<RevocationList> {
        self.current.read().expect("credentials lock").revoked.clone()
    }

    /// Re-reads whatever changed on disk. `Ok(true)` when something new is
    /// in force; an error keeps what was in force and says why.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamps = Self::stamps_of(&self.cert, &self.key, self.revoked.as_deref());
        let old = {
            let cur = self.current.read().expect("credentials lock");
            if cur.stamps == stamps {
                return Ok(false);
            }
            (cur.material.clone(), cur.certified.clone())
        };
        let revoked = Arc::new(read_revoked(self.revoked.as_deref())?);
        let material = TlsMaterial::load(&self.ca, &self.cert, &self.key)?;
        let (material, certified) = if material.cert_pem == old.0.cert_pem && material.key_pem == old.0.key_pem {
            old
        } else {
            if material.identity != self.identity {
                return Err(TlsError::File {
                    path: self.cert.display().to_string(),
                    message: format!(
                        "the new certificate names {}, this node is {}; keeping the old one",
                        material.identity, self.identity
                    ),
                });
            }
            let certified = Arc::new(certified(&material)?);
            (Arc::new(material), certified)
        };
        *self.current.write().expect("credentials lock") = Loaded { material, certified, revoked, stamps };
        Ok(true)
    }

    /// The certificate and key in force now.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("credentials lock").certified.clone()
    }

    /// Checks a certificate as a client's is checked at the handshake: it
    /// chains to the cluster CA and is not revoked.
    pub fn verify_peer(&self, end_entity: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        let roots = self.material().roots().map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_client_cert(end_entity, &[], now)?;
        if self.is_revoked(end_entity) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(())
    }

    /// Whether a peer's verified end-entity certificate is revoked now.
    pub fn is_revoked(&self, end_entity: &[u8]) -> bool {
        let list = self.revocations();
        let node = PeerIdentity::from_cert_der(end_entity).map(|i| i.node_id.to_string()).unwrap_or_default();
        let serial = serial_hex(end_entity).unwrap_or_default();
        list.revokes(&node, &serial)
    }

    /// The server side of the one port: TLS 1.3, ALPN h2 then http/1.1, a
    /// client certificate optional but, when presented, verified against the
    /// cluster CA and the revocation list; the node's own certificate is
    /// whatever is in force at each handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let material = self.material();
        let inner = WebPkiClientVerifier::builder_with_provider(material.roots()?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::File { path: "ca".into(), message: e.to_string() })?;
        let verifier = Arc::new(RevocationChecking { inner, creds: self.clone() });
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentCert(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Serves the certificate in force at each handshake.
#[derive(Debug)]
struct CurrentCert(Arc<Credentials>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.read().expect("credentials lock").certified.clone())
    }
}

/// The CA's verdict, then the revocation list's.
#[derive(Debug)]
struct RevocationChecking {
    inner: Arc<dyn ClientCertVerifier>,
    creds: Arc<Credentials>,
}

impl ClientCertVerifier for RevocationChecking {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.creds.is_revoked(end_entity) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_lists_name_nodes_or_serials() {
        let l = RevocationList::parse("# retired\nse-7\n  0A:1B:ff  # stolen laptop\n\n");
        assert!(l.revokes("se-7", "1234"));
        assert!(l.revokes("se-1", "a1bff"));
        assert!(l.revokes("se-1", "0a1bff"));
        assert!(!l.revokes("se-1", "a1bf"));
        assert!(!l.revokes("se-8", ""));
    }
}
