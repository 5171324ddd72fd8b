//! The typed journal: everything an operation needs to go on after the
//! leader restarts — the image, the versions, each node's and each group's
//! step, the SEs out of service, the configuration as it was. The driver
//! writes it before it carries out any action decided from it.

use std::collections::{BTreeMap, BTreeSet};

use common::{DeploymentKind, NodeId, Sha256Digest, Version};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Milliseconds on the driver's clock (Unix time for the real leader,
/// virtual time in the simulation).
pub type Ms = u64;

/// The journal's format. A journal of an older format (since 2) is
/// migrated when it is read ([`from_value`]); one of a newer format is
/// refused.
pub const FORMAT: u32 = 3;

/// What an SE failure does to its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionOnError {
    /// The group stops; the operation ends suspended, and can be resumed.
    Suspend,
    /// The SE stays on the old version; the group goes on.
    Continue,
    /// Every SE of the group returns to the old version.
    Rollback,
}

impl ActionOnError {
    /// The request's word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Continue => "continue",
            Self::Rollback => "rollback",
        }
    }

    /// Parses the request's word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "suspend" => Some(Self::Suspend),
            "continue" => Some(Self::Continue),
            "rollback" => Some(Self::Rollback),
            _ => None,
        }
    }
}

/// Which operation the journal describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `molt upgrade system`.
    Upgrade,
    /// `molt upgrade prestage`: distribution only.
    Prestage,
    /// `molt rollback segroup`, after an upgrade.
    SeGroupRollback,
    /// `molt upgrade segroup`: groups left behind, to the controllers' version.
    SeGroupUpgrade,
    /// `molt rollback system`: every SE group, then the controllers, back to the previous version.
    SystemRollback,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 5] = [
        Operation::Upgrade,
        Operation::Prestage,
        Operation::SeGroupRollback,
        Operation::SeGroupUpgrade,
        Operation::SystemRollback,
    ];

    /// As the status and history name it.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Upgrade => "upgrade",
            Operation::Prestage => "prestage",
            Operation::SeGroupRollback => "se_group_rollback",
            Operation::SeGroupUpgrade => "se_group_upgrade",
            Operation::SystemRollback => "system_rollback",
        }
    }

    /// Whether it returns nodes to the old version (it cannot be paused or aborted).
    pub fn is_rollback(self) -> bool {
        matches!(self, Operation::SeGroupRollback | Operation::SystemRollback)
    }
}

/// Where the operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Staging the image on every node.
    Distribute,
    /// Controllers: followers at once, then the leader; then commit.
    Controllers,
    /// SE groups in parallel, the SEs of a group one at a time.
    ServiceEngines,
    /// Returning the controllers to the old version (the upgrade failed).
    RollbackControllers,
    /// Returning SE groups to the old version (operator's request).
    RollbackSeGroups,
    /// Ended: see the outcome.
    Done,
}

impl Phase {
    /// As the status names it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Distribute => "distribute",
            Phase::Controllers => "controllers",
            Phase::ServiceEngines => "service_engines",
            Phase::RollbackControllers => "rollback",
            Phase::RollbackSeGroups => "rollback_se_groups",
            Phase::Done => "done",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every node it was asked to move moved (skipped SEs are named in the reason).
    Completed,
    /// Stopped on a failure; SE groups can be resumed or rolled back.
    Suspended,
    /// Undone: the controllers are back on the old version, the configuration restored.
    Aborted,
}

impl Outcome {
    /// As the status names it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Suspended => "suspended",
            Outcome::Aborted => "aborted",
        }
    }
}

/// The image of the operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `controller://` path in the leader's image store.
    pub path: String,
    /// SHA-256 of the package.
    pub sha256: Sha256Digest,
    /// Its size.
    pub size: u64,
    /// Its deployment kind.
    pub kind: DeploymentKind,
    /// The oldest version it upgrades from.
    pub min_compatible: Version,
    /// The trusted key that signed it, when the leader checks signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// A node's part in the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Nothing asked of it yet.
    Waiting,
    /// Fetching and verifying the image.
    Staging,
    /// Holds the image.
    Staged,
    /// (SE) the others of its group take over its virtual services.
    Draining,
    /// (SE) it stops serving, now that the others serve.
    Stopping,
    /// Installing the image into its inactive slot; then it reboots.
    Applying,
    /// Rebooting into the new version.
    Rejoining,
    /// (Controller) back on the new version, waiting for the others.
    Rejoined,
    /// Keeping the new version for good.
    Committing,
    /// (SE) serving its virtual services again, while the others still serve them.
    Restoring,
    /// (SE) the others let go of what they took over.
    Releasing,
    /// (SE) serving again on the new version: its group's health gates run.
    Gating,
    /// On the new version, committed, serving.
    Upgraded,
    /// Failed; the note says why.
    Failed,
    /// (SE) left on the old version (`action_on_error: continue`, or resumed with `skip_suspended`).
    Skipped,
    /// Returning to the previous slot; then it reboots.
    RollingBack,
    /// Rebooting into the old version.
    RollbackRejoining,
    /// Back on the old version.
    RolledBack,
}

impl Step {
    /// The event a node shows while in this step, if it is one that runs.
    pub fn running_event(self) -> Option<Task> {
        match self {
            Step::Staging => Some(Task::Stage),
            Step::Draining | Step::Stopping => Some(Task::Drain),
            Step::Applying => Some(Task::Apply),
            Step::Rejoining | Step::RollbackRejoining => Some(Task::Rejoin),
            Step::Committing => Some(Task::Commit),
            Step::Restoring | Step::Releasing => Some(Task::Restore),
            Step::Gating => Some(Task::Gate),
            Step::RollingBack => Some(Task::Rollback),
            Step::Waiting
            | Step::Staged
            | Step::Rejoined
            | Step::Upgraded
            | Step::Failed
            | Step::Skipped
            | Step::RolledBack => None,
        }
    }

    /// Steps of an SE that is being moved (its group has one at a time).
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            Step::Draining
                | Step::Stopping
                | Step::Applying
                | Step::Rejoining
                | Step::Committing
                | Step::Restoring
                | Step::Releasing
                | Step::Gating
                | Step::RollingBack
                | Step::RollbackRejoining
        )
    }
}

/// Whether a node is a controller or an SE of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Member {
    /// A controller.
    Controller,
    /// A Service Engine of this group.
    ServiceEngine(String),
}

/// One node in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOp {
    /// Controller or SE.
    pub member: Member,
    /// How it is deployed: which of the operation's images it gets.
    #[serde(default)]
    pub kind: DeploymentKind,
    /// Its step.
    pub step: Step,
    /// Bumped on every new attempt (resume, rollback), so commands get fresh ids.
    pub tries: u32,
    /// The boot of the agent that reported the apply (or rollback) done:
    /// any other boot is its reboot.
    pub by: Option<String>,
    /// When the current step gives up.
    pub deadline: Option<Ms>,
    /// (SE) it is being returned to the old version.
    pub rollback: bool,
    /// Times it came back on the old version and was applied again.
    #[serde(default)]
    pub fell_back: u32,
    /// What happened (a failure's reason).
    pub note: String,
    /// Why its step ended without doing what it does, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// Its steps so far, as the status lists them.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Since when the leader has seen it down while it stages: the leader
    /// gives up on it a re-formation deadline later (whichever controller
    /// leads by then: it is in the replicated journal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since: Option<Ms>,
}

impl NodeOp {
    /// A node at the start of an operation.
    pub fn new(member: Member) -> Self {
        Self {
            member,
            kind: DeploymentKind::Vm,
            step: Step::Waiting,
            tries: 0,
            by: None,
            deadline: None,
            rollback: false,
            fell_back: 0,
            note: String::new(),
            cause: None,
            events: vec![],
            down_since: None,
        }
    }
}

/// One step of a node's part, as the status lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What it does.
    pub task: Task,
    /// Where it stands.
    pub status: EventStatus,
    /// When it started.
    pub start: Ms,
    /// When it ended.
    pub end: Option<Ms>,
    /// What happened.
    pub message: String,
}

/// What a node's event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Fetching and verifying the image.
    Stage,
    /// (SE) its virtual services move to the others.
    Drain,
    /// Installing into the inactive slot.
    Apply,
    /// Rebooting and coming back.
    Rejoin,
    /// Keeping the new version.
    Commit,
    /// (SE) serving again.
    Restore,
    /// (SE) its group's health gates.
    Gate,
    /// Returning to the previous slot.
    Rollback,
}

impl Task {
    /// Its name in the status.
    pub fn name(self) -> &'static str {
        match self {
            Task::Stage => "stage",
            Task::Drain => "drain",
            Task::Apply => "apply",
            Task::Rejoin => "rejoin",
            Task::Commit => "commit",
            Task::Restore => "restore",
            Task::Gate => "gate",
            Task::Rollback => "rollback",
        }
    }
}

/// Where a node's event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Under way.
    Running,
    /// It did what it does.
    Done,
    /// It failed; the message says why.
    Failed,
    /// The operation ended while it ran.
    Stopped,
}

/// Why a node's step ended without doing what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// It failed (the note says how).
    Failed,
    /// (SE) its health gates failed on the new version: it runs it,
    /// committed, serving.
    GateFailed,
    /// The operation ended while it was in a step.
    Stopped,
}

/// An SE its group went on past (`action_on_error: continue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passed {
    /// The SE.
    pub se: NodeId,
    /// What it failed.
    pub reason: String,
}

/// What the probes measured of one virtual service during the SE phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    /// Time during which no placement answered.
    pub downtime_ms: u64,
    /// Probes (one per placement per round) that failed.
    pub failed_probes: u64,
    /// Rounds probed.
    pub rounds: u64,
    /// The first down slots: when, and what each placement answered.
    pub down_slots: Vec<String>,
}

/// Where an SE group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupState {
    /// Not started yet.
    Pending,
    /// Its SEs are being upgraded.
    InProgress,
    /// Every SE done (skipped ones are named).
    Completed,
    /// Stopped on a failure.
    Suspended,
    /// Its SEs are returning to the old version.
    RollingBack,
    /// Every SE back on the old version.
    RolledBack,
    /// The operation ended before the group started.
    NotStarted,
}

impl GroupState {
    /// As the status names it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Pending => "pending",
            GroupState::InProgress => "in_progress",
            GroupState::Completed => "completed",
            GroupState::Suspended => "suspended",
            GroupState::RollingBack => "rolling_back",
            GroupState::RolledBack => "rolled_back",
            GroupState::NotStarted => "not_started",
        }
    }

    /// Whether the group is still moving.
    pub fn active(self) -> bool {
        matches!(self, GroupState::Pending | GroupState::InProgress | GroupState::RollingBack)
    }
}

/// One SE group in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOp {
    /// Its SEs in rolling order (standbys and the least active first).
    pub ses: Vec<NodeId>,
    /// Its state.
    pub state: GroupState,
    /// Why it is suspended or rolled back.
    pub reason: String,
    /// SEs it went on past (`action_on_error: continue`), and why.
    pub passed: Vec<Passed>,
    /// Not selected for this upgrade (`se_groups`): it stays on the old version.
    #[serde(default)]
    pub left_out: bool,
}

/// How the operation is paced: the upgrade profile, resolved at the start
/// from the request and each SE group's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Profile {
    /// SEs a group moves at once, per group (1 when absent). SEs that
    /// share a virtual service are never out of service together.
    pub max_parallel_ses: BTreeMap<String, usize>,
    /// SE groups one after the other instead of in parallel.
    pub groups_in_series: bool,
    /// Nodes staging the image at once (0: every node).
    pub max_transfers: usize,
    /// Each image stream's rate cap in MiB/s (0: none).
    pub transfer_rate_mib: u64,
}

/// The persisted state of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// [`FORMAT`].
    pub format: u32,
    /// Unique id (command ids derive from it).
    pub id: String,
    /// Which operation.
    pub operation: Operation,
    /// The image (of the nodes of its kind).
    pub image: Image,
    /// In a mixed cluster, the image of the nodes of the other kind (docker
    /// nodes, when `image` is for vm ones); of the same version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<Image>,
    /// The version the cluster ran.
    pub from: Version,
    /// The image's version.
    pub to: Version,
    /// The leader that started it (it reboots last among the controllers).
    pub leader: NodeId,
    /// SE groups upgraded all at once, moving no traffic.
    pub disruptive: bool,
    /// Forced past version compatibility.
    pub force: bool,
    /// What an SE failure does.
    pub on_error: ActionOnError,
    /// The operator asked to hold: what is in flight finishes, nothing new starts.
    #[serde(default)]
    pub paused: bool,
    /// The operator asked to abort: before the controllers commit they roll
    /// back; after, the SE phase stops with every group on one version.
    #[serde(default)]
    pub abort: bool,
    /// Canary: this group goes first, alone, and the upgrade holds once it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after: Option<String>,
    /// The plan it started from ([`crate::request::plan_hash`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_hash: Option<String>,
    /// The upgrade profile.
    #[serde(default)]
    pub profile: Profile,
    /// Where it is.
    pub phase: Phase,
    /// When waiting at the start of a phase gives up.
    pub phase_deadline: Option<Ms>,
    /// Every node of the operation.
    pub nodes: BTreeMap<NodeId, NodeOp>,
    /// Every SE group.
    pub groups: BTreeMap<String, GroupOp>,
    /// SEs out of service: their virtual services moved to the other SEs of their group.
    pub drained: BTreeSet<NodeId>,
    /// The configuration when it started.
    pub config: Config,
    /// Progress in percent; never goes down within an operation.
    pub progress: u8,
    /// When it started.
    pub started: Ms,
    /// When it ended.
    pub ended: Option<Ms>,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// Why it failed, or what it left behind.
    pub reason: String,
    /// The pre-checks it passed.
    #[serde(default)]
    pub prechecks: Vec<crate::request::Precheck>,
    /// What the probes measured, per virtual service (the driver writes it).
    #[serde(default)]
    pub measured: BTreeMap<String, Measured>,
    /// State a known defect keeps in memory only (see [`crate::Mutant`]);
    /// always empty otherwise.
    #[serde(skip)]
    pub volatile: Volatile,
}

/// What the mutants keep in memory instead of the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Volatile {
    /// `drained-in-memory`.
    pub drained: BTreeSet<NodeId>,
    /// `rollback-unjournaled`: groups rolling back, and why.
    pub rolling_back: BTreeMap<String, String>,
}

impl Journal {
    /// The image a node of `kind` gets: `image`, or `docker_image` for the
    /// nodes of its kind in a mixed cluster.
    pub fn image_for(&self, kind: DeploymentKind) -> &Image {
        match &self.docker_image {
            Some(d) if d.kind == kind && self.image.kind != kind => d,
            _ => &self.image,
        }
    }

    /// Every image of the operation.
    pub fn images(&self) -> impl Iterator<Item = &Image> {
        std::iter::once(&self.image).chain(self.docker_image.as_ref())
    }

    /// SEs the group `g` moves at once.
    pub fn parallel_ses(&self, g: &str) -> usize {
        self.profile.max_parallel_ses.get(g).copied().unwrap_or(1).max(1)
    }

    /// Whether SE groups go one after the other.
    pub fn groups_in_series(&self) -> bool {
        self.profile.groups_in_series
    }

    /// Whether an operation is running (the configuration is read-only).
    pub fn is_running(&self) -> bool {
        self.phase != Phase::Done
    }

    /// Whether every controller committed the new version (the upgrade is past its point of no return).
    pub fn controllers_committed(&self) -> bool {
        let cs = self.controllers();
        !cs.is_empty() && cs.iter().all(|c| self.nodes[c].step == Step::Upgraded)
    }

    /// Whether the distribution of this operation stages the image on `id`:
    /// every node, except in `upgrade segroup`, where only the SEs of the
    /// groups it moves.
    pub fn distributes_to(&self, id: &NodeId) -> bool {
        match (self.operation, self.nodes.get(id).map(|n| &n.member)) {
            (Operation::SeGroupUpgrade, Some(Member::ServiceEngine(g))) => {
                self.groups.get(g).is_some_and(|op| op.state == GroupState::Pending)
            }
            (Operation::SeGroupUpgrade, _) => false,
            (_, n) => n.is_some(),
        }
    }

    /// The SEs out of service (including those a mutant keeps in memory).
    pub fn drained_set(&self) -> BTreeSet<NodeId> {
        self.drained.union(&self.volatile.drained).cloned().collect()
    }

    /// The SEs of the operation, by group.
    pub fn ses(&self) -> impl Iterator<Item = (&NodeId, &NodeOp)> {
        self.nodes.iter().filter(|(_, n)| matches!(n.member, Member::ServiceEngine(_)))
    }

    /// The controllers, the leader last.
    pub fn controllers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| n.member == Member::Controller).map(|(id, _)| id.clone()).collect();
        v.sort_by_key(|id| *id == self.leader);
        v
    }
}

/// Reads a stored journal of any format since 2: its JSON is migrated one
/// format at a time to [`FORMAT`], then read. A journal of a newer format
/// (written by a newer molt) is refused, naming both formats.
pub fn from_value(mut v: serde_json::Value) -> Result<Journal, String> {
    let format = v.get("format").and_then(serde_json::Value::as_u64).ok_or("the journal names no format")?;
    if format > u64::from(FORMAT) {
        return Err(format!("the journal has format {format}, written by a newer molt; this one reads up to {FORMAT}"));
    }
    if format < 2 {
        return Err(format!("the journal has format {format}, older than any this molt migrates (2 on)"));
    }
    for from in format..u64::from(FORMAT) {
        match from {
            2 => migrate::v2_to_v3(&mut v),
            _ => unreachable!("a migration per format below FORMAT"),
        }
        v["format"] = (from + 1).into();
    }
    let j: Journal = serde_json::from_value(v).map_err(|e| format!("the journal cannot be read: {e}"))?;
    j.check()?;
    Ok(j)
}

impl Journal {
    /// The journal's references hold: every SE a group names is a node of
    /// the journal in that group, and every SE out of service is a node. Checked once, when a
    /// journal is read from disk or from another controller, so that the
    /// coordinator's lookups by id cannot fail on a journal it did not write.
    pub fn check(&self) -> Result<(), String> {
        for (g, op) in &self.groups {
            for se in &op.ses {
                match self.nodes.get(se).map(|n| &n.member) {
                    Some(Member::ServiceEngine(of)) if of == g => {}
                    Some(_) => return Err(format!("the journal's group {g} names {se}, which is not an SE of {g}")),
                    None => return Err(format!("the journal's group {g} names {se}, which is not one of its nodes")),
                }
            }
        }
        if let Some(se) = self.drained.iter().find(|s| !self.nodes.contains_key(*s)) {
            return Err(format!("the journal keeps {se} out of service, which is not one of its nodes"));
        }
        Ok(())
    }
}

/// The migrations, one per format.
mod migrate {
    use serde_json::Value;

    use super::GATE_FAILED;

    /// Format 3 types what format 2 kept in prose: why a node's step
    /// ended (the note's "stopped in" and "health gate failed" prefixes)
    /// and whom a group went on past ("id: reason" lines).
    pub(super) fn v2_to_v3(v: &mut Value) {
        if let Some(nodes) = v.get_mut("nodes").and_then(Value::as_object_mut) {
            for n in nodes.values_mut() {
                let note = n.get("note").and_then(Value::as_str).unwrap_or_default();
                let failed = n.get("step").and_then(Value::as_str) == Some("failed");
                let cause = if note.starts_with("stopped in") {
                    Some("stopped")
                } else if note.starts_with(GATE_FAILED) {
                    Some("gate_failed")
                } else if failed {
                    Some("failed")
                } else {
                    None
                };
                if let Some(c) = cause {
                    n["cause"] = c.into();
                }
            }
        }
        if let Some(groups) = v.get_mut("groups").and_then(Value::as_object_mut) {
            for g in groups.values_mut() {
                let Some(lines) = g.get("passed").and_then(Value::as_array) else { continue };
                let passed: Vec<Value> = lines
                    .iter()
                    .filter_map(Value::as_str)
                    .flat_map(|line| line.split("; "))
                    .filter_map(|one| one.split_once(": "))
                    .map(|(se, reason)| serde_json::json!({ "se": se, "reason": reason }))
                    .collect();
                g["passed"] = passed.into();
            }
        }
    }
}

/// How the note of an SE that failed its health gates starts (format 2
/// told the failure apart by it; [`Cause::GateFailed`] does now).
pub const GATE_FAILED: &str = "health gate failed";

/// Serde helpers for the places a stored journal is read: each migrates it.
pub mod stored {
    use serde::{Deserialize, Deserializer, de::Error};

    use super::Journal;

    /// A journal.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Journal, D::Error> {
        super::from_value(serde_json::Value::deserialize(d)?).map_err(D::Error::custom)
    }

    /// A journal that may be absent.
    pub mod option {
        use super::*;

        /// `None`, or a journal.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Journal>, D::Error> {
            match Option::<serde_json::Value>::deserialize(d)? {
                Some(v) => super::super::from_value(v).map(Some).map_err(D::Error::custom),
                None => Ok(None),
            }
        }
    }
}
