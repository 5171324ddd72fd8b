//! The `Control` service every agent serves: the leader's direct command
//! path. Thin: authorize, convert, hand to the executor.

use std::sync::Arc;

use common::session::Command;
use proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::{auth, node::NodeCtx};

/// `molt.v1.Control`.
#[derive(Debug, Clone)]
pub struct ControlService {
    ctx: Arc<NodeCtx>,
}

impl ControlService {
    /// The service for a node.
    pub fn new(ctx: Arc<NodeCtx>) -> pb::control_server::ControlServer<Self> {
        pb::control_server::ControlServer::new(Self { ctx })
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn execute(&self, req: Request<pb::Command>) -> Result<Response<pb::CommandAck>, Status> {
        let caller = auth::leader(&req, &self.ctx.settings)?;
        let cmd = Command::try_from(req.into_inner())?;
        // Only the controller this node's session found leading, in the
        // generation it announced: another controller's certificate is not
        // a leader's, whatever the generation it claims.
        let commander = self.ctx.commander.lock().expect("commander lock").clone();
        match commander {
            Some((leader, generation)) if leader == caller.node_id && generation == cmd.generation => {}
            other => {
                let leading =
                    other.map_or("no controller (no session)".to_owned(), |(l, g)| format!("{l} in generation {g}"));
                warn!(caller = %caller.node_id, generation = cmd.generation, %leading, command = %cmd.id, "refused a command from a controller that does not lead this node");
                return Err(common::errors::ErrorKind::Forbidden.grpc(format!(
                    "{} may not command this node: it takes commands from the controller its session found leading, {leading}",
                    caller.node_id
                )));
            }
        }
        let result = self.ctx.executor.submit(cmd);
        Ok(Response::new(pb::CommandAck { result: Some(result.into()) }))
    }
}
