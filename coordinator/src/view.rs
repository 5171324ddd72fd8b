//! The status of an operation as a view of its journal: nothing here is
//! stored, so what the operator sees is what the leader will act on.

use serde::Serialize;

use crate::journal::{GroupState, Journal, Member, Operation, Outcome, Phase, Step};

/// One node's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLine {
    /// Its id.
    pub id: String,
    /// Controller, or its SE group.
    pub se_group: Option<String>,
    /// Its step (`waiting`, `applying`, `upgraded`, …).
    pub step: Step,
    /// The event it is running, if any (`apply`, `rejoin`, …).
    pub running: Option<&'static str>,
    /// What happened to it.
    pub note: String,
}

/// One SE group's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupLine {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: &'static str,
    /// Its SEs done, in percent.
    pub progress: u8,
    /// Why it is suspended or rolled back.
    pub reason: String,
}

/// The operation as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    /// `upgrade`, `prestage` or `se_group_rollback`.
    pub operation: &'static str,
    /// `in_progress`, `paused`, `completed`, `suspended` or `aborted`.
    pub state: &'static str,
    /// Where it is, or where it stopped.
    pub phase: &'static str,
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
    let state = match j.outcome {
        Some(o) => o.name(),
        None if j.paused => "paused",
        None => "in_progress",
    };
    let rolled_back = j.nodes.values().any(|n| n.member == Member::Controller && n.step == Step::RolledBack);
    let phase = match (j.phase, j.outcome) {
        (Phase::Done, Some(Outcome::Suspended)) if j.operation.is_rollback() => "rollback_se_groups",
        (Phase::Done, Some(Outcome::Suspended)) => "service_engines",
        (Phase::Done, Some(Outcome::Aborted)) if rolled_back => "rolled_back",
        (p, _) => p.name(),
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
            GroupLine { name: name.clone(), state: g.state.name(), progress, reason: g.reason.clone() }
        })
        .collect();
    View {
        operation: j.operation.name(),
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
