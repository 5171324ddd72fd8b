//! The leader controller: the cluster view fed by sessions, the image store
//! and server, and the operations it runs on the cluster (prestage).

pub mod cluster;
pub mod distribute;
pub mod grpc;
pub mod image_server;
pub mod images;
pub use coordinator::placement;
pub mod status;
pub mod store;
pub mod traffic;
pub mod upgrade;

use std::sync::{Arc, Mutex};

use common::{Version, config::NodeSettings, fsutil, slots::Slots};
use tracing::error;

use self::{
    cluster::ClusterView,
    images::ImageStore,
    status::StatusBoard,
    store::{Config, Store},
    upgrade::Journal,
};

/// Everything the leader's services share.
#[derive(Debug)]
pub struct LeaderState {
    /// This node's settings.
    pub settings: Arc<NodeSettings>,
    /// Every node as its heartbeats describe it.
    pub cluster: ClusterView,
    /// Uploaded and verified images.
    pub images: ImageStore,
    /// The current operation and the history of past ones.
    pub status: Mutex<StatusBoard>,
    /// This leader's generation: one more than the last leader start's.
    pub generation: u64,
    /// Bytes of image data served by `FetchImage` since start.
    pub bytes_served: Arc<std::sync::atomic::AtomicU64>,
    /// The store's files.
    pub store: Store,
    /// The configuration (SE groups, virtual services).
    pub config: Mutex<Config>,
    /// The upgrade journal (the last upgrade's, once it is done).
    pub journal: Mutex<Option<Journal>>,
    /// The version this leader runs.
    pub version: Version,
    /// Held while a request decides to start, resume or roll back an
    /// operation, or to change the configuration: the check ("nothing is
    /// running", "not read-only") and the act happen under it, so two
    /// requests at once cannot both pass the check.
    pub operation_gate: Mutex<()>,
    /// Cancelled when the node stops: every leader task ends with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The tasks started through [`LeaderState::spawn`] (finished ones are pruned).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Who may fetch which image, and the open image streams.
    pub fetch_gate: image_server::FetchGate,
    /// SEs taken out of service for their upgrade.
    pub drained: Mutex<std::collections::BTreeSet<String>>,
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

impl LeaderState {
    /// Sets up the leader on this node, taking the next generation.
    pub fn new(settings: Arc<NodeSettings>) -> std::io::Result<Arc<Self>> {
        let gen_path = settings.data_dir.join("leader-generation");
        let generation = read_generation(&gen_path)? + 1;
        fsutil::atomic_write(&gen_path, generation.to_string().as_bytes())?;
        let images = ImageStore::open(&settings.data_dir, settings.upload_stall)?;
        let store = Store::open(&settings.data_dir)?;
        let config = store.load::<Config>("config")?.unwrap_or_default();
        let journal = store.load::<Journal>("journal")?;
        // A running upgrade's drained SEs stay drained until it goes on.
        let drained = journal.as_ref().filter(|j| j.is_running()).map(|j| j.drained.clone()).unwrap_or_default();
        let mut status = store.load::<StatusBoard>("status")?.unwrap_or_default();
        if status.current.is_running() && !journal.as_ref().is_some_and(Journal::is_running) {
            // A prestage cannot survive a restart of the leader: say so.
            status.finish(status::OpState::Aborted, "the leader restarted during the operation".into());
        }
        let version = Slots::new(&settings.data_dir).active().map_err(std::io::Error::other)?.1.version;
        Ok(Arc::new(Self {
            cluster: ClusterView::new(&settings),
            images,
            status: Mutex::new(status),
            generation,
            bytes_served: Default::default(),
            operation_gate: Mutex::new(()),
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
            drained: Mutex::new(drained),
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

    /// Whether an upgrade or prestage is running.
    pub fn operation_running(&self) -> bool {
        self.status.lock().expect("status lock").current.is_running() || self.read_only()
    }

    /// Whether configuration changes are refused (an upgrade is running).
    pub fn read_only(&self) -> bool {
        self.journal.lock().expect("journal lock").as_ref().is_some_and(Journal::is_running)
    }

    /// The version this leader's node runs.
    pub fn ctx_version(&self) -> Version {
        self.version
    }

    /// Persists the journal (before the step it describes acts).
    pub fn save_journal(&self, j: Option<Journal>) -> std::io::Result<()> {
        if let Some(j) = &j {
            self.store.save("journal", j)?;
        }
        *self.journal.lock().expect("journal lock") = j;
        Ok(())
    }

    /// Changes the running upgrade's journal and writes it, atomically with
    /// respect to other changes.
    pub fn update_journal(&self, f: impl FnOnce(&mut Journal)) -> std::io::Result<Journal> {
        let mut guard = self.journal.lock().expect("journal lock");
        let mut j = guard.clone().ok_or_else(|| std::io::Error::other("no upgrade journal"))?;
        f(&mut j);
        self.store.save("journal", &j)?;
        *guard = Some(j.clone());
        Ok(j)
    }

    /// Persists the status and history, so they survive the leader's reboot.
    pub fn save_status(&self) {
        let board = self.status.lock().expect("status lock");
        if let Err(e) = self.store.save("status", &*board) {
            error!(error = %e, "cannot save the upgrade status");
        }
    }

    /// Applies a change to the configuration and saves it; nothing changes
    /// if `f` refuses or the save fails.
    pub fn change_config<T>(
        &self,
        f: impl FnOnce(&mut Config) -> Result<T, store::ConfigError>,
    ) -> Result<T, store::ConfigError> {
        let mut cfg = self.config.lock().expect("config lock");
        let mut next = cfg.clone();
        let out = f(&mut next)?;
        self.store.save("config", &next)?;
        *cfg = next;
        Ok(out)
    }

    /// Puts back a configuration snapshot (an aborted upgrade).
    pub fn restore_config(&self, snapshot: &Config) {
        let mut cfg = self.config.lock().expect("config lock");
        if let Err(e) = self.store.save("config", snapshot) {
            error!(error = %e, "cannot restore the configuration snapshot");
            return;
        }
        *cfg = snapshot.clone();
    }
}

#[cfg(test)]
mod tests {
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
