//! The leader's view of the cluster, built from heartbeats. A node is `up`
//! while its session is open and heartbeats arrive, `down` when its session
//! ends or it misses [`MISSED_BEATS`] intervals.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{
    NodeId, Role, Sha256Digest,
    config::NodeSettings,
    session::{CommandResult, Heartbeat, LeaderMessage},
};
use tokio::sync::mpsc;
use tracing::info;

pub use molt_api::cluster::{ClusterDoc, NodeState, NodeView, StagedView, TransferView};

/// Heartbeat intervals a node may miss before it is shown down.
pub const MISSED_BEATS: f64 = 2.5;

#[derive(Debug)]
struct Entry {
    role: Role,
    addr: String,
    /// The SE group from the configuration (heartbeats must agree), known
    /// before the node's first heartbeat.
    se_group: Option<String>,
    heartbeat: Option<Heartbeat>,
    last_seen: Option<Instant>,
    session: Option<(u64, SessionTx)>,
}

/// The way to a node's session. Boxed, so an idle session's channel
/// holds a block of 32 pointers rather than 32 messages.
pub type SessionTx = mpsc::Sender<Box<LeaderMessage>>;

/// The cluster view.
#[derive(Debug)]
pub struct ClusterView {
    nodes: Mutex<BTreeMap<NodeId, Entry>>,
    interval: Duration,
    next_session: std::sync::atomic::AtomicU64,
    /// The configuration's nodes: address and SE group, by id (one lookup
    /// per heartbeat, whatever the number of nodes).
    /// The address as a heartbeat spells it, so the check compares strings.
    members: HashMap<NodeId, (String, Option<String>)>,
}

/// A command could not be handed to a node.
#[derive(Debug, thiserror::Error)]
#[error("{0} has no open session with the leader")]
pub struct NotConnected(pub NodeId);

impl ClusterView {
    /// A view that knows the configured nodes from the start (shown down
    /// until they heartbeat).
    pub fn new(settings: &NodeSettings) -> Self {
        let entry = |role, addr: std::net::SocketAddr, se_group: Option<&String>| Entry {
            role,
            addr: addr.to_string(),
            se_group: se_group.cloned(),
            heartbeat: None,
            last_seen: None,
            session: None,
        };
        let nodes = settings
            .controllers
            .iter()
            .map(|c| (c.id.clone(), entry(Role::Controller, c.addr, None)))
            .chain(
                settings
                    .service_engines
                    .iter()
                    .map(|e| (e.id.clone(), entry(Role::ServiceEngine, e.addr, Some(&e.se_group)))),
            )
            .collect();
        let members = settings
            .controllers
            .iter()
            .map(|c| (c.id.clone(), (c.addr.to_string(), None)))
            .chain(
                settings.service_engines.iter().map(|e| (e.id.clone(), (e.addr.to_string(), Some(e.se_group.clone())))),
            )
            .collect();
        Self { nodes: Mutex::new(nodes), interval: settings.heartbeat_interval, next_session: 1.into(), members }
    }

    /// Whether the configuration admits `hb`'s node as it describes itself:
    /// a listed node, at its configured address, in its configured SE group.
    /// The configuration, not the heartbeat, is the source of truth.
    pub fn check_membership(&self, hb: &Heartbeat) -> Result<(), String> {
        let Some((addr, group)) = self.members.get(&hb.node_id).map(|(a, g)| (a, g.as_deref())) else {
            return Err(format!(
                "{} is not a node of this cluster's configuration; add it to [[service_engines]] in the leader's node.toml",
                hb.node_id
            ));
        };
        if hb.addr != *addr {
            return Err(format!(
                "{} claims address {}, but the cluster configuration has it at {addr}",
                hb.node_id, hb.addr
            ));
        }
        if hb.se_group.as_deref() != group {
            return Err(format!(
                "{} claims SE group {}, but the cluster configuration has {}",
                hb.node_id,
                hb.se_group.as_deref().unwrap_or("none"),
                group.unwrap_or("none")
            ));
        }
        Ok(())
    }

    /// A session opened: `hb` is its first heartbeat. Returns the session id.
    ///
    /// One live session per node id: while a node's session is open and its
    /// heartbeats are fresh, another session under the same id is refused
    /// (the running agent wins, so a stolen certificate cannot displace it).
    /// Once the old session closed or missed [`MISSED_BEATS`] intervals — a
    /// rebooted node's new session — the new one replaces it.
    pub fn open_session(&self, hb: Heartbeat, tx: SessionTx) -> Result<u64, String> {
        let id = self.next_session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let mut nodes = self.nodes.lock().expect("cluster lock");
        if let Some(e) = nodes.get(&hb.node_id)
            && self.state_of(e, now) == NodeState::Up
        {
            let running = e.heartbeat.as_ref().map(|h| h.boot_id.clone()).unwrap_or_default();
            return Err(format!(
                "{} already has a live session (agent boot {running}); a second one is refused until it ends",
                hb.node_id
            ));
        }
        let e = nodes.entry(hb.node_id.clone()).or_insert_with(|| Entry {
            role: hb.role,
            addr: hb.addr.clone(),
            se_group: hb.se_group.clone(),
            heartbeat: None,
            last_seen: None,
            session: None,
        });
        info!(node = %hb.node_id, version = %hb.version, boot = %hb.boot_id, "node joined");
        e.session = Some((id, tx));
        Self::apply(e, hb);
        Ok(id)
    }

    /// A heartbeat arrived on session `session`. True when it says
    /// something the upgrade's decisions read that the previous one did not
    /// (a command's state, a version, a boot, what it serves or holds):
    /// the driver is woken for it rather than seeing it at its next poll.
    /// A beat that only counts bytes received or disk space is not news.
    pub fn heartbeat(&self, session: u64, hb: Heartbeat) -> bool {
        let mut nodes = self.nodes.lock().expect("cluster lock");
        let Some(e) = nodes.get_mut(&hb.node_id) else { return false };
        if e.session.as_ref().is_none_or(|(id, _)| *id != session) {
            return false;
        }
        let news = e.heartbeat.as_ref().is_none_or(|old| {
            old.results != hb.results
                || old.version != hb.version
                || old.boot_id != hb.boot_id
                || old.pending != hb.pending
                || old.serving != hb.serving
                || old.staged != hb.staged
        });
        Self::apply(e, hb);
        news
    }

    fn apply(e: &mut Entry, hb: Heartbeat) {
        e.role = hb.role;
        e.addr = hb.addr.clone();
        e.heartbeat = Some(hb);
        e.last_seen = Some(Instant::now());
    }

    /// Session `session` of `node` ended.
    pub fn close_session(&self, node: &NodeId, session: u64) {
        let mut nodes = self.nodes.lock().expect("cluster lock");
        if let Some(e) = nodes.get_mut(node)
            && e.session.as_ref().is_some_and(|(id, _)| *id == session)
        {
            info!(%node, "node left");
            e.session = None;
        }
    }

    /// This controller stopped leading: every session closes (its agent
    /// redials and finds the new leader) and what the heartbeats said is
    /// forgotten, so a later term starts from fresh reports.
    pub fn close_all(&self) {
        let mut nodes = self.nodes.lock().expect("cluster lock");
        for e in nodes.values_mut() {
            e.session = None;
            e.heartbeat = None;
            e.last_seen = None;
        }
    }

    /// Sends a command down `node`'s session.
    pub fn send(&self, node: &NodeId, msg: LeaderMessage) -> Result<(), NotConnected> {
        let nodes = self.nodes.lock().expect("cluster lock");
        let tx = nodes.get(node).and_then(|e| e.session.as_ref()).map(|(_, tx)| tx.clone());
        drop(nodes);
        match tx {
            Some(tx) if tx.try_send(Box::new(msg)).is_ok() => Ok(()),
            _ => Err(NotConnected(node.clone())),
        }
    }

    fn state_of(&self, e: &Entry, now: Instant) -> NodeState {
        let fresh = e.last_seen.is_some_and(|t| now.duration_since(t) < self.interval.mul_f64(MISSED_BEATS));
        if e.session.is_some() && fresh { NodeState::Up } else { NodeState::Down }
    }

    /// `f` of every node that has reported, with its last heartbeat and
    /// whether it is up, under one lock and without copying the heartbeats.
    pub fn each_reported<T>(&self, mut f: impl FnMut(&NodeId, &Heartbeat, NodeState) -> T) -> Vec<T> {
        let now = Instant::now();
        let nodes = self.nodes.lock().expect("cluster lock");
        nodes.iter().filter_map(|(id, e)| Some(f(id, e.heartbeat.as_ref()?, self.state_of(e, now)))).collect()
    }

    /// The SEs by SE group.
    pub fn ses_by_group(&self) -> BTreeMap<String, Vec<String>> {
        let nodes = self.nodes.lock().expect("cluster lock");
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, e) in nodes.iter().filter(|(_, e)| e.role == Role::ServiceEngine) {
            let group = e.se_group.clone().or_else(|| e.heartbeat.as_ref().and_then(|h| h.se_group.clone()));
            out.entry(group.unwrap_or_default()).or_default().push(id.to_string());
        }
        out
    }

    /// The latest heartbeat of a node and whether it is up.
    pub fn node(&self, node: &NodeId) -> Option<(Option<Heartbeat>, NodeState)> {
        let nodes = self.nodes.lock().expect("cluster lock");
        nodes.get(node).map(|e| (e.heartbeat.clone(), self.state_of(e, Instant::now())))
    }

    /// The outcome of command `id` as `node` last reported it, with the
    /// boot id of the agent process that reported it.
    pub fn result_of(&self, node: &NodeId, id: &str) -> Option<(CommandResult, String)> {
        let nodes = self.nodes.lock().expect("cluster lock");
        let hb = nodes.get(node)?.heartbeat.as_ref()?;
        hb.results.iter().find(|r| r.id == id).map(|r| (r.clone(), hb.boot_id.clone()))
    }

    /// Whether `node` reports `sha` staged.
    pub fn has_staged(&self, node: &NodeId, sha: &Sha256Digest) -> bool {
        let nodes = self.nodes.lock().expect("cluster lock");
        nodes.get(node).and_then(|e| e.heartbeat.as_ref()).is_some_and(|h| h.staged.iter().any(|s| &s.sha256 == sha))
    }

    /// Every node, controllers first, then SEs, each by id.
    pub fn snapshot(&self) -> Vec<NodeView> {
        let now = Instant::now();
        let nodes = self.nodes.lock().expect("cluster lock");
        let mut out: Vec<NodeView> = nodes
            .iter()
            .map(|(id, e)| {
                let hb = e.heartbeat.as_ref();
                NodeView {
                    id: id.clone(),
                    role: e.role,
                    addr: e.addr.clone(),
                    version: hb.map(|h| h.version.to_string()).unwrap_or_default(),
                    previous_version: hb.and_then(|h| h.previous_version).map(|v| v.to_string()),
                    state: self.state_of(e, now),
                    se_group: e.se_group.clone().or_else(|| hb.and_then(|h| h.se_group.clone())),
                    deployment: hb.map(|h| h.deployment.to_string()),
                    disk_free_bytes: hb.map(|h| h.disk_free_bytes),
                    staged: hb
                        .map(|h| {
                            h.staged
                                .iter()
                                .map(|s| StagedView { version: s.version.to_string(), sha256: s.sha256.to_hex() })
                                .collect()
                        })
                        .unwrap_or_default(),
                    transfers: hb
                        .map(|h| {
                            h.transfers
                                .iter()
                                .map(|t| TransferView {
                                    sha256: t.sha256.to_hex(),
                                    received: t.received,
                                    total: t.total,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    heartbeat_age_ms: e.last_seen.map(|t| now.duration_since(t).as_millis() as u64),
                    boot_id: hb.map(|h| h.boot_id.clone()),
                }
            })
            .collect();
        out.sort_by_key(|n| (n.role != Role::Controller, n.id.clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use common::{DeploymentKind, session::Heartbeat};

    use super::*;

    fn settings(dir: &std::path::Path) -> NodeSettings {
        let bins = dir.join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        for b in ["controller-agent", "se-agent"] {
            std::fs::write(bins.join(b), b"x").unwrap();
        }
        let spec = molt::local::LocalSpec {
            groups: vec!["g1:active-active:1".parse().unwrap()],
            ..molt::local::LocalSpec::new(dir.join("c"), bins, [127, 9, 9])
        };
        molt::local::prepare(&spec).unwrap();
        NodeSettings::load(&dir.join("c/nodes/c1/node.toml")).unwrap()
    }

    fn hb(id: &str) -> Heartbeat {
        Heartbeat {
            node_id: id.parse().unwrap(),
            role: Role::ServiceEngine,
            version: "1.0.0".parse().unwrap(),
            boot_id: "b1".into(),
            deployment: DeploymentKind::Vm,
            se_group: Some("g1".into()),
            addr: "127.9.9.21:8443".into(),
            disk_free_bytes: 1,
            staged: vec![],
            transfers: vec![],
            results: vec![],
            seq: 0,
            pending: false,
            previous_version: None,
            serving: vec![],
        }
    }

    #[test]
    fn a_silent_node_is_down_after_missed_beats_even_with_its_session_open() {
        let d = tempfile::tempdir().unwrap();
        let view = ClusterView::new(&settings(d.path()));
        let (tx, _rx) = mpsc::channel(1);
        let id: NodeId = "g1-se1".parse().unwrap();
        view.open_session(hb("g1-se1"), tx).unwrap();
        let nodes = view.nodes.lock().unwrap();
        let e = nodes.get(&id).unwrap();
        let seen = e.last_seen.unwrap();
        assert_eq!(view.state_of(e, seen + Duration::from_millis(2400)), NodeState::Up);
        assert_eq!(view.state_of(e, seen + Duration::from_millis(2600)), NodeState::Down, "down within 3 intervals");
    }

    #[test]
    fn a_closed_session_is_down_at_once_and_stale_sessions_do_not_count() {
        let d = tempfile::tempdir().unwrap();
        let view = ClusterView::new(&settings(d.path()));
        let id: NodeId = "g1-se1".parse().unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let old = view.open_session(hb("g1-se1"), tx.clone()).unwrap();
        // While the first session is live, a second one under the same id is refused.
        let err = view.open_session(hb("g1-se1"), tx.clone()).unwrap_err();
        assert!(err.contains("already has a live session"), "{err}");
        // Once it missed its heartbeats (a rebooted node), the new session replaces it.
        view.nodes.lock().unwrap().get_mut(&id).unwrap().last_seen = Some(Instant::now() - Duration::from_secs(5));
        let new = view.open_session(hb("g1-se1"), tx).unwrap();
        view.close_session(&id, old); // the old session ending must not take the node down
        assert_eq!(view.node(&id).unwrap().1, NodeState::Up);
        view.close_session(&id, new);
        assert_eq!(view.node(&id).unwrap().1, NodeState::Down);
        // The configured controller that never connected is listed, down.
        let snap = view.snapshot();
        assert_eq!(snap[0].id.as_str(), "c1");
        assert_eq!(snap[0].state, NodeState::Down);
    }

    #[test]
    fn the_configuration_decides_who_joins_where_and_in_which_group() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path());
        let se = s.service_engines[0].clone();
        let mut ok = hb(se.id.as_str());
        ok.addr = se.addr.to_string();
        ok.se_group = Some(se.se_group.clone());
        let view = ClusterView::new(&s);
        view.check_membership(&ok).unwrap();
        let mut moved = ok.clone();
        moved.addr = "127.0.0.1:8443".into();
        assert!(view.check_membership(&moved).unwrap_err().contains("configuration has it at"));
        let mut regrouped = ok.clone();
        regrouped.se_group = Some("g2".into());
        assert!(view.check_membership(&regrouped).unwrap_err().contains("claims SE group g2"));
        let stranger = hb("g1-se9");
        assert!(view.check_membership(&stranger).unwrap_err().contains("[[service_engines]]"));
        // Configured SEs are listed from the start, down until they heartbeat.
        let listed = view.snapshot();
        assert!(
            listed
                .iter()
                .any(|n| n.id == se.id && n.state == NodeState::Down && n.se_group.as_ref() == Some(&se.se_group)),
            "a configured SE is listed down, in its group, before it heartbeats: {listed:?}"
        );
    }
}
