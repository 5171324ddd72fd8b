//! Operations started at the same moment (issue 9's observations that have
//! landed): one wins, the others are told why.

use crate::support::*;
use common::DeploymentKind;
use integration_tests::{TestCluster, make_package};
use molt::client::ClientError;
use serde_json::json;

fn status_of(r: &Result<serde_json::Value, ClientError>) -> u16 {
    match r {
        Ok(_) => 202,
        Err(ClientError::Api { status, .. }) => status.as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_starts_give_one_operation() {
    let c = TestCluster::builder().group("g1", "active-active", 1).fetch_rate_limit(1 << 20).start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, 16 << 20);
    // Placed by hand, so every request verifies it first: a wide window
    // between "nothing runs" and "start" for a check-then-act to fall into.
    std::fs::copy(&pkg, c.data_dir("c1").join("upgrade_pkgs/controller.pkg")).unwrap();
    let body = json!({"image_path": "controller://upgrade_pkgs/controller.pkg"});
    let apis: Vec<_> = (0..5).map(|_| c.api()).collect();
    let answers = futures_util::future::join_all(apis.iter().enumerate().map(|(i, api)| {
        let body = body.clone();
        async move {
            // Starts and prestages, all at once.
            if i % 2 == 0 {
                api.post("/api/cluster/upgrade", &body).await
            } else {
                api.post("/api/cluster/upgrade/prestage", &body).await
            }
        }
    }))
    .await;
    let codes: Vec<u16> = answers.iter().map(status_of).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 202).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 409).count(), 4, "{codes:?}");
    let status = c.status().await;
    assert_eq!(status.state, OpState::InProgress, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_be_written_stops_the_upgrade_and_unlocks_the_configuration() {
    use std::io::Write;
    let c = TestCluster::builder()
        .group("g1", "active-active", 1)
        .fetch_rate_limit(2 << 20)
        .small_disk("c1", 48 << 20)
        .start()
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, 4 << 20);
    let api = c.api();
    let image = api.upload(&pkg, "controller.pkg", |_| {}).await.unwrap()["image_path"].clone();
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    // The leader's disk fills up while the image is distributed.
    let mut filler = std::fs::File::create(c.data_dir("c1").join("filler")).unwrap();
    // To the last byte: smaller and smaller blocks.
    for size in [1 << 20, 4096, 1] {
        let block = vec![0u8; size];
        while filler.write_all(&block).is_ok() {}
    }
    let end = c.wait_operation(60).await;
    assert_eq!(end.state, OpState::Suspended, "{end:#?}");
    assert!(end.reason.as_str().contains("cannot write the upgrade journal"), "{end:#?}");
    // Writes say why they cannot happen: not "read-only" (503) but the
    // controller's store (500), with what to do.
    match api.post("/api/serviceenginegroup", &json!({"name": "g9", "ha_mode": "active-active"})).await {
        Ok(_) => {}
        Err(ClientError::Api { status, message, .. }) => {
            assert_eq!(status.as_u16(), 500, "{message}");
            assert!(message.contains("free or fix its disk"), "{message}");
        }
        Err(e) => panic!("{e}"),
    }
    // Nothing goes on from this process.
    let e = api.post("/api/cluster/upgrade/resume", &json!({})).await.unwrap_err();
    assert!(matches!(status_of(&Err(e)), 409 | 500));
    drop(filler);
    std::fs::remove_file(c.data_dir("c1").join("filler")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_leaves_no_task_running() {
    let mut c = TestCluster::builder().group("g1", "active-active", 2).fetch_rate_limit(1 << 20).start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, 8 << 20);
    let api = c.api();
    let image = api.upload(&pkg, "controller.pkg", |_| {}).await.unwrap()["image_path"].clone();
    // An upgrade in its distribution, with a transfer per SE under way:
    // bytes arrived on each SE, as the leader sees it.
    api.post("/api/cluster/upgrade", &json!({"image_path": image})).await.unwrap();
    for se in ["g1-se1", "g1-se2"] {
        integration_tests::eventually(30, &format!("a transfer under way on {se}"), async || {
            c.node_view(se).await.transfers.iter().any(|t| t.received > 0)
        })
        .await;
    }
    let state = c.leader();
    c.stop_node("c1").await;
    let mut holders = 0;
    for _ in 0..50 {
        holders = std::sync::Arc::strong_count(&state) - 1;
        if holders == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(holders, 0, "tasks of the stopped leader still hold its state");
}
