//! Relay tickets: the leader's signed permission for one node to fetch one
//! image from one relay, for a short while.
//!
//! The leader signs with its own TLS key; the relay checks the signer's
//! certificate against the cluster CA and the revocation list (as it checks
//! any client at its handshake), that it names a controller of this
//! cluster, and the signature with that certificate's key. So no secret is
//! shared and a ticket cannot be made by an SE, nor used by another node
//! (the relay matches the fetcher to the caller's certificate), nor for
//! another image or relay, nor after it expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::signature;
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

use crate::{Role, credentials::Credentials, identity::PeerIdentity};

/// How long a ticket may be used to open a stream (a stream already open
/// goes on past it).
pub const TICKET_LIFETIME: Duration = Duration::from_secs(60);

/// Signed bytes start with this, so a ticket's signature is never valid as
/// anything else the key signs.
const CONTEXT: &[u8] = b"molt relay ticket v1\0";

/// What a ticket allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayGrant {
    /// The image, as hex SHA-256.
    pub sha256: String,
    /// The node that may fetch.
    pub fetcher: String,
    /// The node that may serve it.
    pub relay: String,
    /// Until when it may be used, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
    /// The cap on this stream, bytes per second (the transfer's cap, shared
    /// by its stripes), when the leader caps transfers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// The one stripe it may fetch: its index ...
    #[serde(default)]
    pub stripe: u32,
    /// ... of this many (1: the whole image).
    #[serde(default = "one")]
    pub stripes: u32,
}

fn one() -> u32 {
    1
}

#[derive(Serialize, Deserialize)]
struct Wire {
    grant: String,
    scheme: u16,
    signature: String,
    signer: String,
}

/// Why a ticket is refused.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// Not a ticket.
    #[error("the relay ticket is malformed: {0}")]
    Malformed(String),
    /// The signer is not a controller of this cluster, or its certificate is not trusted.
    #[error("the relay ticket's signer is not trusted: {0}")]
    Signer(String),
    /// The signature does not match.
    #[error("the relay ticket's signature does not verify")]
    Signature,
    /// Too late.
    #[error("the relay ticket expired; ask the leader again")]
    Expired,
    /// The leader's key cannot sign.
    #[error("cannot sign a relay ticket: {0}")]
    Sign(String),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn signed_bytes(grant: &str) -> Vec<u8> {
    [CONTEXT, grant.as_bytes()].concat()
}

const SCHEMES: [SignatureScheme; 3] =
    [SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ED25519, SignatureScheme::ECDSA_NISTP384_SHA384];

fn algorithm(scheme: SignatureScheme) -> Option<&'static dyn signature::VerificationAlgorithm> {
    Some(match scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => &signature::ECDSA_P256_SHA256_ASN1,
        SignatureScheme::ECDSA_NISTP384_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
        SignatureScheme::ED25519 => &signature::ED25519,
        _ => return None,
    })
}

impl RelayGrant {
    /// `fetcher` may fetch `stripe` of `sha256` from `relay` for [`TICKET_LIFETIME`] from now,
    /// one stream at a time.
    pub fn new(sha256: &crate::Sha256Digest, fetcher: &str, relay: &str, stripe: crate::stripe::Stripe) -> Self {
        Self {
            sha256: sha256.to_hex(),
            fetcher: fetcher.to_owned(),
            relay: relay.to_owned(),
            expires_unix_ms: now_ms() + TICKET_LIFETIME.as_millis() as u64,
            rate: None,
            stripe: stripe.index(),
            stripes: stripe.count(),
        }
    }

    /// The whole transfer's cap, bytes per second: what all of the
    /// fetcher's streams share.
    pub fn transfer_rate(&self) -> Option<u64> {
        self.rate.map(|r| r.saturating_mul(u64::from(self.stripes.max(1))))
    }

    /// The same grant, capping the stream at `rate` bytes per second.
    pub fn with_rate(self, rate: Option<u64>) -> Self {
        Self { rate, ..self }
    }
}

/// Signs `grant` with `creds`' key (the leader's).
pub fn sign(creds: &Credentials, grant: &RelayGrant) -> Result<Vec<u8>, TicketError> {
    let certified = creds.certified_key();
    let signer = certified
        .key
        .choose_scheme(&SCHEMES)
        .ok_or_else(|| TicketError::Sign("the key is of a kind tickets do not use".into()))?;
    let text = serde_json::to_string(grant).map_err(|e| TicketError::Sign(e.to_string()))?;
    let sig = signer.sign(&signed_bytes(&text)).map_err(|e| TicketError::Sign(e.to_string()))?;
    let wire = Wire {
        grant: text,
        scheme: u16::from(signer.scheme()),
        signature: hex::encode(sig),
        signer: hex::encode(certified.end_entity_cert().map_err(|e| TicketError::Sign(e.to_string()))?),
    };
    serde_json::to_vec(&wire).map_err(|e| TicketError::Sign(e.to_string()))
}

/// Checks `ticket` with what this node trusts and returns what it grants.
pub fn verify(creds: &Credentials, ticket: &[u8]) -> Result<RelayGrant, TicketError> {
    let wire: Wire = serde_json::from_slice(ticket).map_err(|e| TicketError::Malformed(e.to_string()))?;
    let der = hex::decode(&wire.signer).map_err(|e| TicketError::Malformed(e.to_string()))?;
    let sig = hex::decode(&wire.signature).map_err(|e| TicketError::Malformed(e.to_string()))?;
    let cert = CertificateDer::from(der);
    creds.verify_peer(&cert, UnixTime::now()).map_err(|e| TicketError::Signer(e.to_string()))?;
    let who = PeerIdentity::from_cert_der(&cert).map_err(|e| TicketError::Signer(e.to_string()))?;
    let me = creds.identity();
    if who.role != Role::Controller || who.cluster != me.cluster {
        return Err(TicketError::Signer(format!("{who} is not a controller of cluster {}", me.cluster)));
    }
    let alg = algorithm(SignatureScheme::from(wire.scheme)).ok_or(TicketError::Signature)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).map_err(|e| TicketError::Signer(e.to_string()))?;
    signature::UnparsedPublicKey::new(alg, &parsed.public_key().subject_public_key.data)
        .verify(&signed_bytes(&wire.grant), &sig)
        .map_err(|_| TicketError::Signature)?;
    let grant: RelayGrant = serde_json::from_str(&wire.grant).map_err(|e| TicketError::Malformed(e.to_string()))?;
    if grant.expires_unix_ms < now_ms() {
        return Err(TicketError::Expired);
    }
    Ok(grant)
}
