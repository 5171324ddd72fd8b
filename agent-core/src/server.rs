//! The one port. A TLS listener whose connections carry both gRPC (HTTP/2,
//! client certificate required) and HTTPS for the REST API and web page
//! (HTTP/1.1 or HTTP/2, token). Each request carries the connection's
//! [`Peer`]; a request for any path but the REST API, `/metrics` and the web
//! page ([`needs_certificate`]) without a verified client certificate is
//! answered `UNAUTHENTICATED` before it reaches any service.

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

/// Serves `app` on `listener` until `shutdown` is cancelled; then every
/// open connection is dropped at once (as a power cut or reboot would).
///
/// Limits ([`Limits`]): at most `max_connections` at once; at most
/// `max_anonymous_per_ip` per source address until a connection has shown a
/// cluster certificate (a connection over either cap is closed at once, so
/// the accept queue never fills); the TLS handshake within
/// `handshake_timeout`; request headers within `header_timeout`, which also
/// ends an idle HTTP/1.1 connection; HTTP/2 peers must answer keep-alive pings.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    creds: Arc<Credentials>,
    app: axum::Router,
    shutdown: CancellationToken,
    limits: Limits,
    reloaded: tokio::sync::watch::Receiver<u64>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let anonymous = Arc::new(AnonymousCount::default());
    let mut refused = 0u64;
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
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        warn!(%remote, refused, max = limits.max_connections, "connection limit reached; connections are closed at once");
                    }
                    continue;
                };
                let Some(slot) = anonymous.take(remote.ip(), limits.max_anonymous_per_ip) else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        warn!(%remote, refused, max = limits.max_anonymous_per_ip, "per-address limit reached for connections without a certificate");
                    }
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let app = app.clone();
                let limits = limits.clone();
                let creds = creds.clone();
                let reloaded = reloaded.clone();
                conns.spawn(async move {
                    let _permit = permit;
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
                    // A cluster certificate lifts the per-address count (nodes
                    // behind one address, such as a local cluster, are many).
                    let _slot = identity.is_none().then_some(slot);
                    let peer = Peer { identity, remote };
                    let svc = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                        let app = app.clone();
                        let peer = peer.clone();
                        async move {
                            if needs_certificate(req.uri().path()) && peer.identity.is_none() {
                                return Ok::<_, Infallible>(
                                    tonic::Status::unauthenticated(
                                        "gRPC needs a client certificate issued by the cluster CA",
                                    )
                                    .into_http::<Body>(),
                                );
                            }
                            req.extensions_mut().insert(peer);
                            app.oneshot(req.map(Body::new)).await
                        }
                    });
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
                    tokio::select! {
                        r = conn => if let Err(e) = r {
                            debug!(%remote, error = %e, "connection ended with an error");
                        },
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

/// Paths served to a caller without a client certificate: the REST API and
/// `/metrics` (token), the web page (nothing secret). Everything else — every
/// gRPC service, health and reflection included — needs a certificate of the
/// cluster CA. The gate is by route, so no header (such as a content-type
/// that does not say gRPC) can route around it.
pub fn needs_certificate(path: &str) -> bool {
    let open = path == "/" || path == "/metrics" || path.starts_with("/api/") || path.starts_with("/ui/");
    !open
}
