//! The operation status the REST API shows (`GET /api/cluster/upgrade/status`),
//! in the contract's shape. Times are Unix seconds with millisecond precision.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch, to the millisecond.
pub fn now() -> f64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

/// The overall state of the current (or last) operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// Nothing has run since the leader started.
    #[default]
    Idle,
    /// Checks running.
    Prechecking,
    /// Running.
    InProgress,
    /// Finished.
    Completed,
    /// Stopped on an SE group failure.
    Suspended,
    /// Stopped and undone.
    Aborted,
}

/// One step of a node's part in an operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// What the step does (`stage`, ...).
    pub task: String,
    /// `running`, `done` or `failed`.
    pub status: String,
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
    pub role: String,
    /// `pending`, `running`, `done` or `failed`.
    pub state: String,
    /// Version it runs.
    pub version: String,
    /// Bytes of the image it holds.
    pub received: u64,
    /// Its steps.
    pub events: Vec<Event>,
}

/// A pre-check's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Precheck {
    /// Which check.
    pub check: String,
    /// `ok`, `warning` or `error`.
    pub result: String,
    /// What it found.
    pub message: String,
}

/// A past operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// `prestage` or `upgrade`.
    pub operation: String,
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
}

/// The status document.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct UpgradeStatus {
    /// Overall state.
    pub state: OpState,
    /// `prestage` or `upgrade` (empty when idle).
    pub operation: String,
    /// Current phase.
    pub phase: String,
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
    /// Forced past version compatibility.
    pub force: bool,
    /// SEs upgraded without moving traffic.
    pub disruptive: bool,
    /// Why aborted or suspended.
    pub reason: String,
    /// Started.
    pub started_at: Option<f64>,
    /// Ended.
    pub ended_at: Option<f64>,
    /// Per node.
    pub nodes: Vec<NodeStatus>,
    /// Per SE group: name, ha_mode, state, progress, ses, vs_disrupted.
    pub se_groups: Vec<serde_json::Value>,
    /// Per virtual service: predicted and measured disruption.
    pub virtual_services: Vec<serde_json::Value>,
    /// Pre-check verdicts.
    pub prechecks: Vec<Precheck>,
    /// Past operations, newest last.
    pub history: Vec<HistoryEntry>,
}

/// The per-node rows of a new operation, from the cluster view.
pub fn node_rows(nodes: &[super::cluster::NodeView]) -> Vec<NodeStatus> {
    nodes
        .iter()
        .map(|n| NodeStatus {
            id: n.id.to_string(),
            role: n.role.to_string(),
            state: "pending".into(),
            version: n.version.clone(),
            received: 0,
            events: vec![],
        })
        .collect()
}

impl UpgradeStatus {
    /// Whether an operation is running.
    pub fn is_running(&self) -> bool {
        matches!(self.state, OpState::Prechecking | OpState::InProgress)
    }
}

/// The current operation plus history.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StatusBoard {
    /// The current or last operation.
    pub current: UpgradeStatus,
    /// Finished operations.
    pub history: Vec<HistoryEntry>,
}

impl StatusBoard {
    /// The document to show, with history.
    pub fn view(&self) -> UpgradeStatus {
        UpgradeStatus { history: self.history.clone(), ..self.current.clone() }
    }

    /// Starts a step `task` of `node`'s part.
    pub fn begin(&mut self, node: &str, task: &str) {
        if let Some(n) = self.current.nodes.iter_mut().find(|n| n.id == node) {
            n.state = "running".into();
            n.events.push(Event {
                task: task.into(),
                status: "running".into(),
                start: now(),
                end: None,
                message: String::new(),
            });
        }
    }

    /// Whether `node`'s last step is still running.
    pub fn has_open_event(&self, node: &str) -> bool {
        self.current.nodes.iter().find(|n| n.id == node).and_then(|n| n.events.last()).is_some_and(|e| e.end.is_none())
    }

    /// Ends the last step of `node`'s part.
    pub fn end(&mut self, node: &str, ok: bool, message: &str) {
        if let Some(n) = self.current.nodes.iter_mut().find(|n| n.id == node) {
            n.state = if ok { "done" } else { "failed" }.into();
            if let Some(ev) = n.events.last_mut() {
                ev.status = if ok { "done" } else { "failed" }.into();
                ev.end = Some(now());
                ev.message = message.to_owned();
            }
        }
    }

    /// Ends the current operation in `state`, recording it in history.
    pub fn finish(&mut self, state: OpState, reason: String) {
        let c = &mut self.current;
        c.state = state;
        c.reason = reason.clone();
        c.ended_at = Some(now());
        if state == OpState::Completed {
            c.progress = 100;
        }
        self.history.push(HistoryEntry {
            operation: c.operation.clone(),
            from_version: c.from_version.clone(),
            to_version: c.to_version.clone(),
            state,
            started_at: c.started_at.unwrap_or_default(),
            ended_at: c.ended_at,
            reason,
        });
    }
}
