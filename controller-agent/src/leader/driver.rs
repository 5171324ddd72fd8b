//! The driver: the only place where the leader's operations have effects.
//!
//! Every step it reads what the heartbeats say, asks the pure coordinator
//! ([`coordinator::core::next`]) what to do, writes the journal it returns
//! (on the blocking pool, under the operation gate), and only then carries
//! out the actions: commands to nodes, the configuration put back. It also
//! holds the image-fetch grants of the nodes that are staging, and runs the
//! traffic probes during the SE phase. The journal is written through raft:
//! a write a majority does not confirm is decided again at the next step
//! (nothing is done meanwhile); a storage failure stops the operation in
//! this process (see [`LeaderState::halt`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{DeploymentKind, NodeId, session::LeaderMessage};
use coordinator::{
    core::{self, Action, Ctx, Observed, Reported, Seen, Timeouts},
    journal::{Journal, Measured, Ms, Phase, Step},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{LeaderState, cluster::NodeState, image_server::Grant, traffic};
use crate::raft::WriteError;

/// How often the driver decides.
const POLL: Duration = Duration::from_millis(100);
/// Steps the driver takes in a row while each moves the journal on.
const MAX_RUN: u32 = 16;
/// A command is sent again at most this often (a node answers a repeated
/// id without running it twice).
const RESEND: Duration = Duration::from_secs(2);

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
        let mut d = Driver::default();
        // Steps taken in a row without waiting.
        let mut run = 0;
        loop {
            // A step that moved the journal on is followed by the next one
            // at once: its effects (a placement moved, a command's result
            // already in) may let it move on again. A bounded run, then a
            // wait, so a journal that changed at every step could not spin.
            if run == 0 || run >= MAX_RUN {
                run = 0;
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = state.wake.notified() => {}
                }
            }
            run = if d.step(&state).await { run + 1 } else { 0 };
        }
    });
}

/// Whether SEs move (their services with them) in `j`'s phase.
fn moving(j: &Journal) -> bool {
    j.is_running() && matches!(j.phase, Phase::ServiceEngines | Phase::RollbackSeGroups)
}

/// The traffic probes of one operation's SE phase.
struct Probe {
    journal: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<BTreeMap<String, traffic::ProbeStats>>,
}

#[derive(Default)]
struct Driver {
    /// The operation whose image was checked in the leader's store, and why
    /// it is unusable if it is.
    image_checked: Option<(String, Option<String>)>,
    sent: HashMap<String, Instant>,
    grants: HashMap<NodeId, Grant>,
    probe: Option<Probe>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("sent", &self.sent.len()).field("grants", &self.grants.len()).finish()
    }
}

/// The coordinator's waits, from the node's settings.
fn timeouts(state: &LeaderState) -> Timeouts {
    let reform = state.settings.reform_timeout.as_millis() as Ms;
    Timeouts { reform, ..Timeouts::default() }
}

/// What the heartbeats say, in the coordinator's terms.
pub fn observed(state: &LeaderState) -> Observed {
    observed_with(state, None)
}

fn observed_with(state: &LeaderState, image_unusable: Option<String>) -> Observed {
    let mut nodes: BTreeMap<NodeId, Seen> = state
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
    // A placement is in flight until the SE reports its command done.
    for (id, (names, _, cmd)) in state.placing.lock().expect("placing lock").iter() {
        if let Some(seen) = nodes.get_mut(id).filter(|s| !s.settled(cmd)) {
            seen.placing = Some(names.clone());
        }
    }
    Observed { nodes, image_unusable }
}

impl Driver {
    /// After the leader's restart its image index is empty: the journal's
    /// image is registered again (verified), and must be the same one.
    async fn check_image(&mut self, state: &LeaderState) -> Option<String> {
        let j = state.journal().filter(|j| j.is_running() && j.phase == Phase::Distribute)?;
        if let Some((id, why)) = &self.image_checked
            && *id == j.id
        {
            return why.clone();
        }
        let mut why = None;
        for want in j.images() {
            why = match state.image(&want.path).await {
                Ok(image) if image.info.sha256 == want.sha256 => None,
                Ok(image) => Some(format!(
                    "{} changed during the upgrade (SHA-256 {} instead of {})",
                    want.path,
                    image.info.sha256.short(),
                    want.sha256.short()
                )),
                // A controller that became leader during the upgrade holds the
                // image in its staging (verified there), not among its uploads.
                Err(_) if state.image_path(&want.sha256).is_some() => None,
                Err(e) => Some(e.to_string()),
            };
            if why.is_some() {
                break;
            }
        }
        self.image_checked = Some((j.id, why.clone()));
        why
    }

    /// One decision, its journal written, its actions carried out. True
    /// when it wrote a new journal.
    async fn step(&mut self, state: &Arc<LeaderState>) -> bool {
        let image_unusable = self.check_image(state).await;
        let mut written = false;
        let decision = {
            let _gate = state.operation_gate.lock().await;
            if state.halted.lock().expect("halted lock").is_some() {
                return false;
            }
            let Some(j) = state.journal() else { return false };
            let ctx = Ctx { now: now_ms(), generation: state.generation(), timeouts: timeouts(state), mutant: None };
            let mut d = core::next(&j, &observed_with(state, image_unusable), &ctx);
            self.finish_probes(state, &mut d.journal).await;
            if d.journal != j {
                match state.write_journal(d.journal.clone()).await {
                    Ok(()) => written = true,
                    // Not committed: nothing is done, the step is decided again.
                    Err(WriteError::NoQuorum) => {
                        warn!("the journal is not confirmed by a majority of the controllers; waiting for them");
                        return false;
                    }
                    // The term ended: the next leader carries on.
                    Err(WriteError::NotLeader(_)) => return false,
                    Err(e) => {
                        let why = format!(
                            "cannot write the upgrade journal ({e}): the upgrade stopped where it was; free or fix \
                             this controller's disk, then restart it: the controllers resume from the replicated journal"
                        );
                        error!(%why, "upgrade stopped");
                        state.halt(why).await;
                        return false;
                    }
                }
                if j.phase != d.journal.phase || j.outcome != d.journal.outcome {
                    info!(
                        operation = d.journal.operation.name(),
                        phase = d.journal.phase.name(),
                        outcome = ?d.journal.outcome,
                        reason = %d.journal.reason,
                        "operation step"
                    );
                }
            }
            d
        };
        // Commands decided from a journal this step did not write (a
        // resend) go out only while a majority still answers this leader: a
        // leader cut off from the others, not yet aware it was replaced,
        // sends nothing on an old term's journal.
        let due = decision.actions.iter().any(|a| match a {
            Action::Send { command, .. } => self.sent.get(&command.id).is_none_or(|t| t.elapsed() >= RESEND),
            Action::RestoreConfig(_) => true,
        });
        if !written && due && !state.may_act().await {
            return false;
        }
        self.keep_grants(state, &decision.journal);
        self.probes(state, &decision.journal);
        for a in decision.actions {
            match a {
                Action::Send { node, command } => {
                    if self.sent.get(&command.id).is_some_and(|t| t.elapsed() < RESEND) {
                        continue;
                    }
                    if state.cluster.send(&node, LeaderMessage::Command(command.clone())).is_ok() {
                        self.sent.insert(command.id, Instant::now());
                    }
                }
                Action::RestoreConfig(c) => {
                    let _gate = state.operation_gate.lock().await;
                    match state.save_config(c).await {
                        Ok(()) => info!("the configuration is back as it was when the upgrade started"),
                        Err(e) => error!(error = %e, "cannot restore the configuration snapshot"),
                    }
                }
            }
        }
        self.sent.retain(|_, t| t.elapsed() < Duration::from_secs(600));
        written
    }

    /// A node may fetch the operation's image exactly while it is staging it.
    fn keep_grants(&mut self, state: &LeaderState, j: &Journal) {
        let staging: Vec<(&NodeId, DeploymentKind)> = if j.is_running() {
            j.nodes.iter().filter(|(_, n)| n.step == Step::Staging).map(|(id, n)| (id, n.kind)).collect()
        } else {
            vec![]
        };
        self.grants.retain(|id, _| staging.iter().any(|(s, _)| *s == id));
        for (id, kind) in staging {
            let sha = j.image_for(kind).sha256;
            self.grants.entry(id.clone()).or_insert_with(|| state.fetch_gate.grant(id, sha));
        }
    }

    /// Probes every virtual service while the SEs move.
    fn probes(&mut self, state: &Arc<LeaderState>, j: &Journal) {
        if self.probe.is_none() && moving(j) {
            let stop = CancellationToken::new();
            let task = state.spawn(traffic::probe_until(state.clone(), Duration::from_millis(100), stop.clone()));
            self.probe = Some(Probe { journal: j.id.clone(), stop, task });
        }
    }

    /// When the SEs stop moving: the probes end, and what they measured
    /// goes into `next`, the journal about to be written — the status never
    /// shows the phase ended without its measurements. (The operation of
    /// the probes, if it is not `next`'s, gets them in a write of its own.)
    async fn finish_probes(&mut self, state: &LeaderState, next: &mut Journal) {
        let Some(p) = self.probe.take_if(|p| !moving(next) || p.journal != next.id) else { return };
        p.stop.cancel();
        let Ok(stats) = p.task.await else { return };
        let merge = |j: &mut Journal| {
            for (vs, s) in &stats {
                let m = j.measured.entry(vs.clone()).or_default();
                *m = Measured {
                    downtime_ms: m.downtime_ms + s.measured_downtime_ms,
                    failed_probes: m.failed_probes + s.failed_probes,
                    rounds: m.rounds + s.rounds,
                    down_slots: m.down_slots.iter().chain(&s.down_slots).take(10).cloned().collect(),
                };
            }
        };
        if p.journal == next.id {
            merge(next);
        } else if let Some(mut other) = state.journal().filter(|c| c.id == p.journal) {
            merge(&mut other);
            if let Err(e) = state.write_journal(other).await {
                warn!(error = %e, "cannot record the measured downtime");
            }
        }
    }
}
