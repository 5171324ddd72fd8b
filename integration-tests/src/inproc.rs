//! The in-process cluster.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use agent_core::NodeHandle;
use common::config::NodeSettings;
use controller_agent::leader::LeaderState;
use molt::{
    client::{Api, ClusterFile, Connection},
    local::{self, GroupSpec, LocalSpec},
};
use serde_json::Value;

/// What to start.
#[derive(Debug, Clone)]
pub struct Builder {
    controllers: usize,
    groups: Vec<GroupSpec>,
    heartbeat_ms: u64,
    fetch_rate_limit: Option<u64>,
    egress_limit: Option<u64>,
    relay_fanout: Option<usize>,
    docker_nodes: Vec<String>,
    small_disks: Vec<(String, u64)>,
    limits: Vec<(String, String)>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            controllers: 1,
            groups: vec![],
            heartbeat_ms: 200,
            fetch_rate_limit: None,
            egress_limit: None,
            relay_fanout: None,
            docker_nodes: vec![],
            small_disks: vec![],
            limits: vec![],
        }
    }
}

impl Builder {
    /// 1 or 3 controllers.
    pub fn controllers(mut self, n: usize) -> Self {
        self.controllers = n;
        self
    }
    /// Adds an SE group `name` of `count` SEs.
    pub fn group(mut self, name: &str, ha: &str, count: usize) -> Self {
        self.groups.push(GroupSpec { name: name.into(), ha: ha.into(), count });
        self
    }
    /// Heartbeat interval.
    pub fn heartbeat_ms(mut self, ms: u64) -> Self {
        self.heartbeat_ms = ms;
        self
    }
    /// Caps distribution bandwidth (bytes/s per transfer).
    pub fn fetch_rate_limit(mut self, bytes_per_sec: u64) -> Self {
        self.fetch_rate_limit = Some(bytes_per_sec);
        self
    }
    /// Caps what every node sends of an image (bytes/s over all its streams).
    pub fn egress_limit(mut self, bytes_per_sec: u64) -> Self {
        self.egress_limit = Some(bytes_per_sec);
        self
    }
    /// The leader's relay fan-out (0: no relays).
    pub fn relay_fanout(mut self, k: usize) -> Self {
        self.relay_fanout = Some(k);
        self
    }
    /// Deploys node `id` as `docker` instead of `vm`.
    pub fn docker(mut self, id: &str) -> Self {
        self.docker_nodes.push(id.into());
        self
    }
    /// Gives node `id` a data dir on a tmpfs of `bytes` (needs root).
    pub fn small_disk(mut self, id: &str, bytes: u64) -> Self {
        self.small_disks.push((id.into(), bytes));
        self
    }
    /// Sets node `id`'s `[limits]` table (TOML lines such as `max_connections = 8`).
    pub fn limits(mut self, id: &str, lines: &str) -> Self {
        self.limits.push((id.into(), lines.into()));
        self
    }
    /// Starts the cluster and waits until every node heartbeats.
    pub async fn start(self) -> TestCluster {
        TestCluster::start(self).await
    }
}

struct Running {
    handle: NodeHandle,
    leader: Option<Arc<LeaderState>>,
}

/// An in-process cluster.
pub struct TestCluster {
    /// Its files (cluster dir layout of `molt local`).
    pub dir: tempfile::TempDir,
    /// `cluster.json`.
    pub file: ClusterFile,
    running: BTreeMap<String, Running>,
    mounts: Vec<PathBuf>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster").field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

impl TestCluster {
    /// A builder.
    pub fn builder() -> Builder {
        Builder::default()
    }

    async fn start(b: Builder) -> Self {
        common::tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let bins = dir.path().join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        for name in ["controller-agent", "se-agent"] {
            std::fs::write(bins.join(name), b"in-process test node").unwrap();
        }
        let spec = LocalSpec {
            controllers: b.controllers,
            groups: b.groups,
            heartbeat_ms: b.heartbeat_ms,
            fetch_rate_limit: b.fetch_rate_limit,
            egress_limit: b.egress_limit,
            relay_fanout: b.relay_fanout,
            ..LocalSpec::new(dir.path().join("cluster"), bins, crate::unique_subnet(1))
        };
        std::fs::create_dir_all(&spec.dir).unwrap();
        let file = local::prepare(&spec).unwrap();
        for id in &b.docker_nodes {
            let p = spec.dir.join("nodes").join(id).join("node.toml");
            let t = std::fs::read_to_string(&p).unwrap().replace("deployment = \"vm\"", "deployment = \"docker\"");
            std::fs::write(p, t).unwrap();
        }
        for (id, lines) in &b.limits {
            let p = spec.dir.join("nodes").join(id).join("node.toml");
            let t = std::fs::read_to_string(&p).unwrap();
            std::fs::write(p, format!("{t}\n[limits]\n{lines}\n")).unwrap();
        }
        let mut mounts = vec![];
        for (id, bytes) in &b.small_disks {
            mounts.push(small_disk(&spec.dir, id, *bytes));
        }
        let mut c = TestCluster { dir, file, running: BTreeMap::new(), mounts };
        let ids: Vec<String> = c.file.nodes.iter().map(|n| n.id.clone()).collect();
        for id in &ids {
            c.start_node(id).await;
        }
        c.wait_all_up().await;
        c
    }

    /// The cluster dir.
    pub fn cluster_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    /// A node's config file.
    pub fn config_path(&self, id: &str) -> PathBuf {
        self.cluster_dir().join("nodes").join(id).join("node.toml")
    }

    /// A node's data dir.
    pub fn data_dir(&self, id: &str) -> PathBuf {
        self.settings(id).data_dir
    }

    /// A node's validated settings.
    pub fn settings(&self, id: &str) -> NodeSettings {
        NodeSettings::load(&self.config_path(id)).unwrap()
    }

    /// Starts (or restarts) node `id` from its data dir.
    pub async fn start_node(&mut self, id: &str) {
        assert!(!self.running.contains_key(id), "{id} is already running");
        let settings = self.settings(id);
        let running = match settings.role {
            common::Role::Controller => {
                let (handle, leader) =
                    controller_agent::start(settings, Arc::new(agent_core::reboot::NoReboot)).await.unwrap();
                Running { handle, leader: Some(leader) }
            }
            _ => Running {
                handle: se_agent::start(settings, Arc::new(agent_core::reboot::NoReboot)).await.unwrap(),
                leader: None,
            },
        };
        self.running.insert(id.to_owned(), running);
    }

    /// Stops node `id` at once: every task and connection of it ends.
    pub async fn stop_node(&mut self, id: &str) {
        let r = self.running.remove(id).unwrap_or_else(|| panic!("{id} is not running"));
        r.handle.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.handle.task).await;
    }

    /// The leading controller's state (c1's while none leads yet).
    pub fn leader(&self) -> Arc<LeaderState> {
        let states: Vec<Arc<LeaderState>> = self.running.values().filter_map(|r| r.leader.clone()).collect();
        states
            .iter()
            .find(|s| s.leading())
            .cloned()
            .or_else(|| self.running.get("c1").and_then(|r| r.leader.clone()))
            .expect("a controller is running")
    }

    /// A REST client with the admin token.
    pub fn api(&self) -> Api {
        Api::new(&Connection::resolve(Some(&self.cluster_dir()), None, None, None).unwrap()).unwrap()
    }

    /// `POST /api/cluster/upgrade/prestage` of `image_path` (such as
    /// `controller://upgrade_pkgs/controller.pkg`).
    pub async fn prestage(&self, image_path: &str) -> Result<Value, molt::client::ClientError> {
        self.api().post("/api/cluster/upgrade/prestage", &serde_json::json!({ "image_path": image_path })).await
    }

    /// `GET /api/cluster`'s node entry for `id`.
    pub async fn node_view(&self, id: &str) -> controller_agent::leader::cluster::NodeView {
        let doc = self.cluster().await;
        doc.node(id).cloned().unwrap_or_else(|| panic!("no node {id}: {doc:#?}"))
    }

    /// `GET /api/cluster`, typed as the leader serializes it.
    pub async fn cluster(&self) -> controller_agent::leader::cluster::ClusterDoc {
        serde_json::from_value(self.api().get("/api/cluster").await.unwrap()).unwrap()
    }

    /// Waits until every node heartbeats.
    pub async fn wait_all_up(&self) {
        local::wait_up(&self.cluster_dir(), Duration::from_secs(20)).await.unwrap();
    }

    /// The status, typed as the leader serializes it.
    pub async fn status(&self) -> controller_agent::leader::status::UpgradeStatus {
        let v = self.api().get("/api/cluster/upgrade/status").await.unwrap();
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("the status does not parse ({e}): {v:#}"))
    }

    /// Waits until the running operation ends; returns the final status.
    pub async fn wait_operation(&self, secs: u64) -> controller_agent::leader::status::UpgradeStatus {
        use controller_agent::leader::status::OpState;
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.status().await;
            if !matches!(v.state, OpState::InProgress | OpState::Prechecking) {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "operation still running after {secs} s: {v:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Files in a node's staging dir.
    pub fn staging_files(&self, id: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data_dir(id).join("staging"))
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<String> {
        self.file.nodes.iter().map(|n| n.id.clone()).collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.handle.shutdown.cancel();
        }
        for m in &self.mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Moves node `id`'s data dir onto a tmpfs of `bytes`; returns the mount point.
fn small_disk(cluster_dir: &std::path::Path, id: &str, bytes: u64) -> PathBuf {
    let node = cluster_dir.join("nodes").join(id);
    let mnt = node.join("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(format!("size={bytes}").as_str()),
    )
    .expect("mounting a tmpfs needs root");
    copy_dir(&node.join("data"), &mnt.join("data"));
    let toml = node.join("node.toml");
    let old = format!("data_dir = \"{}\"", node.join("data").display());
    let new = format!("data_dir = \"{}\"", mnt.join("data").display());
    let text = std::fs::read_to_string(&toml).unwrap();
    assert!(text.contains(&old), "data_dir line not found in {text}");
    std::fs::write(&toml, text.replace(&old, &new)).unwrap();
    mnt
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}
