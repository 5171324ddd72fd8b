//! The leader's driver: the only loop on the leader, and the only place
//! where its decisions have effects. The tokio leader
//! (`controller-agent/src/leader/driver.rs`) and the simulation
//! ([`crate::sim`]) both run this code, each with its own [`Effects`].
//!
//! Each step it reads what the heartbeats say, asks [`core::next`] what to
//! do, writes the journal it returns through raft, and only then carries out
//! the actions: commands to nodes, the configuration put back, fetch grants,
//! the traffic probes; then it keeps every SE serving what it should (the
//! placer) and the placements computed while nothing runs. A write a
//! majority does not confirm is decided again at the next step (nothing is
//! done meanwhile); a storage failure suspends the operation in this
//! process ([`core::halt`]).
//!
//! The product holds its operation gate around each step, so a request and
//! a step never decide at once.

use std::collections::BTreeMap;

use common::{NodeId, Sha256Digest, session::Command};

use crate::{
    Mutant,
    config::Config,
    core::{self, Action, Ctx, Observed, Timeouts},
    journal::{Journal, Measured, Ms},
    placement,
};

/// A command is sent again at most this often (a node answers a repeated
/// id without running it twice).
pub const RESEND: Ms = 2_000;
/// A placement that has not been reported done is pushed again this often.
pub const REPLACE: Ms = 1_000;

/// Why a journal or configuration write did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFailure {
    /// A majority of the controllers did not confirm it: decided again.
    NoQuorum,
    /// This controller no longer leads: the next leader carries on.
    NotLeader,
    /// This controller's store cannot be written: the operation stops here.
    Storage(String),
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFailure::NoQuorum => f.write_str("a majority of the controllers did not confirm the write"),
            WriteFailure::NotLeader => f.write_str("this controller no longer leads"),
            WriteFailure::Storage(e) => f.write_str(e),
        }
    }
}

/// What the traffic probes measured so far, for one operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probed {
    /// The operation the probes run for.
    pub journal: String,
    /// Per virtual service.
    pub measured: BTreeMap<String, Measured>,
}

/// What the driver does to the world, and what it reads of it.
#[allow(async_fn_in_trait)]
pub trait Effects {
    /// The clock: milliseconds since the Unix epoch.
    fn now(&self) -> Ms;
    /// This leader's generation (fences its commands at the agents).
    fn generation(&self) -> u64;
    /// The waits of the coordinator.
    fn timeouts(&self) -> Timeouts;
    /// The journal as this leader's replica holds it.
    fn journal(&self) -> Option<Journal>;
    /// The configuration as this leader's replica holds it.
    fn config(&self) -> Config;
    /// What the heartbeats say (`placing` is the driver's to fill in).
    fn observe(&mut self) -> Observed;
    /// The SEs of each group, by id.
    fn ses_by_group(&self) -> BTreeMap<String, Vec<String>>;
    /// Whether the operation was suspended in this process (its journal
    /// could not be written): nothing goes on from this process.
    fn halted(&self) -> bool;
    /// Why the image of `j` cannot be served, if so.
    async fn check_image(&mut self, j: &Journal) -> Option<String>;
    /// Replicates the journal.
    async fn write_journal(&mut self, j: &Journal) -> Result<(), WriteFailure>;
    /// Replicates the configuration.
    async fn write_config(&mut self, c: &Config) -> Result<(), WriteFailure>;
    /// Whether a majority of the controllers answers this leader now.
    async fn may_act(&mut self) -> bool;
    /// Sends a command to a node; false when it has no session.
    fn send(&mut self, node: &NodeId, command: Command) -> bool;
    /// Lets `node` fetch the image `sha`.
    fn grant(&mut self, node: &NodeId, sha: Sha256Digest);
    /// Takes back `node`'s fetch grant.
    fn revoke(&mut self, node: &NodeId);
    /// Starts the traffic probes for the operation `journal`.
    fn start_probes(&mut self, journal: &str);
    /// Stops them.
    fn stop_probes(&mut self);
    /// What the running probes measured so far.
    fn probed(&self) -> Option<Probed>;
    /// Keeps `j` as the journal of this process: the operation suspended
    /// where it was, because its journal could not be written.
    fn suspend(&mut self, j: Journal);
    /// Something worth an operator's log line happened.
    fn log(&mut self, event: Logged<'_>);
}

/// What the driver reports to the log.
#[derive(Debug)]
pub enum Logged<'a> {
    /// The operation moved to another phase or ended.
    Stepped(&'a Journal),
    /// A journal write was not confirmed by a majority.
    NoQuorum,
    /// The operation was suspended.
    Suspended(&'a str),
    /// The configuration snapshot was put back (or could not be).
    Restored(Result<(), &'a WriteFailure>),
}

/// A placement pushed to an SE.
#[derive(Debug, Clone)]
struct Placed {
    names: Vec<String>,
    at: Ms,
    id: String,
}

/// The driver's memory: what it sent and granted. Lost with the leader;
/// nothing in it decides an operation's outcome (the journal does).
#[derive(Debug, Default)]
pub struct Driver {
    sent: BTreeMap<String, Ms>,
    placed: BTreeMap<NodeId, Placed>,
    seq: u64,
    grants: BTreeMap<NodeId, Sha256Digest>,
    /// Whether the traffic probes run.
    probing: bool,
    image_checked: Option<(String, Option<String>)>,
    /// A known defect put back (simulation only).
    pub mutant: Option<Mutant>,
}

impl Driver {
    /// A driver with `mutant` put back (simulation only).
    pub fn with_mutant(mutant: Option<Mutant>) -> Self {
        Self { mutant, ..Self::default() }
    }

    /// The nodes allowed to fetch an image now.
    pub fn granted(&self) -> &BTreeMap<NodeId, Sha256Digest> {
        &self.grants
    }

    /// One step: decide, write, act. True when it wrote a new journal (the
    /// next step may move on at once).
    pub async fn step<E: Effects>(&mut self, fx: &mut E) -> bool {
        if fx.halted() {
            self.release(fx);
            return false;
        }
        let now = fx.now();
        let mut obs = fx.observe();
        for (id, p) in &self.placed {
            if let Some(s) = obs.nodes.get_mut(id).filter(|s| !s.settled(&p.id)) {
                s.placing = Some(p.names.clone());
            }
        }
        let mut written = false;
        let mut journal = fx.journal();
        let mut actions = vec![];
        if let Some(j) = journal.take() {
            obs.image_unusable = self.check_image(fx, &j).await;
            obs.probed = fx.probed();
            let timeouts = fx.timeouts().under(&j.config);
            let ctx = Ctx { now, generation: fx.generation(), timeouts, mutant: self.mutant };
            let d = core::next(&j, &obs, &ctx);
            if d.journal != j {
                match fx.write_journal(&d.journal).await {
                    Ok(()) => written = true,
                    // The defect: the actions of a journal nobody holds go out.
                    Err(WriteFailure::NoQuorum | WriteFailure::NotLeader)
                        if self.mutant == Some(Mutant::ActOnFailedWrite) =>
                    {
                        self.act(fx, d.actions, Some(&d.journal.id), now).await;
                        return false;
                    }
                    Err(WriteFailure::NoQuorum) => {
                        fx.log(Logged::NoQuorum);
                        return false;
                    }
                    Err(WriteFailure::NotLeader) => return false,
                    Err(WriteFailure::Storage(e)) => {
                        let why = format!(
                            "cannot write the upgrade journal ({e}): the upgrade stopped where it was; free or fix \
                             this controller's disk, then restart it: the controllers resume from the replicated \
                             journal"
                        );
                        fx.log(Logged::Suspended(&why));
                        fx.suspend(core::halt(&j, &why, now, self.mutant));
                        self.release(fx);
                        return false;
                    }
                }
                if j.phase != d.journal.phase || j.outcome != d.journal.outcome {
                    fx.log(Logged::Stepped(&d.journal));
                }
            }
            actions = d.actions;
            journal = Some(d.journal);
        }
        // Commands decided from a journal this step did not write (a
        // resend) go out only while a majority still answers this leader: a
        // leader cut off from the others, not yet aware it was replaced,
        // sends nothing on an old term's journal.
        let due = actions.iter().any(|a| match a {
            Action::Send { command, .. } => self.sent.get(&command.id).is_none_or(|t| now >= t + RESEND),
            Action::RestoreConfig(_) => true,
            Action::AllowFetch { .. } | Action::Probe => false,
        });
        if !written && due && self.mutant != Some(Mutant::ResendUnconfirmed) && !fx.may_act().await {
            return false;
        }
        self.act(fx, actions, journal.as_ref().map(|j| j.id.as_str()), now).await;
        self.place(fx, journal.as_ref(), &obs, now).await;
        self.sent.retain(|_, t| now < *t + 600_000);
        written
    }

    /// Carries out the actions decided for the operation `journal`.
    async fn act<E: Effects>(&mut self, fx: &mut E, actions: Vec<Action>, journal: Option<&str>, now: Ms) {
        let mut fetching = BTreeMap::new();
        let mut probe = false;
        for a in actions {
            match a {
                Action::Send { node, command } => {
                    if self.sent.get(&command.id).is_some_and(|t| now < t + RESEND) {
                        continue;
                    }
                    let id = command.id.clone();
                    if fx.send(&node, command) {
                        self.sent.insert(id, now);
                    }
                }
                Action::RestoreConfig(c) => {
                    let r = fx.write_config(&c).await;
                    fx.log(Logged::Restored(r.as_ref().map(|_| ())));
                }
                Action::AllowFetch { node, sha } => {
                    fetching.insert(node, sha);
                }
                Action::Probe => probe = true,
            }
        }
        // A node may fetch the operation's image exactly while it stages it.
        let kept = self.mutant == Some(Mutant::GrantKept);
        let gone: Vec<NodeId> = self
            .grants
            .iter()
            .filter(|(id, sha)| !kept && fetching.get(*id) != Some(*sha))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.grants.remove(&id);
            fx.revoke(&id);
        }
        for (id, sha) in fetching {
            if self.grants.get(&id) != Some(&sha) {
                fx.grant(&id, sha);
                self.grants.insert(id, sha);
            }
        }
        match (self.probing, probe, journal) {
            (false, true, Some(id)) => {
                fx.start_probes(id);
                self.probing = true;
            }
            (true, false, _) => {
                fx.stop_probes();
                self.probing = false;
            }
            _ => {}
        }
    }

    /// Every grant taken back, the probes stopped: this process does
    /// nothing more for the operation.
    fn release<E: Effects>(&mut self, fx: &mut E) {
        for id in std::mem::take(&mut self.grants).into_keys() {
            fx.revoke(&id);
        }
        if std::mem::take(&mut self.probing) {
            fx.stop_probes();
        }
    }

    /// After the leader's restart its image index is empty: the journal's
    /// image is checked again once per operation.
    async fn check_image<E: Effects>(&mut self, fx: &mut E, j: &Journal) -> Option<String> {
        if !(j.is_running() && j.phase == crate::journal::Phase::Distribute) {
            return None;
        }
        if let Some((id, why)) = &self.image_checked
            && *id == j.id
        {
            return why.clone();
        }
        let why = fx.check_image(j).await;
        self.image_checked = Some((j.id.clone(), why.clone()));
        why
    }

    /// The placer: while nothing runs, the placements follow the SEs there
    /// are; always, every SE that is up serves what it should,
    /// make-before-break ([`core::placements_to_push`]).
    async fn place<E: Effects>(&mut self, fx: &mut E, journal: Option<&Journal>, obs: &Observed, now: Ms) {
        let ses = fx.ses_by_group();
        let mut config = fx.config();
        if !journal.is_some_and(Journal::is_running) {
            let next = placement::place(&config, &ses);
            if config.placements != next {
                config.placements = next;
                if fx.write_config(&config).await.is_err() {
                    return;
                }
            }
        }
        let se_ids: Vec<NodeId> = ses.into_values().flatten().filter_map(|id| id.parse().ok()).collect();
        let mut confirmed = None;
        for (se, want) in core::placements_to_push(&config, journal, &se_ids, obs) {
            let names: Vec<String> = want.iter().map(|w| w.name.clone()).collect();
            if self.placed.get(&se).is_some_and(|p| p.names == names && now < p.at + REPLACE) {
                continue;
            }
            // Pushed only while a majority answers this leader.
            if confirmed.is_none() {
                confirmed = Some(fx.may_act().await);
            }
            if confirmed == Some(false) {
                return;
            }
            self.seq += 1;
            let generation = fx.generation();
            let id = format!("place-{se}-{generation}-{}", self.seq);
            let command = Command {
                id: id.clone(),
                generation,
                kind: common::session::CommandKind::Place(want),
                operation_id: None,
            };
            if fx.send(&se, command) {
                self.placed.insert(se, Placed { names, at: now, id });
            }
        }
    }
}
