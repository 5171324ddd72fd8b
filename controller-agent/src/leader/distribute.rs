//! Prestage: put a verified image on every node, controllers first, then
//! Service Engines, and apply nothing.
//!
//! Pre-checks run before anything changes (image valid, every node up,
//! every node of the image's deployment kind, disk space on every node); a
//! failed check refuses the request and touches no node. Then each node is
//! told to stage the image; the leader learns outcomes only from heartbeats,
//! re-sending the (idempotent) command while a node has not reported it, so a
//! node that reconnects mid-transfer resumes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    NodeId, Role,
    session::{Command, CommandKind, CommandState, ImageRef, LeaderMessage},
};
use http::StatusCode;
use tracing::{info, warn};

use super::{
    LeaderState,
    cluster::{NodeState, NodeView},
    images::{Image, ImageError},
    status::{OpState, Precheck, UpgradeStatus, now},
};
use agent_core::follower::stage::DISK_MARGIN;

/// How long a node may show no progress before its staging is failed.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an unanswered command is sent again.
const RESEND: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);

/// Why an operation was not started. Nothing changed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// The HTTP status that fits.
    pub status: StatusCode,
    /// What is wrong and what to do.
    pub message: String,
    /// The checks, when they ran.
    pub prechecks: Vec<Precheck>,
}

impl From<ImageError> for Refused {
    fn from(e: ImageError) -> Self {
        let status = match e {
            ImageError::NotFound(_) => StatusCode::NOT_FOUND,
            ImageError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ImageError::NoSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Refused { status, message: e.to_string(), prechecks: vec![] }
    }
}

fn check(name: &str, result: Result<String, String>) -> Precheck {
    let (result, message) = match result {
        Ok(m) => ("ok", m),
        Err(m) => ("error", m),
    };
    Precheck { check: name.into(), result: result.into(), message }
}

/// The pre-checks of distributing `image` to `nodes`, pure. Returns the
/// verdicts and, if one failed, the HTTP status of the refusal.
pub fn prechecks(image: &Image, nodes: &[NodeView]) -> (Vec<Precheck>, Option<StatusCode>) {
    let m = &image.info.manifest;
    let mut out = vec![check(
        "image",
        Ok(format!("{} package {} ({} bytes, sha256 {})", m.kind, m.version, image.info.size, image.info.sha256)),
    )];
    let mut failed = None;
    let down: Vec<_> = nodes.iter().filter(|n| n.state != NodeState::Up).map(|n| n.id.to_string()).collect();
    out.push(check(
        "nodes_up",
        if down.is_empty() {
            Ok(format!("all {} nodes are up", nodes.len()))
        } else {
            failed.get_or_insert(StatusCode::PRECONDITION_FAILED);
            Err(format!("nodes not heartbeating: {}; bring them back (molt show cluster) and retry", down.join(", ")))
        },
    ));
    let wrong_kind: Vec<_> = nodes
        .iter()
        .filter(|n| n.deployment.as_deref().is_some_and(|d| d != m.kind.as_str()))
        .map(|n| format!("{} ({})", n.id, n.deployment.as_deref().unwrap_or("?")))
        .collect();
    out.push(check(
        "deployment_kind",
        if wrong_kind.is_empty() {
            Ok(format!("every node is deployed as {}", m.kind))
        } else {
            failed.get_or_insert(StatusCode::BAD_REQUEST);
            let other = if m.kind == common::DeploymentKind::Vm {
                common::DeploymentKind::Docker
            } else {
                common::DeploymentKind::Vm
            };
            Err(format!(
                "the image is a {} package ({}) but these nodes are not: {}; use {}",
                m.kind,
                m.kind.package_file_name(),
                wrong_kind.join(", "),
                other.package_file_name()
            ))
        },
    ));
    let need = image.info.size + DISK_MARGIN;
    let short: Vec<_> = nodes
        .iter()
        .filter(|n| !n.staged.iter().any(|s| s.sha256 == image.info.sha256.to_hex()))
        .filter(|n| n.disk_free_bytes.is_some_and(|f| f < need))
        .map(|n| format!("{} ({} bytes free)", n.id, n.disk_free_bytes.unwrap_or(0)))
        .collect();
    out.push(check(
        "disk_space",
        if short.is_empty() {
            Ok(format!("every node has the {need} bytes the image needs"))
        } else {
            failed.get_or_insert(StatusCode::INSUFFICIENT_STORAGE);
            Err(format!(
                "not enough disk for the image ({need} bytes with margin) on: {}; free space and retry",
                short.join(", ")
            ))
        },
    ));
    (out, failed)
}

/// Starts prestaging `image_path` on every node. Returns the status once the
/// operation is under way, or why it was refused (nothing changed then).
pub async fn start(state: &Arc<LeaderState>, image_path: &str) -> Result<UpgradeStatus, Refused> {
    if state.operation_running() {
        return Err(Refused {
            status: StatusCode::CONFLICT,
            message: "an operation is already running; follow it with `molt show upgrade status`".into(),
            prechecks: vec![],
        });
    }
    let image = state.images.get(image_path).await?;
    let nodes = state.cluster.snapshot();
    let (checks, failed) = prechecks(&image, &nodes);
    if let Some(status) = failed {
        let message =
            checks.iter().filter(|c| c.result == "error").map(|c| c.message.as_str()).collect::<Vec<_>>().join("; ");
        return Err(Refused { status, message, prechecks: checks });
    }
    let view = {
        let _gate = state.operation_gate.lock().expect("operation gate");
        if state.read_only() {
            return Err(Refused {
                status: StatusCode::CONFLICT,
                message: "an upgrade is running; follow it with `molt show upgrade status`".into(),
                prechecks: vec![],
            });
        }
        let mut board = state.status.lock().expect("status lock");
        if board.current.is_running() {
            return Err(Refused {
                status: StatusCode::CONFLICT,
                message: "an operation is already running".into(),
                prechecks: vec![],
            });
        }
        let m = &image.info.manifest;
        board.current = UpgradeStatus {
            state: OpState::InProgress,
            operation: "prestage".into(),
            phase: "distribute".into(),
            from_version: running_version(&nodes),
            to_version: m.version.to_string(),
            image_path: image.image_path.clone(),
            image_sha256: image.info.sha256.to_hex(),
            image_size: image.info.size,
            started_at: Some(now()),
            nodes: super::status::node_rows(&nodes),
            prechecks: checks,
            ..Default::default()
        };
        board.view()
    };
    info!(image = %image.image_path, sha = %image.info.sha256.short(), nodes = nodes.len(), "prestage started");
    let state = state.clone();
    state.clone().spawn(async move { run(state, image, nodes).await });
    Ok(view)
}

fn running_version(nodes: &[NodeView]) -> String {
    let mut versions: Vec<&str> =
        nodes.iter().filter(|n| n.role == Role::Controller).map(|n| n.version.as_str()).collect();
    versions.sort();
    versions.dedup();
    versions.join(",")
}

/// The image as commands describe it.
pub fn image_ref(image: &Image) -> ImageRef {
    let m = &image.info.manifest;
    ImageRef {
        sha256: image.info.sha256,
        size: image.info.size,
        version: m.version,
        kind: m.kind,
        min_compatible: m.min_compatible,
    }
}

async fn run(state: Arc<LeaderState>, image: Image, nodes: Vec<NodeView>) {
    let image_ref = image_ref(&image);
    let failures = stage_everywhere(&state, &image_ref, &nodes, &common::types::random_hex(4)).await;
    let mut board = state.status.lock().expect("status lock");
    if failures.is_empty() {
        info!(sha = %image_ref.sha256.short(), "prestage completed");
        board.finish(OpState::Completed, String::new());
    } else {
        let reason = format!("staging failed on {}", failures.join("; "));
        warn!(%reason, "prestage aborted");
        board.finish(OpState::Aborted, reason);
    }
    drop(board);
    state.save_status();
}

/// Stages `image` on `nodes`: controllers first, then SEs, each wave in
/// parallel. Returns the failures (`node: why`); empty when all succeeded.
pub async fn stage_everywhere(state: &Arc<LeaderState>, image: &ImageRef, nodes: &[NodeView], op: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for wave in [Role::Controller, Role::ServiceEngine] {
        let tasks: Vec<_> = nodes
            .iter()
            .filter(|n| (n.role == Role::Controller) == (wave == Role::Controller))
            .map(|n| {
                let state = state.clone();
                let image = image.clone();
                let id = format!("stage-{}-{op}-{}", image.sha256.short(), n.id);
                let node = n.id.clone();
                state.clone().spawn(async move {
                    let r = stage_on(&state, &node, &id, image).await;
                    (node, r)
                })
            })
            .collect();
        for t in tasks {
            match t.await {
                Ok((_, Ok(()))) => {}
                Ok((node, Err(e))) => failures.push(format!("{node}: {e}")),
                Err(e) => failures.push(format!("internal error: {e}")),
            }
        }
        if !failures.is_empty() {
            break;
        }
    }
    failures
}

/// Drives one node until it reports the image staged, fails, or stalls.
pub async fn stage_on(state: &LeaderState, node: &NodeId, id: &str, image: ImageRef) -> Result<(), String> {
    let total = image.size;
    let sha = image.sha256;
    // The node may fetch this image exactly while this drives its staging.
    let _grant = state.fetch_gate.grant(node, sha);
    state.status.lock().expect("status lock").begin(node.as_str(), "stage");
    let cmd = Command { id: id.to_owned(), generation: state.generation, kind: CommandKind::Stage(image) };
    let mut last_sent: Option<Instant> = None;
    let mut last_progress = (0u64, Instant::now());
    let outcome = loop {
        if let Some((r, _)) = state.cluster.result_of(node, id) {
            match r.state {
                CommandState::Succeeded => break Ok(r.message),
                CommandState::Failed => break Err(r.message),
                CommandState::Running => {}
            }
        } else if state.cluster.has_staged(node, &sha) {
            break Ok("already staged".to_owned());
        } else if last_sent.is_none_or(|t| t.elapsed() >= RESEND)
            && state.cluster.send(node, LeaderMessage::Command(cmd.clone())).is_ok()
        {
            last_sent = Some(Instant::now());
        }
        let (hb, live) = state.cluster.node(node).unwrap_or((None, NodeState::Down));
        let received = hb
            .as_ref()
            .and_then(|h| h.transfers.iter().find(|t| t.sha256 == sha).map(|t| t.received))
            .unwrap_or(last_progress.0);
        if received > last_progress.0 {
            last_progress = (received, Instant::now());
            update_received(&mut state.status.lock().expect("status lock"), node, received);
            refresh_progress(state, total);
        }
        if last_progress.1.elapsed() > STALL_TIMEOUT {
            let why = if live == NodeState::Down { "the node is down" } else { "the node made no progress" };
            break Err(format!("{why} for {} s while staging", STALL_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(POLL).await;
    };
    let ok = outcome.is_ok();
    {
        let mut board = state.status.lock().expect("status lock");
        board.end(
            node.as_str(),
            ok,
            match &outcome {
                Ok(m) | Err(m) => m,
            },
        );
        if ok {
            update_received(&mut board, node, total);
        }
    }
    refresh_progress(state, total);
    outcome.map(|_| ())
}

fn update_received(board: &mut super::status::StatusBoard, node: &NodeId, received: u64) {
    if let Some(n) = board.current.nodes.iter_mut().find(|n| n.id == node.as_str()) {
        n.received = received;
    }
}

fn refresh_progress(state: &LeaderState, total: u64) {
    let mut board = state.status.lock().expect("status lock");
    let c = &mut board.current;
    let all = (total as u128) * (c.nodes.len().max(1) as u128);
    let got: u128 = c.nodes.iter().map(|n| n.received as u128).sum();
    let pct = ((got * 100) / all.max(1)).min(100) as u8;
    // A prestage is all distribution; in an upgrade it is the first tenth.
    let overall = if c.operation == "upgrade" { pct / 10 } else { pct };
    board.advance(overall);
}
