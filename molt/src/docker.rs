//! The operator's side of docker deployments: the images of a version made
//! from the build's binaries (`docker import`, no registry), the docker
//! package (`molt package build --kind docker`), and a node container's
//! removal when a local node is powered off.

use std::path::{Path, PathBuf};

use common::{
    DeploymentKind, Role, Version,
    package::{DOCKER_IMAGE_ENTRY, PackageError, PackageInfo, REQUIRED_ENTRIES},
};
use molt_docker::{DockerError, Engine, image_tag};
use sha2::Digest;

/// Why a docker image or package could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DockerBuildError {
    /// Docker Engine.
    #[error("{0}")]
    Docker(#[from] DockerError),
    /// The package itself.
    #[error("{0}")]
    Package(#[from] PackageError),
    /// A payload that cannot become a docker package.
    #[error("{0}")]
    Invalid(String),
}

/// The image label holding the SHA-256 of the root filesystem it was imported from.
const ROOTFS_LABEL: &str = "molt.rootfs";

/// The tags of both roles at `version`.
pub fn tags(version: Version) -> [String; 2] {
    [image_tag(Role::Controller, version), image_tag(Role::ServiceEngine, version)]
}

/// Makes `molt-controller:VERSION` and `molt-se:VERSION` from the agents in
/// `bin_dir` (one image, two tags): a root filesystem of the two binaries and
/// the libraries they link, through `docker import`.
pub async fn build_images(engine: &Engine, bin_dir: &Path, version: Version) -> Result<[String; 2], DockerBuildError> {
    // (path in the image, the binary on this machine)
    let bins: Vec<(String, PathBuf)> = REQUIRED_ENTRIES
        .iter()
        .map(|e| (format!("/{e}"), bin_dir.join(Path::new(e).file_name().expect("has a name"))))
        .collect();
    if let Some((_, missing)) = bins.iter().find(|(_, p)| !p.is_file()) {
        return Err(DockerBuildError::Invalid(format!(
            "{} is missing: build with `cargo build --release`",
            missing.display()
        )));
    }
    let rootfs = tokio::task::spawn_blocking(move || {
        let refs: Vec<(&str, &Path)> = bins.iter().map(|(i, p)| (i.as_str(), p.as_path())).collect();
        molt_docker::rootfs(&refs)
    })
    .await
    .map_err(|e| DockerBuildError::Invalid(e.to_string()))??;
    let [controller, se] = tags(version);
    // The same binaries make the same image: a tag in use by another
    // cluster's containers is not moved to a copy of itself.
    let digest = hex::encode(sha2::Sha256::digest(&rootfs));
    // One import at a time on this machine: two `molt local up` at once
    // would otherwise both import, the second moving the tags the first's
    // containers were created from.
    let lock_path = std::env::temp_dir().join("molt-docker-images.lock");
    let lock = std::fs::File::create(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| DockerBuildError::Invalid(format!("{}: {e}", lock_path.display())))?;
    let current = [engine.image_label(&controller, ROOTFS_LABEL).await?, engine.image_label(&se, ROOTFS_LABEL).await?];
    if current.iter().any(|d| d.as_deref() != Some(digest.as_str())) {
        engine.import_rootfs(rootfs, &controller, &[(ROOTFS_LABEL, &digest)]).await?;
        engine.tag(&controller, &se).await?;
    }
    drop(lock);
    Ok([controller, se])
}

/// `molt package build --kind docker`: from a payload holding `image.tar`
/// (a `docker save` archive with both roles' tags of `version`), or the
/// agents under `bin/` (the images are made, saved, and packaged).
pub async fn build_package(
    payload: &Path,
    version: Version,
    min: Version,
    out: &Path,
    key: Option<&common::package::signing::SigningKey>,
) -> Result<PackageInfo, DockerBuildError> {
    let archive = payload.join(DOCKER_IMAGE_ENTRY);
    if archive.is_file() {
        check_archive(&archive, version)?;
        return Ok(common::package::build_signed(payload, version, min, DeploymentKind::Docker, out, key)?);
    }
    let bin = payload.join("bin");
    if !bin.join("controller-agent").is_file() || !bin.join("se-agent").is_file() {
        return Err(DockerBuildError::Invalid(format!(
            "payload directory {} has neither {DOCKER_IMAGE_ENTRY} (a `docker save` archive of molt-controller:{version} and molt-se:{version}) nor bin/controller-agent and bin/se-agent to make one from",
            payload.display()
        )));
    }
    let engine = Engine::connect().await?;
    let tags = build_images(&engine, &bin, version).await?;
    let dir = common::fsutil::parent_dir(out).join(format!(".docker-payload-{}", common::types::random_hex(4)));
    std::fs::create_dir_all(&dir).map_err(|e| DockerBuildError::Invalid(format!("{}: {e}", dir.display())))?;
    let result = async {
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        engine.save(&refs, &dir.join(DOCKER_IMAGE_ENTRY)).await?;
        Ok(common::package::build_signed(&dir, version, min, DeploymentKind::Docker, out, key)?)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Refuses an archive without both roles' images of `version`.
fn check_archive(archive: &Path, version: Version) -> Result<(), DockerBuildError> {
    let found = molt_docker::archive_tags(archive)?;
    let missing: Vec<String> = tags(version).into_iter().filter(|t| !found.contains(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DockerBuildError::Invalid(format!(
        "{} lacks {} (it holds {}): save both roles' images of this version, `docker save -o image.tar molt-controller:{version} molt-se:{version}`",
        archive.display(),
        missing.join(" and "),
        if found.is_empty() { "no tagged image".to_owned() } else { found.join(", ") }
    )))
}

/// Removes a node's container, from sync code: a thread with its own runtime.
pub fn remove_container(name: &str) -> Result<(), DockerError> {
    let name = name.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DockerError::Invalid(e.to_string()))?;
        rt.block_on(async { Engine::connect().await?.remove(&name).await })
    })
    .join()
    .unwrap_or_else(|_| Err(DockerError::Invalid("the docker thread panicked".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_payload_without_an_image_or_agents_is_refused_before_docker_is_asked() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("controller_docker.tgz");
        let e = build_package(d.path(), v("2.0.0"), v("1.0.0"), &out, None).await.unwrap_err().to_string();
        assert!(e.contains("has neither image.tar") && e.contains("bin/controller-agent"), "{e}");
        assert!(!out.exists());
    }

    #[tokio::test]
    async fn an_archive_without_both_tags_of_the_version_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(std::fs::File::create(d.path().join(DOCKER_IMAGE_ENTRY)).unwrap());
        let manifest = br#"[{"Config":"x.json","RepoTags":["molt-controller:2.0.0","molt-se:1.0.0"],"Layers":[]}]"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", &manifest[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let out = d.path().join("controller_docker.tgz");
        let e = build_package(d.path(), v("2.0.0"), v("1.0.0"), &out, None).await.unwrap_err().to_string();
        assert!(e.contains("lacks molt-se:2.0.0") && e.contains("molt-controller:2.0.0, molt-se:1.0.0"), "{e}");
        assert!(!out.exists());
    }
}
