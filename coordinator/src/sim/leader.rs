//! The simulated leader: the same driver loop as the product's — observe,
//! decide with [`core::next`], write the journal, then act — over a
//! simulated disk that keeps only what is serialized.

use std::collections::BTreeMap;

use common::{DeploymentKind, NodeId, Version, session::Command};

use super::image;
use crate::{
    Mutant,
    config::{Config, VirtualService},
    core::{self, Action, Ctx, Observed, Seen, Timeouts},
    journal::{ActionOnError, Journal, Member, Ms, Operation},
    placement,
    request::{self, NodeSummary, ProfileRequest, StartCtx, StartRequest},
};

/// A heartbeat's age after which the node counts as down.
const DOWN_AFTER: Ms = 3_000;
/// A command is sent again at most this often.
const RESEND: Ms = 2_000;

/// What survives a leader: the controllers' replicated store, as raft
/// keeps it (what a majority has committed). It also checks raft's
/// guarantees as molt relies on them: one leader writes per term, and no
/// write of an older term is taken once a newer term wrote.
#[derive(Debug, Clone)]
pub struct Disk {
    journal: Option<String>,
    /// `journal` as read back (what a new leader gets).
    parsed: Option<Journal>,
    /// The configuration.
    pub config: Config,
    /// Who wrote in each term.
    writers: BTreeMap<u64, NodeId>,
}

impl Disk {
    /// A fresh store.
    pub fn new(config: Config) -> Self {
        Self { journal: None, parsed: None, config, writers: BTreeMap::new() }
    }

    /// A write of `who`, leading in `term`, is taken: the checks of the
    /// replicated store.
    fn accept(&mut self, term: u64, who: &NodeId, violations: &mut Vec<String>) {
        if let Some((newest, by)) = self.writers.last_key_value()
            && *newest > term
        {
            violations
                .push(format!("stale-leader: {who} wrote in term {term} after {by} wrote in the newer term {newest}"));
        }
        match self.writers.get(&term) {
            Some(other) if other != who => {
                violations.push(format!("one-leader-per-term: {who} and {other} both wrote in term {term}"))
            }
            _ => {
                self.writers.insert(term, who.clone());
            }
        }
    }

    /// The journal as written (and read back).
    pub fn journal(&self) -> Option<&Journal> {
        self.parsed.as_ref()
    }

    fn write(&mut self, j: &Journal) {
        self.journal = Some(serde_json::to_string(j).expect("serializes"));
        // What a reader gets: the journal without what it does not hold.
        self.parsed = Some(Journal { volatile: Default::default(), ..j.clone() });
    }

    /// The journal read back from its text, as a restarted leader reads it.
    fn read(&self) -> Option<Journal> {
        self.journal.as_ref().map(|t| serde_json::from_str(t).expect("the journal round-trips"))
    }
}

/// An operator's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `molt upgrade system` (of these groups, a canary first, when named).
    Start {
        to: Version,
        min_compatible: Version,
        on_error: ActionOnError,
        disruptive: bool,
        se_groups: Vec<String>,
        pause_after: Option<String>,
        profile: ProfileRequest,
    },
    /// `molt upgrade pause`.
    Pause,
    /// `molt upgrade resume` of a paused upgrade.
    ResumePaused,
    /// `molt upgrade abort`.
    Abort,
    /// `molt upgrade segroup`.
    UpgradeGroups(Vec<String>),
    /// `molt rollback system`.
    RollbackSystem,
    /// `molt upgrade prestage`.
    Prestage { to: Version },
    /// `molt resume segroup`.
    Resume { skip: bool },
    /// `molt rollback segroup`.
    RollbackGroups(Vec<String>),
    /// A configuration change.
    ConfigWrite,
}

impl Request {
    /// For fault counts.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Start { .. } => "start",
            Request::Prestage { .. } => "prestage",
            Request::Resume { .. } => "resume",
            Request::RollbackGroups(_) => "rollback",
            Request::Pause => "pause",
            Request::ResumePaused => "resume-paused",
            Request::Abort => "abort",
            Request::UpgradeGroups(_) => "upgrade-segroup",
            Request::RollbackSystem => "rollback-system",
            Request::ConfigWrite => "config-write",
        }
    }
}

/// What travels.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A node's heartbeat.
    Heartbeat(Box<Seen>),
    /// A command to a node.
    Command(Command),
}

/// A message in flight.
#[derive(Debug, Clone)]
pub struct Message {
    /// When it arrives.
    pub at: Ms,
    /// The node at the other end.
    pub node: NodeId,
    /// What.
    pub payload: Payload,
}

/// The leader process; gone when its node is down.
#[derive(Debug)]
pub struct Leader {
    /// Its journal in memory.
    pub journal: Option<Journal>,
    /// What the heartbeats said, with `up` as of the last step.
    cluster: Observed,
    /// When each node's last heartbeat arrived.
    last_heartbeat: BTreeMap<NodeId, Ms>,
    config: Config,
    /// The raft term it leads in; its generation is derived from it.
    pub term: u64,
    generation: u64,
    sent: BTreeMap<String, Ms>,
    placed: BTreeMap<NodeId, (Vec<String>, Ms, String)>,
    seq: u64,
    /// Requests received, decided at the next step.
    pub inbox: Vec<Request>,
    me: NodeId,
}

impl Leader {
    /// Starts leading in `term`, from the replicated store.
    pub fn start(disk: &Disk, me: NodeId, term: u64) -> Self {
        Self {
            journal: disk.read(),
            cluster: Observed::default(),
            last_heartbeat: BTreeMap::new(),
            config: disk.config.clone(),
            term,
            generation: term << 32,
            sent: BTreeMap::new(),
            placed: BTreeMap::new(),
            seq: 0,
            inbox: vec![],
            me,
        }
    }

    /// The controller it runs on.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// A heartbeat arrived.
    pub fn heartbeat(&mut self, node: NodeId, seen: Seen, now: Ms) {
        self.last_heartbeat.insert(node.clone(), now);
        self.cluster.nodes.insert(node, seen);
    }

    /// Marks the nodes whose heartbeats stopped as down.
    fn observe(&mut self, now: Ms) {
        for (id, s) in self.cluster.nodes.iter_mut() {
            s.up = self.last_heartbeat.get(id).is_some_and(|at| now.saturating_sub(*at) <= DOWN_AFTER);
            s.placing = self.placed.get(id).filter(|(_, _, c)| !s.settled(c)).map(|(n, _, _)| n.clone());
        }
    }

    /// Writes the journal through raft: taken only with a majority (or
    /// without, behind the stale-leader mutant). Returns whether it was.
    fn persist(&mut self, disk: &mut Disk, j: Journal, quorum: bool, violations: &mut Vec<String>) -> bool {
        if !quorum {
            return false;
        }
        disk.accept(self.term, &self.me, violations);
        if let Some(old) = disk.journal()
            && old.is_running()
            && old.id != j.id
        {
            violations.push(format!("one-operation: the running operation {} was replaced by {}", old.id, j.id));
        }
        disk.write(&j);
        self.journal = Some(j);
        true
    }

    /// One step of the driver; returns the commands to send. `quorum`:
    /// whether a majority of the controllers answers this leader now (a
    /// leader cut off from them writes nothing and sends nothing).
    #[allow(clippy::too_many_arguments)]
    pub fn tick(
        &mut self,
        now: Ms,
        disk: &mut Disk,
        members: &[(NodeId, Member, DeploymentKind)],
        mutant: Option<Mutant>,
        violations: &mut Vec<String>,
        quorum: bool,
    ) -> Vec<(NodeId, Command)> {
        // The defect: a leader acts without asking a majority.
        let quorum = quorum || mutant == Some(Mutant::StaleLeader);
        self.observe(now);
        let obs = std::mem::take(&mut self.cluster);
        let mut out = vec![];
        if !quorum {
            // Nothing is decided or sent on a term a majority may have left.
            self.cluster = obs;
            return out;
        }
        self.requests(now, disk, members, &obs, mutant, violations);
        if let Some(j) = self.journal.clone() {
            let ctx = Ctx { now, generation: self.generation, timeouts: sim_timeouts(), mutant };
            let d = core::next(&j, &obs, &ctx);
            if d.journal != j && !self.persist(disk, d.journal, quorum, violations) {
                self.cluster = obs;
                return out;
            }
            for a in d.actions {
                match a {
                    Action::Send { node, command } => {
                        if self.sent.get(&command.id).is_none_or(|t| now >= t + RESEND) {
                            self.sent.insert(command.id.clone(), now);
                            out.push((node, command));
                        }
                    }
                    Action::RestoreConfig(c) => {
                        disk.accept(self.term, &self.me, violations);
                        disk.config = c.clone();
                        self.config = c;
                    }
                }
            }
        }
        // The placer: every SE serves what it should.
        let ses: Vec<NodeId> = members
            .iter()
            .filter(|(_, m, _)| matches!(m, Member::ServiceEngine(_)))
            .map(|(id, _, _)| id.clone())
            .collect();
        for (id, want) in core::placements_to_push(&self.config, self.journal.as_ref(), &ses, &obs) {
            let names: Vec<String> = want.iter().map(|w| w.name.clone()).collect();
            if self.placed.get(&id).is_some_and(|(n, at, _)| *n == names && now < at + 1_000) {
                continue;
            }
            self.seq += 1;
            let cid = format!("place-{}-{}", self.generation, self.seq);
            self.placed.insert(id.clone(), (names, now, cid.clone()));
            let command =
                Command { id: cid, generation: self.generation, kind: common::session::CommandKind::Place(want) };
            out.push((id, command));
        }
        self.cluster = obs;
        out
    }

    fn requests(
        &mut self,
        now: Ms,
        disk: &mut Disk,
        members: &[(NodeId, Member, DeploymentKind)],
        obs: &Observed,
        mutant: Option<Mutant>,
        violations: &mut Vec<String>,
    ) {
        let inbox = std::mem::take(&mut self.inbox);
        let summaries: Vec<NodeSummary> = members
            .iter()
            .map(|(id, m, kind)| NodeSummary {
                id: id.clone(),
                member: m.clone(),
                version: obs.nodes.get(id).map(|s| s.version),
                kind: *kind,
                previous: obs.nodes.get(id).and_then(|s| s.previous),
            })
            .collect();
        // A mixed cluster gets one image per kind, as the real leader's request does.
        let mixed = members.iter().any(|(_, _, k)| *k == DeploymentKind::Docker);
        // The defect: every start checks against the same state, then all act.
        let checked_together = mutant == Some(Mutant::ConcurrentStart);
        let before = self.journal.clone();
        let mut decided = vec![];
        for (k, r) in inbox.into_iter().enumerate() {
            let current = if checked_together { before.clone() } else { self.journal.clone() };
            let id = format!("op{}-{}-{k}", self.generation, now);
            let decision = match &r {
                Request::Start { to, min_compatible, on_error, disruptive, se_groups, pause_after, profile } => {
                    let req = StartRequest {
                        operation: Operation::Upgrade,
                        image: image(*to, *min_compatible, DeploymentKind::Vm),
                        docker_image: mixed.then(|| image(*to, *min_compatible, DeploymentKind::Docker)),
                        to: *to,
                        force: false,
                        disruptive: *disruptive,
                        on_error: *on_error,
                        se_groups: se_groups.clone(),
                        pause_after: pause_after.clone(),
                        plan_hash: None,
                        profile: profile.clone(),
                    };
                    self.decide_start(&req, current.as_ref(), &summaries, &id, now, mutant)
                }
                Request::Prestage { to } => {
                    let req = StartRequest {
                        docker_image: mixed.then(|| image(*to, *to, DeploymentKind::Docker)),
                        ..StartRequest::new(Operation::Prestage, image(*to, *to, DeploymentKind::Vm), *to)
                    };
                    self.decide_start(&req, current.as_ref(), &summaries, &id, now, mutant)
                }
                Request::Resume { skip } => request::resume(current.as_ref(), &[], *skip, &self.config).ok(),
                Request::RollbackGroups(g) => request::rollback_groups(current.as_ref(), g, &self.config, now).ok(),
                Request::Pause => request::pause(current.as_ref()).ok().flatten(),
                Request::ResumePaused => request::resume_paused(current.as_ref()).ok().flatten(),
                Request::Abort => request::abort(current.as_ref()).ok().flatten(),
                Request::UpgradeGroups(g) => request::upgrade_groups(current.as_ref(), g, &self.config, now).ok(),
                Request::RollbackSystem => {
                    request::rollback_system(current.as_ref(), &summaries, &self.me, &self.config, now).ok()
                }
                Request::ConfigWrite => {
                    if request::config_writable(current.as_ref()).is_ok() {
                        self.write_config(disk, members, violations);
                    }
                    None
                }
            };
            match decision {
                Some(j) if checked_together => decided.push(j),
                Some(j) => {
                    self.persist(disk, j, true, violations);
                }
                None => {}
            }
        }
        for j in decided {
            self.persist(disk, j, true, violations);
        }
    }

    fn decide_start(
        &self,
        req: &StartRequest,
        current: Option<&Journal>,
        nodes: &[NodeSummary],
        id: &str,
        now: Ms,
        mutant: Option<Mutant>,
    ) -> Option<Journal> {
        let ctx = StartCtx { current, nodes, config: &self.config, leader: &self.me, id, now, mutant };
        request::start(req, &ctx).ok()
    }

    fn write_config(
        &mut self,
        disk: &mut Disk,
        members: &[(NodeId, Member, DeploymentKind)],
        violations: &mut Vec<String>,
    ) {
        let mut ses: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, m, _) in members {
            if let Member::ServiceEngine(g) = m {
                ses.entry(g.clone()).or_default().push(id.to_string());
            }
        }
        let mut c = self.config.clone();
        let name = format!("extra-{}", c.virtual_services.len());
        let group = c.se_groups.keys().next().cloned().unwrap_or_default();
        let port = 9000 + c.virtual_services.len() as u16;
        let vs = VirtualService { name, se_group: group, port, scale: 2 };
        if c.put_vs(vs, false, &[8443]).is_ok() {
            c.placements = placement::place(&c, &ses);
            disk.accept(self.term, &self.me, violations);
            disk.config = c.clone();
            self.config = c;
        }
    }
}

/// The waits in the simulation: short, so that schedules are quick, in the
/// same proportions as the product's.
pub fn sim_timeouts() -> Timeouts {
    Timeouts { reform: 60_000, stage: 120_000, drain: 20_000, commit: 30_000 }
}
