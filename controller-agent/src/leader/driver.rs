//! The tokio leader's effects for the coordinator's driver
//! ([`coordinator::driver::Driver`], the same code the simulation runs):
//! the replicated store through raft, commands over the sessions, fetch
//! grants in the image server, traffic probes, the wall clock. This module
//! only carries out what the driver decides; it decides nothing.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{NodeId, Sha256Digest, session::LeaderMessage};
use coordinator::{
    config::Config,
    core::{Observed, Reported, Seen, Timeouts},
    driver::{Driver, Effects, Logged, Probed, WriteFailure},
    journal::{Journal, Measured, Ms},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{LeaderState, cluster::NodeState, image_server::Grant, traffic};
use crate::raft::WriteError;

/// How often the driver decides while an operation runs.
const POLL: Duration = Duration::from_millis(100);
/// Steps the driver takes in a row while each moves the journal on.
const MAX_RUN: u32 = 16;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> Ms {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as Ms
}

/// Starts the driver for the leader's lifetime. It resumes whatever the
/// journal on disk says is running.
pub fn spawn(state: Arc<LeaderState>) {
    if let Some(j) = state.journal().filter(|j| j.is_running()) {
        let what = j.operation.name().replace('_', " ");
        info!(phase = j.phase.name(), "resuming the {what} from the journal");
    }
    state.clone().spawn(async move {
        let mut driver = Driver::default();
        // The driver lives as long as the term: its grants are the term's.
        let Some(term) = state.term() else { return };
        let mut fx = TokioEffects { state: state.clone(), term, grants: HashMap::new(), probe: None };
        // Steps taken in a row without waiting.
        let mut run = 0;
        // A change of the replicated state (a configuration write, a
        // request's journal) wakes an idle driver.
        let mut replicated = state.consensus.watch();
        loop {
            // A step that moved the journal on is followed by the next one
            // at once: its effects (a placement moved, a command's result
            // already in) may let it move on again. A bounded run, then a
            // wait, so a journal that changed at every step could not spin.
            if run == 0 || run >= MAX_RUN {
                run = 0;
                tokio::select! {
                    _ = tokio::time::sleep(poll_interval(&state)) => {}
                    _ = state.wake.notified() => {}
                    Ok(()) = replicated.changed() => {}
                }
            }
            // A request and a step never decide at once.
            let moved = {
                let _gate = state.operation_gate.lock().await;
                // The step's lines carry the operation it decides for.
                let id = state.journal().map(|j| j.id).unwrap_or_default();
                let span = tracing::info_span!("operation", operation_id = %id, node = %state.settings.node_id);
                agent_core::otlp::join_operation(&span, &id);
                tracing::Instrument::instrument(driver.step(&mut fx), span).await
            };
            state.driver_steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            run = if moved { run + 1 } else { 0 };
        }
    });
}

/// How long the driver waits for news before it decides again: [`POLL`]
/// while an operation runs; a heartbeat interval while none does. Idle, a
/// step only keeps the placements (an SE that left is news at once; one
/// that hung is seen down within [`super::cluster::MISSED_BEATS`]
/// intervals anyway), and each step reads every node's heartbeat: at
/// 10,000 SEs ten idle steps a second were most of the leader's CPU.
fn poll_interval(state: &LeaderState) -> Duration {
    if state.journal().is_some_and(|j| j.is_running()) { POLL } else { state.settings.heartbeat_interval.max(POLL) }
}

/// The traffic probes of one operation's SE phase.
struct Probe {
    journal: String,
    stop: CancellationToken,
    stats: Arc<Mutex<BTreeMap<String, traffic::ProbeStats>>>,
}

/// The leader's effects.
struct TokioEffects {
    state: Arc<LeaderState>,
    term: Arc<super::Term>,
    grants: HashMap<NodeId, Grant>,
    probe: Option<Probe>,
}

/// A write's failure, in the driver's terms.
fn failure(e: WriteError) -> WriteFailure {
    match e {
        WriteError::NoQuorum => WriteFailure::NoQuorum,
        WriteError::NotLeader(_) => WriteFailure::NotLeader,
        e => WriteFailure::Storage(e.to_string()),
    }
}

impl Effects for TokioEffects {
    fn now(&self) -> Ms {
        now_ms()
    }

    fn generation(&self) -> u64 {
        self.term.generation
    }

    fn timeouts(&self) -> Timeouts {
        timeouts(&self.state)
    }

    fn journal(&self) -> Option<Journal> {
        self.state.journal()
    }

    fn config(&self) -> Config {
        self.state.config()
    }

    fn observe(&mut self) -> Observed {
        observed(&self.state)
    }

    fn ses_by_group(&self) -> BTreeMap<String, Vec<String>> {
        self.state.cluster.ses_by_group()
    }

    fn halted(&self) -> bool {
        self.state.halted.lock().expect("halted lock").is_some()
    }

    /// After the leader's restart its image index is empty: the journal's
    /// image is registered again (verified), and must be the same one.
    async fn check_image(&mut self, j: &Journal) -> Option<String> {
        for want in j.images() {
            let why = match self.state.image(&want.path).await {
                Ok(image) if image.info.sha256 == want.sha256 => None,
                Ok(image) => Some(format!(
                    "{} changed during the upgrade (SHA-256 {} instead of {})",
                    want.path,
                    image.info.sha256.short(),
                    want.sha256.short()
                )),
                // A controller that became leader during the upgrade holds the
                // image in its staging (verified there), not among its uploads.
                Err(_) if self.state.image_path(&want.sha256).is_some() => None,
                Err(e) => Some(e.to_string()),
            };
            if why.is_some() {
                return why;
            }
        }
        None
    }

    async fn write_journal(&mut self, j: &Journal) -> Result<(), WriteFailure> {
        self.state.write_journal(j.clone()).await.map_err(failure)
    }

    async fn write_config(&mut self, c: &Config) -> Result<(), WriteFailure> {
        self.state.save_config(c.clone()).await.map_err(failure)
    }

    async fn may_act(&mut self) -> bool {
        self.state.may_act().await
    }

    fn send(&mut self, node: &NodeId, command: common::session::Command) -> bool {
        self.state.cluster.send(node, LeaderMessage::Command(command)).is_ok()
    }

    fn grant(&mut self, node: &NodeId, sha: Sha256Digest) {
        self.grants.insert(node.clone(), self.term.fetch_gate.grant(node, sha));
    }

    fn revoke(&mut self, node: &NodeId) {
        self.grants.remove(node);
    }

    fn start_probes(&mut self, journal: &str) {
        let stop = CancellationToken::new();
        let stats = Arc::new(Mutex::new(BTreeMap::new()));
        let probe = traffic::probe_until(self.state.clone(), Duration::from_millis(100), stop.clone(), stats.clone());
        self.state.spawn(probe);
        self.probe = Some(Probe { journal: journal.to_owned(), stop, stats });
    }

    fn stop_probes(&mut self) {
        if let Some(p) = self.probe.take() {
            p.stop.cancel();
        }
    }

    fn probed(&self) -> Option<Probed> {
        let p = self.probe.as_ref()?;
        let stats = p.stats.lock().expect("probe stats lock");
        let measured = stats
            .iter()
            .map(|(vs, s)| {
                let m = Measured {
                    downtime_ms: s.measured_downtime_ms,
                    failed_probes: s.failed_probes,
                    rounds: s.rounds,
                    down_slots: s.down_slots.clone(),
                };
                (vs.clone(), m)
            })
            .collect();
        Some(Probed { journal: p.journal.clone(), measured })
    }

    fn suspend(&mut self, j: Journal) {
        self.state.suspend(j);
    }

    fn log(&mut self, event: Logged<'_>) {
        match event {
            Logged::Stepped(j) => info!(
                operation = j.operation.name(),
                phase = j.phase.name(),
                outcome = ?j.outcome,
                reason = %j.reason,
                "operation step"
            ),
            Logged::NoQuorum => {
                warn!("the journal is not confirmed by a majority of the controllers; waiting for them")
            }
            Logged::Suspended(why) => error!(%why, "upgrade stopped"),
            Logged::Restored(Ok(())) => info!("the configuration is back as it was when the upgrade started"),
            Logged::Restored(Err(e)) => error!(error = %e, "cannot restore the configuration snapshot"),
        }
    }
}

/// The coordinator's waits, from the node's settings (the cluster's rules
/// apply over them: [`Timeouts::under`]).
pub fn timeouts(state: &LeaderState) -> Timeouts {
    let reform = state.settings.reform_timeout.as_millis() as Ms;
    Timeouts { reform, ..Timeouts::default() }
}

/// What the heartbeats say, in the coordinator's terms.
pub fn observed(state: &LeaderState) -> Observed {
    let nodes: BTreeMap<NodeId, Seen> = state
        .cluster
        .each_reported(|id, hb, live| {
            let results = hb
                .results
                .iter()
                .map(|r| {
                    let boot_id = if r.boot_id.is_empty() { hb.boot_id.clone() } else { r.boot_id.clone() };
                    (r.id.clone(), Reported { state: r.state, message: r.message.clone(), boot_id })
                })
                .collect();
            let seen = Seen {
                up: live == NodeState::Up,
                version: hb.version,
                boot_id: hb.boot_id.clone(),
                pending: hb.pending,
                previous: hb.previous_version,
                serving: hb.serving.clone(),
                placing: None,
                results,
                received: hb.transfers.iter().map(|t| (t.sha256, t.received)).collect(),
            };
            (id.clone(), seen)
        })
        .into_iter()
        .collect();
    Observed { nodes, ..Observed::default() }
}
