//! A peer's identity as its certificate states it: the URI SAN
//! `molt://<cluster>/<role>/<node id>` written by `molt pki init`.

use std::fmt;

use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::{NodeId, Role};

/// The URI scheme of identity SANs.
pub const SCHEME: &str = "molt://";

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// Cluster name.
    pub cluster: String,
    /// Role.
    pub role: Role,
    /// Node id (`admin` for the operator).
    pub node_id: NodeId,
}

impl PeerIdentity {
    /// The URI SAN that carries this identity.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}/{}", self.cluster, self.role, self.node_id)
    }

    /// Parses `molt://cluster/role/id`.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(SCHEME)?;
        let mut parts = rest.split('/');
        let (cluster, role, id) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || cluster.is_empty() {
            return None;
        }
        Some(Self { cluster: cluster.to_owned(), role: role.parse().ok()?, node_id: id.parse().ok()? })
    }

    /// Extracts the identity from a DER certificate. The certificate must
    /// already have been verified against the cluster CA.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?
            .ok_or(IdentityError::NoIdentity)?;
        let mut found = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with(SCHEME) => Some(*u),
            _ => None,
        });
        let uri = found.next().ok_or(IdentityError::NoIdentity)?;
        if found.next().is_some() {
            return Err(IdentityError::Ambiguous);
        }
        Self::from_uri(uri).ok_or_else(|| IdentityError::Malformed(uri.to_owned()))
    }
}

/// The host names and IP addresses a certificate is valid for (its DNS and
/// IP SANs), as `molt pki init` wrote them.
pub fn host_names(der: &[u8]) -> Result<Vec<String>, IdentityError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let Some(san) = cert.subject_alternative_name().map_err(|e| IdentityError::Unparsable(e.to_string()))? else {
        return Ok(vec![]);
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// The end of a certificate's validity, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A certificate's serial number as lowercase hex without separators or
/// leading zeros (as `molt pki revoke` and `openssl x509 -serial` name it,
/// case aside). `None` if the certificate does not parse.
pub fn serial_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let hex = cert.tbs_certificate.raw_serial().iter().map(|b| format!("{b:02x}")).collect::<String>();
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0".into() } else { trimmed.to_owned() })
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} of cluster {}", self.role, self.node_id, self.cluster)
    }
}

/// Why a certificate carries no usable identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Not a parsable X.509 certificate.
    #[error("certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// No `molt://` URI SAN.
    #[error("certificate has no molt:// identity; make node certificates with `molt pki init`")]
    NoIdentity,
    /// More than one `molt://` URI SAN.
    #[error("certificate carries more than one molt:// identity")]
    Ambiguous,
    /// A `molt://` URI that does not parse.
    #[error("certificate identity {0:?} is not molt://CLUSTER/ROLE/ID")]
    Malformed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        let id = PeerIdentity::from_uri("molt://prod/se/se-1").unwrap();
        assert_eq!(id.role, Role::ServiceEngine);
        assert_eq!(id.uri(), "molt://prod/se/se-1");
        for bad in ["molt://prod/se", "molt://prod/king/x", "http://prod/se/x", "molt:///se/x", "molt://a/se/x/y"] {
            assert!(PeerIdentity::from_uri(bad).is_none(), "{bad}");
        }
    }
}
