//! The session with the leader: dial, send a heartbeat every interval,
//! execute the commands that come down, redial with backoff when the
//! session breaks (the leader may be rebooting).

use std::{sync::Arc, time::Duration};

use common::{
    convert,
    session::{Command, LeaderMessage},
};
use futures_util::{FutureExt, StreamExt, future::BoxFuture};
use proto::v1::{FetchImageRequest, leader_client::LeaderClient};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::{
    dial,
    stage::{Chunk, ChunkStream, ImageSource},
};
use crate::node::NodeCtx;

/// Keeps a session with the leader until `shutdown`.
pub async fn run(ctx: Arc<NodeCtx>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session_once(&ctx) => r,
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(leader = %ctx.settings.leader.id, error = %e, "session with the leader failed; redialing");
                } else {
                    debug!(error = %e, "session attempt failed");
                }
            }
        }
        let wait = Duration::from_millis((100u64 << failures.min(5)).min(2_000));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn session_once(ctx: &NodeCtx) -> Result<(), String> {
    let channel = dial::connect(&ctx.settings, ctx.settings.leader.addr).await.map_err(|e| format!("dial: {e:?}"))?;
    let mut client = LeaderClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(convert::agent_message(ctx.heartbeat())).await.map_err(|e| e.to_string())?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await.map_err(|e| e.message().to_owned())?.into_inner();
    info!(leader = %ctx.settings.leader.id, "session established");
    ctx.joined.send_replace(true);
    let mut tick = tokio::time::interval(ctx.settings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let settled = ctx.executor.settled();
    loop {
        tokio::select! {
            _ = settled.notified() => {
                tx.send(convert::agent_message(ctx.heartbeat())).await.map_err(|_| "session closed".to_owned())?;
            }
            _ = tick.tick() => {
                tx.send(convert::agent_message(ctx.heartbeat())).await.map_err(|_| "session closed".to_owned())?;
            }
            msg = inbound.message() => {
                let msg = msg.map_err(|e| e.message().to_owned())?.ok_or("the leader closed the session")?;
                match LeaderMessage::try_from(msg) {
                    Ok(LeaderMessage::Welcome(w)) => {
                        debug!(leader = %w.leader_id, generation = w.generation, "welcomed");
                    }
                    Ok(LeaderMessage::Command(cmd)) => {
                        on_command(ctx, cmd);
                        // Report the new command's state without waiting for the tick.
                        tx.send(convert::agent_message(ctx.heartbeat())).await.map_err(|_| "session closed".to_owned())?;
                    }
                    Err(e) => warn!(error = %e, "ignoring malformed message from the leader"),
                }
            }
        }
    }
}

fn on_command(ctx: &NodeCtx, cmd: Command) {
    ctx.executor.submit(cmd);
}

/// Images this node holds outside its staging area (the leader's store).
pub type LocalImages = Arc<dyn Fn(&common::Sha256Digest) -> Option<std::path::PathBuf> + Send + Sync>;

/// Fetches images from the leader over a connection of their own, so an
/// image stream never queues behind or ahead of the session.
pub struct LeaderImageSource {
    settings: Arc<common::config::NodeSettings>,
    local: Option<LocalImages>,
}

impl std::fmt::Debug for LeaderImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderImageSource").field("leader", &self.settings.leader.addr).finish_non_exhaustive()
    }
}

impl LeaderImageSource {
    /// A source dialing the configured leader, looking in `local` first.
    pub fn new(settings: Arc<common::config::NodeSettings>, local: Option<LocalImages>) -> Self {
        Self { settings, local }
    }
}

impl ImageSource for LeaderImageSource {
    fn local_copy(&self, sha: &common::Sha256Digest) -> Option<std::path::PathBuf> {
        self.local.as_ref().and_then(|f| f(sha))
    }

    fn fetch(&self, sha: common::Sha256Digest, offset: u64) -> BoxFuture<'_, Result<ChunkStream, String>> {
        async move {
            let channel: Channel = dial::connect(&self.settings, self.settings.leader.addr)
                .await
                .map_err(|e| format!("dial {}: {e:?}", self.settings.leader.addr))?;
            let mut client = LeaderClient::new(channel)
                .max_decoding_message_size(dial::MAX_MESSAGE)
                .max_encoding_message_size(dial::MAX_MESSAGE);
            let stream = client
                .fetch_image(FetchImageRequest { sha256: sha.to_hex(), offset })
                .await
                .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
                .into_inner();
            let chunks: ChunkStream = Box::pin(stream.map(|r| {
                r.map(|c| Chunk { offset: c.offset, data: c.data })
                    .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
            }));
            Ok(chunks)
        }
        .boxed()
    }
}
