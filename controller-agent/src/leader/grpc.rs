//! `molt.v1.Leader`: thin tonic layer over the cluster view and the image
//! store.

use std::{pin::Pin, sync::Arc};

use common::{
    Role, Sha256Digest, convert,
    session::{LeaderMessage, Welcome},
};
use futures_util::{Stream, StreamExt};
use proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use super::LeaderState;
use agent_core::{auth, follower::dial::MAX_MESSAGE, image_stream};

/// The service.
#[derive(Debug, Clone)]
pub struct LeaderService {
    state: Arc<LeaderState>,
}

impl LeaderService {
    /// The tonic server for `state`.
    pub fn server(state: Arc<LeaderState>) -> pb::leader_server::LeaderServer<Self> {
        pb::leader_server::LeaderServer::new(Self { state })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

/// The answer of a controller that does not lead: `UNAVAILABLE`, with the
/// leader's address in the `molt-leader` metadata when it is known, so the
/// agent dials it next.
pub fn not_leader(state: &LeaderState) -> Status {
    match state.consensus.leader().filter(|m| m.id != state.settings.node_id.as_str()) {
        Some(m) => {
            let mut s =
                common::errors::ErrorKind::Unavailable.grpc(format!("not the leader: {} leads at {}", m.id, m.addr));
            if let Ok(v) = m.addr.parse() {
                s.metadata_mut().insert(agent_core::follower::session::LEADER_HINT, v);
            }
            s
        }
        None => common::errors::ErrorKind::Unavailable
            .grpc("not the leader, and no leader is known yet: the controllers are electing one"),
    }
}

/// Fetches the whole of image `sha` from the controller at `addr` (one that
/// holds it and does not lead), the bytes in order as they arrive.
pub async fn fetch_from_controller(
    settings: &common::config::NodeSettings,
    addr: std::net::SocketAddr,
    sha: Sha256Digest,
) -> Result<impl Stream<Item = Result<bytes::Bytes, String>> + Unpin, String> {
    let channel = agent_core::follower::dial::connect(settings, addr).await.map_err(|e| format!("dial {addr}: {e}"))?;
    let mut client = pb::leader_client::LeaderClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let request = pb::FetchImageRequest { sha256: sha.to_hex(), offset: 0, ticket: vec![], stripe: 0, stripes: 1 };
    let answer = |s: Status| format!("{:?}: {}", s.code(), s.message());
    let chunks = client.fetch_image(request).await.map_err(answer)?.into_inner();
    let mut next = 0u64;
    Ok(chunks.map(move |r| {
        let c = r.map_err(answer)?;
        if c.offset != next {
            return Err(format!("a chunk at byte {} where byte {next} was due", c.offset));
        }
        next += c.data.len() as u64;
        Ok(c.data)
    }))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::leader_server::Leader for LeaderService {
    type SessionStream = BoxStream<pb::LeaderMessage>;
    type FetchImageStream = BoxStream<pb::ImageChunk>;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let s = &self.state.settings;
        let peer = auth::caller(&req, &s.cluster, &[Role::Controller, Role::ServiceEngine])?;
        if !self.state.leading() {
            return Err(not_leader(&self.state));
        }
        let req_remote = req.extensions().get::<auth::Peer>().map(|p| p.remote);
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| common::errors::ErrorKind::BadRequest.grpc("the session opened without a heartbeat"))?;
        let hb = convert::heartbeat_of(first)?;
        if hb.node_id != peer.node_id || hb.role != peer.role {
            return Err(common::errors::ErrorKind::Forbidden
                .grpc(format!("the heartbeat claims {} {} but the certificate is for {peer}", hb.role, hb.node_id)));
        }
        if let Err(why) = self.state.cluster.check_membership(&hb) {
            warn!(node = %hb.node_id, remote = ?req_remote, "session refused: {why}");
            return Err(common::errors::ErrorKind::Forbidden.grpc(why));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Box<LeaderMessage>>(32);
        let welcome = Welcome {
            leader_id: s.node_id.clone(),
            generation: self.state.generation(),
            heartbeat_interval_ms: s.heartbeat_interval.as_millis() as u32,
        };
        tx.try_send(Box::new(LeaderMessage::Welcome(welcome))).expect("fresh channel has room");
        let node = hb.node_id.clone();
        let session = self.state.cluster.open_session(hb, tx).map_err(|why| {
            warn!(node = %peer.node_id, remote = ?req_remote, "{why}");
            common::errors::ErrorKind::Conflict.grpc(why)
        })?;
        let state = self.state.clone();
        state.clone().spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                match convert::heartbeat_of(m) {
                    Ok(hb) if hb.node_id == node => {
                        if let Err(why) = state.cluster.check_membership(&hb) {
                            warn!(%node, "session ended: {why}");
                            break;
                        }
                        if state.cluster.heartbeat(session, hb) {
                            state.wake.notify_one();
                        }
                    }
                    Ok(hb) => warn!(%node, claimed = %hb.node_id, "heartbeat for another node ignored"),
                    Err(e) => warn!(%node, error = %e, "malformed heartbeat ignored"),
                }
            }
            state.cluster.close_session(&node, session);
            state.wake.notify_one();
        });
        // A node that joins (a rejoin after a reboot, most often) is news.
        self.state.wake.notify_one();
        let out = ReceiverStream::new(rx).map(|m| Ok(pb::LeaderMessage::from(*m)));
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_image(
        &self,
        req: Request<pb::FetchImageRequest>,
    ) -> Result<Response<Self::FetchImageStream>, Status> {
        let peer = auth::caller(&req, &self.state.settings.cluster, &[Role::Controller, Role::ServiceEngine])?;
        let r = req.into_inner();
        let sha: Sha256Digest = r
            .sha256
            .parse()
            .map_err(|e: common::types::ParseError| common::errors::ErrorKind::BadRequest.grpc(e.to_string()))?;
        let stripe = common::stripe::Stripe::new(r.stripe, r.stripes)
            .map_err(|e| common::errors::ErrorKind::BadRequest.grpc(e))?;
        let (permit, path) = match self.state.term() {
            Some(term) => {
                let permit = term.fetch_gate.open(&peer.node_id, &sha)?;
                let path = self.state.image_path(&sha).ok_or_else(|| {
                    common::errors::ErrorKind::NotFound.grpc(format!("the leader holds no image {}", sha.short()))
                })?;
                (Some(permit), path)
            }
            // A controller that leads now asks for an image that was
            // uploaded to this one while it led (see `LeaderState::image`).
            None if peer.role == Role::Controller => {
                let path = self.state.held_image(&sha).await.ok_or_else(|| {
                    common::errors::ErrorKind::NotFound
                        .grpc(format!("this controller does not lead and holds no image {}", sha.short()))
                })?;
                (None, path)
            }
            None => {
                return Err(
                    common::errors::ErrorKind::Unavailable.grpc("this controller does not lead: fetch from the leader")
                );
            }
        };
        let file = std::fs::File::open(&path)
            .map_err(|e| common::errors::ErrorKind::Internal.grpc(format!("cannot read image: {e}")))?;
        let size = file.metadata().map_err(|e| common::errors::ErrorKind::Internal.grpc(e.to_string()))?.len();
        if r.offset > size {
            return Err(common::errors::ErrorKind::OutOfRange
                .grpc(format!("offset {} is past the image's {size} bytes", r.offset)));
        }
        if permit.is_some()
            && let Some(redirect) = self.state.route_fetch(sha, &peer.node_id, stripe)
        {
            return Err(redirect);
        }
        let rate = self.state.stream_rate(stripe);
        let spec = image_stream::StreamSpec {
            file,
            offset: r.offset,
            stripe,
            size,
            rate,
            egress: self.state.egress.get().cloned().flatten().into_iter().collect(),
            served: self.state.bytes_served.clone(),
            growth: None,
            arrived: None,
            direct: common::fsutil::open_direct(&path),
        };
        let rx = image_stream::stream(spec, permit);
        let chunks = ReceiverStream::new(rx).map(|r| r.map(|c| convert::image_chunk(c.offset, c.data)));
        Ok(Response::new(Box::pin(chunks)))
    }
}
