//! `molt.v1.Relay`: a node serves an image it holds — staged, or still
//! arriving — to the node the leader sent to it with a signed ticket
//! ([`common::ticket`]). Thin: authorize, find the copy, stream it.
//!
//! Who may fetch: the caller's certificate must name the ticket's fetcher,
//! this node must be the ticket's relay, and the ticket must be a
//! controller's of this cluster and not expired. A ticket carries one
//! stream at a time, of the one stripe it names; all the streams of one
//! fetcher share the transfer's rate cap. At most
//! `limits.fetch_streams_total` relay streams at once.

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicUsize, Ordering},
    },
};

use common::{Role, Sha256Digest, convert, ticket};
use futures_util::{Stream, StreamExt};
use proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{auth, follower::dial::MAX_MESSAGE, image_stream, image_stream::Egress, node::NodeCtx};

/// The gRPC metadata under which the leader names the relay to fetch from
/// (its address), and its ticket (binary).
pub const RELAY_ADDR: &str = "molt-relay";
/// See [`RELAY_ADDR`].
pub const RELAY_TICKET: &str = "molt-relay-ticket-bin";
/// The relay's node id, in the same answer.
pub const RELAY_NODE: &str = "molt-relay-node";
/// The number of stripes the leader cuts an image into, in its refusal of
/// a fetch that asked for another number (`common::stripe`).
pub const RELAY_STRIPES: &str = "molt-stripes";
/// How long a relay the leader named waits for its own copy to begin: the
/// leader plans relays among the nodes it is telling to stage, and a
/// fetcher may ask before its relay has started.
const COPY_START_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The service.
#[derive(Debug, Clone)]
pub struct RelayService {
    ctx: Arc<NodeCtx>,
    open: Arc<AtomicUsize>,
    streams: Arc<Mutex<Streams>>,
}

/// The streams open now: which tickets carry one, and each fetcher's
/// shared rate cap (gone with its last stream).
#[derive(Debug, Default)]
struct Streams {
    tickets: HashSet<Sha256Digest>,
    fetchers: HashMap<String, Weak<Egress>>,
}

impl RelayService {
    /// The tonic server for a node.
    pub fn server(ctx: Arc<NodeCtx>) -> pb::relay_server::RelayServer<Self> {
        pb::relay_server::RelayServer::new(Self { ctx, open: Arc::default(), streams: Arc::default() })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

/// One open relay stream, counted until dropped; its ticket is free again then.
struct Open {
    count: Arc<AtomicUsize>,
    streams: Arc<Mutex<Streams>>,
    ticket: Sha256Digest,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        let mut s = self.streams.lock().expect("relay streams lock");
        s.tickets.remove(&self.ticket);
        s.fetchers.retain(|_, cap| cap.strong_count() > 0);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::relay_server::Relay for RelayService {
    type FetchImageStream = BoxStream<pb::ImageChunk>;

    async fn fetch_image(
        &self,
        req: Request<pb::FetchImageRequest>,
    ) -> Result<Response<Self::FetchImageStream>, Status> {
        let s = &self.ctx.settings;
        let peer = auth::caller(&req, &s.cluster, &[Role::Controller, Role::ServiceEngine])?;
        let r = req.into_inner();
        let sha: Sha256Digest = r
            .sha256
            .parse()
            .map_err(|e: common::types::ParseError| common::errors::ErrorKind::BadRequest.grpc(e.to_string()))?;
        let grant =
            ticket::verify(&s.tls, &r.ticket).map_err(|e| common::errors::ErrorKind::Forbidden.grpc(e.to_string()))?;
        if grant.fetcher != peer.node_id.as_str() || grant.relay != s.node_id.as_str() || grant.sha256 != r.sha256 {
            return Err(common::errors::ErrorKind::Forbidden.grpc(format!(
                "the ticket lets {} fetch image {} from {}; this is {peer} asking {} for image {}",
                grant.fetcher,
                &grant.sha256[..grant.sha256.len().min(12)],
                grant.relay,
                s.node_id,
                sha.short()
            )));
        }
        let stripe = common::stripe::Stripe::new(r.stripe, r.stripes)
            .map_err(|e| common::errors::ErrorKind::BadRequest.grpc(e))?;
        if (grant.stripe, grant.stripes) != (stripe.index(), stripe.count()) {
            return Err(common::errors::ErrorKind::Forbidden.grpc(format!(
                "the ticket is for stripe {} of {}, not {stripe}; ask the leader for this stripe's ticket",
                grant.stripe, grant.stripes
            )));
        }
        let waited = std::time::Instant::now();
        let source = loop {
            match self.ctx.stager.relay_source(&sha) {
                Some(source) => break source,
                None if waited.elapsed() < COPY_START_WAIT => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                None => {
                    return Err(common::errors::ErrorKind::NotFound.grpc(format!(
                        "{} holds no copy of image {}: ask the leader again",
                        s.node_id,
                        sha.short()
                    )));
                }
            }
        };
        if r.offset > source.size {
            return Err(common::errors::ErrorKind::OutOfRange
                .grpc(format!("offset {} is past the image's {} bytes", r.offset, source.size)));
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= s.limits.fetch_streams_total {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(common::errors::ErrorKind::Exhausted.grpc(format!(
                "{} relays {} image streams, its limit; ask the leader again",
                s.node_id, s.limits.fetch_streams_total
            )));
        }
        let ticket = Sha256Digest::of(&r.ticket);
        let fetcher_cap = {
            let mut streams = self.streams.lock().expect("relay streams lock");
            if !streams.tickets.insert(ticket) {
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err(common::errors::ErrorKind::Exhausted.grpc(
                    "this ticket already carries a stream: a ticket is for one stream at a time; ask the leader again",
                ));
            }
            // One cap for all of this fetcher's streams: more tickets do
            // not buy more bandwidth.
            let existing = streams.fetchers.get(&grant.fetcher).and_then(Weak::upgrade);
            let cap = existing.or_else(|| Egress::new(grant.transfer_rate()));
            if let Some(cap) = &cap {
                streams.fetchers.insert(grant.fetcher.clone(), Arc::downgrade(cap));
            }
            cap
        };
        let permit = Open { count: self.open.clone(), streams: self.streams.clone(), ticket };
        let spec = image_stream::StreamSpec {
            file: source.file,
            offset: r.offset,
            stripe,
            size: source.size,
            rate: grant.rate,
            egress: self.ctx.egress.clone().into_iter().chain(fetcher_cap).collect(),
            served: self.ctx.bytes_relayed.clone(),
            growth: source.growth,
            arrived: source.arrived,
            direct: None,
        };
        let rx = image_stream::stream(spec, permit);
        let chunks = ReceiverStream::new(rx).map(|r| r.map(|c| convert::image_chunk(c.offset, c.data)));
        Ok(Response::new(Box::pin(chunks)))
    }
}
