//! A simulated node: two slots and a boot record (with the real boot
//! loader's rule, [`common::slots::next_record`]), power, and an agent that
//! answers commands as the real executor does — idempotent by id, fenced by
//! generation, results kept for the current boot only.

use std::collections::BTreeSet;

use common::{
    DeploymentKind, NodeId, Version,
    session::{Command, CommandKind, CommandState},
    slots::{BootRecord, MAX_BOOT_ATTEMPTS, Slot, next_record},
};

use super::Rng;
use crate::{
    core::{Reported, Seen},
    journal::{Member, Ms},
};

/// Something the node will do at a time.
#[derive(Debug, Clone)]
enum Task {
    /// A command finishes.
    Finish { id: String, state: CommandState, message: String, then: Then },
    /// The agent reboots the node (after reporting).
    Reboot,
}

/// What a finished command changes.
#[derive(Debug, Clone)]
enum Then {
    Nothing,
    Staged(Version),
    Installed(Version),
    Committed,
    SwitchedBack,
    /// Serve these (a placement numbered in arrival order).
    Serve(u64, Vec<String>),
}

/// A node of the simulated cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub member: Member,
    /// How it is deployed: it can stage and apply only images of this kind.
    pub kind: DeploymentKind,
    /// The kind of an image of the wrong kind it was sent (a violation).
    pub wrong_image: Option<DeploymentKind>,
    slots: [Option<Version>; 2],
    record: BootRecord,
    /// Powered on.
    pub powered: bool,
    /// Powered off by an injected fault.
    pub fault_off: bool,
    /// Came back from a fault and has not been told what to serve since:
    /// its services' absence is the fault's.
    pub excused: bool,
    /// Its agent runs.
    pub agent_up: bool,
    /// When the boot in progress ends.
    boot_at: Option<Ms>,
    boots: u64,
    pub boot_id: String,
    /// The version its agent booted (what its heartbeats report).
    running: Version,
    results: Vec<(String, CommandState, String)>,
    /// Commands that rebooted the node, kept on its disk across boots
    /// with the boot that ran them: a repeated one is answered, not re-run.
    kept: Vec<(String, String, String)>,
    generation: u64,
    staged: BTreeSet<Version>,
    pub serving: Vec<String>,
    /// Placements numbered as they arrive, and the last applied.
    tickets: u64,
    placed: u64,
    /// Versions that do not boot here.
    pub bad: BTreeSet<Version>,
    /// The next stage fails for want of space.
    pub disk_full: bool,
    /// Its health gates fail on this version (the service is sick there).
    pub gate_fails_on: Option<Version>,
    tasks: Vec<(Ms, Task)>,
    next_heartbeat: Ms,
}

fn idx(s: Slot) -> usize {
    match s {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl Node {
    /// A node running `version` in slot A, committed.
    pub fn new(member: Member, version: Version) -> Self {
        Self {
            member,
            kind: DeploymentKind::Vm,
            wrong_image: None,
            slots: [Some(version), None],
            record: BootRecord { format: 1, active: Slot::A, previous: None, pending: false, attempts: 0 },
            powered: true,
            fault_off: false,
            excused: false,
            agent_up: true,
            boot_at: None,
            boots: 0,
            boot_id: "boot-0".into(),
            running: version,
            results: vec![],
            kept: vec![],
            generation: 0,
            staged: BTreeSet::new(),
            serving: vec![],
            tickets: 0,
            placed: 0,
            bad: BTreeSet::new(),
            disk_full: false,
            gate_fails_on: None,
            tasks: vec![],
            next_heartbeat: 0,
        }
    }

    /// The version of the slot its boot record names.
    pub fn active_version(&self) -> Option<Version> {
        self.slots[idx(self.record.active)]
    }

    /// Power off now.
    pub fn power_off(&mut self) {
        self.powered = false;
        self.agent_up = false;
        self.boot_at = None;
        self.tasks.clear();
        self.serving.clear();
    }

    /// Power on: it boots.
    pub fn power_on(&mut self, now: Ms, rng: &mut Rng) {
        if self.powered {
            return;
        }
        self.powered = true;
        self.boot_at = Some(now + rng.range(1_000, 4_000));
    }

    fn reboot(&mut self, now: Ms, rng: &mut Rng) {
        self.power_off();
        self.power_on(now, rng);
    }

    /// The boot loader and the agent's start, when due.
    fn boot(&mut self, now: Ms, rng: &mut Rng) {
        let next = next_record(&self.record, MAX_BOOT_ATTEMPTS);
        self.record = next;
        let v = self.active_version();
        if self.record.pending && v.is_some_and(|v| self.bad.contains(&v)) {
            // It does not come up; the watchdog resets it.
            self.boot_at = Some(now + rng.range(1_000, 3_000));
            return;
        }
        self.boots += 1;
        self.boot_id = format!("boot-{}", self.boots);
        self.running = v.expect("the boot record names an installed slot");
        self.agent_up = true;
        self.results.clear();
        self.serving.clear();
        self.tickets = 0;
        self.placed = 0;
        self.next_heartbeat = now;
    }

    /// Advances the node to `now`; returns a heartbeat when one is due.
    pub fn tick(&mut self, now: Ms, rng: &mut Rng) -> Option<Seen> {
        if self.boot_at.is_some_and(|t| t <= now) {
            self.boot_at = None;
            self.boot(now, rng);
        }
        if !self.agent_up {
            return None;
        }
        let due: Vec<(Ms, Task)> = {
            let (due, later) = std::mem::take(&mut self.tasks).into_iter().partition(|(t, _)| *t <= now);
            self.tasks = later;
            due
        };
        for (_, task) in due {
            if !self.agent_up {
                break;
            }
            match task {
                Task::Finish { id, state, message, then } => {
                    let reboot = self.complete(&then, now);
                    if reboot {
                        self.kept.push((id.clone(), message.clone(), self.boot_id.clone()));
                        self.tasks.push((now + 300, Task::Reboot));
                    }
                    self.record_result(id, state, message);
                    // The agent reports a settled command at once.
                    self.next_heartbeat = now;
                }
                Task::Reboot => self.reboot(now, rng),
            }
        }
        if self.agent_up && now >= self.next_heartbeat {
            self.next_heartbeat = now + 1_000;
            return Some(self.seen());
        }
        None
    }

    fn record_result(&mut self, id: String, state: CommandState, message: String) {
        match self.results.iter_mut().find(|(i, _, _)| *i == id) {
            Some(r) => *r = (id, state, message),
            None => self.results.push((id, state, message)),
        }
    }

    /// Applies a finished command's effect; whether it reboots.
    fn complete(&mut self, then: &Then, _now: Ms) -> bool {
        match then {
            Then::Nothing => false,
            Then::Staged(v) => {
                self.staged.insert(*v);
                false
            }
            Then::Installed(v) => {
                let inactive = self.record.active.other();
                self.slots[idx(inactive)] = Some(*v);
                self.record.previous = Some(self.record.active);
                self.record.active = inactive;
                self.record.pending = true;
                self.record.attempts = 0;
                true
            }
            Then::Committed => {
                self.record.pending = false;
                self.record.attempts = 0;
                false
            }
            Then::SwitchedBack => {
                let prev = self.record.previous.expect("checked");
                self.record.previous = Some(self.record.active);
                self.record.active = prev;
                self.record.pending = false;
                self.record.attempts = 0;
                true
            }
            Then::Serve(ticket, names) => {
                // As the real data plane: an older placement never undoes a newer one.
                if *ticket >= self.placed {
                    self.placed = *ticket;
                    self.serving = names.clone();
                    self.excused = false;
                }
                false
            }
        }
    }

    /// The heartbeat.
    pub fn seen(&self) -> Seen {
        let mut results: std::collections::BTreeMap<String, Reported> = self
            .results
            .iter()
            .map(|(id, state, message)| {
                (id.clone(), Reported { state: *state, message: message.clone(), boot_id: self.boot_id.clone() })
            })
            .collect();
        for (id, message, boot) in &self.kept {
            let r = Reported { state: CommandState::Succeeded, message: message.clone(), boot_id: boot.clone() };
            results.insert(id.clone(), r);
        }
        // As the real agent reports it: the version it runs; once it has
        // switched slots for its reboot, the one it switches to as previous.
        let active = self.active_version();
        let switched = active != Some(self.running);
        Seen {
            up: true,
            version: self.running,
            boot_id: self.boot_id.clone(),
            pending: self.record.pending && !switched,
            previous: if switched { active } else { self.record.previous.and_then(|p| self.slots[idx(p)]) },
            serving: self.serving.clone(),
            placing: None,
            results,
            received: Default::default(),
        }
    }

    /// A command arrives (the agent is up).
    pub fn receive(&mut self, c: Command, now: Ms, rng: &mut Rng) {
        if !self.agent_up
            || self.results.iter().any(|(id, _, _)| *id == c.id)
            || self.kept.iter().any(|(id, _, _)| *id == c.id)
        {
            return;
        }
        if c.generation < self.generation {
            let m = format!("refused: command from leader generation {}", c.generation);
            self.record_result(c.id, CommandState::Failed, m);
            return;
        }
        self.generation = c.generation;
        self.record_result(c.id.clone(), CommandState::Running, String::new());
        let active = self.active_version().expect("a booted node runs a version");
        if let CommandKind::Stage(img) | CommandKind::Apply(img) = &c.kind
            && img.kind != self.kind
        {
            // As the real agent: refused, and a violation of the leader's.
            self.wrong_image = Some(img.kind);
            self.record_result(
                c.id,
                CommandState::Failed,
                format!("a {} package on a {} node", img.kind.as_str(), self.kind.as_str()),
            );
            return;
        }
        let (delay, state, message, then) = match &c.kind {
            CommandKind::Stage(img) => {
                if std::mem::take(&mut self.disk_full) {
                    (rng.range(100, 1_000), CommandState::Failed, "no space left on device".into(), Then::Nothing)
                } else {
                    (rng.range(200, 3_000), CommandState::Succeeded, "staged".into(), Then::Staged(img.version))
                }
            }
            CommandKind::Apply(img) => {
                if active == img.version {
                    (10, CommandState::Succeeded, format!("already running {active}"), Then::Nothing)
                } else if self.record.pending {
                    (10, CommandState::Failed, "the active slot is on trial".into(), Then::Nothing)
                } else if !self.staged.contains(&img.version) {
                    (10, CommandState::Failed, "image not staged".into(), Then::Nothing)
                } else {
                    (rng.range(200, 800), CommandState::Succeeded, "installed".into(), Then::Installed(img.version))
                }
            }
            CommandKind::Commit(v) => {
                if active != *v {
                    (10, CommandState::Failed, format!("runs {active}, not {v}"), Then::Nothing)
                } else {
                    (10, CommandState::Succeeded, format!("committed {v}"), Then::Committed)
                }
            }
            CommandKind::Rollback(v) => {
                let prev = self.record.previous.and_then(|p| self.slots[idx(p)]);
                if active == *v {
                    let then = if self.record.pending { Then::Committed } else { Then::Nothing };
                    (10, CommandState::Succeeded, format!("already running {v}"), then)
                } else if prev != Some(*v) {
                    (10, CommandState::Failed, format!("no previous slot holds {v}"), Then::Nothing)
                } else {
                    (10, CommandState::Succeeded, "switched back".into(), Then::SwitchedBack)
                }
            }
            CommandKind::Gate(checks) => {
                if !matches!(self.member, Member::ServiceEngine(_)) {
                    (10, CommandState::Failed, "not a Service Engine".into(), Then::Nothing)
                } else if self.gate_fails_on == Some(active) {
                    let m = format!("{} failed on {active}", checks.first().map(|c| c.to_string()).unwrap_or_default());
                    (rng.range(100, 2_000), CommandState::Failed, m, Then::Nothing)
                } else {
                    (rng.range(100, 2_000), CommandState::Succeeded, "passed".into(), Then::Nothing)
                }
            }
            CommandKind::Place(services) => {
                if matches!(self.member, Member::ServiceEngine(_)) {
                    let names = services.iter().map(|s| s.name.clone()).collect();
                    self.tickets += 1;
                    (rng.range(10, 200), CommandState::Succeeded, "placed".into(), Then::Serve(self.tickets, names))
                } else {
                    (10, CommandState::Failed, "not a Service Engine".into(), Then::Nothing)
                }
            }
        };
        self.tasks.push((now + delay, Task::Finish { id: c.id, state, message, then }));
    }
}

/// A node id.
pub fn id(s: &str) -> NodeId {
    s.parse().expect("a valid node id")
}
