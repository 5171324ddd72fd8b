//! Distribution's pre-checks (image valid, every node up, every node of the
//! image's deployment kind, disk space on every node) and the refusal of an
//! operation. A failed check refuses the request and touches no node; the
//! staging itself is a step of the coordinator, carried out by the driver.

use coordinator::request::{Refusal, RefusalKind};
use http::StatusCode;

use super::{
    cluster::{NodeState, NodeView},
    images::{Image, ImageError},
    status::Precheck,
};
use agent_core::follower::stage::DISK_MARGIN;

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

/// The HTTP status of a refusal's kind: the one place they are mapped.
pub fn status_of(kind: RefusalKind) -> StatusCode {
    match kind {
        RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
        RefusalKind::Conflict => StatusCode::CONFLICT,
        RefusalKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        RefusalKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
    }
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        Refused { status: status_of(r.kind), message: r.message, prechecks: r.prechecks }
    }
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
/// verdicts and, if one failed, the kind of the refusal.
pub fn prechecks(image: &Image, nodes: &[NodeView]) -> (Vec<Precheck>, Option<RefusalKind>) {
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
            failed.get_or_insert(RefusalKind::PreconditionFailed);
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
            failed.get_or_insert(RefusalKind::BadRequest);
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
            failed.get_or_insert(RefusalKind::InsufficientStorage);
            Err(format!(
                "not enough disk for the image ({need} bytes with margin) on: {}; free space and retry",
                short.join(", ")
            ))
        },
    ));
    (out, failed)
}
