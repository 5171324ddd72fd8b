//! The Service Engine agent: the follower part of `agent-core` (session,
//! staging, commands). The data plane comes with the SE upgrade work.

use agent_core::{Node, NodeHandle, node::NodeError};
use common::config::NodeSettings;

/// Starts an SE agent with validated settings.
pub async fn start(
    settings: NodeSettings,
    reboot: std::sync::Arc<dyn agent_core::reboot::Reboot>,
) -> Result<NodeHandle, NodeError> {
    let node = Node::new(std::sync::Arc::new(settings), reboot)?;
    let http = agent_core::http::service_engine(node.ctx.clone());
    let grpc = node.base_routes();
    node.start(grpc, http).await
}
