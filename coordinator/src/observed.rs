//! What the leader sees of the cluster, as the coordinator reads it: built
//! from heartbeats by the driver (or by the simulation).

use std::collections::BTreeMap;

use common::{NodeId, Version, session::CommandState};

/// A node as its heartbeats show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Heartbeats arrive.
    pub up: bool,
    /// Version of its active slot.
    pub version: Version,
    /// Its agent's boot.
    pub boot_id: String,
    /// Its active slot is on trial.
    pub pending: bool,
    /// Version in its previous slot.
    pub previous: Option<Version>,
    /// Virtual services it serves (SEs).
    pub serving: Vec<String>,
    /// The services it was last told to serve, until it reports that
    /// placement done (placements apply in the order they arrive, so then
    /// every earlier one is applied too).
    pub placing: Option<Vec<String>>,
    /// Results of commands, by id, with the boot that reported each.
    pub results: BTreeMap<String, Reported>,
    /// Bytes of each image received (verified) so far, while staging it.
    pub received: BTreeMap<common::Sha256Digest, u64>,
}

/// A command's result as a node reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// Where it stands.
    pub state: CommandState,
    /// What it did, or why it failed.
    pub message: String,
    /// The boot of the agent that reported it.
    pub boot_id: String,
}

/// What the leader sees of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Nodes that have sent a heartbeat.
    pub nodes: BTreeMap<NodeId, Seen>,
    /// Why the operation's image cannot be served any more (it changed, or
    /// is gone from the leader's store), if so.
    pub image_unusable: Option<String>,
    /// What the traffic probes measured so far.
    pub probed: Option<crate::driver::Probed>,
}

impl Observed {
    pub(crate) fn up(&self, id: &NodeId) -> Option<&Seen> {
        self.nodes.get(id).filter(|s| s.up)
    }

    pub(crate) fn result(&self, id: &NodeId, command: &str) -> Option<&Reported> {
        self.nodes.get(id).and_then(|s| s.results.get(command))
    }
}

impl Seen {
    /// Whether it serves `name` for sure: it reports serving it and has no
    /// placement in flight (one that is would make the report stale).
    pub fn serves(&self, name: &str) -> bool {
        self.placing.is_none() && self.serving.iter().any(|s| s == name)
    }

    /// Whether the command `id` has settled (succeeded or failed) on it.
    pub fn settled(&self, id: &str) -> bool {
        self.results.get(id).is_some_and(|r| r.state != CommandState::Running)
    }
}
