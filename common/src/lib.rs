//! Shared foundations of molt: domain types, node configuration, TLS and
//! certificate identity, the package format, the session protocol's domain
//! messages and their conversion from and to the wire types.
#![deny(missing_docs)]

pub mod config;
pub mod convert;
pub mod credentials;
pub mod errors;
pub mod fsutil;
pub mod identity;
pub mod package;
pub mod session;
pub mod slots;
pub mod stripe;
pub mod telemetry;
pub mod ticket;
pub mod tls;
pub mod token;
pub mod types;

pub use types::{DeploymentKind, NodeId, Role, Sha256Digest, Version};

/// The gRPC/HTTPS port every agent listens on unless configured otherwise.
pub const DEFAULT_PORT: u16 = 8443;

/// The message a panic carried (`panic!` with a string or a format), or
/// an empty string for any other payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}
