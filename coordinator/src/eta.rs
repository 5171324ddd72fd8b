//! How long the running operation has left, from the per-node times
//! measured in this run and, before any is measured, in earlier runs. Pure:
//! the status computes it on every read, nothing is stored but the
//! [`Timings`] of each finished operation (in the history).
//!
//! The model follows the coordinator's rules: nodes stage at once; the
//! controllers' phase is one span (followers, then the leader, then the
//! commit); SE groups run in parallel (or one after the other), and a
//! group moves `max_parallel_ses` SEs at a time.

use serde::{Deserialize, Serialize};

use crate::journal::{EventStatus, GroupState, Journal, Member, Ms, NodeOp, Operation, Phase, Step, Task};

/// Per-node times measured in one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Timings {
    /// Bytes per second one node staged the image at (the median node).
    pub stage_bytes_per_s: Option<u64>,
    /// The controllers' phase: the first install to the last commit.
    pub controllers_ms: Option<Ms>,
    /// One SE: out of service, installed, rebooted and serving again (the median SE).
    pub se_ms: Option<Ms>,
}

/// Used before anything is measured, here or in an earlier run.
pub const GUESS: Timings =
    Timings { stage_bytes_per_s: Some(100 << 20), controllers_ms: Some(120_000), se_ms: Some(60_000) };

/// What the estimate rests on, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Basis {
    /// At least one time is the first guess ([`GUESS`]).
    Guess,
    /// At least one time comes from an earlier operation.
    History,
    /// Every time was measured in this run.
    ThisRun,
}

impl Basis {
    /// As the status says it.
    pub fn describe(self) -> &'static str {
        match self {
            Basis::ThisRun => "from the times measured in this run",
            Basis::History => "from the times measured in this run and in earlier operations",
            Basis::Guess => "a first guess: part of it has not been measured yet, here or in an earlier operation",
        }
    }
}

/// The estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eta {
    /// Time left.
    pub remaining: Ms,
    /// What it rests on.
    pub basis: Basis,
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// The start of an SE's current pass (its last drain, or its last install
/// when nothing was drained) and, once it ended, its end.
fn se_pass(n: &NodeOp) -> Option<(Ms, Option<Ms>)> {
    let start = n
        .events
        .iter()
        .rposition(|e| e.task == Task::Drain)
        .or_else(|| n.events.iter().rposition(|e| e.task == Task::Apply || e.task == Task::Rollback))?;
    let end = n.events.last().and_then(|e| e.end).filter(|_| matches!(n.step, Step::Upgraded | Step::RolledBack));
    Some((n.events[start].start, end))
}

/// When the controllers' phase started (their first install or rollback).
fn controllers_start(j: &Journal) -> Option<Ms> {
    j.nodes
        .values()
        .filter(|n| n.member == Member::Controller)
        .flat_map(|n| n.events.iter().filter(|e| e.task == Task::Apply || e.task == Task::Rollback))
        .map(|e| e.start)
        .min()
}

/// The times measured in `j` so far.
pub fn measure(j: &Journal) -> Timings {
    let stage = j
        .nodes
        .values()
        .filter_map(|n| {
            let e = n.events.iter().rev().find(|e| e.task == Task::Stage && e.status == EventStatus::Done)?;
            let ms = e.end?.saturating_sub(e.start).max(1);
            Some(j.image_for(n.kind).size.saturating_mul(1000) / ms)
        })
        .collect();
    let cs: Vec<&NodeOp> = j.nodes.values().filter(|n| n.member == Member::Controller).collect();
    let controllers_ms = if !cs.is_empty() && cs.iter().all(|n| matches!(n.step, Step::Upgraded | Step::RolledBack)) {
        let end = cs.iter().filter_map(|n| n.events.last().and_then(|e| e.end)).max();
        controllers_start(j).zip(end).map(|(s, e)| e.saturating_sub(s))
    } else {
        None
    };
    let ses = j.ses().filter_map(|(_, n)| se_pass(n)).filter_map(|(s, e)| Some(e?.saturating_sub(s))).collect();
    Timings { stage_bytes_per_s: median(stage), controllers_ms, se_ms: median(ses) }
}

/// Picks each time from this run, else the most recent earlier operation
/// that measured it, else the guess; and where each came from.
struct Pick {
    t: Timings,
    /// Where the staging rate, the controllers' time and the SE time came from.
    from: [Basis; 3],
}

impl Pick {
    fn new(j: &Journal, history: &[Timings]) -> Self {
        let here = measure(j);
        let pick = |f: fn(&Timings) -> Option<u64>| -> (Option<u64>, Basis) {
            match (f(&here), history.iter().rev().find_map(f)) {
                (Some(v), _) => (Some(v), Basis::ThisRun),
                (None, Some(v)) => (Some(v), Basis::History),
                (None, None) => (f(&GUESS), Basis::Guess),
            }
        };
        let (stage, a) = pick(|t| t.stage_bytes_per_s);
        let (controllers, b) = pick(|t| t.controllers_ms);
        let (se, c) = pick(|t| t.se_ms);
        Self { t: Timings { stage_bytes_per_s: stage, controllers_ms: controllers, se_ms: se }, from: [a, b, c] }
    }

    fn stage_rate(&self) -> u64 {
        self.t.stage_bytes_per_s.unwrap_or(1).max(1)
    }

    fn controllers(&self) -> Ms {
        self.t.controllers_ms.unwrap_or(0)
    }

    fn se(&self) -> Ms {
        self.t.se_ms.unwrap_or(0)
    }
}

/// A running step counts at least a second: it is not done yet.
const AT_LEAST: Ms = 1_000;

/// The time the running operation in `j` has left at `now`; `None` when it
/// ended or is held by the operator (no end while held). `received` gives
/// the bytes a node holds of the image it is staging.
pub fn estimate(j: &Journal, now: Ms, history: &[Timings], received: impl Fn(&common::NodeId) -> u64) -> Option<Eta> {
    if !j.is_running() || j.paused {
        return None;
    }
    let p = Pick::new(j, history);
    let used_stage = j.phase == Phase::Distribute;
    let used_controllers = matches!(j.phase, Phase::Distribute | Phase::Controllers | Phase::RollbackControllers)
        && j.operation == Operation::Upgrade
        || matches!(j.phase, Phase::RollbackSeGroups | Phase::ServiceEngines | Phase::RollbackControllers)
            && j.operation == Operation::SystemRollback;
    let used_se = j.phase != Phase::RollbackControllers && j.operation != Operation::Prestage;
    // The basis counts only the times this estimate uses.
    let basis = [used_stage, used_controllers, used_se]
        .into_iter()
        .zip(p.from)
        .filter_map(|(used, from)| used.then_some(from))
        .min()
        .unwrap_or(Basis::ThisRun);
    let remaining = match j.phase {
        Phase::Distribute => {
            let rest = match j.operation {
                Operation::Prestage => 0,
                Operation::SeGroupUpgrade => se_phase(j, now, &p),
                _ => p.controllers() + whole_se_phase(j, &p),
            };
            distribution(j, now, &p, received) + rest
        }
        Phase::Controllers => controllers_left(j, now, &p) + whole_se_phase(j, &p),
        Phase::RollbackControllers => controllers_left(j, now, &p),
        Phase::ServiceEngines | Phase::RollbackSeGroups => {
            let then = if j.operation == Operation::SystemRollback { p.controllers() } else { 0 };
            se_phase(j, now, &p) + then
        }
        Phase::Done => return None,
    };
    Some(Eta { remaining, basis })
}

/// The slowest node's staging left, at its own rate so far (or the picked one).
fn distribution(j: &Journal, now: Ms, p: &Pick, received: impl Fn(&common::NodeId) -> u64) -> Ms {
    j.nodes
        .iter()
        .filter(|(id, n)| j.distributes_to(id) && n.step != Step::Staged)
        .map(|(id, n)| {
            let size = j.image_for(n.kind).size;
            let got = received(id).min(size);
            let since =
                n.events.last().filter(|e| e.task == Task::Stage && e.end.is_none()).map(|e| now - e.start.min(now));
            let rate = match since {
                Some(ms) if ms >= 1_000 && got > 0 => got.saturating_mul(1000) / ms,
                _ => p.stage_rate(),
            };
            ((size - got).saturating_mul(1000) / rate.max(1)).max(AT_LEAST)
        })
        .max()
        .unwrap_or(0)
}

fn controllers_left(j: &Journal, now: Ms, p: &Pick) -> Ms {
    let elapsed = controllers_start(j).map_or(0, |s| now.saturating_sub(s));
    p.controllers().saturating_sub(elapsed).max(AT_LEAST)
}

/// The SE phase from its start: every group it will move, none moved yet.
fn whole_se_phase(j: &Journal, p: &Pick) -> Ms {
    let per_group = j
        .groups
        .iter()
        .filter(|(_, g)| !g.left_out && g.state.active())
        .map(|(name, g)| batches(g.ses.len(), j.parallel_ses(name), j.disruptive) * p.se());
    combine(j, per_group)
}

/// The SE phase from where it is: each group's SE in flight finishing, then
/// the rest of its SEs, `max_parallel_ses` at a time.
fn se_phase(j: &Journal, now: Ms, p: &Pick) -> Ms {
    // A canary group goes alone, and the upgrade holds when it completes.
    let canary = j.pause_after.as_ref().filter(|c| j.groups.get(*c).is_some_and(|g| g.state.active()));
    let per_group =
        j.groups.iter().filter(|(name, g)| g.state.active() && !g.left_out && canary.is_none_or(|c| c == *name)).map(
            |(name, g)| {
                let rolling = g.state == GroupState::RollingBack;
                let nodes = g.ses.iter().map(|s| &j.nodes[s]);
                let left: Vec<&NodeOp> = nodes
                    .filter(|n| if rolling { n.rollback && n.step != Step::RolledBack } else { !done(n.step) })
                    .collect();
                let in_flight: Vec<Ms> = left
                    .iter()
                    .filter(|n| n.step.in_flight())
                    .map(|n| {
                        let since = se_pass(n).map_or(0, |(s, _)| now.saturating_sub(s));
                        p.se().saturating_sub(since).max(AT_LEAST)
                    })
                    .collect();
                let waiting = left.len() - in_flight.len();
                in_flight.into_iter().max().unwrap_or(0) + batches(waiting, j.parallel_ses(name), j.disruptive) * p.se()
            },
        );
    combine(j, per_group)
}

fn done(step: Step) -> bool {
    matches!(step, Step::Upgraded | Step::Skipped | Step::RolledBack | Step::Failed)
}

/// How many rounds `n` SEs take, `k` at a time (all at once when disruptive).
fn batches(n: usize, k: usize, disruptive: bool) -> u64 {
    if n == 0 {
        0
    } else if disruptive {
        1
    } else {
        n.div_ceil(k.max(1)) as u64
    }
}

/// Groups in parallel take the longest; in series, the sum.
fn combine(j: &Journal, per_group: impl Iterator<Item = Ms>) -> Ms {
    if j.groups_in_series() { per_group.sum() } else { per_group.max().unwrap_or(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Event;

    fn ev(task: Task, start: Ms, end: Option<Ms>) -> Event {
        Event {
            task,
            status: if end.is_some() { EventStatus::Done } else { EventStatus::Running },
            start,
            end,
            message: String::new(),
        }
    }

    fn journal() -> Journal {
        crate::sim::sample_journal(2, &[("g1", 3), ("g2", 1)])
    }

    #[test]
    fn the_se_phase_counts_the_longest_group_at_the_measured_pace() {
        let mut j = journal();
        j.phase = Phase::ServiceEngines;
        let g1 = j.groups["g1"].ses.clone();
        // g1's first SE took 40 s; its second is 10 s into its pass; one waits.
        let first = j.nodes.get_mut(&g1[0]).unwrap();
        first.step = Step::Upgraded;
        first.events = vec![ev(Task::Drain, 1_000, Some(5_000)), ev(Task::Restore, 30_000, Some(41_000))];
        let second = j.nodes.get_mut(&g1[1]).unwrap();
        second.step = Step::Applying;
        second.events = vec![ev(Task::Drain, 50_000, Some(52_000)), ev(Task::Apply, 52_000, None)];
        let eta = estimate(&j, 60_000, &[], |_| 0).unwrap();
        // 30 s left of the second, then 40 s for the third (g2's one SE: 40 s, in parallel).
        assert_eq!(eta.remaining, 70_000);
        assert_eq!(eta.basis, Basis::ThisRun);
        j.profile.groups_in_series = true;
        assert_eq!(estimate(&j, 60_000, &[], |_| 0).unwrap().remaining, 110_000, "g2 after g1");
        j.profile.groups_in_series = false;
        j.profile.max_parallel_ses.insert("g1".into(), 2);
        assert_eq!(estimate(&j, 60_000, &[], |_| 0).unwrap().remaining, 70_000, "one round of the last SE");
    }

    #[test]
    fn before_anything_is_measured_history_then_the_guess_is_used_and_said() {
        let j = journal();
        let guess = estimate(&j, 0, &[], |_| 0).unwrap();
        assert_eq!(guess.basis, Basis::Guess);
        let earlier = Timings { stage_bytes_per_s: Some(1 << 30), controllers_ms: Some(10_000), se_ms: Some(5_000) };
        let eta = estimate(&j, 0, &[earlier], |_| 0).unwrap();
        assert_eq!(eta.basis, Basis::History);
        // Staging (at least a second), the controllers, then g1's three SEs one at a time.
        let stage = (j.image.size * 1000 / (1 << 30)).max(AT_LEAST);
        assert_eq!(eta.remaining, stage + 10_000 + 3 * 5_000);
    }

    #[test]
    fn staging_uses_each_nodes_own_rate_and_a_held_upgrade_has_no_end() {
        let mut j = journal();
        let id = j.controllers()[0].clone();
        let n = j.nodes.get_mut(&id).unwrap();
        n.step = Step::Staging;
        n.events = vec![ev(Task::Stage, 0, None)];
        let size = j.image.size;
        let half = |x: &common::NodeId| if *x == id { size / 2 } else { 0 };
        let earlier = Timings { stage_bytes_per_s: Some(size * 100), controllers_ms: Some(0), se_ms: Some(0) };
        // Half in 10 s: 10 s more for it, the slowest.
        let eta = estimate(&j, 10_000, &[earlier], half).unwrap();
        assert_eq!(eta.remaining, 10_000);
        j.paused = true;
        assert_eq!(estimate(&j, 10_000, &[earlier], half), None);
    }

    #[test]
    fn measured_times_are_medians_of_finished_passes() {
        let mut j = journal();
        let ses: Vec<_> = j.ses().map(|(id, _)| id.clone()).collect();
        for (i, s) in ses.iter().enumerate() {
            let n = j.nodes.get_mut(s).unwrap();
            n.step = Step::Upgraded;
            n.events = vec![ev(Task::Stage, 0, Some(2_000)), ev(Task::Drain, 10_000, Some(11_000))];
            n.events.push(ev(Task::Restore, 12_000, Some(10_000 + 1_000 * (i as u64 + 1))));
        }
        let t = measure(&j);
        assert_eq!(t.se_ms, Some(3_000), "1, 2, 3, 4 s: the median");
        assert_eq!(t.stage_bytes_per_s, Some(j.image.size * 1000 / 2_000));
        assert_eq!(t.controllers_ms, None, "the controllers did not move");
    }
}
