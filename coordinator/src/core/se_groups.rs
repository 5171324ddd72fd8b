//! The SE phase of the decision: groups in parallel (or in series), the SEs
//! of a group `max_parallel_ses` at a time, never two of one virtual
//! service (all at once when disruptive), drained make-before-break;
//! `action_on_error`; SE group rollbacks.

use std::collections::BTreeMap;

use common::{NodeId, session::ServiceSpec};

use super::{Decider, queue_rollback};
use crate::{
    Mutant,
    config::HealthGate,
    journal::{ActionOnError, GroupState, Operation, Outcome, Step},
    traffic::{converged, desired_serving, drained_first, uncovered},
};

impl Decider<'_> {
    pub(super) fn service_engines(&mut self) {
        if self.j.abort {
            self.abort_service_engines();
        }
        let mut pending: Vec<String> =
            self.j.groups.iter().filter(|(_, g)| g.state == GroupState::Pending).map(|(n, _)| n.clone()).collect();
        // A canary goes first, alone; the others wait until it completed.
        if let Some(canary) = self.j.pause_after.clone().filter(|c| self.j.groups.contains_key(c)) {
            let state = self.j.groups[&canary].state;
            if state.active() {
                pending.retain(|g| *g == canary);
            } else if state != GroupState::Completed {
                for g in pending.drain(..) {
                    let op = self.j.groups.get_mut(&g).expect("group");
                    op.state = GroupState::NotStarted;
                    op.reason = format!("the canary group {canary} did not complete");
                }
            }
        }
        if self.j.groups_in_series() {
            // One group at a time, in name order.
            let busy =
                self.j.groups.values().any(|g| matches!(g.state, GroupState::InProgress | GroupState::RollingBack));
            pending.truncate(usize::from(!busy));
        }
        if self.j.paused {
            // Held: only what is in flight goes on; the wait for every SE starts again on resume.
            pending.clear();
            self.j.phase_deadline = None;
        }
        if !pending.is_empty() {
            // Traffic only moves between SEs the leader sees: after its own
            // reboot they redial one by one.
            let deadline = *self.j.phase_deadline.get_or_insert(self.ctx.now + self.ctx.timeouts.reform);
            let all_up = self.j.ses().all(|(id, _)| self.obs.up(id).is_some());
            if !all_up && self.now() <= deadline {
                return;
            }
            for g in pending {
                self.j.groups.get_mut(&g).expect("group").state = GroupState::InProgress;
            }
        }
        let groups: Vec<String> = self.j.groups.keys().cloned().collect();
        for g in &groups {
            if self.rolling(g) || self.j.groups[g].state == GroupState::InProgress {
                self.group(g);
            }
        }
        if self.j.groups.values().any(|g| g.state.active()) || !self.j.volatile.rolling_back.is_empty() {
            return;
        }
        self.end_service_engines();
    }

    fn rolling(&self, g: &str) -> bool {
        self.j.groups[g].state == GroupState::RollingBack || self.j.volatile.rolling_back.contains_key(g)
    }

    /// The operator aborted the SE phase: groups not started stay so, and
    /// groups left partly upgraded roll back (once what is in flight ends).
    fn abort_service_engines(&mut self) {
        let names: Vec<String> = self.j.groups.keys().cloned().collect();
        for g in names {
            let op = &self.j.groups[&g];
            let moved = op.ses.iter().any(|s| !matches!(self.j.nodes[s].step, Step::Waiting | Step::Staged));
            let rolled = op.ses.iter().any(|s| self.j.nodes[s].rollback);
            match op.state {
                GroupState::Pending => {
                    let op = self.j.groups.get_mut(&g).expect("group");
                    op.state = GroupState::NotStarted;
                    op.reason = "aborted by the operator before it started".into();
                }
                GroupState::Suspended if moved && !rolled => {
                    self.start_group_rollback(&g, "aborted by the operator".into());
                }
                _ => {}
            }
        }
    }

    /// An in-progress group on abort, with nothing in flight: back to the
    /// old version if any SE moved, else not started.
    fn abort_group(&mut self, g: &str) {
        let ses = self.j.groups[g].ses.clone();
        if ses.iter().any(|s| !matches!(self.j.nodes[s].step, Step::Waiting | Step::Staged)) {
            self.start_group_rollback(g, "aborted by the operator".into());
        } else {
            let op = self.j.groups.get_mut(g).expect("group");
            op.state = GroupState::NotStarted;
            op.reason = "aborted by the operator before it started".into();
        }
    }

    fn end_service_engines(&mut self) {
        let from = self.j.from;
        let to = self.j.to;
        if self.j.operation == Operation::SystemRollback {
            let stuck: Vec<String> = self
                .j
                .groups
                .iter()
                .filter(|(_, g)| g.state == GroupState::Suspended)
                .map(|(n, g)| format!("SE group {n}: {}", g.reason))
                .collect();
            if stuck.is_empty() {
                self.start_controller_rollback(format!("the operator rolled the system back to {from}"));
            } else {
                // Controllers older than their SEs would break the version rule: they stay.
                self.finish(
                    Outcome::Suspended,
                    format!(
                        "system rollback stopped before the controllers, which stay on {to}: {}; \
                         `molt resume segroup` goes on with it, then with the controllers",
                        stuck.join("; ")
                    ),
                );
            }
            return;
        }
        if self.j.abort {
            let mut on_from = vec![];
            let mut on_to = vec![];
            for (n, g) in &self.j.groups {
                match g.state {
                    GroupState::Completed => on_to.push(n.as_str()),
                    GroupState::Suspended => on_from.push(format!("{n} (suspended: {})", g.reason)),
                    _ => on_from.push(n.clone()),
                }
            }
            let mut why =
                format!("aborted by the operator after the controllers committed: the controllers stay on {to}");
            if !on_to.is_empty() {
                why.push_str(&format!("; SE groups on {to}: {}", on_to.join(", ")));
            }
            if !on_from.is_empty() {
                why.push_str(&format!(
                    "; SE groups on {from}: {} (`molt upgrade segroup` moves them on)",
                    on_from.join(", ")
                ));
            }
            self.finish(Outcome::Aborted, why);
            return;
        }
        // A group rollback answers for the groups it rolled back only.
        let rollback_op = self.j.operation == Operation::SeGroupRollback;
        let in_rollback = |g: &crate::journal::GroupOp| g.ses.iter().any(|s| self.j.nodes[s].rollback);
        let suspended: Vec<String> = self
            .j
            .groups
            .iter()
            .filter(|(_, g)| g.state == GroupState::Suspended && (!rollback_op || in_rollback(g)))
            .map(|(n, g)| format!("SE group {n} suspended: {}", g.reason))
            .collect();
        if !suspended.is_empty() {
            self.finish(Outcome::Suspended, suspended.join("; "));
            return;
        }
        let mut notes = vec![];
        if self.j.operation == Operation::SeGroupRollback {
            let names: Vec<&str> = self
                .j
                .groups
                .iter()
                .filter(|(_, g)| g.state == GroupState::RolledBack && in_rollback(g))
                .map(|(n, _)| n.as_str())
                .collect();
            notes.push(format!("SE groups {} rolled back to {from}", names.join(", ")));
        } else {
            let skipped: Vec<String> =
                self.j.ses().filter(|(_, n)| n.step == Step::Skipped).map(|(id, _)| id.to_string()).collect();
            if !skipped.is_empty() {
                notes.push(format!("skipped, still on {from}: {}", skipped.join(", ")));
            }
            let behind: Vec<&str> = self
                .j
                .groups
                .iter()
                .filter(|(_, g)| g.state == GroupState::NotStarted)
                .map(|(n, _)| n.as_str())
                .collect();
            if !behind.is_empty() {
                notes.push(format!(
                    "SE groups still on {from}: {} (`molt upgrade segroup {}` moves them to {to})",
                    behind.join(", "),
                    behind.join(" ")
                ));
            }
            for (g, op) in &self.j.groups {
                if op.state == GroupState::RolledBack {
                    notes.push(format!("SE group {g} rolled back to {from} because {}", op.reason));
                }
                if !op.passed.is_empty() {
                    notes.push(format!(
                        "SE group {g} went on past failed SEs (action_on_error: continue): {}",
                        op.passed.iter().map(|p| format!("{}: {}", p.se, p.reason)).collect::<Vec<_>>().join("; ")
                    ));
                }
            }
        }
        self.finish(Outcome::Completed, notes.join("; "));
    }

    /// One SE group: its SEs `max_parallel_ses` at a time (all at once when disruptive).
    fn group(&mut self, g: &str) {
        let ses = self.j.groups[g].ses.clone();
        let desired = desired_serving(&self.j.config, Some(&self.j));
        for se in &ses {
            if self.j.nodes[se].step.in_flight() {
                self.se_step(se, &ses, &desired);
            }
        }
        let in_flight = ses.iter().filter(|s| self.j.nodes[*s].step.in_flight()).count();
        // A failure, a rollback or an abort is handled once nothing of the group is in flight.
        let failed = ses.iter().any(|s| self.j.nodes[s].step == Step::Failed);
        if in_flight > 0 && (failed || self.rolling(g) || self.j.abort || self.j.disruptive) {
            return;
        }
        if in_flight >= self.j.parallel_ses(g) {
            return;
        }
        if self.rolling(g) {
            self.group_rollback_next(g, &ses);
            return;
        }
        if self.j.abort {
            if self.ctx.mutant == Some(Mutant::AbortInPlace) {
                let op = self.j.groups.get_mut(g).expect("group");
                op.state = GroupState::NotStarted;
                op.reason = "aborted by the operator".into();
            } else {
                self.abort_group(g);
            }
            return;
        }
        let failed: Vec<NodeId> = ses.iter().filter(|s| self.j.nodes[*s].step == Step::Failed).cloned().collect();
        if !failed.is_empty() {
            let reason: Vec<String> = failed.iter().map(|s| format!("{s}: {}", self.j.nodes[s].note)).collect();
            let reason = reason.join("; ");
            match self.j.on_error {
                ActionOnError::Suspend => {
                    let op = self.j.groups.get_mut(g).expect("group");
                    op.state = GroupState::Suspended;
                    op.reason = reason;
                    return;
                }
                ActionOnError::Continue => {
                    for s in &failed {
                        // Failed its gate: it runs the new version, committed, serving.
                        let gate = self.j.nodes[s].cause == Some(crate::journal::Cause::GateFailed);
                        self.set(s, if gate { Step::Upgraded } else { Step::Skipped }, None);
                        self.j.drained.remove(s);
                        self.j.volatile.drained.remove(s);
                    }
                    let passed = failed
                        .iter()
                        .map(|s| crate::journal::Passed { se: s.clone(), reason: self.j.nodes[s].note.clone() });
                    self.j.groups.get_mut(g).expect("group").passed.extend(passed.collect::<Vec<_>>());
                }
                ActionOnError::Rollback => {
                    self.start_group_rollback(g, reason);
                    return;
                }
            }
        }
        let mut todo: Vec<NodeId> =
            ses.iter().filter(|s| matches!(self.j.nodes[*s].step, Step::Waiting | Step::Staged)).cloned().collect();
        drained_first(&self.j, &mut todo);
        if todo.is_empty() && in_flight > 0 {
            return;
        }
        if todo.is_empty() {
            self.j.groups.get_mut(g).expect("group").state = GroupState::Completed;
            if self.j.pause_after.as_deref() == Some(g) {
                // The canary is done: hold for the operator to look.
                self.j.paused = true;
            }
            return;
        }
        if self.j.paused && self.ctx.mutant != Some(Mutant::PauseIgnored) {
            return;
        }
        if self.j.disruptive {
            let d = self.now() + self.ctx.timeouts.reform;
            for s in &todo {
                self.set(s, Step::Applying, Some(d));
                self.advance(s);
            }
        } else {
            // Up to `max_parallel_ses` at once, never two SEs of one virtual service.
            let mut moving = in_flight;
            for s in &todo {
                if moving == self.j.parallel_ses(g) {
                    break;
                }
                if moving > 0 && self.ctx.mutant != Some(Mutant::ParallelSharesService) && self.shares_service(s) {
                    continue;
                }
                self.drain(s);
                moving += 1;
            }
        }
    }

    /// An SE serves again on the new version: its health gates decide, if
    /// its group has any; else it is upgraded.
    pub(super) fn upgraded(&mut self, se: &NodeId) {
        let gates = self.gates(se);
        if gates.is_empty() {
            self.set(se, Step::Upgraded, None);
        } else {
            let budget: u64 = gates.iter().map(|g| g.budget_ms()).sum();
            let d = self.now() + self.ctx.timeouts.commit + budget;
            self.set(se, Step::Gating, Some(d));
            self.advance(se);
        }
    }

    /// The health gates `se` runs (in the configuration the operation runs
    /// with): its group's executables, and the HTTP checks of the virtual
    /// services placed on it.
    pub(super) fn gates(&self, se: &NodeId) -> Vec<HealthGate> {
        let cfg = &self.j.config;
        let crate::journal::Member::ServiceEngine(g) = &self.j.nodes[se].member else { return vec![] };
        let placed = |vs: &str| cfg.placements.get(vs).is_some_and(|p| p.iter().any(|x| x == se.as_str()));
        let all = cfg.se_groups.get(g).map(|g| g.health_gates.as_slice()).unwrap_or_default();
        all.iter()
            .filter(|h| match h {
                HealthGate::Http { virtual_service, .. } => placed(virtual_service),
                HealthGate::Exec { .. } => true,
            })
            .cloned()
            .collect()
    }

    /// Whether `se` is placed with an SE that is out of service or on its
    /// way (draining it too could leave a virtual service to nobody).
    fn shares_service(&self, se: &NodeId) -> bool {
        let mut out: Vec<&NodeId> = self.j.ses().filter(|(_, n)| n.step.in_flight()).map(|(id, _)| id).collect();
        let drained = self.j.drained_set();
        out.extend(drained.iter());
        let busy = |x: &String| x != se.as_str() && out.iter().any(|o| o.as_str() == x);
        self.j.config.placements.values().any(|p| p.iter().any(|x| x == se.as_str()) && p.iter().any(busy))
    }

    fn drain(&mut self, se: &NodeId) {
        let d = self.now() + self.ctx.timeouts.drain;
        if self.ctx.mutant == Some(Mutant::DrainedInMemory) {
            self.j.volatile.drained.insert(se.clone());
        } else {
            self.j.drained.insert(se.clone());
        }
        self.set(se, Step::Draining, Some(d));
    }

    /// Returns a group to the old version: written here, before any SE moves.
    fn start_group_rollback(&mut self, g: &str, reason: String) {
        let ses = self.j.groups[g].ses.clone();
        if self.ctx.mutant == Some(Mutant::RollbackUnjournaled) {
            // The defect: every SE is told at once, the group's state kept in memory.
            self.j.volatile.rolling_back.insert(g.to_owned(), reason);
            let d = self.now() + self.ctx.timeouts.reform;
            for s in &ses {
                if !matches!(self.j.nodes[s].step, Step::Waiting | Step::Staged | Step::Skipped) {
                    let n = self.node(s);
                    n.rollback = true;
                    n.tries += 1;
                    n.step = Step::RollingBack;
                    n.deadline = Some(d);
                    self.advance(s);
                }
            }
            return;
        }
        let op = self.j.groups.get_mut(g).expect("group");
        op.state = GroupState::RollingBack;
        op.reason = reason;
        // A skipped SE too: it may have come back on the new version after it was passed.
        for s in &ses {
            if !matches!(self.j.nodes[s].step, Step::Waiting | Step::Staged) {
                queue_rollback(self.node(s));
            }
        }
    }

    /// The next SE of a group that is rolling back, or the group's end.
    fn group_rollback_next(&mut self, g: &str, ses: &[NodeId]) {
        let reason = self.j.groups[g].reason.clone();
        if let Some(s) = ses.iter().find(|s| self.j.nodes[*s].rollback && self.j.nodes[*s].step == Step::Failed) {
            let why = format!("{reason}; then the rollback of {s} failed: {}", self.j.nodes[s].note);
            self.j.volatile.rolling_back.remove(g);
            let op = self.j.groups.get_mut(g).expect("group");
            op.state = GroupState::Suspended;
            op.reason = why;
            return;
        }
        let mut queued: Vec<NodeId> = ses
            .iter()
            .filter(|s| self.j.nodes[*s].rollback && self.j.nodes[*s].step == Step::Waiting)
            .cloned()
            .collect();
        drained_first(&self.j, &mut queued);
        let Some(s) = queued.first() else {
            let why = self.j.volatile.rolling_back.remove(g).unwrap_or(reason);
            let op = self.j.groups.get_mut(g).expect("group");
            op.state = GroupState::RolledBack;
            op.reason = why;
            return;
        };
        let s = s.clone();
        let on_old = self.obs.up(&s).is_some_and(|x| self.settled_on_old(x));
        if on_old {
            self.after_rollback(&s);
        } else if self.j.disruptive {
            let d = self.now() + self.ctx.timeouts.reform;
            self.set(&s, Step::RollingBack, Some(d));
            self.advance(&s);
        } else {
            self.drain(&s);
        }
    }

    /// Advances one SE of a group.
    fn se_step(&mut self, se: &NodeId, group: &[NodeId], desired: &BTreeMap<String, Vec<ServiceSpec>>) {
        let others = || group.iter().filter(move |s| *s != se);
        let step = self.j.nodes[se].step;
        match step {
            Step::Draining => {
                let uncovered = uncovered(&self.j.config, desired, se);
                if uncovered.is_empty() && others().all(|o| converged(self.obs, desired, o)) {
                    let d = self.now() + self.ctx.timeouts.drain;
                    self.set(se, Step::Stopping, Some(d));
                } else if self.past(se) {
                    let s = self.ctx.timeouts.drain / 1000;
                    if !uncovered.is_empty() {
                        let why = format!(
                            "no other SE of its group is in service for {} within {s} s; it stays in service",
                            uncovered.join(", ")
                        );
                        self.fail(se, why);
                        return;
                    }
                    let late: Vec<String> =
                        others().filter(|o| !converged(self.obs, desired, o)).map(|o| o.to_string()).collect();
                    self.fail(se, format!("{} did not take its virtual services within {s} s", late.join(", ")));
                }
            }
            Step::Stopping => {
                if converged(self.obs, desired, se) || self.obs.up(se).is_none() {
                    let d = self.now() + self.ctx.timeouts.reform;
                    let next = if self.j.nodes[se].rollback { Step::RollingBack } else { Step::Applying };
                    self.set(se, next, Some(d));
                    self.advance(se);
                } else if self.past(se) {
                    let s = self.ctx.timeouts.drain / 1000;
                    self.fail(se, format!("did not stop serving within {s} s"));
                }
            }
            Step::Restoring => {
                if converged(self.obs, desired, se) {
                    let d = self.now() + self.ctx.timeouts.drain;
                    self.set(se, Step::Releasing, Some(d));
                } else if self.past(se) {
                    let s = self.ctx.timeouts.drain / 1000;
                    self.fail(se, format!("did not serve its virtual services again within {s} s"));
                }
            }
            Step::Releasing => {
                if others().all(|o| converged(self.obs, desired, o) || self.obs.up(o).is_none()) {
                    if self.j.nodes[se].rollback {
                        self.set(se, Step::RolledBack, None);
                    } else {
                        self.upgraded(se);
                    }
                } else if self.past(se) {
                    let s = self.ctx.timeouts.drain / 1000;
                    self.fail(se, format!("the other SEs did not hand its virtual services back within {s} s"));
                }
            }
            _ => {
                self.advance(se);
            }
        }
    }
}
