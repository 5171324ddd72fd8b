//! The controller agent. Every controller runs the follower part (session,
//! staging) from `agent-core`; the leader also serves `molt.v1.Leader`, the
//! REST API and the cluster view.

pub mod api;
pub mod forward;
pub mod leader;
pub mod metrics;
pub mod raft;
pub mod web;

use agent_core::{Node, NodeHandle, node::NodeError};
use common::config::NodeSettings;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node part.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The leader's state on disk.
    #[error("cannot set up the leader: {0}")]
    Leader(#[from] std::io::Error),
}

/// Starts a controller agent with validated settings. Every controller
/// runs raft, holds a replica of the configuration, journal and history,
/// and serves the REST API and the leader's gRPC service; the leader's
/// tasks run only while raft makes it leader.
pub async fn start(
    settings: NodeSettings,
    reboot: std::sync::Arc<dyn agent_core::reboot::Reboot>,
) -> Result<(NodeHandle, std::sync::Arc<leader::LeaderState>), StartError> {
    let settings = std::sync::Arc::new(settings);
    let state = leader::LeaderState::new(settings.clone()).await?;
    // A leader stages from its own image store: no copy over the network.
    let store = state.clone();
    let local: agent_core::follower::session::LocalImages =
        std::sync::Arc::new(move |sha| store.images.local_copy(sha));
    let node = Node::with_local_images(settings, Some(local), reboot)?;
    let _ = state.egress.set(node.ctx.egress.clone());
    let _ = state.node.set(std::sync::Arc::downgrade(&node.ctx));
    let health = node.health();
    health.set_service_status(proto::v1::raft_server::SERVICE_NAME, tonic_health::ServingStatus::Serving).await;
    let _ = state.health.set(health);
    state.report_leading(false).await;
    // Every leader task ends when the node stops.
    state.stop_with(node.shutdown_token());
    state.follow_leadership();
    raft::prevote::guard(state.consensus.clone(), state.settings.clone(), node.shutdown_token());
    let grpc = node
        .base_routes()
        .add_service(leader::grpc::LeaderService::server(state.clone()))
        .add_service(raft::network::RaftService::server(state.consensus.raft.clone(), state.settings.clone()));
    let http = agent_core::http::by_the_book(api::router(state.clone()).merge(web::router()));
    Ok((node.start(grpc, http).await?, state))
}
