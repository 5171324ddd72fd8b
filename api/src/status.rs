//! The operation status (`GET /api/cluster/upgrade/status`), in the
//! contract's shape. The leader computes it from the journal on every read
//! (`controller_agent::leader::status::view`); times are Unix seconds with
//! millisecond precision.

pub use coordinator::{
    config::HaMode,
    journal::{ActionOnError, EventStatus, GroupState, Operation, Task},
    view::ShownPhase,
};
use serde::{Deserialize, Serialize};
use utoipa::{
    ToSchema,
    openapi::{RefOr, schema::Schema},
};

pub use coordinator::{
    eta::Timings,
    journal::Profile,
    request::{CheckResult, Precheck},
    view::{HistoryEntry, NodeState, OpState},
};

/// The schema of a field written as `T`, or as `""` when there is none
/// (`coordinator::view::empty_is_none`).
fn or_empty<T: ToSchema>() -> RefOr<Schema> {
    utoipa::openapi::OneOfBuilder::new()
        .item(utoipa::openapi::Ref::from_schema_name(T::name()))
        .item(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String).enum_values(Some([""])))
        .into()
}

/// One step of a node's part in an operation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// What the step does.
    pub task: Task,
    /// Where it stands.
    pub status: EventStatus,
    /// When it started.
    pub start: f64,
    /// When it ended.
    pub end: Option<f64>,
    /// What happened.
    pub message: String,
}

/// A node's part in the operation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    /// Node id.
    pub id: String,
    /// Role.
    pub role: common::Role,
    /// Where it stands.
    pub state: NodeState,
    /// Version it runs.
    pub version: String,
    /// Bytes of the image it holds.
    pub received: u64,
    /// While it receives the image: the node it comes from (the leader, or
    /// a relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Its steps.
    pub events: Vec<Event>,
}

/// An SE group's part in the operation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupStatus {
    /// Its name.
    pub name: String,
    /// Its health gates, and what they answered.
    pub gates: Gates,
    /// Its HA mode (absent when the group is no longer configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_mode: Option<HaMode>,
    /// Where it stands.
    pub state: GroupState,
    /// Its SEs done, in percent.
    pub progress: u8,
    /// Its SEs, in the order they move.
    pub ses: Vec<String>,
    /// Why it is suspended or rolled back.
    pub reason: String,
    /// Its virtual services that lost traffic, as measured.
    pub vs_disrupted: Vec<String>,
}

/// An SE group's health gates.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Gates {
    /// Each gate, described.
    pub checks: Vec<String>,
    /// The last gate run of each of its SEs.
    pub results: Vec<GateResult>,
}

/// The last gate run on one SE.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GateResult {
    /// The SE.
    pub se: String,
    /// Where it stands.
    pub status: EventStatus,
    /// What the gates answered.
    pub message: String,
    /// When it started.
    pub start: f64,
    /// When it ended.
    pub end: Option<f64>,
}

/// A virtual service: the disruption predicted for it, and measured.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VsStatus {
    /// Its name.
    pub name: String,
    /// Whether the upgrade will drop its traffic at some point.
    pub predicted_disruption: bool,
    /// Why, or why not.
    pub reason: String,
    /// Time during which no placement answered (once probed).
    pub measured_downtime_ms: Option<u64>,
    /// Probes that failed.
    pub failed_probes: Option<u64>,
    /// Rounds probed.
    pub probe_rounds: Option<u64>,
    /// The first down slots: when, and what each placement answered.
    pub down_slots: Vec<String>,
}

/// The status document.
#[derive(Debug, Clone, Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct UpgradeStatus {
    /// Overall state.
    pub state: OpState,
    /// The operation's id (its journal's): every log line and span of its
    /// work, on the leader and on the nodes, carries it as `operation_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// Which operation (the empty string when idle).
    #[serde(with = "coordinator::view::empty_is_none")]
    #[schema(schema_with = or_empty::<Operation>)]
    pub operation: Option<Operation>,
    /// Where it is, or where it stopped (the empty string when idle).
    #[serde(with = "coordinator::view::empty_is_none")]
    #[schema(schema_with = or_empty::<ShownPhase>)]
    pub phase: Option<ShownPhase>,
    /// 0..100.
    pub progress: u8,
    /// Version the cluster runs.
    pub from_version: String,
    /// Version of the image.
    pub to_version: String,
    /// The image's `controller://` path.
    pub image_path: String,
    /// The image's SHA-256.
    pub image_sha256: String,
    /// The image's size in bytes.
    pub image_size: u64,
    /// In a mixed cluster, the docker nodes' image's `controller://` path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_image_path: Option<String>,
    /// Its SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_image_sha256: Option<String>,
    /// Forced past version compatibility.
    pub force: bool,
    /// SEs upgraded without moving traffic.
    pub disruptive: bool,
    /// What an SE failure does to its group: `suspend`, `continue` or
    /// `rollback` (the empty string when idle).
    #[serde(with = "coordinator::view::empty_is_none")]
    #[schema(schema_with = or_empty::<ActionOnError>)]
    pub action_on_error: Option<ActionOnError>,
    /// Why aborted or suspended.
    pub reason: String,
    /// Started.
    pub started_at: Option<f64>,
    /// Ended.
    pub ended_at: Option<f64>,
    /// Per node.
    pub nodes: Vec<NodeStatus>,
    /// Per SE group.
    pub se_groups: Vec<GroupStatus>,
    /// Per virtual service: predicted and measured disruption.
    pub virtual_services: Vec<VsStatus>,
    /// Pre-check verdicts.
    pub prechecks: Vec<Precheck>,
    /// SEs out of service right now (their services moved to the others of
    /// their group); empty once the operation has ended.
    pub drained: Vec<String>,
    /// Whose signature the image carries, or that packages are unsigned
    /// (no `trusted_keys` configured on the leader: not checked).
    pub package_signature: String,
    /// The plan the operation started from (as `prechecks_only` showed it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_hash: Option<String>,
    /// The operator asked to abort; it is being carried out.
    pub abort_requested: bool,
    /// Canary: the SE group after which the upgrade holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_after: Option<String>,
    /// SE groups still on the version before (not selected, not started,
    /// rolled back): `molt upgrade segroup NAME...` moves them on.
    pub se_groups_behind: Vec<String>,
    /// The upgrade profile it runs with: `max_parallel_ses` per SE group,
    /// `groups_in_series`, `max_transfers` (0: all), `transfer_rate_mib` (0: no cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<coordinator::journal::Profile>,
    /// Seconds left, estimated; absent once it ended, and while paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// When it is expected to end (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_end: Option<f64>,
    /// What the estimate rests on (measured in this run, in earlier
    /// operations, or a first guess), or why there is none.
    pub eta_basis: String,
    /// Per-node times measured so far in this run (ms; bytes per second for staging).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<coordinator::eta::Timings>,
    /// Past operations, newest last.
    pub history: Vec<HistoryEntry>,
    /// The last operator actions (who, what, when), newest last.
    pub audit: Vec<crate::AuditEntry>,
}

impl UpgradeStatus {
    /// Whether an operation is running.
    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }
}
