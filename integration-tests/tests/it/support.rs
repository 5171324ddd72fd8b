//! What the process-level upgrade tests share: a local cluster with short
//! timings, packages from the release binaries, and waits on the status.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use common::errors::ErrorKind;
pub use controller_agent::leader::cluster::{ClusterDoc, NodeState as ClusterNodeState};
pub use controller_agent::leader::{
    status::{GroupStatus, NodeStatus, OpState, UpgradeStatus, VsStatus},
    upgrade::Plan,
};
pub use coordinator::{
    journal::{ActionOnError, EventStatus, GroupState, Operation, Task},
    request::CheckResult,
    view::{NodeState, ShownPhase},
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

/// The status, typed as the server serializes it.
pub async fn status(api: &Api) -> UpgradeStatus {
    let v = get(api, "/api/cluster/upgrade/status").await;
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("the status does not parse ({e}): {v:#}"))
}

/// The status once the operation no longer runs (held by the operator
/// counts as running only if it is still checking or moving).
pub async fn wait_end(api: &Api, secs: u64) -> UpgradeStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(api).await;
        if !matches!(s.state, OpState::InProgress | OpState::Prechecking) {
            return s;
        }
        assert!(Instant::now() < deadline, "upgrade still running after {secs} s: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_phase(api: &Api, phase: ShownPhase) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(api).await.phase != Some(phase) {
        assert!(Instant::now() < deadline, "phase {phase:?} never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The kind and message of a refusal; panics on success or another failure.
pub fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorKind, String) {
    match r {
        Err(e @ ClientError::Api { .. }) => {
            let kind = e.kind().unwrap_or_else(|| panic!("an error body without a kind: {e:?}"));
            let ClientError::Api { message, .. } = e else { unreachable!() };
            (kind, message)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A node's line of the status.
pub fn node<'a>(s: &'a UpgradeStatus, id: &str) -> &'a NodeStatus {
    s.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id} in the status: {s:#?}"))
}

/// An SE group's line of the status.
pub fn group<'a>(s: &'a UpgradeStatus, name: &str) -> &'a GroupStatus {
    s.se_groups.iter().find(|g| g.name == name).unwrap_or_else(|| panic!("no SE group {name} in the status: {s:#?}"))
}

/// Waits (up to `secs`) until every node but `except` is up on `version`:
/// after a leader's restart the nodes rejoin within a few heartbeats.
pub async fn all_up_on(api: &Api, version: &str, except: &[&str], secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = versions(api).await;
        if v.iter()
            .filter(|(id, _, _)| !except.contains(&id.as_str()))
            .all(|(_, ver, state)| ver == version && *state == ClusterNodeState::Up)
        {
            return;
        }
        assert!(Instant::now() < deadline, "not every node is up on {version}: {v:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `GET /api/cluster`, typed as the leader serializes it.
pub async fn cluster(api: &Api) -> ClusterDoc {
    serde_json::from_value(get(api, "/api/cluster").await).unwrap()
}

/// Each node's id, version and state, as the leader sees them.
pub async fn versions(api: &Api) -> Vec<(String, String, ClusterNodeState)> {
    cluster(api).await.nodes.into_iter().map(|n| (n.id.to_string(), n.version, n.state)).collect()
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
