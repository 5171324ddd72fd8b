//! The invariants, written once: checked after every step of the
//! simulation, over the journal, its view and the nodes as they really are.

use std::collections::{BTreeMap, BTreeSet};

use common::{NodeId, Version};

use crate::{
    config::Config,
    core::desired_serving,
    journal::{GroupState, Journal, Member, Operation, Outcome, Phase, Step},
    placement,
    view::view,
};

/// A node as it really is (not as the leader sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealNode {
    /// Controller or SE.
    pub member: Member,
    /// Its agent runs.
    pub up: bool,
    /// Down, or just back, because of an injected fault (not because the
    /// coordinator rebooted it): its services' absence is not the coordinator's.
    pub excused: bool,
    /// The version of the slot its boot record names.
    pub active_version: Option<Version>,
    /// The virtual services it serves.
    pub serving: Vec<String>,
    /// (SE) its health gates fail on this version.
    pub gate_fails_on: Option<Version>,
}

/// The world the invariants look at.
#[derive(Debug, Clone, Copy)]
pub struct Reality<'a> {
    /// Every node.
    pub nodes: &'a BTreeMap<NodeId, RealNode>,
    /// The leader's configuration (on its disk).
    pub config: &'a Config,
    /// The clock.
    pub now: crate::journal::Ms,
    /// How long a node may be down in a step before the leader gives up on
    /// it (the re-formation deadline), plus the time to notice and to elect
    /// a leader: a node down longer than this while staging is a stuck operation.
    pub down_limit: crate::journal::Ms,
    /// A leader acts now (with no controller leading, nothing can give up).
    pub leading: bool,
}

/// A broken invariant.
pub type Violation = String;

/// Remembers what "never decreases" and "once ended" need across steps.
#[derive(Debug, Default, Clone)]
pub struct Monitor {
    progress: Option<(String, u64, u8)>,
    /// The services that were served when the current operation started.
    served_at_start: Option<((String, u64), BTreeSet<String>)>,
    last_outcome: Option<(String, Option<Outcome>)>,
    /// The last journal's hold and abort, and its steps.
    last_steps: Option<LastSteps>,
    /// Since when each node that is down has been down.
    down_since: BTreeMap<NodeId, crate::journal::Ms>,
    /// Since when each node has been staging, in which operation.
    staging_since: BTreeMap<NodeId, (String, crate::journal::Ms)>,
}

/// What the last step's journal said: its id, whether it was paused or
/// aborting, its phase, and each node's step.
#[derive(Debug, Clone)]
struct LastSteps {
    id: String,
    paused: bool,
    abort: bool,
    phase: Phase,
    steps: BTreeMap<NodeId, Step>,
}

impl Monitor {
    /// The invariants that hold after every step.
    pub fn after_step(&mut self, j: Option<&Journal>, real: &Reality<'_>) -> Vec<Violation> {
        let mut out = vec![];
        // At most two versions live.
        let versions: BTreeSet<Version> = real.nodes.values().filter_map(|n| n.active_version).collect();
        if versions.len() > 2 {
            let list: Vec<String> = versions.iter().map(Version::to_string).collect();
            out.push(format!("two-versions: {} versions live: {}", versions.len(), list.join(", ")));
        }
        // Every boot record names a slot that holds a manifest.
        for (id, n) in real.nodes {
            if n.active_version.is_none() {
                out.push(format!("bootable: {id}'s boot record names a slot without a manifest"));
            }
        }
        for (id, n) in real.nodes {
            if n.up {
                self.down_since.remove(id);
            } else {
                self.down_since.entry(id.clone()).or_insert(real.now);
            }
        }
        let Some(j) = j else { return out };
        // A node down while it stages is given up on after the
        // re-formation deadline, not the (much longer) staging one.
        for (id, n) in &j.nodes {
            if n.step == Step::Staging {
                let entry = self.staging_since.entry(id.clone()).or_insert((j.id.clone(), real.now));
                if entry.0 != j.id {
                    *entry = (j.id.clone(), real.now);
                }
            } else {
                self.staging_since.remove(id);
            }
        }
        if real.leading && j.is_running() && j.phase == Phase::Distribute {
            for (id, down) in &self.down_since {
                // Counted from when it was both down and staging.
                let Some((_, staging)) = self.staging_since.get(id) else { continue };
                let since = (*down).max(*staging);
                if real.now > since + real.down_limit {
                    out.push(format!(
                        "down-staging: {id}, down for {} s while staging, still staging (the leader gives up after {} s)",
                        (real.now - since) / 1000,
                        real.down_limit / 1000
                    ));
                }
            }
        }
        // Every service predicted non-disruptive (and served when the
        // operation started) keeps a serving placement.
        let op = (j.id.clone(), j.started);
        if self.served_at_start.as_ref().is_none_or(|(k, _)| *k != op) {
            let served = real.nodes.values().filter(|n| n.up).flat_map(|n| n.serving.iter().cloned()).collect();
            self.served_at_start = Some((op, served));
        }
        let served_at_start = &self.served_at_start.as_ref().expect("set above").1;
        if j.is_running() {
            for (vs, hit, _) in placement::predict(&j.config, j.disruptive, &j.profile.max_parallel_ses) {
                if hit || !served_at_start.contains(&vs) {
                    continue;
                }
                let places = j.config.placements.get(&vs).cloned().unwrap_or_default();
                let served = places.iter().any(|p| {
                    p.parse::<NodeId>()
                        .ok()
                        .and_then(|id| real.nodes.get(&id))
                        .is_some_and(|n| n.excused || (n.up && n.serving.contains(&vs)))
                });
                if !served {
                    out.push(format!(
                        "traffic: {vs}, predicted non-disruptive, has no serving placement ({})",
                        places.join(", ")
                    ));
                }
            }
            // The configuration is read-only while an operation runs.
            if *real.config != j.config {
                out.push("read-only: the configuration changed while an operation runs".into());
            }
        }
        if !j.is_running() {
            let v = view(j);
            if let Some(n) = v.nodes.iter().find(|n| n.running.is_some()) {
                out.push(format!("ended: {} still shows a running {:?}", n.id, n.running));
            }
            if !v.drained.is_empty() {
                out.push(format!("ended: SEs still drained: {}", v.drained.join(", ")));
            }
            if let Some(g) =
                v.se_groups.iter().find(|g| matches!(g.state, GroupState::Pending | GroupState::InProgress))
            {
                out.push(format!("ended: group {} still {}", g.name, g.state.name()));
            }
        }
        // An SE whose health gates fail on the new version never counts as
        // upgraded, unless the journal says it went on past the failure.
        if !j.operation.is_rollback() {
            for (id, op) in j.ses() {
                let sick = real.nodes.get(id).is_some_and(|n| n.gate_fails_on == Some(j.to));
                if sick && op.step == Step::Upgraded && op.cause != Some(crate::journal::Cause::GateFailed) {
                    out.push(format!("gate: {id} counts as upgraded, but its health gates fail on {}", j.to));
                }
            }
        }
        // Nothing new starts while paused or aborting: no node leaves
        // waiting (or staged) for a step that installs the new version.
        // (The controllers' phase, once begun, runs to its commit.)
        if let Some(LastSteps { id, paused, abort, phase, steps }) = &self.last_steps
            && *id == j.id
            && ((*paused && j.paused) || *abort)
        {
            for (n, op) in &j.nodes {
                let was = steps.get(n).copied();
                let in_wave = *phase == Phase::Controllers && op.member == Member::Controller && !*abort;
                let starts = matches!(op.step, Step::Draining | Step::Applying) && !op.rollback && !in_wave;
                if starts && matches!(was, Some(Step::Waiting | Step::Staged)) {
                    let why = if *abort { "aborting" } else { "paused" };
                    out.push(format!("{why}: {n} went on to {:?} while the upgrade was {why}", op.step));
                }
            }
        }
        let steps = j.nodes.iter().map(|(n, op)| (n.clone(), op.step)).collect();
        self.last_steps = Some(LastSteps { id: j.id.clone(), paused: j.paused, abort: j.abort, phase: j.phase, steps });
        // Progress never decreases within an operation.
        let key = (format!("{}:{}", j.id, j.operation.name()), j.started);
        if let Some((id, started, last)) = &self.progress
            && (id, *started) == (&key.0, key.1)
            && j.progress < *last
        {
            out.push(format!("progress: went from {last} to {}", j.progress));
        }
        self.progress = Some((key.0.clone(), key.1, j.progress));
        // On abort the configuration is the snapshot.
        let now = (key.0, j.outcome);
        if j.outcome == Some(Outcome::Aborted) && self.last_outcome.as_ref() != Some(&now) && *real.config != j.config {
            out.push("abort: the configuration is not the one the upgrade started from".into());
        }
        self.last_outcome = Some(now);
        out
    }

    /// The invariants that hold once the cluster has settled after an
    /// operation ended (every node up, no fault for a while).
    pub fn at_rest(&self, j: Option<&Journal>, real: &Reality<'_>) -> Vec<Violation> {
        let mut out = vec![];
        // No SE left out of service: each serves its placements.
        let want = desired_serving(real.config, None);
        for (id, n) in real.nodes {
            if !matches!(n.member, Member::ServiceEngine(_)) {
                continue;
            }
            let mut w: Vec<String> = want.get(id.as_str()).into_iter().flatten().map(|s| s.name.clone()).collect();
            w.sort();
            let mut have = n.serving.clone();
            have.sort();
            if n.up && w != have {
                out.push(format!("at rest: {id} serves [{}], its placements say [{}]", have.join(", "), w.join(", ")));
            }
        }
        let Some(j) = j.filter(|j| !j.is_running()) else { return out };
        // The status says where every node is.
        let on = |id: &NodeId| real.nodes.get(id).and_then(|n| n.active_version);
        // An abort after the commit leaves every SE group on one version
        // (at rest: every node is up and has settled).
        if j.outcome == Some(Outcome::Aborted) && j.controllers_committed() {
            for (name, g) in &j.groups {
                let versions: BTreeSet<Option<Version>> = g.ses.iter().map(on).collect();
                // Suspended ones and SEs passed over (`continue`) are named in the reason.
                let passed = g.ses.iter().any(|s| j.nodes[s].step == Step::Skipped);
                if versions.len() > 1 && g.state != GroupState::Suspended && !passed {
                    out.push(format!("abort: SE group {name} is left on more than one version ({versions:?})"));
                }
            }
        }
        let mut expect = |id: &NodeId, v: Version, why: &str| {
            if on(id) != Some(v) {
                out.push(format!("truth: {id} runs {:?} but {why} says {v}", on(id).map(|v| v.to_string())));
            }
        };
        match (j.operation, j.outcome) {
            (Operation::Upgrade | Operation::SeGroupUpgrade, _) if j.controllers_committed() => {
                for c in j.controllers() {
                    expect(&c, j.to, "the committed controllers phase");
                }
            }
            (Operation::Upgrade, Some(Outcome::Aborted)) if j.nodes.values().any(|n| n.step != Step::Waiting) => {
                for c in j.controllers() {
                    expect(&c, j.from, "the aborted upgrade");
                }
            }
            (Operation::SystemRollback, Some(Outcome::Completed)) => {
                for id in j.nodes.keys() {
                    expect(id, j.from, "the completed system rollback");
                }
            }
            (Operation::SystemRollback, Some(Outcome::Suspended)) => {
                for c in j.controllers() {
                    expect(&c, j.to, "the system rollback stopped before the controllers");
                }
            }
            _ => {}
        }
        for g in j.groups.values() {
            for se in &g.ses {
                let step = j.nodes[se].step;
                match g.state {
                    GroupState::Completed if step == Step::Upgraded => expect(se, j.to, "its completed group"),
                    GroupState::RolledBack => expect(se, j.from, "its rolled-back group"),
                    GroupState::NotStarted if matches!(step, Step::Waiting | Step::Staged) => {
                        expect(se, j.from, "its group, not started")
                    }
                    _ => {}
                }
            }
        }
        out
    }
}
