//! The one port. A TLS listener whose connections carry both gRPC (HTTP/2,
//! client certificate required) and HTTPS for the REST API and web page
//! (HTTP/1.1 or HTTP/2, token). Each request carries the connection's
//! [`Peer`]. A request is gRPC by its content type ([`is_grpc`]): those go to
//! the gRPC services, and without a verified client certificate are answered
//! `UNAUTHENTICATED` before they reach any; every other request goes to the
//! HTTP routes, which answer what they do not serve with JSON 404 and 405
//! ([`crate::http`]).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::body::Body;
use common::{config::Limits, credentials::Credentials, identity::PeerIdentity};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::auth::Peer;

/// HTTP/2 keep-alive: a peer that does not answer a ping in time is gone.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// HTTP/2 frame size we accept: large frames roughly double upload throughput.
const MAX_FRAME: u32 = 1 << 20;
/// The largest request head (request line and headers) the server reads.
const MAX_HEAD: usize = 16 * 1024;

/// Connections without a cluster certificate, per source address.
#[derive(Debug, Default)]
struct AnonymousCount(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection; uncounted when dropped.
struct AnonymousSlot(Arc<AnonymousCount>, IpAddr);

impl AnonymousCount {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AnonymousSlot> {
        let mut m = self.0.lock().expect("connection count lock");
        let n = m.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AnonymousSlot(self.clone(), ip))
    }
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().expect("connection count lock");
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// The three connection budgets (see [`serve`]).
#[derive(Clone)]
struct Budgets {
    handshakes: Arc<Semaphore>,
    certified: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
}

/// Connections closed over a budget, logged at powers of two so that a
/// flood does not flood the log.
#[derive(Default)]
struct Refusals(std::sync::atomic::AtomicU64);

impl Refusals {
    fn note(&self, remote: std::net::SocketAddr, limit: &str, max: usize) {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!(%remote, refused = n, limit, max, "connection budget full; new connections over it are closed at once");
        }
    }
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Default)]
struct Activity {
    state: Mutex<(usize, Option<tokio::time::Instant>)>,
}

/// One request in flight; ended when dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.state.lock().expect("activity lock").0 += 1;
        Busy(self.clone())
    }

    /// Completes once no request has been in flight for `limit` (counted
    /// from the connection's start when it never had one).
    async fn idle_for(&self, limit: Duration) {
        let start = tokio::time::Instant::now();
        loop {
            let (inflight, last) = *self.state.lock().expect("activity lock");
            let since = last.unwrap_or(start);
            if inflight == 0 && since.elapsed() >= limit {
                return;
            }
            let wait = if inflight == 0 { limit.saturating_sub(since.elapsed()) } else { limit };
            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("activity lock");
        s.0 -= 1;
        s.1 = Some(tokio::time::Instant::now());
    }
}

/// Whether a request is gRPC: its content type is `application/grpc` (or a
/// `+proto`/`+json` variant of it), as gRPC over HTTP/2 says; media types
/// compare without case.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.len() >= 16 && ct[..16].eq_ignore_ascii_case("application/grpc"))
}

/// What the one port serves: the gRPC services and the HTTP routes.
#[derive(Clone, Debug)]
pub struct Apps {
    /// Requests whose content type says gRPC ([`is_grpc`]).
    pub grpc: axum::Router,
    /// Every other request.
    pub http: axum::Router,
}

/// Serves `apps` on `listener` until `shutdown` is cancelled; then every
/// open connection is dropped at once (as a power cut or reboot would).
///
/// Connections are counted in three budgets ([`Limits`]), so that callers
/// without a cluster certificate cannot take what the cluster's own nodes
/// need:
/// - in its TLS handshake (`max_handshakes` in all, each within
///   `handshake_timeout`): nobody is known yet;
/// - after it, with a cluster certificate: `max_connections`;
/// - after it, without one (REST with a token, the page, `/metrics`):
///   `max_anonymous` in all; such a connection is closed once it has had no
///   request in flight for `header_timeout`, over HTTP/2 as over HTTP/1.1.
///
/// From one source address, at most `max_anonymous_per_ip` connections are
/// in their handshake or anonymous, and at most `max_handshakes_per_ip` in
/// their handshake: a few addresses cannot fill the handshake budget that
/// certificate holders need to get in. A connection over any budget is closed
/// at once, so the accept queue never fills. Request headers must arrive
/// within `header_timeout`; HTTP/2 peers must answer keep-alive pings.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    creds: Arc<Credentials>,
    apps: Apps,
    shutdown: CancellationToken,
    limits: Limits,
    reloaded: tokio::sync::watch::Receiver<u64>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    let budgets = Budgets {
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
        certified: Arc::new(Semaphore::new(limits.max_connections)),
        anonymous: Arc::new(Semaphore::new(limits.max_anonymous)),
    };
    let per_address = Arc::new(AnonymousCount::default());
    let handshakes_per_address = Arc::new(AnonymousCount::default());
    let refused = Arc::new(Refusals::default());
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(handshake) = budgets.handshakes.clone().try_acquire_owned() else {
                    refused.note(remote, "handshakes", limits.max_handshakes);
                    continue;
                };
                let Some(slot) = per_address.take(remote.ip(), limits.max_anonymous_per_ip) else {
                    refused.note(remote, "max_anonymous_per_ip", limits.max_anonymous_per_ip);
                    continue;
                };
                let Some(shaking) = handshakes_per_address.take(remote.ip(), limits.max_handshakes_per_ip) else {
                    refused.note(remote, "max_handshakes_per_ip", limits.max_handshakes_per_ip);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let apps = apps.clone();
                let limits = limits.clone();
                let creds = creds.clone();
                let reloaded = reloaded.clone();
                let budgets = budgets.clone();
                let refused = refused.clone();
                conns.spawn(async move {
                    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%remote, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let end_entity = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
                    let identity = end_entity.as_ref().and_then(|c| PeerIdentity::from_cert_der(c).ok());
                    drop((handshake, shaking));
                    // A cluster certificate moves the connection to the
                    // certificate holders' budget and lifts the per-address
                    // count (nodes behind one address, such as a local
                    // cluster, are many).
                    let (budget, name, max) = match identity {
                        Some(_) => (&budgets.certified, "max_connections", limits.max_connections),
                        None => (&budgets.anonymous, "max_anonymous", limits.max_anonymous),
                    };
                    let Ok(_permit) = budget.clone().try_acquire_owned() else {
                        refused.note(remote, name, max);
                        return;
                    };
                    let anonymous = identity.is_none();
                    let _slot = anonymous.then_some(slot);
                    let activity = Arc::new(Activity::default());
                    let peer = Peer { identity, remote };
                    let svc = tower::service_fn({
                        let activity = activity.clone();
                        move |mut req: http::Request<hyper::body::Incoming>| {
                        let apps = apps.clone();
                        let peer = peer.clone();
                        let busy = activity.begin();
                        async move {
                            let _busy = busy;
                            let grpc_call = is_grpc(req.headers());
                            if grpc_call && peer.identity.is_none() {
                                return Ok::<_, Infallible>(
                                    common::errors::ErrorKind::Unauthenticated.grpc(
                                        "gRPC needs a client certificate issued by the cluster CA",
                                    )
                                    .into_http::<Body>(),
                                );
                            }
                            req.extensions_mut().insert(peer);
                            let app = if grpc_call { apps.grpc } else { apps.http };
                            app.oneshot(req.map(Body::new)).await
                        }
                    }});
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // A request line and headers of at most 16 KiB (hyper
                    // answers 431 beyond), over HTTP/1.1 and HTTP/2 alike.
                    builder
                        .http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_timeout)
                        .max_buf_size(MAX_HEAD);
                    builder
                        .http2()
                        .max_header_list_size(MAX_HEAD as u32)
                        .timer(TokioTimer::new())
                        .keep_alive_interval(H2_KEEPALIVE)
                        .keep_alive_timeout(H2_KEEPALIVE)
                        .max_frame_size(MAX_FRAME)
                        .max_concurrent_streams(256);
                    let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
                    tokio::pin!(conn);
                    let idle = async {
                        if anonymous { activity.idle_for(limits.header_timeout).await } else { std::future::pending().await }
                    };
                    tokio::select! {
                        r = conn.as_mut() => if let Err(e) = r {
                            debug!(%remote, error = %e, "connection ended with an error");
                        },
                        () = idle => {
                            // GOAWAY over HTTP/2: a stream still sending
                            // its answer ends first (bounded by the same
                            // deadline); a new one is refused.
                            debug!(%remote, "closing an idle connection without a certificate");
                            conn.as_mut().graceful_shutdown();
                            if let Err(e) = tokio::time::timeout(limits.header_timeout, conn).await.unwrap_or(Ok(())) {
                                debug!(%remote, error = %e, "connection ended with an error");
                            }
                        }
                        () = revoked_later(&creds, end_entity.as_deref(), reloaded) => {
                            warn!(%remote, "closing a connection whose certificate was revoked");
                        }
                    }
                });
            }
        }
    }
    conns.shutdown().await;
}

/// Completes once the connection's certificate is revoked (never for a
/// connection without one): revocation also ends connections already open.
/// Checked when the node's credentials are reloaded (`reloaded` changes),
/// not on a timer: an open connection costs nothing meanwhile.
async fn revoked_later(
    creds: &Credentials,
    end_entity: Option<&[u8]>,
    mut reloaded: tokio::sync::watch::Receiver<u64>,
) {
    let Some(der) = end_entity else { return std::future::pending().await };
    let node = PeerIdentity::from_cert_der(der).map(|i| i.node_id.to_string()).unwrap_or_default();
    let serial = common::identity::serial_hex(der).unwrap_or_default();
    loop {
        if reloaded.changed().await.is_err() {
            return std::future::pending().await;
        }
        if creds.revocations().revokes(&node, &serial) {
            return;
        }
    }
}
