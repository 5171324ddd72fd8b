//! The status of an operation as a view of its journal: nothing here is
//! stored, so what the operator sees is what the leader will act on.

use serde::Serialize;

use serde::Deserialize;

use crate::journal::{Cause, GroupState, Journal, Member, Operation, Outcome, Phase, Step, Task};

/// The overall state of the current (or last) operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// Nothing has run since the leader started.
    #[default]
    Idle,
    /// Checks running.
    Prechecking,
    /// Running.
    InProgress,
    /// Held by the operator (`molt upgrade pause`): what was in flight
    /// finishes, nothing new starts until `molt upgrade resume`.
    Paused,
    /// Finished.
    Completed,
    /// Stopped on an SE group failure, or in this leader's process.
    Suspended,
    /// Stopped and undone.
    Aborted,
}

impl OpState {
    /// Whether an operation runs (the configuration is read-only).
    pub fn is_running(self) -> bool {
        matches!(self, OpState::Prechecking | OpState::InProgress | OpState::Paused)
    }
}

/// The state of `j`: the one derivation the status shows and the
/// configuration's writability follows ([`crate::request::config_writable`]).
pub fn op_state(j: &Journal) -> OpState {
    match j.outcome {
        _ if j.is_running() && j.paused => OpState::Paused,
        _ if j.is_running() => OpState::InProgress,
        Some(Outcome::Completed) => OpState::Completed,
        Some(Outcome::Aborted) => OpState::Aborted,
        Some(Outcome::Suspended) | None => OpState::Suspended,
    }
}

/// Where a node stands in the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Nothing asked of it yet.
    Pending,
    /// In a step.
    Running,
    /// Its part done.
    Done,
    /// Failed.
    Failed,
    /// The operation ended before its part was done.
    Stopped,
}

impl NodeState {
    /// Its name in the status.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Running => "running",
            NodeState::Done => "done",
            NodeState::Failed => "failed",
            NodeState::Stopped => "stopped",
        }
    }
}

fn node_state(j: &Journal, n: &crate::journal::NodeOp) -> NodeState {
    match n.step {
        s if s.running_event().is_some() => NodeState::Running,
        Step::Failed if n.cause == Some(Cause::Stopped) => NodeState::Stopped,
        Step::Failed => NodeState::Failed,
        Step::Waiting if j.is_running() => NodeState::Pending,
        Step::Waiting => NodeState::Stopped,
        _ => NodeState::Done,
    }
}

/// One node's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLine {
    /// Its id.
    pub id: String,
    /// Controller, or its SE group.
    pub se_group: Option<String>,
    /// Its step (`waiting`, `applying`, `upgraded`, …).
    pub step: Step,
    /// The event it is running, if any.
    pub running: Option<Task>,
    /// Where it stands.
    pub state: NodeState,
    /// What happened to it.
    pub note: String,
}

/// One SE group's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupLine {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: GroupState,
    /// Its SEs done, in percent.
    pub progress: u8,
    /// Why it is suspended or rolled back.
    pub reason: String,
}

/// Where an operation is, or where it stopped, as the status shows it: the
/// journal's [`Phase`], with an ended operation shown at the phase it
/// stopped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShownPhase {
    /// Staging the image on every node.
    Distribute,
    /// The controllers' part.
    Controllers,
    /// The SE groups' part (and where a suspended upgrade stopped).
    ServiceEngines,
    /// Returning the controllers to the old version.
    Rollback,
    /// Returning SE groups to the old version.
    RollbackSeGroups,
    /// Aborted, and the controllers are back on the old version.
    RolledBack,
    /// Ended.
    Done,
}

impl ShownPhase {
    /// Its name in the status.
    pub fn name(self) -> &'static str {
        match self {
            ShownPhase::Distribute => "distribute",
            ShownPhase::Controllers => "controllers",
            ShownPhase::ServiceEngines => "service_engines",
            ShownPhase::Rollback => "rollback",
            ShownPhase::RollbackSeGroups => "rollback_se_groups",
            ShownPhase::RolledBack => "rolled_back",
            ShownPhase::Done => "done",
        }
    }
}

impl From<Phase> for ShownPhase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Distribute => ShownPhase::Distribute,
            Phase::Controllers => ShownPhase::Controllers,
            Phase::ServiceEngines => ShownPhase::ServiceEngines,
            Phase::RollbackControllers => ShownPhase::Rollback,
            Phase::RollbackSeGroups => ShownPhase::RollbackSeGroups,
            Phase::Done => ShownPhase::Done,
        }
    }
}

/// The operation as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    /// Which operation.
    pub operation: Operation,
    /// Where it stands.
    pub state: OpState,
    /// Where it is, or where it stopped.
    pub phase: ShownPhase,
    /// Percent; never goes down within an operation.
    pub progress: u8,
    /// From (for a group rollback: the version the groups leave).
    pub from_version: String,
    /// To.
    pub to_version: String,
    /// Why it failed, or what it left behind.
    pub reason: String,
    /// Every node.
    pub nodes: Vec<NodeLine>,
    /// Every SE group.
    pub se_groups: Vec<GroupLine>,
    /// SEs out of service now.
    pub drained: Vec<String>,
    /// SE groups still on the version the upgrade left (not selected, not
    /// started, rolled back): `molt upgrade segroup` moves them on.
    pub se_groups_behind: Vec<String>,
}

/// The view of `j`.
pub fn view(j: &Journal) -> View {
    let (from, to) = if j.operation.is_rollback() { (j.to, j.from) } else { (j.from, j.to) };
    let state = op_state(j);
    let rolled_back = j.nodes.values().any(|n| n.member == Member::Controller && n.step == Step::RolledBack);
    let phase = match (j.phase, j.outcome) {
        (Phase::Done, Some(Outcome::Suspended)) if j.operation.is_rollback() => ShownPhase::RollbackSeGroups,
        (Phase::Done, Some(Outcome::Suspended)) => ShownPhase::ServiceEngines,
        (Phase::Done, Some(Outcome::Aborted)) if rolled_back => ShownPhase::RolledBack,
        (p, _) => p.into(),
    };
    let se_groups = j
        .groups
        .iter()
        .map(|(name, g)| {
            let done = g
                .ses
                .iter()
                .filter(|s| {
                    j.nodes.get(*s).is_some_and(|n| matches!(n.step, Step::Upgraded | Step::Skipped | Step::RolledBack))
                })
                .count();
            let progress = if g.ses.is_empty() { 100 } else { (done * 100 / g.ses.len()) as u8 };
            let progress = if g.state == GroupState::Completed { 100 } else { progress };
            GroupLine { name: name.clone(), state: g.state, progress, reason: g.reason.clone() }
        })
        .collect();
    View {
        operation: j.operation,
        state,
        phase,
        progress: j.progress,
        from_version: from.to_string(),
        to_version: to.to_string(),
        reason: j.reason.clone(),
        nodes: j
            .nodes
            .iter()
            .map(|(id, n)| NodeLine {
                id: id.to_string(),
                se_group: match &n.member {
                    Member::ServiceEngine(g) => Some(g.clone()),
                    Member::Controller => None,
                },
                step: n.step,
                running: n.step.running_event(),
                state: node_state(j, n),
                note: n.note.clone(),
            })
            .collect(),
        se_groups,
        drained: j.drained_set().iter().map(|s| s.to_string()).collect(),
        se_groups_behind: if j.operation.is_rollback() || j.operation == Operation::Prestage {
            vec![]
        } else {
            j.groups
                .iter()
                .filter(|(_, g)| matches!(g.state, GroupState::NotStarted | GroupState::RolledBack))
                .map(|(n, _)| n.clone())
                .collect()
        },
    }
}

/// What a running operation waits for, and until when: each node that is
/// down while it stages, since when, and when the leader gives up on it
/// (`timeouts`: the waits under the cluster's rules, as the driver uses
/// them).
pub fn waiting(j: &Journal, now: crate::journal::Ms, timeouts: crate::core::Timeouts) -> Vec<String> {
    if !j.is_running() {
        return vec![];
    }
    let reform = timeouts.reform;
    j.nodes
        .iter()
        .filter(|(_, n)| n.step == Step::Staging)
        .filter_map(|(id, n)| {
            let since = n.down_since?;
            let down = now.saturating_sub(since);
            Some(format!(
                "waiting for {id}: down for {} s while staging (since {}); the leader gives up on it in {} s \
                 (reform_timeout_secs {}, a cluster setting)",
                down / 1000,
                clock(since),
                reform.saturating_sub(down).div_ceil(1000),
                reform / 1000
            ))
        })
        .collect()
}

/// A time of day, UTC, from milliseconds since the Unix epoch.
fn clock(ms: crate::journal::Ms) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, (s / 60) % 60, s % 60)
}

/// A past operation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// Which operation.
    pub operation: Operation,
    /// Its id, as its log lines carry it (`operation_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// Version before.
    pub from_version: String,
    /// Version of the image.
    pub to_version: String,
    /// How it ended.
    pub state: OpState,
    /// Started.
    pub started_at: f64,
    /// Ended.
    pub ended_at: Option<f64>,
    /// Why it failed, if it did.
    pub reason: String,
    /// The per-node times it measured (the next operation's ETA starts from them).
    #[serde(default)]
    pub timings: crate::eta::Timings,
}

/// The history line of an operation that ended.
pub fn history_entry(j: &Journal) -> HistoryEntry {
    let v = view(j);
    HistoryEntry {
        operation: v.operation,
        operation_id: Some(j.id.clone()),
        from_version: v.from_version,
        to_version: v.to_version,
        state: v.state,
        started_at: secs(j.started),
        ended_at: j.ended.map(secs),
        // Bounded: the history is replicated and kept.
        reason: common::convert::one_line(&j.reason, 4096),
        timings: crate::eta::measure(j),
    }
}

/// Seconds since the Unix epoch, to the millisecond.
pub fn secs(ms: crate::journal::Ms) -> f64 {
    ms as f64 / 1000.0
}

/// Serde for a status field that is absent while idle: `None` is the empty
/// string on the wire (as the contract's status shows it), `Some` the value.
pub mod empty_is_none {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

    /// `None` as `""`.
    pub fn serialize<T: Serialize, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => v.serialize(s),
            None => s.serialize_str(""),
        }
    }

    /// `""` as `None`.
    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if v.as_str() == Some("") {
            return Ok(None);
        }
        T::deserialize(v).map(Some).map_err(serde::de::Error::custom)
    }
}
