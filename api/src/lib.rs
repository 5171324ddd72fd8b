//! molt's REST API as types: what operators send ([`requests`]), what the
//! leader answers ([`status`], [`cluster`], [`AuditEntry`]), and every error
//! ([`ErrorBody`]). The server serializes these types, the CLI and the
//! tests deserialize them, and the OpenAPI document
//! (`GET /api/openapi.json`, kept in `api/openapi.json`) is generated from
//! them by the server's routes (`controller_agent::api::openapi`).

pub mod audit;
pub mod cluster;
pub mod config;
pub mod error;
pub mod requests;
pub mod status;

pub use audit::AuditEntry;
pub use cluster::{ClusterDoc, NodeView};
pub use error::ErrorBody;
pub use status::UpgradeStatus;
