//! A running agent: its context (settings, version, staging, executor) and
//! the tasks it runs (the one-port server and the session with the leader).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use common::{
    Version,
    config::NodeSettings,
    fsutil,
    session::Heartbeat,
    slots::{SlotError, Slots},
    types::random_hex,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    control::ControlService,
    follower::{
        executor::Executor,
        session::{self, LeaderImageSource, LocalImages},
        stage::{StageError, Stager},
    },
    reboot::Reboot,
    server,
};

/// A node booted into an uncommitted version rolls itself back if it cannot
/// reach the leader within its self-revert deadline.
async fn self_revert_watch(ctx: Arc<NodeCtx>, shutdown: CancellationToken) {
    let deadline = ctx.settings.self_revert;
    let mut joined = ctx.joined.subscribe();
    let reached = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(deadline, joined.wait_for(|j| *j)) => r.is_ok(),
    };
    if reached {
        return;
    }
    warn!(secs = deadline.as_secs(), "running an uncommitted version and the leader is unreachable: rolling back");
    let Err(e) = ctx.executor.self_revert();
    error!(error = %e, "self-revert did not happen");
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No installed version, or an unreadable slot.
    #[error("{0}")]
    Slots(#[from] SlotError),
    /// The staging area cannot be opened.
    #[error("{0}")]
    Staging(#[from] StageError),
    /// The data dir cannot be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The dir.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The listen address is taken or not local.
    #[error("cannot listen on {addr}: {source}; is another agent running there?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// TLS setup.
    #[error("{0}")]
    Tls(#[from] common::tls::TlsError),
}

/// What every part of an agent shares.
#[derive(Debug)]
pub struct NodeCtx {
    /// Validated settings.
    pub settings: Arc<NodeSettings>,
    /// The version in the active slot.
    pub version: Version,
    /// New on every start of the agent.
    pub boot_id: String,
    /// The staging area.
    pub stager: Stager,
    /// The command executor.
    pub executor: Executor,
    /// The data plane (Service Engines).
    pub dataplane: Option<crate::dataplane::DataPlane>,
    /// Becomes true when the session with the leader is established.
    pub joined: tokio::sync::watch::Sender<bool>,
    /// The controller this node believes leads (sessions and image
    /// fetches dial it).
    pub leader: crate::follower::session::LeaderAddr,
    /// The node's cap on image bytes it sends, shared by all its streams.
    pub egress: Option<Arc<crate::image_stream::Egress>>,
    /// Image bytes this node has relayed to others.
    pub bytes_relayed: Arc<AtomicU64>,
    /// The controller whose session welcomed this node and the generation
    /// it announced, while that session lasts: the only one whose commands
    /// the node takes on the direct path (`Control`).
    pub commander: std::sync::Mutex<Option<(common::NodeId, u64)>>,
    seq: AtomicU64,
    /// The slot state last read, for as long as its files are unchanged.
    slot_state: SlotStateCache,
}

impl NodeCtx {
    /// The heartbeat describing this node now.
    pub fn heartbeat(&self) -> Heartbeat {
        let s = &self.settings;
        let (pending, previous_version) = self.slot_state();
        Heartbeat {
            node_id: s.node_id.clone(),
            role: s.role,
            version: self.version,
            boot_id: self.boot_id.clone(),
            deployment: s.deployment,
            se_group: s.se_group.clone(),
            addr: s.listen.to_string(),
            disk_free_bytes: fsutil::disk_free(&s.data_dir).unwrap_or(0),
            staged: self.stager.staged(),
            transfers: self.stager.transfers(),
            results: self.executor.results(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            pending,
            previous_version,
            serving: self.dataplane.as_ref().map(|d| d.serving()).unwrap_or_default(),
        }
    }

    /// Whether the running slot is on trial, and the previous slot's version.
    pub fn slot_state(&self) -> (bool, Option<Version>) {
        self.slot_state.get(&self.settings.data_dir, self.version)
    }
}

/// The slot state a heartbeat reports, read again only when `boot.json` or
/// a slot's manifest changed: a heartbeat costs three `stat`s, not three
/// reads and JSON parses.
#[derive(Debug, Default)]
struct SlotStateCache {
    last: std::sync::Mutex<Option<SlotStateRead>>,
}

/// The slot state (on trial, previous version) as read for a running
/// version from files with these keys.
type SlotStateRead = (Version, [Option<fsutil::FileKey>; 3], (bool, Option<Version>));

impl SlotStateCache {
    fn get(&self, data_dir: &std::path::Path, running: Version) -> (bool, Option<Version>) {
        let slots = Slots::new(data_dir);
        // Taken before the files are read: a change after this is seen at the next beat.
        let keys = [
            fsutil::FileKey::of(&slots.boot_record_path()).ok(),
            fsutil::FileKey::of(&slots.slot_dir(common::slots::Slot::A).join("manifest.json")).ok(),
            fsutil::FileKey::of(&slots.slot_dir(common::slots::Slot::B).join("manifest.json")).ok(),
        ];
        let mut last = self.last.lock().expect("slot state lock");
        if let Some((v, k, state)) = &*last
            && (*v, *k) == (running, keys)
        {
            return *state;
        }
        let state = Self::read(&slots, running);
        *last = Some((running, keys, state));
        state
    }

    fn read(slots: &Slots, running: Version) -> (bool, Option<Version>) {
        let Ok((record, active)) = slots.active() else { return (false, None) };
        if active.version != running {
            // Applied but not yet rebooted: describe what runs.
            return (false, Some(active.version));
        }
        let previous = record.previous.and_then(|p| slots.slot_manifest(p).ok()).map(|m| m.version);
        (record.pending, previous)
    }
}

/// An agent ready to serve.
#[derive(Debug)]
pub struct Node {
    /// Shared context.
    pub ctx: Arc<NodeCtx>,
    shutdown: CancellationToken,
    on_trial: bool,
    /// What `grpc.health.v1.Health` answers, per service this node serves.
    health: tonic_health::server::HealthReporter,
}

/// A started agent.
#[derive(Debug)]
pub struct NodeHandle {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Cancel to stop every task of the node at once.
    pub shutdown: CancellationToken,
    /// Ends when the node has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Prepares a node: reads its active slot, opens staging.
    pub fn new(settings: Arc<NodeSettings>, reboot: Arc<dyn Reboot>) -> Result<Self, NodeError> {
        Self::with_local_images(settings, None, reboot)
    }

    /// Like [`Node::new`], staging images found by `local` from there
    /// instead of fetching them (the leader's own store).
    pub fn with_local_images(
        settings: Arc<NodeSettings>,
        local: Option<LocalImages>,
        reboot: Arc<dyn Reboot>,
    ) -> Result<Self, NodeError> {
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|source| NodeError::DataDir { path: settings.data_dir.display().to_string(), source })?;
        let slots = Slots::new(&settings.data_dir);
        let (record, manifest) = slots.active()?;
        // What an install cut short (a crash, a power cut) left, however deep.
        for left in slots.remove_leftovers()? {
            warn!(path = %left.display(), "removed what an interrupted install left");
        }
        let shutdown = CancellationToken::new();
        let stager = Stager::open_trusting(&settings.data_dir, settings.deployment, settings.trusted_keys.clone())?;
        let leader = crate::follower::session::LeaderAddr::new(&settings);
        let source = Arc::new(LeaderImageSource::new(settings.clone(), leader.clone(), local));
        let dataplane = (settings.role == common::Role::ServiceEngine).then(|| {
            crate::dataplane::DataPlane::new(
                settings.listen.ip(),
                settings.node_id.as_str(),
                &manifest.version.to_string(),
                shutdown.clone(),
            )
        });
        let boot_id = random_hex(8);
        let mut executor = Executor::new(&settings.data_dir, stager.clone(), source, reboot, shutdown.clone())
            .with_boot_id(&boot_id)
            .with_deployment(settings.deployment, settings.role)
            .with_allowed_gate_programs(settings.allowed_gate_programs.clone());
        if let Some(dp) = &dataplane {
            executor = executor.with_dataplane(dp.clone());
        }
        let egress = crate::image_stream::Egress::new(settings.egress_limit);
        let ctx = Arc::new(NodeCtx {
            settings,
            version: manifest.version,
            boot_id,
            stager,
            executor,
            dataplane,
            joined: tokio::sync::watch::channel(false).0,
            leader,
            egress,
            bytes_relayed: Arc::default(),
            commander: std::sync::Mutex::new(None),
            seq: AtomicU64::new(0),
            slot_state: SlotStateCache::default(),
        });
        Ok(Self { ctx, shutdown, on_trial: record.pending, health: tonic_health::server::HealthReporter::new() })
    }

    /// The gRPC routes every agent serves: `Control`, `Relay`, health, reflection
    /// (`grpc.reflection.v1`, and `v1alpha` for the clients that speak only
    /// that: grpcio-reflection's Python client, older grpcurl, Evans, Postman).
    pub fn base_routes(&self) -> tonic::service::Routes {
        let health = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(self.health.clone()),
        );
        let catalog = Arc::new(crate::reflection::Catalog::molt());
        let v1 = crate::reflection::v1::server(catalog.clone());
        let v1alpha = crate::reflection::v1alpha::server(catalog);
        let reporter = self.health.clone();
        tokio::spawn(async move {
            reporter.set_serving::<proto::v1::control_server::ControlServer<ControlService>>().await;
            reporter.set_serving::<proto::v1::relay_server::RelayServer<crate::relay::RelayService>>().await;
        });
        tonic::service::Routes::new(ControlService::new(self.ctx.clone()))
            .add_service(crate::relay::RelayService::server(self.ctx.clone()))
            .add_service(health)
            .add_service(v1)
            .add_service(v1alpha)
    }

    /// The health of this node's services, for the services a role adds
    /// (`grpc.health.v1.Health` answers `NOT_FOUND` for a service never set).
    pub fn health(&self) -> tonic_health::server::HealthReporter {
        self.health.clone()
    }

    /// The token that stops this node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Binds the listener and starts the server (serving the gRPC services
    /// `grpc` and the HTTP routes `http`, see [`server::is_grpc`]; `http`
    /// answers what it does not serve itself, see [`crate::http`]) and the
    /// session with the leader.
    pub async fn start(self, grpc: tonic::service::Routes, http: axum::Router) -> Result<NodeHandle, NodeError> {
        let apps = server::Apps { grpc: grpc.into_axum_router(), http };
        let s = &self.ctx.settings;
        let listener =
            TcpListener::bind(s.listen).await.map_err(|source| NodeError::Bind { addr: s.listen, source })?;
        let addr = listener.local_addr().map_err(|source| NodeError::Bind { addr: s.listen, source })?;
        let tls = s.tls.server_config()?;
        info!(node = %s.node_id, role = %s.role, version = %self.ctx.version, %addr, "agent started");
        let shutdown = self.shutdown.clone();
        let ctx = self.ctx.clone();
        if self.on_trial {
            tokio::spawn(self_revert_watch(ctx.clone(), shutdown.clone()));
        }
        let (reloaded, reloads) = tokio::sync::watch::channel(0u64);
        tokio::spawn(credential_watch(ctx.settings.tls.clone(), reloaded, shutdown.clone()));
        // Every line the node logs names it (several nodes share a process
        // in the in-process cluster).
        let node_span = tracing::info_span!("node", node = %s.node_id);
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let server = server::serve(
                    listener,
                    tls,
                    ctx.settings.tls.clone(),
                    apps,
                    shutdown.clone(),
                    ctx.settings.limits.clone(),
                    reloads,
                );
                let session = session::run(ctx, shutdown.clone());
                tokio::join!(server, session);
            },
            node_span,
        ));
        Ok(NodeHandle { addr, shutdown: self.shutdown, task })
    }
}

/// How often a node looks for renewed certificates and a changed revocation list.
pub const CREDENTIALS_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Re-reads the node's certificate, key and revocation list when they
/// change, until `shutdown`; says once why a change was not taken.
async fn credential_watch(
    creds: Arc<common::credentials::Credentials>,
    reloaded: tokio::sync::watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CREDENTIALS_POLL) => {}
        }
        let c = creds.clone();
        match tokio::task::spawn_blocking(move || c.reload_if_changed()).await {
            Ok(Ok(true)) => {
                info!(identity = %creds.identity(), "TLS certificate or revocation list reloaded");
                // Open connections check their certificates against the new list.
                reloaded.send_modify(|n| *n += 1);
                last_error.clear();
            }
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(error = %e, "changed TLS files were not taken; the node keeps the ones in force");
                    last_error = e;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use common::slots::Slot;

    use super::*;

    #[test]
    fn the_cached_slot_state_follows_each_change_of_the_boot_record_and_manifests() {
        let d = tempfile::tempdir().unwrap();
        let bins = d.path().join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        for name in ["controller-agent", "se-agent"] {
            std::fs::write(bins.join(name), b"agent").unwrap();
        }
        let slots = Slots::new(&d.path().join("node"));
        let (v1, v2): (Version, Version) = ("1.0.0".parse().unwrap(), "2.0.0".parse().unwrap());
        slots.install_initial(v1, common::DeploymentKind::Vm, &bins).unwrap();
        let cache = SlotStateCache::default();
        assert_eq!(cache.get(&d.path().join("node"), v1), (false, None));
        assert_eq!(cache.get(&d.path().join("node"), v1), (false, None), "unchanged files, same answer");

        // 2.0.0 installed into slot b and activated on trial: it runs after the reboot.
        let manifest = std::fs::read_to_string(slots.slot_dir(Slot::A).join("manifest.json")).unwrap();
        std::fs::create_dir_all(slots.slot_dir(Slot::B)).unwrap();
        common::fsutil::atomic_write(
            &slots.slot_dir(Slot::B).join("manifest.json"),
            manifest.replace("1.0.0", "2.0.0").as_bytes(),
        )
        .unwrap();
        slots.activate_on_trial(Slot::B).unwrap();
        assert_eq!(cache.get(&d.path().join("node"), v1), (false, Some(v2)), "applied, not rebooted");
        assert_eq!(cache.get(&d.path().join("node"), v2), (true, Some(v1)), "on trial after the reboot");
        slots.commit().unwrap();
        assert_eq!(cache.get(&d.path().join("node"), v2), (false, Some(v1)), "committed");

        // The previous slot overwritten by the next install (boot record unchanged).
        common::fsutil::atomic_write(
            &slots.slot_dir(Slot::A).join("manifest.json"),
            manifest.replace("1.0.0", "3.0.0").as_bytes(),
        )
        .unwrap();
        assert_eq!(cache.get(&d.path().join("node"), v2), (false, Some("3.0.0".parse().unwrap())));
    }
}
