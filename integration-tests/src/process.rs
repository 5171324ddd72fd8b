//! The process-level layer: the release binaries, run as an operator would.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

/// The path of a release binary of this workspace (`molt`, `controller-agent`,
/// `se-agent`), next to the test binary's `deps/` dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // Test binaries live in target/release/deps, bench binaries in target/release.
    let here = exe.parent().unwrap();
    let p = [here.join(name), here.parent().unwrap().join(name)].into_iter().find(|p| p.is_file());
    p.unwrap_or_else(|| {
        panic!("{name} is missing next to {}: run `cargo build --release --workspace` first", exe.display())
    })
}

/// `molt package build` of `version` (compatible from `min`) with this
/// build's agents as the payload, as an operator builds one; returns its path.
pub fn cli_package(dir: &std::path::Path, version: &str, min: &str) -> PathBuf {
    let payload = dir.join(format!("payload-{version}"));
    std::fs::create_dir_all(payload.join("bin")).unwrap();
    for name in ["controller-agent", "se-agent"] {
        std::fs::copy(bin(name), payload.join("bin").join(name)).unwrap();
    }
    let pkg = dir.join(format!("controller-{version}.pkg"));
    package_build(&payload, version, min, "vm", &pkg);
    pkg
}

/// `molt package build --kind docker` of `version` from this build's
/// agents, as an operator builds one. With `broken = Some(binary)`, that
/// agent of the images cannot start (a script for a shell the image lacks).
/// The images are tagged `molt-ROLE:VERSION` on this machine's Docker:
/// tests that build a broken image give it a version of its own.
pub fn docker_package(dir: &std::path::Path, version: &str, min: &str, broken: Option<&str>) -> PathBuf {
    let payload = dir.join(format!("docker-payload-{version}"));
    std::fs::create_dir_all(payload.join("bin")).unwrap();
    for name in ["controller-agent", "se-agent"] {
        let dst = payload.join("bin").join(name);
        if broken == Some(name) {
            std::fs::write(&dst, "#!/bin/sh\nexit 1\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            std::fs::copy(bin(name), &dst).unwrap();
        }
    }
    let pkg = dir.join(format!("controller_docker-{version}.tgz"));
    package_build(&payload, version, min, "docker", &pkg);
    pkg
}

/// `molt package build`; panics unless it succeeds.
fn package_build(payload: &std::path::Path, version: &str, min: &str, kind: &str, out: &std::path::Path) {
    let (payload, out_path) = (payload.to_str().unwrap(), out.to_str().unwrap());
    let args =
        ["package", "build", "--version", version, "--min-compatible", min, "--kind", kind, "--payload", payload];
    let out = molt(&[&args[..], &["--out", out_path]].concat());
    assert!(out.status.success(), "molt package build --kind {kind}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `molt ARGS`; returns its output.
pub fn molt(args: &[&str]) -> Output {
    Command::new(bin("molt")).args(args).output().unwrap()
}

/// `molt pki token --dir PKI --role ROLE --name NAME`; panics unless it
/// succeeds; returns the token file.
pub fn mint_token(pki: &std::path::Path, role: &str, name: &str) -> PathBuf {
    let out = molt(&["pki", "token", "--dir", pki.to_str().unwrap(), "--role", role, "--name", name]);
    assert!(out.status.success(), "pki token {name}: {}", String::from_utf8_lossy(&out.stderr));
    pki.join(format!("{name}.token"))
}

/// A cluster made by `molt local up`, powered down when dropped.
#[derive(Debug)]
pub struct LocalCluster {
    /// Holds the cluster dir.
    pub dir: tempfile::TempDir,
}

impl LocalCluster {
    /// `molt local up --dir ... ARGS` on a fresh subnet; panics unless it succeeds.
    pub fn up(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = crate::unique_subnet(2);
        let subnet = format!("{a}.{b}.{c}");
        let d = dir.path().join("c");
        let mut all = vec!["local", "up", "--cluster-dir", d.to_str().unwrap(), "--subnet", &subnet];
        all.extend_from_slice(args);
        let out = molt(&all);
        assert!(out.status.success(), "molt local up failed: {}", String::from_utf8_lossy(&out.stderr));
        Self { dir }
    }

    /// A cluster of `controllers` and `groups` (`NAME:HA:COUNT,...`) with the
    /// short heartbeat and re-formation deadline the upgrade tests use.
    pub fn for_upgrades(controllers: &str, groups: &str) -> Self {
        Self::up(&[
            "--controllers",
            controllers,
            "--groups",
            groups,
            "--heartbeat-ms",
            "300",
            "--reform-timeout-secs",
            "25",
        ])
    }

    /// A cluster of `deployment` (`docker` or `mixed`) with a name of its
    /// own, so that its containers (`molt-NAME-NODE`) are apart from other
    /// tests'; the upgrade tests' short timings.
    pub fn docker(deployment: &str, controllers: &str, groups: &str) -> Self {
        let name = format!("t{}", common::types::random_hex(3));
        Self::up(&[
            "--deployment",
            deployment,
            "--cluster",
            &name,
            "--controllers",
            controllers,
            "--groups",
            groups,
            "--heartbeat-ms",
            "300",
            "--reform-timeout-secs",
            "30",
            "--self-revert-secs",
            "60",
        ])
    }

    /// The cluster's name (`cluster.json`).
    pub fn name(&self) -> String {
        self.cluster_json_file()["cluster"].as_str().unwrap().to_owned()
    }

    fn cluster_json_file(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path().join("cluster.json")).unwrap()).unwrap()
    }

    /// A REST client of the leader, connected through the cluster dir.
    pub fn api(&self) -> molt::client::Api {
        let conn = molt::client::Connection::resolve(Some(&self.path()), None, None, None).unwrap();
        molt::client::Api::new(&conn).unwrap()
    }

    /// The leader's URL from `cluster.json`.
    pub fn leader_url(&self) -> String {
        self.cluster_json_file()["leader_url"].as_str().unwrap().to_owned()
    }

    /// The cluster dir.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    /// `molt --cluster-dir DIR ARGS`.
    pub fn molt(&self, args: &[&str]) -> Output {
        let d = self.path();
        let mut all = vec!["--cluster-dir", d.to_str().unwrap()];
        all.extend_from_slice(args);
        molt(&all)
    }

    /// `molt local power on|off --dir DIR NODE`; panics unless it succeeds.
    pub fn power(&self, on_off: &str, node: &str) {
        let d = self.path();
        let out = molt(&["local", "power", on_off, "--cluster-dir", d.to_str().unwrap(), node]);
        assert!(out.status.success(), "power {on_off} {node}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `molt show cluster --json`.
    pub fn cluster(&self) -> controller_agent::leader::cluster::ClusterDoc {
        let out = self.molt(&["show", "cluster", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The leader's view of the node `id`.
    pub fn node(&self, id: &str) -> controller_agent::leader::cluster::NodeView {
        let doc = self.cluster();
        doc.node(id).cloned().unwrap_or_else(|| panic!("no node {id}: {doc:#?}"))
    }

    /// The state the leader shows for `id`.
    pub fn state_of(&self, id: &str) -> controller_agent::leader::cluster::NodeState {
        self.node(id).state
    }

    /// The pid (outside its namespace) of a node's init, if it is powered on.
    pub fn init_pid(&self, id: &str) -> Option<u32> {
        std::fs::read_to_string(self.path().join("nodes").join(id).join("init.pid")).ok()?.trim().parse().ok()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let d = self.path();
        let _ = molt(&["local", "down", "--cluster-dir", d.to_str().unwrap()]);
        if std::thread::panicking() {
            // What the controllers said last: the failing test's evidence.
            for c in ["c1", "c2", "c3"] {
                let Ok(log) = std::fs::read_to_string(d.join("nodes").join(c).join("agent.log")) else { continue };
                let lines: Vec<&str> =
                    log.lines().filter(|l| !l.contains("openraft::") && !l.contains("RPCError")).collect();
                eprintln!("---- last lines of {c}'s agent.log ----");
                for l in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}
