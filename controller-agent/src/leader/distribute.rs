//! Distribution's pre-checks (image valid, every node up, every node of the
//! image's deployment kind, disk space on every node) and the refusal of an
//! operation. A failed check refuses the request and touches no node; the
//! staging itself is a step of the coordinator, carried out by the driver.

use common::DeploymentKind;
use common::errors::ErrorKind;
use coordinator::request::{Refusal, RefusalKind};

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
    /// What kind of error (its HTTP status is in [`common::errors`]).
    pub kind: ErrorKind,
    /// What is wrong and what to do.
    pub message: String,
    /// The checks, when they ran.
    pub prechecks: Vec<Precheck>,
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        Refused { kind: r.kind, message: r.message, prechecks: r.prechecks }
    }
}

impl From<ImageError> for Refused {
    fn from(e: ImageError) -> Self {
        let kind = match e {
            ImageError::NotFound(_) => ErrorKind::NotFound,
            ImageError::Io(_) => ErrorKind::Internal,
            ImageError::NoSpace { .. } => ErrorKind::InsufficientStorage,
            _ => ErrorKind::BadRequest,
        };
        Refused { kind, message: e.to_string(), prechecks: vec![] }
    }
}

fn check(name: &str, result: Result<String, String>) -> Precheck {
    match result {
        Ok(m) => Precheck::new(name, coordinator::request::CheckResult::Ok, m),
        Err(m) => Precheck::new(name, coordinator::request::CheckResult::Error, m),
    }
}

/// The images of an operation: one, or in a mixed cluster one per
/// deployment kind (`image_path` for the vm nodes, `docker_image_path` for
/// the docker ones), of one version.
#[derive(Debug, Clone)]
pub struct Images {
    /// `image_path`'s.
    pub main: Image,
    /// `docker_image_path`'s.
    pub docker: Option<Image>,
}

impl Images {
    /// Checks that the two go together; `docker` is the docker nodes' package.
    pub fn new(main: Image, docker: Option<Image>) -> Result<Self, Refused> {
        let bad = |message: String| Refused { kind: ErrorKind::BadRequest, message, prechecks: vec![] };
        if let Some(d) = &docker {
            let (dm, mm) = (&d.info.manifest, &main.info.manifest);
            if dm.kind != DeploymentKind::Docker {
                return Err(bad(format!(
                    "docker_image_path {} is a {} package; it takes the docker nodes' package ({})",
                    d.image_path,
                    dm.kind,
                    DeploymentKind::Docker.package_file_name()
                )));
            }
            if mm.kind != DeploymentKind::Vm {
                return Err(bad(format!(
                    "with docker_image_path, image_path is the vm nodes' package ({}), but {} is a {} package",
                    DeploymentKind::Vm.package_file_name(),
                    main.image_path,
                    mm.kind
                )));
            }
            if dm.version != mm.version {
                return Err(bad(format!(
                    "image_path is {} and docker_image_path is {}: both packages must be of the same version",
                    mm.version, dm.version
                )));
            }
        }
        Ok(Self { main, docker })
    }

    /// Every image.
    pub fn all(&self) -> impl Iterator<Item = &Image> {
        std::iter::once(&self.main).chain(self.docker.as_ref())
    }

    /// The image of the nodes of `kind`, if there is one.
    pub fn of(&self, kind: DeploymentKind) -> Option<&Image> {
        self.all().find(|i| i.info.manifest.kind == kind)
    }
}

/// A node's deployment kind as it reports it (vm until it has reported).
pub fn kind_of(n: &NodeView) -> DeploymentKind {
    n.deployment.as_deref().and_then(|d| d.parse().ok()).unwrap_or_default()
}

/// The pre-checks of distributing `images` to `nodes`, pure. Returns the
/// verdicts and, if one failed, the kind of the refusal.
pub fn prechecks(images: &Images, nodes: &[NodeView]) -> (Vec<Precheck>, Option<RefusalKind>) {
    let mut out: Vec<Precheck> = images
        .all()
        .map(|image| {
            let m = &image.info.manifest;
            check(
                "image",
                Ok(format!(
                    "{} package {} ({} bytes, sha256 {})",
                    m.kind, m.version, image.info.size, image.info.sha256
                )),
            )
        })
        .collect();
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
    let without: Vec<_> = nodes
        .iter()
        .filter(|n| n.deployment.is_some() && images.of(kind_of(n)).is_none())
        .map(|n| format!("{} ({})", n.id, kind_of(n)))
        .collect();
    let kinds: std::collections::HashSet<DeploymentKind> = nodes.iter().map(kind_of).collect();
    out.push(check(
        "deployment_kind",
        if without.is_empty() {
            Ok(match kinds.len() {
                1 => format!("every node is deployed as {}", images.main.info.manifest.kind),
                _ => "every node has the package of its deployment kind (vm and docker)".into(),
            })
        } else {
            failed.get_or_insert(RefusalKind::BadRequest);
            let m = &images.main.info.manifest;
            Err(if kinds.len() > 1 {
                format!(
                    "no package for these nodes' deployment kind: {}; a mixed cluster takes image_path {} and docker_image_path {}",
                    without.join(", "),
                    DeploymentKind::Vm.package_file_name(),
                    DeploymentKind::Docker.package_file_name()
                )
            } else {
                let other = if m.kind == DeploymentKind::Vm { DeploymentKind::Docker } else { DeploymentKind::Vm };
                format!(
                    "the image is a {} package ({}) but these nodes are not: {}; use {}",
                    m.kind,
                    m.kind.package_file_name(),
                    without.join(", "),
                    other.package_file_name()
                )
            })
        },
    ));
    let need = |n: &NodeView| images.of(kind_of(n)).unwrap_or(&images.main).info.size + DISK_MARGIN;
    let short: Vec<_> = nodes
        .iter()
        .filter(|n| {
            let image = images.of(kind_of(n)).unwrap_or(&images.main);
            !n.staged.iter().any(|s| s.sha256 == image.info.sha256.to_hex())
        })
        .filter(|n| n.disk_free_bytes.is_some_and(|f| f < need(n)))
        .map(|n| format!("{} ({} bytes free, {} needed)", n.id, n.disk_free_bytes.unwrap_or(0), need(n)))
        .collect();
    let most = images.all().map(|i| i.info.size + DISK_MARGIN).max().unwrap_or(0);
    out.push(check(
        "disk_space",
        if short.is_empty() {
            Ok(format!("every node has the {most} bytes the image needs"))
        } else {
            failed.get_or_insert(RefusalKind::InsufficientStorage);
            Err(format!("not enough disk for the image (with margin) on: {}; free space and retry", short.join(", ")))
        },
    ));
    (out, failed)
}
