//! The leader controller: the cluster view fed by sessions, the image store
//! and server, and the operations it runs on the cluster (prestage).

pub mod cluster;
pub mod distribute;
pub mod grpc;
pub mod image_server;
pub mod images;
pub mod status;

use std::sync::{Arc, Mutex};

use common::{config::NodeSettings, fsutil};

use self::{cluster::ClusterView, images::ImageStore, status::StatusBoard};

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
}

impl LeaderState {
    /// Sets up the leader on this node, taking the next generation.
    pub fn new(settings: Arc<NodeSettings>) -> std::io::Result<Arc<Self>> {
        let gen_path = settings.data_dir.join("leader-generation");
        let previous: u64 = std::fs::read_to_string(&gen_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let generation = previous + 1;
        fsutil::atomic_write(&gen_path, generation.to_string().as_bytes())?;
        let images = ImageStore::open(&settings.data_dir)?;
        Ok(Arc::new(Self {
            cluster: ClusterView::new(&settings),
            images,
            status: Mutex::new(StatusBoard::default()),
            generation,
            bytes_served: Default::default(),
            settings,
        }))
    }
}
