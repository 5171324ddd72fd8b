//! What operators send, and what the server answers that is not the
//! status or the cluster.

use coordinator::journal::ActionOnError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the operator asked for (`POST /api/cluster/upgrade`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// `controller://...` path of the image.
    pub image_path: String,
    /// In a mixed cluster, the docker nodes' image (`image_path` is then the vm nodes').
    #[serde(default)]
    pub docker_image_path: Option<String>,
    /// Upgrade even from below the image's minimum compatible version
    /// (makes the upgrade disruptive).
    #[serde(default)]
    pub force: bool,
    /// Upgrade each SE group's SEs together, moving no traffic.
    #[serde(default)]
    pub disruptive: bool,
    /// Run the checks only; change nothing.
    #[serde(default)]
    pub prechecks_only: bool,
    /// What an SE failure does to its group: `suspend` (the default),
    /// `continue` or `rollback`.
    #[serde(default = "suspend")]
    pub action_on_error: ActionOnError,
    /// Only these SE groups (a canary); the others stay on the old version
    /// until `molt upgrade segroup`.
    #[serde(default)]
    pub se_groups: Vec<String>,
    /// This SE group first, alone; then the upgrade holds (paused).
    #[serde(default)]
    pub pause_after: Option<String>,
    /// The plan approved (`prechecks_only` returns it): refused with 409 if
    /// the plan is different now.
    #[serde(default)]
    pub plan_hash: Option<String>,
    /// Upgrade profile: SEs of each group upgraded at once (default: each
    /// group's own `max_parallel_ses`, else 1).
    #[serde(default)]
    pub max_parallel_ses: Option<u32>,
    /// Upgrade profile: SE groups `parallel` (the default) or `series`.
    #[serde(default)]
    pub se_group_order: Option<SeGroupOrder>,
    /// Upgrade profile: nodes staging the image at once (default: all).
    #[serde(default)]
    pub max_transfers: Option<u32>,
    /// Upgrade profile: each image transfer's cap in MiB/s (default: none).
    #[serde(default)]
    pub transfer_rate_mib: Option<u64>,
}

impl UpgradeRequest {
    /// An upgrade to the image at `image_path`, with every option at its default.
    pub fn new(image_path: String) -> Self {
        Self {
            image_path,
            docker_image_path: None,
            force: false,
            disruptive: false,
            prechecks_only: false,
            action_on_error: ActionOnError::Suspend,
            se_groups: vec![],
            pause_after: None,
            plan_hash: None,
            max_parallel_ses: None,
            se_group_order: None,
            max_transfers: None,
            transfer_rate_mib: None,
        }
    }
}

fn suspend() -> ActionOnError {
    ActionOnError::Suspend
}

/// The answer to `prechecks_only`: what the upgrade would do.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// Always true: this is a plan, nothing started.
    pub prechecks_only: bool,
    /// Whether it would start.
    pub ok: bool,
    /// The pre-checks' verdicts.
    pub prechecks: Vec<coordinator::request::Precheck>,
    /// Each virtual service, and whether the upgrade would drop its traffic.
    pub virtual_services: Vec<crate::status::VsStatus>,
    /// The version the cluster runs (none when its nodes disagree).
    pub from_version: Option<String>,
    /// The image's version.
    pub to_version: String,
    /// Forced past version compatibility.
    pub force: bool,
    /// SEs upgraded without moving traffic.
    pub disruptive: bool,
    /// What to pass as `plan_hash` to start exactly this plan.
    pub plan_hash: String,
    /// How it would be paced.
    pub profile: coordinator::journal::Profile,
}

/// How SE groups follow one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeGroupOrder {
    /// All at once.
    Parallel,
    /// One after the other.
    Series,
}

/// What `resume` and `rollback` of SE groups ask for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupRequest {
    /// The groups (empty: every suspended one for resume; required for rollback).
    #[serde(default)]
    pub se_groups: Vec<String>,
    /// Resume past the SEs that failed, leaving them on the old version.
    #[serde(default)]
    pub skip_suspended: bool,
    /// (rollback) The whole system: every SE group, then the controllers.
    #[serde(default)]
    pub system: bool,
}

/// `POST /api/cluster/upgrade/prestage`: stage an image on every node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrestageRequest {
    /// `controller://...` path of the image.
    pub image_path: String,
    /// In a mixed cluster, the docker nodes' image.
    #[serde(default)]
    pub docker_image_path: Option<String>,
}

/// `POST /api/cluster/controllers`: a controller joins the group.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddController {
    /// Its node id (`c4`).
    pub id: String,
    /// `IP:PORT` of its one port.
    pub addr: String,
}

/// The body of pause and abort: nothing, or `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// `POST /api/upload?name=...`: the image as the controller stored and verified it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Uploaded {
    /// Its `controller://` path, to name in an upgrade.
    pub image_path: String,
    /// SHA-256 of the whole package.
    pub sha256: common::Sha256Digest,
    /// Its size in bytes.
    pub size: u64,
    /// What the package says of itself.
    pub manifest: common::package::Manifest,
}

/// The answer to `POST /api/cluster/upgrade`: the plan (`prechecks_only`,
/// 200) or the status of the upgrade that started (202).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)]
pub enum Started {
    /// `prechecks_only`: what the upgrade would do.
    Plan(Plan),
    /// The upgrade started.
    Status(crate::status::UpgradeStatus),
}
