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
    /// SEs out of service right now (their services moved to the others of
    /// their group); empty once the operation has ended.
    pub drained: Vec<String>,
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
    /// What the next [`StatusBoard::finish`] records in the history when it
    /// is not the current operation as such (an SE group rollback, which
    /// reopens a finished upgrade's status).
    #[serde(default)]
    pub recording: Option<HistoryEntry>,
}

fn state_word(s: OpState) -> &'static str {
    match s {
        OpState::Completed => "completed",
        OpState::Suspended => "suspended",
        OpState::Aborted => "aborted",
        OpState::Idle => "idle",
        OpState::Prechecking | OpState::InProgress => "in progress",
    }
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
        let ended = now();
        let c = &mut self.current;
        c.state = state;
        c.reason = reason.clone();
        c.ended_at = Some(ended);
        if state == OpState::Completed {
            c.progress = 100;
        }
        // Nothing shows running under an ended operation.
        for n in &mut c.nodes {
            for ev in n.events.iter_mut().filter(|e| e.end.is_none()) {
                ev.status = "stopped".into();
                ev.end = Some(ended);
                ev.message = format!("not finished: the operation ended {}", state_word(state));
            }
            if matches!(n.state.as_str(), "running" | "pending") {
                n.state = "stopped".into();
            }
        }
        for g in &mut c.se_groups {
            let next = match g["state"].as_str() {
                Some("pending") => Some("not_started"),
                Some("in_progress" | "rolling_back") => Some("stopped"),
                _ => None,
            };
            if let Some(next) = next {
                g["state"] = next.into();
            }
        }
        let mut entry = self.recording.take().unwrap_or_else(|| HistoryEntry {
            operation: c.operation.clone(),
            from_version: c.from_version.clone(),
            to_version: c.to_version.clone(),
            state,
            started_at: c.started_at.unwrap_or_default(),
            ended_at: None,
            reason: String::new(),
        });
        entry.state = state;
        entry.ended_at = Some(ended);
        entry.reason = reason;
        self.history.push(entry);
    }

    /// Raises the operation's progress to `p`; it never goes back within an
    /// operation.
    pub fn advance(&mut self, p: u8) {
        self.current.progress = self.current.progress.max(p.min(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> StatusBoard {
        let current = UpgradeStatus {
            state: OpState::InProgress,
            operation: "upgrade".into(),
            from_version: "1.0.0".into(),
            to_version: "2.0.0".into(),
            started_at: Some(1.0),
            nodes: ["c1", "c2", "se-1"]
                .iter()
                .map(|id| NodeStatus {
                    id: (*id).into(),
                    role: "controller".into(),
                    state: "pending".into(),
                    version: "1.0.0".into(),
                    received: 0,
                    events: vec![],
                })
                .collect(),
            se_groups: vec![serde_json::json!({"name": "g1", "state": "pending"})],
            ..Default::default()
        };
        StatusBoard { current, ..Default::default() }
    }

    #[test]
    fn an_ended_operation_shows_nothing_running() {
        let mut b = board();
        b.begin("c1", "stage");
        b.end("c1", true, "staged");
        b.begin("c1", "apply");
        b.begin("c2", "rejoin");
        b.finish(OpState::Aborted, "c3 did not come back".into());
        let v = b.view();
        for n in &v.nodes {
            assert!(n.events.iter().all(|e| e.end.is_some() && e.status != "running"), "{n:?}");
            assert!(!matches!(n.state.as_str(), "running" | "pending"), "{n:?}");
        }
        assert_eq!(v.nodes[0].events[0].status, "done", "a finished event keeps its outcome");
        assert_eq!(v.nodes[0].events[1].status, "stopped");
        assert_eq!(v.se_groups[0]["state"], "not_started");
    }

    #[test]
    fn progress_never_goes_back_within_an_operation() {
        let mut b = board();
        let mut seen = vec![];
        for p in [5, 42, 81, 10, 30, 50, 60, 80, 100] {
            b.advance(p);
            seen.push(b.current.progress);
        }
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    }

    #[test]
    fn a_group_rollback_is_recorded_as_such() {
        let mut b = board();
        b.finish(OpState::Completed, String::new());
        b.recording = Some(HistoryEntry {
            operation: "se_group_rollback".into(),
            from_version: "2.0.0".into(),
            to_version: "1.0.0".into(),
            state: OpState::InProgress,
            started_at: 5.0,
            ended_at: None,
            reason: String::new(),
        });
        b.finish(OpState::Completed, String::new());
        let h = &b.history;
        assert_eq!((h[0].operation.as_str(), h[1].operation.as_str()), ("upgrade", "se_group_rollback"));
        assert_eq!(
            (h[1].from_version.as_str(), h[1].to_version.as_str(), h[1].state),
            ("2.0.0", "1.0.0", OpState::Completed)
        );
        assert!(b.recording.is_none());
    }
}
