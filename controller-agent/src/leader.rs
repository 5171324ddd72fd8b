//! The leader controller: the cluster view fed by sessions, the image store
//! and server, and the operations it runs on the cluster (prestage).

pub mod cluster;
pub mod distribute;
pub mod driver;
pub mod grpc;
pub mod image_server;
pub mod images;
pub use coordinator::placement;
pub mod status;
pub mod store;
pub mod traffic;
pub mod upgrade;

pub use coordinator::journal::Journal;

use std::sync::{Arc, Mutex};

use common::{Version, config::NodeSettings, fsutil, slots::Slots};
use tracing::error;

use self::{
    cluster::ClusterView,
    images::ImageStore,
    status::HistoryEntry,
    store::{Config, Store},
};

/// A placement pushed to an SE: the services, when, and the command's id.
pub type Placed = (Vec<String>, std::time::Instant, String);

/// Everything the leader's services share.
#[derive(Debug)]
pub struct LeaderState {
    /// This node's settings.
    pub settings: Arc<NodeSettings>,
    /// Every node as its heartbeats describe it.
    pub cluster: ClusterView,
    /// Uploaded and verified images.
    pub images: ImageStore,
    /// Operations that ended, oldest first (`store/history.json`).
    pub history: Mutex<Vec<HistoryEntry>>,
    /// Set when the journal could not be written: the operation stopped
    /// in this process (a restarted leader resumes from the journal on disk).
    pub halted: Mutex<Option<String>>,
    /// Wakes the driver (a request changed the journal).
    pub wake: tokio::sync::Notify,
    /// This leader's generation: one more than the last leader start's.
    pub generation: u64,
    /// Bytes of image data served by `FetchImage` since start.
    pub bytes_served: Arc<std::sync::atomic::AtomicU64>,
    /// The store's files.
    pub store: Store,
    /// The configuration (SE groups, virtual services).
    pub config: Mutex<Config>,
    /// The journal of the current or last operation, as written.
    journal: Mutex<Option<Journal>>,
    /// The version this leader runs.
    pub version: Version,
    /// Held while a request decides to start, resume or roll back an
    /// operation, or to change the configuration, and while the driver
    /// decides a step: the check ("nothing is running", "not read-only") and
    /// the act (the journal or configuration written) happen under it, so
    /// two requests at once cannot both pass the check. An async lock: the
    /// writes under it run on the blocking pool.
    pub operation_gate: tokio::sync::Mutex<()>,
    /// Cancelled when the node stops: every leader task ends with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The tasks started through [`LeaderState::spawn`] (finished ones are pruned).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Who may fetch which image, and the open image streams.
    pub fetch_gate: image_server::FetchGate,
    /// What each SE was last told to serve, when, and by which command (the
    /// placer's pushes; in flight until the SE reports that command done).
    pub placing: Mutex<std::collections::BTreeMap<common::NodeId, Placed>>,
    /// Numbers `place` commands.
    pub place_seq: std::sync::atomic::AtomicU64,
}

/// The generation the last leader on this node took: 0 only when the file
/// does not exist (a new cluster). A file that cannot be read or parsed is an
/// error: starting again from 0 would have every follower's fence refuse
/// this leader's commands, so the leader does not start.
pub fn read_generation(path: &std::path::Path) -> std::io::Result<u64> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot read the leader generation {}: {e}; the leader does not start without it",
                    path.display()
                ),
            ));
        }
    };
    text.trim().parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the leader generation {} holds {:?} ({e}); write a number above every node's fence \
                 (`fence` in each node's data dir) into it, or restore it, then start again",
                path.display(),
                text.trim()
            ),
        )
    })
}

/// The journal on disk. One written by an older molt (another format) is
/// set aside as `journal-format-N.json` with a warning rather than stopping
/// the leader: this version cannot resume it.
fn load_journal(store: &Store) -> std::io::Result<Option<Journal>> {
    match store.load::<Journal>("journal") {
        Ok(j) => Ok(j),
        Err(e) => {
            let format = store.load::<serde_json::Value>("journal")?.and_then(|v| v["format"].as_u64());
            match format {
                Some(f) if f != u64::from(coordinator::journal::FORMAT) => {
                    let aside = format!("journal-format-{f}");
                    store.rename("journal", &aside)?;
                    tracing::warn!(
                        format = f,
                        file = %aside,
                        "the upgrade journal was written by an older molt and cannot be resumed by this one; \
                         set aside: check `molt show cluster` and finish that upgrade by hand if it was running"
                    );
                    Ok(None)
                }
                _ => Err(e),
            }
        }
    }
}

impl LeaderState {
    /// Sets up the leader on this node, taking the next generation.
    pub fn new(settings: Arc<NodeSettings>) -> std::io::Result<Arc<Self>> {
        let gen_path = settings.data_dir.join("leader-generation");
        let generation = read_generation(&gen_path)? + 1;
        fsutil::atomic_write(&gen_path, generation.to_string().as_bytes())?;
        let images = ImageStore::open(&settings.data_dir, settings.upload_stall)?;
        let store = Store::open(&settings.data_dir)?;
        let config = store.load::<Config>("config")?.unwrap_or_default();
        let journal = load_journal(&store)?;
        let history = store.load::<Vec<HistoryEntry>>("history")?.unwrap_or_default();
        let version = Slots::new(&settings.data_dir).active().map_err(std::io::Error::other)?.1.version;
        Ok(Arc::new(Self {
            cluster: ClusterView::new(&settings),
            images,
            history: Mutex::new(history),
            halted: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            generation,
            bytes_served: Default::default(),
            operation_gate: tokio::sync::Mutex::new(()),
            shutdown: tokio_util::sync::CancellationToken::new(),
            tasks: Mutex::default(),
            fetch_gate: image_server::FetchGate::new(
                settings.limits.fetch_streams_per_node,
                settings.limits.fetch_streams_total,
            ),
            store,
            config: Mutex::new(config),
            journal: Mutex::new(journal),
            version,
            placing: Default::default(),
            place_seq: Default::default(),
            settings,
        }))
    }

    /// Spawns a leader task that ends when the leader stops (it is aborted
    /// at its next await once [`LeaderState::shutdown`] is cancelled). Every
    /// task of the leader starts here.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = tokio::spawn(fut);
        let mut tasks = self.tasks.lock().expect("tasks lock");
        tasks.retain(|t| !t.is_finished());
        if self.shutdown.is_cancelled() {
            handle.abort();
        } else {
            tasks.push(handle.abort_handle());
        }
        handle
    }

    /// Stops the leader's tasks once `node` (the node's token) is cancelled.
    pub fn stop_with(self: &Arc<Self>, node: tokio_util::sync::CancellationToken) {
        let weak = Arc::downgrade(self);
        let own = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = node.cancelled() => {}
                _ = own.cancelled() => {}
            }
            if let Some(state) = weak.upgrade() {
                state.shutdown.cancel();
                for t in state.tasks.lock().expect("tasks lock").drain(..) {
                    t.abort();
                }
            }
        });
    }

    /// Whether an operation is running (the configuration is read-only).
    pub fn read_only(&self) -> bool {
        self.journal.lock().expect("journal lock").as_ref().is_some_and(Journal::is_running)
    }

    /// The journal of the current or last operation.
    pub fn journal(&self) -> Option<Journal> {
        self.journal.lock().expect("journal lock").clone()
    }

    /// The version this leader's node runs.
    pub fn ctx_version(&self) -> Version {
        self.version
    }

    /// Writes the journal (on the blocking pool), then makes it current;
    /// an operation that ends here goes into the history. The caller holds
    /// the operation gate.
    pub async fn write_journal(&self, j: Journal) -> std::io::Result<()> {
        let store = self.store.clone();
        let copy = j.clone();
        tokio::task::spawn_blocking(move || store.save("journal", &copy)).await.map_err(std::io::Error::other)??;
        let ended = {
            let mut cur = self.journal.lock().expect("journal lock");
            let was_running = cur.as_ref().is_some_and(|c| c.id == j.id && c.is_running());
            let ended = was_running && !j.is_running();
            *cur = Some(j.clone());
            ended
        };
        *self.halted.lock().expect("halted lock") = None;
        if ended {
            self.record_history(&j).await;
        }
        Ok(())
    }

    /// The journal's operation stopped because the journal could not be
    /// written: it ends suspended in memory only, the configuration is
    /// writable, and nothing goes on from this process.
    pub async fn halt(&self, why: String) {
        let halted = {
            let mut cur = self.journal.lock().expect("journal lock");
            let Some(j) = cur.as_mut().filter(|j| j.is_running()) else { return };
            j.phase = coordinator::journal::Phase::Done;
            j.outcome = Some(coordinator::journal::Outcome::Suspended);
            j.reason = why.clone();
            j.ended = Some(driver::now_ms());
            j.drained.clear();
            j.clone()
        };
        *self.halted.lock().expect("halted lock") = Some(why);
        self.record_history(&halted).await;
    }

    async fn record_history(&self, j: &Journal) {
        let entry = status::history_entry(j);
        let all = {
            let mut h = self.history.lock().expect("history lock");
            h.push(entry);
            h.clone()
        };
        let store = self.store.clone();
        let saved = tokio::task::spawn_blocking(move || store.save("history", &all)).await;
        if let Err(e) = saved.map_err(std::io::Error::other).and_then(|r| r) {
            error!(error = %e, "cannot save the history");
        }
    }

    /// The status: a view of the journal, the cluster and the history.
    pub fn status(&self) -> status::UpgradeStatus {
        let j = self.journal();
        let history = self.history.lock().expect("history lock").clone();
        status::view(j.as_ref(), history, &self.cluster.snapshot())
    }

    /// Applies a change to the configuration and saves it (on the blocking
    /// pool); nothing changes if `f` refuses or the save fails. The caller
    /// holds the operation gate.
    pub async fn change_config<T>(
        &self,
        f: impl FnOnce(&mut Config) -> Result<T, store::ConfigError>,
    ) -> Result<T, store::ConfigError> {
        let mut next = self.config.lock().expect("config lock").clone();
        let out = f(&mut next)?;
        self.save_config(next).await?;
        Ok(out)
    }

    /// Saves and installs a configuration (a change, or an aborted
    /// upgrade's snapshot put back).
    pub async fn save_config(&self, next: Config) -> std::io::Result<()> {
        let store = self.store.clone();
        let copy = next.clone();
        tokio::task::spawn_blocking(move || store.save("config", &copy)).await.map_err(std::io::Error::other)??;
        *self.config.lock().expect("config lock") = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_journal_of_an_older_format_is_set_aside_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let store = super::Store::open(d.path()).unwrap();
        std::fs::write(d.path().join("store/journal.json"), r#"{"format": 1, "step": "done"}"#).unwrap();
        assert!(super::load_journal(&store).unwrap().is_none());
        assert!(d.path().join("store/journal-format-1.json").exists());
        assert!(!d.path().join("store/journal.json").exists());
        // A corrupt journal of this format still stops the leader.
        std::fs::write(d.path().join("store/journal.json"), r#"{"format": 2, "phase": 7}"#).unwrap();
        assert!(super::load_journal(&store).is_err());
    }

    #[test]
    fn an_unreadable_generation_is_an_error_not_zero() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("leader-generation");
        assert_eq!(super::read_generation(&p).unwrap(), 0, "a new cluster starts at 0");
        std::fs::write(&p, "41\n").unwrap();
        assert_eq!(super::read_generation(&p).unwrap(), 41);
        std::fs::write(&p, "4\u{0}1").unwrap();
        let e = super::read_generation(&p).unwrap_err();
        assert!(e.to_string().contains("above every node's fence"), "{e}");
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap(); // unreadable as a file
        assert!(super::read_generation(&p).is_err());
    }
}
