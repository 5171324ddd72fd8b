//! An operation's critical path, from the per-node events of its status:
//! the chain of steps each of which the next one waited for, walked back
//! from the operation's end. Every instant of the wall time is given to
//! exactly one part, so the parts add up to the wall time exactly.
//!
//! Walking back from a time `t` (at first the operation's end): the step
//! that ended last at or before `t`, of any node, is the one the work after
//! it waited for. The time from its end to `t` is the leader's: a wait on
//! a heartbeat if a step was still running on some node then, else idle
//! (the leader waiting on nothing). Then `t` becomes that step's start,
//! and its duration is counted by its kind.

use molt_api::{
    UpgradeStatus,
    status::{Event, Task},
};

/// Where one operation's wall time went, in seconds; the parts sum to `wall`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CriticalPath {
    /// The operation's start to its end.
    pub wall: f64,
    /// Fetching and verifying the image.
    pub staging: f64,
    /// Installing into the inactive slot.
    pub unpack: f64,
    /// Power cycle to the first heartbeat.
    pub reboot: f64,
    /// An SE's services moved away, and back.
    pub traffic: f64,
    /// An SE group's health gates.
    pub gates: f64,
    /// Commands that do no work of their own (commit, rollback): their
    /// round trip, decision to report.
    pub round_trips: f64,
    /// Between steps, while another node's step was still running: a wait
    /// on a heartbeat that reports it.
    pub waits: f64,
    /// Between steps, nothing running anywhere: the leader waiting on nothing.
    pub idle: f64,
}

impl CriticalPath {
    /// The parts, summed (equal to `wall`, up to rounding).
    pub fn sum(&self) -> f64 {
        self.staging + self.unpack + self.reboot + self.traffic + self.gates + self.round_trips + self.waits + self.idle
    }

    /// Round trips, waits and idle: what is the leader's, not the work's.
    pub fn overhead(&self) -> f64 {
        self.round_trips + self.waits + self.idle
    }

    /// The contract's line: `wall W s = staging S + unpack U + ... + idle I`.
    pub fn line(&self) -> String {
        format!(
            "wall {:.2} s = staging {:.2} + unpack {:.2} + reboot {:.2} + traffic {:.2} + gates {:.2} + round trips {:.2} + waits {:.2} + idle {:.2}",
            self.wall,
            self.staging,
            self.unpack,
            self.reboot,
            self.traffic,
            self.gates,
            self.round_trips,
            self.waits,
            self.idle
        )
    }

    /// The critical path of an operation that ended.
    pub fn of(status: &UpgradeStatus) -> Option<Self> {
        let (start, end) = (status.started_at?, status.ended_at?);
        let steps: Vec<(f64, f64, Task)> = status
            .nodes
            .iter()
            .flat_map(|n| &n.events)
            .map(|e: &Event| (e.start.max(start), e.end.unwrap_or(end).min(end), e.task))
            .filter(|(s, e, _)| e >= s)
            .collect();
        let mut p = CriticalPath { wall: end - start, ..Default::default() };
        let mut t = end;
        while t > start {
            // The step the work after `t` waited for: the last to end by `t`
            // (of those that started before it).
            let before = steps.iter().filter(|(s, e, _)| *e <= t && *s < t).max_by(|a, b| a.1.total_cmp(&b.1));
            let Some(&(s, e, task)) = before else {
                // Nothing before: the leader's own start (pre-checks, plan).
                p.idle += t - start;
                break;
            };
            let gap = t - e;
            if gap > 0.0 {
                let running = steps.iter().any(|(s2, e2, _)| *s2 < t && *e2 > e);
                if running { p.waits += gap } else { p.idle += gap }
            }
            let took = e - s.max(start);
            match task {
                Task::Stage => p.staging += took,
                Task::Apply => p.unpack += took,
                Task::Rejoin => p.reboot += took,
                Task::Drain | Task::Restore => p.traffic += took,
                Task::Gate => p.gates += took,
                Task::Commit | Task::Rollback => p.round_trips += took,
            }
            t = s.max(start);
        }
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(events: &[(&str, Task, f64, f64)], start: f64, end: f64) -> UpgradeStatus {
        let mut nodes: Vec<serde_json::Value> = vec![];
        for (node, task, s, e) in events {
            let ev = serde_json::json!({"task": task, "status": "done", "start": s, "end": e, "message": ""});
            match nodes.iter_mut().find(|n| n["id"] == *node) {
                Some(n) => n["events"].as_array_mut().unwrap().push(ev),
                None => nodes.push(serde_json::json!({"id": node, "role": "se", "state": "done", "version": "2.0.0",
                    "received": 0, "events": [ev]})),
            }
        }
        serde_json::from_value(serde_json::json!({"state": "completed", "started_at": start, "ended_at": end,
            "nodes": nodes}))
        .unwrap()
    }

    #[test]
    fn the_parts_add_up_to_the_wall_time_and_overlaps_count_once() {
        // Two nodes stage at once (the slower one is on the path), then one
        // SE goes through its pass; gaps between the steps are the leader's.
        let s = status(
            &[
                ("a", Task::Stage, 0.5, 3.0),
                ("b", Task::Stage, 0.5, 4.0),
                ("b", Task::Drain, 4.2, 4.5),
                ("b", Task::Apply, 4.5, 6.0),
                ("b", Task::Rejoin, 6.0, 9.0),
                ("b", Task::Commit, 9.1, 9.3),
                ("b", Task::Restore, 9.3, 9.6),
            ],
            0.0,
            10.0,
        );
        let p = CriticalPath::of(&s).unwrap();
        assert!((p.sum() - p.wall).abs() < 1e-9, "{p:?}");
        assert_eq!(p.wall, 10.0);
        assert!((p.staging - 3.5).abs() < 1e-9, "the slower staging only: {p:?}");
        assert!((p.traffic - 0.6).abs() < 1e-9 && (p.unpack - 1.5).abs() < 1e-9 && (p.reboot - 3.0).abs() < 1e-9);
        assert!((p.round_trips - 0.2).abs() < 1e-9);
        // 0.5 before the first step, 0.2 after staging, 0.1 before commit, 0.4 at the end: nothing ran then.
        assert!((p.idle - 1.2).abs() < 1e-9 && p.waits == 0.0, "{p:?}");
        assert!(p.line().starts_with("wall 10.00 s = staging 3.50 + unpack 1.50 + reboot 3.00 + traffic 0.60"));
    }

    #[test]
    fn a_gap_while_another_node_works_is_a_wait() {
        // b's commit waited while a was still rejoining (ends after b's apply).
        let s = status(
            &[("b", Task::Apply, 0.0, 1.0), ("a", Task::Rejoin, 0.0, 2.5), ("b", Task::Commit, 2.0, 3.0)],
            0.0,
            3.0,
        );
        let p = CriticalPath::of(&s).unwrap();
        assert!((p.sum() - 3.0).abs() < 1e-9, "{p:?}");
        assert!((p.waits - 1.0).abs() < 1e-9, "{p:?}");
    }
}
