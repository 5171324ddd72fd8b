//! Operations started at the same moment (issue 9's observations that have
//! landed): one wins, the others are told why.

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
    let status = c.api().get("/api/cluster/upgrade/status").await.unwrap();
    assert_eq!(status["state"], "in_progress", "{status:#}");
}
