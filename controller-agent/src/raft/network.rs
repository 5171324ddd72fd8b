//! Raft traffic over `molt.v1.Raft` on the one port: the client openraft
//! uses to reach the other controllers, and the service that answers them.
//! Messages are openraft's own types as JSON inside one bytes field; this
//! file is the only place that encodes or decodes them.

use std::{net::SocketAddr, sync::Arc};

use agent_core::{auth, follower::dial};
use common::{Role, config::NodeSettings};
use openraft::{
    Raft, RaftNetwork, RaftNetworkFactory,
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable},
    network::RPCOption,
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
        VoteResponse,
    },
};
use proto::v1 as pb;
use serde::{Serialize, de::DeserializeOwned};
use tonic::{Request, Response, Status, transport::Channel};

use super::{Member, TypeConfig};

type Nid = u64;

/// Makes a client per peer controller.
#[derive(Debug, Clone)]
pub struct Network {
    settings: Arc<NodeSettings>,
}

impl Network {
    /// Clients dial with this node's certificate.
    pub fn new(settings: Arc<NodeSettings>) -> Self {
        Self { settings }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: Nid, node: &Member) -> Peer {
        Peer { settings: self.settings.clone(), target, addr: node.addr.parse().ok(), channel: None }
    }
}

/// One peer controller.
#[derive(Debug)]
pub struct Peer {
    settings: Arc<NodeSettings>,
    target: Nid,
    addr: Option<SocketAddr>,
    channel: Option<Channel>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<Nid, Member, RaftError<Nid, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |e: String| RPCError::Unreachable(Unreachable::new(&Failed(e)));
        let addr = self.addr.ok_or_else(|| unreachable(format!("raft peer {} has no valid address", self.target)))?;
        let channel = match &self.channel {
            Some(c) => c.clone(),
            None => {
                let c = dial::endpoint(&self.settings, addr).map_err(|e| unreachable(e.to_string()))?.connect_lazy();
                self.channel = Some(c.clone());
                c
            }
        };
        let mut client = pb::raft_client::RaftClient::new(channel)
            .max_decoding_message_size(dial::MAX_MESSAGE)
            .max_encoding_message_size(dial::MAX_MESSAGE);
        let mut msg = Request::new(pb::RaftMessage { json: serde_json::to_vec(req).expect("serializes") });
        // The member this is meant for: whoever answers at the address
        // checks that it is that member (a wrong address in the membership
        // is refused there, not taken as the member's vote or copy).
        msg.metadata_mut().insert(TO_MEMBER, self.target.to_string().parse().expect("digits are a valid header"));
        let call = async {
            match method {
                "append_entries" => client.append_entries(msg).await,
                "vote" => client.vote(msg).await,
                _ => client.install_snapshot(msg).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => return Err(unreachable(format!("{method} to {addr} timed out"))),
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                self.channel = None;
                return Err(unreachable(format!("{addr}: {}", s.message())));
            }
            Ok(Err(s)) => {
                return Err(RPCError::Network(NetworkError::new(&Failed(format!("{addr}: {}", s.message())))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let answer: Result<Resp, RaftError<Nid, E>> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&Failed(format!("bad raft reply from {addr}: {e}")))))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<Nid>, RPCError<Nid, Member, RaftError<Nid>>> {
        self.call("append_entries", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<Nid>, RPCError<Nid, Member, RaftError<Nid, InstallSnapshotError>>> {
        self.call("install_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Nid>,
        option: RPCOption,
    ) -> Result<VoteResponse<Nid>, RPCError<Nid, Member, RaftError<Nid>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// Metadata naming the raft member a message is meant for.
const TO_MEMBER: &str = "x-molt-raft-to";

/// `molt.v1.Raft`: answers the other controllers. Only a controller
/// certificate of this cluster may call it.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft<TypeConfig>,
    settings: Arc<NodeSettings>,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}

impl RaftService {
    /// The tonic server.
    pub fn server(raft: Raft<TypeConfig>, settings: Arc<NodeSettings>) -> pb::raft_server::RaftServer<Self> {
        pb::raft_server::RaftServer::new(Self { raft, settings })
            .max_decoding_message_size(dial::MAX_MESSAGE)
            .max_encoding_message_size(dial::MAX_MESSAGE)
    }

    fn decode<T: DeserializeOwned>(&self, req: Request<pb::RaftMessage>) -> Result<T, Status> {
        let caller = auth::caller(&req, &self.settings.cluster, &[Role::Controller])?;
        let me = super::raft_id(&self.settings.node_id);
        if let Some(to) =
            req.metadata().get(TO_MEMBER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
            && to != me
        {
            tracing::warn!(caller = %caller.node_id, to, "refused a raft message meant for another member");
            return Err(common::errors::ErrorKind::PreconditionFailed.grpc(format!(
                "this is controller {} (raft member {me}), not raft member {to}: the group's membership names the wrong \
                 address for that member",
                self.settings.node_id
            )));
        }
        // Only a member of the group as this controller knows it (voter or
        // learner): a controller certificate that is not, or no longer, one
        // (removed, or issued for a node never added) cannot force an
        // election. A controller that knows no members yet (one being
        // added, before the leader's first entries) takes any controller.
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let mut members = membership.nodes().map(|(id, _)| *id).peekable();
        if members.peek().is_some() && !members.any(|id| id == super::raft_id(&caller.node_id)) {
            tracing::warn!(caller = %caller.node_id, "refused a raft message from a controller that is not a member");
            return Err(common::errors::ErrorKind::Forbidden.grpc(format!(
                "{} is not a member of this cluster's controller group; add it with `molt cluster add-controller`",
                caller.node_id
            )));
        }
        serde_json::from_slice(&req.into_inner().json)
            .map_err(|e| common::errors::ErrorKind::BadRequest.grpc(format!("malformed raft message: {e}")))
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Response<pb::RaftMessage>, Status> {
    Ok(Response::new(pb::RaftMessage { json: serde_json::to_vec(v).expect("serializes") }))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.decode(req)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: VoteRequest<Nid> = self.decode(req)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.decode(req)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
