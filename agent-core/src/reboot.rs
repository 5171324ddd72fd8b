//! The only module that restarts the machine.
//!
//! In a node of `molt local` (its own PID namespace) `reboot(RB_AUTOBOOT)`
//! ends the namespace's init with SIGHUP and the supervisor powers the node
//! on again; on a real machine it restarts the machine. Test harnesses that
//! run agents in-process pass [`NoReboot`].

use std::convert::Infallible;

/// A way to reboot the node.
pub trait Reboot: Send + Sync + std::fmt::Debug {
    /// Flushes file systems and reboots. Returns only on failure.
    fn reboot(&self) -> Result<Infallible, String>;
}

/// `sync()` then `reboot(RB_AUTOBOOT)` through `nix`.
#[derive(Debug, Clone, Copy)]
pub struct SystemReboot;

impl Reboot for SystemReboot {
    fn reboot(&self) -> Result<Infallible, String> {
        nix::unistd::sync();
        nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT)
            .map_err(|e| format!("reboot(2) failed: {e}"))
    }
}

/// For agents running inside a test process: refuses to reboot.
#[derive(Debug, Clone, Copy)]
pub struct NoReboot;

impl Reboot for NoReboot {
    fn reboot(&self) -> Result<Infallible, String> {
        Err("this node cannot reboot (it runs inside a test process)".into())
    }
}
