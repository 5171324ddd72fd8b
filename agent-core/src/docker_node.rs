//! Docker deployments: a node whose agent runs as a Docker container.
//!
//! - The slots and the boot record are the VM's, in the data dir on the host
//!   (bind-mounted into the container at the same path). A docker slot holds
//!   the package's `image.tar` and its manifest; the image it boots is
//!   `molt-ROLE:VERSION` of the slot's version, so the boot record's active
//!   and previous slots name the active tag and the tag on trial.
//! - Installing is unpacking the slot and checking its archive
//!   ([`check_slot_archive`]) without Docker: the agent's container has no
//!   Docker socket (which is root on the host). The archive may name only
//!   `molt-controller:VERSION` and `molt-se:VERSION` of the package's own
//!   version, so loading it can replace no other image (the previous
//!   version's tag, the fallback, least of all).
//! - The boot loader (on the host) loads a slot's image when it boots a tag
//!   Docker does not have ([`load_slot_image`], the same check first); an
//!   image that does not load is a failed boot, counted like any other.
//! - The boot loader's job is [`supervise`] (`controller-agent boot --docker`,
//!   a host unit): count attempts of the slot on trial exactly as the VM boot
//!   loader does ([`common::slots::next_record`]), then replace the node's
//!   container `molt-CLUSTER-NODE` by one of the chosen tag, and wait for it.
//!   The agent's reboot is `reboot(2)` as the container's init, which ends the
//!   container (exit 129); the supervisor then boots the boot record's slot.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    Role,
    config::{NodeConfigFile, NodeSettings},
    package::DOCKER_IMAGE_ENTRY,
    slots::{Slot, Slots},
};
use molt_docker::{Bind, Engine, NodeContainer, agent_path, container_name, image_tag};
use tracing::{error, info, warn};

use crate::boot::BootError;

/// The exit code of a container whose init was ended by SIGHUP: what the
/// agent's `reboot(2)` does to its PID namespace.
pub const REBOOTED: i64 = 129;

/// Checks `slot`'s image archive without Docker: it names this role's
/// image of the slot's version, and no image but the two roles' of that
/// version. Returns the archive and this role's tag.
pub fn check_slot_archive(slots: &Slots, slot: Slot, role: Role) -> Result<(PathBuf, String), String> {
    let manifest = slots.slot_manifest(slot).map_err(|e| e.to_string())?;
    let tag = image_tag(role, manifest.version);
    let own = [image_tag(Role::Controller, manifest.version), image_tag(Role::ServiceEngine, manifest.version)];
    let archive = slots.slot_dir(slot).join(DOCKER_IMAGE_ENTRY);
    let tags = molt_docker::archive_tags(&archive).map_err(|e| e.to_string())?;
    let foreign: Vec<&String> = tags.iter().filter(|t| !own.contains(t)).collect();
    if !foreign.is_empty() {
        return Err(format!(
            "the package's image archive would also load {}: a package of {} may carry only {} and {}, so that \
             loading it replaces no other image; rebuild it with `molt package build --kind docker`",
            foreign.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
            manifest.version,
            own[0],
            own[1]
        ));
    }
    if !tags.contains(&tag) {
        return Err(format!(
            "the package's image archive holds {}, not {tag}: rebuild it with `molt package build --kind docker`",
            if tags.is_empty() { "no tagged image".to_owned() } else { tags.join(", ") }
        ));
    }
    Ok((archive, tag))
}

/// The boot loader's `docker load` of `slot`'s image archive, once
/// [`check_slot_archive`] passes; returns this role's tag.
pub async fn load_slot_image(engine: &Engine, slots: &Slots, slot: Slot, role: Role) -> Result<String, String> {
    let (archive, tag) = check_slot_archive(slots, slot, role)?;
    engine.load(&archive).await.map_err(|e| e.to_string())?;
    if !engine.has_image(&tag).await.map_err(|e| e.to_string())? {
        return Err(format!("Docker loaded {} but has no {tag} after it", archive.display()));
    }
    info!(%tag, "image loaded");
    Ok(tag)
}

/// The host paths a node's container mounts at the same path: the config's
/// directory and the directories of the files it names (read-only), and the
/// data dir (read-write). Not Docker's socket: the boot loader loads images.
pub fn binds(config: &Path, file: &NodeConfigFile) -> Vec<Bind> {
    let data_dir = file.data_dir.clone();
    let mut ro: Vec<PathBuf> = std::iter::once(config.to_owned())
        .chain(file.referenced_files())
        .filter_map(|f| f.parent().map(Path::to_owned))
        .filter(|d| *d != data_dir)
        .collect();
    ro.sort();
    ro.dedup();
    let mut binds: Vec<Bind> = ro.into_iter().map(|path| Bind { path, read_only: true }).collect();
    binds.push(Bind { path: data_dir, read_only: false });
    binds
}

/// The container of one boot of the node, from the slot the boot record chose.
fn container(
    config: &Path,
    file: &NodeConfigFile,
    settings: &NodeSettings,
    slot: Slot,
) -> Result<NodeContainer, BootError> {
    let slots = Slots::new(&settings.data_dir);
    let m = slots.slot_manifest(slot)?;
    let labels = HashMap::from([
        ("molt.cluster".to_owned(), settings.cluster.clone()),
        ("molt.node".to_owned(), settings.node_id.to_string()),
        ("molt.version".to_owned(), m.version.to_string()),
        ("molt.slot".to_owned(), slot.to_string()),
    ]);
    Ok(NodeContainer {
        name: container_name(&settings.cluster, settings.node_id.as_str()),
        image: image_tag(settings.role, m.version),
        cmd: vec![agent_path(settings.role).into(), "run".into(), "--config".into(), config.display().to_string()],
        binds: binds(config, file),
        labels,
    })
}

/// How one boot of the container ended.
enum Ended {
    /// The agent rebooted (exit 129).
    Rebooted,
    /// It died otherwise, or never started.
    Failed(String),
    /// The supervisor was told to stop.
    Stopped,
}

/// The boot loader of a docker node (`controller-agent boot --docker`):
/// boots the boot record's slot as the node's container, again after every
/// reboot, counting the attempts of a slot on trial and falling back after
/// [`common::slots::MAX_BOOT_ATTEMPTS`]. A container that dies is booted again like a
/// watchdog would; more than ten quick failures in a row end the supervisor.
/// SIGTERM removes the container and returns.
pub async fn supervise(config: &Path) -> Result<(), BootError> {
    let config =
        std::path::absolute(config).map_err(|source| BootError::Exec { path: config.display().to_string(), source })?;
    let settings = NodeSettings::load(&config)?;
    let file = NodeConfigFile::read(&config)?;
    let name = container_name(&settings.cluster, settings.node_id.as_str());
    let engine = loop {
        match Engine::connect().await {
            Ok(e) => break e,
            Err(e) => {
                warn!(error = %e, "waiting for Docker Engine");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = crate::boot::wait_for_stop_signal() => return Ok(()),
                }
            }
        }
    };
    let mut quick_failures = 0;
    loop {
        let booted = Instant::now();
        let ended = tokio::select! {
            e = boot_once(&engine, &config, &file, &settings) => e,
            _ = crate::boot::wait_for_stop_signal() => Ended::Stopped,
        };
        match ended {
            Ended::Rebooted => {
                quick_failures = 0;
                info!(container = %name, "rebooted; booting again");
            }
            Ended::Failed(why) => {
                quick_failures = if booted.elapsed() < Duration::from_secs(10) { quick_failures + 1 } else { 0 };
                if quick_failures > 10 {
                    let _ = engine.remove(&name).await;
                    return Err(BootError::Docker(format!(
                        "{name} failed to boot {quick_failures} times in a row (last: {why}); the node stays off"
                    )));
                }
                warn!(container = %name, %why, "the node's container ended; watchdog reboot");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ended::Stopped => {
                info!(container = %name, "stopping");
                if let Err(e) = engine.remove(&name).await {
                    error!(error = %e, "cannot remove the container");
                }
                return Ok(());
            }
        }
    }
}

/// One boot: choose the slot, make sure its image is there, run the
/// container, wait for it to end.
async fn boot_once(engine: &Engine, config: &Path, file: &NodeConfigFile, settings: &NodeSettings) -> Ended {
    let slots = Slots::new(&settings.data_dir);
    let record = match crate::boot::choose_slot(&slots) {
        Ok(r) => r,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let spec = match container(config, file, settings, record.active) {
        Ok(s) => s,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    // A slot on trial is booted from its own archive (a tag of the same
    // version may be left from another package); any slot whose image is
    // missing (a first install, an operator's `docker image prune`) too.
    // The slot keeps its archive.
    let present = if record.pending { Ok(false) } else { engine.has_image(&spec.image).await };
    match present {
        Ok(true) => {}
        Ok(false) => {
            if let Err(e) = load_slot_image(engine, &slots, record.active, settings.role).await {
                return Ended::Failed(format!("image {} is missing and cannot be loaded: {e}", spec.image));
            }
        }
        Err(e) => return Ended::Failed(e.to_string()),
    }
    info!(slot = %record.active, image = %spec.image, container = %spec.name, pending = record.pending, "booting");
    if let Err(e) = engine.run(&spec).await {
        return Ended::Failed(e.to_string());
    }
    let logs = tokio::spawn({
        let engine = engine.clone();
        let name = spec.name.clone();
        async move { engine.follow_logs(&name, std::io::stderr()).await }
    });
    let code = engine.wait(&spec.name).await;
    logs.abort();
    match code {
        Ok(REBOOTED) => Ended::Rebooted,
        Ok(code) => Ended::Failed(format!("{} exited with code {code}", spec.image)),
        Err(e) => Ended::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use common::DeploymentKind;

    use super::*;

    /// A docker node whose slot `a` holds a package of 2.0.0 whose image
    /// archive names `tags`.
    fn slot_with(dir: &Path, tags: &[&str]) -> Slots {
        let payload = dir.join("payload");
        std::fs::create_dir_all(payload.join("bin")).unwrap();
        for b in ["controller-agent", "se-agent"] {
            std::fs::write(payload.join("bin").join(b), b"x").unwrap();
        }
        let manifest = serde_json::json!([{ "Config": "c.json", "RepoTags": tags, "Layers": [] }]).to_string();
        let mut b = tar::Builder::new(std::fs::File::create(payload.join(DOCKER_IMAGE_ENTRY)).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", manifest.as_bytes()).unwrap();
        b.into_inner().unwrap();
        let pkg = dir.join("p.tgz");
        let (v, min) = ("2.0.0".parse().unwrap(), "1.0.0".parse().unwrap());
        common::package::build(&payload, v, min, DeploymentKind::Docker, &pkg).unwrap();
        let slots = Slots::new(&dir.join("node"));
        slots.install_first(&pkg, DeploymentKind::Docker, &[]).unwrap();
        slots
    }

    /// Issue 25, 7: `docker load` took any tag an archive carried, so a
    /// package could overwrite the previous version's tag (the fallback).
    #[test]
    fn a_slot_archive_may_name_only_its_own_versions_images() {
        let d = tempfile::tempdir().unwrap();
        let ok = slot_with(&d.path().join("ok"), &["molt-controller:2.0.0", "molt-se:2.0.0"]);
        let (_, tag) = check_slot_archive(&ok, Slot::A, Role::ServiceEngine).unwrap();
        assert_eq!(tag, "molt-se:2.0.0");
        let fallback = slot_with(&d.path().join("fallback"), &["molt-se:2.0.0", "molt-se:1.0.0"]);
        let e = check_slot_archive(&fallback, Slot::A, Role::ServiceEngine).unwrap_err();
        assert!(e.contains("would also load molt-se:1.0.0") && e.contains("may carry only"), "{e}");
        let other = slot_with(&d.path().join("other"), &["molt-se:2.0.0", "nginx:latest"]);
        let e = check_slot_archive(&other, Slot::A, Role::ServiceEngine).unwrap_err();
        assert!(e.contains("would also load nginx:latest"), "{e}");
        let missing = slot_with(&d.path().join("missing"), &["molt-controller:2.0.0"]);
        let e = check_slot_archive(&missing, Slot::A, Role::ServiceEngine).unwrap_err();
        assert!(e.contains("holds molt-controller:2.0.0, not molt-se:2.0.0"), "{e}");
    }

    /// The agent's container gets no Docker socket (root on the host).
    #[test]
    fn a_nodes_container_mounts_no_docker_socket() {
        let d = tempfile::tempdir().unwrap();
        let toml = format!(
            "cluster = \"c\"\nnode_id = \"g1-se1\"\nrole = \"se\"\nlisten = \"127.0.0.21:8443\"\n\
             data_dir = \"{}\"\ndeployment = \"docker\"\nleader = \"c1\"\nse_group = \"g1\"\n\
             [tls]\nca = \"/pki/ca.pem\"\ncert = \"/pki/se.pem\"\nkey = \"/pki/se.key\"\n\
             [[controllers]]\nid = \"c1\"\naddr = \"127.0.0.11:8443\"\n",
            d.path().join("data").display()
        );
        std::fs::write(d.path().join("node.toml"), toml).unwrap();
        let file = NodeConfigFile::read(&d.path().join("node.toml")).unwrap();
        let binds = binds(&d.path().join("node.toml"), &file);
        assert!(binds.iter().all(|b| b.path != Path::new(molt_docker::SOCKET)), "{binds:?}");
        assert!(binds.iter().any(|b| b.path == d.path().join("data") && !b.read_only));
    }
}
