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
        // The spans that led here reach the collector before the node goes.
        crate::otlp::flush();
        nix::unistd::sync();
        nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT)
            .map_err(|e| format!("reboot(2) failed: {e}"))
    }
}

/// A docker node's agent: the init of its container's PID namespace, where
/// `reboot(2)` (allowed by `CAP_SYS_BOOT`) ends the container with exit code
/// 129 and the node's supervisor boots the boot record's slot. Refused unless
/// the agent is PID 1: in a container sharing the host's PID namespace it
/// would restart the host.
#[derive(Debug, Clone, Copy)]
pub struct ContainerReboot;

impl Reboot for ContainerReboot {
    fn reboot(&self) -> Result<Infallible, String> {
        if nix::unistd::getpid().as_raw() != 1 {
            return Err("this docker node's agent is not its container's init (PID 1), so reboot(2) would restart the host: run it as the container's command, without --pid=host".into());
        }
        SystemReboot.reboot()
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
