//! Who is calling: the identity from the peer's verified client
//! certificate, attached to every request by [`crate::server`].

use std::net::SocketAddr;

use common::{Role, config::NodeSettings, identity::PeerIdentity};
use tonic::Status;

/// The peer of a connection, attached to each request as an extension.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The identity of a verified client certificate, if one was presented.
    pub identity: Option<PeerIdentity>,
    /// The remote address.
    pub remote: SocketAddr,
}

/// The caller of a gRPC method: a certificate of this cluster with one of
/// the `allowed` roles.
pub fn caller<T>(req: &tonic::Request<T>, cluster: &str, allowed: &[Role]) -> Result<PeerIdentity, Status> {
    let id = req.extensions().get::<Peer>().and_then(|p| p.identity.clone()).ok_or_else(|| {
        common::errors::ErrorKind::Unauthenticated.grpc("a client certificate issued by the cluster CA is required")
    })?;
    if id.cluster != cluster {
        return Err(common::errors::ErrorKind::Forbidden
            .grpc(format!("certificate is for cluster {:?}, this is cluster {cluster:?}", id.cluster)));
    }
    if !allowed.contains(&id.role) {
        return Err(common::errors::ErrorKind::Forbidden.grpc(format!("{id} may not call this method")));
    }
    Ok(id)
}

/// The caller must be a controller of this cluster. Which controller leads
/// changes with elections; a deposed leader's commands are refused by the
/// generation fence, not here.
pub fn leader<T>(req: &tonic::Request<T>, settings: &NodeSettings) -> Result<PeerIdentity, Status> {
    caller(req, &settings.cluster, &[Role::Controller])
}
