//! The decision function: `next(journal, observed, ctx) -> (journal', actions)`.
//!
//! Pure: no clock, no I/O, no randomness. It reads the journal and what the
//! nodes' heartbeats say, and returns the journal to write and the actions
//! to carry out once it is written. Every step re-reads the nodes rather
//! than trusting memory, so a restarted leader (or a repeated decision)
//! picks up where the cluster really is; commands carry ids derived from
//! the journal, so a repeated send is answered, not run twice.

use common::{
    NodeId,
    session::{Command, CommandKind, CommandState, ImageRef},
};

use crate::{
    Mutant,
    config::Config,
    events::record_events,
    journal::{Cause, GroupState, Journal, Member, Ms, NodeOp, Operation, Outcome, Phase, Step},
};
mod se_groups;

pub use crate::{
    observed::{Observed, Reported, Seen},
    traffic::{desired_serving, placements_to_push},
};

/// How long each kind of wait lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A node's apply and reboot, and the controllers' re-formation.
    pub reform: Ms,
    /// Staging the image on a node.
    pub stage: Ms,
    /// Moving an SE's virtual services to the others, or back.
    pub drain: Ms,
    /// A commit.
    pub commit: Ms,
}

impl Timeouts {
    /// These waits under the cluster's rules (`config`: the operation's
    /// snapshot of the replicated configuration).
    pub fn under(self, config: &Config) -> Self {
        match config.rules.reform_timeout_secs {
            Some(s) => Self { reform: s * 1000, ..self },
            None => self,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { reform: 300_000, stage: 1_800_000, drain: 20_000, commit: 60_000 }
    }
}

/// What the decision needs besides the journal and the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// The driver's clock.
    pub now: Ms,
    /// The leader's generation (fences its commands at the agents).
    pub generation: u64,
    /// Waits.
    pub timeouts: Timeouts,
    /// A known defect put back (simulation only; `None` in the product).
    pub mutant: Option<Mutant>,
}

/// An effect, carried out by the driver after the journal is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver this command (again: the node answers a repeated id without
    /// running it twice; the driver re-sends at most every couple of seconds).
    Send {
        /// To whom.
        node: NodeId,
        /// What.
        command: Command,
    },
    /// Put the configuration back as it was when the operation started.
    RestoreConfig(Config),
    /// Let `node` fetch the image `sha` (it stages it now). The driver
    /// takes back every grant a step does not name.
    AllowFetch {
        /// Who.
        node: NodeId,
        /// Which image.
        sha: common::Sha256Digest,
    },
    /// Probe every virtual service (SEs move now). The driver stops the
    /// probes at the first step that does not ask for them.
    Probe,
}

/// A decision: the journal to write, then the actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The journal after this step.
    pub journal: Journal,
    /// What to do once it is written.
    pub actions: Vec<Action>,
}

/// The ids of an operation's commands.
pub fn command_id(kind: &str, journal_id: &str, tries: u32, node: &NodeId) -> String {
    format!("{kind}-{journal_id}-{tries}-{node}")
}

/// Decides the next step of the operation in `journal`.
pub fn next(journal: &Journal, obs: &Observed, ctx: &Ctx) -> Decision {
    let mut d = Decider { j: journal.clone(), obs, ctx, actions: vec![] };
    match d.j.phase {
        Phase::Distribute => d.distribute(),
        Phase::Controllers => d.controllers(),
        Phase::ServiceEngines | Phase::RollbackSeGroups => d.service_engines(),
        Phase::RollbackControllers => d.rollback_controllers(),
        Phase::Done => d.reconcile(),
    }
    let raw = d.progress();
    d.j.progress = d.j.progress.max(raw);
    record_events(journal, &mut d.j, ctx.now);
    d.measure(journal);
    d.fetches_and_probes();
    Decision { journal: d.j, actions: d.actions }
}

/// Whether SEs move (their services with them) in `j`'s phase: the
/// traffic probes run.
pub fn moving(j: &Journal) -> bool {
    j.is_running() && matches!(j.phase, Phase::ServiceEngines | Phase::RollbackSeGroups)
}

/// The journal of an operation suspended in this process because its
/// journal could not be written: it ends there, nothing is out of
/// service any more (the placer puts every SE back), and the
/// configuration is writable.
pub fn halt(j: &Journal, why: &str, now: Ms, mutant: Option<Mutant>) -> Journal {
    if !j.is_running() {
        return j.clone();
    }
    let ctx = Ctx { now, generation: 0, timeouts: Timeouts::default(), mutant };
    let obs = Observed::default();
    let mut d = Decider { j: j.clone(), obs: &obs, ctx: &ctx, actions: vec![] };
    d.finish(Outcome::Suspended, why.to_owned());
    // The defect: the SEs out of service stay so in a journal that ended.
    if mutant == Some(Mutant::DrainedAfterHalt) {
        d.j.drained = j.drained.clone();
    }
    record_events(j, &mut d.j, now);
    d.j
}

pub use crate::journal::GATE_FAILED;

/// Queues an SE for its group's rollback (a fresh attempt: new command ids).
pub(crate) fn queue_rollback(n: &mut NodeOp) {
    n.rollback = true;
    n.cause = None;
    n.tries += 1;
    n.step = Step::Waiting;
    n.by = None;
    n.deadline = None;
}

struct Decider<'a> {
    j: Journal,
    obs: &'a Observed,
    ctx: &'a Ctx,
    actions: Vec<Action>,
}

impl Decider<'_> {
    /// When the SEs stop moving, what the probes measured goes into the
    /// journal of the same step: the status never shows the phase ended
    /// without its measurements.
    fn measure(&mut self, before: &Journal) {
        let Some(p) = self.obs.probed.as_ref().filter(|p| p.journal == self.j.id) else { return };
        if !moving(before) || moving(&self.j) {
            return;
        }
        for (vs, s) in &p.measured {
            let m = self.j.measured.entry(vs.clone()).or_default();
            *m = crate::journal::Measured {
                downtime_ms: m.downtime_ms + s.downtime_ms,
                failed_probes: m.failed_probes + s.failed_probes,
                rounds: m.rounds + s.rounds,
                down_slots: m.down_slots.iter().chain(&s.down_slots).take(10).cloned().collect(),
            };
        }
    }

    /// A node may fetch the operation's image exactly while it stages it;
    /// the services are probed while SEs move.
    fn fetches_and_probes(&mut self) {
        if !self.j.is_running() {
            return;
        }
        for (id, n) in &self.j.nodes {
            if n.step == Step::Staging {
                let sha = self.j.image_for(n.kind).sha256;
                self.actions.push(Action::AllowFetch { node: id.clone(), sha });
            }
        }
        if moving(&self.j) {
            self.actions.push(Action::Probe);
        }
    }

    fn now(&self) -> Ms {
        self.ctx.now
    }

    /// The image of the node `id` (by its deployment kind).
    fn image(&self, id: &NodeId) -> ImageRef {
        let i = if self.ctx.mutant == Some(crate::Mutant::OneImage) {
            &self.j.image
        } else {
            self.j.image_for(self.j.nodes[id].kind)
        };
        ImageRef { sha256: i.sha256, size: i.size, version: self.j.to, kind: i.kind, min_compatible: i.min_compatible }
    }

    fn command(&self, node: &NodeId, kind: CommandKind) -> Command {
        let tries = self.j.nodes[node].tries;
        Command {
            id: command_id(kind.name(), &self.j.id, tries, node),
            generation: self.ctx.generation,
            kind,
            operation_id: Some(self.j.id.clone()),
        }
    }

    fn send(&mut self, node: &NodeId, command: Command) {
        if self.obs.up(node).is_some() {
            self.actions.push(Action::Send { node: node.clone(), command });
        }
    }

    fn node(&mut self, id: &NodeId) -> &mut NodeOp {
        self.j.nodes.get_mut(id).expect("a node of the journal")
    }

    fn set(&mut self, id: &NodeId, step: Step, deadline: Option<Ms>) {
        let n = self.node(id);
        n.step = step;
        n.deadline = deadline;
    }

    fn fail(&mut self, id: &NodeId, why: String) {
        self.fail_as(id, why, Cause::Failed);
    }

    fn fail_as(&mut self, id: &NodeId, why: String, cause: Cause) {
        let n = self.node(id);
        n.step = Step::Failed;
        n.deadline = None;
        n.note = why;
        n.cause = Some(cause);
    }

    fn past(&self, id: &NodeId) -> bool {
        self.j.nodes[id].deadline.is_some_and(|d| self.now() > d)
    }

    /// Notes in the journal since when `id` has been seen down (clears it
    /// once it is up); how long it has been down.
    fn track_down(&mut self, id: &NodeId) -> Option<Ms> {
        let now = self.now();
        let up = self.obs.up(id).is_some();
        let n = self.node(id);
        if up {
            n.down_since = None;
            return None;
        }
        let since = *n.down_since.get_or_insert(now);
        Some(now.saturating_sub(since))
    }

    fn down_or_up(&self, id: &NodeId) -> &'static str {
        if self.obs.up(id).is_some() { "up" } else { "down" }
    }

    fn is_se(&self, id: &NodeId) -> bool {
        matches!(self.j.nodes[id].member, Member::ServiceEngine(_))
    }

    /// Whether a node runs the old version and will stay on it: not on
    /// trial, and not switched to the new one for a reboot still to come (a
    /// node that ever held the new version gets the rollback command, which
    /// it answers at once when there is nothing to undo).
    fn settled_on_old(&self, s: &crate::observed::Seen) -> bool {
        s.version == self.j.from && !s.pending && s.previous != Some(self.j.to)
    }

    /// Where a node goes once it runs the new version.
    fn after_rejoin(&mut self, id: &NodeId) {
        if self.is_se(id) {
            let d = self.now() + self.ctx.timeouts.commit;
            self.set(id, Step::Committing, Some(d));
        } else {
            self.set(id, Step::Rejoined, None);
        }
    }

    /// Where a node goes once it runs the old version again.
    fn after_rollback(&mut self, id: &NodeId) {
        if self.is_se(id) && !self.j.disruptive {
            self.restore(id);
        } else {
            self.set(id, Step::RolledBack, None);
        }
    }

    /// Puts an SE back in service: it serves first, then the others let go.
    fn restore(&mut self, id: &NodeId) {
        let d = self.now() + self.ctx.timeouts.drain;
        self.j.drained.remove(id);
        self.j.volatile.drained.remove(id);
        self.set(id, Step::Restoring, Some(d));
    }

    /// Advances a node in apply, rejoin, commit, rollback or rollback-rejoin.
    fn advance(&mut self, id: &NodeId) {
        let (from, to) = (self.j.from, self.j.to);
        let step = self.j.nodes[id].step;
        match step {
            Step::Applying => {
                let c = self.command(id, CommandKind::Apply(self.image(id)));
                match self.obs.result(id, &c.id) {
                    Some(r) if r.state == CommandState::Succeeded => {
                        let by = r.boot_id.clone();
                        if self.obs.up(id).is_some_and(|s| s.version == to) {
                            self.after_rejoin(id);
                        } else {
                            self.node(id).by = Some(by);
                            self.node(id).step = Step::Rejoining;
                        }
                    }
                    Some(r) if r.state == CommandState::Failed => {
                        let why = format!("apply failed: {}", r.message);
                        self.fail(id, why);
                    }
                    _ if self.past(id) => {
                        let why = format!("no answer to apply within the deadline (node {})", self.down_or_up(id));
                        self.fail(id, why);
                    }
                    _ => self.send(id, c),
                }
            }
            Step::Rejoining => {
                let by = self.j.nodes[id].by.clone();
                if let Some(s) = self.obs.up(id).filter(|s| Some(&s.boot_id) != by.as_ref()) {
                    if s.version == to {
                        self.after_rejoin(id);
                        return;
                    }
                    if s.version == from {
                        // Once, it is applied again: it may have reverted
                        // itself because the leader was unreachable, or
                        // failed one boot. A second time, the image is at fault.
                        if self.j.nodes[id].fell_back == 0 {
                            let d = self.now() + self.ctx.timeouts.reform;
                            let n = self.node(id);
                            n.fell_back += 1;
                            n.tries += 1;
                            n.by = None;
                            n.note = format!("came back on {from}; applying {to} once more");
                            self.set(id, Step::Applying, Some(d));
                            return;
                        }
                        self.fail(
                            id,
                            format!("came back on {from}: {to} did not start there and its boot loader fell back"),
                        );
                        return;
                    }
                }
                if self.past(id) {
                    let s = self.ctx.timeouts.reform / 1000;
                    self.fail(id, format!("did not rejoin on {to} within {s} s"));
                }
            }
            Step::Committing => {
                let c = self.command(id, CommandKind::Commit(to));
                match self.obs.result(id, &c.id) {
                    Some(r) if r.state == CommandState::Succeeded => {
                        if self.is_se(id) && !self.j.disruptive {
                            self.restore(id);
                        } else if self.is_se(id) {
                            self.upgraded(id);
                        } else {
                            self.set(id, Step::Upgraded, None);
                        }
                    }
                    Some(r) if r.state == CommandState::Failed => {
                        let why = format!("commit failed: {}", r.message);
                        self.fail(id, why);
                    }
                    _ if self.past(id) => {
                        let why = format!("no answer to commit within the deadline (node {})", self.down_or_up(id));
                        self.fail(id, why);
                    }
                    _ => self.send(id, c),
                }
            }
            Step::Gating => {
                let checks = self.gates(id).iter().map(|g| g.to_check(&self.j.config)).collect();
                let c = self.command(id, CommandKind::Gate(checks));
                match self.obs.result(id, &c.id) {
                    Some(r) if r.state == CommandState::Succeeded => self.set(id, Step::Upgraded, None),
                    Some(r)
                        if r.state == CommandState::Failed && self.ctx.mutant == Some(crate::Mutant::GateIgnored) =>
                    {
                        self.set(id, Step::Upgraded, None);
                    }
                    Some(r) if r.state == CommandState::Failed => {
                        let why = format!("{GATE_FAILED} on {to}: {}", r.message);
                        self.fail_as(id, why, Cause::GateFailed);
                    }
                    _ if self.past(id) => {
                        let why = format!(
                            "{GATE_FAILED} on {to}: no answer within the deadline (node {})",
                            self.down_or_up(id)
                        );
                        self.fail_as(id, why, Cause::GateFailed);
                    }
                    _ => self.send(id, c),
                }
            }
            Step::RollingBack => {
                if self.obs.up(id).is_some_and(|s| self.settled_on_old(s)) {
                    self.after_rollback(id);
                    return;
                }
                let c = self.command(id, CommandKind::Rollback(from));
                match self.obs.result(id, &c.id) {
                    Some(r) if r.state == CommandState::Succeeded => {
                        let by = r.boot_id.clone();
                        if self.obs.up(id).is_some_and(|s| s.version == from) {
                            self.after_rollback(id);
                        } else {
                            self.node(id).by = Some(by);
                            self.node(id).step = Step::RollbackRejoining;
                        }
                    }
                    Some(r) if r.state == CommandState::Failed => {
                        let why = format!("rollback failed: {}", r.message);
                        self.fail(id, why);
                    }
                    _ if self.past(id) => {
                        let why = if self.obs.up(id).is_some() {
                            "no answer to rollback within the deadline".to_owned()
                        } else {
                            format!(
                                "down; it returns to {from} when it comes back (the leader rolls it back, or it reverts itself)"
                            )
                        };
                        self.fail(id, why);
                    }
                    _ => self.send(id, c),
                }
            }
            Step::RollbackRejoining => {
                let by = self.j.nodes[id].by.clone();
                if self.obs.up(id).is_some_and(|s| Some(&s.boot_id) != by.as_ref() && s.version == from) {
                    self.after_rollback(id);
                } else if self.past(id) {
                    self.fail(id, format!("did not come back on {from}"));
                }
            }
            _ => {}
        }
    }

    // ---- distribute ----

    fn distribute(&mut self) {
        if let Some(why) = self.obs.image_unusable.clone() {
            self.finish(Outcome::Aborted, format!("the image is no longer usable, nothing was installed: {why}"));
            return;
        }
        if self.j.abort {
            let what = if self.j.operation == Operation::SeGroupUpgrade {
                "these SE groups stay on"
            } else {
                "nothing was installed; the cluster stays on"
            };
            let from = self.j.from;
            self.finish(Outcome::Aborted, format!("aborted by the operator during distribution: {what} {from}"));
            return;
        }
        // The controllers first: they install first.
        let mut ids: Vec<NodeId> = self.j.nodes.keys().filter(|id| self.j.distributes_to(id)).cloned().collect();
        ids.sort_by_key(|id| self.is_se(id));
        let limit = match self.j.profile.max_transfers {
            0 => usize::MAX,
            k => k,
        };
        let mut staging = ids.iter().filter(|id| self.j.nodes[*id].step == Step::Staging).count();
        for id in &ids {
            match self.j.nodes[id].step {
                Step::Waiting if staging >= limit => continue,
                Step::Waiting => {
                    staging += 1;
                    let d = self.now() + self.ctx.timeouts.stage;
                    self.set(id, Step::Staging, Some(d));
                }
                Step::Staging => {}
                _ => continue,
            }
            let c = self.command(id, CommandKind::Stage(self.image(id)));
            let down_for = self.track_down(id);
            let reform = self.ctx.timeouts.reform;
            match self.obs.result(id, &c.id) {
                Some(r) if r.state == CommandState::Succeeded => self.set(id, Step::Staged, None),
                Some(r) if r.state == CommandState::Failed => {
                    let why = r.message.clone();
                    self.fail(id, why);
                }
                _ if self.past(id) => {
                    let why = format!("not staged within the deadline (node {})", self.down_or_up(id));
                    self.fail(id, why);
                }
                // Down longer than a node may be away: staging's own,
                // longer deadline is for a slow transfer, not a lost node.
                Some(_) | None if down_for.is_some_and(|d| d > reform) => {
                    let why = format!(
                        "down for {} s while staging, longer than the {} s a node may be away (the re-formation deadline)",
                        down_for.unwrap_or(0) / 1000,
                        reform / 1000
                    );
                    self.fail(id, why);
                }
                _ => self.send(id, c),
            }
        }
        let failed: Vec<String> = ids
            .iter()
            .filter(|id| self.j.nodes[*id].step == Step::Failed)
            .map(|id| format!("{id}: {}", self.j.nodes[id].note))
            .collect();
        if !failed.is_empty() {
            self.finish(Outcome::Aborted, format!("distribution failed, nothing was installed: {}", failed.join("; ")));
            return;
        }
        if ids.iter().all(|id| self.j.nodes[id].step == Step::Staged) {
            match self.j.operation {
                Operation::Prestage => {
                    let to = self.j.to;
                    self.finish(Outcome::Completed, format!("{to} staged on every node"));
                }
                // Held before anything is installed.
                _ if self.j.paused => {}
                Operation::SeGroupUpgrade => {
                    self.j.phase = Phase::ServiceEngines;
                    self.j.phase_deadline = None;
                    self.service_engines();
                }
                _ => {
                    self.j.phase = Phase::Controllers;
                    self.controllers();
                }
            }
        }
    }

    // ---- controllers ----

    fn controllers(&mut self) {
        let all = self.j.controllers();
        // Before a controller commits, an abort rolls them back; after,
        // the commit completes and the SE phase stops at once.
        let committing = all.iter().any(|c| matches!(self.j.nodes[c].step, Step::Committing | Step::Upgraded));
        if self.j.abort && !committing {
            let to = self.j.to;
            self.start_controller_rollback(format!("aborted by the operator before the controllers committed {to}"));
            return;
        }
        let leader = self.j.leader.clone();
        let reform = self.ctx.timeouts.reform;
        for c in all.iter().filter(|c| **c != leader) {
            if matches!(self.j.nodes[c].step, Step::Waiting | Step::Staged) {
                let d = self.now() + reform;
                self.set(c, Step::Applying, Some(d));
            }
        }
        let followers_off = all.iter().filter(|c| **c != leader).all(|c| {
            matches!(self.j.nodes[c].step, Step::Rejoining | Step::Rejoined | Step::Committing | Step::Upgraded)
        });
        if followers_off
            && self.j.nodes.contains_key(&leader)
            && matches!(self.j.nodes[&leader].step, Step::Waiting | Step::Staged)
        {
            let d = self.now() + reform;
            self.set(&leader, Step::Applying, Some(d));
        }
        for c in &all {
            self.advance(c);
        }
        let failed: Vec<String> = all
            .iter()
            .filter(|c| self.j.nodes[*c].step == Step::Failed)
            .map(|c| format!("{c}: {}", self.j.nodes[c].note))
            .collect();
        if !failed.is_empty() {
            self.start_controller_rollback(format!("the controllers did not re-form: {}", failed.join("; ")));
            return;
        }
        if all.iter().all(|c| self.j.nodes[c].step == Step::Rejoined) {
            for c in &all {
                let d = self.now() + self.ctx.timeouts.commit;
                self.set(c, Step::Committing, Some(d));
                self.advance(c);
            }
        }
        if all.iter().all(|c| self.j.nodes[c].step == Step::Upgraded) {
            self.j.phase = Phase::ServiceEngines;
            self.j.phase_deadline = None;
            self.service_engines();
        }
    }

    fn start_controller_rollback(&mut self, reason: String) {
        self.j.phase = Phase::RollbackControllers;
        self.j.reason = reason;
        let d = self.now() + self.ctx.timeouts.reform;
        let leader = self.j.leader.clone();
        for c in self.j.controllers() {
            let n = self.node(&c);
            if matches!(n.step, Step::Waiting | Step::Staging | Step::Staged) {
                n.step = Step::RolledBack;
                n.deadline = None;
            } else {
                n.step = Step::RollingBack;
                n.tries += 1;
                n.by = None;
                n.deadline = if c == leader { None } else { Some(d) };
            }
        }
        self.rollback_controllers();
    }

    fn rollback_controllers(&mut self) {
        let all = self.j.controllers();
        let leader = self.j.leader.clone();
        let settled = |d: &Self, c: &NodeId| matches!(d.j.nodes[c].step, Step::RolledBack | Step::Failed);
        for c in all.iter().filter(|c| **c != leader) {
            self.advance(c);
        }
        // The leader last: its own rollback reboots it. Its wait starts now.
        if all.iter().filter(|c| **c != leader).all(|c| settled(self, c)) && self.j.nodes.contains_key(&leader) {
            if self.j.nodes[&leader].step == Step::RollingBack && self.j.nodes[&leader].deadline.is_none() {
                let d = self.now() + self.ctx.timeouts.reform;
                self.node(&leader).deadline = Some(d);
            }
            self.advance(&leader);
        }
        if !all.iter().all(|c| settled(self, c)) {
            return;
        }
        let from = self.j.from;
        let left: Vec<String> = all
            .iter()
            .filter(|c| self.j.nodes[*c].step == Step::Failed)
            .map(|c| format!("{c} {}", self.j.nodes[c].note))
            .collect();
        let mut reason = self.j.reason.clone();
        if !left.is_empty() {
            reason = format!("{reason}. Not back on {from} yet: {}", left.join("; "));
        }
        if self.j.operation == Operation::SystemRollback {
            // The operator's rollback keeps the configuration as it is now; a
            // controller that was down is rolled back when it comes back.
            self.finish(Outcome::Completed, reason);
            return;
        }
        let snapshot = self.j.config.clone();
        self.actions.push(Action::RestoreConfig(snapshot));
        self.finish(Outcome::Aborted, reason);
    }

    // ---- end ----

    fn finish(&mut self, outcome: Outcome, reason: String) {
        let now = self.now();
        // Nothing of the operation goes out once it ended: a command
        // decided earlier in this step is not in the journal any more.
        self.actions.retain(|a| !matches!(a, Action::Send { .. }));
        let j = &mut self.j;
        j.phase = Phase::Done;
        j.phase_deadline = None;
        j.outcome = Some(outcome);
        if j.reason.is_empty() || outcome == Outcome::Aborted {
            j.reason = reason;
        } else if !reason.is_empty() && !j.reason.contains(&reason) {
            j.reason = format!("{}; {reason}", j.reason);
        }
        j.ended = Some(now);
        // No SE stays out of service once the operation has ended.
        j.drained.clear();
        j.volatile.drained.clear();
        j.volatile.rolling_back.clear();
        for g in j.groups.values_mut() {
            if matches!(g.state, GroupState::Pending | GroupState::InProgress) {
                g.state = GroupState::NotStarted;
            } else if g.state == GroupState::RollingBack {
                g.state = GroupState::Suspended;
            }
        }
        for n in j.nodes.values_mut() {
            if n.step.running_event().is_some() {
                n.note = format!("stopped in {:?}: the operation ended", n.step).to_lowercase();
                n.cause = Some(Cause::Stopped);
                n.step = if n.step == Step::Staging { Step::Waiting } else { Step::Failed };
            }
            n.deadline = None;
        }
        if outcome == Outcome::Completed && j.operation != Operation::SeGroupRollback {
            j.progress = 100;
        }
    }

    /// After an aborted upgrade or a system rollback, nodes that come back
    /// on the new version (they were down during the rollback) are rolled back.
    fn reconcile(&mut self) {
        // An abort after the commit leaves the controllers on the new
        // version; a system rollback that stopped before them too.
        let undone = match (self.j.operation, self.j.outcome) {
            (Operation::Upgrade, Some(Outcome::Aborted)) | (Operation::SystemRollback, Some(Outcome::Completed)) => {
                !self.j.controllers_committed()
            }
            _ => false,
        };
        if !undone {
            return;
        }
        let (from, to) = (self.j.from, self.j.to);
        for (id, s) in &self.obs.nodes {
            if s.up && s.version == to && s.previous == Some(from) {
                let command = Command {
                    id: format!("reconcile-{}-{id}-{}", self.j.id, s.boot_id),
                    generation: self.ctx.generation,
                    kind: CommandKind::Rollback(from),
                    operation_id: Some(self.j.id.clone()),
                };
                self.actions.push(Action::Send { node: id.clone(), command });
            }
        }
    }

    /// Progress in percent, from the steps (the journal keeps the maximum).
    fn progress(&self) -> u8 {
        let j = &self.j;
        let frac = |done: usize, total: usize| if total == 0 { 1.0 } else { done as f64 / total as f64 };
        let pct = match j.phase {
            Phase::Done => return j.progress,
            Phase::Distribute => {
                // Bytes received, a staged node counting whole.
                let got: f64 = j
                    .nodes
                    .iter()
                    .map(|(id, n)| match n.step {
                        Step::Staged => 1.0,
                        _ => {
                            let image = j.image_for(n.kind);
                            let r = self.obs.nodes.get(id).and_then(|s| s.received.get(&image.sha256));
                            (r.copied().unwrap_or(0) as f64 / image.size.max(1) as f64).min(1.0)
                        }
                    })
                    .sum();
                let span = if j.operation == Operation::Prestage { 99.0 } else { 40.0 };
                span * got / j.nodes.len().max(1) as f64
            }
            Phase::Controllers => {
                let cs = j.controllers();
                let weight: f64 = cs
                    .iter()
                    .map(|c| match j.nodes[c].step {
                        Step::Applying => 0.2,
                        Step::Rejoining => 0.4,
                        Step::Rejoined | Step::Committing => 0.8,
                        Step::Upgraded => 1.0,
                        _ => 0.0,
                    })
                    .sum();
                40.0 + 20.0 * weight / cs.len().max(1) as f64
            }
            Phase::ServiceEngines if matches!(j.operation, Operation::Upgrade | Operation::SeGroupUpgrade) => {
                // The SEs of the groups it moves (not those left out or done before).
                let moving: Vec<&NodeOp> = j
                    .groups
                    .values()
                    .filter(|g| !g.left_out && g.state != GroupState::NotStarted)
                    .flat_map(|g| g.ses.iter().map(|s| &j.nodes[s]))
                    .collect();
                let done = moving
                    .iter()
                    .filter(|n| matches!(n.step, Step::Upgraded | Step::Skipped | Step::RolledBack))
                    .count();
                60.0 + 40.0 * frac(done, moving.len())
            }
            Phase::ServiceEngines | Phase::RollbackSeGroups => {
                let moving: Vec<&NodeOp> = j.ses().filter(|(_, n)| n.rollback).map(|(_, n)| n).collect();
                let done = moving.iter().filter(|n| n.step == Step::RolledBack).count();
                100.0 * frac(done, moving.len())
            }
            Phase::RollbackControllers => return j.progress,
        };
        (pct as u8).min(99)
    }
}
