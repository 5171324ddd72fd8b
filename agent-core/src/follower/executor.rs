//! Runs the leader's commands exactly once each. A command whose id was seen
//! before returns its recorded outcome (running or done) instead of running
//! again; a command from a generation older than the newest seen is refused,
//! so a stale leader cannot steer the node. The newest generation is kept on
//! disk so the fence survives a reboot.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use common::{
    DeploymentKind, Role, Version, fsutil,
    session::{Command, CommandKind, CommandResult, CommandState, ImageRef},
    slots::Slots,
};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::stage::{ImageSource, Stager};
use crate::reboot::Reboot;

/// How long a node waits at most, before a reboot, for its session to send
/// the heartbeat that reports the outcome (the outcome is kept on disk
/// too: a report lost in the reboot is made by the next boot).
const REPORT_BEFORE_REBOOT: std::time::Duration = std::time::Duration::from_millis(300);
/// Once the session took that heartbeat: time for it to leave the socket.
const REPORT_FLUSH: std::time::Duration = std::time::Duration::from_millis(20);

/// What a command did.
struct Outcome {
    message: String,
    reboot: bool,
}

fn done(message: String) -> Outcome {
    Outcome { message, reboot: false }
}

/// Outcomes kept for heartbeats and repeated ids.
const KEEP_RESULTS: usize = 64;

/// Where the commands that rebooted the node are kept, in its data dir.
const KEPT_FILE: &str = "commands.json";
/// How many of them are kept.
const KEEP_REBOOTS: usize = 16;

/// Where an install in progress is noted, in the node's data dir.
const APPLYING_FILE: &str = "applying.json";
/// Installs of one apply begun (each in an agent that then stopped before
/// it ended) after which the apply is refused rather than begun again: an
/// image that crashes the agent while it installs must not do so at every
/// boot, for as long as the leader re-sends the command.
const MAX_APPLY_STARTS: u32 = 2;

/// An apply in progress: its command id and how many times it was begun.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Applying {
    id: String,
    starts: u32,
}

/// A command that rebooted the node, and the boot that ran it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Kept {
    id: String,
    message: String,
    boot_id: String,
}

fn load_kept(path: &std::path::Path) -> Vec<Kept> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "ignoring unreadable kept commands");
            vec![]
        }),
        Err(_) => vec![],
    }
}

fn read_applying(path: &std::path::Path) -> Option<Applying> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let said = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("internal error: {}", said.chars().take(200).collect::<String>())
}

fn keep(path: &std::path::Path, k: Kept) -> std::io::Result<()> {
    let mut all = load_kept(path);
    all.push(k);
    let skip = all.len().saturating_sub(KEEP_REBOOTS);
    let all: Vec<Kept> = all.into_iter().skip(skip).collect();
    fsutil::atomic_write(path, &serde_json::to_vec(&all).map_err(std::io::Error::other)?)
}

#[derive(Debug, Default)]
struct Log {
    order: VecDeque<String>,
    results: HashMap<String, CommandResult>,
    /// Results recorded so far: a heartbeat built after reading `n` holds them.
    recorded: u64,
}

impl Log {
    fn record(&mut self, r: CommandResult) {
        self.recorded += 1;
        if !self.results.contains_key(&r.id) {
            self.order.push_back(r.id.clone());
            while self.order.len() > KEEP_RESULTS {
                if let Some(old) = self.order.pop_front() {
                    self.results.remove(&old);
                }
            }
        }
        self.results.insert(r.id.clone(), r);
    }
}

/// The command executor of a node.
#[derive(Clone)]
pub struct Executor {
    log: Arc<Mutex<Log>>,
    /// This boot of the agent.
    boot_id: String,
    /// Commands that rebooted the node, kept across its reboots.
    kept_path: PathBuf,
    /// The install in progress, if any ([`APPLYING_FILE`]).
    applying_path: PathBuf,
    /// Programs exec health gates may run here.
    allowed_gate_programs: Arc<Vec<PathBuf>>,
    /// Numbers placements in the order they arrive.
    place_tickets: Arc<std::sync::atomic::AtomicU64>,
    generation: Arc<Mutex<u64>>,
    fence_path: PathBuf,
    stager: Stager,
    source: Arc<dyn ImageSource>,
    shutdown: CancellationToken,
    settled: Arc<tokio::sync::Notify>,
    /// How many results the session has handed to the leader's stream in a heartbeat.
    reported: Arc<tokio::sync::watch::Sender<u64>>,
    slots: Slots,
    reboot: Arc<dyn Reboot>,
    dataplane: Option<crate::dataplane::DataPlane>,
    /// How this node is deployed, and (for docker) its role, which names its image.
    deployment: (DeploymentKind, Role),
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("fence_path", &self.fence_path).finish_non_exhaustive()
    }
}

impl Executor {
    /// An executor for the node whose data dir holds `fence.json`.
    pub fn new(
        data_dir: &std::path::Path,
        stager: Stager,
        source: Arc<dyn ImageSource>,
        reboot: Arc<dyn Reboot>,
        shutdown: CancellationToken,
    ) -> Self {
        let fence_path = data_dir.join("fence");
        let kept_path = data_dir.join(KEPT_FILE);
        let generation = std::fs::read_to_string(&fence_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let mut log = Log::default();
        for k in load_kept(&kept_path) {
            log.record(CommandResult {
                id: k.id,
                state: CommandState::Succeeded,
                message: k.message,
                boot_id: k.boot_id,
            });
        }
        Self {
            log: Arc::new(Mutex::new(log)),
            boot_id: String::new(),
            kept_path,
            applying_path: data_dir.join(APPLYING_FILE),
            allowed_gate_programs: Arc::default(),
            place_tickets: Arc::default(),
            generation: Arc::new(Mutex::new(generation)),
            fence_path,
            stager,
            source,
            shutdown,
            settled: Arc::default(),
            reported: Arc::new(tokio::sync::watch::Sender::new(0)),
            slots: Slots::new(data_dir),
            reboot,
            dataplane: None,
            deployment: (DeploymentKind::Vm, Role::ServiceEngine),
        }
    }

    /// Names this boot of the agent (kept with the commands that reboot it).
    pub fn with_boot_id(mut self, boot_id: &str) -> Self {
        self.boot_id = boot_id.to_owned();
        self
    }

    /// How the node is deployed: a docker node loads its image on apply.
    pub fn with_deployment(mut self, kind: DeploymentKind, role: Role) -> Self {
        self.deployment = (kind, role);
        self
    }

    /// The programs exec health gates may run on this node.
    pub fn with_allowed_gate_programs(mut self, programs: Vec<PathBuf>) -> Self {
        self.allowed_gate_programs = Arc::new(programs);
        self
    }

    /// Gives this (SE) executor the data plane `place` commands drive.
    pub fn with_dataplane(mut self, dp: crate::dataplane::DataPlane) -> Self {
        self.dataplane = Some(dp);
        self
    }

    /// Notified whenever a command settles, so the session can report it
    /// at once instead of at the next heartbeat tick.
    pub fn settled(&self) -> Arc<tokio::sync::Notify> {
        self.settled.clone()
    }

    /// How many results were recorded so far: read it before building a
    /// heartbeat, and give it to [`Executor::reported`] once that
    /// heartbeat is sent.
    pub fn recorded(&self) -> u64 {
        self.log.lock().expect("log lock").recorded
    }

    /// A heartbeat holding the first `recorded` results was handed to the
    /// leader's stream.
    pub fn reported(&self, recorded: u64) {
        self.reported.send_if_modified(|r| {
            let newer = recorded > *r;
            *r = (*r).max(recorded);
            newer
        });
    }

    /// Until the session sent a heartbeat that holds the first `recorded`
    /// results (at most [`REPORT_BEFORE_REBOOT`]), then [`REPORT_FLUSH`].
    async fn until_reported(&self, recorded: u64) {
        let mut rx = self.reported.subscribe();
        if tokio::time::timeout(REPORT_BEFORE_REBOOT, rx.wait_for(|r| *r >= recorded)).await.is_ok() {
            tokio::time::sleep(REPORT_FLUSH).await;
        }
    }

    /// Accepts a command: returns its outcome so far.
    pub fn submit(&self, cmd: Command) -> CommandResult {
        if let Some(r) = self.log.lock().expect("log lock").results.get(&cmd.id) {
            return r.clone();
        }
        if let Err(message) = self.fence(cmd.generation) {
            let r = CommandResult { id: cmd.id, state: CommandState::Failed, message, boot_id: String::new() };
            self.log.lock().expect("log lock").record(r.clone());
            return r;
        }
        let running = CommandResult {
            id: cmd.id.clone(),
            state: CommandState::Running,
            message: String::new(),
            boot_id: String::new(),
        };
        self.log.lock().expect("log lock").record(running.clone());
        // Every line of this step, here and in the task that runs it, carries
        // the operation, the node (the root span) and the step.
        let span = tracing::info_span!(
            "step",
            operation_id = cmd.operation_id.as_deref().unwrap_or_default(),
            step = cmd.kind.name(),
            command = %cmd.id,
        );
        crate::otlp::join_operation(&span, cmd.operation_id.as_deref().unwrap_or_default());
        let _in_step = span.enter();
        info!(generation = cmd.generation, "command accepted");
        let this = self.clone();
        let ticket = self.place_tickets.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        tokio::spawn(
            async move {
                // A panic while running a command is this command's failure,
                // reported like any other: never the agent's end.
                let run = std::panic::AssertUnwindSafe(this.run(&cmd.id, &cmd.kind, ticket)).catch_unwind();
                let outcome = tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    r = run => r.unwrap_or_else(|panic| Err(format!(
                        "the agent failed while running this command ({}); nothing else changed on the node",
                        panic_message(panic.as_ref())
                    ))),
                };
                let (state, message, reboot) = match outcome {
                    Ok(o) => (CommandState::Succeeded, o.message, o.reboot),
                    Err(m) => {
                        warn!(id = %cmd.id, command = cmd.kind.name(), error = %m, "command failed");
                        (CommandState::Failed, m, false)
                    }
                };
                if reboot {
                    // Kept before the reboot: the next boot answers this id
                    // instead of running it again.
                    let kept = Kept { id: cmd.id.clone(), message: message.clone(), boot_id: this.boot_id.clone() };
                    let path = this.kept_path.clone();
                    let saved = tokio::task::spawn_blocking(move || keep(&path, kept)).await;
                    if let Err(e) = saved.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                        warn!(id = %cmd.id, error = %e, "cannot keep the command across the reboot");
                    }
                }
                let recorded = {
                    let mut log = this.log.lock().expect("log lock");
                    log.record(CommandResult { id: cmd.id.clone(), state, message, boot_id: String::new() });
                    log.recorded
                };
                this.settled.notify_one();
                if reboot {
                    this.until_reported(recorded).await;
                    info!(id = %cmd.id, "rebooting");
                    let Err(e) = this.reboot.reboot();
                    this.log.lock().expect("log lock").record(CommandResult {
                        id: cmd.id,
                        state: CommandState::Failed,
                        message: e,
                        boot_id: String::new(),
                    });
                    this.settled.notify_one();
                }
            }
            .instrument(span.clone()),
        );
        running
    }

    fn fence(&self, generation: u64) -> Result<(), String> {
        let mut current = self.generation.lock().expect("generation lock");
        if generation < *current {
            return Err(format!(
                "refused: command from leader generation {generation}, but generation {current} has already commanded this node"
            ));
        }
        if generation > *current {
            fsutil::atomic_write(&self.fence_path, generation.to_string().as_bytes())
                .map_err(|e| format!("cannot record generation {generation}: {e}"))?;
            *current = generation;
        }
        Ok(())
    }

    /// Runs a command; `ticket` orders placements by arrival.
    async fn run(&self, id: &str, kind: &CommandKind, ticket: u64) -> Result<Outcome, String> {
        match kind {
            CommandKind::Stage(image) => {
                let s = self.stager.stage(image, self.source.as_ref()).await.map_err(|e| e.to_string())?;
                self.prune_staging(s.version);
                Ok(done(format!("staged {} ({} bytes)", s.version, s.size)))
            }
            CommandKind::Apply(image) => self.apply(id, image).await,
            CommandKind::Commit(v) => self.commit(*v),
            CommandKind::Rollback(v) => self.rollback(*v),
            CommandKind::Gate(checks) => match &self.dataplane {
                Some(dp) => crate::gate::run(checks, dp.ip(), &self.allowed_gate_programs).await.map(done),
                None => Err("this node is not a Service Engine: it has no health gates".into()),
            },
            CommandKind::Place(services) => match &self.dataplane {
                Some(dp) => dp.apply(ticket, services).await.map(done),
                None => Err("this node is not a Service Engine: it serves no virtual services".into()),
            },
        }
    }

    /// Keeps in staging only the images of `staged`, of the running version
    /// and of the previous slot's.
    fn prune_staging(&self, staged: Version) {
        let mut keep = vec![staged];
        if let Ok((record, active)) = self.slots.active() {
            keep.push(active.version);
            if let Some(m) = record.previous.and_then(|p| self.slots.slot_manifest(p).ok()) {
                keep.push(m.version);
            }
        } else {
            // Not knowing what runs, delete nothing.
            return;
        }
        self.stager.prune(&keep);
    }

    /// Installs the staged image into the inactive slot and activates it on
    /// trial; the reboot follows once the outcome is reported. The install
    /// is noted on disk while it runs (`applying.json`): an apply whose
    /// install was begun [`MAX_APPLY_STARTS`] times by agents that stopped
    /// before it ended is refused, not begun again.
    async fn apply(&self, id: &str, image: &ImageRef) -> Result<Outcome, String> {
        let (_, active) = self.slots.active().map_err(|e| e.to_string())?;
        if active.version == image.version {
            return Ok(done(format!("already running {}", image.version)));
        }
        let marker = self.applying_path.clone();
        let begun = read_applying(&marker).filter(|a| a.id == id).map_or(0, |a| a.starts);
        if begun >= MAX_APPLY_STARTS {
            let _ = std::fs::remove_file(&marker);
            return Err(format!(
                "installing {} was begun {begun} times and the agent stopped before it ended each time (a crash or a power cut); it is not tried again, and this node stays on {}",
                image.version, active.version
            ));
        }
        let path = self
            .stager
            .path_of(&image.sha256)
            .ok_or_else(|| format!("image {} is not staged on this node; prestage it first", image.sha256.short()))?;
        let note = serde_json::to_vec(&Applying { id: id.to_owned(), starts: begun + 1 }).map_err(|e| e.to_string())?;
        fsutil::atomic_write(&marker, &note)
            .map_err(|e| format!("cannot note the install in {}: {e}", marker.display()))?;
        let installed = self.install(path).await;
        let _ = std::fs::remove_file(&marker);
        let (slot, m) = installed?;
        self.slots.activate_on_trial(slot).map_err(|e| e.to_string())?;
        info!(version = %m.version, %slot, "installed and activated on trial");
        Ok(Outcome { message: format!("installed {} in slot {slot}; rebooting into it", m.version), reboot: true })
    }

    /// Unpacks the staged image at `path` into the inactive slot (and on a docker
    /// node loads its image), under the node's own rules: kind, trusted
    /// keys, a version newer than the running one.
    async fn install(&self, path: PathBuf) -> Result<(common::slots::Slot, common::slots::SlotManifest), String> {
        let slots = self.slots.clone();
        let (kind, role) = self.deployment;
        let trusted = self.stager.trusted_keys().to_vec();
        let (slot, m) = tokio::task::spawn_blocking(move || slots.install_inactive(&path, kind, &trusted))
            .await
            .map_err(|e| format!("the install failed: {e}"))?
            .map_err(|e| e.to_string())?;
        if kind == DeploymentKind::Docker {
            // Checked before the slot is activated: an archive that names
            // another image than this version's leaves the boot record as
            // it was. The boot loader on the host loads it (this agent has
            // no Docker socket).
            let (_, tag) = crate::docker_node::check_slot_archive(&self.slots, slot, role)?;
            info!(%tag, "image checked; the boot loader loads it");
        }
        Ok((slot, m))
    }

    fn commit(&self, version: Version) -> Result<Outcome, String> {
        let (_, active) = self.slots.active().map_err(|e| e.to_string())?;
        if active.version != version {
            return Err(format!("this node runs {}, not {version}; nothing committed", active.version));
        }
        self.slots.commit().map_err(|e| e.to_string())?;
        Ok(done(format!("committed {version}")))
    }

    fn rollback(&self, to: Version) -> Result<Outcome, String> {
        let (record, active) = self.slots.active().map_err(|e| e.to_string())?;
        if active.version == to {
            if record.pending {
                self.slots.commit().map_err(|e| e.to_string())?;
            }
            return Ok(done(format!("already running {to}")));
        }
        let prev = record.previous.ok_or_else(|| format!("no previous slot holds {to}: nothing to roll back to"))?;
        let pm = self.slots.slot_manifest(prev).map_err(|e| e.to_string())?;
        if pm.version != to {
            return Err(format!("the previous slot holds {}, not {to}", pm.version));
        }
        self.slots.switch_to_previous().map_err(|e| e.to_string())?;
        Ok(Outcome { message: format!("switched back to {to}; rebooting"), reboot: true })
    }

    /// Rolls an uncommitted boot back to the previous slot and reboots (the
    /// leader was not reachable in time). Returns only on failure.
    pub fn self_revert(&self) -> Result<std::convert::Infallible, String> {
        let record = self.slots.boot_record().map_err(|e| e.to_string())?;
        if !record.pending {
            return Err("the running slot was committed meanwhile".into());
        }
        self.slots.switch_to_previous().map_err(|e| e.to_string())?.ok_or("no previous slot")?;
        self.reboot.reboot()
    }

    /// Outcomes of recent commands, oldest first.
    pub fn results(&self) -> Vec<CommandResult> {
        let log = self.log.lock().expect("log lock");
        log.order.iter().filter_map(|id| log.results.get(id).cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use common::{DeploymentKind, Sha256Digest, session::ImageRef};
    use futures_util::FutureExt;

    use super::*;
    use crate::follower::stage::{ChunkStream, FetchError, ImageSource};

    struct Counting(AtomicUsize);
    impl ImageSource for Counting {
        fn fetch(
            &self,
            _: Sha256Digest,
            _: u64,
            _: common::stripe::Stripe,
        ) -> futures_util::future::BoxFuture<'_, Result<ChunkStream, FetchError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            async { Err(FetchError::Failed("unreachable leader".to_owned())) }.boxed()
        }
    }

    fn stage(id: &str, generation: u64, kind: DeploymentKind) -> Command {
        Command {
            id: id.into(),
            generation,
            kind: CommandKind::Stage(ImageRef {
                sha256: Sha256Digest::of(id.as_bytes()),
                size: 10,
                version: "2.0.0".parse().unwrap(),
                kind,
                min_compatible: "1.0.0".parse().unwrap(),
            }),
            operation_id: None,
        }
    }

    fn executor(dir: &std::path::Path) -> (Executor, Arc<Counting>) {
        let stager = Stager::open(dir, DeploymentKind::Vm).unwrap();
        let source = Arc::new(Counting(AtomicUsize::new(0)));
        (
            Executor::new(dir, stager, source.clone(), Arc::new(crate::reboot::NoReboot), CancellationToken::new()),
            source,
        )
    }

    async fn settled(e: &Executor, id: &str) -> CommandResult {
        for _ in 0..200 {
            if let Some(r) = e.results().into_iter().find(|r| r.id == id && r.state != CommandState::Running) {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{id} never settled");
    }

    #[tokio::test]
    async fn a_repeated_id_is_not_run_twice() {
        let d = tempfile::tempdir().unwrap();
        let (e, _) = executor(d.path());
        let first = e.submit(stage("a", 1, DeploymentKind::Docker));
        assert_eq!(first.state, CommandState::Running);
        let r = settled(&e, "a").await;
        assert_eq!(r.state, CommandState::Failed);
        assert!(r.message.contains("docker"), "{}", r.message);
        // The same id again reports the recorded outcome instead of running.
        assert_eq!(e.submit(stage("a", 1, DeploymentKind::Docker)), r);
        assert_eq!(e.results().len(), 1);
    }

    #[tokio::test]
    async fn commands_from_an_older_generation_are_refused_even_after_restart() {
        let d = tempfile::tempdir().unwrap();
        let (e, source) = executor(d.path());
        e.submit(stage("new", 5, DeploymentKind::Docker));
        let stale = e.submit(stage("old", 4, DeploymentKind::Vm));
        assert_eq!(stale.state, CommandState::Failed);
        assert!(stale.message.contains("generation 4"), "{}", stale.message);
        // The fence is on disk: a rebooted node still refuses generation 4.
        let (again, _) = executor(d.path());
        assert_eq!(again.submit(stage("old2", 4, DeploymentKind::Vm)).state, CommandState::Failed);
        assert_eq!(source.0.load(Ordering::SeqCst), 0, "a refused command fetched nothing");
    }

    #[tokio::test]
    async fn a_command_that_rebooted_the_node_is_answered_not_run_again_after_the_reboot() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(KEPT_FILE);
        keep(&path, Kept { id: "apply-x".into(), message: "installed".into(), boot_id: "before".into() }).unwrap();
        for k in 0..KEEP_REBOOTS + 2 {
            keep(&path, Kept { id: format!("old-{k}"), message: String::new(), boot_id: "b".into() }).unwrap();
        }
        keep(&path, Kept { id: "apply-y".into(), message: "installed".into(), boot_id: "before".into() }).unwrap();
        // The next boot answers the repeated id with the boot that ran it.
        let (e, source) = executor(d.path());
        let r = e.submit(stage("apply-y", 1, DeploymentKind::Vm));
        assert_eq!((r.state, r.boot_id.as_str(), r.message.as_str()), (CommandState::Succeeded, "before", "installed"));
        assert_eq!(source.0.load(Ordering::SeqCst), 0, "nothing ran");
        // Only the last few are kept.
        assert_eq!(load_kept(&path).len(), KEEP_REBOOTS);
        assert!(!load_kept(&path).iter().any(|k| k.id == "apply-x"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reboot_waits_for_the_heartbeat_that_reports_it_and_no_longer_than_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let (e, _) = executor(d.path());
        let started = tokio::time::Instant::now();
        let wait = tokio::spawn({
            let e = e.clone();
            async move { e.until_reported(2).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        e.reported(1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!wait.is_finished(), "an older heartbeat does not report the outcome");
        e.reported(2);
        wait.await.unwrap();
        assert_eq!(started.elapsed(), std::time::Duration::from_millis(100) + REPORT_FLUSH);

        // No session to send it: the reboot goes ahead after the cap.
        let started = tokio::time::Instant::now();
        e.until_reported(3).await;
        assert_eq!(started.elapsed(), REPORT_BEFORE_REBOOT);
    }

    struct Panicking;
    impl ImageSource for Panicking {
        fn fetch(
            &self,
            _: Sha256Digest,
            _: u64,
            _: common::stripe::Stripe,
        ) -> futures_util::future::BoxFuture<'_, Result<ChunkStream, FetchError>> {
            panic!("a bug in the image source")
        }
    }

    /// Issue 25: a panic while running a command took the whole agent down
    /// (at every boot, as the leader sent the command again). It is that
    /// command's failure now, and the executor goes on.
    #[tokio::test]
    async fn a_panic_in_a_command_is_reported_as_its_failure() {
        let d = tempfile::tempdir().unwrap();
        let stager = Stager::open(d.path(), DeploymentKind::Vm).unwrap();
        let e = Executor::new(
            d.path(),
            stager,
            Arc::new(Panicking),
            Arc::new(crate::reboot::NoReboot),
            CancellationToken::new(),
        );
        e.submit(stage("boom", 1, DeploymentKind::Vm));
        let r = settled(&e, "boom").await;
        assert_eq!(r.state, CommandState::Failed);
        assert!(r.message.contains("internal error: a bug in the image source"), "{}", r.message);
        // The executor still takes commands.
        e.submit(stage("next", 1, DeploymentKind::Docker));
        assert_eq!(settled(&e, "next").await.state, CommandState::Failed);
    }

    /// Issue 25, 1: an image whose install crashed the agent was installed
    /// again at every boot, as the leader re-sent the apply. An apply whose
    /// install two agents began and never ended is refused.
    #[tokio::test]
    async fn an_apply_begun_twice_by_agents_that_stopped_is_not_begun_again() {
        let d = tempfile::tempdir().unwrap();
        let bins = d.path().join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        for b in ["controller-agent", "se-agent"] {
            std::fs::write(bins.join(b), b"x").unwrap();
        }
        Slots::new(d.path()).install_initial("1.0.0".parse().unwrap(), DeploymentKind::Vm, &bins).unwrap();
        let apply = |id: &str| Command {
            id: id.into(),
            generation: 1,
            kind: CommandKind::Apply(ImageRef {
                sha256: Sha256Digest::of(b"image"),
                size: 10,
                version: "2.0.0".parse().unwrap(),
                kind: DeploymentKind::Vm,
                min_compatible: "1.0.0".parse().unwrap(),
            }),
            operation_id: Some("op-1".into()),
        };
        let marker = d.path().join(APPLYING_FILE);
        // Begun once before: tried again (and here fails for want of the image).
        std::fs::write(&marker, br#"{"id":"apply-1","starts":1}"#).unwrap();
        let (e, _) = executor(d.path());
        e.submit(apply("apply-1"));
        let r = settled(&e, "apply-1").await;
        assert!(r.message.contains("not staged on this node"), "tried again: {}", r.message);
        // Begun twice: refused, the node stays on its version.
        std::fs::write(&marker, br#"{"id":"apply-2","starts":2}"#).unwrap();
        let (e, _) = executor(d.path());
        e.submit(apply("apply-2"));
        let r = settled(&e, "apply-2").await;
        assert_eq!(r.state, CommandState::Failed);
        assert!(r.message.contains("was begun 2 times and the agent stopped before it ended"), "{}", r.message);
        assert!(r.message.contains("this node stays on 1.0.0"), "{}", r.message);
        assert!(!marker.exists());
    }
}
