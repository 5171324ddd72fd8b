//! Node configuration: a TOML file deserialized strictly (unknown keys are
//! errors), then validated once into [`NodeSettings`], whose fields are typed
//! and complete. Nothing else in molt reads configuration files.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{DeploymentKind, NodeId, Role, identity::PeerIdentity};

/// The leader's relay fan-out when `node.toml` names none: chosen from
/// `bench_distribution`'s capped runs (README, "Distribution").
pub const DEFAULT_RELAY_FANOUT: usize = 1;

/// Why a node configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a missing key or a wrongly typed value.
    #[error("invalid config {path}: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// What the parser said, with the line.
        message: String,
    },
    /// The values parse but do not make a valid node.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// The file format (`node.toml`). Kept serializable so that `molt local up`
/// and the test harness write the same format operators do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfigFile {
    /// Cluster name; certificates must name the same cluster.
    pub cluster: String,
    /// This node's id.
    pub node_id: String,
    /// `controller` or `se`.
    pub role: String,
    /// Listen address, `IP:PORT` (port 8443 by convention).
    pub listen: String,
    /// Where the node keeps slots, staging, images and its store.
    pub data_dir: PathBuf,
    /// `vm` or `docker`.
    pub deployment: String,
    /// The controller that founds the controllers' raft group on the
    /// cluster's first start, and that agents dial first. Once the group
    /// exists any controller may lead: elections decide.
    pub leader: String,
    /// Milliseconds between heartbeats (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// The SE group of a Service Engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub se_group: Option<String>,
    /// Leader only: cap on image distribution bandwidth per transfer, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_rate_limit_bytes: Option<u64>,
    /// Seconds a node booted into an uncommitted version waits for the
    /// leader before it rolls itself back (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_revert_secs: Option<u64>,
    /// Controllers (any may lead; set it alike on all): seconds the
    /// controllers have to re-form on a new version (and each SE to rejoin)
    /// before the upgrade fails, and the longest a node may be down while
    /// it stages (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reform_timeout_secs: Option<u64>,
    /// Leader only: seconds an upload may go without a byte before it is
    /// ended and deleted (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_stall_secs: Option<u64>,
    /// Cap on the image bytes this node sends per second over all its
    /// streams (the leader's and a relay's), as its network would cap it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_limit_bytes: Option<u64>,
    /// Leader only: how many nodes the leader streams an image to itself,
    /// and how many each relay serves; the others fetch from a node that
    /// has it or is receiving it (default 4; 0: every node from the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_fanout: Option<usize>,
    /// Connection and stream limits; every field has a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsFile>,
    /// Certificate files.
    pub tls: TlsFiles,
    /// Leader only: the REST API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiFile>,
    /// Public keys (`signing.pub` files) whose signatures this node trusts;
    /// with any listed, only packages signed by one of them are staged or
    /// installed. Several can be listed, to rotate keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<PathBuf>,
    /// SEs: the programs an exec health gate may run on this node, by
    /// absolute path (none by default: exec gates fail here). A gate is set
    /// through the REST API; only the node's own configuration lets it run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_gate_programs: Vec<PathBuf>,
    /// How the agent writes its log lines on stderr: `text` (the default)
    /// or `json` (one object a line, with the spans it runs in:
    /// `operation_id`, `node`, `step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<crate::telemetry::LogFormat>,
    /// An OpenTelemetry collector (OTLP/gRPC, `http://HOST:4317`) that the
    /// agent exports its spans to: each operation's work, on every node, as
    /// one trace. None: spans are only in the log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Every controller of the cluster.
    pub controllers: Vec<ControllerEntry>,
    /// Controllers: every Service Engine of the cluster, with its address
    /// and SE group. The leader admits only these, only as configured here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_engines: Vec<ServiceEngineEntry>,
}

/// One `[[service_engines]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceEngineEntry {
    /// Node id (as in its certificate).
    pub id: String,
    /// Its listen address, `IP:PORT`.
    pub addr: String,
    /// Its SE group.
    pub se_group: String,
}

/// `[limits]`: what one agent accepts at once, and for how long.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Milliseconds a client has to finish the TLS handshake (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_ms: Option<u64>,
    /// Milliseconds a client has to send a request's headers, and the
    /// longest an HTTP/1.1 connection may idle between requests (default 15000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout_ms: Option<u64>,
    /// Open connections of cluster-certificate holders (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Open connections without a cluster certificate, after their
    /// handshake, in all (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_anonymous: Option<usize>,
    /// Connections in their TLS handshake at once (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_handshakes: Option<usize>,
    /// Connections in their TLS handshake at once from one source address (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_handshakes_per_ip: Option<usize>,
    /// Open connections per source address without a cluster certificate (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_anonymous_per_ip: Option<usize>,
    /// Leader: image streams one node may hold open (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_streams_per_node: Option<usize>,
    /// Leader: image streams it serves at once (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_streams_total: Option<usize>,
}

/// The validated limits (see [`LimitsFile`] for each one's meaning and default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// TLS handshake timeout.
    pub handshake_timeout: Duration,
    /// Request header (and HTTP/1.1 idle) timeout.
    pub header_timeout: Duration,
    /// Open connections of cluster-certificate holders.
    pub max_connections: usize,
    /// Open connections without a cluster certificate.
    pub max_anonymous: usize,
    /// Connections in their TLS handshake.
    pub max_handshakes: usize,
    /// Connections in their TLS handshake from one source address.
    pub max_handshakes_per_ip: usize,
    /// Open connections per source address without a cluster certificate.
    pub max_anonymous_per_ip: usize,
    /// Image streams per node.
    pub fetch_streams_per_node: usize,
    /// Image streams in all.
    pub fetch_streams_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_file(&LimitsFile::default()).expect("the defaults are valid")
    }
}

impl Limits {
    /// Validates `[limits]`, filling in defaults; the error names the field.
    pub fn from_file(f: &LimitsFile) -> Result<Self, String> {
        fn ms(name: &str, v: Option<u64>, default: u64) -> Result<Duration, String> {
            match v.unwrap_or(default) {
                v @ 100..=600_000 => Ok(Duration::from_millis(v)),
                v => Err(format!("limits.{name} {v}: must be between 100 and 600000")),
            }
        }
        fn count(name: &str, v: Option<usize>, default: usize, max: usize) -> Result<usize, String> {
            match v.unwrap_or(default) {
                v if (1..=max).contains(&v) => Ok(v),
                v => Err(format!("limits.{name} {v}: must be between 1 and {max}")),
            }
        }
        Ok(Self {
            handshake_timeout: ms("handshake_timeout_ms", f.handshake_timeout_ms, 10_000)?,
            header_timeout: ms("header_timeout_ms", f.header_timeout_ms, 15_000)?,
            max_connections: count("max_connections", f.max_connections, 4096, 1 << 20)?,
            max_anonymous: count("max_anonymous", f.max_anonymous, 1024, 1 << 20)?,
            max_handshakes: count("max_handshakes", f.max_handshakes, 1024, 1 << 20)?,
            max_handshakes_per_ip: count("max_handshakes_per_ip", f.max_handshakes_per_ip, 8, 1 << 20)?,
            max_anonymous_per_ip: count("max_anonymous_per_ip", f.max_anonymous_per_ip, 64, 1 << 20)?,
            fetch_streams_per_node: count("fetch_streams_per_node", f.fetch_streams_per_node, 8, 64)?,
            fetch_streams_total: count("fetch_streams_total", f.fetch_streams_total, 32, 4096)?,
        })
    }
}

/// The TLS files of a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// Revoked node ids and certificate serials, one a line (optional;
    /// re-read when it changes, checked at every handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<PathBuf>,
}

/// REST API settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    /// File holding the admin bearer token.
    pub token_file: PathBuf,
}

/// A controller's id and address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ControllerEntry {
    /// Controller node id.
    pub id: String,
    /// `IP:PORT` the controller listens on.
    pub addr: String,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Cluster name.
    pub cluster: String,
    /// This node.
    pub node_id: NodeId,
    /// Controller or Service Engine.
    pub role: Role,
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
    /// Deployment kind.
    pub deployment: DeploymentKind,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// SE group (Service Engines only).
    pub se_group: Option<String>,
    /// The founding controller, dialed first (elections decide who leads).
    pub leader: Controller,
    /// All controllers, the leader included.
    pub controllers: Vec<Controller>,
    /// TLS credentials, loaded and checked; re-read when the files change.
    pub tls: std::sync::Arc<crate::credentials::Credentials>,
    /// The admin token (leader only).
    pub api_token: Option<String>,
    /// Distribution bandwidth cap per transfer (leader only).
    pub fetch_rate_limit: Option<u64>,
    /// How long an uncommitted boot waits for the leader before rolling back.
    pub self_revert: Duration,
    /// How long nodes have to rejoin after an apply (leader only).
    pub reform_timeout: Duration,
    /// An upload that receives nothing for this long is ended and deleted.
    pub upload_stall: Duration,
    /// Cap on image bytes sent per second by this node, over all its streams.
    pub egress_limit: Option<u64>,
    /// Streams the leader serves an image on itself, and each relay (0: no relays).
    pub relay_fanout: usize,
    /// Connection and stream limits.
    pub limits: Limits,
    /// The cluster's Service Engines as configured (controllers only).
    pub service_engines: Vec<ServiceEngine>,
    /// Keys whose package signatures this node trusts (none: unchecked).
    pub trusted_keys: Vec<crate::package::signing::PublicKey>,
    /// Programs exec health gates may run on this node (absolute paths).
    pub allowed_gate_programs: Vec<PathBuf>,
}

/// A configured Service Engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEngine {
    /// Node id.
    pub id: NodeId,
    /// Listen address.
    pub addr: SocketAddr,
    /// SE group.
    pub se_group: String,
}

/// A controller as the other nodes reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddr,
}

impl NodeConfigFile {
    /// Reads and parses a config file (not validated: see [`NodeSettings::load`]).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })
    }

    /// The files the node reads besides its data dir: the TLS files, the
    /// revocation list and the API token. A container of the node mounts them.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.tls.ca.clone(), self.tls.cert.clone(), self.tls.key.clone()];
        files.extend(self.tls.revoked.clone());
        files.extend(self.api.as_ref().map(|a| a.token_file.clone()));
        files.extend(self.trusted_keys.iter().cloned());
        files
    }
}

impl NodeSettings {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::validate(NodeConfigFile::read(path)?, path)
    }

    /// Validates a parsed config; `path` only names the source in errors.
    pub fn validate(file: NodeConfigFile, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        let node_id: NodeId = file.node_id.parse().map_err(|e| invalid(format!("node_id: {e}")))?;
        let role: Role = file.role.parse().map_err(|e| invalid(format!("role: {e}")))?;
        if matches!(role, Role::Admin | Role::ReadOnly) {
            return Err(invalid(format!("role: a node is a controller or an se, not {role}")));
        }
        if file.cluster.is_empty() {
            return Err(invalid("cluster: must not be empty".into()));
        }
        let listen: SocketAddr = file
            .listen
            .parse()
            .map_err(|e| invalid(format!("listen {:?}: {e}; expected IP:PORT such as 127.0.0.11:8443", file.listen)))?;
        let deployment: DeploymentKind = file.deployment.parse().map_err(|e| invalid(format!("deployment: {e}")))?;
        let interval_ms = file.heartbeat_interval_ms.unwrap_or(1000);
        if !(50..=60_000).contains(&interval_ms) {
            return Err(invalid(format!("heartbeat_interval_ms {interval_ms}: must be between 50 and 60000")));
        }
        let se_group = match (role, file.se_group) {
            (Role::ServiceEngine, Some(g)) if !g.is_empty() => Some(g),
            (Role::ServiceEngine, _) => {
                return Err(invalid("se_group: a Service Engine must name its SE group".into()));
            }
            (_, Some(_)) => return Err(invalid("se_group: only a Service Engine belongs to an SE group".into())),
            (_, None) => None,
        };
        let mut controllers = Vec::new();
        for c in &file.controllers {
            let id: NodeId = c.id.parse().map_err(|e| invalid(format!("controllers: {e}")))?;
            let addr: SocketAddr =
                c.addr.parse().map_err(|e| invalid(format!("controllers: address {:?} of {id}: {e}", c.addr)))?;
            if controllers.iter().any(|x: &Controller| x.id == id) {
                return Err(invalid(format!("controllers: {id} is listed twice")));
            }
            controllers.push(Controller { id, addr });
        }
        if !matches!(controllers.len(), 1 | 3) {
            return Err(invalid(format!(
                "controllers: a cluster has 1 or 3 controllers, {} are listed",
                controllers.len()
            )));
        }
        let leader_id: NodeId = file.leader.parse().map_err(|e| invalid(format!("leader: {e}")))?;
        let leader = controllers
            .iter()
            .find(|c| c.id == leader_id)
            .cloned()
            .ok_or_else(|| invalid(format!("leader: {leader_id} is not one of the controllers")))?;
        if role == Role::Controller && !controllers.iter().any(|c| c.id == node_id) {
            return Err(invalid(format!("controllers: this controller ({node_id}) must be listed")));
        }
        let mut service_engines: Vec<ServiceEngine> = Vec::new();
        if role != Role::Controller && !file.service_engines.is_empty() {
            return Err(invalid("service_engines: only a controller lists the cluster's Service Engines".into()));
        }
        for e in &file.service_engines {
            let id: NodeId = e.id.parse().map_err(|err| invalid(format!("service_engines: {err}")))?;
            let addr: SocketAddr = e
                .addr
                .parse()
                .map_err(|err| invalid(format!("service_engines: address {:?} of {id}: {err}", e.addr)))?;
            if controllers.iter().any(|c| c.id == id) || service_engines.iter().any(|x| x.id == id) {
                return Err(invalid(format!("service_engines: {id} is listed twice")));
            }
            let group_ok = !e.se_group.is_empty()
                && e.se_group.len() <= 64
                && e.se_group.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !group_ok {
                return Err(invalid(format!(
                    "service_engines: SE group {:?} of {id}: use 1-64 letters, digits, '.', '_' or '-'",
                    e.se_group
                )));
            }
            service_engines.push(ServiceEngine { id, addr, se_group: e.se_group.clone() });
        }
        let tls = crate::credentials::Credentials::load(
            &file.tls.ca,
            &file.tls.cert,
            &file.tls.key,
            file.tls.revoked.as_deref(),
        )
        .map_err(|e| invalid(format!("tls: {e}")))?;
        let expected = PeerIdentity { cluster: file.cluster.clone(), role, node_id: node_id.clone() };
        if *tls.identity() != expected {
            return Err(invalid(format!(
                "tls: the certificate {} names {}, but this node is {}; use the certificate made for this node by `molt pki init`",
                file.tls.cert.display(),
                tls.identity(),
                expected
            )));
        }
        let tls = std::sync::Arc::new(tls);
        let secs = |name: &str, v: Option<u64>, default: u64| match v.unwrap_or(default) {
            s @ 5..=86_400 => Ok(Duration::from_secs(s)),
            s => Err(invalid(format!("{name} {s}: must be between 5 and 86400"))),
        };
        let api_token = match (&file.api, role == Role::Controller) {
            (Some(api), _) => {
                let t = std::fs::read_to_string(&api.token_file)
                    .map_err(|e| invalid(format!("api.token_file {}: {e}", api.token_file.display())))?;
                let t = t.trim().to_owned();
                if t.len() < 16 {
                    return Err(invalid(format!(
                        "api.token_file {}: the token is shorter than 16 characters",
                        api.token_file.display()
                    )));
                }
                Some(t)
            }
            (None, true) => {
                return Err(invalid(
                    "api.token_file: every controller may lead and serve the REST API, so each needs the admin token"
                        .into(),
                ));
            }
            (None, false) => None,
        };
        let trusted_keys = file
            .trusted_keys
            .iter()
            .map(|p| crate::package::signing::PublicKey::load(p).map_err(|e| invalid(format!("trusted_keys: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(p) = file.allowed_gate_programs.iter().find(|p| !p.is_absolute()) {
            return Err(invalid(format!("allowed_gate_programs: {} is not an absolute path", p.display())));
        }
        Ok(NodeSettings {
            trusted_keys,
            allowed_gate_programs: file.allowed_gate_programs.clone(),
            cluster: file.cluster,
            node_id,
            role,
            listen,
            data_dir: file.data_dir,
            deployment,
            heartbeat_interval: Duration::from_millis(interval_ms),
            se_group,
            leader,
            controllers,
            tls,
            api_token,
            fetch_rate_limit: file.fetch_rate_limit_bytes.filter(|&r| r > 0),
            egress_limit: file.egress_limit_bytes.filter(|&r| r > 0),
            relay_fanout: match file.relay_fanout.unwrap_or(DEFAULT_RELAY_FANOUT) {
                k @ 0..=64 => k,
                k => return Err(invalid(format!("relay_fanout {k}: must be between 0 (no relays) and 64"))),
            },
            self_revert: secs("self_revert_secs", file.self_revert_secs, 600)?,
            reform_timeout: secs("reform_timeout_secs", file.reform_timeout_secs, 300)?,
            service_engines,
            limits: Limits::from_file(&file.limits.clone().unwrap_or_default()).map_err(invalid)?,
            upload_stall: match file.upload_stall_secs.unwrap_or(60) {
                s @ 1..=3600 => Duration::from_secs(s),
                s => return Err(invalid(format!("upload_stall_secs {s}: must be between 1 and 3600"))),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "c"
node_id = "se-1"
role = "se"
listen = "127.0.0.21:8443"
data_dir = "/tmp/x"
deployment = "vm"
leader = "c1"
se_group = "g1"
[tls]
ca = "/nonexistent/ca.pem"
cert = "/nonexistent/se-1.pem"
key = "/nonexistent/se-1.key"
[[controllers]]
id = "c1"
addr = "127.0.0.11:8443"
"#;

    fn load(text: &str) -> Result<NodeSettings, ConfigError> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("node.toml");
        std::fs::write(&p, text).unwrap();
        NodeSettings::load(&p)
    }

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_reason() {
        assert!(err(&format!("colour = \"blue\"\n{GOOD}")).contains("unknown field `colour`"));
        assert!(err(&GOOD.replace("role = \"se\"", "role = \"king\"")).contains("unknown role"));
        assert!(err(&GOOD.replace("127.0.0.21:8443", "localhost")).contains("expected IP:PORT"));
        assert!(err(&GOOD.replace("se_group = \"g1\"\n", "")).contains("must name its SE group"));
        assert!(err(&GOOD.replace("leader = \"c1\"", "leader = \"c9\"")).contains("not one of the controllers"));
        assert!(err(&GOOD.replace("deployment = \"vm\"", "deployment = \"bare\"")).contains("vm or docker"));
        assert!(err(&GOOD.replace("cluster = \"c\"\n", "")).contains("missing field `cluster`"));
    }

    #[test]
    fn missing_files_are_named() {
        assert!(err(GOOD).contains("/nonexistent/ca.pem"), "{}", err(GOOD));
        let e = NodeSettings::load(Path::new("/nonexistent/node.toml")).unwrap_err().to_string();
        assert!(e.contains("cannot read config /nonexistent/node.toml"), "{e}");
    }
}
