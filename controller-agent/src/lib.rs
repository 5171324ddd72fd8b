//! The controller agent. Every controller runs the follower part (session,
//! staging) from `agent-core`; the leader also serves `molt.v1.Leader`, the
//! REST API and the cluster view.

pub mod api;
pub mod leader;

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

/// Starts a controller agent with validated settings.
pub async fn start(settings: NodeSettings) -> Result<(NodeHandle, Option<std::sync::Arc<leader::LeaderState>>), StartError> {
    let node = Node::new(settings)?;
    let settings = node.ctx.settings.clone();
    let routes = node.base_routes();
    if settings.is_leader() {
        let state = leader::LeaderState::new(settings.clone())?;
        let app = routes
            .add_service(leader::grpc::LeaderService::server(state.clone()))
            .into_axum_router()
            .merge(api::router(state.clone()));
        Ok((node.start(app).await?, Some(state)))
    } else {
        let app = routes.into_axum_router().merge(api::follower_router(settings.leader.addr));
        Ok((node.start(app).await?, None))
    }
}
