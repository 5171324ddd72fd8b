//! A controller that does not lead forwards REST calls to the one that
//! does, as they came (method, path, token, body: an upload's streamed, any
//! other read whole first, at most 64 KiB, by `api::follow_leader`), and
//! streams the answer back: the CLI, scripts and the web page work through any
//! controller. TLS to the leader trusts only the cluster CA, and presents the
//! controller's own certificate: the forwarded call counts against the
//! certificate holders' connection budget, which anonymous callers cannot
//! fill (the certificate grants no API role: the caller's token decides).

use std::{net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    response::{IntoResponse, Response},
};
use common::tls::TlsMaterial;
use http::HeaderValue;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{api::ApiError, raft::Member};

/// Set on a forwarded request: a controller never forwards one again (two
/// controllers that each think the other leads answer 503 instead of
/// bouncing it).
pub const FORWARDED: &str = "x-molt-forwarded-by";

/// Headers of one connection, not of the request.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"];

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("{0}")]
    Connect(String),
}

/// Sends `req` to `leader` and returns its answer; `Err` with why when the
/// leader cannot be reached (it may be gone: an election follows).
pub async fn forward(tls: &TlsMaterial, me: &str, leader: &Member, req: Request) -> Result<Response, String> {
    send(tls, me, leader, req)
        .await
        .map_err(|e| format!("the leader {} at {} cannot be reached: {e}", leader.id, leader.addr))
}

/// The answer to a write that found no leader to go to.
pub fn no_leader(me: &str, why: &str) -> Response {
    ApiError::new(
        common::errors::ErrorKind::Unavailable,
        format!(
            "no quorum: {me} does not lead and {why}; the controllers elect a new leader if it is gone: retry \
             (reads answer from this controller's copy meanwhile)"
        ),
    )
    .into_response()
}

/// A mutual-TLS connection to the node at `addr`, trusting only the cluster CA.
async fn connect(
    tls: &TlsMaterial,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ForwardError> {
    let err = |e: &dyn std::fmt::Display| ForwardError::Connect(e.to_string());
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| err(&"connection timed out"))?
        .map_err(|e| err(&e))?;
    let _ = tcp.set_nodelay(true);
    let config = tls.client_config(alpn).map_err(|e| err(&e))?;
    let name = ServerName::try_from(addr.ip().to_string()).map_err(|e| err(&e))?;
    let handshake = TlsConnector::from(config).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| err(&"the TLS handshake timed out"))?
        .map_err(|e| err(&format!("TLS: {e}")))
}

/// Who answers at `addr`, as its certificate (verified against the cluster
/// CA) says: what a controller is checked to be before it joins the group.
pub async fn identity_at(tls: &TlsMaterial, addr: SocketAddr) -> Result<common::identity::PeerIdentity, String> {
    let stream = connect(tls, addr, &[b"h2"]).await.map_err(|e| e.to_string())?;
    let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("it presented no certificate")?;
    common::identity::PeerIdentity::from_cert_der(cert).map_err(|e| e.to_string())
}

async fn send(tls: &TlsMaterial, me: &str, leader: &Member, req: Request) -> Result<Response, ForwardError> {
    let err = |e: &dyn std::fmt::Display| ForwardError::Connect(e.to_string());
    let addr: SocketAddr = leader.addr.parse().map_err(|e| err(&e))?;
    let tls = connect(tls, addr, &[b"http/1.1"]).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| err(&e))?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    parts.uri = path.parse().map_err(|e| err(&e))?;
    parts.version = http::Version::HTTP_11;
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
    parts.headers.insert(http::header::HOST, HeaderValue::from_str(&leader.addr).map_err(|e| err(&e))?);
    parts.headers.insert(FORWARDED, HeaderValue::from_str(me).map_err(|e| err(&e))?);
    let resp = sender.send_request(http::Request::from_parts(parts, body)).await.map_err(|e| err(&e))?;
    let (mut parts, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}
