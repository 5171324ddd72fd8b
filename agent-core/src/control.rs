//! The `Control` service every agent serves: the leader's direct command
//! path. Thin: authorize, convert, hand to the executor.

use std::sync::Arc;

use common::session::Command;
use proto::v1 as pb;
use tonic::{Request, Response, Status};

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
        auth::leader(&req, &self.ctx.settings)?;
        let cmd = Command::try_from(req.into_inner())?;
        let result = self.ctx.executor.submit(cmd);
        Ok(Response::new(pb::CommandAck { result: Some(result.into()) }))
    }
}
