//! The operation status the REST API shows (`GET /api/cluster/upgrade/status`),
//! in the contract's shape: a view of the journal, computed on every read,
//! never a document edited in place. Times are Unix seconds with millisecond
//! precision.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use coordinator::journal::{Journal, Member, Ms, Step, Task};

use super::cluster::NodeView;

/// Seconds since the Unix epoch, to the millisecond.
pub fn now() -> f64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

pub use coordinator::view::history_entry;
pub use molt_api::status::{
    Event, GateResult, Gates, GroupStatus, HistoryEntry, NodeState, NodeStatus, OpState, Precheck, UpgradeStatus,
    VsStatus,
};

/// How many audit entries the status shows.
pub const AUDIT_SHOWN: usize = 50;

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
