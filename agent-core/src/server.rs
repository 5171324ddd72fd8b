//! The one port. A TLS listener whose connections carry both gRPC (HTTP/2,
//! client certificate required) and HTTPS for the REST API and web page
//! (HTTP/1.1 or HTTP/2, token). Each request carries the connection's
//! [`Peer`]; a request for any path but the REST API, `/metrics` and the web
//! page ([`needs_certificate`]) without a verified client certificate is
//! answered `UNAUTHENTICATED` before it reaches any service.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::body::Body;
use common::identity::PeerIdentity;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info};

use crate::auth::Peer;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 frame size we accept: large frames roughly double upload throughput.
const MAX_FRAME: u32 = 1 << 20;

/// Serves `app` on `listener` until `shutdown` is cancelled; then every
/// open connection is dropped at once (as a power cut or reboot would).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
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
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let app = app.clone();
                conns.spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%remote, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| PeerIdentity::from_cert_der(c).ok());
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
                    builder.http2().max_frame_size(MAX_FRAME).max_concurrent_streams(256);
                    if let Err(e) = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc)).await {
                        debug!(%remote, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    conns.shutdown().await;
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
