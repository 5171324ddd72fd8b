//! Local clusters (`molt local up/down/power`): every node is a real agent
//! process on its own loopback address (port 8443), started through its
//! boot loader in a PID namespace of its own, so that `reboot(2)` in the node
//! ends only that namespace. A small supervisor process per node "powers the
//! node on" again when its init ends by a reboot, and leaves it off when it
//! was powered off or halted.
//!
//! ```text
//! DIR/cluster.json        the contract's cluster description
//! DIR/local.json          binaries and addresses of this local cluster
//! DIR/pki/                CA, node certificates, admin token
//! DIR/nodes/ID/node.toml  the node's config
//! DIR/nodes/ID/data/      its data dir (slots, staging, ...)
//! DIR/nodes/ID/agent.log  its console
//! DIR/nodes/ID/*.pid      supervisor and init process ids while powered on
//! ```

use std::{
    fs,
    io::Write,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};

use common::{
    DeploymentKind, Version,
    config::{ApiFile, ControllerEntry, NodeConfigFile, TlsFiles},
    slots::Slots,
};
use nix::{sys::signal::Signal, unistd::Pid};
use serde::{Deserialize, Serialize};

use crate::{
    client::{Api, ClusterFile, ClusterNode, Connection},
    pki::{self, NodeSpec},
};

/// Why a local cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// PKI.
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    /// Installing the first version.
    #[error("{0}")]
    Slots(#[from] common::slots::SlotError),
    /// Files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Nodes did not come up.
    #[error("{0}")]
    NotUp(String),
    /// Docker images.
    #[error("{0}")]
    Docker(#[from] crate::docker::DockerBuildError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io { path: path.to_owned(), source }
}

/// HA modes an SE group may have.
pub const HA_MODES: [&str; 3] = ["active-active", "n-plus-m", "active-standby"];

/// `NAME:HA:COUNT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// HA mode.
    pub ha: String,
    /// SEs in the group.
    pub count: usize,
}

impl FromStr for GroupSpec {
    type Err = LocalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| {
            LocalError::Invalid(format!("--groups {s:?}: {why}; expected NAME:HA:COUNT such as g1:active-active:2"))
        };
        let parts: Vec<_> = s.split(':').collect();
        let [name, ha, count] = parts[..] else { return Err(err("three fields are needed")) };
        if name.is_empty() || name.len() > 20 || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err(err("the name takes 1-20 lowercase letters and digits"));
        }
        if !HA_MODES.contains(&ha) {
            return Err(err("HA is one of active-active, n-plus-m, active-standby"));
        }
        let count: usize = count.parse().map_err(|_| err("COUNT is a number"))?;
        if !(1..=50).contains(&count) {
            return Err(err("COUNT is between 1 and 50"));
        }
        Ok(Self { name: name.into(), ha: ha.into(), count })
    }
}

/// What `molt local up` builds.
#[derive(Debug, Clone)]
pub struct LocalSpec {
    /// The cluster dir.
    pub dir: PathBuf,
    /// 1 or 3.
    pub controllers: usize,
    /// SE groups.
    pub groups: Vec<GroupSpec>,
    /// First version installed.
    pub version: Version,
    /// First three octets of the nodes' loopback addresses.
    pub subnet: [u8; 3],
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Distribution bandwidth cap per transfer.
    pub fetch_rate_limit: Option<u64>,
    /// Every node's cap on the image bytes it sends per second (a NIC's).
    pub egress_limit: Option<u64>,
    /// The leader's relay fan-out (none: the default, `common::config::DEFAULT_RELAY_FANOUT`).
    pub relay_fanout: Option<usize>,
    /// Where `controller-agent` and `se-agent` are.
    pub bin_dir: PathBuf,
    /// The port every node listens on.
    pub port: u16,
    /// Self-revert deadline of uncommitted boots.
    pub self_revert_secs: Option<u64>,
    /// The re-formation deadline (and how long a node may be down while
    /// staging), on every controller: any of them may lead.
    pub reform_timeout_secs: Option<u64>,
    /// How the nodes are deployed.
    pub deployment: LocalDeployment,
    /// The cluster's name (in certificates, and in container names `molt-CLUSTER-NODE`).
    pub cluster: String,
    /// Public keys every node trusts to sign packages (`trusted_keys`); none: unchecked.
    pub trusted_keys: Vec<PathBuf>,
    /// Programs exec health gates may run on every SE (`allowed_gate_programs`).
    pub allowed_gate_programs: Vec<PathBuf>,
    /// How every node writes its log (`log_format`).
    pub log_format: common::telemetry::LogFormat,
    /// The collector every node exports its spans to (`otlp_endpoint`).
    pub otlp_endpoint: Option<String>,
}

impl LocalSpec {
    /// A cluster in `dir` of one controller and no SE group, version 1.0.0,
    /// the agents from `bin_dir`, addresses under `subnet`, every other
    /// setting at its default (heartbeat 1 s, port 8443, vm nodes, cluster
    /// `local`, no caps, unsigned packages accepted).
    pub fn new(dir: PathBuf, bin_dir: PathBuf, subnet: [u8; 3]) -> Self {
        Self {
            dir,
            controllers: 1,
            groups: vec![],
            version: "1.0.0".parse().expect("a valid version"),
            subnet,
            heartbeat_ms: 1000,
            fetch_rate_limit: None,
            egress_limit: None,
            relay_fanout: None,
            bin_dir,
            port: common::DEFAULT_PORT,
            self_revert_secs: None,
            reform_timeout_secs: None,
            deployment: LocalDeployment::Vm,
            cluster: "local".into(),
            trusted_keys: vec![],
            allowed_gate_programs: vec![],
            log_format: common::telemetry::LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

/// How the nodes of a local cluster are deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDeployment {
    /// Every node is a process in its own PID namespace.
    Vm,
    /// Every node is a Docker container.
    Docker,
    /// Controllers on vm, SEs on docker.
    Mixed,
}

impl LocalDeployment {
    /// The deployment kind of a node of `role`.
    pub fn kind_of(self, role: &str) -> DeploymentKind {
        match (self, role) {
            (LocalDeployment::Vm, _) | (LocalDeployment::Mixed, "controller") => DeploymentKind::Vm,
            _ => DeploymentKind::Docker,
        }
    }
}

impl FromStr for LocalDeployment {
    type Err = LocalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vm" => Ok(Self::Vm),
            "docker" => Ok(Self::Docker),
            "mixed" => Ok(Self::Mixed),
            _ => Err(LocalError::Invalid(format!(
                "--deployment {s:?}: expected vm, docker or mixed (controllers on vm, SEs on docker)"
            ))),
        }
    }
}

/// Facts about a local cluster that `cluster.json` does not hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalFile {
    /// Where the boot loaders are.
    pub bin_dir: PathBuf,
}

/// The directory of the running `molt`, where its sibling binaries are.
pub fn own_bin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_owned)).unwrap_or_else(|| PathBuf::from("."))
}

fn node_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join("nodes").join(id)
}

/// Parses `127.0.0` into three octets; the first must be 127.
pub fn parse_subnet(s: &str) -> Result<[u8; 3], LocalError> {
    let err = || LocalError::Invalid(format!("--subnet {s:?}: expected three octets of 127.0.0.0/8, such as 127.0.0"));
    let o: Vec<u8> = s.split('.').map(|p| p.parse().map_err(|_| err())).collect::<Result<_, _>>()?;
    match o[..] {
        [127, b, c] => Ok([127, b, c]),
        _ => Err(err()),
    }
}

/// Writes the PKI, installs the first version in every node's slot `a`, and
/// writes the configs, `cluster.json` and `local.json`. Starts nothing.
/// Docker nodes need the images `molt-ROLE:VERSION` ([`up`] makes them).
pub fn prepare(spec: &LocalSpec) -> Result<ClusterFile, LocalError> {
    if !matches!(spec.controllers, 1 | 3) {
        return Err(LocalError::Invalid("--controllers is 1 or 3".into()));
    }
    for bin in ["controller-agent", "se-agent"] {
        if !spec.bin_dir.join(bin).is_file() {
            return Err(LocalError::Invalid(format!(
                "{} not found in {}: build with `cargo build --release` and run target/release/molt",
                bin,
                spec.bin_dir.display()
            )));
        }
    }
    let [a, b, c] = spec.subnet;
    let ip = |last: usize| format!("{a}.{b}.{c}.{last}");
    let mut nodes = Vec::new();
    for i in 1..=spec.controllers {
        nodes.push(ClusterNode {
            id: format!("c{i}"),
            role: "controller".into(),
            addr: format!("{}:{}", ip(10 + i), spec.port),
            data_dir: node_dir(&spec.dir, &format!("c{i}")).join("data"),
            se_group: None,
        });
    }
    let mut k = 0;
    for g in &spec.groups {
        for i in 1..=g.count {
            k += 1;
            if 20 + k > 254 {
                return Err(LocalError::Invalid("too many SEs for one /24 of loopback".into()));
            }
            let id = format!("{}-se{i}", g.name);
            nodes.push(ClusterNode {
                addr: format!("{}:{}", ip(20 + k), spec.port),
                data_dir: node_dir(&spec.dir, &id).join("data"),
                id,
                role: "se".into(),
                se_group: Some(g.name.clone()),
            });
        }
    }
    let pki_dir = spec.dir.join("pki");
    let specs: Vec<NodeSpec> = nodes
        .iter()
        .map(|n| format!("{}={}@{}", n.id, n.role, n.addr.rsplit_once(':').expect("ip:port").0).parse())
        .collect::<Result<_, _>>()?;
    let cluster = spec.cluster.as_str();
    if cluster.is_empty() || cluster.len() > 30 || !cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(LocalError::Invalid(format!(
            "--cluster {cluster:?}: 1-30 letters, digits and dashes (it names the containers molt-CLUSTER-NODE)"
        )));
    }
    pki::init(&pki_dir, cluster, &specs)?;
    // Checked once here, named by absolute path (docker nodes mount them).
    let mut trusted_keys = vec![];
    for k in &spec.trusted_keys {
        common::package::signing::PublicKey::load(k).map_err(|e| LocalError::Invalid(format!("--trusted-key {e}")))?;
        trusted_keys.push(fs::canonicalize(k).map_err(io(k))?);
    }
    let controllers: Vec<ControllerEntry> = nodes
        .iter()
        .filter(|n| n.role == "controller")
        .map(|n| ControllerEntry { id: n.id.clone(), addr: n.addr.clone() })
        .collect();
    let service_engines: Vec<common::config::ServiceEngineEntry> = nodes
        .iter()
        .filter_map(|n| {
            n.se_group.as_ref().map(|g| common::config::ServiceEngineEntry {
                id: n.id.clone(),
                addr: n.addr.clone(),
                se_group: g.clone(),
            })
        })
        .collect();
    for n in &nodes {
        let ndir = node_dir(&spec.dir, &n.id);
        fs::create_dir_all(&n.data_dir).map_err(io(&n.data_dir))?;
        let kind = spec.deployment.kind_of(&n.role);
        Slots::new(&n.data_dir).install_initial(spec.version, kind, &spec.bin_dir)?;
        let file = NodeConfigFile {
            cluster: cluster.into(),
            node_id: n.id.clone(),
            role: n.role.clone(),
            listen: n.addr.clone(),
            data_dir: n.data_dir.clone(),
            deployment: kind.as_str().into(),
            leader: "c1".into(),
            heartbeat_interval_ms: Some(spec.heartbeat_ms),
            se_group: n.se_group.clone(),
            fetch_rate_limit_bytes: spec.fetch_rate_limit.filter(|_| n.id == "c1"),
            self_revert_secs: spec.self_revert_secs,
            // A cluster-wide rule: set in the replicated configuration
            // once the cluster is up (`cluster_settings`), not per node.
            reform_timeout_secs: None,
            upload_stall_secs: None,
            egress_limit_bytes: spec.egress_limit,
            relay_fanout: spec.relay_fanout.filter(|_| n.role == "controller"),
            limits: None,
            tls: TlsFiles {
                ca: pki_dir.join("ca.pem"),
                cert: pki_dir.join(format!("{}.pem", n.id)),
                key: pki_dir.join(format!("{}.key", n.id)),
                revoked: Some(pki_dir.join("revoked.txt")),
            },
            // Every controller may lead, so every one serves the REST API.
            api: (n.role == "controller").then(|| ApiFile { token_file: pki_dir.join("admin.token") }),
            trusted_keys: trusted_keys.clone(),
            allowed_gate_programs: if n.role == "controller" { vec![] } else { spec.allowed_gate_programs.clone() },
            log_format: Some(spec.log_format).filter(|f| *f != common::telemetry::LogFormat::Text),
            otlp_endpoint: spec.otlp_endpoint.clone(),
            controllers: controllers.clone(),
            service_engines: if n.role == "controller" { service_engines.clone() } else { vec![] },
        };
        let toml = toml::to_string(&file).map_err(|e| LocalError::Invalid(e.to_string()))?;
        let path = ndir.join("node.toml");
        fs::write(&path, toml).map_err(io(&path))?;
    }
    let cf = ClusterFile {
        cluster: cluster.into(),
        leader_url: format!("https://{}", nodes[0].addr),
        controller_urls: controllers.iter().map(|c| format!("https://{}", c.addr)).collect(),
        ca: pki_dir.join("ca.pem"),
        token_file: pki_dir.join("admin.token"),
        nodes,
    };
    write_json(&spec.dir.join("cluster.json"), &cf)?;
    write_json(&spec.dir.join("local.json"), &LocalFile { bin_dir: spec.bin_dir.clone() })?;
    Ok(cf)
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<(), LocalError> {
    let data = serde_json::to_vec_pretty(v).expect("serializes");
    common::fsutil::atomic_write(path, &data).map_err(io(path))
}

fn read_pid(path: &Path) -> Option<Pid> {
    fs::read_to_string(path).ok()?.trim().parse().ok().map(Pid::from_raw)
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: Pid) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Whether a node of the local cluster at `dir` is powered on.
pub fn is_on(dir: &Path, id: &str) -> bool {
    let nd = node_dir(dir, id);
    [read_pid(&nd.join("supervisor.pid")), read_pid(&nd.join("init.pid"))].into_iter().flatten().any(alive)
}

fn known_node(dir: &Path, id: &str) -> Result<ClusterFile, LocalError> {
    let cf = ClusterFile::load(dir).map_err(|e| LocalError::Invalid(e.to_string()))?;
    if !cf.nodes.iter().any(|n| n.id == id) {
        let ids: Vec<_> = cf.nodes.iter().map(|n| n.id.as_str()).collect();
        return Err(LocalError::Invalid(format!("no node {id:?} in this cluster; nodes: {}", ids.join(", "))));
    }
    Ok(cf)
}

/// A local node's config.
fn node_config(dir: &Path, id: &str) -> Result<NodeConfigFile, LocalError> {
    NodeConfigFile::read(&node_dir(dir, id).join("node.toml")).map_err(|e| LocalError::Invalid(e.to_string()))
}

/// Powers a node on: starts its supervisor, detached from this process. A
/// vm node's is `molt local supervise`; a docker node's is its agent's
/// `boot --docker`, which runs the node's container.
pub fn power_on(dir: &Path, id: &str) -> Result<(), LocalError> {
    known_node(dir, id)?;
    if is_on(dir, id) {
        return Err(LocalError::Invalid(format!("{id} is already powered on")));
    }
    let nd = node_dir(dir, id);
    let log_path = nd.join("agent.log");
    let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
    let err_log = log.try_clone().map_err(io(&log_path))?;
    let config = node_config(dir, id)?;
    let mut cmd = if config.deployment == DeploymentKind::Docker.as_str() {
        let local = local_file(dir)?;
        let agent = local.bin_dir.join(if config.role == "controller" { "controller-agent" } else { "se-agent" });
        let mut c = Command::new(agent);
        c.args(["boot", "--docker", "--config"]).arg(nd.join("node.toml"));
        c
    } else {
        let mut c = Command::new(std::env::current_exe().map_err(io(Path::new("molt")))?);
        c.args(["local", "supervise", "--dir"]).arg(dir).arg(id);
        c
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        // Its own process group: a Ctrl-C in the operator's terminal must not cut the node's power.
        .process_group(0)
        .spawn()
        .map_err(io(&nd))?;
    fs::write(nd.join("supervisor.pid"), child.id().to_string()).map_err(io(&nd))?;
    Ok(())
}

fn local_file(dir: &Path) -> Result<LocalFile, LocalError> {
    let path = dir.join("local.json");
    serde_json::from_slice(&fs::read(&path).map_err(io(&path))?).map_err(|e| LocalError::Invalid(e.to_string()))
}

/// Cuts a node's power: its supervisor and every process of the node end at once.
pub fn power_off(dir: &Path, id: &str) -> Result<(), LocalError> {
    known_node(dir, id)?;
    let nd = node_dir(dir, id);
    let sup = read_pid(&nd.join("supervisor.pid"));
    let init = read_pid(&nd.join("init.pid"));
    for pid in [sup, init].into_iter().flatten() {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while [sup, init].into_iter().flatten().any(alive) {
        if Instant::now() > deadline {
            return Err(LocalError::Invalid(format!("{id} did not stop within 5 s")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_file(nd.join("supervisor.pid"));
    let _ = fs::remove_file(nd.join("init.pid"));
    let config = node_config(dir, id)?;
    if config.deployment == DeploymentKind::Docker.as_str() {
        crate::docker::remove_container(&molt_docker::container_name(&config.cluster, id))
            .map_err(|e| LocalError::Invalid(format!("{id}: {e}")))?;
    }
    Ok(())
}

/// Powers every node on and waits until all heartbeat.
pub async fn up(spec: &LocalSpec, timeout: Duration) -> Result<ClusterFile, LocalError> {
    let cf = if spec.dir.join("cluster.json").exists() {
        ClusterFile::load(&spec.dir).map_err(|e| LocalError::Invalid(e.to_string()))?
    } else {
        fs::create_dir_all(&spec.dir).map_err(io(&spec.dir))?;
        if spec.deployment != LocalDeployment::Vm {
            ensure_images(spec, false).await?;
        }
        prepare(spec)?
    };
    // Powered on again: the first version's images may have been pruned
    // (its docker slots hold no archive to load them from).
    let docker = cf.nodes.iter().any(|n| node_config(&spec.dir, &n.id).is_ok_and(|c| c.deployment == "docker"));
    if docker {
        ensure_images(spec, true).await?;
    }
    for n in &cf.nodes {
        if !is_on(&spec.dir, &n.id) {
            power_on(&spec.dir, &n.id)?;
        }
    }
    wait_up(&spec.dir, timeout).await?;
    register_groups(&spec.dir, &spec.groups).await?;
    cluster_settings(&spec.dir, spec.reform_timeout_secs).await?;
    Ok(cf)
}

/// Sets the cluster-wide rules in the replicated configuration, so that
/// whichever controller leads applies them.
async fn cluster_settings(dir: &Path, reform_timeout_secs: Option<u64>) -> Result<(), LocalError> {
    let Some(secs) = reform_timeout_secs else { return Ok(()) };
    let conn = Connection::resolve(Some(dir), None, None, None).map_err(|e| LocalError::Invalid(e.to_string()))?;
    let api = Api::new(&conn).map_err(|e| LocalError::Invalid(e.to_string()))?;
    let body = serde_json::json!({ "reform_timeout_secs": secs });
    api.put("/api/cluster/settings", &body)
        .await
        .map_err(|e| LocalError::Invalid(format!("cannot set reform_timeout_secs {secs}: {e}")))?;
    Ok(())
}

/// Makes the images `molt-ROLE:VERSION` of the first version from the
/// cluster's binaries; with `only_missing`, only if one of them is missing.
async fn ensure_images(spec: &LocalSpec, only_missing: bool) -> Result<(), LocalError> {
    let engine = molt_docker::Engine::connect().await.map_err(crate::docker::DockerBuildError::from)?;
    let mut present = true;
    for tag in crate::docker::tags(spec.version) {
        present &= engine.has_image(&tag).await.map_err(crate::docker::DockerBuildError::from)?;
    }
    if !(only_missing && present) {
        crate::docker::build_images(&engine, &spec.bin_dir, spec.version).await?;
    }
    Ok(())
}

/// Creates the SE groups of `--groups` in the leader's configuration
/// (existing ones are left as they are).
async fn register_groups(dir: &Path, groups: &[GroupSpec]) -> Result<(), LocalError> {
    let conn = Connection::resolve(Some(dir), None, None, None).map_err(|e| LocalError::Invalid(e.to_string()))?;
    let api = Api::new(&conn).map_err(|e| LocalError::Invalid(e.to_string()))?;
    for g in groups {
        let body = serde_json::json!({ "name": g.name, "ha_mode": g.ha });
        match api.post("/api/serviceenginegroup", &body).await {
            Ok(_) => {}
            Err(crate::client::ClientError::Api { status, .. }) if status == http::StatusCode::CONFLICT => {}
            Err(e) => return Err(LocalError::Invalid(format!("cannot create SE group {}: {e}", g.name))),
        }
    }
    Ok(())
}

/// Waits until every node of `dir` heartbeats to the leader.
pub async fn wait_up(dir: &Path, timeout: Duration) -> Result<(), LocalError> {
    let cf = ClusterFile::load(dir).map_err(|e| LocalError::Invalid(e.to_string()))?;
    let conn = Connection::resolve(Some(dir), None, None, None).map_err(|e| LocalError::Invalid(e.to_string()))?;
    let api = Api::new(&conn).map_err(|e| LocalError::Invalid(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    loop {
        let missing: Vec<String> = match api.get_as::<molt_api::ClusterDoc>("/api/cluster").await {
            Ok(v) => cf
                .nodes
                .iter()
                .filter(|n| !v.node(n.id.as_str()).is_some_and(|x| x.state == molt_api::cluster::NodeState::Up))
                .map(|n| n.id.clone())
                .collect(),
            Err(_) => cf.nodes.iter().map(|n| n.id.clone()).collect(),
        };
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs: Vec<_> =
                missing.iter().map(|id| node_dir(dir, id).join("agent.log").display().to_string()).collect();
            return Err(LocalError::NotUp(format!(
                "nodes not heartbeating after {} s: {}; see {}",
                timeout.as_secs(),
                missing.join(", "),
                logs.join(" ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Powers every node off. The cluster dir stays; `molt local up` on it
/// powers the same cluster on again.
pub fn down(dir: &Path) -> Result<(), LocalError> {
    let cf = ClusterFile::load(dir).map_err(|e| LocalError::Invalid(e.to_string()))?;
    for n in cf.nodes.iter().rev() {
        power_off(dir, &n.id)?;
    }
    Ok(())
}

/// The supervisor of one node (`molt local supervise`, started by
/// [`power_on`]). Boots the node in a new PID namespace; when the node's init
/// ends by SIGHUP — what `reboot(RB_AUTOBOOT)` does to a PID namespace —
/// boots it again; otherwise the node stays off.
pub fn supervise(dir: &Path, id: &str) -> Result<(), LocalError> {
    known_node(dir, id)?;
    let nd = node_dir(dir, id);
    let local = local_file(dir)?;
    fs::write(nd.join("supervisor.pid"), std::process::id().to_string()).map_err(io(&nd))?;
    let say = |msg: &str| {
        let _ = writeln!(std::io::stderr(), "[molt local] {id}: {msg}");
    };
    let mut quick_failures = 0;
    loop {
        let booted = Instant::now();
        // A fresh PID namespace for every power-on, made by a helper process:
        // a process can create a PID namespace for its children only once.
        // The cluster's own `molt` (not this process's image, which a rebuild may have replaced).
        let molt = [local.bin_dir.join("molt"), std::env::current_exe().unwrap_or_default()]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| LocalError::Invalid(format!("molt not found in {}", local.bin_dir.display())))?;
        let status = Command::new(&molt)
            .args(["local", "nsboot", "--dir"])
            .arg(dir)
            .arg(id)
            .stdin(Stdio::null())
            .status()
            .map_err(io(&molt))?;
        match status.code() {
            Some(NSBOOT_REBOOTED) => {
                quick_failures = 0;
                say("rebooted; powering on again");
            }
            Some(NSBOOT_CRASHED) => {
                // The node's software died: like a hardware watchdog, boot it
                // again (its boot loader counts attempts of an uncommitted
                // slot and falls back). Give up on a tight boot loop.
                quick_failures = if booted.elapsed() < Duration::from_secs(10) { quick_failures + 1 } else { 0 };
                if quick_failures > 10 {
                    say(&format!("failed to boot {quick_failures} times in a row; the node stays off"));
                    break;
                }
                say("crashed; watchdog reboot");
                std::thread::sleep(Duration::from_millis(300));
            }
            _ => {
                say(&format!("powered off ({status}); the node stays off until `molt local power on`"));
                break;
            }
        }
    }
    let _ = fs::remove_file(nd.join("init.pid"));
    let _ = fs::remove_file(nd.join("supervisor.pid"));
    Ok(())
}

/// `nsboot` exit code: the node rebooted (its init ended by SIGHUP).
pub const NSBOOT_REBOOTED: i32 = 10;
/// `nsboot` exit code: the node was powered off.
pub const NSBOOT_OFF: i32 = 11;
/// `nsboot` exit code: the node's init died otherwise (crash, failed boot).
pub const NSBOOT_CRASHED: i32 = 12;

/// One power-on of a node (`molt local nsboot`, run by the supervisor):
/// creates a PID namespace, starts the node's boot loader as its init,
/// waits for it, and says how it ended by the exit code.
pub fn nsboot(dir: &Path, id: &str) -> Result<i32, LocalError> {
    let nd = node_dir(dir, id);
    let local = local_file(dir)?;
    let config = nd.join("node.toml");
    let toml_text = fs::read_to_string(&config).map_err(io(&config))?;
    let role_bin = if toml_text.contains("role = \"controller\"") { "controller-agent" } else { "se-agent" };
    // Without its own PID namespace the node's reboot(2) would restart this machine: refuse.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| {
        LocalError::Invalid(format!("{id}: cannot create a PID namespace ({e}); molt local needs root"))
    })?;
    let mut child = Command::new(local.bin_dir.join(role_bin))
        .arg("boot")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        .map_err(io(&local.bin_dir.join(role_bin)))?;
    fs::write(nd.join("init.pid"), child.id().to_string()).map_err(io(&nd))?;
    let _ = writeln!(std::io::stderr(), "[molt local] {id}: powered on");
    let status = child.wait().map_err(io(&nd))?;
    Ok(match status.signal() {
        Some(s) if s == Signal::SIGHUP as i32 => NSBOOT_REBOOTED,
        Some(s) if s == Signal::SIGINT as i32 || s == Signal::SIGKILL as i32 => NSBOOT_OFF,
        _ => NSBOOT_CRASHED,
    })
}
