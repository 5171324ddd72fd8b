//! Installing on real nodes as INSTALL.md says: its `node.toml` examples,
//! `pki init`, `package build`, the agents' `install`, the boot loader, and
//! the systemd units in `packaging/systemd/`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{bin, process::molt};

use crate::support::{ClusterDoc, ClusterNodeState};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ```toml blocks of INSTALL.md, in order.
fn install_md_configs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("INSTALL.md")).unwrap();
    text.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap().to_owned()).collect()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed: {all}");
    all
}

/// Boot loaders started as systemd would, each in a PID namespace of its
/// own so that nothing here could reboot the machine; killed on drop.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A docker node's container, removed on drop (its supervisor is killed, not stopped).
struct RemoveContainer(&'static str);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = molt::docker::remove_container(self.0);
    }
}

#[test]
fn install_md_takes_nodes_from_nothing_to_a_cluster() {
    let configs = install_md_configs();
    assert_eq!(configs.len(), 3, "INSTALL.md shows the leader, a follower and an SE");
    let tmp = tempfile::tempdir().unwrap();
    let [a, b, c] = integration_tests::unique_subnet(2);
    let net = format!("{a}.{b}.{c}.");
    let ip = |doc_ip: &str| doc_ip.replace("10.0.0.", &net).replace("10.0.1.", &net);

    // 3. Certificates for the nodes INSTALL.md names.
    let pki = tmp.path().join("pki");
    let mut args = vec!["pki", "init", "--dir", pki.to_str().unwrap(), "--cluster", "prod"];
    let specs: Vec<String> = [
        ("c1", "controller", "10.0.0.11"),
        ("c2", "controller", "10.0.0.12"),
        ("c3", "controller", "10.0.0.13"),
        ("se-1", "se", "10.0.1.21"),
        ("se-2", "se", "10.0.1.22"),
    ]
    .iter()
    .map(|(id, role, addr)| format!("{id}={role}@{}", ip(addr)))
    .collect();
    for s in &specs {
        args.extend(["--node", s]);
    }
    let out = molt(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // 6. The first version, built as INSTALL.md says.
    let pkg = integration_tests::process::cli_package(tmp.path(), "1.0.0", "1.0.0");

    // 3.-4. and 6. on each node: its files under a root of its own.
    // Dropped after `nodes`: the supervisors are killed first, then the container goes.
    let _container = RemoveContainer("molt-prod-se-2");
    let mut nodes = Nodes(vec![]);
    for cfg in &configs {
        let file: common::config::NodeConfigFile = toml::from_str(cfg).unwrap();
        let id = file.node_id.clone();
        let root = tmp.path().join("nodes").join(&id);
        let etc = root.join("etc/molt");
        std::fs::create_dir_all(etc.join("pki")).unwrap();
        let mut files = vec!["ca.pem".to_owned(), format!("{id}.pem"), format!("{id}.key")];
        if file.api.is_some() {
            files.push("admin.token".into());
        }
        for f in files {
            std::fs::copy(pki.join(&f), etc.join("pki").join(&f)).unwrap();
        }
        let text = ip(cfg)
            .replace("/etc/molt", etc.to_str().unwrap())
            .replace("/var/lib/molt", root.join("var/lib/molt").to_str().unwrap());
        let config = etc.join("node.toml");
        std::fs::write(&config, text).unwrap();
        // Every example is a valid configuration, not only one that parses.
        common::config::NodeSettings::load(&config).unwrap_or_else(|e| panic!("INSTALL.md's config of {id}: {e}"));
        let agent = if file.role == "controller" { "controller-agent" } else { "se-agent" };
        let installed = run_ok(
            Command::new(bin(agent)).args(["install", "--config", config.to_str().unwrap(), "--package"]).arg(&pkg),
        );
        assert!(installed.contains("installed 1.0.0"), "{installed}");
        // Twice is refused and changes nothing.
        let again = Command::new(bin(agent))
            .args(["install", "--config", config.to_str().unwrap(), "--package"])
            .arg(&pkg)
            .output()
            .unwrap();
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already runs 1.0.0"));

        // 7. What the unit runs: the boot loader.
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(bin(agent))
            .args(["boot", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        nodes.0.push(child);
    }

    // 7b. se-2 as a docker node: the SE's example with `deployment = "docker"`,
    // the docker package, and what molt-docker-boot.service runs.
    let docker_pkg = integration_tests::process::docker_package(tmp.path(), "1.0.0", "1.0.0", None);
    let root = tmp.path().join("nodes/se-2");
    let etc = root.join("etc/molt");
    std::fs::create_dir_all(etc.join("pki")).unwrap();
    for f in ["ca.pem", "se-2.pem", "se-2.key"] {
        std::fs::copy(pki.join(f), etc.join("pki").join(f)).unwrap();
    }
    let text = ip(&configs[2].replace("se-1", "se-2").replace("10.0.1.21", "10.0.1.22"))
        .replace("deployment = \"vm\"", "deployment = \"docker\"")
        .replace("/etc/molt", etc.to_str().unwrap())
        .replace("/var/lib/molt", root.join("var/lib/molt").to_str().unwrap());
    let config = etc.join("node.toml");
    std::fs::write(&config, text).unwrap();
    let installed = run_ok(
        Command::new(bin("se-agent"))
            .args(["install", "--config", config.to_str().unwrap(), "--package"])
            .arg(&docker_pkg),
    );
    assert!(installed.contains("molt-docker-boot"), "{installed}");
    let unit = std::fs::read_to_string(repo().join("packaging/systemd/molt-docker-boot.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    assert_eq!(exec, "/usr/local/bin/controller-agent boot --docker --config /etc/molt/node.toml");
    nodes.0.push(
        Command::new(bin("se-agent"))
            .args(["boot", "--docker", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // 8. molt with the connection options INSTALL.md exports.
    let leader = format!("https://{}:8443", ip("10.0.0.11"));
    let show = || {
        let out = Command::new(bin("molt"))
            .env("MOLT_CONTROLLER", &leader)
            .env("MOLT_TOKEN_FILE", pki.join("admin.token"))
            .env("MOLT_CA", pki.join("ca.pem"))
            .args(["show", "cluster", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<ClusterDoc>(&out.stdout).ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let up =
        |v: &ClusterDoc, id: &str| v.node(id).is_some_and(|n| n.state == ClusterNodeState::Up && n.version == "1.0.0");
    loop {
        if let Some(v) = show()
            && ["c1", "c2", "se-1", "se-2"].iter().all(|id| up(&v, id))
        {
            assert_eq!(v.cluster, "prod");
            let se2 = v.node("se-2").unwrap();
            assert_eq!(se2.deployment.as_deref(), Some("docker"), "{se2:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the installed nodes never showed up on 1.0.0: {:?}", show());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn systemd_units_start_the_boot_loader_with_the_documented_paths() {
    for (unit, agent) in [("molt-controller.service", "controller-agent"), ("molt-se.service", "se-agent")] {
        let path = repo().join("packaging/systemd").join(unit);
        let text = std::fs::read_to_string(&path).unwrap();
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
        assert_eq!(exec, format!("/usr/local/bin/{agent} boot --config /etc/molt/node.toml"), "{unit}");
        for line in
            ["Restart=always", "StartLimitIntervalSec=0", "ReadWritePaths=/var/lib/molt", "WantedBy=multi-user.target"]
        {
            assert!(text.lines().any(|l| l == line), "{unit} lacks {line}");
        }
        assert!(text.contains("CAP_SYS_BOOT"), "{unit} must allow reboot(2)");
        // systemd's own check, with the binary this build made in the ExecStart.
        if Path::new("/usr/bin/systemd-analyze").exists() {
            let dir = tempfile::tempdir().unwrap();
            let copy = dir.path().join(unit);
            let built = bin(agent);
            std::fs::write(&copy, text.replace(&format!("/usr/local/bin/{agent}"), built.to_str().unwrap())).unwrap();
            let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify {unit}: {said}");
        } else {
            eprintln!("systemd-analyze is not installed: checked {unit} without it");
        }
        // The binary takes the arguments the unit gives it.
        let out = Command::new(bin(agent)).args(["boot", "--help"]).output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--config"));
    }
}
