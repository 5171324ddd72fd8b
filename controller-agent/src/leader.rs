//! The leader controller: the cluster view fed by sessions, the image store
//! and server, and the operations it runs on the cluster (prestage).

pub mod cluster;
pub mod distribute;
pub mod driver;
pub mod grpc;
pub mod image_server;
pub mod images;
pub mod relays;
pub use coordinator::placement;
pub mod status;
pub mod store;
pub mod traffic;
pub mod upgrade;

pub use coordinator::journal::Journal;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Version, config::NodeSettings, slots::Slots};
use tracing::{error, info, warn};

use self::{
    cluster::ClusterView,
    images::ImageStore,
    status::HistoryEntry,
    store::{Config, Store},
};

/// The leader's gRPC service name, as health checks ask for it.
pub const LEADER_SERVICE: &str = proto::v1::leader_server::SERVICE_NAME;

/// Everything the leader's services share, by lifetime. Every controller
/// has one, for as long as its process runs: its replica of the
/// configuration, journal, history and audit (`consensus`; the raft state
/// machine depends on coordinator types only), the image service (`images`,
/// `bytes_served`, `egress`) and the node's settings. What exists only
/// while it leads is a [`Term`] (generation, fetch gate, relay trees, the
/// majority's confirmation), built when leadership starts and dropped when
/// it ends, with the leader's tasks (the driver) aborted then. The cluster
/// view is filled by the sessions, which only the leader accepts, and
/// emptied when the term ends.
#[derive(Debug)]
pub struct LeaderState {
    /// This node's settings.
    pub settings: Arc<NodeSettings>,
    /// Consensus among the controllers: leadership and the replicated state.
    pub consensus: crate::raft::Consensus,
    /// Every node as its heartbeats describe it (while this controller leads).
    pub cluster: ClusterView,
    /// Uploaded and verified images.
    pub images: ImageStore,
    /// Set when the journal could not be written: the operation stopped
    /// in this process (a restarted leader resumes from the journal on disk).
    pub halted: Mutex<Option<String>>,
    /// The journal as this leader suspended it when it halted.
    halted_journal: Mutex<Option<Journal>>,
    /// Wakes the driver (a request changed the journal).
    pub wake: tokio::sync::Notify,
    /// What exists only while this controller leads: built when its term
    /// begins, dropped when it ends.
    term: std::sync::RwLock<Option<Arc<Term>>>,
    /// Bytes of image data served by `FetchImage` since start.
    pub bytes_served: Arc<std::sync::atomic::AtomicU64>,
    /// Steps the driver has taken since start (a test waits on steps, not time).
    pub driver_steps: std::sync::atomic::AtomicU64,
    /// The store's files (the pre-raft state, and the mirror of the configuration).
    pub store: Store,
    /// The version this leader runs.
    pub version: Version,
    /// Held while a request decides to start, resume or roll back an
    /// operation, or to change the configuration, and while the driver
    /// decides a step: the check ("nothing is running", "not read-only") and
    /// the act (the journal or configuration written) happen under it, so
    /// two requests at once cannot both pass the check. An async lock: the
    /// writes under it wait for the raft commit.
    pub operation_gate: tokio::sync::Mutex<()>,
    /// Cancelled when the node stops: every leader task ends with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The tasks started through [`LeaderState::spawn`] (finished ones are
    /// pruned); aborted when the term ends.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The node's cap on image bytes sent (shared with its relay service).
    pub egress: std::sync::OnceLock<Option<Arc<agent_core::image_stream::Egress>>>,
    /// The node's gRPC health: `molt.v1.Leader` is `SERVING` only while
    /// this controller leads.
    pub health: std::sync::OnceLock<tonic_health::server::HealthReporter>,
    /// The node this controller is (for its own metrics). Weak: the node
    /// holds this state (its local images come from the leader's store), and
    /// a strong pointer back would keep both alive once the node stopped.
    pub node: std::sync::OnceLock<std::sync::Weak<agent_core::node::NodeCtx>>,
}

/// What exists only while this controller leads. Built when its term
/// begins and dropped when it ends, so nothing of one term (a grant, a
/// relay tree, a confirmation by the majority) outlives it.
#[derive(Debug)]
pub struct Term {
    /// This leader's generation: derived from the raft term it leads in
    /// and how many times this controller began leading.
    pub generation: u64,
    /// Who may fetch which image, and the open image streams.
    pub fetch_gate: image_server::FetchGate,
    /// Which node each fetcher gets an image from (the leader or a relay).
    pub relays: Mutex<relays::Relays>,
    /// When a majority of the controllers last confirmed this leader.
    confirmed_at: Mutex<Option<std::time::Instant>>,
}

impl Term {
    fn new(settings: &NodeSettings, generation: u64) -> Self {
        Self {
            generation,
            fetch_gate: image_server::FetchGate::new(
                settings.limits.fetch_streams_per_node,
                settings.limits.fetch_streams_total,
            ),
            relays: Mutex::new(relays::Relays::new(settings.relay_fanout)),
            // Confirmed by the majority that elected it, a moment ago.
            confirmed_at: Mutex::new(Some(std::time::Instant::now())),
        }
    }
}

/// How many times this controller began leading: 0 only when the file does
/// not exist. A file that cannot be read or parsed is an error: counting
/// again from 0 could repeat a generation, and with it command ids.
pub fn read_starts(path: &std::path::Path) -> std::io::Result<u64> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))),
    };
    text.trim().parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} holds {:?} ({e}); write a number above the last (or remove it if the raft term moved on), then restart",
                path.display(),
                text.trim()
            ),
        )
    })
}

/// The journal on disk, migrated to this molt's format. One this molt
/// cannot read (a format older than it migrates, or newer) is set aside as
/// `journal-format-N.json` with a warning rather than stopping the leader.
fn load_journal(store: &Store) -> std::io::Result<Option<Journal>> {
    let Some(v) = store.load::<serde_json::Value>("journal")? else { return Ok(None) };
    let format = v["format"].as_u64();
    match coordinator::journal::from_value(v) {
        Ok(j) => Ok(Some(j)),
        Err(why) => match format {
            Some(f) if f != u64::from(coordinator::journal::FORMAT) => {
                let aside = format!("journal-format-{f}");
                store.rename("journal", &aside)?;
                tracing::warn!(
                    format = f,
                    file = %aside,
                    %why,
                    "the upgrade journal cannot be resumed by this molt; set aside: check `molt show cluster` \
                     and finish that upgrade by hand if it was running"
                );
                Ok(None)
            }
            _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why)),
        },
    }
}

impl LeaderState {
    /// Sets up the controller's state: opens its raft store and joins the
    /// controllers' group.
    pub async fn new(settings: Arc<NodeSettings>) -> std::io::Result<Arc<Self>> {
        let images = ImageStore::open(&settings.data_dir, settings.upload_stall, settings.trusted_keys.clone())?;
        let store = Store::open(&settings.data_dir)?;
        let consensus = crate::raft::Consensus::start(&settings, store.clone()).await.map_err(std::io::Error::other)?;
        let version = Slots::new(&settings.data_dir).active().map_err(std::io::Error::other)?.1.version;
        Ok(Arc::new(Self {
            cluster: ClusterView::new(&settings),
            consensus,
            images,
            halted: Mutex::new(None),
            halted_journal: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            term: std::sync::RwLock::new(None),
            bytes_served: Default::default(),
            driver_steps: Default::default(),
            operation_gate: tokio::sync::Mutex::new(()),
            shutdown: tokio_util::sync::CancellationToken::new(),
            tasks: Mutex::default(),
            store,
            version,
            egress: std::sync::OnceLock::new(),
            health: std::sync::OnceLock::new(),
            node: std::sync::OnceLock::new(),
            settings,
        }))
    }

    /// The cap on one stream of a transfer, bytes per second: the node's own
    /// cap or the running upgrade profile's, whichever is lower, shared by
    /// the transfer's stripes (whoever serves them).
    pub fn stream_rate(&self, stripe: common::stripe::Stripe) -> Option<u64> {
        let profile = self.journal().filter(|j| j.is_running()).map(|j| j.profile.transfer_rate_mib << 20);
        let rate = [self.settings.fetch_rate_limit, profile.filter(|r| *r > 0)].into_iter().flatten().min()?;
        Some(rate.div_ceil(u64::from(stripe.count())).max(1))
    }

    /// Where `node`'s fetch of `stripe` of `sha` should come from: `None`
    /// for the leader itself, else the answer to give instead — the number
    /// of stripes to fetch when it asked for another (in `molt-stripes`
    /// metadata), or the relay to fetch from (its address, node id and a
    /// signed ticket in the metadata).
    pub fn route_fetch(
        &self,
        sha: common::Sha256Digest,
        node: &common::NodeId,
        stripe: common::stripe::Stripe,
    ) -> Option<tonic::Status> {
        use agent_core::relay::{RELAY_ADDR, RELAY_NODE, RELAY_STRIPES, RELAY_TICKET};
        let hex = sha.to_hex();
        let term = self.term()?;
        let mut planned = term.fetch_gate.granted(&sha);
        planned.retain(|n| *n != self.settings.node_id);
        let mut relays = term.relays.lock().expect("relays lock");
        relays.forget(|s| *s == sha || !term.fetch_gate.granted(s).is_empty());
        let count = relays.stripes(sha, planned.len());
        if stripe.count() != count {
            let mut status = common::errors::ErrorKind::PreconditionFailed.grpc(format!(
                "the leader sends image {} in {count} stripes to its {} fetchers; fetch each stripe",
                sha.short(),
                planned.len()
            ));
            status.metadata_mut().insert(RELAY_STRIPES, count.into());
            return Some(status);
        }
        let up: Vec<relays::Holder> = self
            .cluster
            .snapshot()
            .into_iter()
            // The leader counts as the tree's root, not as a relay.
            .filter(|n| n.state == cluster::NodeState::Up && n.id != self.settings.node_id)
            .map(|n| relays::Holder {
                staged: n.staged.iter().any(|s| s.sha256 == hex),
                received: n.transfers.iter().find(|t| t.sha256 == hex).map(|t| t.received),
                id: n.id,
                addr: n.addr,
            })
            .collect();
        let relays::Parent::Node(relay) = relays.route(sha, stripe, node, &up, &planned) else {
            return None;
        };
        drop(relays);
        let addr = up.iter().find(|h| h.id == relay).map(|h| h.addr.clone())?;
        let grant = common::ticket::RelayGrant::new(&sha, node.as_str(), relay.as_str(), stripe)
            .with_rate(self.stream_rate(stripe));
        let ticket = match common::ticket::sign(&self.settings.tls, &grant) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "serving the image itself");
                return None;
            }
        };
        let mut status = common::errors::ErrorKind::Unavailable.grpc(format!(
            "fetch {stripe} of image {} from relay {relay} at {addr}: the leader streams each stripe to one node, \
             each node relays to {} more",
            sha.short(),
            self.settings.relay_fanout
        ));
        let m = status.metadata_mut();
        m.insert(RELAY_ADDR, addr.parse().ok()?);
        m.insert(RELAY_NODE, relay.as_str().parse().ok()?);
        m.insert_bin(RELAY_TICKET, tonic::metadata::MetadataValue::from_bytes(&ticket));
        Some(status)
    }

    /// The file holding a verified image: uploaded here, or staged here (a
    /// controller that became leader during an upgrade serves the image
    /// from its own staging; a staged file exists only once verified).
    pub fn image_path(&self, sha: &common::Sha256Digest) -> Option<std::path::PathBuf> {
        self.images.path_of(sha).filter(|p| p.is_file()).or_else(|| {
            let staged = self.settings.data_dir.join("staging").join(format!("{sha}.pkg"));
            staged.is_file().then_some(staged)
        })
    }

    /// The image `image_path` names: this controller's upload, or, for an
    /// image uploaded to another controller (registered in the replicated
    /// state), the copy this controller staged and verified, or else a copy
    /// fetched from a controller that holds it (a leader elected before it
    /// staged the image, most often during the operation's staging). A new
    /// registration is replicated.
    pub async fn image(&self, image_path: &str) -> Result<images::Image, images::ImageError> {
        let image = match self.images.get(image_path).await {
            Err(images::ImageError::NotFound(p)) => {
                let sha = self.consensus.replicated().images.get(image_path).copied();
                match sha.map(|sha| (sha, self.image_path(&sha))) {
                    Some((_, Some(staged))) => self.images.get_at(staged, image_path).await?,
                    Some((sha, None)) => self.fetch_from_controllers(image_path, sha).await?,
                    None => return Err(images::ImageError::NotFound(p)),
                }
            }
            r => r?,
        };
        if self.consensus.replicated().images.get(image_path) != Some(&image.info.sha256) {
            let change = crate::raft::Change::Image { path: image_path.to_owned(), sha256: image.info.sha256 };
            if let Err(e) = self.consensus.write(change).await {
                warn!(error = %e, image = image_path, "cannot register the image with the other controllers");
            }
        }
        Ok(image)
    }

    /// The file of the verified image `sha` this controller holds (its
    /// upload, or its staged copy), looked up here only: for a leader that
    /// does not hold it. After a restart the upload index is empty, so the
    /// replicated state's paths of `sha` are tried too.
    pub async fn held_image(&self, sha: &common::Sha256Digest) -> Option<std::path::PathBuf> {
        if let Some(path) = self.image_path(sha) {
            return Some(path);
        }
        let paths: Vec<String> =
            self.consensus.replicated().images.iter().filter(|(_, s)| *s == sha).map(|(p, _)| p.clone()).collect();
        for p in paths {
            if let Ok(image) = self.images.get(&p).await
                && image.info.sha256 == *sha
            {
                return Some(image.path);
            }
        }
        None
    }

    /// Fetches image `sha`, registered as `image_path` (an upload to
    /// another controller), from the other controllers in turn into this
    /// one's `upgrade_pkgs`, verified on the way as an upload is.
    async fn fetch_from_controllers(
        &self,
        image_path: &str,
        sha: common::Sha256Digest,
    ) -> Result<images::Image, images::ImageError> {
        let elsewhere = |why: String| images::ImageError::Elsewhere { path: image_path.to_owned(), why };
        let name = image_path
            .strip_prefix(images::SCHEME)
            .and_then(|r| r.strip_prefix("upgrade_pkgs/"))
            .ok_or_else(|| elsewhere("only uploads, under controller://upgrade_pkgs/, are fetched".into()))?;
        let mut answers = Vec::new();
        for c in self.settings.controllers.iter().filter(|c| c.id != self.settings.node_id) {
            let fetched = match grpc::fetch_from_controller(&self.settings, c.addr, sha).await {
                Ok(mut bytes) => self.images.upload(name, None, &mut bytes).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match fetched {
                Ok(image) if image.info.sha256 == sha => {
                    info!(image = image_path, from = %c.id, sha = %sha.short(), "image fetched from the controller that holds it");
                    return Ok(image);
                }
                Ok(image) => {
                    let _ = std::fs::remove_file(&image.path);
                    answers.push(format!("{} sent image {}", c.id, image.info.sha256.short()));
                }
                Err(e) => answers.push(format!("{}: {e}", c.id)),
            }
        }
        Err(elsewhere(if answers.is_empty() { "there is no other controller".into() } else { answers.join("; ") }))
    }

    /// Asks the other controllers whether they still follow this leader;
    /// remembers when a majority last said so.
    pub async fn confirm_majority(&self) -> bool {
        let ok = self.consensus.quorum_answers().await;
        if ok && let Some(t) = self.term() {
            *t.confirmed_at.lock().expect("confirmed lock") = Some(std::time::Instant::now());
        }
        ok
    }

    /// When a majority last confirmed this leader (in its current term).
    fn confirmed_at(&self) -> Option<std::time::Instant> {
        *self.term()?.confirmed_at.lock().expect("confirmed lock")
    }

    /// What exists while this controller leads; `None` while it does not.
    pub fn term(&self) -> Option<Arc<Term>> {
        self.term.read().expect("term lock").clone()
    }

    /// Whether this leader may act now: a majority confirmed it within the
    /// last heartbeat interval (shorter than any election), or does now.
    pub async fn may_act(&self) -> bool {
        let fresh = self.confirmed_at().is_some_and(|t| t.elapsed() < self.settings.heartbeat_interval);
        fresh || self.confirm_majority().await
    }

    /// This leader's generation: derived from the raft term it leads in.
    pub fn generation(&self) -> u64 {
        self.term().map_or(0, |t| t.generation)
    }

    /// Whether this controller leads now.
    pub fn leading(&self) -> bool {
        self.generation() != 0 && self.consensus.leading_term().is_some()
    }

    /// What this controller's state was before raft (the leader's
    /// `store/*.json`), to seed the replicated state once.
    fn pre_raft_state(&self) -> std::io::Result<crate::raft::Replicated> {
        Ok(crate::raft::Replicated {
            config: Some(self.store.load::<Config>("config")?.unwrap_or_default()),
            journal: load_journal(&self.store)?,
            history: self.store.load::<Vec<HistoryEntry>>("history")?.unwrap_or_default(),
            images: Default::default(),
            audit: vec![],
        })
    }

    /// Begins this controller's term as leader: the generation from the
    /// term, the replicated state seeded if it never was, then the
    /// driver (which places the virtual services too).
    pub async fn begin_term(self: &Arc<Self>, term: u64) {
        *self.halted.lock().expect("halted lock") = None;
        *self.halted_journal.lock().expect("halted lock") = None;
        // A leader restarted in its term (openraft keeps a committed vote)
        // still takes a new generation: its command ids never repeat.
        let path = self.settings.data_dir.join("leader-starts");
        let starts = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let n = read_starts(&path)? + 1;
            common::fsutil::atomic_write(&path, n.to_string().as_bytes())?;
            Ok(n)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let starts = match starts {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "cannot record this leader's start: it does not lead");
                return;
            }
        };
        let generation = crate::raft::generation_of(term, starts);
        *self.term.write().expect("term lock") = Some(Arc::new(Term::new(&self.settings, generation)));
        info!(term, generation = self.generation(), "this controller leads");
        if self.consensus.replicated().config.is_none() {
            match self.pre_raft_state() {
                Ok(seed) => {
                    if let Err(e) = self.consensus.write(crate::raft::Change::Seed(seed)).await {
                        warn!(error = %e, "cannot seed the replicated state");
                    }
                }
                Err(e) => error!(error = %e, "cannot read the state this controller had before raft"),
            }
        }
        driver::spawn(self.clone());
    }

    /// Ends the term: the leader's tasks stop, the sessions close (the
    /// agents redial and find the new leader), nothing is in flight.
    /// Sets `molt.v1.Leader`'s gRPC health: `SERVING` while this controller
    /// leads (its term begun), `NOT_SERVING` otherwise.
    pub async fn report_leading(&self, leading: bool) {
        use tonic_health::ServingStatus;
        if let Some(h) = self.health.get() {
            let status = if leading { ServingStatus::Serving } else { ServingStatus::NotServing };
            h.set_service_status(LEADER_SERVICE, status).await;
        }
    }

    pub fn end_term(&self) {
        if self.term.write().expect("term lock").take().is_none() {
            return;
        }
        info!("this controller no longer leads");
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        self.cluster.close_all();
    }

    /// Follows raft leadership until the node stops: begins a term when
    /// this controller becomes leader, ends it when it stops leading — or
    /// when, leading, it can no longer get a majority to answer (a leader
    /// cut off from the others stops commanding and accepting writes
    /// before the majority elects another).
    pub fn follow_leadership(self: &Arc<Self>) {
        let state = self.clone();
        let mut metrics = self.consensus.raft.metrics();
        let every = self.settings.heartbeat_interval;
        // Stepping down aborts the driver: only after a majority has been
        // silent for a few election timeouts, not on one slow answer.
        let silence = Duration::from_millis(self.consensus.raft.config().election_timeout_max * 3);
        tokio::spawn(async move {
            let mut term = None;
            let mut next_check = tokio::time::Instant::now() + every;
            loop {
                let raft_term = state.consensus.leading_term();
                let mut confirmed = true;
                if raft_term.is_some() && raft_term == term && tokio::time::Instant::now() >= next_check {
                    state.confirm_majority().await;
                    next_check = tokio::time::Instant::now() + every;
                    let last = state.confirmed_at();
                    confirmed = last.is_some_and(|t| t.elapsed() < silence);
                }
                let now = raft_term.filter(|_| confirmed);
                if now != term {
                    if term.is_some() {
                        if raft_term.is_some() {
                            warn!("a majority of the controllers does not answer: this controller stops leading");
                        }
                        state.end_term();
                    }
                    term = None;
                    if let Some(t) = now {
                        // Before deciding anything, this leader's replica
                        // holds every write committed before its term.
                        if state.consensus.caught_up().await {
                            state.begin_term(t).await;
                            term = now;
                        }
                    }
                    state.report_leading(term.is_some()).await;
                }
                tokio::select! {
                    _ = state.shutdown.cancelled() => break,
                    r = metrics.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep_until(next_check) => {}
                }
                if term.is_none() {
                    next_check = tokio::time::Instant::now() + every;
                }
            }
            state.end_term();
            if !state.shutdown.is_cancelled() {
                // Raft stopped by itself: its store cannot be written.
                let why = state.consensus.fatal().unwrap_or_else(|| "raft stopped".into());
                state.consensus.mark_died(why.clone());
                error!(error = %why, "consensus stopped on this controller");
                state
                    .halt(format!(
                        "cannot write the upgrade journal ({why}): the upgrade stopped where it was; free or fix this \
                     controller's disk, then restart it: the controllers resume from the replicated journal"
                    ))
                    .await;
            }
            let _ = state.consensus.raft.shutdown().await;
        });
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
        self.journal().as_ref().is_some_and(Journal::is_running)
    }

    /// The journal of the current or last operation (as this leader
    /// suspended it, if it halted).
    pub fn journal(&self) -> Option<Journal> {
        let replicated = self.consensus.replicated().journal.clone();
        match (self.halted_journal.lock().expect("halted lock").clone(), replicated) {
            (Some(h), Some(r)) if h.id == r.id => Some(h),
            (_, r) => r,
        }
    }

    /// The configuration (SE groups, virtual services, placements).
    pub fn config(&self) -> Config {
        self.consensus.replicated().config.clone().unwrap_or_default()
    }

    /// Operations that ended, oldest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.consensus.replicated().history.clone()
    }

    /// The version this leader's node runs.
    pub fn ctx_version(&self) -> Version {
        self.version
    }

    /// Replicates the journal to a majority of the controllers; an
    /// operation that ends goes into the replicated history. The caller
    /// holds the operation gate.
    pub async fn write_journal(&self, j: Journal) -> Result<(), crate::raft::WriteError> {
        self.consensus.write(crate::raft::Change::Journal(j)).await?;
        *self.halted.lock().expect("halted lock") = None;
        *self.halted_journal.lock().expect("halted lock") = None;
        Ok(())
    }

    /// The journal's operation stopped because the journal could not be
    /// written (raft stopped): it ends suspended in this process only, the
    /// configuration is writable, and nothing goes on from this process.
    pub async fn halt(&self, why: String) {
        let Some(j) = self.journal().filter(|j| j.is_running()) else { return };
        self.suspend(coordinator::core::halt(&j, &why, driver::now_ms(), None));
    }

    /// Keeps `j`, an operation suspended in this process, as this
    /// controller's journal until a write succeeds again.
    pub fn suspend(&self, j: Journal) {
        *self.halted.lock().expect("halted lock") = Some(j.reason.clone());
        *self.halted_journal.lock().expect("halted lock") = Some(j);
    }

    /// The status: a view of the journal, the cluster and the history.
    pub fn status(&self) -> status::UpgradeStatus {
        let j = self.journal();
        let mut s = status::view(j.as_ref(), self.history(), &self.cluster.snapshot(), driver::now_ms());
        if let Some(j) = j.as_ref().filter(|j| j.is_running()) {
            // What the operation waits for, and until when: the same
            // waits the driver applies.
            let timeouts = driver::timeouts(self).under(&j.config);
            let waiting = coordinator::view::waiting(j, driver::now_ms(), timeouts);
            if s.reason.is_empty() && !waiting.is_empty() {
                s.reason = waiting.join("; ");
            }
            // Where each staging node gets the image from (while this
            // controller leads and routes the fetches).
            let term = self.term();
            let relays = term.as_ref().map(|t| t.relays.lock().expect("relays lock"));
            for row in s.nodes.iter_mut().filter(|_| relays.is_some()) {
                let Ok(id) = row.id.parse::<common::NodeId>() else { continue };
                let Some(n) = j.nodes.get(&id).filter(|n| n.step == coordinator::journal::Step::Staging) else {
                    continue;
                };
                let Some(relays) = relays.as_ref() else { continue };
                row.source = relays.sources(&j.image_for(n.kind).sha256).get(&id).map(|ps| {
                    let names = ps.iter().map(|p| match p {
                        relays::Parent::Leader => self.settings.node_id.to_string(),
                        relays::Parent::Node(r) => r.to_string(),
                    });
                    names.collect::<Vec<_>>().join(",")
                });
            }
        }
        let audit = &self.consensus.replicated().audit;
        s.audit = audit[audit.len().saturating_sub(status::AUDIT_SHOWN)..].to_vec();
        s
    }

    /// Records an operator action in the replicated audit trail. Only the
    /// leader's write succeeds: a follower forwards the call, and the
    /// leader records it once.
    pub async fn audit(&self, entry: crate::raft::AuditEntry) {
        if let Err(e) = self.consensus.write(crate::raft::Change::Audit(entry.clone())).await
            && !matches!(e, crate::raft::WriteError::NotLeader(_))
        {
            tracing::warn!(who = %entry.who, action = %entry.action, error = %e, "the audit entry was not replicated");
        }
    }

    /// Applies a change to the configuration and replicates it; nothing
    /// changes if `f` refuses or the write fails. The caller holds the
    /// operation gate.
    pub async fn change_config<T>(
        &self,
        f: impl FnOnce(&mut Config) -> Result<T, store::ConfigError>,
    ) -> Result<T, ChangeError> {
        let mut next = self.config();
        let out = f(&mut next)?;
        self.save_config(next).await?;
        Ok(out)
    }

    /// Replicates and installs a configuration (a change, or an aborted
    /// upgrade's snapshot put back).
    pub async fn save_config(&self, next: Config) -> Result<(), crate::raft::WriteError> {
        self.consensus.write(crate::raft::Change::Config(next)).await
    }
}

/// Why a configuration change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The change itself is refused.
    #[error(transparent)]
    Refused(#[from] store::ConfigError),
    /// It could not be replicated.
    #[error(transparent)]
    Write(#[from] crate::raft::WriteError),
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unreadable_start_count_is_an_error_not_zero() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("leader-starts");
        assert_eq!(super::read_starts(&p).unwrap(), 0, "a new controller starts at 0");
        std::fs::write(&p, "41\n").unwrap();
        assert_eq!(super::read_starts(&p).unwrap(), 41);
        std::fs::write(&p, "4\u{0}1").unwrap();
        assert!(super::read_starts(&p).unwrap_err().to_string().contains("write a number above"));
    }

    /// Written by main at 0fc8ecf (format 2).
    const JOURNAL_0FC8ECF: &str = include_str!("../../coordinator/tests/fixtures/journal-0fc8ecf.json");

    #[test]
    fn the_previous_molts_journal_is_migrated_on_disk_and_in_the_raft_log() {
        let d = tempfile::tempdir().unwrap();
        let store = super::Store::open(d.path()).unwrap();
        std::fs::write(d.path().join("store/journal.json"), JOURNAL_0FC8ECF).unwrap();
        let j = super::load_journal(&store).unwrap().expect("migrated, not set aside");
        assert_eq!(j.format, coordinator::journal::FORMAT);
        assert!(j.is_running());
        // A raft log entry and a snapshot of the previous molt read the same way.
        let entry = format!(r#"{{"Journal": {JOURNAL_0FC8ECF}}}"#);
        let change: crate::raft::Change = serde_json::from_str(&entry).unwrap();
        assert!(matches!(change, crate::raft::Change::Journal(ref k) if *k == j));
        let snapshot = format!(r#"{{"config": null, "journal": {JOURNAL_0FC8ECF}, "history": []}}"#);
        let r: crate::raft::Replicated = serde_json::from_str(&snapshot).unwrap();
        assert_eq!(r.journal, Some(j));
    }

    #[test]
    fn a_journal_of_an_older_format_is_set_aside_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let store = super::Store::open(d.path()).unwrap();
        std::fs::write(d.path().join("store/journal.json"), r#"{"format": 1, "step": "done"}"#).unwrap();
        assert!(super::load_journal(&store).unwrap().is_none());
        assert!(d.path().join("store/journal-format-1.json").exists());
        assert!(!d.path().join("store/journal.json").exists());
        // A corrupt journal of this format still stops the leader.
        std::fs::write(d.path().join("store/journal.json"), r#"{"format": 3, "phase": 7}"#).unwrap();
        assert!(super::load_journal(&store).is_err());
    }
}
