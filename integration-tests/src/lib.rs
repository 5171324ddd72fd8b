//! The molt test harness.
//!
//! - [`TestCluster`]: an in-process cluster. Every node is the real agent
//!   (`controller_agent::start`, `se_agent::start`) on its own loopback
//!   address with real certificates and mutual TLS, started from the same
//!   configs `molt local up` writes. Stopping a node cancels all its tasks at
//!   once (as a power cut would); restarting runs it again from its data dir.
//! - [`bin`] and [`LocalCluster`]: the process-level layer, driving the
//!   release binaries, where each node is a process in its own PID namespace.
//! - [`browser`]: headless Chromium over the DevTools protocol.
//! - Package and PKI helpers.

pub mod bench;
pub mod browser;
pub mod inproc;
pub mod process;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU8, Ordering},
};

pub use inproc::TestCluster;
pub use process::{LocalCluster, bin};

/// A loopback /24 no other test of this run uses (127.1.N for in-process
/// clusters, 127.2.N for process-level ones).
pub fn unique_subnet(second: u8) -> [u8; 3] {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Different test binaries run one after another, so one counter suffices;
    // mixing in the pid keeps two concurrent runs on one machine apart too.
    let salt = (std::process::id() % 50) as u8 * 5;
    [127, second, n.wrapping_add(salt)]
}

/// Writes a payload dir whose `bin/se-agent` has `size` bytes.
pub fn payload_dir(dir: &Path, size: usize) -> PathBuf {
    let p = dir.join("payload");
    std::fs::create_dir_all(p.join("bin")).unwrap();
    std::fs::write(p.join("bin/controller-agent"), b"#!/bin/sh\nexit 0\n").unwrap();
    // Not all zeros, so that a corrupted byte is visible.
    let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(p.join("bin/se-agent"), data).unwrap();
    p
}

/// Builds a package of `version` (min compatible 1.0.0) and `kind` with a
/// payload of about `size` bytes; returns its path.
pub fn make_package(dir: &Path, version: &str, kind: common::DeploymentKind, size: usize) -> PathBuf {
    let payload = payload_dir(dir, size);
    let out = dir.join(format!("{}-{version}", kind.package_file_name()));
    common::package::build(&payload, version.parse().unwrap(), "1.0.0".parse().unwrap(), kind, &out).unwrap();
    out
}

/// Polls `f` until it is true or `secs` pass; panics with `what` then.
pub async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f().await {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {secs} s waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Builds a package of `version` (minimum compatible `min`) from this
/// build's release binaries. With `broken = Some((binary, node))`, that
/// binary of the package refuses to start on that node (it exits 1), and runs
/// the real one everywhere else.
pub fn release_package(dir: &Path, version: &str, min: &str, broken: Option<(&str, &str)>) -> PathBuf {
    let payload = dir.join(format!("payload-{version}"));
    std::fs::create_dir_all(payload.join("bin")).unwrap();
    for name in ["controller-agent", "se-agent"] {
        let dst = payload.join("bin").join(name);
        match broken {
            Some((b, node)) if b == name => {
                // `run --config CONFIG`: $3 is the node's config path.
                let script = format!(
                    "#!/bin/sh\ncase \"$3\" in */nodes/{node}/*) echo 'this agent cannot start here' >&2; exit 1;; esac\nexec {} \"$@\"\n",
                    bin(name).display()
                );
                std::fs::write(&dst, script).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            _ => {
                std::fs::copy(bin(name), &dst).unwrap();
            }
        }
    }
    let out = dir.join(format!("controller-{version}.pkg"));
    common::package::build(&payload, version.parse().unwrap(), min.parse().unwrap(), common::DeploymentKind::Vm, &out)
        .unwrap();
    out
}
