//! Operators' requests decided purely: start an upgrade or a prestage, resume
//! SE groups, roll SE groups back, change the configuration. Each returns
//! the journal to write (or the configuration to keep) or a refusal whose
//! kind the HTTP layer maps to a status code. The caller holds one lock
//! around the decision and the write, so two requests at once cannot both
//! pass a check.

use std::collections::BTreeMap;

use common::{DeploymentKind, NodeId, Version, types::Iec};
use serde::{Deserialize, Serialize};

use crate::{
    Mutant,
    config::Config,
    core::queue_rollback,
    journal::{
        ActionOnError, FORMAT, GroupOp, GroupState, Image, Journal, Member, Ms, NodeOp, Operation, Outcome, Phase,
        Profile, Step,
    },
    placement,
};

/// What kind of refusal: a kind of the one error table.
pub use common::errors::ErrorKind as RefusalKind;

/// A refused request: nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// What kind.
    pub kind: RefusalKind,
    /// What is wrong and what to do.
    pub message: String,
    /// The pre-checks, when they decided.
    pub prechecks: Vec<Precheck>,
}

fn refuse(kind: RefusalKind, message: impl Into<String>) -> Refusal {
    Refusal { kind, message: message.into(), prechecks: vec![] }
}

/// One pre-check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Precheck {
    /// Which check.
    pub check: String,
    /// What it found.
    pub result: CheckResult,
    /// What it found.
    pub message: String,
}

/// A pre-check's verdict.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    /// Passed.
    Ok,
    /// Passed, with something the operator should know.
    Warning,
    /// Failed: the operation does not start.
    Error,
}

impl Precheck {
    /// A check's verdict and what it found.
    pub fn new(check: &str, result: CheckResult, message: String) -> Self {
        Self { check: check.into(), result, message }
    }
}

/// The refusal of failed pre-checks: their errors, with every verdict.
pub fn failed_checks(kind: RefusalKind, checks: Vec<Precheck>) -> Refusal {
    let errors: Vec<&str> =
        checks.iter().filter(|c| c.result == CheckResult::Error).map(|c| c.message.as_str()).collect();
    Refusal { kind, message: errors.join("; "), prechecks: checks }
}

/// A node as the pre-checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    /// Its id.
    pub id: NodeId,
    /// Controller or SE of a group.
    pub member: Member,
    /// The version it reports, if it has reported one.
    pub version: Option<Version>,
    /// How it is deployed.
    pub kind: DeploymentKind,
    /// The version its other slot holds, if it reported one.
    pub previous: Option<Version>,
    /// What the distribution pre-checks need of it.
    pub health: NodeHealth,
}

/// A node as the distribution pre-checks see it. The default is a node
/// that is up and reports nothing that would refuse a distribution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHealth {
    /// Its heartbeats stopped.
    pub down: bool,
    /// Free bytes on its data disk, if it reported them.
    pub disk_free: Option<u64>,
    /// The images it holds staged.
    pub staged: Vec<common::Sha256Digest>,
    /// It has not reported how it is deployed yet (`kind` is then a guess).
    pub kind_unknown: bool,
}

/// The pre-checks of distributing the request's images to `nodes`: the
/// images, every node up, a package for each node's deployment kind, disk
/// space (with `DISK_MARGIN`) on every node that does not hold the image.
pub fn distribution_checks(req: &StartRequest, nodes: &[NodeSummary]) -> (Vec<Precheck>, Option<RefusalKind>) {
    use common::package::DISK_MARGIN;
    let images: Vec<&Image> = std::iter::once(&req.image).chain(req.docker_image.as_ref()).collect();
    let of = |kind: DeploymentKind| images.iter().copied().find(|i| i.kind == kind);
    let mut out: Vec<Precheck> = images
        .iter()
        .map(|i| {
            let what = format!("{} package {} ({}, sha256 {})", i.kind, req.to, Iec(i.size), i.sha256);
            Precheck::new("image", CheckResult::Ok, what)
        })
        .collect();
    let mut failed = None;
    let down: Vec<String> = nodes.iter().filter(|n| n.health.down).map(|n| n.id.to_string()).collect();
    out.push(if down.is_empty() {
        Precheck::new("nodes_up", CheckResult::Ok, format!("all {} nodes are up", nodes.len()))
    } else {
        failed.get_or_insert(RefusalKind::PreconditionFailed);
        let why = format!("nodes not heartbeating: {}; bring them back (molt show cluster) and retry", down.join(", "));
        Precheck::new("nodes_up", CheckResult::Error, why)
    });
    let without: Vec<String> = nodes
        .iter()
        .filter(|n| !n.health.kind_unknown && of(n.kind).is_none())
        .map(|n| format!("{} ({})", n.id, n.kind))
        .collect();
    let kinds: std::collections::HashSet<DeploymentKind> = nodes.iter().map(|n| n.kind).collect();
    out.push(if without.is_empty() {
        let what = match kinds.len() {
            1 => format!("every node is deployed as {}", req.image.kind),
            _ => "every node has the package of its deployment kind (vm and docker)".into(),
        };
        Precheck::new("deployment_kind", CheckResult::Ok, what)
    } else {
        failed.get_or_insert(RefusalKind::BadRequest);
        let kind = req.image.kind;
        let why = if kinds.len() > 1 {
            format!(
                "no package for these nodes' deployment kind: {}; a mixed cluster takes image_path {} and docker_image_path {}",
                without.join(", "),
                DeploymentKind::Vm.package_file_name(),
                DeploymentKind::Docker.package_file_name()
            )
        } else {
            let other = if kind == DeploymentKind::Vm { DeploymentKind::Docker } else { DeploymentKind::Vm };
            format!(
                "the image is a {kind} package ({}) but these nodes are not: {}; use {}",
                kind.package_file_name(),
                without.join(", "),
                other.package_file_name()
            )
        };
        Precheck::new("deployment_kind", CheckResult::Error, why)
    });
    let image_of = |n: &NodeSummary| of(n.kind).unwrap_or(&req.image);
    let need = |n: &NodeSummary| image_of(n).size + DISK_MARGIN;
    let short: Vec<String> = nodes
        .iter()
        .filter(|n| !n.health.staged.contains(&image_of(n).sha256))
        .filter(|n| n.health.disk_free.is_some_and(|f| f < need(n)))
        .map(|n| format!("{} ({} free, {} needed)", n.id, Iec(n.health.disk_free.unwrap_or(0)), Iec(need(n))))
        .collect();
    let most = images.iter().map(|i| i.size + DISK_MARGIN).max().unwrap_or(0);
    out.push(if short.is_empty() {
        Precheck::new("disk_space", CheckResult::Ok, format!("every node has the {} the image needs", Iec(most)))
    } else {
        failed.get_or_insert(RefusalKind::InsufficientStorage);
        let why = format!("not enough disk for the image (with margin) on: {}; free space and retry", short.join(", "));
        Precheck::new("disk_space", CheckResult::Error, why)
    });
    (out, failed)
}

/// The version the controllers run: the lowest one reported.
pub fn cluster_version(nodes: &[NodeSummary]) -> Option<Version> {
    nodes.iter().filter(|n| n.member == Member::Controller).filter_map(|n| n.version).min()
}

/// Version and compatibility.
pub fn version_checks(
    from: Option<Version>,
    to: Version,
    min_compatible: Version,
    force: bool,
) -> (Precheck, Option<RefusalKind>) {
    let check = |result: CheckResult, message: String| Precheck::new("version", result, message);
    let Some(from) = from else {
        return (
            check(CheckResult::Error, "no controller reports its version".into()),
            Some(RefusalKind::PreconditionFailed),
        );
    };
    if to <= from {
        return (
            check(CheckResult::Error, format!("the cluster runs {from}; the image is {to}: nothing to upgrade")),
            Some(RefusalKind::BadRequest),
        );
    }
    if from < min_compatible {
        let msg =
            format!("the cluster runs {from}, below {min_compatible}, the oldest version this image upgrades from");
        if force {
            return (check(CheckResult::Warning, format!("{msg}; forced: the upgrade is disruptive")), None);
        }
        return (
            check(CheckResult::Error, format!("{msg}; upgrade through an intermediate version, or force (disruptive)")),
            Some(RefusalKind::PreconditionFailed),
        );
    }
    (check(CheckResult::Ok, format!("{from} → {to} (compatible from {min_compatible})")), None)
}

/// At most two versions may be live in the system: what every node runs now,
/// plus the image's. The error names who runs which version, the oldest
/// first, since that is what stands in the way.
pub fn two_versions_check<'a>(nodes: impl IntoIterator<Item = &'a NodeSummary>, to: Version) -> Precheck {
    let mut by_version: BTreeMap<Version, Vec<String>> = BTreeMap::new();
    for n in nodes {
        let Some(v) = n.version else { continue };
        let who = match &n.member {
            Member::ServiceEngine(g) => format!("SE group {g}"),
            Member::Controller => "the controllers".to_owned(),
        };
        let list = by_version.entry(v).or_default();
        if !list.contains(&who) {
            list.push(who);
        }
    }
    by_version.entry(to).or_default();
    let check = |result: CheckResult, message: String| Precheck::new("versions", result, message);
    if by_version.len() <= 2 {
        let live: Vec<String> = by_version.keys().map(|v| v.to_string()).collect();
        return check(CheckResult::Ok, format!("versions live during the upgrade: {}", live.join(" and ")));
    }
    let described: Vec<String> = by_version
        .iter()
        .filter(|(_, who)| !who.is_empty())
        .map(|(v, who)| format!("{} on {v}", who.join(", ")))
        .collect();
    let (oldest, who) = by_version.iter().next().expect("more than two");
    let next = by_version.keys().nth(1).expect("more than two");
    check(
        CheckResult::Error,
        format!(
            "{}: upgrading to {to} would put three versions in the system, and at most two may be live; \
             bring {} from {oldest} to {next} first",
            described.join("; "),
            who.join(", ")
        ),
    )
}

/// The predicted impact on the virtual services, as a pre-check.
pub fn traffic_check(config: &Config, disruptive: bool, profile: &Profile) -> Precheck {
    let predicted = placement::predict(config, disruptive, &profile.max_parallel_ses);
    let hit: Vec<&str> = predicted.iter().filter(|(_, d, _)| *d).map(|(n, _, _)| n.as_str()).collect();
    if hit.is_empty() {
        Precheck::new(
            "traffic",
            CheckResult::Ok,
            format!("no virtual service is interrupted ({} checked)", predicted.len()),
        )
    } else {
        Precheck::new(
            "traffic",
            CheckResult::Warning,
            format!("these virtual services will be interrupted while their SE reboots: {}", hit.join(", ")),
        )
    }
}

/// What an operator asks to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// Upgrade or prestage.
    pub operation: Operation,
    /// The image (verified, in the leader's store).
    pub image: Image,
    /// In a mixed cluster, the docker nodes' image (`image` is then the vm nodes').
    pub docker_image: Option<Image>,
    /// Its version.
    pub to: Version,
    /// Past version compatibility (disruptive).
    pub force: bool,
    /// SE groups all at once.
    pub disruptive: bool,
    /// What an SE failure does.
    pub on_error: ActionOnError,
    /// Only these SE groups (empty: every group); the others stay on the old version.
    pub se_groups: Vec<String>,
    /// Canary: this group first, alone; then the upgrade holds.
    pub pause_after: Option<String>,
    /// The plan the operator approved (`prechecks_only` returned it): the
    /// start is refused when the plan is different now.
    pub plan_hash: Option<String>,
    /// How it is paced.
    pub profile: ProfileRequest,
}

impl StartRequest {
    /// `operation` of `image` to `to`, every option at its default.
    pub fn new(operation: Operation, image: Image, to: Version) -> Self {
        Self {
            operation,
            image,
            docker_image: None,
            to,
            force: false,
            disruptive: false,
            on_error: ActionOnError::Suspend,
            se_groups: vec![],
            pause_after: None,
            plan_hash: None,
            profile: ProfileRequest::default(),
        }
    }
}

/// The upgrade profile an operator asks for. What it leaves unset comes
/// from each SE group's configuration, then the defaults (one SE of a
/// group at a time, groups in parallel, every transfer at once, no cap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileRequest {
    /// SEs of every group moved at once (overrides the groups' own).
    pub max_parallel_ses: Option<u32>,
    /// SE groups one after the other.
    pub groups_in_series: Option<bool>,
    /// Nodes staging the image at once.
    pub max_transfers: Option<u32>,
    /// Each image stream's cap, MiB/s.
    pub transfer_rate_mib: Option<u64>,
}

/// The profile of an upgrade of `groups`, resolved from the request and
/// the groups' configuration, or why the request is wrong.
pub fn resolve_profile(req: &ProfileRequest, config: &Config, groups: &[&str]) -> Result<Profile, Refusal> {
    use crate::config::MAX_PARALLEL_SES;
    if let Some(k) = req.max_parallel_ses.filter(|k| !(1..=MAX_PARALLEL_SES).contains(k)) {
        return Err(refuse(
            RefusalKind::BadRequest,
            format!("max_parallel_ses {k}: must be 1-{MAX_PARALLEL_SES} (SEs of a group upgraded at once)"),
        ));
    }
    if req.max_transfers == Some(0) {
        return Err(refuse(
            RefusalKind::BadRequest,
            "max_transfers 0: at least one node must stage at a time; leave it out for every node at once",
        ));
    }
    if req.transfer_rate_mib == Some(0) {
        return Err(refuse(
            RefusalKind::BadRequest,
            "transfer_rate_mib 0: a transfer needs a rate above 0 MiB/s; leave it out for no cap",
        ));
    }
    let max_parallel_ses = groups
        .iter()
        .map(|g| {
            let own = config.se_groups.get(*g).and_then(|c| c.max_parallel_ses);
            (g.to_string(), req.max_parallel_ses.or(own).unwrap_or(1) as usize)
        })
        .collect();
    Ok(Profile {
        max_parallel_ses,
        groups_in_series: req.groups_in_series.unwrap_or(false),
        max_transfers: req.max_transfers.unwrap_or(0) as usize,
        transfer_rate_mib: req.transfer_rate_mib.unwrap_or(0),
    })
}

/// The SE groups of the nodes, sorted, once each.
pub fn group_names(nodes: &[NodeSummary]) -> Vec<&str> {
    let mut v: Vec<&str> = nodes
        .iter()
        .filter_map(|n| match &n.member {
            Member::ServiceEngine(g) => Some(g.as_str()),
            Member::Controller => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Where a start request is decided.
#[derive(Debug, Clone, Copy)]
pub struct StartCtx<'a> {
    /// The journal on disk, if any.
    pub current: Option<&'a Journal>,
    /// Every node the leader knows, with its version.
    pub nodes: &'a [NodeSummary],
    /// The configuration now (it becomes the snapshot).
    pub config: &'a Config,
    /// This leader.
    pub leader: &'a NodeId,
    /// The new journal's id.
    pub id: &'a str,
    /// The clock.
    pub now: Ms,
    /// A known defect put back (simulation only).
    pub mutant: Option<Mutant>,
}

/// The pre-checks of a start: the distribution's (`distribution_checks`),
/// every node reported, the versions, the traffic, the groups and profile.
pub fn start_checks(req: &StartRequest, ctx: &StartCtx<'_>) -> (Vec<Precheck>, Option<RefusalKind>) {
    let from = cluster_version(ctx.nodes);
    let (mut checks, mut failed) = distribution_checks(req, ctx.nodes);
    // A node that has not reported (it may still be redialling a leader
    // that just started) could hide a third version, or miss the image.
    let silent: Vec<String> = ctx.nodes.iter().filter(|n| n.version.is_none()).map(|n| n.id.to_string()).collect();
    if !silent.is_empty() {
        checks.push(Precheck::new(
            "nodes",
            CheckResult::Error,
            format!("{} not reported its version yet; wait until every node is up (`molt show cluster`)", {
                let who = silent.join(", ");
                if silent.len() == 1 { format!("{who} has") } else { format!("{who} have") }
            }),
        ));
        failed = Some(RefusalKind::PreconditionFailed);
    }
    if req.operation == Operation::Upgrade {
        let (c, f) = version_checks(from, req.to, req.image.min_compatible, req.force);
        checks.push(c);
        failed = failed.or(f);
        // Even forced: a third version would leave nodes that may not talk to each other.
        let two = if ctx.mutant == Some(Mutant::TwoVersions) {
            two_versions_check(ctx.nodes.iter().filter(|n| n.member == Member::Controller), req.to)
        } else {
            two_versions_check(ctx.nodes, req.to)
        };
        if two.result == CheckResult::Error {
            failed = failed.or(Some(RefusalKind::PreconditionFailed));
        }
        checks.push(two);
        let profile = resolve_profile(&req.profile, ctx.config, &group_names(ctx.nodes)).unwrap_or_default();
        checks.push(traffic_check(ctx.config, req.disruptive || req.force, &profile));
    }
    (checks, failed)
}

/// The plan an operator approves: a digest over what the upgrade will do —
/// the images, the versions, every node (id, role or group, version, kind),
/// the options, and the predicted impact on each virtual service. The same
/// cluster and request give the same hash; a node, a version, a placement
/// or an option that changed gives another.
pub fn plan_hash(req: &StartRequest, ctx: &StartCtx<'_>) -> String {
    let mut nodes: Vec<String> = ctx
        .nodes
        .iter()
        .map(|n| {
            let member = match &n.member {
                Member::Controller => "controller".to_owned(),
                Member::ServiceEngine(g) => format!("se:{g}"),
            };
            let version = n.version.map(|v| v.to_string()).unwrap_or_default();
            format!("{}|{member}|{version}|{}", n.id, n.kind.as_str())
        })
        .collect();
    nodes.sort();
    let profile = resolve_profile(&req.profile, ctx.config, &group_names(ctx.nodes)).unwrap_or_default();
    let impact: Vec<String> = placement::predict(ctx.config, req.disruptive || req.force, &profile.max_parallel_ses)
        .into_iter()
        .map(|(vs, hit, _)| {
            format!("{vs}|{hit}|{}", ctx.config.placements.get(&vs).map(|p| p.join(",")).unwrap_or_default())
        })
        .collect();
    let plan = serde_json::json!({
        "operation": req.operation.name(),
        "image": req.image.sha256.to_hex(),
        "docker_image": req.docker_image.as_ref().map(|i| i.sha256.to_hex()),
        "from": cluster_version(ctx.nodes).map(|v| v.to_string()),
        "to": req.to.to_string(),
        "force": req.force,
        "disruptive": req.disruptive,
        "action_on_error": req.on_error.name(),
        "se_groups": req.se_groups,
        "pause_after": req.pause_after,
        "profile": profile,
        "nodes": nodes,
        "impact": impact,
    });
    common::Sha256Digest::of(plan.to_string().as_bytes()).to_hex()[..16].to_owned()
}

/// Refuses a start while an operation runs (409).
pub fn refuse_if_running(current: Option<&Journal>) -> Result<(), Refusal> {
    if current.is_some_and(|j| crate::view::op_state(j).is_running()) {
        return Err(refuse(
            RefusalKind::Conflict,
            "an upgrade or prestage is already running; follow it with `molt show upgrade status`",
        ));
    }
    Ok(())
}

/// Decides a start: the journal to write first, or why not.
pub fn start(req: &StartRequest, ctx: &StartCtx<'_>) -> Result<Journal, Refusal> {
    refuse_if_running(ctx.current)?;
    let (checks, failed) = start_checks(req, ctx);
    if let Some(kind) = failed {
        return Err(failed_checks(kind, checks));
    }
    let plan = plan_hash(req, ctx);
    if let Some(approved) = req.plan_hash.as_deref().filter(|h| *h != plan) {
        return Err(refuse(
            RefusalKind::Conflict,
            format!(
                "the plan changed since {approved} was shown (it is now {plan}): a node, a version, a placement \
                 or an option is different; run the pre-checks again (`prechecks_only`) and approve the new plan"
            ),
        ));
    }
    let known = group_names(ctx.nodes);
    let named = req.se_groups.iter().chain(req.pause_after.as_ref());
    if let Some(g) = named.clone().find(|g| !known.contains(&g.as_str())) {
        return Err(refuse(
            RefusalKind::BadRequest,
            format!("no SE group {g} has SEs in this cluster; its groups are: {}", known.join(", ")),
        ));
    }
    let profile = resolve_profile(&req.profile, ctx.config, &known)?;
    if let Some(p) = &req.pause_after
        && !req.se_groups.is_empty()
        && !req.se_groups.contains(p)
    {
        return Err(refuse(RefusalKind::BadRequest, format!("pause_after {p}: it is not among the se_groups named")));
    }
    let from = match req.operation {
        Operation::Upgrade => cluster_version(ctx.nodes).expect("checked"),
        _ => cluster_version(ctx.nodes).unwrap_or(req.to),
    };
    let mut nodes = BTreeMap::new();
    let mut groups: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
    for n in ctx.nodes {
        let mut op = NodeOp::new(n.member.clone());
        op.kind = n.kind;
        nodes.insert(n.id.clone(), op);
        if let Member::ServiceEngine(g) = &n.member {
            groups.entry(g.clone()).or_default().push(n.id.clone());
        }
    }
    let groups = if req.operation == Operation::Upgrade {
        groups
            .into_iter()
            .map(|(g, ses)| {
                let ses = placement::rolling_order(ctx.config, &ses);
                let left_out = !req.se_groups.is_empty() && !req.se_groups.contains(&g);
                let (state, reason) = if left_out {
                    (GroupState::NotStarted, format!("not selected: `molt upgrade segroup {g}` moves it on"))
                } else {
                    (GroupState::Pending, String::new())
                };
                (g, GroupOp { ses, state, reason, passed: vec![], left_out })
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok(Journal {
        format: FORMAT,
        id: ctx.id.to_owned(),
        operation: req.operation,
        image: req.image.clone(),
        docker_image: req.docker_image.clone(),
        from,
        to: req.to,
        leader: ctx.leader.clone(),
        disruptive: req.disruptive || req.force,
        force: req.force,
        on_error: req.on_error,
        paused: false,
        abort: false,
        pause_after: req.pause_after.clone(),
        plan_hash: Some(plan),
        profile,
        phase: Phase::Distribute,
        phase_deadline: None,
        nodes,
        groups,
        drained: Default::default(),
        config: ctx.config.clone(),
        progress: 0,
        started: ctx.now,
        ended: None,
        outcome: None,
        reason: String::new(),
        prechecks: checks,
        measured: BTreeMap::new(),
        volatile: Default::default(),
    })
}

/// Reopens an ended journal for an operation that continues it (resume,
/// `rollback segroup`, `upgrade segroup`, `rollback system`): running
/// again, with the configuration as it is now (read-only from here), and no
/// hold, abort or canary of the operation before.
fn reopen(j: &mut Journal, config: &Config) {
    j.config = config.clone();
    j.phase_deadline = None;
    j.paused = false;
    j.abort = false;
    j.pause_after = None;
    j.outcome = None;
    j.ended = None;
    j.reason.clear();
}

/// [`reopen`] as an operation of its own in the history: progress from 0.
fn restart(j: &mut Journal, config: &Config, now: Ms) {
    reopen(j, config);
    j.progress = 0;
    j.started = now;
}

/// Decides `molt resume segroup`: the suspended groups named (all of them
/// when none is named) go on; their failed SEs are tried again, or left on
/// the old version with `skip_suspended`.
pub fn resume(
    current: Option<&Journal>,
    groups: &[String],
    skip_failed: bool,
    config: &Config,
) -> Result<Journal, Refusal> {
    let Some(j) = current.filter(|j| !j.is_running() && j.operation != Operation::Prestage) else {
        return Err(refuse(RefusalKind::Conflict, "no upgrade is suspended: nothing to resume"));
    };
    let suspended: Vec<String> =
        j.groups.iter().filter(|(_, g)| g.state == GroupState::Suspended).map(|(n, _)| n.clone()).collect();
    if suspended.is_empty() {
        return Err(refuse(RefusalKind::Conflict, "no SE group is suspended: nothing to resume"));
    }
    let named: Vec<String> = if groups.is_empty() { suspended.clone() } else { groups.to_vec() };
    if let Some(g) = named.iter().find(|g| !suspended.contains(g)) {
        return Err(refuse(RefusalKind::BadRequest, format!("SE group {g} is not suspended")));
    }
    let mut j = j.clone();
    let mut upgrading = false;
    for g in &named {
        let ses = j.groups[g].ses.clone();
        // A group suspended while rolling back goes on rolling back.
        let rollback = ses.iter().any(|s| j.nodes[s].rollback);
        upgrading |= !rollback;
        let op = j.groups.get_mut(g).expect("a suspended group");
        op.state = if rollback { GroupState::RollingBack } else { GroupState::InProgress };
        if !rollback {
            op.reason.clear();
        }
        for se in ses {
            let n = j.nodes.get_mut(&se).expect("an SE of the journal");
            if rollback {
                if n.rollback && n.step == Step::Failed {
                    queue_rollback(n);
                }
            } else if matches!(n.step, Step::Failed | Step::Waiting) {
                n.tries += 1;
                n.step = if skip_failed && n.step == Step::Failed { Step::Skipped } else { Step::Waiting };
            }
        }
    }
    if upgrading {
        j.operation = Operation::Upgrade;
    }
    j.phase = if j.operation == Operation::Upgrade { Phase::ServiceEngines } else { Phase::RollbackSeGroups };
    reopen(&mut j, config);
    Ok(j)
}

/// Decides `molt rollback segroup`: the named groups return to the old
/// version, one SE at a time; it is an operation of its own in the history.
pub fn rollback_groups(
    current: Option<&Journal>,
    groups: &[String],
    config: &Config,
    now: Ms,
) -> Result<Journal, Refusal> {
    let Some(j) = current
        .filter(|j| matches!(j.outcome, Some(Outcome::Suspended | Outcome::Completed)) && !j.is_running())
        .filter(|j| j.operation != Operation::Prestage)
    else {
        return Err(refuse(
            RefusalKind::Conflict,
            "no finished or suspended upgrade whose SE groups could be rolled back",
        ));
    };
    if groups.is_empty() {
        return Err(refuse(RefusalKind::BadRequest, "name the SE groups to roll back"));
    }
    if let Some(g) = groups.iter().find(|g| !j.groups.contains_key(*g)) {
        return Err(refuse(RefusalKind::BadRequest, format!("no SE group {g} in this upgrade")));
    }
    let mut j = j.clone();
    for g in groups {
        let op = j.groups.get_mut(g).expect("checked");
        op.state = GroupState::RollingBack;
        op.reason = "the operator asked for it".into();
        for se in op.ses.clone() {
            queue_rollback(j.nodes.get_mut(&se).expect("an SE of the journal"));
        }
    }
    j.operation = Operation::SeGroupRollback;
    j.phase = Phase::RollbackSeGroups;
    restart(&mut j, config, now);
    Ok(j)
}

/// The running operation that pause, resume and abort act on, or why none.
fn running_upgrade<'a>(current: Option<&'a Journal>, what: &str) -> Result<&'a Journal, Refusal> {
    let Some(j) = current.filter(|j| j.is_running()) else {
        return Err(refuse(RefusalKind::Conflict, format!("no upgrade is running: nothing to {what}")));
    };
    if j.operation.is_rollback() {
        return Err(refuse(
            RefusalKind::Conflict,
            format!(
                "a {} is running; it cannot be {what}d, only followed to its end",
                j.operation.name().replace('_', " ")
            ),
        ));
    }
    Ok(j)
}

/// Decides `molt upgrade pause`: what is in flight finishes, nothing new
/// starts. `None`: already paused (nothing to write).
pub fn pause(current: Option<&Journal>) -> Result<Option<Journal>, Refusal> {
    let j = running_upgrade(current, "pause")?;
    if j.abort || j.phase == Phase::RollbackControllers {
        return Err(refuse(RefusalKind::Conflict, "the upgrade is rolling back; it cannot be paused"));
    }
    if j.paused {
        return Ok(None);
    }
    let mut j = j.clone();
    j.paused = true;
    Ok(Some(j))
}

/// Decides `molt upgrade resume` of a paused upgrade. `None`: not paused (nothing to write).
pub fn resume_paused(current: Option<&Journal>) -> Result<Option<Journal>, Refusal> {
    let j = running_upgrade(current, "resume")?;
    if !j.paused {
        return Ok(None);
    }
    let mut j = j.clone();
    j.paused = false;
    Ok(Some(j))
}

/// Decides `molt upgrade abort`: before the controllers commit they roll
/// back; after, the SE phase stops and every group ends on one version.
/// `None`: already aborting (nothing to write).
pub fn abort(current: Option<&Journal>) -> Result<Option<Journal>, Refusal> {
    if current.is_some_and(|j| !j.is_running() && j.abort) {
        return Ok(None);
    }
    let j = running_upgrade(current, "abort")?;
    if j.abort {
        return Ok(None);
    }
    if j.phase == Phase::RollbackControllers {
        return Err(refuse(
            RefusalKind::Conflict,
            "the upgrade failed and is already rolling the controllers back; follow it with `molt show upgrade status`",
        ));
    }
    let mut j = j.clone();
    j.abort = true;
    j.paused = false;
    Ok(Some(j))
}

/// Whether the last upgrade went past its commit and ended, so that SE
/// groups can move (`upgrade segroup`) or the system can roll back.
fn committed_upgrade<'a>(current: Option<&'a Journal>, what: &str) -> Result<&'a Journal, Refusal> {
    let Some(j) = current.filter(|j| !j.is_running()) else {
        let why = if current.is_some() { "an operation is running" } else { "no upgrade was run" };
        return Err(refuse(RefusalKind::Conflict, format!("{why}: nothing to {what}")));
    };
    if j.operation == Operation::SystemRollback {
        return Err(refuse(
            RefusalKind::Conflict,
            format!(
                "the system was rolled back to {} already: nothing to {what}; start a new upgrade from there",
                j.from
            ),
        ));
    }
    if j.operation == Operation::Prestage || !j.controllers_committed() {
        return Err(refuse(
            RefusalKind::Conflict,
            format!("the last operation did not upgrade the controllers (they run {}): nothing to {what}", j.from),
        ));
    }
    Ok(j)
}

/// Decides `molt upgrade segroup`: SE groups left on the old version (not
/// selected, aborted or rolled back) move to the controllers' version, one
/// SE at a time as in an upgrade; the image is staged on their SEs first.
pub fn upgrade_groups(
    current: Option<&Journal>,
    groups: &[String],
    config: &Config,
    now: Ms,
) -> Result<Journal, Refusal> {
    let j = committed_upgrade(current, "upgrade")?;
    if groups.is_empty() {
        return Err(refuse(RefusalKind::BadRequest, "name the SE groups to upgrade"));
    }
    for g in groups {
        let Some(op) = j.groups.get(g) else {
            return Err(refuse(RefusalKind::BadRequest, format!("no SE group {g} in this upgrade")));
        };
        match op.state {
            GroupState::NotStarted | GroupState::RolledBack => {}
            GroupState::Suspended => {
                return Err(refuse(
                    RefusalKind::Conflict,
                    format!("SE group {g} is suspended: `molt resume segroup {g}` goes on with it"),
                ));
            }
            s => {
                return Err(refuse(
                    RefusalKind::Conflict,
                    format!("SE group {g} is {}: nothing to upgrade", s.name().replace('_', " ")),
                ));
            }
        }
    }
    let mut j = j.clone();
    for g in groups {
        let op = j.groups.get_mut(g).expect("checked");
        op.state = GroupState::Pending;
        op.reason.clear();
        op.left_out = false;
        op.passed.clear();
        for se in op.ses.clone() {
            let n = j.nodes.get_mut(&se).expect("an SE of the journal");
            n.rollback = false;
            n.tries += 1;
            n.step = Step::Waiting;
            n.by = None;
            n.deadline = None;
            n.fell_back = 0;
            n.note.clear();
        }
    }
    j.operation = Operation::SeGroupUpgrade;
    j.phase = Phase::Distribute;
    restart(&mut j, config, now);
    Ok(j)
}

/// Decides `molt rollback system`: every SE group on the new version
/// returns to the old one (one SE at a time, as their HA mode allows), then
/// the controllers (this leader last). Refused when a node's other slot no
/// longer holds the old version.
pub fn rollback_system(
    current: Option<&Journal>,
    nodes: &[NodeSummary],
    leader: &NodeId,
    config: &Config,
    now: Ms,
) -> Result<Journal, Refusal> {
    let j = committed_upgrade(current, "roll back")?;
    let (from, to) = (j.from, j.to);
    let silent: Vec<String> = nodes.iter().filter(|n| n.version.is_none()).map(|n| n.id.to_string()).collect();
    if !silent.is_empty() {
        return Err(refuse(
            RefusalKind::PreconditionFailed,
            format!("{} not reported yet; wait until every node is up (`molt show cluster`)", silent.join(", ")),
        ));
    }
    let lost: Vec<String> = nodes
        .iter()
        .filter(|n| n.version == Some(to) && n.previous != Some(from))
        .map(|n| match n.previous {
            Some(p) => format!("{} (its other slot holds {p})", n.id),
            None => format!("{} (its other slot is empty)", n.id),
        })
        .collect();
    if !lost.is_empty() {
        return Err(refuse(
            RefusalKind::PreconditionFailed,
            format!(
                "{from} is no longer in the other slot of {}: the system cannot go back to it; \
                 upgrade to a newer version instead",
                lost.join(", ")
            ),
        ));
    }
    let mut j = j.clone();
    for op in j.groups.values_mut() {
        let moved = op.ses.iter().any(|s| {
            nodes.iter().any(|n| n.id == *s && n.version == Some(to))
                || !matches!(j.nodes[s].step, Step::Waiting | Step::Staged | Step::Skipped | Step::RolledBack)
        });
        if !moved {
            continue;
        }
        op.state = GroupState::RollingBack;
        op.reason = "the operator rolled the system back".into();
        for se in op.ses.clone() {
            queue_rollback(j.nodes.get_mut(&se).expect("an SE of the journal"));
        }
    }
    j.operation = Operation::SystemRollback;
    j.phase = Phase::RollbackSeGroups;
    j.leader = leader.clone();
    restart(&mut j, config, now);
    Ok(j)
}

/// Whether the configuration may change: not while an operation runs.
pub fn config_writable(current: Option<&Journal>) -> Result<(), Refusal> {
    match current.filter(|j| crate::view::op_state(j).is_running()) {
        Some(j) => Err(refuse(
            RefusalKind::Conflict,
            format!(
                "the configuration is read-only while the {} runs; try again when `molt show upgrade status` shows it ended",
                j.operation.name().replace('_', " ")
            ),
        )),
        None => Ok(()),
    }
}
