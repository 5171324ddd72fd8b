//! Docker deployments at process level: every node a real container of
//! this machine's Docker Engine, upgraded by `docker load` of the package's
//! image and a "reboot" that ends the container; the supervisor on the host
//! (`AGENT boot --docker`) boots the boot record's tag.

use integration_tests::{
    LocalCluster,
    process::{cli_package, docker_package},
};
use serde_json::json;

use crate::support::*;

/// The cluster's containers as Docker lists them: `(name, image, running)`.
async fn containers(c: &LocalCluster) -> Vec<(String, String, bool)> {
    let engine = molt_docker::Engine::connect().await.expect("Docker Engine (`.ci/run` starts dockerd)");
    engine.containers_of(&c.name()).await.unwrap()
}

async fn has_image(tag: &str) -> bool {
    molt_docker::Engine::connect().await.unwrap().has_image(tag).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_cluster_refuses_a_vm_package_then_upgrades_to_new_containers() {
    let c = LocalCluster::docker("docker", "1", "g1:active-active:2");
    let api = c.api();
    let name = c.name();
    let before = containers(&c).await;
    assert_eq!(
        before,
        vec![
            (format!("molt-{name}-c1"), "molt-controller:1.0.0".into(), true),
            (format!("molt-{name}-g1-se1"), "molt-se:1.0.0".into(), true),
            (format!("molt-{name}-g1-se2"), "molt-se:1.0.0".into(), true),
        ]
    );
    api.post("/api/virtualservice", &json!({"name": "web", "se_group": "g1", "port": 8080, "scale": 2})).await.unwrap();
    let config_before = config(&api).await;
    let tmp = tempfile::tempdir().unwrap();

    // A vm package: refused by the pre-checks, before anything is staged.
    let vm = upload(&api, &cli_package(tmp.path(), "2.0.0", "1.0.0")).await;
    let e = api.post("/api/cluster/upgrade", &json!({"image_path": vm})).await.unwrap_err();
    let (kind, message) = refusal::<()>(Err(e));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(
        message.contains("is a vm package") && message.contains("use controller_docker.tgz"),
        "it says which package to use: {message}"
    );
    let v = cluster(&api).await;
    assert!(v.nodes.iter().all(|n| n.staged.is_empty()), "{v:#?}");
    assert_eq!(status(&api).await.state, OpState::Idle);

    // The docker package: every node loads its image and boots a container of the new tag.
    let image = upload(&api, &docker_package(tmp.path(), "2.0.0", "1.0.0", None)).await;
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    let end = wait_end(&api, 240).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    all_up_on(&api, "2.0.0", &[], 30).await;
    assert_eq!(config(&api).await, config_before, "the configuration survived the upgrade");
    // One container per node, of the new tag: the old ones are gone, the old images kept for rollback.
    assert_eq!(
        containers(&c).await,
        vec![
            (format!("molt-{name}-c1"), "molt-controller:2.0.0".into(), true),
            (format!("molt-{name}-g1-se1"), "molt-se:2.0.0".into(), true),
            (format!("molt-{name}-g1-se2"), "molt-se:2.0.0".into(), true),
        ]
    );
    assert!(has_image("molt-controller:1.0.0").await && has_image("molt-se:1.0.0").await);
    for n in ["c1", "g1-se1", "g1-se2"] {
        let log = std::fs::read_to_string(c.path().join("nodes").join(n).join("agent.log")).unwrap();
        assert!(log.contains("image loaded tag=molt-"), "{n} loaded the image through Docker's API");
        assert!(log.contains("rebooted; booting again"), "{n}'s container ended by reboot(2) and was booted again");
    }
    // Power is the container's: off removes it, on boots the committed tag again.
    c.power("off", "g1-se2");
    assert!(!containers(&c).await.iter().any(|(n, _, _)| n.ends_with("-g1-se2")));
    c.power("on", "g1-se2");
    all_up_on(&api, "2.0.0", &[], 30).await;
    // Rolling the group back starts the old tag, kept in Docker's store.
    let out = c.molt(&["rollback", "segroup", "g1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ses: Vec<_> = containers(&c).await.into_iter().filter(|(n, _, _)| n.contains("-g1-se")).collect();
    assert_eq!(
        ses,
        vec![
            (format!("molt-{name}-g1-se1"), "molt-se:1.0.0".into(), true),
            (format!("molt-{name}-g1-se2"), "molt-se:1.0.0".into(), true),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_se_image_that_cannot_start_falls_back_to_the_old_tag_and_suspends_its_group() {
    let c = LocalCluster::docker("docker", "1", "g1:active-active:2");
    let api = c.api();
    let tmp = tempfile::tempdir().unwrap();
    // A version of its own: the broken images' tags must not be another test's.
    let image = upload(&api, &docker_package(tmp.path(), "2.1.0", "1.0.0", Some("se-agent"))).await;
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    let end = wait_end(&api, 300).await;
    assert_eq!(end.state, OpState::Suspended, "{end:#?}");
    assert_eq!(group(&end, "g1").state, GroupState::Suspended, "{end:#?}");
    // The controller is on 2.1.0; the first SE tried the new tag three times, then fell back.
    let nodes = versions(&api).await;
    assert!(nodes.contains(&("c1".into(), "2.1.0".into(), ClusterNodeState::Up)), "{nodes:?}");
    assert!(nodes.contains(&("g1-se1".into(), "1.0.0".into(), ClusterNodeState::Up)), "{nodes:?}");
    let log = std::fs::read_to_string(c.path().join("nodes/g1-se1/agent.log")).unwrap();
    // Three boots of the new tag, then the boot loader falls back.
    let (before, _) = log.split_once("falling back").unwrap_or_else(|| panic!("no fallback in:\n{log}"));
    let trials = before.matches("booting slot=b image=molt-se:2.1.0").count();
    assert_eq!(trials, 3, "the new tag was tried {trials} times before the fallback:\n{log}");
    let se1 = containers(&c).await.into_iter().find(|(n, _, _)| n.ends_with("-g1-se1")).unwrap();
    assert_eq!((se1.1.as_str(), se1.2), ("molt-se:1.0.0", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_controller_image_that_cannot_start_aborts_the_upgrade() {
    let c = LocalCluster::docker("docker", "1", "g1:active-active:1");
    let api = c.api();
    let tmp = tempfile::tempdir().unwrap();
    let image = upload(&api, &docker_package(tmp.path(), "2.2.0", "1.0.0", Some("controller-agent"))).await;
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    // The leader itself falls back after three attempts and finds the upgrade failed:
    // wait for its first boot of the new tag, then for the end.
    let c1_log = c.path().join("nodes/c1/agent.log");
    integration_tests::eventually(120, "c1 booting molt-controller:2.2.0", async || {
        std::fs::read_to_string(&c1_log).is_ok_and(|l| l.contains("image=molt-controller:2.2.0"))
    })
    .await;
    let end = wait_end(&api, 300).await;
    assert_eq!(end.state, OpState::Aborted, "{end:#?}");
    all_up_on(&api, "1.0.0", &[], 60).await;
    let log = std::fs::read_to_string(c.path().join("nodes/c1/agent.log")).unwrap();
    assert!(log.contains("falling back"), "{log}");
    let now = containers(&c).await;
    assert!(now.iter().all(|(_, image, running)| image.ends_with(":1.0.0") && *running), "{now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_cluster_upgrades_in_one_operation_each_node_with_its_package() {
    // Controllers on vm (processes in PID namespaces), SEs on docker.
    let c = LocalCluster::docker("mixed", "1", "g1:active-active:2");
    let api = c.api();
    api.post("/api/virtualservice", &json!({"name": "web", "se_group": "g1", "port": 8080, "scale": 2})).await.unwrap();
    let v = cluster(&api).await;
    let kinds: Vec<(&str, &str)> =
        v.nodes.iter().map(|n| (n.id.as_str(), n.deployment.as_deref().unwrap_or_default())).collect();
    assert_eq!(kinds, vec![("c1", "vm"), ("g1-se1", "docker"), ("g1-se2", "docker")]);
    // `molt show cluster` says how each node runs.
    let shown = c.molt(&["show", "cluster"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    let line = |id: &str| text.lines().find(|l| l.starts_with(id)).unwrap_or_default().to_owned();
    assert!(text.contains(" KIND ") && line("c1").contains(" vm ") && line("g1-se1").contains(" docker "), "{text}");
    let tmp = tempfile::tempdir().unwrap();
    let vm = cli_package(tmp.path(), "2.0.0", "1.0.0");
    let docker = docker_package(tmp.path(), "2.0.0", "1.0.0", None);

    // One package is not enough: the pre-checks name the nodes without one.
    let out = c.molt(&["upgrade", "system", "image_path", vm.to_str().unwrap(), "prechecks_only"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("g1-se1 (docker)") && text.contains("docker_image_path controller_docker.tgz"), "{text}");
    // Nor a docker package given as the vm nodes' one.
    let out = c.molt(&[
        "upgrade",
        "system",
        "image_path",
        docker.to_str().unwrap(),
        "docker_image_path",
        docker.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("image_path is the vm nodes' package"), "{out:?}");
    assert_eq!(status(&api).await.state, OpState::Idle);

    // Both, in one operation, through the CLI.
    let out = c.molt(&[
        "upgrade",
        "system",
        "image_path",
        vm.to_str().unwrap(),
        "docker_image_path",
        docker.to_str().unwrap(),
        "--no-wait",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let end = wait_end(&api, 240).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    assert!(end.docker_image_path.as_deref().is_some_and(|p| p.ends_with(".tgz")), "{end:#?}");
    all_up_on(&api, "2.0.0", &[], 30).await;
    let c1 = std::fs::read_to_string(c.path().join("nodes/c1/agent.log")).unwrap();
    assert!(c1.contains("rebooted; powering on again"), "the vm controller rebooted in its PID namespace");
    let name = c.name();
    assert_eq!(
        containers(&c).await,
        vec![
            (format!("molt-{name}-g1-se1"), "molt-se:2.0.0".into(), true),
            (format!("molt-{name}-g1-se2"), "molt-se:2.0.0".into(), true),
        ],
        "the SEs are containers of the new tag; the controller is no container"
    );
}
