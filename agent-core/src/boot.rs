//! The boot loader (`controller-agent boot`, `se-agent boot`): reads the
//! boot record, counts attempts of a slot on trial, falls back to the
//! previous slot after too many, and execs the chosen slot's agent.

use std::{convert::Infallible, os::unix::process::CommandExt, path::Path};

use common::{
    Role,
    config::{ConfigError, NodeSettings},
    slots::{BootRecord, SlotError, Slots},
};
use tracing::{info, warn};

/// Boots of a pending slot tried before falling back.
pub const MAX_BOOT_ATTEMPTS: u32 = 3;

/// Why the boot loader could not hand over to an agent.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Bad config.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Boot record or slot problem.
    #[error("{0}")]
    Slots(#[from] SlotError),
    /// The slot's agent could not be executed.
    #[error("cannot execute {path}: {source}")]
    Exec {
        /// The binary.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The boot record to write before booting, given the one found. Pure.
pub fn next_record(r: &BootRecord, max_attempts: u32) -> BootRecord {
    let mut next = r.clone();
    if r.pending {
        match r.previous {
            Some(prev) if r.attempts >= max_attempts => {
                next.active = prev;
                next.previous = Some(r.active);
                next.pending = false;
                next.attempts = 0;
            }
            _ => next.attempts += 1,
        }
    }
    next
}

/// Chooses the slot and execs its agent with `run --config CONFIG`.
/// Returns only on failure.
pub fn boot(config: &Path) -> Result<Infallible, BootError> {
    let settings = NodeSettings::load(config)?;
    let slots = Slots::new(&settings.data_dir);
    let record = slots.boot_record()?;
    let next = next_record(&record, MAX_BOOT_ATTEMPTS);
    if next != record {
        if next.active != record.active {
            warn!(from = %record.active, to = %next.active, attempts = record.attempts, "slot failed to boot too often; falling back");
        }
        slots.write_boot_record(&next)?;
    }
    let binary = match settings.role {
        Role::Controller => "controller-agent",
        _ => "se-agent",
    };
    let path = slots.slot_dir(next.active).join("bin").join(binary);
    info!(slot = %next.active, path = %path.display(), pending = next.pending, "booting");
    let err = std::process::Command::new(&path).arg("run").arg("--config").arg(config).exec();
    Err(BootError::Exec { path: path.display().to_string(), source: err })
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

#[cfg(test)]
mod tests {
    use common::slots::Slot;

    use super::*;

    fn rec(pending: bool, attempts: u32) -> BootRecord {
        BootRecord { format: 1, active: Slot::B, previous: Some(Slot::A), pending, attempts }
    }

    #[test]
    fn committed_slot_boots_unchanged() {
        assert_eq!(next_record(&rec(false, 0), 3), rec(false, 0));
    }

    #[test]
    fn pending_slot_counts_attempts_then_falls_back() {
        assert_eq!(next_record(&rec(true, 0), 3).attempts, 1);
        assert_eq!(next_record(&rec(true, 2), 3).attempts, 3);
        let fell = next_record(&rec(true, 3), 3);
        assert_eq!((fell.active, fell.previous, fell.pending), (Slot::A, Some(Slot::B), false));
    }
}
