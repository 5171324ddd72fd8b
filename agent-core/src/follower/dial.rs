//! Connections to other agents: mutual TLS with this node's certificate,
//! only the cluster CA trusted, 1 MiB HTTP/2 frames for image streams.

use std::{net::SocketAddr, time::Duration};

use common::config::NodeSettings;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Largest gRPC message molt sends or accepts (a 1 MiB chunk plus framing).
pub const MAX_MESSAGE: usize = 4 << 20;

/// An endpoint to the agent at `addr`.
pub fn endpoint(settings: &NodeSettings, addr: SocketAddr) -> Result<Endpoint, tonic::transport::Error> {
    // The certificate in force now: a renewed one is used from the next dial on.
    let m = settings.tls.material();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&m.ca_pem))
        .identity(Identity::from_pem(&m.cert_pem, &m.key_pem));
    // From this node's own address when it listens on one: on a host with
    // several addresses (a local cluster on loopback) the peer, and the
    // network, see which node is talking.
    let local = Some(settings.listen.ip()).filter(|ip| !ip.is_unspecified());
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .local_address(local)
        .tls_config(tls)?
        // Only the receiver's frame size counts for server streams: this is
        // what lets an image arrive at full speed (see shared/perf.md).
        .max_frame_size(1u32 << 20)
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// Connects to the agent at `addr`.
pub async fn connect(settings: &NodeSettings, addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    endpoint(settings, addr)?.connect().await
}
