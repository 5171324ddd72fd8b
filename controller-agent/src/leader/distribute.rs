//! The refusal of an operation, and the images of a request (checked to go
//! together). The distribution's pre-checks are the coordinator's
//! (`coordinator::request::distribution_checks`), run with every other
//! pre-check when the request is decided.

use common::DeploymentKind;
use common::errors::ErrorKind;
use coordinator::request::Refusal;

use super::{
    cluster::NodeView,
    images::{Image, ImageError},
    status::Precheck,
};

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
            ImageError::NotFound(_) | ImageError::Elsewhere { .. } => ErrorKind::NotFound,
            ImageError::Io(_) => ErrorKind::Internal,
            ImageError::NoSpace { .. } => ErrorKind::InsufficientStorage,
            _ => ErrorKind::BadRequest,
        };
        Refused { kind, message: e.to_string(), prechecks: vec![] }
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
