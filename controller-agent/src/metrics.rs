//! `GET /metrics` of a controller: the cluster as the leader sees it (next
//! to the node's own metrics, `agent_core::metrics`), on a page of
//! `prometheus-client`. What it shows is a pure function of a cluster
//! snapshot and the status document, so it is tested without a server.

use coordinator::journal::Operation;

use agent_core::metrics::{Kind, Page};

use crate::leader::{
    cluster::{NodeState, NodeView},
    status::{OpState, UpgradeStatus},
};

/// Everything the metrics are rendered from, read under the leader's locks.
#[derive(Debug)]
pub struct Snapshot {
    /// Cluster name.
    pub cluster: String,
    /// The leader's generation.
    pub generation: u64,
    /// Every node.
    pub nodes: Vec<NodeView>,
    /// The status document with history.
    pub status: UpgradeStatus,
    /// Image bytes served by `FetchImage` since the leader started.
    pub bytes_served: u64,
    /// Steps the leader's driver has taken since this controller started.
    pub driver_steps: u64,
    /// Now, in Unix seconds (for durations of running operations).
    pub now: f64,
}

const STATES: [(OpState, &str); 7] = [
    (OpState::Idle, "idle"),
    (OpState::Prechecking, "prechecking"),
    (OpState::InProgress, "in_progress"),
    (OpState::Paused, "paused"),
    (OpState::Completed, "completed"),
    (OpState::Suspended, "suspended"),
    (OpState::Aborted, "aborted"),
];

fn bool01(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Adds the cluster's metrics, as the leader sees them, to `page`.
pub fn cluster(page: &mut Page, s: &Snapshot) {
    let st = &s.status;
    let cluster = s.cluster.as_str();

    let mut f = page.family(
        "molt_leader_generation",
        Kind::Gauge,
        "The leader's generation (its raft term << 32): it grows with every new leader.",
    );
    f.sample(&[("cluster", cluster)], s.generation as f64);

    let mut f = page.family(
        "molt_upgrade_state",
        Kind::Gauge,
        "1 for the state of the current or last operation, 0 for the others.",
    );
    for (state, name) in STATES {
        f.sample(&[("state", name)], bool01(st.state == state));
    }

    let mut f = page.family("molt_upgrade_phase", Kind::Gauge, "1 for the phase the current operation is in.");
    if let (Some(op), Some(phase)) = (st.operation, st.phase) {
        f.sample(&[("operation", op.name()), ("phase", phase.name())], 1.0);
    }

    let mut f = page.family("molt_upgrade_progress_percent", Kind::Gauge, "Progress of the current operation.");
    f.sample(&[], f64::from(st.progress));

    if let Some(eta) = st.eta_seconds {
        let mut f = page.family(
            "molt_upgrade_eta_seconds",
            Kind::Gauge,
            "Estimated seconds left of the running operation (absent when none runs or it is paused).",
        );
        f.sample(&[], eta as f64);
    }

    let mut f = page.family(
        "molt_upgrade_duration_seconds",
        Kind::Gauge,
        "How long the current or last operation has run (so far).",
    );
    if let (Some(start), Some(op)) = (st.started_at, st.operation) {
        f.sample(&[("operation", op.name())], (st.ended_at.unwrap_or(s.now) - start).max(0.0));
    }

    let mut f = page.family("molt_upgrade_info", Kind::Gauge, "Versions of the current or last operation.");
    if st.operation.is_some() {
        let force = if st.force { "true" } else { "false" };
        let disruptive = if st.disruptive { "true" } else { "false" };
        f.sample(
            &[
                ("from_version", &st.from_version),
                ("to_version", &st.to_version),
                ("force", force),
                ("disruptive", disruptive),
            ],
            1.0,
        );
    }

    let mut f = page.family("molt_upgrades_total", Kind::Counter, "Finished operations in the history, by outcome.");
    for op in Operation::ALL {
        let finished =
            STATES.iter().filter(|(s, _)| matches!(s, OpState::Completed | OpState::Suspended | OpState::Aborted));
        for (state, name) in finished {
            let n = st.history.iter().filter(|h| h.operation == op && h.state == *state).count();
            f.sample(&[("operation", op.name()), ("state", name)], n as f64);
        }
    }

    let mut f = page.family("molt_node_up", Kind::Gauge, "1 while the node heartbeats to the leader.");
    for n in &s.nodes {
        let role = n.role.to_string();
        f.sample(
            &[("node", n.id.as_str()), ("role", &role), ("se_group", n.se_group.as_deref().unwrap_or(""))],
            bool01(n.state == NodeState::Up),
        );
    }

    let mut f = page.family("molt_node_version_info", Kind::Gauge, "The version each node's active slot runs.");
    for n in s.nodes.iter().filter(|n| !n.version.is_empty()) {
        f.sample(&[("node", n.id.as_str()), ("version", &n.version)], 1.0);
    }

    let mut f = page.family("molt_node_heartbeat_age_seconds", Kind::Gauge, "Time since the node's last heartbeat.");
    for n in &s.nodes {
        if let Some(ms) = n.heartbeat_age_ms {
            f.sample(&[("node", n.id.as_str())], ms as f64 / 1000.0);
        }
    }

    let mut f = page.family(
        "molt_node_upgrade_state",
        Kind::Gauge,
        "1 for each node's state in the current operation (pending, running, done, failed).",
    );
    for n in &st.nodes {
        f.sample(&[("node", &n.id), ("state", n.state.name())], 1.0);
    }

    let mut f = page.family(
        "molt_node_image_received_bytes",
        Kind::Gauge,
        "Bytes of the current operation's image each node holds.",
    );
    for n in &st.nodes {
        f.sample(&[("node", &n.id)], n.received as f64);
    }

    let mut f = page.family(
        "molt_image_bytes_served_total",
        Kind::Counter,
        "Image bytes the leader has streamed to nodes since it started.",
    );
    f.sample(&[], s.bytes_served as f64);
    let mut f = page.family(
        "molt_driver_steps_total",
        Kind::Counter,
        "Decisions the leader's driver has taken since this controller started.",
    );
    f.sample(&[], s.driver_steps as f64);

    let mut f = page.family("molt_se_group_progress_percent", Kind::Gauge, "Progress of each SE group.");
    for g in &st.se_groups {
        f.sample(&[("se_group", &g.name), ("state", g.state.name())], f64::from(g.progress));
    }

    let mut f = page.family(
        "molt_vs_predicted_disruption",
        Kind::Gauge,
        "1 if the upgrade is predicted to interrupt the virtual service.",
    );
    for v in &st.virtual_services {
        f.sample(&[("virtual_service", &v.name)], bool01(v.predicted_disruption));
    }

    let mut f = page.family(
        "molt_vs_measured_downtime_seconds",
        Kind::Gauge,
        "Downtime of each virtual service measured during the current or last upgrade.",
    );
    for v in &st.virtual_services {
        if let Some(ms) = v.measured_downtime_ms {
            f.sample(&[("virtual_service", &v.name)], ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::status::{HistoryEntry, NodeStatus};

    fn node(id: &str, up: bool, age: Option<u64>) -> NodeView {
        NodeView {
            previous_version: None,
            id: id.parse().expect("id"),
            role: common::Role::Controller,
            addr: "127.0.0.1:8443".into(),
            version: "1.0.0".into(),
            state: if up { NodeState::Up } else { NodeState::Down },
            se_group: None,
            deployment: None,
            disk_free_bytes: None,
            staged: vec![],
            transfers: vec![],
            heartbeat_age_ms: age,
            boot_id: None,
        }
    }

    fn vs(name: &str, predicted: bool, downtime_ms: u64) -> crate::leader::status::VsStatus {
        crate::leader::status::VsStatus {
            name: name.into(),
            predicted_disruption: predicted,
            reason: String::new(),
            measured_downtime_ms: Some(downtime_ms),
            failed_probes: None,
            probe_rounds: None,
            down_slots: vec![],
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn renders_nodes_state_and_downtime() {
        let status = UpgradeStatus {
            state: OpState::InProgress,
            operation: Some(Operation::Upgrade),
            phase: Some(coordinator::view::ShownPhase::ServiceEngines),
            progress: 70,
            eta_seconds: Some(95),
            from_version: "1.0.0".into(),
            to_version: "2.0.0".into(),
            started_at: Some(100.0),
            nodes: vec![NodeStatus {
                id: "c1".into(),
                role: common::Role::Controller,
                state: crate::leader::status::NodeState::Done,
                version: "2.0.0".into(),
                received: 4096,
                source: None,
                events: vec![],
            }],
            virtual_services: vec![vs("web", false, 0), vs("one \"x\"", true, 1250)],
            history: vec![HistoryEntry {
                operation: Operation::Upgrade,
                operation_id: None,
                from_version: "0.9.0".into(),
                to_version: "1.0.0".into(),
                state: OpState::Completed,
                started_at: 1.0,
                ended_at: Some(2.0),
                reason: String::new(),
                timings: Default::default(),
            }],
            ..Default::default()
        };
        let mut page = Page::new();
        cluster(
            &mut page,
            &Snapshot {
                cluster: "prod".into(),
                generation: 3,
                nodes: vec![node("c1", true, Some(250)), node("c2", false, None)],
                status,
                bytes_served: 1 << 30,
                driver_steps: 7,
                now: 112.5,
            },
        );
        let (_, text) = page.render(&axum::http::HeaderMap::new());
        assert_eq!(value(&text, "molt_upgrade_state{state=\"in_progress\"}"), Some(1.0));
        assert_eq!(value(&text, "molt_upgrade_state{state=\"idle\"}"), Some(0.0));
        assert_eq!(value(&text, "molt_upgrade_phase{operation=\"upgrade\",phase=\"service_engines\"}"), Some(1.0));
        assert_eq!(value(&text, "molt_upgrade_progress_percent"), Some(70.0));
        assert_eq!(value(&text, "molt_upgrade_eta_seconds"), Some(95.0));
        assert_eq!(value(&text, "molt_upgrade_duration_seconds{operation=\"upgrade\"}"), Some(12.5));
        assert_eq!(value(&text, "molt_node_up{node=\"c1\",role=\"controller\",se_group=\"\"}"), Some(1.0));
        assert_eq!(value(&text, "molt_node_up{node=\"c2\",role=\"controller\",se_group=\"\"}"), Some(0.0));
        assert_eq!(value(&text, "molt_node_heartbeat_age_seconds{node=\"c1\"}"), Some(0.25));
        assert!(!text.contains("molt_node_heartbeat_age_seconds{node=\"c2\"}"), "no age for a node never heard");
        assert_eq!(value(&text, "molt_node_image_received_bytes{node=\"c1\"}"), Some(4096.0));
        assert_eq!(value(&text, "molt_image_bytes_served_total"), Some(1073741824.0));
        assert_eq!(value(&text, "molt_driver_steps_total"), Some(7.0));
        assert_eq!(value(&text, "molt_vs_measured_downtime_seconds{virtual_service=\"web\"}"), Some(0.0));
        assert_eq!(value(&text, "molt_vs_measured_downtime_seconds{virtual_service=\"one \\\"x\\\"\"}"), Some(1.25));
        assert_eq!(value(&text, "molt_upgrades_total{operation=\"upgrade\",state=\"completed\"}"), Some(1.0));
        assert_eq!(value(&text, "molt_upgrades_total{operation=\"upgrade\",state=\"aborted\"}"), Some(0.0));
        assert!(!text.contains("molt_upgrades_total{operation=\"upgrade\",state=\"in_progress\"}"));
        // Every family is declared once, before its samples.
        let declared: Vec<_> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let mut unique = declared.clone();
        unique.dedup();
        assert_eq!(declared, unique);
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().expect("name");
            assert!(declared.iter().any(|d| d.split(' ').next() == Some(name)), "undeclared {name}");
        }
    }
}
