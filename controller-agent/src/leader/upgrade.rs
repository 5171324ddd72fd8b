//! Operators' requests on operations — start an upgrade or a prestage,
//! resume or roll back SE groups — as thin handlers around the pure
//! decisions of [`coordinator::request`]: under the operation gate, decide,
//! write the journal, wake the driver. Nothing changes when a request is
//! refused; an operation has started once its journal is written.

use std::sync::Arc;

use common::Role;
use common::errors::ErrorKind;
use coordinator::{
    journal::{ActionOnError, Image as JournalImage, Member, Operation},
    request::{self, NodeSummary, ProfileRequest, StartCtx, StartRequest},
};
use tracing::info;

use super::{
    LeaderState,
    cluster::NodeView,
    distribute::{self, Images, Refused},
    driver::now_ms,
    images::Image,
    status::UpgradeStatus,
};

pub use molt_api::requests::{GroupRequest, Plan, SeGroupOrder, UpgradeRequest};

fn refuse(kind: ErrorKind, message: impl Into<String>) -> Refused {
    Refused { kind, message: message.into(), prechecks: vec![] }
}

/// The nodes as the pre-checks see them.
fn summaries(nodes: &[NodeView]) -> Vec<NodeSummary> {
    nodes
        .iter()
        .map(|n| NodeSummary {
            id: n.id.clone(),
            member: match n.role {
                Role::ServiceEngine => Member::ServiceEngine(n.se_group.clone().unwrap_or_default()),
                _ => Member::Controller,
            },
            version: n.version.parse().ok(),
            kind: distribute::kind_of(n),
            previous: n.previous_version.as_deref().and_then(|v| v.parse().ok()),
            health: request::NodeHealth {
                down: n.state != super::cluster::NodeState::Up,
                disk_free: n.disk_free_bytes,
                staged: n.staged.iter().filter_map(|s| s.sha256.parse().ok()).collect(),
                kind_unknown: n.deployment.is_none(),
            },
        })
        .collect()
}

/// The image as the journal keeps it.
fn journal_image(image: &Image) -> JournalImage {
    let m = &image.info.manifest;
    JournalImage {
        path: image.image_path.clone(),
        sha256: image.info.sha256,
        size: image.info.size,
        kind: m.kind,
        min_compatible: m.min_compatible,
        signed_by: match &image.trust {
            common::package::signing::Trust::SignedBy(k) => Some(k.clone()),
            common::package::signing::Trust::Unchecked => None,
        },
    }
}

/// What a start is decided against, read under the operation gate.
struct Current {
    journal: Option<coordinator::journal::Journal>,
    config: coordinator::config::Config,
    id: String,
}

impl Current {
    fn read(state: &LeaderState) -> Self {
        Current { journal: state.journal(), config: state.config().clone(), id: common::types::random_hex(4) }
    }

    fn ctx<'a>(&'a self, state: &'a LeaderState, nodes: &'a [NodeSummary]) -> StartCtx<'a> {
        StartCtx {
            current: self.journal.as_ref(),
            nodes,
            config: &self.config,
            leader: &state.settings.node_id,
            id: &self.id,
            now: now_ms(),
            mutant: None,
        }
    }
}

/// A start of `operation` with `images` (an upgrade's options from `req`).
fn start_request(
    images: &Images,
    operation: Operation,
    req: Option<&UpgradeRequest>,
    on_error: ActionOnError,
) -> StartRequest {
    StartRequest {
        operation,
        image: journal_image(&images.main),
        docker_image: images.docker.as_ref().map(journal_image),
        to: images.main.info.manifest.version,
        force: req.is_some_and(|r| r.force),
        disruptive: req.is_some_and(|r| r.disruptive),
        on_error,
        se_groups: req.map(|r| r.se_groups.clone()).unwrap_or_default(),
        pause_after: req.and_then(|r| r.pause_after.clone()),
        plan_hash: req.and_then(|r| r.plan_hash.clone()),
        profile: req
            .map(|r| ProfileRequest {
                max_parallel_ses: r.max_parallel_ses,
                groups_in_series: r.se_group_order.map(|o| o == SeGroupOrder::Series),
                max_transfers: r.max_transfers,
                transfer_rate_mib: r.transfer_rate_mib,
            })
            .unwrap_or_default(),
    }
}

/// Writes a new journal under the gate the caller holds, and wakes the driver.
async fn begin(state: &LeaderState, j: coordinator::journal::Journal) -> Result<(), Refused> {
    let what = j.operation.name().replace('_', " ");
    state
        .write_journal(j)
        .await
        .map_err(|e| refuse(e.kind(), format!("cannot write the upgrade journal, so the {what} did not start: {e}")))?;
    state.wake.notify_one();
    Ok(())
}

/// A fast refusal before the image is read (the start decides again
/// under the gate).
fn refuse_if_running(state: &LeaderState) -> Result<(), Refused> {
    request::refuse_if_running(state.journal().as_ref()).map_err(Refused::from)
}

/// Checks and, unless `prechecks_only`, starts an upgrade.
pub async fn start(state: &Arc<LeaderState>, req: UpgradeRequest) -> Result<molt_api::requests::Started, Refused> {
    let on_error = req.action_on_error;
    if !req.prechecks_only {
        refuse_if_running(state)?;
    }
    let images = resolve(state, &req.image_path, req.docker_image_path.as_deref()).await?;
    let summaries = summaries(&state.cluster.snapshot());
    let m = &images.main.info.manifest;
    let sreq = start_request(&images, Operation::Upgrade, Some(&req), on_error);
    // Check and act under the operation gate: of requests at once, one starts.
    let _gate = state.operation_gate.lock().await;
    let current = Current::read(state);
    let config = &current.config;
    let ctx = current.ctx(state, &summaries);
    let (checks, failed) = request::start_checks(&sreq, &ctx);
    if req.prechecks_only {
        let disruptive = req.disruptive || req.force;
        let profile = request::resolve_profile(&sreq.profile, config, &request::group_names(&summaries))
            .map_err(Refused::from)?;
        let virtual_services = coordinator::placement::predict(config, disruptive, &profile.max_parallel_ses)
            .into_iter()
            .map(|(name, predicted_disruption, reason)| super::status::VsStatus {
                name,
                predicted_disruption,
                reason,
                measured_downtime_ms: None,
                failed_probes: None,
                probe_rounds: None,
                down_slots: vec![],
            })
            .collect();
        let plan = Plan {
            prechecks_only: true,
            ok: failed.is_none(),
            prechecks: checks,
            virtual_services,
            from_version: request::cluster_version(&summaries).map(|v| v.to_string()),
            to_version: m.version.to_string(),
            force: req.force,
            disruptive,
            plan_hash: request::plan_hash(&sreq, &ctx),
            profile,
        };
        return Ok(molt_api::requests::Started::Plan(plan));
    }
    // Decided (the conflict, every pre-check) by the coordinator alone.
    let j = request::start(&sreq, &ctx).map_err(Refused::from)?;
    info!(from = %j.from, to = %j.to, "upgrade started");
    begin(state, j).await?;
    Ok(molt_api::requests::Started::Status(state.status()))
}

/// The image (and the docker nodes' image) of a request, verified and checked to go together.
async fn resolve(state: &LeaderState, image_path: &str, docker_image_path: Option<&str>) -> Result<Images, Refused> {
    let main = state.image(image_path).await?;
    let docker = match docker_image_path {
        Some(p) => Some(state.image(p).await?),
        None => None,
    };
    Images::new(main, docker)
}

/// Starts prestaging `image_path` (and, in a mixed cluster, `docker_image_path`) on every node.
pub async fn prestage(
    state: &Arc<LeaderState>,
    image_path: &str,
    docker_image_path: Option<&str>,
) -> Result<UpgradeStatus, Refused> {
    refuse_if_running(state)?;
    let images = resolve(state, image_path, docker_image_path).await?;
    let summaries = summaries(&state.cluster.snapshot());
    let sreq = start_request(&images, Operation::Prestage, None, ActionOnError::Suspend);
    let _gate = state.operation_gate.lock().await;
    let current = Current::read(state);
    let ctx = current.ctx(state, &summaries);
    let j = request::start(&sreq, &ctx).map_err(Refused::from)?;
    info!(image = %images.main.image_path, sha = %images.main.info.sha256.short(), nodes = summaries.len(), "prestage started");
    begin(state, j).await?;
    Ok(state.status())
}

fn refuse_if_halted(state: &LeaderState, what: &str) -> Result<(), Refused> {
    match state.halted.lock().expect("halted lock").as_ref() {
        Some(why) => Err(refuse(ErrorKind::Conflict, format!("{why}; SE groups cannot be {what} from here"))),
        None => Ok(()),
    }
}

/// Writes the journal a hold request decided, if it changed anything.
async fn hold(
    state: &Arc<LeaderState>,
    j: Option<coordinator::journal::Journal>,
    what: &str,
) -> Result<UpgradeStatus, Refused> {
    if let Some(j) = j {
        info!(id = %j.id, "{what}");
        begin(state, j).await?;
    }
    Ok(state.status())
}

/// Holds the running upgrade (`molt upgrade pause`): what is in flight
/// finishes, nothing new starts. Pausing a paused upgrade changes nothing.
pub async fn pause(state: &Arc<LeaderState>) -> Result<UpgradeStatus, Refused> {
    let _gate = state.operation_gate.lock().await;
    let j = request::pause(state.journal().as_ref())?;
    hold(state, j, "upgrade paused by the operator").await
}

/// Aborts the running upgrade (`molt upgrade abort`). Aborting twice changes nothing.
pub async fn abort(state: &Arc<LeaderState>) -> Result<UpgradeStatus, Refused> {
    let _gate = state.operation_gate.lock().await;
    let j = request::abort(state.journal().as_ref())?;
    hold(state, j, "upgrade aborted by the operator").await
}

/// `molt upgrade resume`, and `molt resume segroup`: with no group named
/// and an upgrade running, it resumes a paused upgrade; otherwise suspended
/// SE groups go on.
pub async fn resume_groups(state: &Arc<LeaderState>, req: GroupRequest) -> Result<UpgradeStatus, Refused> {
    let _gate = state.operation_gate.lock().await;
    if req.se_groups.is_empty() && state.journal().is_some_and(|j| j.is_running()) {
        let j = request::resume_paused(state.journal().as_ref())?;
        return hold(state, j, "upgrade resumed by the operator").await;
    }
    refuse_if_halted(state, "resumed")?;
    let config = state.config().clone();
    let j = request::resume(state.journal().as_ref(), &req.se_groups, req.skip_suspended, &config)?;
    info!(groups = ?req.se_groups, skip = req.skip_suspended, "resuming SE groups");
    begin(state, j).await?;
    Ok(state.status())
}

/// Moves SE groups left on the old version to the controllers' version
/// (`molt upgrade segroup`), staging the image on their SEs first.
pub async fn upgrade_groups(state: &Arc<LeaderState>, req: GroupRequest) -> Result<UpgradeStatus, Refused> {
    let _gate = state.operation_gate.lock().await;
    refuse_if_halted(state, "upgraded")?;
    let config = state.config().clone();
    let current = state.journal();
    let j = request::upgrade_groups(current.as_ref(), &req.se_groups, &config, now_ms())?;
    // The image must still be in the store: its SEs fetch it from there.
    for image in j.images() {
        state.image(&image.path).await.map_err(|e| {
            refuse(
                ErrorKind::PreconditionFailed,
                format!("the upgrade's image {} is no longer usable ({}); upload it again first", image.path, e),
            )
        })?;
    }
    info!(groups = ?req.se_groups, to = %j.to, "upgrading SE groups");
    begin(state, j).await?;
    Ok(state.status())
}

/// Returns every SE group, then the controllers, to the previous version (`molt rollback system`).
pub async fn rollback_system(state: &Arc<LeaderState>) -> Result<UpgradeStatus, Refused> {
    let _gate = state.operation_gate.lock().await;
    refuse_if_halted(state, "rolled back")?;
    let config = state.config().clone();
    let nodes = summaries(&state.cluster.snapshot());
    let j = request::rollback_system(state.journal().as_ref(), &nodes, &state.settings.node_id, &config, now_ms())?;
    info!(to = %j.from, "rolling the system back");
    begin(state, j).await?;
    Ok(state.status())
}

/// Returns SE groups to the old version (`molt rollback segroup`), or the
/// whole system with `system: true`.
pub async fn rollback_groups(state: &Arc<LeaderState>, req: GroupRequest) -> Result<UpgradeStatus, Refused> {
    if req.system {
        if !req.se_groups.is_empty() {
            return Err(refuse(ErrorKind::BadRequest, "name SE groups or ask for the system, not both"));
        }
        return rollback_system(state).await;
    }
    let _gate = state.operation_gate.lock().await;
    refuse_if_halted(state, "rolled back")?;
    let config = state.config().clone();
    let j = request::rollback_groups(state.journal().as_ref(), &req.se_groups, &config, now_ms())?;
    info!(groups = ?req.se_groups, "rolling SE groups back");
    begin(state, j).await?;
    Ok(state.status())
}
