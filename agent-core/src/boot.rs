//! The boot loader (`controller-agent boot`, `se-agent boot`): reads the
//! boot record, counts attempts of a slot on trial, falls back to the
//! previous slot after too many, and execs the chosen slot's agent.

use std::{convert::Infallible, os::unix::process::CommandExt, path::Path};

use common::{
    Role,
    config::{ConfigError, NodeSettings},
    slots::{SlotError, Slots},
};
use tracing::{info, warn};

pub use common::slots::{MAX_BOOT_ATTEMPTS, next_record};

/// Why the boot loader could not hand over to an agent.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Bad config.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Boot record or slot problem.
    #[error("{0}")]
    Slots(#[from] SlotError),
    /// Docker Engine could not run the node's container.
    #[error("{0}")]
    Docker(String),
    /// The slot's agent could not be executed.
    #[error("cannot execute {path}: {source}")]
    Exec {
        /// The binary.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Chooses the slot and execs its agent with `run --config CONFIG`.
/// Returns only on failure.
pub fn boot(config: &Path) -> Result<Infallible, BootError> {
    let settings = NodeSettings::load(config)?;
    let slots = Slots::new(&settings.data_dir);
    let next = choose_slot(&slots)?;
    let binary = match settings.role {
        Role::Controller => "controller-agent",
        _ => "se-agent",
    };
    let path = slots.slot_dir(next.active).join("bin").join(binary);
    info!(slot = %next.active, path = %path.display(), pending = next.pending, "booting");
    let err = std::process::Command::new(&path).arg("run").arg("--config").arg(config).exec();
    Err(BootError::Exec { path: path.display().to_string(), source: err })
}

/// The boot record of this boot, written before the boot: an attempt more
/// of a slot on trial, or, after [`MAX_BOOT_ATTEMPTS`], the previous slot.
/// Both boot loaders (vm, docker) choose through here.
pub fn choose_slot(slots: &Slots) -> Result<common::slots::BootRecord, SlotError> {
    let record = slots.boot_record()?;
    let next = next_record(&record, MAX_BOOT_ATTEMPTS);
    if next != record {
        if next.active != record.active {
            warn!(from = %record.active, to = %next.active, attempts = record.attempts, "slot failed to boot too often; falling back");
        }
        slots.write_boot_record(&next)?;
    }
    Ok(next)
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
