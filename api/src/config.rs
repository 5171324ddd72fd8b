//! The configuration as the API shows it: SE groups, virtual services and
//! the cluster-wide rules are the coordinator's own types; a virtual
//! service is shown with where it is placed.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use coordinator::config::{HaMode, HealthGate, Rules, SeGroup, VirtualService};

/// A virtual service as configured, and the SEs that carry it. (Its own
/// fields rather than the configured one flattened: a virtual service
/// sent in a request may carry no field but its own, this answer carries
/// one more.)
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VsView {
    /// Name.
    pub name: String,
    /// The SE group that serves it.
    pub se_group: String,
    /// TCP port it listens on.
    pub port: u16,
    /// SEs it is placed on.
    pub scale: u32,
    /// The SEs that carry it now.
    pub placements: Vec<String>,
}

impl VsView {
    /// `vs`, placed on `placements`.
    pub fn new(vs: &VirtualService, placements: Vec<String>) -> Self {
        let VirtualService { name, se_group, port, scale } = vs.clone();
        Self { name, se_group, port, scale, placements }
    }
}
