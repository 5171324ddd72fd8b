//! The system upgrade at process level: real reboots through reboot(2) in
//! each node's PID namespace, the release binaries as packages.

use std::time::{Duration, Instant};

use integration_tests::{LocalCluster, process::molt};
use molt::client::ClientError;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_upgrades_and_keeps_its_config_which_is_read_only_meanwhile() {
    let (c, api) = start(&["--controllers", "3", "--groups", "g1:active-active:2,g2:n-plus-m:2"]);
    api.post("/api/virtualservice", &json!({"name": "web", "se_group": "g1", "port": 8080, "scale": 2})).await.unwrap();
    api.post("/api/virtualservice", &json!({"name": "api", "se_group": "g2", "port": 8081})).await.unwrap();
    let before = config(&api).await;
    let tmp = tempfile::tempdir().unwrap();
    let image = upload(&api, &package(tmp.path(), "2.0.0", "1.0.0", None)).await;
    let started = api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    assert_eq!(started["state"], "in_progress");
    // At every step, a configuration write then a status read: a write is
    // accepted only once no status read can say the upgrade runs.
    let writer = tokio::spawn(write_at_every_step(api.clone()));
    // While it runs: config changes get 503 and change nothing; reads work.
    for (method, path, body) in [
        ("POST", "/api/virtualservice", json!({"name": "new", "se_group": "g1", "port": 9000})),
        ("PUT", "/api/virtualservice/web", json!({"name": "web", "se_group": "g1", "port": 9001, "scale": 1})),
        ("DELETE", "/api/serviceenginegroup/g2", json!(null)),
    ] {
        let r = match method {
            "POST" => api.post(path, &body).await,
            "PUT" => api.put(path, &body).await,
            _ => api.delete(path).await,
        };
        match r {
            Err(e) => {
                assert_eq!(e.kind(), Some(ErrorKind::ReadOnly), "{method} {path}: {e}");
                assert!(matches!(e, ClientError::Api { status, .. } if status.as_u16() == 503), "{e}");
            }
            other => panic!("{method} {path} during the upgrade: {other:?}"),
        }
    }
    assert_eq!(config(&api).await, before);
    let again = api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap_err();
    assert!(matches!(again, ClientError::Api { status, .. } if status.as_u16() == 409), "{again}");
    let end = wait_end(&api, 180).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    assert_eq!(end.history.last().map(|h| (h.operation, h.state)), Some((Operation::Upgrade, OpState::Completed)));
    let refused_in = writer.await.unwrap();
    for phase in [ShownPhase::Distribute, ShownPhase::Controllers, ShownPhase::ServiceEngines] {
        assert!(refused_in.contains(&phase), "no write was tried in {phase:?}: {refused_in:?}");
    }
    all_up_on(&api, "2.0.0", &[], 30).await;
    // Every node rebooted for real: each is the init of a new PID namespace.
    for n in ["c1", "c2", "g1-se1", "g2-se2"] {
        let log = std::fs::read_to_string(c.path().join("nodes").join(n).join("agent.log")).unwrap();
        assert!(log.contains("rebooted; powering on again"), "{n} did not reboot");
    }
    assert_eq!(config(&api).await, before, "the configuration survived the upgrade");
    // And it is writable again.
    api.post("/api/virtualservice", &json!({"name": "new", "se_group": "g1", "port": 9000})).await.unwrap();
    // The per-node record: every node has apply and commit events with times.
    for n in &end.nodes {
        assert!(n.events.iter().any(|e| e.task == Task::Apply && e.status == EventStatus::Done), "{n:#?}");
        assert!(n.events.iter().all(|e| e.end.is_some()), "{n:#?}");
    }
}

/// Until the operation has ended: a configuration write (one that changes
/// nothing), then a status read, typed as the server serializes it. A write
/// that is accepted is never followed by a status that says the operation
/// runs; one that is refused answers the contract's 503. Returns the phases
/// in which writes were refused.
async fn write_at_every_step(api: molt::client::Api) -> std::collections::BTreeSet<ShownPhase> {
    let mut refused_in = std::collections::BTreeSet::new();
    loop {
        let w = api.put("/api/cluster/settings", &json!({"reform_timeout_secs": 25})).await;
        let s = status(&api).await;
        match &w {
            Ok(_) => {
                assert!(
                    !s.is_running(),
                    "a config write was accepted, then the status said {:?} in {:?}",
                    s.state,
                    s.phase
                );
                return refused_in;
            }
            Err(e) if e.kind() == Some(ErrorKind::ReadOnly) => {
                refused_in.extend(s.phase);
            }
            // The leader's own reboot: no leader for a moment.
            Err(e) if e.kind() == Some(ErrorKind::Unavailable) => {}
            Err(ClientError::Unreachable { .. }) => {}
            Err(e) => panic!("a config write during the upgrade: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_cannot_start_on_one_controller_rolls_every_controller_back() {
    let (c, api) = start(&["--controllers", "3", "--groups", "g1:active-active:1"]);
    api.post("/api/virtualservice", &json!({"name": "web", "se_group": "g1", "port": 8080})).await.unwrap();
    let before = config(&api).await;
    let tmp = tempfile::tempdir().unwrap();
    let image = upload(&api, &package(tmp.path(), "2.0.0", "1.0.0", Some("c2"))).await;
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    let end = wait_end(&api, 180).await;
    assert_eq!(end.state, OpState::Aborted, "{end:#?}");
    let reason = end.reason.as_str();
    assert!(reason.contains("c2") && reason.contains("fell back"), "{reason}");
    all_up_on(&api, "1.0.0", &[], 30).await;
    let log = std::fs::read_to_string(c.path().join("nodes/c2/agent.log")).unwrap();
    assert!(log.contains("falling back"), "c2's boot loader fell back");
    assert_eq!(config(&api).await, before);
    // Not read-only any more.
    api.post("/api/virtualservice", &json!({"name": "x", "se_group": "g1", "port": 9})).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_powered_off_mid_upgrade_aborts_and_rolls_back() {
    let (c, api) = start(&["--controllers", "3"]);
    let tmp = tempfile::tempdir().unwrap();
    let image = upload(&api, &package(tmp.path(), "2.0.0", "1.0.0", None)).await;
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    wait_phase(&api, ShownPhase::Controllers).await;
    let d = c.path();
    assert!(molt(&["local", "power", "off", "--dir", d.to_str().unwrap(), "c3"]).status.success());
    let end = wait_end(&api, 180).await;
    assert_eq!(end.state, OpState::Aborted, "{end:#?}");
    let reason = end.reason.as_str();
    assert!(reason.contains("c3"), "the status names the missing node: {reason}");
    all_up_on(&api, "1.0.0", &["c3"], 30).await;
    let c3 = versions(&api).await.into_iter().find(|(id, _, _)| id == "c3").unwrap();
    assert_eq!(c3.2, ClusterNodeState::Down, "c3 is shown down");
    // Powered on again, c3 ends on the old version too.
    assert!(molt(&["local", "power", "on", "--dir", d.to_str().unwrap(), "c3"]).status.success());
    all_up_on(&api, "1.0.0", &[], 60).await;
}

/// Issue 26: a follower powered off while it staged left the upgrade in
/// `distribute` for the whole staging deadline (30 min), the status saying
/// nothing of it. Now the status names the node and when the leader gives
/// up on it, and it does after the re-formation deadline (25 s here, set on
/// every controller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_while_staging_fails_the_distribution_after_the_reformation_deadline() {
    // 2 MiB/s: the image takes several seconds to reach each node.
    let (c, api) = start(&["--controllers", "3", "--fetch-rate-limit", "2097152"]);
    let tmp = tempfile::tempdir().unwrap();
    let image = upload(&api, &package(tmp.path(), "2.0.0", "1.0.0", None)).await;
    let leader = get(&api, "/api/cluster").await["leader"].as_str().unwrap().to_owned();
    let lost = ["c2", "c3"].into_iter().find(|n| *n != leader).unwrap();
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    wait_phase(&api, ShownPhase::Distribute).await;
    let d = c.path();
    assert!(molt(&["local", "power", "off", "--dir", d.to_str().unwrap(), lost]).status.success());
    let off = Instant::now();
    // While it waits, the status says for whom and until when.
    integration_tests::eventually(30, "the status naming the lost node", async || {
        let s = status(&api).await;
        let reason = s.reason.as_str();
        reason.contains(&format!("waiting for {lost}: down for")) && reason.contains("the leader gives up on it in")
    })
    .await;
    let end = wait_end(&api, 120).await;
    assert_eq!(end.state, OpState::Aborted, "{end:#?}");
    let reason = end.reason.as_str();
    assert!(reason.contains(&format!("{lost}: down for")) && reason.contains("while staging"), "{reason}");
    let took = off.elapsed().as_secs();
    assert!(took < 90, "given up {took} s after the power cut: the staging deadline, not the re-formation one");
    all_up_on(&api, "1.0.0", &[lost], 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_in_the_se_phase_resumes_the_upgrade_after_power_on() {
    let (c, api) = start(&["--controllers", "1", "--groups", "g1:active-active:3,g2:n-plus-m:3"]);
    let tmp = tempfile::tempdir().unwrap();
    let image = upload(&api, &package(tmp.path(), "2.0.0", "1.0.0", None)).await;
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    wait_phase(&api, ShownPhase::ServiceEngines).await;
    let d = c.path();
    let pid = c.init_pid("c1").unwrap();
    // SIGKILL, as a crash would; the supervisor treats it as the power going off.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    // Gone (or a zombie its parent has yet to reap): dead either way.
    integration_tests::eventually(10, "c1's init dead", async || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
    })
    .await;
    let _ = molt(&["local", "power", "off", "--dir", d.to_str().unwrap(), "c1"]);
    assert!(molt(&["local", "power", "on", "--dir", d.to_str().unwrap(), "c1"]).status.success());
    let end = wait_end(&api, 180).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    all_up_on(&api, "2.0.0", &[], 30).await;
    let log = std::fs::read_to_string(c.path().join("nodes/c1/agent.log")).unwrap();
    assert!(log.contains("resuming the upgrade from the journal"), "the leader resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_distant_version_needs_force_which_makes_it_disruptive() {
    let (c, api) = start(&["--controllers", "1", "--groups", "g1:active-active:2"]);
    let tmp = tempfile::tempdir().unwrap();
    let image = upload(&api, &package(tmp.path(), "3.0.0", "2.0.0", None)).await;
    let e = api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap_err();
    match &e {
        ClientError::Api { status, message, .. } => {
            assert_eq!(status.as_u16(), 412);
            assert!(message.contains("below 2.0.0") && message.contains("force"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(status(&api).await.state, OpState::Idle, "nothing changed");
    // prechecks_only says the same and changes nothing.
    let p = api.post("/api/cluster/upgrade", &json!({"image_path": image, "prechecks_only": true})).await.unwrap();
    assert_eq!(p["ok"], false);
    // The CLI with force follows it to the end.
    let out = c.molt(&["upgrade", "system", "image_path", &image, "force"]);
    assert!(
        out.status.success(),
        "{:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let end = status(&api).await;
    assert_eq!((end.state, end.force, end.disruptive), (OpState::Completed, true, true), "{end:#?}");
    assert!(end.prechecks.iter().any(|c| c.result == CheckResult::Warning), "{end:#?}");
    for (id, version, _) in versions(&api).await {
        assert_eq!(version, "3.0.0", "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_se_that_cannot_reach_the_leader_after_its_reboot_rolls_itself_back() {
    let c = LocalCluster::up(&[
        "--controllers",
        "1",
        "--groups",
        "g1:active-active:1",
        "--heartbeat-ms",
        "300",
        "--reform-timeout-secs",
        "25",
        "--self-revert-secs",
        "5",
    ]);
    let api = c.api();
    let tmp = tempfile::tempdir().unwrap();
    let image = upload(&api, &package(tmp.path(), "2.0.0", "1.0.0", None)).await;
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    // Once g1-se1 has applied and is rebooting into 2.0.0, the leader goes dark.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = status(&api).await;
        if node(&v, "g1-se1").events.iter().any(|e| e.task == Task::Rejoin) {
            break;
        }
        assert!(Instant::now() < deadline, "g1-se1 never applied: {v:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = c.path();
    assert!(molt(&["local", "power", "off", "--dir", d.to_str().unwrap(), "c1"]).status.success());
    let log = c.path().join("nodes/g1-se1/agent.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap().contains("leader is unreachable: rolling back") {
        assert!(Instant::now() < deadline, "g1-se1 did not revert itself");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It went back to its old slot (1.0.0) on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let after = &text[text.find("leader is unreachable: rolling back").unwrap()..];
        if after.contains("booting slot=a") && after.contains("version=1.0.0") {
            break;
        }
        assert!(Instant::now() < deadline, "g1-se1 did not boot its old slot after reverting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The leader comes back, resumes, and applies the SE again: the revert
    // was about reachability, not the new version.
    assert!(molt(&["local", "power", "on", "--dir", d.to_str().unwrap(), "c1"]).status.success());
    let end = wait_end(&api, 120).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    all_up_on(&api, "2.0.0", &[], 30).await;
}

/// Starts an upgrade on `cluster`, cuts the leader's power once `phase` is
/// reached, powers it on again, and checks that the upgrade completes on
/// every node after the leader resumed it from its journal.
async fn leader_power_cut_in(phase: ShownPhase, cluster: &[&str]) {
    let (c, api) = start(cluster);
    let tmp = tempfile::tempdir().unwrap();
    let image = upload(&api, &package(tmp.path(), "2.0.0", "1.0.0", None)).await;
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    wait_phase(&api, phase).await;
    let d = c.path();
    assert!(molt(&["local", "power", "off", "--dir", d.to_str().unwrap(), "c1"]).status.success());
    assert!(molt(&["local", "power", "on", "--dir", d.to_str().unwrap(), "c1"]).status.success());
    let end = wait_end(&api, 180).await;
    assert_eq!(end.state, OpState::Completed, "{phase:?}: {end:#?}");
    all_up_on(&api, "2.0.0", &[], 30).await;
    // Whichever controller leads next resumes from the replicated journal.
    let resumed = ["c1", "c2", "c3"].iter().any(|id| {
        std::fs::read_to_string(c.path().join(format!("nodes/{id}/agent.log")))
            .is_ok_and(|l| l.contains("resuming the upgrade from the journal"))
    });
    assert!(resumed, "{phase:?}: a leader resumed the upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_powered_off_during_distribution_resumes_and_completes() {
    // 8 MiB/s per transfer: distribution lasts long enough to cut it.
    leader_power_cut_in(
        ShownPhase::Distribute,
        &["--controllers", "1", "--groups", "g1:active-active:2", "--fetch-rate-limit", "8388608"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_powered_off_in_the_controllers_phase_resumes_and_completes() {
    leader_power_cut_in(ShownPhase::Controllers, &["--controllers", "3", "--groups", "g1:active-active:1"]).await;
}
