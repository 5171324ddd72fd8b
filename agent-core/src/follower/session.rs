//! The session with the leader: dial, send a heartbeat every interval,
//! execute the commands that come down, redial with backoff when the
//! session breaks (the leader may be rebooting).

use std::{sync::Arc, time::Duration};

use common::{
    convert,
    session::{Command, LeaderMessage},
    stripe::Stripe,
};
use futures_util::{FutureExt, StreamExt, future::BoxFuture};
use proto::v1::{FetchImageRequest, leader_client::LeaderClient, relay_client::RelayClient};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::{
    dial,
    stage::{Chunk, ChunkStream, FetchError, ImageSource, LocalCopy},
};
use crate::node::NodeCtx;

/// The gRPC metadata key under which a controller that does not lead
/// names the leader's address.
pub const LEADER_HINT: &str = "molt-leader";

/// The address of the controller this node believes leads: the one
/// `node.toml` names first, then whatever a controller answered it with,
/// or the next controller in the list when the last one could not be
/// reached.
#[derive(Debug, Clone)]
pub struct LeaderAddr {
    current: Arc<std::sync::Mutex<std::net::SocketAddr>>,
    controllers: Arc<Vec<std::net::SocketAddr>>,
}

impl LeaderAddr {
    /// Starts at the leader `settings` name.
    pub fn new(settings: &common::config::NodeSettings) -> Self {
        Self {
            current: Arc::new(std::sync::Mutex::new(settings.leader.addr)),
            controllers: Arc::new(settings.controllers.iter().map(|c| c.addr).collect()),
        }
    }

    /// The address to dial.
    pub fn get(&self) -> std::net::SocketAddr {
        *self.current.lock().expect("leader lock")
    }

    fn set(&self, addr: std::net::SocketAddr) {
        *self.current.lock().expect("leader lock") = addr;
    }

    /// After a failure: the hinted leader if the answer named one, else
    /// the next controller. Returns whether a hint was followed.
    fn follow(&self, hint: Option<std::net::SocketAddr>) -> bool {
        if let Some(h) = hint {
            self.set(h);
            return true;
        }
        let cur = self.get();
        let i = self.controllers.iter().position(|a| *a == cur).map_or(0, |i| (i + 1) % self.controllers.len());
        self.set(self.controllers[i]);
        false
    }
}

/// Why a session attempt ended.
struct Ended {
    message: String,
    /// The leader a controller that does not lead pointed to.
    hint: Option<std::net::SocketAddr>,
    /// The session had been established (the leader went away later).
    established: bool,
}

impl From<String> for Ended {
    fn from(message: String) -> Self {
        Self { message, hint: None, established: false }
    }
}

impl From<&str> for Ended {
    fn from(message: &str) -> Self {
        Self { message: message.to_owned(), hint: None, established: false }
    }
}

fn status_ended(s: tonic::Status) -> Ended {
    let hint = s.metadata().get(LEADER_HINT).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Ended { message: s.message().to_owned(), hint, established: false }
}

/// Keeps a session with the leader until `shutdown`.
pub async fn run(ctx: Arc<NodeCtx>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session_once(&ctx) => r,
        };
        let mut hinted = false;
        match outcome {
            Ok(()) => failures = 0,
            Err(e) => {
                let was = ctx.leader.get();
                if e.established {
                    failures = 0;
                }
                hinted = ctx.leader.follow(e.hint) && e.hint != Some(was);
                if hinted {
                    debug!(from = %was, to = %ctx.leader.get(), "a controller named the leader; dialing it");
                } else {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(10) {
                        warn!(controller = %was, error = %e.message, "session with the leader failed; trying the next controller");
                    } else {
                        debug!(error = %e.message, "session attempt failed");
                    }
                }
            }
        }
        // A named leader is dialed at once (a short pause keeps two
        // controllers with stale views from bouncing a node fast).
        let wait = if hinted {
            Duration::from_millis(50)
        } else {
            Duration::from_millis((100u64 << failures.min(5)).min(2_000))
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn session_once(ctx: &NodeCtx) -> Result<(), Ended> {
    let addr = ctx.leader.get();
    let channel = dial::connect(&ctx.settings, addr).await.map_err(|e| format!("dial {addr}: {e:?}"))?;
    let mut client = LeaderClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    send_heartbeat(ctx, &tx).await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await.map_err(status_ended)?.into_inner();
    info!(leader = %addr, "session established");
    let r = session_loop(ctx, &tx, &mut inbound).await;
    // Whoever leads next commands only once its own session welcomed us.
    *ctx.commander.lock().expect("commander lock") = None;
    r.map_err(|message| Ended { message, hint: None, established: true })
}

async fn session_loop(
    ctx: &NodeCtx,
    tx: &tokio::sync::mpsc::Sender<proto::v1::AgentMessage>,
    inbound: &mut tonic::Streaming<proto::v1::LeaderMessage>,
) -> Result<(), String> {
    ctx.joined.send_replace(true);
    let mut tick = tokio::time::interval(ctx.settings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let settled = ctx.executor.settled();
    loop {
        tokio::select! {
            _ = settled.notified() => send_heartbeat(ctx, tx).await?,
            _ = tick.tick() => send_heartbeat(ctx, tx).await?,
            msg = inbound.message() => {
                let msg = msg.map_err(|e| e.message().to_owned())?.ok_or("the leader closed the session")?;
                match LeaderMessage::try_from(msg) {
                    Ok(LeaderMessage::Welcome(w)) => {
                        debug!(leader = %w.leader_id, generation = w.generation, "welcomed");
                        *ctx.commander.lock().expect("commander lock") = Some((w.leader_id.clone(), w.generation));
                    }
                    Ok(LeaderMessage::Command(cmd)) => {
                        on_command(ctx, cmd);
                        // Report the new command's state without waiting for the tick.
                        send_heartbeat(ctx, tx).await?;
                    }
                    Err(e) => warn!(error = %e, "ignoring malformed message from the leader"),
                }
            }
        }
    }
}

/// Sends a heartbeat, and tells the executor which results it reported.
async fn send_heartbeat(ctx: &NodeCtx, tx: &tokio::sync::mpsc::Sender<proto::v1::AgentMessage>) -> Result<(), String> {
    let recorded = ctx.executor.recorded();
    tx.send(convert::agent_message(ctx.heartbeat())).await.map_err(|_| "session closed".to_owned())?;
    ctx.executor.reported(recorded);
    Ok(())
}

fn on_command(ctx: &NodeCtx, cmd: Command) {
    ctx.executor.submit(cmd);
}

/// Images this node holds outside its staging area (the leader's store).
pub type LocalImages = Arc<dyn Fn(&common::Sha256Digest) -> Option<LocalCopy> + Send + Sync>;

/// Fetches images from the leader over a connection of their own, so an
/// image stream never queues behind or ahead of the session.
pub struct LeaderImageSource {
    settings: Arc<common::config::NodeSettings>,
    leader: LeaderAddr,
    local: Option<LocalImages>,
}

impl std::fmt::Debug for LeaderImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderImageSource").field("leader", &self.leader.get()).finish_non_exhaustive()
    }
}

impl LeaderImageSource {
    /// A source dialing the leader, looking in `local` first.
    pub fn new(settings: Arc<common::config::NodeSettings>, leader: LeaderAddr, local: Option<LocalImages>) -> Self {
        Self { settings, leader, local }
    }
}

impl ImageSource for LeaderImageSource {
    fn local_copy(&self, sha: &common::Sha256Digest) -> Option<LocalCopy> {
        self.local.as_ref().and_then(|f| f(sha))
    }

    fn fetch(
        &self,
        sha: common::Sha256Digest,
        offset: u64,
        stripe: Stripe,
    ) -> BoxFuture<'_, Result<ChunkStream, FetchError>> {
        async move {
            let failed = FetchError::Failed;
            let request = |ticket| FetchImageRequest {
                sha256: sha.to_hex(),
                offset,
                ticket,
                stripe: stripe.index(),
                stripes: stripe.count(),
            };
            let addr = self.leader.get();
            let channel: Channel =
                dial::connect(&self.settings, addr).await.map_err(|e| failed(format!("dial {addr}: {e:?}")))?;
            let mut client = LeaderClient::new(channel)
                .max_decoding_message_size(dial::MAX_MESSAGE)
                .max_encoding_message_size(dial::MAX_MESSAGE);
            let status = match client.fetch_image(request(vec![])).await {
                Ok(stream) => return Ok(chunk_stream(stream.into_inner(), String::new())),
                Err(status) => status,
            };
            if let Some(k) = stripes_of(&status) {
                return Err(FetchError::Restripe(k));
            }
            // The leader may send this node to a relay, with a ticket.
            let Some((relay, node, ticket)) = relay_of(&status) else {
                return Err(failed(format!("{:?}: {}", status.code(), status.message())));
            };
            debug!(sha = %sha.short(), %node, %relay, offset, %stripe, "fetching the image from a relay");
            let channel: Channel = dial::connect(&self.settings, relay)
                .await
                .map_err(|e| failed(format!("dial relay {node} at {relay}: {e:?}")))?;
            let mut client = RelayClient::new(channel)
                .max_decoding_message_size(dial::MAX_MESSAGE)
                .max_encoding_message_size(dial::MAX_MESSAGE);
            let stream = client
                .fetch_image(request(ticket))
                .await
                .map_err(|e| failed(format!("relay {node}: {:?}: {}", e.code(), e.message())))?
                .into_inner();
            Ok(chunk_stream(stream, format!("relay {node}: ")))
        }
        .boxed()
    }
}

/// The number of stripes a leader's refusal asks for.
fn stripes_of(status: &tonic::Status) -> Option<u32> {
    let k = status.metadata().get(crate::relay::RELAY_STRIPES)?.to_str().ok()?.parse().ok()?;
    (status.code() == tonic::Code::FailedPrecondition && k >= 1).then_some(k)
}

/// The relay a leader's answer names: its address, node id and the ticket.
fn relay_of(status: &tonic::Status) -> Option<(std::net::SocketAddr, String, Vec<u8>)> {
    let m = status.metadata();
    let addr = m.get(crate::relay::RELAY_ADDR)?.to_str().ok()?.parse().ok()?;
    let node = m.get(crate::relay::RELAY_NODE).and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
    let ticket = m.get_bin(crate::relay::RELAY_TICKET)?.to_bytes().ok()?.to_vec();
    Some((addr, node, ticket))
}

fn chunk_stream(stream: tonic::Streaming<proto::v1::ImageChunk>, from: String) -> ChunkStream {
    Box::pin(stream.map(move |r| {
        r.map(|c| Chunk { offset: c.offset, data: c.data })
            .map_err(|e| format!("{from}{:?}: {}", e.code(), e.message()))
    }))
}
