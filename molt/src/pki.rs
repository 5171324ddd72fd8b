//! `molt pki init`: a cluster CA, one certificate per node naming its role and
//! id (URI SAN `molt://CLUSTER/ROLE/ID`, plus the node's host as IP or DNS
//! SAN), an admin client certificate and the admin token.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use common::{NodeId, Role, identity::PeerIdentity};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, string::Ia5String,
};

/// Why PKI material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A `--node` argument that does not parse.
    #[error("--node {0:?}: expected ID=ROLE@HOST, for example c1=controller@10.0.0.1 or se-1=se@se1.example")]
    NodeSpec(String),
    /// Something invalid.
    #[error("{0}")]
    Invalid(String),
    /// Certificate generation.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Writing files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A node to certify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Its id.
    pub id: NodeId,
    /// Its role (controller or se).
    pub role: Role,
    /// Host name or IP others reach it by.
    pub host: String,
}

impl std::str::FromStr for NodeSpec {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PkiError::NodeSpec(s.to_owned());
        let (id, rest) = s.split_once('=').ok_or_else(err)?;
        let (role, host) = rest.split_once('@').ok_or_else(err)?;
        let role: Role = role.parse().map_err(|_| err())?;
        if role == Role::Admin || host.is_empty() {
            return Err(err());
        }
        Ok(NodeSpec { id: id.parse().map_err(|_| err())?, role, host: host.to_owned() })
    }
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_owned(), source };
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Creates `dir/ca.pem`, `dir/ca.key`, `dir/ID.pem` + `dir/ID.key` for each
/// node and for `admin`, and `dir/admin.token`. Refuses to overwrite an
/// existing CA.
pub fn init(dir: &Path, cluster: &str, nodes: &[NodeSpec]) -> Result<(), PkiError> {
    if cluster.is_empty() || !cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(PkiError::Invalid(format!("--cluster {cluster:?}: use letters, digits and '-'")));
    }
    if dir.join("ca.pem").exists() {
        return Err(PkiError::Invalid(format!(
            "{} already holds a CA; use another --dir (re-running init would cut every node off its peers)",
            dir.display()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for n in nodes {
        if n.id.as_str() == "admin" || !seen.insert(n.id.clone()) {
            return Err(PkiError::Invalid(format!("node id {} is used twice or reserved", n.id)));
        }
    }
    fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("molt cluster CA {cluster}"));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
    write(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
    let issuer = Issuer::new(ca_params, ca_key);
    for n in nodes {
        issue(dir, cluster, &n.id, n.role, Some(&n.host), &issuer)?;
    }
    issue(dir, cluster, &"admin".parse().expect("valid id"), Role::Admin, None, &issuer)?;
    let token = common::types::random_hex(32);
    write(&dir.join("admin.token"), format!("{token}\n").as_bytes(), 0o600)
}

fn issue(
    dir: &Path,
    cluster: &str,
    id: &NodeId,
    role: Role,
    host: Option<&str>,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(), PkiError> {
    let mut params = CertificateParams::new(host.map(|h| vec![h.to_owned()]).unwrap_or_default())?;
    let identity = PeerIdentity { cluster: cluster.to_owned(), role, node_id: id.clone() };
    params
        .subject_alt_names
        .push(SanType::URI(Ia5String::try_from(identity.uri()).map_err(|e| PkiError::Invalid(e.to_string()))?));
    params.distinguished_name.push(DnType::CommonName, format!("{role} {id}"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write(&dir.join(format!("{id}.pem")), cert.pem().as_bytes(), 0o644)?;
    write(&dir.join(format!("{id}.key")), key.serialize_pem().as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_loadable_material_with_identities() {
        let d = tempfile::tempdir().unwrap();
        let nodes: Vec<NodeSpec> =
            ["c1=controller@127.0.0.11", "se-1=se@se1.example"].iter().map(|s| s.parse().unwrap()).collect();
        init(d.path(), "prod", &nodes).unwrap();
        let m = common::tls::TlsMaterial::load(
            &d.path().join("ca.pem"),
            &d.path().join("se-1.pem"),
            &d.path().join("se-1.key"),
        )
        .unwrap();
        assert_eq!(m.identity.uri(), "molt://prod/se/se-1");
        let a = common::tls::TlsMaterial::load(
            &d.path().join("ca.pem"),
            &d.path().join("admin.pem"),
            &d.path().join("admin.key"),
        )
        .unwrap();
        assert_eq!(a.identity.role, Role::Admin);
        assert!(fs::read_to_string(d.path().join("admin.token")).unwrap().trim().len() == 64);
        assert!(init(d.path(), "prod", &nodes).is_err(), "a second init must not overwrite the CA");
    }

    #[test]
    fn node_specs_parse_strictly() {
        assert!("c1=controller@h".parse::<NodeSpec>().is_ok());
        for bad in ["c1", "c1=controller", "c1=king@h", "c1=admin@h", "C1=se@h", "c1=se@"] {
            assert!(bad.parse::<NodeSpec>().is_err(), "{bad}");
        }
    }
}
