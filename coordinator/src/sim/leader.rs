//! The simulated leader: the product's driver ([`crate::driver::Driver`])
//! over simulated effects — a replicated store that keeps only what is
//! serialized, an outbox of commands — and the operator's requests,
//! decided by [`crate::request`] as the REST handlers decide them.

use std::collections::BTreeMap;

use common::{DeploymentKind, NodeId, Version, session::Command};

use super::image;
use crate::{
    Mutant,
    config::{Config, VirtualService},
    core::{Observed, Seen, Timeouts},
    driver::{Driver, Effects, Logged, Probed, WriteFailure},
    journal::{ActionOnError, Journal, Member, Ms, Operation},
    placement,
    request::{self, NodeSummary, ProfileRequest, StartCtx, StartRequest},
};

/// A heartbeat's age after which the node counts as down.
const DOWN_AFTER: Ms = 3_000;

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
        self.journal.as_ref().map(|t| {
            let v = serde_json::from_str(t).expect("the journal is JSON");
            crate::journal::from_value(v).expect("the journal round-trips")
        })
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

/// The leader process; gone when its node is down. Its driver is the
/// product's ([`Driver`]), run over [`SimEffects`].
#[derive(Debug)]
pub struct Leader {
    /// Its journal in memory (its replica's, or the operation as it
    /// suspended it).
    pub journal: Option<Journal>,
    /// What the heartbeats said, with `up` as of the last step.
    cluster: Observed,
    /// When each node's last heartbeat arrived.
    last_heartbeat: BTreeMap<NodeId, Ms>,
    config: Config,
    /// The raft term it leads in; its generation is derived from it.
    pub term: u64,
    generation: u64,
    /// The product's driver.
    pub driver: Driver,
    /// Whether it suspended the operation (its disk failed).
    pub suspended: bool,
    /// Requests received, decided at the next step.
    pub inbox: Vec<Request>,
    me: NodeId,
}

/// What the leader's node and the cluster allow in one step.
#[derive(Debug, Clone, Copy)]
pub struct Conditions {
    /// A majority of the controllers answers this leader.
    pub quorum: bool,
    /// This controller's disk refuses writes.
    pub disk_fails: bool,
}

/// The simulation's effects: the replicated store is [`Disk`] (a write
/// needs a majority, and fails with the node's disk), commands go to an
/// outbox the world delivers, grants and probes are recorded.
struct SimEffects<'a> {
    now: Ms,
    generation: u64,
    term: u64,
    me: &'a NodeId,
    journal: &'a mut Option<Journal>,
    config: &'a mut Config,
    cluster: &'a Observed,
    disk: &'a mut Disk,
    members: &'a [(NodeId, Member, DeploymentKind)],
    when: Conditions,
    mutant: Option<Mutant>,
    suspended: &'a mut bool,
    violations: &'a mut Vec<String>,
    out: Vec<(NodeId, Command)>,
}

impl SimEffects<'_> {
    fn writable(&self) -> Result<(), WriteFailure> {
        if self.when.disk_fails {
            return Err(WriteFailure::Storage("No space left on device (os error 28)".into()));
        }
        // The defect: a leader acts without asking a majority.
        if !self.when.quorum && self.mutant != Some(Mutant::StaleLeader) {
            return Err(WriteFailure::NoQuorum);
        }
        Ok(())
    }
}

impl Effects for SimEffects<'_> {
    fn now(&self) -> Ms {
        self.now
    }
    fn generation(&self) -> u64 {
        self.generation
    }
    fn timeouts(&self) -> Timeouts {
        sim_timeouts()
    }
    fn journal(&self) -> Option<Journal> {
        self.journal.clone()
    }
    fn config(&self) -> Config {
        self.config.clone()
    }
    fn observe(&mut self) -> Observed {
        self.cluster.clone()
    }
    fn ses_by_group(&self) -> BTreeMap<String, Vec<String>> {
        ses_by_group(self.members)
    }
    fn halted(&self) -> bool {
        *self.suspended
    }
    async fn check_image(&mut self, _: &Journal) -> Option<String> {
        None
    }
    async fn write_journal(&mut self, j: &Journal) -> Result<(), WriteFailure> {
        self.writable()?;
        persist(self.disk, self.term, self.me, j, self.violations);
        *self.journal = Some(j.clone());
        Ok(())
    }
    async fn write_config(&mut self, c: &Config) -> Result<(), WriteFailure> {
        self.writable()?;
        self.disk.accept(self.term, self.me, self.violations);
        self.disk.config = c.clone();
        *self.config = c.clone();
        Ok(())
    }
    async fn may_act(&mut self) -> bool {
        self.when.quorum || self.mutant == Some(Mutant::StaleLeader)
    }
    fn send(&mut self, node: &NodeId, command: Command) -> bool {
        self.out.push((node.clone(), command));
        true
    }
    fn grant(&mut self, _: &NodeId, _: common::Sha256Digest) {}
    fn revoke(&mut self, _: &NodeId) {}
    fn start_probes(&mut self, _: &str) {}
    fn stop_probes(&mut self) {}
    fn probed(&self) -> Option<Probed> {
        None
    }
    fn suspend(&mut self, j: Journal) {
        *self.journal = Some(j);
        *self.suspended = true;
    }
    fn log(&mut self, _: Logged<'_>) {}
}

/// The SEs of each group.
fn ses_by_group(members: &[(NodeId, Member, DeploymentKind)]) -> BTreeMap<String, Vec<String>> {
    let mut ses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, m, _) in members {
        if let Member::ServiceEngine(g) = m {
            ses.entry(g.clone()).or_default().push(id.to_string());
        }
    }
    ses
}

/// A journal write taken by the replicated store, with its checks.
fn persist(disk: &mut Disk, term: u64, me: &NodeId, j: &Journal, violations: &mut Vec<String>) {
    disk.accept(term, me, violations);
    if let Some(old) = disk.journal()
        && old.is_running()
        && old.id != j.id
    {
        violations.push(format!("one-operation: the running operation {} was replaced by {}", old.id, j.id));
    }
    disk.write(j);
}

/// Runs a future of the simulation's effects, which never wait.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("the simulation's effects never wait"),
    }
}

impl Leader {
    /// Starts leading in `term`, from the replicated store.
    pub fn start(disk: &Disk, me: NodeId, term: u64, mutant: Option<Mutant>) -> Self {
        Self {
            journal: disk.read(),
            cluster: Observed::default(),
            last_heartbeat: BTreeMap::new(),
            config: disk.config.clone(),
            term,
            generation: term << 32,
            driver: Driver::with_mutant(mutant),
            suspended: false,
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
        }
    }

    /// One step: the requests received, then one step of the driver;
    /// returns the commands to send.
    pub fn tick(
        &mut self,
        now: Ms,
        disk: &mut Disk,
        members: &[(NodeId, Member, DeploymentKind)],
        mutant: Option<Mutant>,
        violations: &mut Vec<String>,
        when: Conditions,
    ) -> Vec<(NodeId, Command)> {
        self.observe(now);
        // Nothing is decided on a term a majority may have left, nor by a
        // leader whose disk refuses writes (the API's writes fail too).
        if (when.quorum || mutant == Some(Mutant::StaleLeader)) && !when.disk_fails && !self.suspended {
            self.requests(now, disk, members, mutant, violations);
        }
        let Leader { journal, cluster, config, term, generation, driver, suspended, me, .. } = self;
        let mut fx = SimEffects {
            now,
            generation: *generation,
            term: *term,
            me,
            journal,
            config,
            cluster,
            disk,
            members,
            when,
            mutant,
            suspended,
            violations,
            out: vec![],
        };
        ready(driver.step(&mut fx));
        fx.out
    }

    fn requests(
        &mut self,
        now: Ms,
        disk: &mut Disk,
        members: &[(NodeId, Member, DeploymentKind)],
        mutant: Option<Mutant>,
        violations: &mut Vec<String>,
    ) {
        let obs = &self.cluster;
        let inbox = std::mem::take(&mut self.inbox);
        let summaries: Vec<NodeSummary> = members
            .iter()
            .map(|(id, m, kind)| NodeSummary {
                id: id.clone(),
                member: m.clone(),
                version: obs.nodes.get(id).map(|s| s.version),
                kind: *kind,
                previous: obs.nodes.get(id).and_then(|s| s.previous),
                // As the product's handler fills it: the same pre-checks run.
                health: request::NodeHealth { down: !obs.nodes.get(id).is_some_and(|s| s.up), ..Default::default() },
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
                Some(j) => self.take(disk, j, violations),
                None => {}
            }
        }
        for j in decided {
            self.take(disk, j, violations);
        }
    }

    /// A request's journal written.
    fn take(&mut self, disk: &mut Disk, j: Journal, violations: &mut Vec<String>) {
        persist(disk, self.term, &self.me, &j, violations);
        self.journal = Some(j);
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
        let ses = ses_by_group(members);
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
