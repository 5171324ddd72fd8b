//! What the process-level upgrade tests share: a local cluster with short
//! timings, packages from the release binaries, and waits on the status.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use integration_tests::LocalCluster;
use molt::client::{Api, ClientError};
use serde_json::Value;

pub const ARGS: &[&str] = &["--heartbeat-ms", "300", "--reform-timeout-secs", "25", "--self-revert-secs", "60"];

pub fn package(dir: &Path, version: &str, min: &str, broken_on: Option<&str>) -> PathBuf {
    integration_tests::release_package(dir, version, min, broken_on.map(|n| ("controller-agent", n)))
}

/// `molt local up` with `cluster` plus the upgrade tests' timing options.
pub fn start(cluster: &[&str]) -> (LocalCluster, Api) {
    let mut args = cluster.to_vec();
    args.extend_from_slice(ARGS);
    let c = LocalCluster::up(&args);
    let api = c.api();
    (c, api)
}

/// GET that waits out the leader's own reboot.
pub async fn get(api: &Api, path: &str) -> Value {
    for _ in 0..300 {
        match api.get(path).await {
            Ok(v) => return v,
            Err(ClientError::Unreachable { .. }) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("GET {path}: {e}"),
        }
    }
    panic!("the leader stayed unreachable");
}

pub async fn wait_end(api: &Api, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = get(api, "/api/cluster/upgrade/status").await;
        if !matches!(v["state"].as_str(), Some("in_progress" | "prechecking")) {
            return v;
        }
        assert!(Instant::now() < deadline, "upgrade still running after {secs} s: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_phase(api: &Api, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(api, "/api/cluster/upgrade/status").await["phase"] != phase {
        assert!(Instant::now() < deadline, "phase {phase} never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to `secs`) until every node but `except` is up on `version`:
/// after a leader's restart the nodes rejoin within a few heartbeats.
pub async fn all_up_on(api: &Api, version: &str, except: &[&str], secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = versions(api).await;
        if v.iter()
            .filter(|(id, _, _)| !except.contains(&id.as_str()))
            .all(|(_, ver, state)| ver == version && state == "up")
        {
            return;
        }
        assert!(Instant::now() < deadline, "not every node is up on {version}: {v:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn versions(api: &Api) -> Vec<(String, String, String)> {
    let v = get(api, "/api/cluster").await;
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().into(),
                n["version"].as_str().unwrap().into(),
                n["state"].as_str().unwrap().into(),
            )
        })
        .collect()
}

pub async fn config(api: &Api) -> (Value, Value) {
    (get(api, "/api/serviceenginegroup").await, get(api, "/api/virtualservice").await)
}

pub async fn upload(api: &Api, pkg: &Path) -> String {
    api.upload(pkg, pkg.file_name().unwrap().to_str().unwrap(), |_| {}).await.unwrap()["image_path"]
        .as_str()
        .unwrap()
        .into()
}
