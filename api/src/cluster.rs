//! The cluster as the leader sees it (`GET /api/cluster`) and the
//! controllers' consensus group (`GET /api/cluster/controllers`).

use common::{NodeId, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the cluster view says of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Liveness)]
pub enum NodeState {
    /// Heartbeating.
    Up,
    /// Not heard from.
    Down,
}

/// `GET /api/cluster`: the cluster as the leader sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterDoc {
    /// The cluster's name.
    pub cluster: String,
    /// The controller that leads (none while no leader is elected).
    pub leader: Option<String>,
    /// The leader's generation (0 on a controller that does not lead).
    pub generation: u64,
    /// The consensus group.
    pub controllers: Vec<MemberView>,
    /// Every node.
    pub nodes: Vec<NodeView>,
}

impl ClusterDoc {
    /// The node `id`, if the cluster has it.
    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.id.as_str() == id)
    }
}

/// A node as the REST API and operations see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// Node id.
    pub id: NodeId,
    /// Role.
    pub role: Role,
    /// Listen address.
    pub addr: String,
    /// Version of its active slot (empty if never heard from).
    pub version: String,
    /// Version its other slot holds, if any: what a rollback returns it to.
    pub previous_version: Option<String>,
    /// Liveness.
    pub state: NodeState,
    /// SE group.
    pub se_group: Option<String>,
    /// Deployment kind.
    pub deployment: Option<String>,
    /// Free disk in its data dir.
    pub disk_free_bytes: Option<u64>,
    /// Verified images it holds.
    pub staged: Vec<StagedView>,
    /// Transfers in progress.
    pub transfers: Vec<TransferView>,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: Option<u64>,
    /// Boot id of its agent.
    pub boot_id: Option<String>,
}

/// A staged image in the REST view.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StagedView {
    /// Version.
    pub version: String,
    /// Digest.
    pub sha256: String,
}

/// A transfer in the REST view.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    /// Digest.
    pub sha256: String,
    /// Bytes received.
    pub received: u64,
    /// Bytes in all.
    pub total: u64,
}

/// A controller in the group, as `molt cluster` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// Its node id.
    pub id: String,
    /// Its address.
    pub addr: String,
    /// Its part in the group.
    pub raft: RaftPart,
    /// Whether it leads.
    pub leader: bool,
}

/// A controller's part in the consensus group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RaftPart {
    /// It votes.
    Voter,
    /// It receives the log but does not vote (yet).
    Learner,
}

/// `GET /api/cluster/controllers`, and the answer to adding or removing one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Controllers {
    /// The consensus group.
    pub controllers: Vec<MemberView>,
}
