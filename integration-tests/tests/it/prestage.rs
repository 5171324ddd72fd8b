//! Image upload and distribution (prestage), its refusals, and resume.

use std::time::Duration;

use crate::support::*;
use common::{DeploymentKind, package::hash_file};
use integration_tests::{TestCluster, eventually, make_package};
use serde_json::json;

const MIB: usize = 1 << 20;

async fn upload(c: &TestCluster, path: &std::path::Path) -> Result<serde_json::Value, molt::client::ClientError> {
    c.api().upload(path, "controller.pkg", |_| {}).await
}

fn status_of(e: &molt::client::ClientError) -> u16 {
    match e {
        molt::client::ClientError::Api { status, .. } => status.as_u16(),
        other => panic!("expected an API refusal, got {other}"),
    }
}

/// Every node's staging dir is empty.
fn nothing_staged(c: &TestCluster) {
    for id in c.ids() {
        assert!(c.staging_files(&id).is_empty(), "{id} has {:?}", c.staging_files(&id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prestage_puts_the_verified_image_on_every_node() {
    let c = TestCluster::builder().group("g1", "active-active", 2).start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, 4 * MIB);
    let (sha, size) = hash_file(&pkg).unwrap();
    let up = upload(&c, &pkg).await.unwrap();
    assert_eq!(up["image_path"], "controller://upgrade_pkgs/controller.pkg");
    assert_eq!(up["sha256"], sha.to_hex(), "the upload's digest is sha256sum's");
    assert_eq!(up["manifest"]["version"], "2.0.0");
    let started = c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap();
    let started: UpgradeStatus = serde_json::from_value(started).unwrap();
    assert_eq!((started.operation, started.state), (Some(Operation::Prestage), OpState::InProgress));
    let end = c.wait_operation(60).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    assert_eq!(end.progress, 100);
    for id in c.ids() {
        let file = c.data_dir(&id).join("staging").join(format!("{sha}.pkg"));
        assert_eq!(hash_file(&file).unwrap(), (sha, size), "{id}'s copy");
        assert_eq!(c.staging_files(&id), vec![format!("{sha}.pkg")], "{id}: nothing else left");
        let staged: Vec<_> = c.node_view(&id).await.staged.into_iter().map(|s| (s.version, s.sha256)).collect();
        assert_eq!(staged, [("2.0.0".to_owned(), sha.to_hex())], "{id}");
    }
    assert!(end.nodes.iter().all(|n| n.state == NodeState::Done && n.events[0].task == Task::Stage), "{end:#?}");
    assert_eq!(end.history[0].state, OpState::Completed);
    // Again: nothing moves, it completes at once.
    let served = c.leader().bytes_served.load(std::sync::atomic::Ordering::Relaxed);
    c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap();
    assert_eq!(c.wait_operation(30).await.state, OpState::Completed);
    assert_eq!(c.leader().bytes_served.load(std::sync::atomic::Ordering::Relaxed), served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packages_and_paths_are_refused_and_leave_nothing() {
    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    let tmp = tempfile::tempdir().unwrap();
    let good = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, MIB);
    let bytes = std::fs::read(&good).unwrap();
    let pkgs = c.data_dir("c1").join("upgrade_pkgs");

    let truncated = tmp.path().join("truncated.pkg");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let e = upload(&c, &truncated).await.unwrap_err();
    assert_eq!(status_of(&e), 400);
    assert!(e.to_string().contains("truncated"), "{e}");

    let corrupt = tmp.path().join("corrupt.pkg");
    let mut b = bytes.clone();
    let n = b.len();
    b[n - 5000] ^= 0x40;
    std::fs::write(&corrupt, &b).unwrap();
    let e = upload(&c, &corrupt).await.unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");

    let foreign = tmp.path().join("foreign.pkg");
    std::fs::write(&foreign, b"PK\x03\x04 a zip file, not a molt package").unwrap();
    let e = upload(&c, &foreign).await.unwrap_err();
    assert!(e.to_string().contains("not a molt package"), "{e}");

    // Issue 25, 1: a package with a file 21,000 levels deep and a 300-byte
    // name once passed verification and crash-looped every follower that
    // unpacked it. Verification is now a dry run of unpacking: refused at
    // the upload, naming what is wrong.
    let deep_path = format!("{}f", "a/".repeat(21_000));
    let depth_65 = format!("{}f", "a/".repeat(65));
    let long_name = format!("bin/{}", "n".repeat(300));
    let cases = [
        (deep_path.as_str(), "a GNU long name of 42002 bytes, more than the 4097 allowed"),
        (depth_65.as_str(), "66 levels deep, more than the 64 allowed"),
        (long_name.as_str(), "300 bytes"),
    ];
    for (path, why) in cases {
        let deep = tmp.path().join("deep.pkg");
        let entries = [
            ("bin/controller-agent", tar::EntryType::Regular, None, 0o755),
            ("bin/se-agent", tar::EntryType::Regular, None, 0o755),
            (path, tar::EntryType::Regular, None, 0o644),
        ];
        std::fs::write(&deep, common::package::raw_package(&entries)).unwrap();
        let e = upload(&c, &deep).await.unwrap_err();
        assert_eq!(status_of(&e), 400, "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }

    assert_eq!(std::fs::read_dir(&pkgs).unwrap().count(), 0, "a refused upload keeps nothing");

    // A bad file placed on the leader by hand is refused at prestage.
    std::fs::write(pkgs.join("hand.pkg"), &bytes[..100]).unwrap();
    let e = c.prestage("controller://upgrade_pkgs/hand.pkg").await.unwrap_err();
    assert_eq!(status_of(&e), 400);
    for (path, code, words) in [
        ("controller://../../../etc/passwd", 400, "leaves the controller's data directory"),
        ("controller://upgrade_pkgs/../../x", 400, "leaves"),
        ("/etc/passwd", 400, "must be a controller:// path"),
        ("controller://upgrade_pkgs/missing.pkg", 404, "does not exist"),
    ] {
        let e = c.prestage(path).await.unwrap_err();
        assert_eq!(status_of(&e), code, "{path}: {e}");
        assert!(e.to_string().contains(words), "{path}: {e}");
    }
    std::os::unix::fs::symlink("/etc/passwd", pkgs.join("link.pkg")).unwrap();
    let e = c.prestage("controller://upgrade_pkgs/link.pkg").await.unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    let e = c.api().post("/api/cluster/upgrade/prestage", &json!({ "image": "x" })).await.unwrap_err();
    assert_eq!(status_of(&e), 400);
    assert!(e.to_string().contains("invalid request body"), "{e}");

    nothing_staged(&c);
    assert_eq!(c.status().await.state, OpState::Idle, "no operation started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_the_wrong_kind_is_refused_before_any_node_changes() {
    let c = TestCluster::builder().group("g1", "active-active", 2).docker("g1-se2").start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, MIB);
    upload(&c, &pkg).await.unwrap();
    let e = c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap_err();
    assert_eq!(status_of(&e), 400);
    let msg = e.to_string();
    assert!(msg.contains("g1-se2 (docker)") && msg.contains("controller_docker.tgz"), "{msg}");
    nothing_staged(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_disk_on_a_node_is_refused_before_any_node_changes() {
    let c = TestCluster::builder().group("g1", "active-active", 1).small_disk("g1-se1", 8 << 20).start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, 12 * MIB);
    upload(&c, &pkg).await.unwrap();
    let e = c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap_err();
    assert_eq!(status_of(&e), 507);
    assert!(e.to_string().contains("g1-se1") && e.to_string().contains("disk"), "{e}");
    nothing_staged(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_mid_transfer_resumes_where_it_stopped() {
    // 4 MiB/s per transfer, so the cut lands mid-way.
    let mut c = TestCluster::builder().group("g1", "active-active", 1).fetch_rate_limit(4 << 20).start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, 12 * MIB);
    let (sha, size) = hash_file(&pkg).unwrap();
    upload(&c, &pkg).await.unwrap();
    c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap();
    // A second operation is refused while this one runs.
    let e = c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap_err();
    assert_eq!(status_of(&e), 409);
    let part = c.data_dir("g1-se1").join("staging").join(format!("{sha}.part"));
    eventually(30, "g1-se1 a third of the way", async || {
        std::fs::metadata(&part).map(|m| m.len() > size / 3).unwrap_or(false)
    })
    .await;
    c.stop_node("g1-se1").await;
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < size, "partial copy kept across the power cut: {kept}");
    let leader = c.leader();
    let served_before = leader.bytes_served.load(std::sync::atomic::Ordering::Relaxed);
    c.start_node("g1-se1").await;
    let end = c.wait_operation(60).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    let served_after = leader.bytes_served.load(std::sync::atomic::Ordering::Relaxed) - served_before;
    assert!(
        served_after <= size - kept + (2 << 20),
        "after the restart the leader sent {served_after} bytes; only the missing {} were needed",
        size - kept
    );
    let staged = c.data_dir("g1-se1").join("staging").join(format!("{sha}.pkg"));
    assert_eq!(hash_file(&staged).unwrap(), (sha, size));
    assert!(!part.exists());
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_midway_keeps_nothing() {
    let c = TestCluster::builder().start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, 4 * MIB);
    let bytes = std::fs::read(&pkg).unwrap();
    let token = std::fs::read_to_string(c.cluster_dir().join("pki/admin.token")).unwrap();
    let head = format!(
        "POST /api/upload?name=controller.pkg HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        token.trim(),
        bytes.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(&bytes[..bytes.len() / 2]);
    let addr = c.file.nodes[0].addr.clone();
    let answer = crate::security::raw_https(&c, &addr, &req, true).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    let pkgs = c.data_dir("c1").join("upgrade_pkgs");
    eventually(10, "the partial upload removed", async || std::fs::read_dir(&pkgs).unwrap().count() == 0).await;
}

/// The CLI's client encodes the upload's name (spaces, `&`) instead of
/// failing on it, so the leader sees the name as given and says what is
/// wrong with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_name_is_encoded_and_reaches_the_leader_whole() {
    let c = TestCluster::builder().start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, MIB);
    let api = c.api();
    let e = api.upload(&pkg, "controller 2.0&rc=1.pkg", |_| {}).await.unwrap_err();
    assert_eq!(status_of(&e), 400, "{e}");
    assert!(e.to_string().contains("upload name \"controller 2.0&rc=1.pkg\" must be a plain file name"), "{e}");
    let ok = api.upload(&pkg, "controller.pkg", |_| {}).await.unwrap();
    assert_eq!(ok["image_path"], "controller://upgrade_pkgs/controller.pkg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_carry_the_image_and_a_fetcher_whose_relay_dies_resumes_from_another_source() {
    // Fan-out 1: the leader streams to one SE, each SE relays to the next.
    relays_survive_a_dying_relay(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striped_relays_carry_the_image_and_a_stripe_whose_relay_dies_resumes_from_another_source() {
    // Fan-out 2 over 4 SEs: 2 stripes, the leader streams each to one SE,
    // and each SE relays one stripe to up to 2 others.
    relays_survive_a_dying_relay(2).await;
}

/// 4 SEs prestage a 16 MiB image through relays of fan-out `k`; every node
/// sends at most 4 MiB/s, so a relay is stopped mid-way: its fetchers
/// resume elsewhere, everyone else finishes, and it resumes once back.
async fn relays_survive_a_dying_relay(k: usize) {
    use controller_agent::leader::relays::Parent;
    let mut c =
        TestCluster::builder().group("g1", "active-active", 4).relay_fanout(k).egress_limit(4 << 20).start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, 16 * MIB);
    let (sha, size) = hash_file(&pkg).unwrap();
    upload(&c, &pkg).await.unwrap();
    let leader = c.leader();
    let served_before = leader.bytes_served.load(std::sync::atomic::Ordering::Relaxed);
    c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap();
    // A relay that serves another SE and has a quarter of the image.
    let part = |id: &str| c.data_dir(id).join("staging").join(format!("{sha}.part"));
    let mut relay = String::new();
    eventually(30, "an SE relaying to another, a quarter in", async || {
        let sources = leader.term().expect("it leads").relays.lock().unwrap().sources(&sha);
        relay = sources
            .values()
            .flatten()
            .find_map(|p| match p {
                Parent::Node(r) if std::fs::metadata(part(r.as_str())).is_ok_and(|m| m.len() > size / 4) => {
                    Some(r.to_string())
                }
                _ => None,
            })
            .unwrap_or_default();
        !relay.is_empty()
    })
    .await;
    let sources = leader.term().expect("it leads").relays.lock().unwrap().sources(&sha);
    let from_leader = sources.values().flatten().filter(|p| **p == Parent::Leader).count();
    assert_eq!(from_leader, k, "the leader serves one stream per stripe: {sources:?}");
    assert!(sources.values().all(|ps| ps.len() == k), "every SE fetches {k} stripes: {sources:?}");
    let relay_id: common::NodeId = relay.parse().unwrap();
    let child = sources.iter().find(|(_, ps)| ps.contains(&Parent::Node(relay_id.clone()))).unwrap().0.to_string();
    let child_had = std::fs::metadata(part(&child)).map(|m| m.len()).unwrap_or(0);
    // The status names each receiver's sources; the CLI prints them.
    let status = c.status().await;
    let source = node(&status, &child).source.clone().unwrap_or_else(|| panic!("{child} has no source: {status:#?}"));
    let named: Vec<&str> = source.split(',').collect();
    assert!(named.contains(&relay.as_str()) && named.len() == k, "{status:#?}");
    let shown = molt::render::status(&status);
    assert!(shown.contains(&format!("(from {source})")), "{shown}");
    c.stop_node(&relay).await;
    // Everyone else finishes, the relay's fetcher from another source.
    for id in c.ids().into_iter().filter(|id| id.starts_with("g1-") && *id != relay) {
        let staged = c.data_dir(&id).join("staging").join(format!("{sha}.pkg"));
        eventually(60, &format!("{id} staged"), async || staged.exists()).await;
        assert_eq!(hash_file(&staged).unwrap(), (sha, size), "{id}'s copy");
    }
    let now = leader.term().expect("it leads").relays.lock().unwrap().sources(&sha);
    let child_now = now.get(&child.parse().unwrap()).cloned().unwrap_or_default();
    assert!(!child_now.contains(&Parent::Node(relay_id)), "{now:?}");
    // The relay comes back and resumes; the operation completes.
    c.start_node(&relay).await;
    let end = c.wait_operation(90).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    let served = leader.bytes_served.load(std::sync::atomic::Ordering::Relaxed) - served_before;
    // Without relays the leader sends 4 copies; here one copy to the
    // stripes' roots, the dead relay's fetchers from where they were, and
    // the relay's rest.
    assert!(
        served < 2 * size + (2 << 20),
        "the leader sent {served} bytes for 4 SEs of a {size}-byte image (the fetcher had {child_had})"
    );
    for id in c.ids() {
        assert_eq!(c.staging_files(&id), vec![format!("{sha}.pkg")], "{id}: nothing else left");
    }
}
