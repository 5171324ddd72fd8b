//! Docker deployments: a node whose agent runs as a Docker container.
//!
//! - The slots and the boot record are the VM's, in the data dir on the host
//!   (bind-mounted into the container at the same path). A docker slot holds
//!   the package's `image.tar` and its manifest; the image it boots is
//!   `molt-ROLE:VERSION` of the slot's version, so the boot record's active
//!   and previous slots name the active tag and the tag on trial.
//! - Installing ([`load_slot_image`]) is `docker load` of the slot's archive,
//!   checked to hold this role's tag, before the slot is activated.
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

/// `docker load` of `slot`'s image archive; checks that it holds this role's
/// image of the slot's version and returns that tag.
pub async fn load_slot_image(slots: &Slots, slot: Slot, role: Role) -> Result<String, String> {
    let manifest = slots.slot_manifest(slot).map_err(|e| e.to_string())?;
    let tag = image_tag(role, manifest.version);
    let archive = slots.slot_dir(slot).join(DOCKER_IMAGE_ENTRY);
    let engine = Engine::connect().await.map_err(|e| e.to_string())?;
    let loaded = engine.load(&archive).await.map_err(|e| e.to_string())?;
    if !engine.has_image(&tag).await.map_err(|e| e.to_string())? {
        return Err(format!(
            "the package's image archive holds {}, not {tag}: rebuild it with `molt package build --kind docker`",
            if loaded.is_empty() { "no tagged image".to_owned() } else { loaded.join(", ") }
        ));
    }
    Ok(tag)
}

/// The host paths a node's container mounts at the same path: the config's
/// directory and the directories of the files it names (read-only), the data
/// dir (read-write), and Docker's socket (for `docker load` on upgrade).
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
    binds.push(Bind { path: PathBuf::from(molt_docker::SOCKET), read_only: false });
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
    // The image may be missing: a first install from a package, or an
    // operator's `docker image prune`. The slot keeps its archive.
    match engine.has_image(&spec.image).await {
        Ok(true) => {}
        Ok(false) => {
            if let Err(e) = load_slot_image(&slots, record.active, settings.role).await {
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
