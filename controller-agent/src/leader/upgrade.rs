//! The system upgrade, driven by the leader as a journaled state machine.
//!
//! ```text
//! Distribute → ApplyControllers → AwaitControllers → CommitControllers → ServiceEngines → Done(completed|suspended)
//!                     │                  │
//!                     └──── failure ─────┴→ RollbackControllers → AwaitRollback → Done(aborted)
//! ```
//!
//! The journal (`store/journal.json`) is written before every step acts, so
//! the leader — which reboots into the new version like every controller —
//! resumes where it was after its own reboot or a crash. Each step is
//! idempotent: commands are re-sent with the same ids, nodes answer repeated
//! ids and already-done work without redoing it.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    NodeId, Version,
    session::{Command, CommandKind, CommandState, ImageRef, LeaderMessage},
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    LeaderState,
    cluster::NodeState,
    distribute::{self, Refused},
    status::{OpState, now},
    store::Config,
};

const POLL: Duration = Duration::from_millis(100);
const RESEND: Duration = Duration::from_secs(2);

mod se_phase;
mod start;

pub use start::{UpgradeRequest, start, version_checks};

/// Where the upgrade is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Staging the image everywhere.
    Distribute,
    /// Installing on the controllers, followers first, the leader last.
    ApplyControllers,
    /// Waiting for every controller to rejoin on the new version.
    AwaitControllers,
    /// Committing the controllers.
    CommitControllers,
    /// Rolling through the SE groups.
    ServiceEngines,
    /// Returning every controller to the old version.
    RollbackControllers,
    /// Returning SE groups to the old version, on the operator's request.
    RollbackSeGroups,
    /// Waiting for the controllers to rejoin on the old version.
    AwaitRollback,
    /// Finished (completed, suspended or aborted).
    Done,
}

/// The persisted state of an upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    /// Format (1).
    pub format: u32,
    /// Unique id of this upgrade (command ids derive from it).
    pub id: String,
    /// The image.
    pub image: ImageRecord,
    /// Version the cluster ran before.
    pub from: Version,
    /// Version of the image.
    pub to: Version,
    /// Forced past version compatibility.
    pub force: bool,
    /// SE groups upgraded all at once.
    pub disruptive: bool,
    /// `suspend` or `continue`.
    pub action_on_error: String,
    /// Current step.
    pub step: Step,
    /// The controllers, leader last.
    pub controllers: Vec<NodeId>,
    /// SEs by group.
    pub se_groups: BTreeMap<String, Vec<NodeId>>,
    /// Boot ids before each node's apply.
    pub boot_ids: BTreeMap<NodeId, String>,
    /// When the current waiting step gives up (Unix seconds).
    pub deadline: Option<f64>,
    /// SEs done, by group.
    pub se_done: BTreeMap<String, Vec<NodeId>>,
    /// Suspended groups and why.
    pub suspended: BTreeMap<String, String>,
    /// The SEs whose failure suspended their group.
    #[serde(default)]
    pub failed: BTreeMap<String, Vec<NodeId>>,
    /// SEs left on the old version by `resume ... skip_suspended`.
    #[serde(default)]
    pub skipped: Vec<NodeId>,
    /// SE groups to return to the old version (`rollback segroup`).
    #[serde(default)]
    pub rollback_groups: Vec<String>,
    /// Groups rolled back because an SE failed (`action_on_error: rollback`), and why.
    #[serde(default)]
    pub rolled_back: BTreeMap<String, String>,
    /// SEs taken out of service (their services moved to the other SEs of
    /// their group), written before the move: a restarted leader knows them,
    /// and no SE stays drained once the operation ends.
    #[serde(default)]
    pub drained: std::collections::BTreeSet<String>,
    /// Groups being rolled back because an SE failed (`action_on_error:
    /// rollback`), and why: written before the first SE is rolled back, so a
    /// restarted leader goes on rolling back instead of upgrading.
    #[serde(default)]
    pub rolling_back: BTreeMap<String, String>,
    /// Set in memory only when the driver stopped because the journal could
    /// not be written: nothing may go on from this process (a restarted
    /// leader resumes from the journal on disk, which never has it).
    #[serde(skip)]
    pub halted: Option<String>,
    /// Groups that went on past failed SEs (`action_on_error: continue`), and why;
    /// those SEs are in `skipped`, still on the old version.
    #[serde(default)]
    pub continued: BTreeMap<String, String>,
    /// The configuration when the upgrade started.
    pub config_snapshot: Config,
    /// Why it is failing, once it is.
    pub reason: String,
    /// How it ended.
    pub outcome: Option<OpState>,
}

/// The image as the journal keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `controller://` path.
    pub image_path: String,
    /// For commands.
    pub sha256: String,
    /// Size.
    pub size: u64,
    /// Deployment kind.
    pub kind: String,
    /// Minimum compatible version.
    pub min_compatible: Version,
}

impl Journal {
    fn image_ref(&self) -> ImageRef {
        ImageRef {
            sha256: self.image.sha256.parse().expect("journal holds a valid digest"),
            size: self.image.size,
            version: self.to,
            kind: self.image.kind.parse().expect("journal holds a valid kind"),
            min_compatible: self.image.min_compatible,
        }
    }

    /// Whether the configuration is read-only because of this upgrade.
    pub fn is_running(&self) -> bool {
        self.step != Step::Done
    }
}

/// What `resume` and `rollback` of SE groups ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRequest {
    /// The groups (empty: every suspended one for resume; required for rollback).
    #[serde(default)]
    pub se_groups: Vec<String>,
    /// Resume past the SEs that failed, leaving them on the old version.
    #[serde(default)]
    pub skip_suspended: bool,
}

fn refuse(status: StatusCode, message: String) -> Refused {
    Refused { status, message, prechecks: vec![] }
}

/// Resumes suspended SE groups (`molt resume segroup`).
pub fn resume_groups(state: &Arc<LeaderState>, req: GroupRequest) -> Result<serde_json::Value, Refused> {
    let _gate = state.operation_gate.lock().expect("operation gate");
    let j = state.journal.lock().expect("journal lock").clone();
    let Some(j) = j.filter(|j| j.outcome == Some(OpState::Suspended) && !j.is_running()) else {
        return Err(refuse(StatusCode::CONFLICT, "no upgrade is suspended: nothing to resume".into()));
    };
    if let Some(why) = &j.halted {
        return Err(refuse(StatusCode::CONFLICT, format!("{why}; SE groups cannot be resumed from here")));
    }
    if j.suspended.is_empty() {
        return Err(refuse(StatusCode::CONFLICT, "no SE group is suspended: nothing to resume".into()));
    }
    let groups: Vec<String> =
        if req.se_groups.is_empty() { j.suspended.keys().cloned().collect() } else { req.se_groups };
    if let Some(g) = groups.iter().find(|g| !j.suspended.contains_key(*g)) {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("SE group {g} is not suspended")));
    }
    update(state, |j| {
        for g in &groups {
            j.suspended.remove(g);
            if req.skip_suspended {
                j.skipped.extend(j.failed.remove(g).unwrap_or_default());
            }
        }
        j.step = Step::ServiceEngines;
        j.outcome = None;
        j.reason.clear();
    });
    reopen(state, "service_engines");
    info!(?groups, skip = req.skip_suspended, "resuming SE groups");
    spawn_drive(state.clone());
    Ok(serde_json::to_value(state.status.lock().expect("status lock").view()).expect("serializes"))
}

/// Returns SE groups to the old version (`molt rollback segroup`).
pub fn rollback_groups(state: &Arc<LeaderState>, req: GroupRequest) -> Result<serde_json::Value, Refused> {
    let _gate = state.operation_gate.lock().expect("operation gate");
    let j = state.journal.lock().expect("journal lock").clone();
    let Some(j) = j.filter(|j| matches!(j.outcome, Some(OpState::Suspended | OpState::Completed)) && !j.is_running())
    else {
        return Err(refuse(
            StatusCode::CONFLICT,
            "no finished or suspended upgrade whose SE groups could be rolled back".into(),
        ));
    };
    if let Some(why) = &j.halted {
        return Err(refuse(StatusCode::CONFLICT, format!("{why}; SE groups cannot be rolled back from here")));
    }
    if req.se_groups.is_empty() {
        return Err(refuse(StatusCode::BAD_REQUEST, "name the SE groups to roll back".into()));
    }
    if let Some(g) = req.se_groups.iter().find(|g| !j.se_groups.contains_key(*g)) {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("no SE group {g} in this upgrade")));
    }
    update(state, |j| {
        for g in &req.se_groups {
            j.suspended.remove(g);
        }
        j.rollback_groups = req.se_groups.clone();
        j.step = Step::RollbackSeGroups;
        j.outcome = None;
        j.reason.clear();
    });
    reopen(state, "rollback_se_groups");
    {
        // A group rollback is an operation of its own in the history, and its
        // progress starts again.
        let mut b = state.status.lock().expect("status lock");
        b.recording = Some(crate::leader::status::HistoryEntry {
            operation: "se_group_rollback".into(),
            from_version: j.to.to_string(),
            to_version: j.from.to_string(),
            state: OpState::InProgress,
            started_at: crate::leader::status::now(),
            ended_at: None,
            reason: String::new(),
        });
        b.current.progress = 0;
    }
    info!(groups = ?req.se_groups, "rolling SE groups back");
    spawn_drive(state.clone());
    Ok(serde_json::to_value(state.status.lock().expect("status lock").view()).expect("serializes"))
}

/// Puts the status of a finished operation back in progress.
fn reopen(state: &LeaderState, phase: &str) {
    let mut b = state.status.lock().expect("status lock");
    b.current.state = OpState::InProgress;
    b.current.phase = phase.into();
    b.current.reason.clear();
    b.current.ended_at = None;
    drop(b);
    state.save_status();
}

/// Resumes an upgrade the journal says is running (after the leader's
/// reboot or a crash).
pub fn resume(state: &Arc<LeaderState>) {
    let running = state.journal.lock().expect("journal lock").as_ref().is_some_and(Journal::is_running);
    if running {
        info!("resuming the upgrade from the journal");
        spawn_drive(state.clone());
    }
}

fn journal(state: &LeaderState) -> Journal {
    state.journal.lock().expect("journal lock").clone().expect("an upgrade is running")
}

/// Changes the journal and writes it, under the journal's lock so that
/// concurrent SE groups never lose each other's updates.
fn update(state: &LeaderState, f: impl FnOnce(&mut Journal)) -> Journal {
    state.update_journal(f).unwrap_or_else(|e| {
        // Without the journal the next step must not act: stop the driver
        // here, wherever it is; `spawn_drive` ends the operation cleanly.
        std::panic::panic_any(JournalWriteFailed(e.to_string()))
    })
}

/// Why the upgrade driver stopped: the journal could not be written.
#[derive(Debug)]
struct JournalWriteFailed(String);

/// Runs the driver; if it stops for want of a journal (or by any other
/// panic), the operation ends `suspended` with the reason, and the
/// configuration is writable again. Nothing acts after the failed write; a
/// restarted leader resumes from the last journal that was written.
pub(crate) fn spawn_drive(state: Arc<LeaderState>) {
    use futures_util::FutureExt;
    state.clone().spawn(async move {
        let Err(panic) = std::panic::AssertUnwindSafe(drive(state.clone())).catch_unwind().await else {
            return;
        };
        let why = match panic.downcast::<JournalWriteFailed>() {
            Ok(j) => format!(
                "cannot write the upgrade journal ({}): the upgrade stopped where it was; \
                 free or fix the leader's disk, then restart the leader, which resumes from the last journal written",
                j.0
            ),
            Err(other) => format!(
                "the upgrade driver stopped on an internal error ({}); restart the leader to resume it",
                common::panic_message(&*other)
            ),
        };
        tracing::error!(%why, "upgrade stopped");
        if let Some(j) = state.journal.lock().expect("journal lock").as_mut() {
            // In memory only (the disk refused): the configuration is not
            // locked, and nothing goes on from this process.
            j.step = Step::Done;
            j.outcome = Some(OpState::Suspended);
            j.reason = why.clone();
            j.halted = Some(why.clone());
        }
        state.status.lock().expect("status lock").finish(OpState::Suspended, why);
        state.save_status();
    });
}

fn set_phase(state: &LeaderState, phase: &str, progress: u8) {
    let mut b = state.status.lock().expect("status lock");
    b.current.phase = phase.into();
    b.advance(progress);
    drop(b);
    state.save_status();
}

async fn drive(state: Arc<LeaderState>) {
    loop {
        let j = journal(&state);
        let next = match j.step {
            Step::Distribute => distribute_step(&state, &j).await,
            Step::ApplyControllers => apply_controllers(&state, &j).await,
            Step::AwaitControllers => await_controllers(&state, &j).await,
            Step::CommitControllers => commit_controllers(&state, &j).await,
            Step::ServiceEngines => se_phase::service_engines(&state).await,
            Step::RollbackSeGroups => se_phase::rollback_groups(&state).await,
            Step::RollbackControllers => rollback_controllers(&state, &j).await,
            Step::AwaitRollback => await_rollback(&state, &j).await,
            Step::Done => return,
        };
        if let Some((step, reason)) = next {
            info!(from = ?j.step, to = ?step, %reason, "upgrade step");
            update(&state, |j| {
                if j.step != step {
                    j.step = step;
                    j.deadline = None;
                }
                if !reason.is_empty() && j.reason.is_empty() {
                    j.reason = reason;
                }
            });
        } else {
            // The step ended the process's part (the leader is rebooting).
            return;
        }
    }
}

type Next = Option<(Step, String)>;

fn fail(reason: String) -> Next {
    warn!(%reason, "controller phase failed; rolling back");
    Some((Step::RollbackControllers, reason))
}

async fn distribute_step(state: &Arc<LeaderState>, j: &Journal) -> Next {
    set_phase(state, "distribute", 0);
    // After the leader's restart its image index is empty: register the
    // journal's image again (verified), and make sure it is the same one.
    match state.images.get(&j.image.image_path).await {
        Ok(image) if image.info.sha256.to_hex() == j.image.sha256 => {}
        Ok(image) => {
            let why = format!(
                "{} changed during the upgrade (SHA-256 {} instead of {}); nothing was installed",
                j.image.image_path,
                image.info.sha256.short(),
                &j.image.sha256[..12.min(j.image.sha256.len())]
            );
            finish(state, OpState::Aborted, why, false);
            return Some((Step::Done, String::new()));
        }
        Err(e) => {
            finish(
                state,
                OpState::Aborted,
                format!("the image is no longer usable, nothing was installed: {e}"),
                false,
            );
            return Some((Step::Done, String::new()));
        }
    }
    let nodes = state.cluster.snapshot();
    let failures = distribute::stage_everywhere(state, &j.image_ref(), &nodes, &j.id).await;
    if failures.is_empty() {
        Some((Step::ApplyControllers, String::new()))
    } else {
        finish(
            state,
            OpState::Aborted,
            format!("distribution failed, nothing was installed: {}", failures.join("; ")),
            false,
        );
        Some((Step::Done, String::new()))
    }
}

fn cmd(state: &LeaderState, j: &Journal, node: &NodeId, kind: CommandKind) -> Command {
    Command { id: format!("{}-{}-{node}", kind.name(), j.id), generation: state.generation, kind }
}

/// Sends `c` to `node` until the node reports it settled or `deadline`.
async fn run_command(state: &LeaderState, node: &NodeId, c: &Command, deadline: Instant) -> Result<String, String> {
    run_command_on(state, node, c, deadline).await.map(|(m, _)| m)
}

/// Like [`run_command`], also returning the boot id of the agent process
/// that reported the outcome.
async fn run_command_on(
    state: &LeaderState,
    node: &NodeId,
    c: &Command,
    deadline: Instant,
) -> Result<(String, String), String> {
    let mut last_sent: Option<Instant> = None;
    loop {
        if let Some((r, boot)) = state.cluster.result_of(node, &c.id) {
            match r.state {
                CommandState::Succeeded => return Ok((r.message, boot)),
                CommandState::Failed => return Err(r.message),
                CommandState::Running => {}
            }
        }
        if last_sent.is_none_or(|t| t.elapsed() >= RESEND)
            && state.cluster.send(node, LeaderMessage::Command(c.clone())).is_ok()
        {
            last_sent = Some(Instant::now());
        }
        if Instant::now() > deadline {
            let st = state.cluster.node(node).map(|(_, s)| s).unwrap_or(NodeState::Down);
            return Err(format!("no answer to {} within the deadline (node {:?})", c.kind.name(), st));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn instant_of(unix: f64) -> Instant {
    let left = (unix - now()).max(0.0);
    Instant::now() + Duration::from_secs_f64(left)
}

async fn apply_controllers(state: &Arc<LeaderState>, _: &Journal) -> Next {
    set_phase(state, "controllers", 10);
    let j = update(state, |j| {
        for c in &j.controllers {
            if !j.boot_ids.contains_key(c)
                && let Some((Some(hb), _)) = state.cluster.node(c)
            {
                j.boot_ids.insert(c.clone(), hb.boot_id.clone());
            }
        }
    });
    let deadline = Instant::now() + state.settings.reform_timeout;
    let me = &state.settings.node_id;
    let followers: Vec<NodeId> = j.controllers.iter().filter(|c| *c != me).cloned().collect();
    let tasks: Vec<_> = followers
        .iter()
        .map(|c| {
            let state = state.clone();
            let command = cmd(&state, &j, c, CommandKind::Apply(j.image_ref()));
            let c = c.clone();
            state.clone().spawn(async move {
                state.status.lock().expect("status lock").begin(c.as_str(), "apply");
                let r = run_command(&state, &c, &command, deadline).await;
                state.status.lock().expect("status lock").end(c.as_str(), r.is_ok(), r.as_ref().unwrap_or_else(|e| e));
                (c, r)
            })
        })
        .collect();
    let mut failures = vec![];
    for t in tasks {
        if let Ok((c, Err(e))) = t.await {
            failures.push(format!("{c}: {e}"));
        }
    }
    if !failures.is_empty() {
        return fail(format!("apply failed on {}", failures.join("; ")));
    }
    // The leader last: first record that the next step is waiting, then reboot.
    let deadline_unix = now() + state.settings.reform_timeout.as_secs_f64();
    update(state, |j| {
        j.step = Step::AwaitControllers;
        j.deadline = Some(deadline_unix);
    });
    state.status.lock().expect("status lock").begin(me.as_str(), "apply");
    state.save_status();
    let command = cmd(state, &j, me, CommandKind::Apply(j.image_ref()));
    match run_command(state, me, &command, instant_of(deadline_unix)).await {
        Ok(m) if m.starts_with("already running") => {
            state.status.lock().expect("status lock").end(me.as_str(), true, &m);
            Some((Step::AwaitControllers, String::new()))
        }
        Ok(m) => {
            // The leader's own node is about to reboot; the journal resumes it.
            info!(%m, "the leader applied the image and reboots");
            std::future::pending::<()>().await;
            None
        }
        Err(e) => fail(format!("apply failed on the leader {me}: {e}")),
    }
}

/// How every controller stands against a wanted version.
fn rejoined(state: &LeaderState, j: &Journal, want: Version, other: Version) -> Result<bool, String> {
    let mut all = true;
    for c in &j.controllers {
        let Some((Some(hb), live)) = state.cluster.node(c) else {
            all = false;
            continue;
        };
        let rebooted = j.boot_ids.get(c).is_none_or(|b| *b != hb.boot_id);
        if live == NodeState::Up && hb.version == want && (rebooted || *c == state.settings.node_id) {
            continue;
        }
        if live == NodeState::Up && rebooted && hb.version == other && want != j.from {
            return Err(format!("{c} came back on {other}: {want} did not start there and its boot loader fell back"));
        }
        all = false;
    }
    Ok(all)
}

async fn await_controllers(state: &Arc<LeaderState>, j: &Journal) -> Next {
    set_phase(state, "controllers", 30);
    let deadline = instant_of(j.deadline.unwrap_or_else(|| now() + state.settings.reform_timeout.as_secs_f64()));
    {
        let mut b = state.status.lock().expect("status lock");
        for c in &j.controllers {
            let open = b.has_open_event(c.as_str());
            if !open {
                b.begin(c.as_str(), "rejoin");
            }
        }
    }
    loop {
        // Close the event of each controller seen back on the new version.
        for c in &j.controllers {
            if let Some((Some(hb), NodeState::Up)) = state.cluster.node(c)
                && hb.version == j.to
                && j.boot_ids.get(c).is_none_or(|b| *b != hb.boot_id || *c == state.settings.node_id)
            {
                let mut b = state.status.lock().expect("status lock");
                let open = b.has_open_event(c.as_str());
                if open {
                    b.end(c.as_str(), true, &format!("rejoined on {}", j.to));
                }
            }
        }
        match rejoined(state, j, j.to, j.from) {
            Ok(true) => {
                let mut b = state.status.lock().expect("status lock");
                for c in &j.controllers {
                    if let Some(n) = b.current.nodes.iter_mut().find(|n| n.id == c.as_str()) {
                        n.version = j.to.to_string();
                    }
                }
                drop(b);
                return Some((Step::CommitControllers, String::new()));
            }
            Ok(false) => {}
            Err(why) => return fail(why),
        }
        if Instant::now() > deadline {
            let missing: Vec<String> = j
                .controllers
                .iter()
                .filter_map(|c| {
                    let (hb, live) = state.cluster.node(c).unwrap_or((None, NodeState::Down));
                    let v = hb.map(|h| h.version.to_string()).unwrap_or_else(|| "?".into());
                    (live != NodeState::Up || v != j.to.to_string()).then(|| format!("{c} ({live:?}, {v})"))
                })
                .collect();
            return fail(format!(
                "the controllers did not re-form on {} within {} s: {}",
                j.to,
                state.settings.reform_timeout.as_secs(),
                missing.join(", ")
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn commit_controllers(state: &Arc<LeaderState>, j: &Journal) -> Next {
    set_phase(state, "controllers", 50);
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in &j.controllers {
        state.status.lock().expect("status lock").begin(c.as_str(), "commit");
        let r = run_command(state, c, &cmd(state, j, c, CommandKind::Commit(j.to)), deadline).await;
        state.status.lock().expect("status lock").end(c.as_str(), r.is_ok(), r.as_ref().unwrap_or_else(|e| e));
        if let Err(e) = r {
            return fail(format!("commit failed on {c}: {e}"));
        }
    }
    state.save_status();
    info!(version = %j.to, "controllers committed");
    Some((Step::ServiceEngines, String::new()))
}

async fn rollback_controllers(state: &Arc<LeaderState>, j: &Journal) -> Next {
    set_phase(state, "rollback", 0);
    let me = &state.settings.node_id;
    let deadline = Instant::now() + Duration::from_secs(30);
    let followers: Vec<NodeId> = j.controllers.iter().filter(|c| *c != me).cloned().collect();
    let tasks: Vec<_> = followers
        .iter()
        .filter(|c| state.cluster.node(c).is_some_and(|(_, s)| s == NodeState::Up))
        .map(|c| {
            let state = state.clone();
            let command = cmd(&state, j, c, CommandKind::Rollback(j.from));
            let c = c.clone();
            state.clone().spawn(async move {
                state.status.lock().expect("status lock").begin(c.as_str(), "rollback");
                let r = run_command(&state, &c, &command, deadline).await;
                state.status.lock().expect("status lock").end(c.as_str(), r.is_ok(), r.as_ref().unwrap_or_else(|e| e));
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let deadline_unix = now() + state.settings.reform_timeout.as_secs_f64();
    update(state, |j| {
        j.step = Step::AwaitRollback;
        j.deadline = Some(deadline_unix);
    });
    state.save_status();
    if state.ctx_version() != j.from {
        state.status.lock().expect("status lock").begin(me.as_str(), "rollback");
        state.save_status();
        let command = cmd(state, j, me, CommandKind::Rollback(j.from));
        match run_command(state, me, &command, instant_of(deadline_unix)).await {
            Ok(m) if !m.starts_with("already running") => {
                info!(%m, "the leader rolls back and reboots");
                std::future::pending::<()>().await;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "the leader could not roll itself back"),
        }
    }
    Some((Step::AwaitRollback, String::new()))
}

async fn await_rollback(state: &Arc<LeaderState>, j: &Journal) -> Next {
    set_phase(state, "rollback", 50);
    let deadline = instant_of(j.deadline.unwrap_or_else(|| now() + state.settings.reform_timeout.as_secs_f64()));
    loop {
        let up_on_old = j.controllers.iter().all(|c| match state.cluster.node(c) {
            Some((Some(hb), NodeState::Up)) => hb.version == j.from,
            _ => false,
        });
        if up_on_old || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let mut left = vec![];
    for c in &j.controllers {
        match state.cluster.node(c) {
            Some((Some(hb), NodeState::Up)) if hb.version == j.from => {}
            Some((hb, live)) => left.push(format!(
                "{c} is {} on {}{}",
                if live == NodeState::Up { "up" } else { "down" },
                hb.as_ref().map(|h| h.version.to_string()).unwrap_or_else(|| "an unknown version".into()),
                if live == NodeState::Up { "" } else { "; it returns to the old version when it comes back (the leader rolls it back, or it reverts itself)" }
            )),
            None => left.push(format!("{c} is unknown")),
        }
    }
    // The configuration as it was when the upgrade began.
    state.restore_config(&j.config_snapshot);
    let mut reason = j.reason.clone();
    if !left.is_empty() {
        reason = format!("{reason}. Not back on {} yet: {}", j.from, left.join("; "));
    }
    finish(state, OpState::Aborted, reason, true);
    Some((Step::Done, String::new()))
}

fn finish(state: &LeaderState, outcome: OpState, reason: String, rolled_back: bool) {
    // No SE stays out of service once the operation has ended: the placer
    // gives every SE its placements back within a second.
    let undrained: Vec<String> =
        std::mem::take(&mut *state.drained.lock().expect("drained lock")).into_iter().collect();
    if !undrained.is_empty() {
        info!(ses = ?undrained, "the operation ended: drained SEs are back in service");
    }
    {
        let mut b = state.status.lock().expect("status lock");
        // A suspended upgrade stays in the phase it stopped in: it can go on from there.
        if rolled_back {
            b.current.phase = "rolled_back".into();
        } else if outcome != OpState::Suspended {
            b.current.phase = "done".into();
        }
        b.finish(outcome, reason.clone());
    }
    state.save_status();
    update(state, |j| {
        j.outcome = Some(outcome);
        j.drained.clear();
        if j.reason.is_empty() {
            j.reason = reason;
        }
    });
    {
        let mut b = state.status.lock().expect("status lock");
        b.current.drained.clear();
    }
    state.save_status();
    info!(?outcome, "upgrade finished; the configuration is writable again");
}

/// After an aborted upgrade, nodes that come back on the new, uncommitted
/// version (they were down during the rollback) are rolled back too.
pub fn spawn_reconciler(state: Arc<LeaderState>) {
    state.clone().spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let Some(j) = state.journal.lock().expect("journal lock").clone() else { continue };
            if j.outcome != Some(OpState::Aborted) {
                continue;
            }
            for n in state.cluster.snapshot() {
                let Some((Some(hb), NodeState::Up)) = state.cluster.node(&n.id) else { continue };
                if hb.pending && hb.version == j.to && hb.previous_version == Some(j.from) {
                    let c = Command {
                        id: format!("reconcile-{}-{}-{}", j.id, n.id, hb.boot_id),
                        generation: state.generation,
                        kind: CommandKind::Rollback(j.from),
                    };
                    info!(node = %n.id, "rolling back a node that returned on the aborted version");
                    let _ = state.cluster.send(&n.id, LeaderMessage::Command(c));
                }
            }
        }
    });
}
