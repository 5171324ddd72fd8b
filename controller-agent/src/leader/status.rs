//! The operation status the REST API shows (`GET /api/cluster/upgrade/status`),
//! in the contract's shape: a view of the journal, computed on every read,
//! never a document edited in place. Times are Unix seconds with millisecond
//! precision.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use coordinator::{
    config::HaMode,
    journal::{ActionOnError, EventStatus, GroupState, Journal, Member, Ms, Operation, Step, Task},
    view::ShownPhase,
};
use serde::{Deserialize, Serialize};

use super::cluster::NodeView;

/// Seconds since the Unix epoch, to the millisecond.
pub fn now() -> f64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

pub use coordinator::view::{NodeState, OpState};

/// One step of a node's part in an operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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

pub use coordinator::request::Precheck;

/// An SE group's part in the operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Gates {
    /// Each gate, described.
    pub checks: Vec<String>,
    /// The last gate run of each of its SEs.
    pub results: Vec<GateResult>,
}

/// The last gate run on one SE.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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

pub use coordinator::view::{HistoryEntry, history_entry};

/// The status document.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
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
    pub operation: Option<Operation>,
    /// Where it is, or where it stopped (the empty string when idle).
    #[serde(with = "coordinator::view::empty_is_none")]
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
    pub audit: Vec<crate::raft::AuditEntry>,
}

/// How many audit entries the status shows.
pub const AUDIT_SHOWN: usize = 50;

impl UpgradeStatus {
    /// Whether an operation is running.
    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }
}

use coordinator::view::secs;

/// The status at `now`: a view of the journal (what the leader acts on),
/// with the versions and bytes the nodes report, the history, and the time
/// left.
pub fn view(j: Option<&Journal>, history: Vec<HistoryEntry>, nodes: &[NodeView], now: Ms) -> UpgradeStatus {
    let Some(j) = j else { return UpgradeStatus { history, ..Default::default() } };
    let v = coordinator::view::view(j);
    let by_id: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    // The bytes a node reports of the image of its kind it is receiving.
    let receiving = |id: &str| {
        let sha = id.parse().ok().and_then(|id| j.nodes.get(&id)).map(|n| j.image_for(n.kind).sha256.to_hex());
        by_id
            .get(id)
            .and_then(|s| s.transfers.iter().find(|t| Some(&t.sha256) == sha.as_ref()))
            .map_or(0, |t| t.received)
    };
    let node_rows = v
        .nodes
        .iter()
        .map(|line| {
            let n = &j.nodes[&line.id.parse::<common::NodeId>().expect("journal ids are valid")];
            let seen = by_id.get(line.id.as_str());
            let image = j.image_for(n.kind);
            let received = match n.step {
                Step::Waiting | Step::Staging => receiving(&line.id),
                _ => image.size,
            };
            NodeStatus {
                id: line.id.clone(),
                role: match n.member {
                    Member::Controller => common::Role::Controller,
                    Member::ServiceEngine(_) => common::Role::ServiceEngine,
                },
                state: line.state,
                version: seen.map(|s| s.version.clone()).unwrap_or_default(),
                received,
                source: None,
                events: n
                    .events
                    .iter()
                    .map(|e| Event {
                        task: e.task,
                        status: e.status,
                        start: secs(e.start),
                        end: e.end.map(secs),
                        message: e.message.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    let vs_group: BTreeMap<&str, &str> =
        j.config.virtual_services.values().map(|s| (s.name.as_str(), s.se_group.as_str())).collect();
    let se_groups = v
        .se_groups
        .iter()
        .map(|g| {
            let disrupted: Vec<&String> = j
                .measured
                .iter()
                .filter(|(vs, m)| m.downtime_ms > 0 && vs_group.get(vs.as_str()) == Some(&g.name.as_str()))
                .map(|(vs, _)| vs)
                .collect();
            let gated = j.config.se_groups.get(&g.name).map(|x| x.health_gates.as_slice()).unwrap_or_default();
            let ses = j.groups.get(&g.name).map(|o| o.ses.as_slice()).unwrap_or_default();
            let results = ses
                .iter()
                .filter_map(|se| {
                    let e = j.nodes.get(se)?.events.iter().rev().find(|e| e.task == Task::Gate)?;
                    Some(GateResult {
                        se: se.to_string(),
                        status: e.status,
                        message: e.message.clone(),
                        start: secs(e.start),
                        end: e.end.map(secs),
                    })
                })
                .collect();
            GroupStatus {
                name: g.name.clone(),
                gates: Gates { checks: gated.iter().map(|h| h.to_check(&j.config).to_string()).collect(), results },
                ha_mode: j.config.se_groups.get(&g.name).map(|x| x.ha_mode),
                state: g.state,
                progress: g.progress,
                ses: ses.iter().map(ToString::to_string).collect(),
                reason: g.reason.clone(),
                vs_disrupted: disrupted.into_iter().cloned().collect(),
            }
        })
        .collect();
    let earlier: Vec<coordinator::eta::Timings> = history.iter().map(|h| h.timings).collect();
    let eta = coordinator::eta::estimate(j, now, &earlier, |id: &common::NodeId| receiving(id.as_str()));
    let eta_basis = match eta {
        Some(e) => e.basis.describe().to_owned(),
        None if j.is_running() && j.paused => "paused: no end while held; `molt upgrade resume` goes on".into(),
        None => "ended".into(),
    };
    let virtual_services = coordinator::placement::predict(&j.config, j.disruptive, &j.profile.max_parallel_ses)
        .into_iter()
        .map(|(name, hit, why)| {
            let m = j.measured.get(&name);
            VsStatus {
                measured_downtime_ms: m.map(|m| m.downtime_ms),
                failed_probes: m.map(|m| m.failed_probes),
                probe_rounds: m.map(|m| m.rounds),
                down_slots: m.map(|m| m.down_slots.clone()).unwrap_or_default(),
                name,
                predicted_disruption: hit,
                reason: why,
            }
        })
        .collect();
    UpgradeStatus {
        state: v.state,
        operation_id: Some(j.id.clone()),
        operation: Some(v.operation),
        phase: Some(v.phase),
        progress: v.progress,
        from_version: v.from_version,
        to_version: v.to_version,
        image_path: j.image.path.clone(),
        image_sha256: j.image.sha256.to_hex(),
        image_size: j.image.size,
        docker_image_path: j.docker_image.as_ref().map(|i| i.path.clone()),
        docker_image_sha256: j.docker_image.as_ref().map(|i| i.sha256.to_hex()),
        force: j.force,
        disruptive: j.disruptive,
        action_on_error: Some(j.on_error),
        reason: j.reason.clone(),
        started_at: Some(secs(j.started)),
        ended_at: j.ended.map(secs),
        nodes: node_rows,
        se_groups,
        virtual_services,
        prechecks: j.prechecks.clone(),
        drained: v.drained,
        plan_hash: j.plan_hash.clone(),
        package_signature: {
            let signers: Vec<&str> = j.images().filter_map(|i| i.signed_by.as_deref()).collect();
            if signers.is_empty() {
                "unsigned: no trusted_keys are configured, so packages are not checked for a signature".into()
            } else {
                format!("verified: signed by trusted key {}", signers.join(" and "))
            }
        },
        abort_requested: j.abort && j.is_running(),
        pause_after: j.pause_after.clone(),
        se_groups_behind: v.se_groups_behind,
        profile: Some(j.profile.clone()),
        eta_seconds: eta.map(|e| e.remaining.div_ceil(1000)),
        expected_end: eta.map(|e| secs(now + e.remaining)),
        eta_basis,
        timings: Some(coordinator::eta::measure(j)),
        history,
        audit: vec![],
    }
}
