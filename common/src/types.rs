//! Small domain types that validate on construction.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Why a domain value could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// A node id must be 1-63 characters of `[a-z0-9-]`, starting alphanumeric.
    #[error("invalid node id {0:?}: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    NodeId(String),
    /// Unknown role.
    #[error("unknown role {0:?}: expected controller, se or admin")]
    Role(String),
    /// Unknown deployment kind.
    #[error("unknown deployment kind {0:?}: expected vm or docker")]
    Kind(String),
    /// Not a `MAJOR.MINOR.PATCH` version.
    #[error("invalid version {0:?}: expected MAJOR.MINOR.PATCH, for example 2.0.0")]
    Version(String),
    /// Not 64 hex digits.
    #[error("invalid sha256 {0:?}: expected 64 hexadecimal digits")]
    Digest(String),
}

/// The identity of a node in the cluster (`c1`, `se-g1-2`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "se-g1-1")]
pub struct NodeId(String);

impl NodeId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if ok { Ok(Self(s.to_owned())) } else { Err(ParseError::NodeId(s.to_owned())) }
    }
}

impl TryFrom<String> for NodeId {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a certificate (and so a peer) is allowed to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A controller node (leader or follower).
    Controller,
    /// A Service Engine.
    #[serde(rename = "se")]
    ServiceEngine,
    /// The operator's client certificate.
    Admin,
    /// A read-only operator's client certificate (`molt pki token --role read-only`).
    #[serde(rename = "read-only")]
    ReadOnly,
}

impl Role {
    /// The role's name as certificates, configs and the wire spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::ServiceEngine => "se",
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

impl FromStr for Role {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "controller" => Ok(Role::Controller),
            "se" => Ok(Role::ServiceEngine),
            "admin" => Ok(Role::Admin),
            "read-only" => Ok(Role::ReadOnly),
            _ => Err(ParseError::Role(s.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a node is deployed; a package is built for exactly one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentKind {
    /// A virtual machine: `controller.pkg`.
    #[default]
    Vm,
    /// A container host: `controller_docker.tgz`.
    Docker,
}

impl DeploymentKind {
    /// The kind's name as configs and manifests spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Vm => "vm",
            DeploymentKind::Docker => "docker",
        }
    }

    /// The conventional file name of a package of this kind.
    pub fn package_file_name(self) -> &'static str {
        match self {
            DeploymentKind::Vm => "controller.pkg",
            DeploymentKind::Docker => "controller_docker.tgz",
        }
    }
}

impl FromStr for DeploymentKind {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vm" => Ok(DeploymentKind::Vm),
            "docker" => Ok(DeploymentKind::Docker),
            _ => Err(ParseError::Kind(s.to_owned())),
        }
    }
}

impl fmt::Display for DeploymentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `MAJOR.MINOR.PATCH` software version, ordered numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl FromStr for Version {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::Version(s.to_owned());
        let mut parts = s.split('.');
        let mut next = || -> Result<u32, ParseError> {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            p.parse().map_err(|_| err())
        };
        let v = Version { major: next()?, minor: next()?, patch: next()? };
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(v)
    }
}

impl TryFrom<String> for Version {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.to_string()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A SHA-256 digest, shown as 64 lowercase hex digits (as `sha256sum` prints it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Wraps raw digest bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(data).into())
    }

    /// The lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for logs and messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl FromStr for Sha256Digest {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut b).is_err() {
            return Err(ParseError::Digest(s.to_owned()));
        }
        Ok(Self(b))
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> String {
        d.to_hex()
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.short())
    }
}

/// Random bytes as hex, for boot ids, tokens and command ids.
pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut buf).expect("the OS random source failed");
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically_and_reject_junk() {
        let v: Version = "1.10.0".parse().unwrap();
        assert!(v > "1.9.3".parse().unwrap());
        assert_eq!(v.to_string(), "1.10.0");
        for bad in ["1.0", "1.0.0.0", "a.b.c", "1..0", "", "1.0.-1"] {
            assert!(bad.parse::<Version>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn node_ids_are_restricted() {
        assert!("se-g1-2".parse::<NodeId>().is_ok());
        for bad in ["", "-x", "A", "a/b", "a..", &"x".repeat(64)] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn digest_round_trips_as_hex() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(d.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.to_hex().parse::<Sha256Digest>().unwrap(), d);
        assert!("xyz".parse::<Sha256Digest>().is_err());
    }
}

/// A size in IEC units, as operators read it: `4.0 KiB`, `169.8 MiB`,
/// `1.2 GiB` (bytes below 1 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iec(pub u64);

impl fmt::Display for Iec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i < UNITS.len() - 1 {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 { write!(f, "{} B", self.0) } else { write!(f, "{v:.1} {}", UNITS[i]) }
    }
}

#[cfg(test)]
mod iec_tests {
    use super::Iec;

    #[test]
    fn sizes_read_in_iec_units() {
        assert_eq!(Iec(0).to_string(), "0 B");
        assert_eq!(Iec(1023).to_string(), "1023 B");
        assert_eq!(Iec(4096).to_string(), "4.0 KiB");
        assert_eq!(Iec(178_072_786).to_string(), "169.8 MiB");
        assert_eq!(Iec(3 << 40).to_string(), "3.0 TiB");
    }
}

/// A version is a string in the API's schema.
impl utoipa::PartialSchema for Version {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .pattern(Some(r"^[0-9]+\.[0-9]+\.[0-9]+$"))
            .examples(["2.0.0"])
            .into()
    }
}

impl utoipa::ToSchema for Version {}
