//! Starting an upgrade: the request, the pre-checks (those of distribution
//! plus version compatibility), the predicted impact per virtual service, the
//! journal's first record. Nothing changes when the upgrade is refused.

use std::{collections::BTreeMap, sync::Arc};

use common::{NodeId, Role, Version};
use http::StatusCode;
use serde::Deserialize;
use tracing::info;

use super::{ImageRecord, Journal, Step};
use crate::leader::{
    LeaderState,
    cluster::NodeView,
    distribute::{self, Refused},
    status::{OpState, Precheck, UpgradeStatus, now},
};

/// What the operator asked for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// `controller://...` path of the image.
    pub image_path: String,
    /// Upgrade even from below the image's minimum compatible version
    /// (makes the upgrade disruptive).
    #[serde(default)]
    pub force: bool,
    /// Upgrade each SE group's SEs together, moving no traffic.
    #[serde(default)]
    pub disruptive: bool,
    /// Run the checks only; change nothing.
    #[serde(default)]
    pub prechecks_only: bool,
    /// What an SE failure does to its group: `suspend`, `continue` or `rollback`.
    #[serde(default = "suspend")]
    pub action_on_error: String,
}

fn suspend() -> String {
    "suspend".into()
}

/// The version the controllers run: the lowest one reported.
fn cluster_version(nodes: &[NodeView]) -> Option<Version> {
    nodes.iter().filter(|n| n.role == Role::Controller).filter_map(|n| n.version.parse().ok()).min()
}

/// The upgrade pre-checks on top of those of distribution: version and
/// compatibility. Pure.
pub fn version_checks(
    from: Option<Version>,
    to: Version,
    min_compatible: Version,
    force: bool,
) -> (Precheck, Option<StatusCode>) {
    let check = |result: &str, message: String| Precheck { check: "version".into(), result: result.into(), message };
    let Some(from) = from else {
        return (check("error", "no controller reports its version".into()), Some(StatusCode::PRECONDITION_FAILED));
    };
    if to <= from {
        return (
            check("error", format!("the cluster runs {from}; the image is {to}: nothing to upgrade")),
            Some(StatusCode::BAD_REQUEST),
        );
    }
    if from < min_compatible {
        let msg =
            format!("the cluster runs {from}, below {min_compatible}, the oldest version this image upgrades from");
        if force {
            return (check("warning", format!("{msg}; forced: the upgrade is disruptive")), None);
        }
        return (
            check("error", format!("{msg}; upgrade through an intermediate version, or force (disruptive)")),
            Some(StatusCode::PRECONDITION_FAILED),
        );
    }
    (check("ok", format!("{from} → {to} (compatible from {min_compatible})")), None)
}

/// At most two versions may be live in the system: what every node runs now,
/// plus the image's. Pure; the error names who runs which version, the
/// oldest first, since that is what stands in the way.
pub fn two_versions_check(nodes: &[NodeView], to: Version) -> Precheck {
    let mut by_version: BTreeMap<Version, Vec<String>> = BTreeMap::new();
    for n in nodes {
        if let Ok(v) = n.version.parse::<Version>() {
            let who = match (&n.role, &n.se_group) {
                (Role::ServiceEngine, Some(g)) => format!("SE group {g}"),
                (Role::Controller, _) => "the controllers".to_owned(),
                _ => n.id.to_string(),
            };
            let list = by_version.entry(v).or_default();
            if !list.contains(&who) {
                list.push(who);
            }
        }
    }
    by_version.entry(to).or_default();
    let check = |result: &str, message: String| Precheck { check: "versions".into(), result: result.into(), message };
    if by_version.len() <= 2 {
        let live: Vec<String> = by_version.keys().map(|v| v.to_string()).collect();
        return check("ok", format!("versions live during the upgrade: {}", live.join(" and ")));
    }
    let described: Vec<String> = by_version
        .iter()
        .filter(|(_, who)| !who.is_empty())
        .map(|(v, who)| format!("{} on {v}", who.join(", ")))
        .collect();
    let (oldest, who) = by_version.iter().next().expect("more than two");
    let next = by_version.keys().nth(1).expect("more than two");
    check(
        "error",
        format!(
            "{}: upgrading to {to} would put three versions in the system, and at most two may be live; \
             bring {} from {oldest} to {next} first",
            described.join("; "),
            who.join(", ")
        ),
    )
}

/// Checks and, unless `prechecks_only`, starts an upgrade. Nothing changes
/// when it is refused.
pub async fn start(state: &Arc<LeaderState>, req: UpgradeRequest) -> Result<(StatusCode, serde_json::Value), Refused> {
    if !matches!(req.action_on_error.as_str(), "suspend" | "continue" | "rollback") {
        return Err(Refused {
            status: StatusCode::BAD_REQUEST,
            message: format!("action_on_error {:?}: expected suspend, continue or rollback", req.action_on_error),
            prechecks: vec![],
        });
    }
    if state.operation_running() {
        return Err(Refused {
            status: StatusCode::CONFLICT,
            message: "an upgrade or prestage is already running; follow it with `molt show upgrade status`".into(),
            prechecks: vec![],
        });
    }
    let image = state.images.get(&req.image_path).await?;
    let nodes = state.cluster.snapshot();
    let (mut checks, mut failed) = distribute::prechecks(&image, &nodes);
    let m = &image.info.manifest;
    let from = cluster_version(&nodes);
    let (vcheck, vfailed) = version_checks(from, m.version, m.min_compatible, req.force);
    checks.push(vcheck);
    failed = failed.or(vfailed);
    // Even forced: a third version would leave nodes that may not talk to each other.
    let two = two_versions_check(&nodes, m.version);
    if two.result == "error" {
        failed = failed.or(Some(StatusCode::PRECONDITION_FAILED));
    }
    checks.push(two);
    let disruptive = req.disruptive || req.force;
    let predicted = {
        let cfg = state.config.lock().expect("config lock");
        crate::leader::placement::predict(&cfg, disruptive)
    };
    let hit: Vec<&str> = predicted.iter().filter(|(_, d, _)| *d).map(|(n, _, _)| n.as_str()).collect();
    checks.push(Precheck {
        check: "traffic".into(),
        result: if hit.is_empty() { "ok" } else { "warning" }.into(),
        message: if hit.is_empty() {
            format!("no virtual service is interrupted ({} checked)", predicted.len())
        } else {
            format!("these virtual services will be interrupted while their SE reboots: {}", hit.join(", "))
        },
    });
    let vs_rows: Vec<serde_json::Value> = predicted
        .iter()
        .map(|(n, d, why)| {
            serde_json::json!({"name": n, "predicted_disruption": d, "reason": why, "measured_downtime_ms": null, "failed_probes": null})
        })
        .collect();
    if req.prechecks_only {
        let ok = failed.is_none();
        return Ok((
            StatusCode::OK,
            serde_json::json!({
                "prechecks_only": true, "ok": ok, "prechecks": checks, "virtual_services": vs_rows,
                "from_version": from.map(|v| v.to_string()), "to_version": m.version.to_string(),
                "force": req.force, "disruptive": disruptive,
            }),
        ));
    }
    if let Some(status) = failed {
        let message =
            checks.iter().filter(|c| c.result == "error").map(|c| c.message.as_str()).collect::<Vec<_>>().join("; ");
        return Err(Refused { status, message, prechecks: checks });
    }
    let from = from.expect("checked above");
    let mut controllers: Vec<NodeId> =
        nodes.iter().filter(|n| n.role == Role::Controller).map(|n| n.id.clone()).collect();
    // The leader reboots last.
    controllers.sort_by_key(|id| *id == state.settings.node_id);
    let mut se_groups: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.role == Role::ServiceEngine) {
        se_groups.entry(n.se_group.clone().unwrap_or_default()).or_default().push(n.id.clone());
    }
    let journal = Journal {
        format: 1,
        id: common::types::random_hex(4),
        image: ImageRecord {
            image_path: image.image_path.clone(),
            sha256: image.info.sha256.to_hex(),
            size: image.info.size,
            kind: m.kind.to_string(),
            min_compatible: m.min_compatible,
        },
        from,
        to: m.version,
        force: req.force,
        disruptive,
        action_on_error: req.action_on_error.clone(),
        step: Step::Distribute,
        controllers,
        se_groups: se_groups.clone(),
        boot_ids: BTreeMap::new(),
        deadline: None,
        se_done: BTreeMap::new(),
        suspended: BTreeMap::new(),
        failed: BTreeMap::new(),
        skipped: Vec::new(),
        rollback_groups: Vec::new(),
        rolled_back: BTreeMap::new(),
        continued: BTreeMap::new(),
        drained: Default::default(),
        rolling_back: BTreeMap::new(),
        halted: None,
        // Taken again under the gate below, so no configuration write can fall between.
        config_snapshot: Default::default(),
        reason: String::new(),
        outcome: None,
    };
    // Check and act under the operation gate: of requests at once, one starts.
    let _gate = state.operation_gate.lock().expect("operation gate");
    let mut journal = journal;
    journal.config_snapshot = state.config.lock().expect("config lock").clone();
    if state.operation_running() {
        return Err(Refused {
            status: StatusCode::CONFLICT,
            message: "an upgrade or prestage is already running; follow it with `molt show upgrade status`".into(),
            prechecks: vec![],
        });
    }
    // From here the configuration is read-only: the journal says so. It is
    // written first; if it cannot be, nothing has started.
    state.save_journal(Some(journal)).map_err(|e| Refused {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("cannot write the upgrade journal, so the upgrade did not start: {e}"),
        prechecks: vec![],
    })?;
    {
        let mut board = state.status.lock().expect("status lock");
        board.current = UpgradeStatus {
            state: OpState::InProgress,
            operation: "upgrade".into(),
            phase: "distribute".into(),
            from_version: from.to_string(),
            to_version: m.version.to_string(),
            image_path: image.image_path.clone(),
            image_sha256: image.info.sha256.to_hex(),
            image_size: image.info.size,
            force: req.force,
            disruptive,
            started_at: Some(now()),
            nodes: crate::leader::status::node_rows(&nodes),
            se_groups: se_groups.keys().map(|g| group_json(state, g, "pending", 0, &se_groups[g])).collect(),
            prechecks: checks,
            virtual_services: vs_rows,
            ..Default::default()
        };
    }
    state.save_status();
    info!(from = %from, to = %m.version, "upgrade started");
    let view = state.status.lock().expect("status lock").view();
    super::spawn_drive(state.clone());
    Ok((StatusCode::ACCEPTED, serde_json::to_value(view).expect("serializes")))
}

fn group_json(state: &LeaderState, name: &str, st: &str, progress: u8, ses: &[NodeId]) -> serde_json::Value {
    let ha = state.config.lock().expect("config lock").se_groups.get(name).map(|g| g.ha_mode.clone());
    serde_json::json!({
        "name": name, "ha_mode": ha.unwrap_or_else(|| "unknown".into()), "state": st, "progress": progress,
        "ses": ses, "vs_disrupted": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn version_rules() {
        assert_eq!(version_checks(Some(v("1.0.0")), v("2.0.0"), v("1.0.0"), false).1, None);
        let (c, code) = version_checks(Some(v("1.0.0")), v("3.0.0"), v("2.0.0"), false);
        assert_eq!(code, Some(StatusCode::PRECONDITION_FAILED));
        assert!(c.message.contains("force"), "{}", c.message);
        let (c, code) = version_checks(Some(v("1.0.0")), v("3.0.0"), v("2.0.0"), true);
        assert_eq!((code, c.result.as_str()), (None, "warning"));
        assert!(c.message.contains("disruptive"));
        assert_eq!(version_checks(Some(v("2.0.0")), v("2.0.0"), v("1.0.0"), true).1, Some(StatusCode::BAD_REQUEST));
        assert_eq!(version_checks(None, v("2.0.0"), v("1.0.0"), false).1, Some(StatusCode::PRECONDITION_FAILED));
    }

    fn node(id: &str, role: Role, group: Option<&str>, version: &str) -> NodeView {
        NodeView {
            id: id.parse().unwrap(),
            role,
            addr: "127.0.0.1:8443".into(),
            version: version.into(),
            state: crate::leader::cluster::NodeState::Up,
            se_group: group.map(Into::into),
            deployment: None,
            disk_free_bytes: None,
            staged: vec![],
            transfers: vec![],
            heartbeat_age_ms: None,
            boot_id: None,
        }
    }

    #[test]
    fn a_third_version_is_refused_naming_the_group_on_the_old_one() {
        // After `molt rollback segroup g2`: g2 on 1.0.0, everything else on 2.0.0.
        let nodes = vec![
            node("c1", Role::Controller, None, "2.0.0"),
            node("g1-se1", Role::ServiceEngine, Some("g1"), "2.0.0"),
            node("g2-se1", Role::ServiceEngine, Some("g2"), "1.0.0"),
            node("g2-se2", Role::ServiceEngine, Some("g2"), "1.0.0"),
        ];
        let c = two_versions_check(&nodes, v("2.1.0"));
        assert_eq!(c.result, "error", "{}", c.message);
        assert!(c.message.contains("SE group g2 on 1.0.0"), "{}", c.message);
        assert!(c.message.contains("bring SE group g2 from 1.0.0 to 2.0.0 first"), "{}", c.message);
        // Two versions are fine: all on 2.0.0 going to 2.1.0, or g2 catching up to 2.0.0.
        assert_eq!(two_versions_check(&nodes[..2], v("2.1.0")).result, "ok");
        assert_eq!(two_versions_check(&nodes, v("2.0.0")).result, "ok");
        // A node that never reported a version does not count.
        let mut quiet = nodes[..2].to_vec();
        quiet.push(node("g3-se1", Role::ServiceEngine, Some("g3"), ""));
        assert_eq!(two_versions_check(&quiet, v("2.1.0")).result, "ok");
    }
}
