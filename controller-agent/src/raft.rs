//! Consensus among the controllers, on openraft: who leads, and the state
//! every controller holds a replica of — the configuration, the upgrade
//! journal and the history. The molt leader is the raft leader; its
//! generation (the fence every agent keeps) is derived from the raft term,
//! so a deposed leader's commands are refused.
//!
//! Raft traffic is gRPC (`molt.v1.Raft`) on the one port, mutual TLS,
//! controllers only ([`network`]). The log and the state machine are in one
//! redb file, fsynced before openraft is told a write happened
//! ([`storage`]).

pub mod network;
pub mod prevote;
pub mod storage;

use std::{collections::BTreeMap, io::Cursor, sync::Arc, time::Duration};

use common::{NodeId, config::NodeSettings};
use coordinator::{config::Config, journal::Journal};
use openraft::{Raft, ServerState, error::ClientWriteError, error::RaftError};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::watch;
use tracing::{info, warn};

use coordinator::view::HistoryEntry;
pub use molt_api::{
    AuditEntry,
    cluster::{MemberView, RaftPart},
};

/// A controller as raft knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its molt node id.
    pub id: String,
    /// `IP:PORT` of its one port.
    pub addr: String,
}

/// What every controller holds a replica of.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Replicated {
    /// The configuration; `None` until the first leader seeded it.
    pub config: Option<Config>,
    /// The current or last operation (migrated as it is read).
    #[serde(default, deserialize_with = "coordinator::journal::stored::option::deserialize")]
    pub journal: Option<Journal>,
    /// Operations that ended, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The images registered (uploaded to a controller), by
    /// `controller://` path: any controller that holds a verified copy
    /// (its upload, or what it staged) can serve the path.
    #[serde(default)]
    pub images: BTreeMap<String, common::Sha256Digest>,
    /// The operators' changes, oldest first (the last [`AUDIT_KEPT`]).
    #[serde(default)]
    pub audit: Vec<AuditEntry>,
}

/// How many audit entries every controller keeps.
pub const AUDIT_KEPT: usize = 1000;

/// How many finished operations every controller keeps in the history.
pub const HISTORY_KEPT: usize = 100;

/// The longest path an audit entry keeps.
pub const AUDIT_PATH_MAX: usize = 256;

/// The longest gates text an audit entry keeps.
pub const AUDIT_GATES_MAX: usize = 2048;

/// A replicated write. Each carries a whole value, so applying it twice
/// gives the same state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Change {
    /// The configuration, replaced.
    Config(Config),
    /// The journal, replaced; an operation that ends goes into the history.
    /// (A log entry of an older molt is migrated as it is read.)
    Journal(#[serde(deserialize_with = "coordinator::journal::stored::deserialize")] Journal),
    /// An image registered under its `controller://` path.
    Image {
        /// The path.
        path: String,
        /// Its digest.
        sha256: common::Sha256Digest,
    },
    /// An operator action, appended to the audit trail.
    Audit(AuditEntry),
    /// The state a controller had before it ran raft (its `store/*.json`):
    /// taken only if nothing was seeded yet.
    Seed(Replicated),
}

openraft::declare_raft_types!(
    /// molt's raft types.
    pub TypeConfig:
        D = Change,
        R = (),
        NodeId = u64,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The raft id of a controller: stable, derived from its node id.
pub fn raft_id(id: &NodeId) -> u64 {
    let h = sha2::Sha256::digest(id.as_str().as_bytes());
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

/// How long a write waits to be committed by a majority.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a replicated write did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Another controller leads (or none is known yet).
    #[error("this controller is not the leader{}", match .0 { Some(m) => format!("; {} leads at {}", m.id, m.addr), None => String::new() })]
    NotLeader(Option<Member>),
    /// A majority of the controllers did not confirm the write in time.
    #[error(
        "no quorum: a majority of the controllers did not confirm the write within {}s; check that at least two of three controllers are up and reach each other",
        WRITE_TIMEOUT.as_secs()
    )]
    NoQuorum,
    /// The change is not possible as asked (a membership change).
    #[error("{0}")]
    Refused(String),
    /// Raft stopped (a storage failure).
    #[error(
        "consensus stopped on this controller ({0}): its raft store could not be written; free or fix its disk, then restart it"
    )]
    Fatal(String),
}

impl WriteError {
    /// The HTTP status of a REST call this error stopped: 503 while there
    /// is no leader or quorum (try again, or at the leader), 500 otherwise.
    pub fn kind(&self) -> common::errors::ErrorKind {
        match self {
            WriteError::NotLeader(_) | WriteError::NoQuorum => common::errors::ErrorKind::Unavailable,
            WriteError::Refused(_) => common::errors::ErrorKind::Conflict,
            WriteError::Fatal(_) => common::errors::ErrorKind::Internal,
        }
    }
}

/// Why raft could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database.
    #[error("cannot open the raft store {path}: {message}")]
    Store {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// openraft refused to start.
    #[error("cannot start raft: {0}")]
    Raft(String),
}

/// This controller's raft node.
#[derive(Clone)]
pub struct Consensus {
    /// The openraft handle.
    pub raft: Raft<TypeConfig>,
    /// This controller's raft id.
    pub me: u64,
    replicated: watch::Receiver<Arc<Replicated>>,
    /// Set when raft stopped on its own (a storage failure).
    died: Arc<std::sync::OnceLock<String>>,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus").field("me", &self.me).finish_non_exhaustive()
    }
}

/// openraft's timing from the agents' heartbeat interval `hb`: raft
/// heartbeats every `hb`/4 (at least 50 ms; openraft gives each
/// replication request that long, so it is not made shorter: a leader
/// serving an image to 200 SEs on two cores answered late at `hb`/10 and
/// lost its term); the election timeout is 0.5 to 0.75 `hb` (at least 300
/// to 500 ms), each controller's drawn once.
///
/// A follower that holds a committed vote stands only after openraft's
/// leader lease (the maximum election timeout) *and* its own election
/// timeout have passed without the leader: 1.25 to 1.5 `hb`, so at the
/// default 1 s a lost leader is replaced in about 1.6 s. The same lease
/// makes the other controllers refuse a vote request while they hear from
/// their leader, and `prevote` keeps a controller that cannot reach a
/// majority from standing at all.
pub fn raft_config(settings: &NodeSettings) -> openraft::Config {
    let hb = settings.heartbeat_interval.as_millis() as u64;
    openraft::Config {
        cluster_name: settings.cluster.clone(),
        heartbeat_interval: (hb / 4).max(50),
        election_timeout_min: (hb / 2).max(300),
        election_timeout_max: (hb * 3 / 4).max(500),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    }
}

impl Consensus {
    /// Opens the store and starts raft. The controller named `leader` in
    /// `node.toml` founds the group with every listed controller when it
    /// has never been initialized; the others wait to be contacted.
    pub async fn start(settings: &Arc<NodeSettings>, mirror: crate::leader::store::Store) -> Result<Self, StartError> {
        let path = settings.data_dir.join("store/raft.redb");
        let db = storage::open(&path)
            .map_err(|e| StartError::Store { path: path.display().to_string(), message: e.to_string() })?;
        let sm = storage::StateMachine::open(db.clone(), mirror)
            .map_err(|e| StartError::Store { path: path.display().to_string(), message: e.to_string() })?;
        let replicated = sm.subscribe();
        let config = Arc::new(raft_config(settings).validate().map_err(|e| StartError::Raft(e.to_string()))?);
        let me = raft_id(&settings.node_id);
        let raft = Raft::new(me, config, network::Network::new(settings.clone()), storage::LogStore::new(db), sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let founder = settings.leader.id == settings.node_id;
        if founder && !raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
            let members: BTreeMap<u64, Member> = settings
                .controllers
                .iter()
                .map(|c| (raft_id(&c.id), Member { id: c.id.to_string(), addr: c.addr.to_string() }))
                .collect();
            info!(controllers = members.len(), "founding the controllers' raft group");
            if let Err(e) = raft.initialize(members).await {
                warn!(error = %e, "raft initialization refused");
            }
        }
        Ok(Self { raft, me, replicated, died: Default::default() })
    }

    /// The replicated state as last applied here.
    pub fn replicated(&self) -> Arc<Replicated> {
        self.replicated.borrow().clone()
    }

    /// Follows the replicated state.
    pub fn watch(&self) -> watch::Receiver<Arc<Replicated>> {
        self.replicated.clone()
    }

    /// The leader as this controller knows it, if any.
    pub fn leader(&self) -> Option<Member> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// The term, if this controller leads in it.
    pub fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        (m.state == ServerState::Leader && m.current_leader == Some(self.me)).then_some(m.current_term)
    }

    /// Waits until this leader's replica has applied every entry committed
    /// before its term (openraft commits a blank entry at the start of each
    /// term): what the driver and the API read from it is then current.
    pub async fn caught_up(&self) -> bool {
        let within = Duration::from_millis(self.raft.config().election_timeout_max * 2);
        matches!(tokio::time::timeout(within, self.raft.ensure_linearizable()).await, Ok(Ok(_)))
    }

    /// Whether a majority of the voters answers this leader now (always
    /// true for a group of one).
    pub async fn quorum_answers(&self) -> bool {
        let voters = self.raft.metrics().borrow().membership_config.membership().voter_ids().count();
        if voters <= 1 {
            return true;
        }
        let within = Duration::from_millis(self.raft.config().election_timeout_max * 2);
        matches!(tokio::time::timeout(within, self.raft.ensure_linearizable()).await, Ok(Ok(_)))
    }

    /// Why raft stopped on this controller, if it did (a storage failure:
    /// the disk is full or failing).
    pub fn fatal(&self) -> Option<String> {
        let state = self.raft.metrics().borrow().running_state.as_ref().err().map(|e| e.to_string());
        state.or_else(|| self.died.get().cloned())
    }

    /// Raft ended on its own: says why, from then on, to every writer.
    pub fn mark_died(&self, why: String) {
        let _ = self.died.set(why);
    }

    /// Replicates `change` and waits until it is applied here.
    pub async fn write(&self, change: Change) -> Result<(), WriteError> {
        if let Some(why) = self.fatal() {
            return Err(WriteError::Fatal(why));
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(change)).await {
            Err(_) => Err(self.fatal().map_or(WriteError::NoQuorum, WriteError::Fatal)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(write_error(e)),
        }
    }
}

impl Consensus {
    /// The group's members with their part.
    pub fn member_views(&self) -> Vec<MemberView> {
        let m = self.raft.metrics().borrow().clone();
        let voters: std::collections::BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let mut v: Vec<MemberView> = m
            .membership_config
            .nodes()
            .map(|(id, n)| MemberView {
                id: n.id.clone(),
                addr: n.addr.clone(),
                raft: if voters.contains(id) { RaftPart::Voter } else { RaftPart::Learner },
                leader: m.current_leader == Some(*id),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Adds a controller: first as a learner that catches up with the log,
    /// then as a voter. Only the leader can; each step is replicated.
    pub async fn add_controller(&self, id: &NodeId, addr: std::net::SocketAddr) -> Result<(), WriteError> {
        let rid = raft_id(id);
        let node = Member { id: id.to_string(), addr: addr.to_string() };
        let learner = tokio::time::timeout(Duration::from_secs(60), self.raft.add_learner(rid, node, true));
        match learner.await {
            Err(_) => return Err(WriteError::NoQuorum),
            Ok(r) => r.map_err(write_error)?,
        };
        let voters: std::collections::BTreeSet<u64> = [rid].into();
        let change = self.raft.change_membership(openraft::ChangeMembers::AddVoterIds(voters), false);
        match tokio::time::timeout(WRITE_TIMEOUT * 2, change).await {
            Err(_) => Err(WriteError::NoQuorum),
            Ok(r) => r.map(|_| ()).map_err(write_error),
        }
    }

    /// Removes a controller from the group (it no longer votes nor receives the log).
    pub async fn remove_controller(&self, id: &NodeId) -> Result<(), WriteError> {
        let voters: std::collections::BTreeSet<u64> = [raft_id(id)].into();
        let change = self.raft.change_membership(openraft::ChangeMembers::RemoveVoters(voters), false);
        match tokio::time::timeout(WRITE_TIMEOUT * 2, change).await {
            Err(_) => Err(WriteError::NoQuorum),
            Ok(r) => r.map(|_| ()).map_err(write_error),
        }
    }
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, Member>>) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => WriteError::NotLeader(f.leader_node),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => WriteError::Refused(e.to_string()),
        e => WriteError::Fatal(e.to_string()),
    }
}

/// The generation of a leader: the raft term in the high 32 bits, so a
/// deposed leader (an older term) is always below the new one, and this
/// controller's count of leader starts in the low ones, so a leader that
/// restarts within its term (openraft keeps a committed vote across a
/// restart) still takes a new generation. Above every generation a leader
/// took before raft (a small counter).
pub fn generation_of(term: u64, starts: u64) -> u64 {
    (term << 32) | (starts & 0xFFFF_FFFF)
}
