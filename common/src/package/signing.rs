//! Package signatures: ed25519 (ring) over the manifest, which names the
//! payload's SHA-256 and size, so a signature covers the whole package (the
//! payload digest is checked against the manifest by `verify` and again by
//! `unpack`).
//!
//! Files, both text:
//! - `signing.key`: `molt-ed25519-private <hex of the PKCS#8 document>`;
//! - `signing.pub`: `molt-ed25519 <hex of the 32-byte public key>`.
//!
//! A key's id is the first 16 hex digits of the SHA-256 of its public key;
//! messages name keys by it. Nodes trust the keys listed in `node.toml`
//! (`trusted_keys`); with none listed, packages are not checked for a
//! signature, and the status says so.

use std::{fmt, fs, io, path::Path};

use ring::{
    rand::SystemRandom,
    signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey},
};
use serde::{Deserialize, Serialize};

use super::Manifest;
use crate::Sha256Digest;

const PUBLIC_TAG: &str = "molt-ed25519";
const PRIVATE_TAG: &str = "molt-ed25519-private";
/// What is signed: this prefix, then the manifest without its signature.
const CONTEXT: &[u8] = b"molt package manifest v1\n";

/// The signature a package's manifest carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The id of the key that signed.
    pub key_id: String,
    /// The ed25519 signature, hex.
    pub ed25519: String,
}

/// Why a key or a signature was refused. Messages name the key ids.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key file cannot be read or is not a molt key.
    #[error("{path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Keys are configured and the package has no signature.
    #[error(
        "the package is unsigned, and this node trusts only packages signed by {trusted}; build it with `molt package build ... --sign-key KEY`"
    )]
    Unsigned {
        /// The trusted key ids.
        trusted: String,
    },
    /// Signed by a key that is not trusted here.
    #[error(
        "the package is signed by key {key_id}, which this node does not trust (it trusts {trusted}); add its .pub to trusted_keys, or sign with a trusted key"
    )]
    UnknownKey {
        /// The key that signed.
        key_id: String,
        /// The trusted key ids.
        trusted: String,
    },
    /// The signature does not match the manifest: tampered, or signed wrongly.
    #[error(
        "the package's signature by key {key_id} does not match its contents: the package was changed after it was signed, or signed wrongly; get it again from its builder"
    )]
    BadSignature {
        /// The key it claims.
        key_id: String,
    },
}

/// A public key that nodes may trust.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: Vec<u8>,
    id: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    fn from_bytes(bytes: Vec<u8>) -> Self {
        let id = Sha256Digest::of(&bytes).to_hex()[..16].to_owned();
        Self { bytes, id }
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads a `signing.pub` file.
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let bad = |why: String| SigningError::Key { path: path.display().to_string(), why };
        let text = fs::read_to_string(path).map_err(|e| bad(format!("cannot read the public key: {e}")))?;
        let hex = text.trim().strip_prefix(PUBLIC_TAG).map(str::trim).ok_or_else(|| {
            bad(format!(
                "not a molt public key (it should start with {PUBLIC_TAG:?}); make one with `molt package keygen`"
            ))
        })?;
        let bytes = hex::decode(hex).map_err(|e| bad(format!("the key is not hex: {e}")))?;
        if bytes.len() != 32 {
            return Err(bad(format!("an ed25519 public key is 32 bytes, this one {}", bytes.len())));
        }
        Ok(Self::from_bytes(bytes))
    }
}

/// A private key that signs packages.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.id)
    }
}

impl SigningKey {
    /// Reads a `signing.key` file.
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let bad = |why: String| SigningError::Key { path: path.display().to_string(), why };
        let text = fs::read_to_string(path).map_err(|e| bad(format!("cannot read the signing key: {e}")))?;
        let hex = text.trim().strip_prefix(PRIVATE_TAG).map(str::trim).ok_or_else(|| {
            bad(format!(
                "not a molt signing key (it should start with {PRIVATE_TAG:?}); make one with `molt package keygen`"
            ))
        })?;
        let der = hex::decode(hex).map_err(|e| bad(format!("the key is not hex: {e}")))?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| bad(format!("not an ed25519 key: {e}")))?;
        let public = PublicKey::from_bytes(pair.public_key().as_ref().to_vec());
        Ok(Self { pair, public })
    }

    /// Its public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The signature of `m` (its own signature field is left out).
    pub fn sign(&self, m: &Manifest) -> Signature {
        let sig = self.pair.sign(&signed_bytes(m));
        Signature { key_id: self.public.id.clone(), ed25519: hex::encode(sig.as_ref()) }
    }
}

/// Writes a new key pair as `dir/signing.key` (mode 0600) and `dir/signing.pub`;
/// refuses to overwrite a key. Returns the public key.
pub fn keygen(dir: &Path) -> Result<PublicKey, SigningError> {
    let bad = |p: &Path, why: String| SigningError::Key { path: p.display().to_string(), why };
    fs::create_dir_all(dir).map_err(|e| bad(dir, e.to_string()))?;
    let (key, public) = (dir.join("signing.key"), dir.join("signing.pub"));
    if key.exists() {
        return Err(bad(&key, "exists already; keygen never overwrites a key (remove it first if you mean to)".into()));
    }
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|e| bad(&key, e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|e| bad(&key, e.to_string()))?;
    let pk = PublicKey::from_bytes(pair.public_key().as_ref().to_vec());
    write_private(&key, format!("{PRIVATE_TAG} {}\n", hex::encode(der.as_ref())).as_bytes())
        .map_err(|e| bad(&key, e.to_string()))?;
    crate::fsutil::atomic_write(&public, format!("{PUBLIC_TAG} {}\n", hex::encode(&pk.bytes)).as_bytes())
        .map_err(|e| bad(&public, e.to_string()))?;
    Ok(pk)
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// What is signed for `m`: the context, then the manifest's JSON without
/// its signature (serde writes the fields in their declared order).
fn signed_bytes(m: &Manifest) -> Vec<u8> {
    let unsigned = Manifest { signature: None, ..m.clone() };
    let mut out = CONTEXT.to_vec();
    out.extend(serde_json::to_vec(&unsigned).expect("a manifest serializes"));
    out
}

/// The outcome of a signature check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// No key is trusted here: the signature (if any) was not checked.
    Unchecked,
    /// Signed by this trusted key.
    SignedBy(String),
}

/// Checks `m`'s signature against the `trusted` keys.
pub fn check(m: &Manifest, trusted: &[PublicKey]) -> Result<Trust, SigningError> {
    if trusted.is_empty() {
        return Ok(Trust::Unchecked);
    }
    let ids = || trusted.iter().map(PublicKey::id).collect::<Vec<_>>().join(", ");
    let Some(sig) = &m.signature else {
        return Err(SigningError::Unsigned { trusted: ids() });
    };
    let Some(key) = trusted.iter().find(|k| k.id == sig.key_id) else {
        return Err(SigningError::UnknownKey { key_id: sig.key_id.clone(), trusted: ids() });
    };
    let bad = || SigningError::BadSignature { key_id: sig.key_id.clone() };
    let raw = hex::decode(&sig.ed25519).map_err(|_| bad())?;
    UnparsedPublicKey::new(&ED25519, &key.bytes).verify(&signed_bytes(m), &raw).map_err(|_| bad())?;
    Ok(Trust::SignedBy(key.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeploymentKind, Version};

    fn manifest() -> Manifest {
        Manifest {
            format: 1,
            version: "2.0.0".parse::<Version>().unwrap(),
            min_compatible: "1.0.0".parse().unwrap(),
            kind: DeploymentKind::Vm,
            payload_sha256: Sha256Digest::of(b"payload"),
            payload_size: 7,
            built_at: 1,
            signature: None,
        }
    }

    #[test]
    fn a_signature_is_checked_against_the_trusted_keys_and_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        keygen(&a).unwrap();
        keygen(&b).unwrap();
        assert!(keygen(&a).is_err(), "never overwrites a key");
        let key_a = SigningKey::load(&a.join("signing.key")).unwrap();
        let pub_a = PublicKey::load(&a.join("signing.pub")).unwrap();
        let pub_b = PublicKey::load(&b.join("signing.pub")).unwrap();
        assert_eq!(key_a.public(), &pub_a);
        let mut m = manifest();
        assert_eq!(check(&m, &[]).unwrap(), Trust::Unchecked);
        assert!(matches!(check(&m, std::slice::from_ref(&pub_a)), Err(SigningError::Unsigned { .. })));
        m.signature = Some(key_a.sign(&m));
        assert_eq!(check(&m, &[pub_b.clone(), pub_a.clone()]).unwrap(), Trust::SignedBy(pub_a.id().into()));
        let e = check(&m, std::slice::from_ref(&pub_b)).unwrap_err().to_string();
        assert!(e.contains(pub_a.id()) && e.contains(pub_b.id()), "{e}");
        // Any change to what the manifest says breaks the signature.
        let mut tampered = m.clone();
        tampered.payload_sha256 = Sha256Digest::of(b"other");
        assert!(matches!(check(&tampered, std::slice::from_ref(&pub_a)), Err(SigningError::BadSignature { .. })));
        // A private key is not a public one, nor the other way round.
        assert!(PublicKey::load(&a.join("signing.key")).is_err());
        assert!(SigningKey::load(&a.join("signing.pub")).is_err());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(a.join("signing.key")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
