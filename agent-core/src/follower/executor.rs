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
    fsutil,
    session::{Command, CommandKind, CommandResult, CommandState},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::stage::{ImageSource, Stager};

/// Outcomes kept for heartbeats and repeated ids.
const KEEP_RESULTS: usize = 64;

#[derive(Debug, Default)]
struct Log {
    order: VecDeque<String>,
    results: HashMap<String, CommandResult>,
}

impl Log {
    fn record(&mut self, r: CommandResult) {
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
    generation: Arc<Mutex<u64>>,
    fence_path: PathBuf,
    stager: Stager,
    source: Arc<dyn ImageSource>,
    shutdown: CancellationToken,
    settled: Arc<tokio::sync::Notify>,
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
        shutdown: CancellationToken,
    ) -> Self {
        let fence_path = data_dir.join("fence");
        let generation = std::fs::read_to_string(&fence_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Self {
            log: Arc::default(),
            generation: Arc::new(Mutex::new(generation)),
            fence_path,
            stager,
            source,
            shutdown,
            settled: Arc::default(),
        }
    }

    /// Notified whenever a command settles, so the session can report it
    /// at once instead of at the next heartbeat tick.
    pub fn settled(&self) -> Arc<tokio::sync::Notify> {
        self.settled.clone()
    }

    /// Accepts a command: returns its outcome so far.
    pub fn submit(&self, cmd: Command) -> CommandResult {
        if let Some(r) = self.log.lock().expect("log lock").results.get(&cmd.id) {
            return r.clone();
        }
        if let Err(message) = self.fence(cmd.generation) {
            let r = CommandResult { id: cmd.id, state: CommandState::Failed, message };
            self.log.lock().expect("log lock").record(r.clone());
            return r;
        }
        let running = CommandResult { id: cmd.id.clone(), state: CommandState::Running, message: String::new() };
        self.log.lock().expect("log lock").record(running.clone());
        info!(id = %cmd.id, command = cmd.kind.name(), generation = cmd.generation, "command accepted");
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                _ = this.shutdown.cancelled() => return,
                r = this.run(&cmd.kind) => r,
            };
            let (state, message) = match outcome {
                Ok(m) => (CommandState::Succeeded, m),
                Err(m) => {
                    warn!(id = %cmd.id, command = cmd.kind.name(), error = %m, "command failed");
                    (CommandState::Failed, m)
                }
            };
            this.log.lock().expect("log lock").record(CommandResult { id: cmd.id, state, message });
            this.settled.notify_one();
        });
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

    async fn run(&self, kind: &CommandKind) -> Result<String, String> {
        match kind {
            CommandKind::Stage(image) => self
                .stager
                .stage(image, self.source.as_ref())
                .await
                .map(|s| format!("staged {} ({} bytes)", s.version, s.size))
                .map_err(|e| e.to_string()),
        }
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
    use crate::follower::stage::{ChunkStream, ImageSource};

    struct Counting(AtomicUsize);
    impl ImageSource for Counting {
        fn fetch(&self, _: Sha256Digest, _: u64) -> futures_util::future::BoxFuture<'_, Result<ChunkStream, String>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            async { Err("unreachable leader".to_owned()) }.boxed()
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
        }
    }

    fn executor(dir: &std::path::Path) -> (Executor, Arc<Counting>) {
        let stager = Stager::open(dir, DeploymentKind::Vm).unwrap();
        let source = Arc::new(Counting(AtomicUsize::new(0)));
        (Executor::new(dir, stager, source.clone(), CancellationToken::new()), source)
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
}
