//! Deterministic simulation of a cluster under the coordinator.
//!
//! One seed decides everything: the cluster's shape, the operator's
//! requests, and the faults injected at every step — leader crashes, nodes
//! powered off and on in each of their steps, messages lost or delayed, a
//! full disk while staging, an image that does not boot, requests at the
//! same moment. Time is virtual (100 ms steps); the leader's driver is the
//! same loop as the product's: observe, decide with [`crate::core::next`],
//! write the journal (here: serialized to the simulated disk, so whatever
//! the journal does not hold is lost in a crash), then act. After every
//! step the [`crate::invariants`] are checked; a failing seed prints the
//! command that replays it.

mod leader;
mod node;

use std::collections::BTreeMap;

use common::{DeploymentKind, NodeId, Sha256Digest, Version};

use self::{
    leader::{Conditions, Disk, Leader, Request},
    node::{Node, id},
};
use crate::{
    Mutant,
    config::{Config, HaMode, HealthGate, SeGroup, VirtualService},
    invariants::{Monitor, RealNode, Reality},
    journal::{ActionOnError, Image, Journal, Member, Ms, Operation, Outcome, Phase, Step},
    placement,
    request::ProfileRequest,
};

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }
}

/// The step of a virtual minute-by-minute run.
const TICK: Ms = 100;
/// How long the controllers go without a leader that has a majority before
/// one of them is elected (openraft's election timeout, at 1 s heartbeats).
const ELECTION: Ms = 2_000;
/// An operation that has not ended after this long is a violation.
const BOUND: Ms = 3 * 3_600_000;

/// Faults injected: (kind, step) → count.
pub type FaultCounts = BTreeMap<(String, String), u64>;

/// What one schedule found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Its seed.
    pub seed: u64,
    /// Broken invariants (the first few), with the virtual time.
    pub violations: Vec<String>,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Virtual time simulated.
    pub virtual_ms: Ms,
    /// Operations that ended, by outcome.
    pub outcomes: BTreeMap<String, u64>,
}

/// The versions the simulation moves between.
fn v(n: u32) -> Version {
    Version { major: n, minor: 0, patch: 0 }
}

/// An upgrade to 3.0.0, which upgrades from 2.0.0 only.
fn third_version() -> Request {
    Request::Start {
        to: v(3),
        min_compatible: v(2),
        on_error: ActionOnError::Suspend,
        disruptive: false,
        se_groups: vec![],
        pause_after: None,
        profile: Default::default(),
    }
}

/// The package of `to` for nodes of `kind`.
fn image(to: Version, min_compatible: Version, kind: DeploymentKind) -> Image {
    Image {
        path: format!("controller://molt-{to}-{}.pkg", kind.as_str()),
        sha256: Sha256Digest::of(format!("{to}-{}", kind.as_str()).as_bytes()),
        size: 1 << 30,
        kind,
        min_compatible,
        signed_by: None,
    }
}

/// A journal just started: an upgrade from 1.0.0 to 2.0.0 of `controllers`
/// controllers (`c1` leads) and these groups of active-active SEs (for the
/// unit tests of what reads a journal, here and in the controller agent).
pub fn sample_journal(controllers: usize, groups: &[(&str, usize)]) -> Journal {
    use crate::request::{NodeSummary, StartCtx, StartRequest, start};
    let mut config = Config::default();
    let mut nodes = vec![];
    for i in 1..=controllers {
        nodes.push((id(&format!("c{i}")), Member::Controller));
    }
    for (g, n) in groups {
        let group = SeGroup {
            name: g.to_string(),
            ha_mode: HaMode::ActiveActive,
            max_parallel_ses: None,
            health_gates: vec![],
        };
        config.put_group(group, false).expect("valid");
        for s in 0..*n {
            nodes.push((id(&format!("{g}-se{s}")), Member::ServiceEngine(g.to_string())));
        }
    }
    let summaries: Vec<NodeSummary> = nodes
        .into_iter()
        .map(|(id, member)| NodeSummary {
            id,
            member,
            version: Some(v(1)),
            kind: DeploymentKind::Vm,
            previous: None,
            health: Default::default(),
        })
        .collect();
    let req = StartRequest::new(Operation::Upgrade, image(v(2), v(1), DeploymentKind::Vm), v(2));
    let ctx = StartCtx {
        current: None,
        nodes: &summaries,
        config: &config,
        leader: &id("c1"),
        id: "op",
        now: 0,
        mutant: None,
    };
    start(&req, &ctx).expect("a valid start")
}

/// The simulated cluster.
struct World {
    rng: Rng,
    now: Ms,
    nodes: BTreeMap<NodeId, Node>,
    /// The controller raft elected last, and its leader process.
    leader_id: NodeId,
    leader: Option<Leader>,
    /// The raft term of the last election.
    term: u64,
    /// A deposed leader that has not heard of the newer term yet (it is
    /// cut off from the other controllers): it goes on stepping.
    stale: Option<Leader>,
    /// A controller cut off from every other node, until when.
    cut: Option<(NodeId, Ms)>,
    /// A controller whose disk refuses writes, until when.
    disk_full: Option<(NodeId, Ms)>,
    /// Since when no leader has had a majority.
    leaderless_since: Option<Ms>,
    disk: Disk,
    /// Messages in flight.
    net: Vec<leader::Message>,
    /// Per channel, the last delivery time (streams keep their order).
    channel_at: BTreeMap<(bool, NodeId), Ms>,
    faults: BTreeMap<(String, String), u64>,
    faults_on: bool,
    mutant: Option<Mutant>,
    monitor: Monitor,
    violations: Vec<String>,
    operator: Operator,
    outcomes: BTreeMap<String, u64>,
    /// Nodes powered off by a fault, and when they come back.
    power_ons: Vec<(Ms, NodeId)>,
    /// When the faults stopped (the cluster settles from then).
    settling_since: Option<Ms>,
    /// What happened, when traced.
    trace: Option<Vec<String>>,
}

/// The operator's script, decided by the seed as it goes.
#[derive(Debug, Default)]
struct Operator {
    /// Requests to send at a time.
    planned: Vec<(Ms, Request)>,
    /// Follow-ups sent after operations ended.
    follow_ups: u32,
    /// The id and outcome last reacted to.
    handled: Option<(String, Option<Outcome>)>,
    group_rollback_done: bool,
    system_rollback_done: bool,
    third_version_tried: bool,
    next_look: Ms,
}

impl World {
    fn new(seed: u64, mutant: Option<Mutant>) -> Self {
        let mut rng = Rng::new(seed);
        let mut nodes = BTreeMap::new();
        let controllers = if rng.chance(0.2) { 1 } else { 3 };
        for i in 1..=controllers {
            nodes.insert(id(&format!("c{i}")), Node::new(Member::Controller, v(1)));
        }
        let mut config = Config::default();
        let modes = [HaMode::ActiveStandby, HaMode::ActiveActive, HaMode::NPlusM];
        let groups = rng.range(1, 4) as usize;
        // Some clusters are mixed: SE groups on docker beside vm controllers.
        let mixed = rng.chance(0.3);
        let mut ses_by_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for g in 0..groups {
            // Every run has an active-standby group: failover is where make-before-break matters.
            let ha = if g == 0 { modes[0] } else { *rng.pick(&modes) };
            let name = format!("g{g}");
            // Some groups move several SEs at once by their configuration.
            let max_parallel_ses = rng.chance(0.2).then(|| rng.range(1, 4) as u32);
            config
                .put_group(SeGroup { name: name.clone(), ha_mode: ha, max_parallel_ses, health_gates: vec![] }, false)
                .expect("valid");
            let kind = if mixed && rng.chance(0.5) { DeploymentKind::Docker } else { DeploymentKind::Vm };
            for s in 0..rng.range(2, 4) {
                let se = format!("{name}-se{s}");
                let mut node = Node::new(Member::ServiceEngine(name.clone()), v(1));
                node.kind = kind;
                nodes.insert(id(&se), node);
                ses_by_group.entry(name.clone()).or_default().push(se);
            }
            for k in 0..rng.range(1, 3) {
                let scale = if rng.chance(0.25) { 1 } else { 2 };
                let vs =
                    VirtualService { name: format!("vs-{g}-{k}"), se_group: name.clone(), port: 80 + k as u16, scale };
                config.put_vs(vs, false, &[8443]).expect("valid");
            }
        }
        // Some groups gate their SEs with health checks.
        let names: Vec<String> = config.se_groups.keys().cloned().collect();
        for g in names {
            if rng.chance(0.3) {
                let vs = config.virtual_services.values().find(|v| v.se_group == g).map(|v| v.name.clone());
                let mut group = config.se_groups[&g].clone();
                group.health_gates = vec![HealthGate::Exec { command: vec!["/bin/check".into()], timeout_secs: 5 }];
                if let Some(vs) = vs {
                    group.health_gates.push(HealthGate::Http {
                        virtual_service: vs,
                        path: "/health".into(),
                        status: 200,
                        tries: 2,
                    });
                }
                config.put_group(group, true).expect("valid");
            }
        }
        config.placements = placement::place(&config, &ses_by_group);
        let want = placement::serving(&config, &Default::default());
        for (se, services) in &want {
            if let Some(n) = nodes.get_mut(&id(se)) {
                n.serving = services.iter().map(|s| s.name.clone()).collect();
            }
        }
        let se_ids: Vec<NodeId> = nodes.keys().filter(|n| n.as_str().contains("-se")).cloned().collect();
        let all_ids: Vec<NodeId> = nodes.keys().cloned().collect();
        let mut faults = BTreeMap::new();
        let mut count = |kind: &str, step: &str| *faults.entry((kind.to_owned(), step.to_owned())).or_insert(0) += 1;
        if rng.chance(0.15) {
            let n = rng.pick(&all_ids).clone();
            nodes.get_mut(&n).expect("node").disk_full = true;
            count("disk-full", "stage");
        }
        if rng.chance(0.15) {
            let n = rng.pick(&se_ids).clone();
            nodes.get_mut(&n).expect("node").bad.insert(v(2));
            count("image-does-not-boot", "reboot");
        }
        let gated: Vec<NodeId> = se_ids
            .iter()
            .filter(|s| {
                let g = s.as_str().split("-se").next().unwrap_or_default();
                config.se_groups.get(g).is_some_and(|g| !g.health_gates.is_empty())
            })
            .cloned()
            .collect();
        if !gated.is_empty() && rng.chance(0.5) {
            let n = rng.pick(&gated).clone();
            nodes.get_mut(&n).expect("node").gate_fails_on = Some(v(2));
            count("health-gate-fails", "gate");
        }
        if rng.chance(0.05) {
            let n = id("c1");
            nodes.get_mut(&n).expect("node").bad.insert(v(2));
            count("image-does-not-boot", "reboot");
        }
        let on_error = *rng.pick(&[ActionOnError::Suspend, ActionOnError::Continue, ActionOnError::Rollback]);
        let disruptive = rng.chance(0.1);
        // Some operators upgrade a canary group first: alone, or holding after it.
        let canary = groups > 1 && rng.chance(0.25);
        let se_groups = if canary && rng.chance(0.5) { vec!["g0".to_owned()] } else { vec![] };
        let pause_after = (canary && se_groups.is_empty()).then(|| "g0".to_owned());
        // Some operators pace the upgrade with a profile.
        let profile = if rng.chance(0.3) {
            ProfileRequest {
                max_parallel_ses: rng.chance(0.5).then(|| rng.range(1, 4) as u32),
                groups_in_series: rng.chance(0.5).then_some(true),
                max_transfers: rng.chance(0.5).then(|| rng.range(1, 3) as u32),
                transfer_rate_mib: None,
            }
        } else {
            ProfileRequest::default()
        };
        let start =
            Request::Start { to: v(2), min_compatible: v(1), on_error, disruptive, se_groups, pause_after, profile };
        let all_groups: Vec<String> = ses_by_group.keys().cloned().collect();
        let mut operator = Operator::default();
        operator.planned.push((5_000, start.clone()));
        if rng.chance(0.3) {
            // Another start at the same moment.
            operator.planned.push((5_000, start));
            count("request-at-once", "start");
        }
        for _ in 0..rng.range(0, 4) {
            let at = rng.range(5_000, 90_000);
            let r = match rng.range(0, 10) {
                0 => Request::Start {
                    to: v(2),
                    min_compatible: v(1),
                    on_error,
                    disruptive: false,
                    se_groups: vec![],
                    pause_after: None,
                    profile: Default::default(),
                },
                1 => Request::Prestage { to: v(2) },
                2 => Request::Resume { skip: rng.chance(0.5) },
                3 => Request::RollbackGroups(vec!["g0".into()]),
                4 | 5 => Request::Pause,
                6 => Request::Abort,
                7 => Request::UpgradeGroups(all_groups.clone()),
                8 => Request::RollbackSystem,
                _ => Request::ConfigWrite,
            };
            count("request-at-once", r.name());
            operator.planned.push((at, r));
        }
        let disk = Disk::new(config);
        World {
            rng,
            now: 0,
            nodes,
            leader_id: id("c1"),
            leader: None,
            term: 0,
            stale: None,
            cut: None,
            disk_full: None,
            leaderless_since: None,
            disk,
            net: vec![],
            channel_at: BTreeMap::new(),
            faults,
            faults_on: true,
            mutant,
            monitor: Monitor::default(),
            violations: vec![],
            operator,
            outcomes: BTreeMap::new(),
            power_ons: vec![],
            settling_since: None,
            trace: None,
        }
    }

    fn count(&mut self, kind: &str, step: &str) {
        *self.faults.entry((kind.to_owned(), step.to_owned())).or_insert(0) += 1;
    }

    fn log(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("t={:.1}s {}", self.now as f64 / 1000.0, what()));
        }
    }

    /// The journal as the leader holds it (or, with no leader, on disk).
    fn journal(&self) -> Option<&Journal> {
        match &self.leader {
            Some(l) => l.journal.as_ref(),
            None => self.disk.journal(),
        }
    }

    /// The step a node is in, as fault labels name it.
    fn step_of(&self, j: Option<&Journal>, n: &NodeId) -> &'static str {
        let Some(op) = j.filter(|j| j.is_running()).and_then(|j| j.nodes.get(n)) else { return "idle" };
        let up = self.nodes[n].agent_up;
        match op.step {
            Step::Staging => "stage",
            Step::Draining | Step::Stopping | Step::Restoring | Step::Releasing => "drain",
            Step::Applying => "apply",
            Step::Rejoining | Step::RollbackRejoining if !up => "reboot",
            Step::Rejoining | Step::RollbackRejoining => "rejoin",
            Step::Committing => "commit",
            Step::RollingBack => "rollback",
            _ => "idle",
        }
    }

    /// Sends a message on its channel, maybe losing or delaying it.
    fn send(&mut self, to_leader: bool, node: NodeId, payload: leader::Payload) {
        let step = self.step_of(self.journal(), &node);
        if self.faults_on && self.rng.chance(0.02) {
            self.count("message-lost", step);
            return;
        }
        let delay = if self.faults_on && self.rng.chance(0.05) {
            self.count("message-delayed", step);
            self.rng.range(500, 3_000)
        } else {
            self.rng.range(0, 100)
        };
        let key = (to_leader, node.clone());
        let at = (self.now + delay).max(self.channel_at.get(&key).copied().unwrap_or(0));
        self.channel_at.insert(key, at);
        self.net.push(leader::Message { at, node, payload });
    }

    fn inject_faults(&mut self) {
        if !self.faults_on {
            return;
        }
        if self.rng.chance(0.002) {
            // A node powered off, more often one that is in a step.
            let j = self.journal().cloned();
            let busy: Vec<NodeId> =
                self.nodes.keys().filter(|n| self.step_of(j.as_ref(), n) != "idle").cloned().collect();
            let all: Vec<NodeId> = self.nodes.keys().cloned().collect();
            let n = if !busy.is_empty() && self.rng.chance(0.7) { self.rng.pick(&busy) } else { self.rng.pick(&all) }
                .clone();
            let step = self.step_of(j.as_ref(), &n);
            let r = self.rng.range(0, 100);
            let off = if r < 60 {
                self.rng.range(500, 5_000)
            } else if r < 96 {
                self.rng.range(5_000, 40_000)
            } else {
                self.rng.range(200_000, 400_000)
            };
            if self.nodes[&n].powered {
                self.count("power-off", step);
                self.log(|| format!("FAULT power-off {n} in {step} for {off} ms"));
                self.power_cycle(&n, off);
            }
        }
        let controllers = self.nodes.values().filter(|n| n.member == Member::Controller).count();
        if controllers == 3 && self.cut.is_none() && self.rng.chance(0.0006) {
            // The leader is cut off from every other node for a while.
            let phase = self.journal().filter(|j| j.is_running()).map(|j| j.phase.name()).unwrap_or("idle");
            let l = self.leader_id.clone();
            let until = self.now + self.rng.range(2_000, 20_000);
            self.count("leader-partitioned", phase);
            self.log(|| format!("FAULT {l} cut off until t={:.1}s", until as f64 / 1000.0));
            self.cut = Some((l, until));
        }
        if self.disk_full.is_none() && self.rng.chance(0.0004) {
            // The leader's disk fills up: its writes fail until it is freed.
            let phase = self.journal().filter(|j| j.is_running()).map(|j| j.phase.name()).unwrap_or("idle");
            let l = self.leader_id.clone();
            let until = self.now + self.rng.range(1_000, 20_000);
            self.count("leader-disk-full", phase);
            self.log(|| format!("FAULT {l}'s disk full until t={:.1}s", until as f64 / 1000.0));
            self.disk_full = Some((l, until));
        }
        if self.rng.chance(0.0008) {
            let phase = self.journal().filter(|j| j.is_running()).map(|j| j.phase.name()).unwrap_or("idle");
            let l = self.leader_id.clone();
            let off = self.rng.range(200, 3_000);
            if self.nodes[&l].powered {
                self.count("leader-crash", phase);
                self.log(|| format!("FAULT leader crash in {phase}"));
                self.power_cycle(&l, off);
            }
        }
    }

    /// Whether `a` and `b` can talk (both up, not on two sides of a cut).
    fn reachable(&self, a: &NodeId, b: &NodeId) -> bool {
        let up = |n: &NodeId| self.nodes.get(n).is_some_and(|x| x.agent_up);
        let apart = self.cut.as_ref().is_some_and(|(c, _)| (c == a) != (c == b));
        up(a) && up(b) && !apart
    }

    /// Whether a majority of the controllers answers `l`.
    fn quorum(&self, l: &NodeId) -> bool {
        let controllers: Vec<&NodeId> =
            self.nodes.iter().filter(|(_, n)| n.member == Member::Controller).map(|(id, _)| id).collect();
        let answering = controllers.iter().filter(|c| self.reachable(l, c)).count();
        answering * 2 > controllers.len()
    }

    /// Raft as molt relies on it: a leader needs a majority; without one for
    /// an election timeout, a controller that has one is elected in a new
    /// term; a deposed leader cut off from the others steps on until it
    /// hears of the newer term (or its node goes down).
    fn elect(&mut self, now: Ms) {
        if self.cut.as_ref().is_some_and(|(_, until)| now >= *until) {
            self.cut = None;
            self.log(|| "FAULT healed".into());
        }
        if let Some((n, until)) = self.disk_full.clone()
            && now >= until
        {
            self.disk_full = None;
            // Its disk freed, the operator restarts the controller that
            // suspended the operation, as its message says.
            let suspended = [&self.leader, &self.stale].into_iter().flatten().any(|l| *l.me() == n && l.suspended);
            self.log(|| format!("FAULT {n}'s disk freed{}", if suspended { "; restarted" } else { "" }));
            if suspended {
                self.power_cycle(&n, 1_000);
            }
        }
        if self.leader.is_some() && !self.nodes[&self.leader_id].agent_up {
            self.leader = None; // the process died with its node
        }
        let leading = self.leader.is_some() && self.quorum(&self.leader_id);
        if leading {
            self.leaderless_since = None;
        } else {
            let since = *self.leaderless_since.get_or_insert(now);
            if self.term == 0 || now >= since + ELECTION {
                let candidates: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(id, n)| n.member == Member::Controller && self.quorum(id))
                    .map(|(id, _)| id.clone())
                    .collect();
                if !candidates.is_empty() {
                    let c = self.rng.pick(&candidates).clone();
                    self.term += 1;
                    if let Some(old) = self.leader.take() {
                        self.stale = Some(old);
                    }
                    let term = self.term;
                    self.log(|| format!("ELECTED {c} in term {term}"));
                    self.leader = Some(Leader::start(&self.disk, c.clone(), term, self.mutant));
                    self.leader_id = c;
                    self.leaderless_since = None;
                }
            }
        }
        if let Some(s) = &self.stale {
            let me = s.me().clone();
            if !self.nodes[&me].agent_up || self.quorum(&me) {
                self.stale = None;
            }
        }
    }

    fn power_cycle(&mut self, n: &NodeId, off: Ms) {
        let node = self.nodes.get_mut(n).expect("node");
        if !node.powered {
            return;
        }
        node.power_off();
        node.fault_off = true;
        node.excused = true;
        self.power_ons.push((self.now + off, n.clone()));
    }
}

impl World {
    fn members(&self) -> Vec<(NodeId, Member, DeploymentKind)> {
        self.nodes.iter().map(|(id, n)| (id.clone(), n.member.clone(), n.kind)).collect()
    }

    /// One step of virtual time.
    fn step(&mut self) {
        let now = self.now;
        let due: Vec<NodeId> = self.power_ons.iter().filter(|(t, _)| *t <= now).map(|(_, n)| n.clone()).collect();
        self.power_ons.retain(|(t, _)| *t > now);
        for n in due {
            let node = self.nodes.get_mut(&n).expect("node");
            node.fault_off = false;
            node.power_on(now, &mut self.rng);
        }
        self.inject_faults();
        // Deliver what has arrived.
        let (arrived, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.net).into_iter().partition(|m| m.at <= now);
        self.net = later;
        for m in arrived {
            match m.payload {
                leader::Payload::Heartbeat(seen) => {
                    // A node's session is with whichever leader it can reach.
                    let to_leader = self.reachable(&m.node, &self.leader_id);
                    let to_stale = self.stale.as_ref().is_some_and(|s| self.reachable(&m.node, s.me()));
                    if to_stale && let Some(s) = self.stale.as_mut() {
                        s.heartbeat(m.node.clone(), (*seen).clone(), now);
                    }
                    if to_leader && let Some(l) = self.leader.as_mut() {
                        l.heartbeat(m.node, *seen, now);
                    }
                }
                leader::Payload::Command(c) => {
                    if let Some(n) = self.nodes.get_mut(&m.node) {
                        n.receive(c, now, &mut self.rng);
                    }
                }
            }
        }
        // The nodes.
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        for n in &ids {
            let hb = self.nodes.get_mut(n).expect("node").tick(now, &mut self.rng);
            if let Some(seen) = hb {
                self.send(true, n.clone(), leader::Payload::Heartbeat(Box::new(seen)));
            }
        }
        self.elect(now);
        self.operate();
        let members = self.members();
        let before = if self.trace.is_some() { self.disk.journal().cloned() } else { None };
        let when = self.conditions(&self.leader_id.clone());
        if let Some(l) = self.leader.as_mut() {
            let out = l.tick(now, &mut self.disk, &members, self.mutant, &mut self.violations, when);
            self.driver_checks(true, &out);
            if self.trace.is_some() {
                let after = self.disk.journal().cloned();
                self.trace_journal(before.as_ref(), after.as_ref());
                for (node, c) in &out {
                    let (node, c) = (node.clone(), c.clone());
                    self.log(|| format!("send {node} {} {:?}", c.id, c.kind));
                }
            }
            let from = self.leader_id.clone();
            self.send_commands(&from, out);
        }
        if let Some(mut s) = self.stale.take() {
            let me = s.me().clone();
            let when = self.conditions(&me);
            let out = s.tick(now, &mut self.disk, &members, self.mutant, &mut self.violations, when);
            self.stale = Some(s);
            self.driver_checks(false, &out);
            if !out.is_empty() {
                self.log(|| format!("stale leader {me} sends {} commands", out.len()));
            }
            self.send_commands(&me, out);
        }
    }

    /// What the leader on `l` may do in this step.
    fn conditions(&self, l: &NodeId) -> Conditions {
        let disk_fails = self.disk_full.as_ref().is_some_and(|(n, _)| n == l);
        Conditions { quorum: self.quorum(l), disk_fails }
    }

    /// The driver's rules, checked on what a leader (`current`, or the
    /// stale one) just did: every command of an operation it sends is one
    /// the committed journal issues now (it never acts on a journal a
    /// majority does not hold), and it lets a node fetch the image only
    /// while its journal says the node stages it.
    fn driver_checks(&mut self, current: bool, out: &[(NodeId, common::session::Command)]) {
        let committed = self.disk.journal();
        for (node, c) in out {
            if c.kind.name() == "place" {
                continue;
            }
            // An ended operation's nodes left on its new version go back.
            let reconcile = committed.is_some_and(|j| {
                !j.is_running() && c.kind.name() == "rollback" && c.id.starts_with(&format!("reconcile-{}-", j.id))
            });
            if reconcile {
                continue;
            }
            let issued = committed
                .filter(|j| j.is_running())
                .and_then(|j| j.nodes.get(node).map(|n| (j, n)))
                .is_some_and(|(j, n)| {
                    let step = match c.kind.name() {
                        "stage" => Step::Staging,
                        "apply" => Step::Applying,
                        "commit" => Step::Committing,
                        "gate" => Step::Gating,
                        _ => Step::RollingBack,
                    };
                    n.step == step && c.id == crate::core::command_id(c.kind.name(), &j.id, n.tries, node)
                });
            if !issued {
                self.violations.push(format!(
                    "t={:.1}s sent-unjournaled: {node} was sent {} although the committed journal does not issue it",
                    self.now as f64 / 1000.0,
                    c.id
                ));
            }
        }
        let l = if current { self.leader.as_ref() } else { self.stale.as_ref() };
        let Some(l) = l else { return };
        for node in l.driver.granted().keys() {
            let staging = l
                .journal
                .as_ref()
                .filter(|j| j.is_running())
                .and_then(|j| j.nodes.get(node))
                .is_some_and(|n| n.step == Step::Staging);
            if !staging {
                self.violations.push(format!(
                    "t={:.1}s grant: {node} may fetch the image although it does not stage it",
                    self.now as f64 / 1000.0
                ));
            }
        }
    }

    /// Commands from the leader on `from` to the nodes it can reach.
    fn send_commands(&mut self, from: &NodeId, out: Vec<(NodeId, common::session::Command)>) {
        for (node, c) in out {
            if self.reachable(from, &node) {
                self.send(false, node, leader::Payload::Command(c));
            }
        }
    }

    /// The operator: sends what is planned, and reacts to ended operations.
    fn operate(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.operator.planned).into_iter().partition(|(t, _)| *t <= now);
        self.operator.planned = later;
        for (_, r) in due {
            match self.leader.as_mut() {
                Some(l) => l.inbox.push(r),
                // Connection refused: the operator tries again.
                None => self.operator.planned.push((now + 2_000, r)),
            }
        }
        if now < self.operator.next_look {
            return;
        }
        self.operator.next_look = now + 1_000;
        // A paused upgrade: the operator looks, then resumes it (or aborts).
        if self.disk.journal().is_some_and(|j| j.is_running() && j.paused)
            && !self.operator.planned.iter().any(|(_, r)| matches!(r, Request::ResumePaused | Request::Abort))
        {
            let at = now + self.rng.range(1_000, 20_000);
            let r = if self.rng.chance(0.8) { Request::ResumePaused } else { Request::Abort };
            self.operator.planned.push((at, r));
        }
        let Some(j) = self.disk.journal().filter(|j| !j.is_running()).cloned() else { return };
        let key = (j.id.clone() + j.operation.name(), j.outcome);
        if self.operator.handled.as_ref() == Some(&key) {
            return;
        }
        self.operator.handled = Some(key);
        let outcome = j.outcome.map(Outcome::name).unwrap_or("none");
        *self.outcomes.entry(format!("{}:{outcome}", j.operation.name())).or_insert(0) += 1;
        if self.operator.follow_ups >= 4 || !self.operator.planned.is_empty() {
            return;
        }
        let at = now + self.rng.range(500, 5_000);
        let group_names: Vec<String> = j.groups.keys().cloned().collect();
        let behind: Vec<String> = j
            .groups
            .iter()
            .filter(|(_, g)| g.state == crate::journal::GroupState::NotStarted)
            .map(|(n, _)| n.clone())
            .collect();
        let next = match (j.operation, j.outcome) {
            (_, Some(Outcome::Suspended)) => {
                let suspended: Vec<String> = j
                    .groups
                    .iter()
                    .filter(|(_, g)| g.state == crate::journal::GroupState::Suspended)
                    .map(|(n, _)| n.clone())
                    .collect();
                if self.rng.chance(0.6) || suspended.is_empty() {
                    Some(Request::Resume { skip: self.rng.chance(0.5) })
                } else {
                    Some(Request::RollbackGroups(vec![self.rng.pick(&suspended).clone()]))
                }
            }
            (Operation::Upgrade | Operation::SeGroupUpgrade, Some(Outcome::Completed | Outcome::Aborted))
                if !behind.is_empty() && j.controllers_committed() && self.rng.chance(0.7) =>
            {
                Some(Request::UpgradeGroups(behind))
            }
            (Operation::Upgrade | Operation::SeGroupUpgrade, Some(Outcome::Completed))
                if !self.operator.system_rollback_done && self.rng.chance(0.25) =>
            {
                self.operator.system_rollback_done = true;
                Some(Request::RollbackSystem)
            }
            (Operation::Upgrade, Some(Outcome::Completed)) if j.to == v(2) && !group_names.is_empty() => {
                if !self.operator.group_rollback_done && self.rng.chance(0.6) {
                    self.operator.group_rollback_done = true;
                    Some(Request::RollbackGroups(vec![self.rng.pick(&group_names).clone()]))
                } else if !self.operator.third_version_tried && self.rng.chance(0.5) {
                    self.operator.third_version_tried = true;
                    Some(third_version())
                } else {
                    None
                }
            }
            (Operation::SeGroupRollback, Some(Outcome::Completed)) if !self.operator.third_version_tried => {
                // The group is back on 1.0.0: a third version must be refused.
                self.operator.third_version_tried = true;
                Some(third_version())
            }
            (Operation::Upgrade, Some(Outcome::Aborted)) if !j.controllers_committed() && self.rng.chance(0.3) => {
                Some(Request::Start {
                    to: j.to,
                    min_compatible: v(1),
                    on_error: ActionOnError::Suspend,
                    disruptive: false,
                    se_groups: vec![],
                    pause_after: None,
                    profile: Default::default(),
                })
            }
            _ => None,
        };
        if let Some(r) = next {
            self.operator.follow_ups += 1;
            self.operator.planned.push((at, r));
        }
    }

    fn trace_journal(&mut self, before: Option<&Journal>, after: Option<&Journal>) {
        let Some(a) = after else { return };
        let b = before.filter(|b| b.id == a.id);
        if b.map(|b| (b.phase, b.outcome)) != Some((a.phase, a.outcome)) {
            let (p, o, r) = (a.phase, a.outcome, a.reason.clone());
            self.log(|| format!("journal {} {:?} phase {p:?} outcome {o:?} {r}", a.id, a.operation));
        }
        for (id, n) in &a.nodes {
            let old = b.and_then(|b| b.nodes.get(id));
            if old.map(|o| (o.step, o.rollback)) != Some((n.step, n.rollback)) {
                let (id, step, note, rb) = (id.clone(), n.step, n.note.clone(), n.rollback);
                self.log(|| format!("  {id} -> {step:?}{} {note}", if rb { " (rollback)" } else { "" }));
            }
        }
        for (g, op) in &a.groups {
            if b.and_then(|b| b.groups.get(g)).map(|o| o.state) != Some(op.state) {
                let (g, st, r) = (g.clone(), op.state, op.reason.clone());
                self.log(|| format!("  group {g} -> {st:?} {r}"));
            }
        }
        if b.map(|b| &b.drained) != Some(&a.drained) {
            let d: Vec<String> = a.drained.iter().map(|s| s.to_string()).collect();
            self.log(|| format!("  drained: {}", d.join(", ")));
        }
    }

    fn reality(&self) -> BTreeMap<NodeId, RealNode> {
        self.nodes
            .iter()
            .map(|(id, n)| {
                let real = RealNode {
                    member: n.member.clone(),
                    up: n.agent_up,
                    excused: n.fault_off || n.excused,
                    active_version: n.active_version(),
                    serving: n.serving.clone(),
                    gate_fails_on: n.gate_fails_on,
                };
                (id.clone(), real)
            })
            .collect()
    }

    fn check(&mut self, at_rest: bool) {
        let nodes = self.reality();
        let j = match &self.leader {
            Some(l) => l.journal.as_ref(),
            None => self.disk.journal(),
        };
        // The re-formation deadline, plus heartbeats missed and an election.
        let down_limit = leader::sim_timeouts().reform + 30_000;
        let leading = self.leader.is_some();
        let real = Reality { nodes: &nodes, config: &self.disk.config, now: self.now, down_limit, leading };
        let mut found = self.monitor.after_step(j, &real);
        for (id, n) in &mut self.nodes {
            if let Some(kind) = n.wrong_image.take() {
                found.push(format!("{id} ({}) was sent a {} image", n.kind.as_str(), kind.as_str()));
            }
        }
        if at_rest {
            found.extend(self.monitor.at_rest(j, &real));
        }
        let t = self.now as f64 / 1000.0;
        self.violations.extend(found.into_iter().map(|v| format!("t={t:.1}s {v}")));
    }

    /// Whether the operator is done and the last operation ended.
    fn quiet(&self) -> bool {
        self.operator.planned.is_empty()
            && self.leader.as_ref().is_none_or(|l| l.inbox.is_empty())
            && match self.disk.journal() {
                Some(j) => !j.is_running() && self.operator.handled.is_some(),
                None => self.now > 100_000,
            }
    }
}

/// Runs the schedule of `seed`, with `mutant` put back if given.
pub fn run(seed: u64, mutant: Option<Mutant>) -> Report {
    run_with(seed, mutant, false).0
}

/// Like [`run`], with a trace of what happened (faults, journal steps, commands).
pub fn run_traced(seed: u64, mutant: Option<Mutant>) -> (Report, Vec<String>) {
    run_with(seed, mutant, true)
}

fn run_with(seed: u64, mutant: Option<Mutant>, traced: bool) -> (Report, Vec<String>) {
    let mut w = World::new(seed, mutant);
    if traced {
        w.trace = Some(vec![]);
    }
    let violations_before = w.violations.len();
    loop {
        w.now += TICK;
        w.step();
        let settled = w.settling_since.is_some_and(|t| w.now >= t + 60_000);
        w.check(settled);
        if w.violations.len() > violations_before || settled {
            break;
        }
        if w.settling_since.is_none() && w.quiet() && w.now.is_multiple_of(1_000) {
            // No more faults: everything is powered on and settles.
            w.faults_on = false;
            w.settling_since = Some(w.now);
            let off: Vec<NodeId> = w.power_ons.drain(..).map(|(_, n)| n).collect();
            for n in off {
                let node = w.nodes.get_mut(&n).expect("node");
                node.fault_off = false;
                node.power_on(w.now, &mut w.rng);
            }
        }
        if w.settling_since.is_some() && !w.quiet() {
            // An operation started meanwhile (a follow-up): faults stay off.
            w.settling_since = Some(w.now);
        }
        if w.now > BOUND {
            let phase = w.journal().map(|j| j.phase).unwrap_or(Phase::Done);
            w.violations.push(format!("liveness: the operation has not ended after 3 h (phase {phase:?})"));
            break;
        }
    }
    w.violations.truncate(5);
    let trace = w.trace.take().unwrap_or_default();
    (Report { seed, violations: w.violations, faults: w.faults, virtual_ms: w.now, outcomes: w.outcomes }, trace)
}

/// Runs `count` schedules from `seed` on; returns every report.
pub fn run_many(seed: u64, count: u64, mutant: Option<Mutant>) -> Vec<Report> {
    (seed..seed + count).map(|s| run(s, mutant)).collect()
}

/// The command that replays one schedule.
pub fn replay_command(seed: u64, mutant: Option<Mutant>) -> String {
    match mutant {
        Some(m) => format!("target/release/molt-sim --seed {seed} --schedules 1 --mutant {}", m.name()),
        None => format!("target/release/molt-sim --seed {seed} --schedules 1"),
    }
}
