//! Virtual services that really serve, through rolling SE upgrades: what
//! was predicted before the start is what the probes measure.

use std::{collections::BTreeMap, path::Path, time::Duration};

use crate::support::*;
use integration_tests::LocalCluster;
use molt::client::Api;
use serde_json::{Value, json};

fn package(dir: &Path, broken_se: Option<&str>) -> std::path::PathBuf {
    integration_tests::release_package(dir, "2.0.0", "1.0.0", broken_se.map(|n| ("se-agent", n)))
}

async fn get(api: &Api, path: &str) -> Value {
    for _ in 0..300 {
        if let Ok(v) = api.get(path).await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the leader stayed unreachable");
}

async fn run_upgrade(c: &LocalCluster, body: Value) -> (Plan, UpgradeStatus) {
    let api = c.api();
    let mut predict = body.clone();
    predict["prechecks_only"] = true.into();
    let predicted = serde_json::from_value(api.post("/api/cluster/upgrade", &predict).await.unwrap()).unwrap();
    api.post("/api/cluster/upgrade", &body).await.unwrap();
    (predicted, wait_end(&api, 300).await)
}

fn by_name(rows: &[VsStatus]) -> BTreeMap<&str, &VsStatus> {
    rows.iter().map(|r| (r.name.as_str(), r)).collect()
}

/// When a node's first `task` event started.
fn started(end: &UpgradeStatus, id: &str, task: Task) -> f64 {
    node(end, id).events.iter().find(|e| e.task == task).unwrap_or_else(|| panic!("{id}: no {task:?}: {end:#?}")).start
}

async fn setup(groups: &str) -> (LocalCluster, Api, tempfile::TempDir) {
    let c = LocalCluster::for_upgrades("1", groups);
    let api = c.api();
    let tmp = tempfile::tempdir().unwrap();
    (c, api, tmp)
}

async fn serves(c: &LocalCluster, se: &str, port: u16) -> Option<String> {
    let addr = c.cluster().node(se)?.addr.clone();
    let ip = addr.rsplit_once(':')?.0.to_owned();
    let mut s = tokio::net::TcpStream::connect((ip.as_str(), port)).await.ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ha_mode_keeps_serving_as_predicted_while_its_ses_upgrade() {
    let (c, api, tmp) = setup("aa:active-active:2,nm:n-plus-m:2,as:active-standby:2").await;
    for body in [
        json!({"name": "web", "se_group": "aa", "port": 8080, "scale": 2}),
        json!({"name": "one", "se_group": "nm", "port": 8081, "scale": 1}),
        json!({"name": "two", "se_group": "nm", "port": 8082, "scale": 2}),
        json!({"name": "db", "se_group": "as", "port": 8083}),
    ] {
        let created = api.post("/api/virtualservice", &body).await.unwrap();
        assert!(!created["placements"].as_array().unwrap().is_empty(), "{created}");
    }
    let before = get(&api, "/api/virtualservice").await;
    let web_on = before.as_array().unwrap().iter().find(|v| v["name"] == "web").unwrap()["placements"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let mut answered = None;
    for _ in 0..50 {
        answered = serves(&c, &web_on, 8080).await;
        if answered.as_deref().is_some_and(|a| a.contains("200")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answered = answered.unwrap_or_default();
    assert!(answered.contains("virtual service web on") && answered.contains("version 1.0.0"), "{answered}");
    let image = api.upload(&package(tmp.path(), None), "controller.pkg", |_| {}).await.unwrap()["image_path"].clone();
    let (predicted, end) = run_upgrade(&c, json!({"image_path": image})).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    let predicted = by_name(&predicted.virtual_services);
    let measured = by_name(&end.virtual_services);
    for name in ["web", "two", "db"] {
        assert!(!predicted[name].predicted_disruption, "{name}");
        assert_eq!(measured[name].measured_downtime_ms, Some(0), "{name} must not lose traffic: {end:#?}");
        assert!(measured[name].probe_rounds > Some(5), "{name} was probed");
    }
    assert!(predicted["one"].predicted_disruption);
    assert!(measured["one"].measured_downtime_ms > Some(0), "{:#?}", measured["one"]);
    // As the reference (16.3) does, an N+M service on one SE does not stop
    // the rolling upgrade: it is named in a warning, before and after.
    let traffic = end.prechecks.iter().find(|c| c.check == "traffic").unwrap();
    assert_eq!(traffic.result, CheckResult::Warning, "{traffic:?}");
    assert!(traffic.message.ends_with("while their SE reboots: one"), "the warning names the service: {traffic:?}");
    // Active-standby: the standby is upgraded first.
    let db = before.as_array().unwrap().iter().find(|v| v["name"] == "db").unwrap()["placements"].clone();
    let (active, standby) = (db[0].as_str().unwrap(), db[1].as_str().unwrap());
    assert!(
        started(&end, standby, Task::Apply) < started(&end, active, Task::Apply),
        "standby {standby} before active {active}"
    );
    assert_eq!(group(&end, "nm").vs_disrupted, ["one"]);
    assert_eq!(get(&api, "/api/virtualservice").await, before, "services and placements unchanged");
    let after = serves(&c, &web_on, 8080).await.unwrap_or_default();
    assert!(after.contains("version 2.0.0"), "the SE serves again, on the new version: {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_upgrades_a_group_at_once_moving_nothing() {
    let (c, api, tmp) = setup("aa:active-active:2").await;
    api.post("/api/virtualservice", &json!({"name": "web", "se_group": "aa", "port": 8080, "scale": 2})).await.unwrap();
    let image = api.upload(&package(tmp.path(), None), "controller.pkg", |_| {}).await.unwrap()["image_path"].clone();
    let (predicted, end) = run_upgrade(&c, json!({"image_path": image, "disruptive": true})).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    assert!(by_name(&predicted.virtual_services)["web"].predicted_disruption);
    let ses = || end.nodes.iter().filter(|n| n.role == common::Role::ServiceEngine);
    // Nothing was moved: no SE was drained before its reboot.
    for n in ses() {
        assert!(!n.events.iter().any(|e| e.task == Task::Drain), "{n:#?}");
    }
    // Both SEs were applied together: their apply events overlap.
    let applies: Vec<(f64, f64)> = ses()
        .map(|n| {
            let e = n.events.iter().find(|e| e.task == Task::Apply).unwrap();
            (e.start, e.end.unwrap())
        })
        .collect();
    assert!(applies[0].0 < applies[1].1 && applies[1].0 < applies[0].1, "{applies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_se_suspends_its_group_which_resumes_and_rolls_back() {
    let (c, api, tmp) = setup("g1:active-active:2,g2:active-active:2").await;
    api.post("/api/virtualservice", &json!({"name": "web", "se_group": "g1", "port": 8080, "scale": 2})).await.unwrap();
    let before = get(&api, "/api/virtualservice").await;
    let image =
        api.upload(&package(tmp.path(), Some("g1-se1")), "controller.pkg", |_| {}).await.unwrap()["image_path"].clone();
    let (_, end) = run_upgrade(&c, json!({"image_path": image})).await;
    assert_eq!(end.state, OpState::Suspended, "{end:#?}");
    assert_eq!(end.phase, Some(ShownPhase::ServiceEngines), "it stays in the phase it can go on from: {end:#?}");
    assert!(end.reason.contains("g1-se1"), "the reason names the SE: {end:#?}");
    assert_eq!(group(&end, "g1").state, GroupState::Suspended);
    assert_eq!(group(&end, "g2").state, GroupState::Completed);
    for n in c.cluster().nodes {
        let want = match n.id.as_str() {
            "g1-se1" => "1.0.0", // fell back through its boot loader
            _ => "2.0.0",
        };
        if n.id.as_str() != "g1-se2" {
            assert_eq!(n.version, want, "{n:?}");
        }
    }

    // Suspended is an end: no SE stays out of service, so the failed SE (back
    // on 1.0.0 through its boot loader) serves its placement again.
    assert!(end.drained.is_empty(), "{end:#?}");
    let mut answer = None;
    for _ in 0..50 {
        answer = serves(&c, "g1-se1", 8080).await;
        if answer.as_deref().is_some_and(|a| a.contains("version 1.0.0")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.unwrap_or_default().contains("version 1.0.0"), "g1-se1 was left drained after the suspension");

    // Resume past the SE that failed: the group finishes, that SE stays on 1.0.0.
    let out = c.molt(&["resume", "segroup", "g1", "skip_suspended"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let end = status(&api).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    assert!(end.reason.as_str().contains("g1-se1"), "the skipped SE is named: {end:#?}");
    let version_of = |id: &str| c.node(id).version;
    assert_eq!((version_of("g1-se1"), version_of("g1-se2")), ("1.0.0".into(), "2.0.0".into()));

    // Roll the group back: its SEs return to 1.0.0, its services to their placements.
    let out = c.molt(&["rollback", "segroup", "g1"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let end = status(&api).await;
    assert_eq!(group(&end, "g1").state, GroupState::RolledBack, "{end:#?}");
    let last = end.history.last().unwrap();
    assert_eq!(
        (last.operation, last.from_version.as_str(), last.to_version.as_str()),
        (Operation::SeGroupRollback, "2.0.0", "1.0.0"),
        "a group rollback is recorded as one, not as another upgrade: {last:?}"
    );
    assert_eq!((version_of("g1-se1"), version_of("g1-se2")), ("1.0.0".into(), "1.0.0".into()));
    assert_eq!(version_of("g2-se1"), "2.0.0", "the other group is untouched");
    assert_eq!(get(&api, "/api/virtualservice").await, before);
    for se in ["g1-se1", "g1-se2"] {
        let mut answer = None;
        for _ in 0..50 {
            answer = serves(&c, se, 8080).await;
            if answer.as_deref().is_some_and(|a| a.contains("version 1.0.0")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(answer.unwrap_or_default().contains("version 1.0.0"), "{se} serves web again on 1.0.0");
    }
    // Nothing left to resume.
    let r = api.post("/api/cluster/upgrade/resume", &json!({"se_groups": ["g1"]})).await;
    assert_eq!(refusal(r).0, ErrorKind::Conflict);
    let out = c.molt(&["resume", "segroup", "g1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to resume"), "the CLI says why: {out:?}");
    // g1 on 1.0.0, the rest on 2.0.0: a third version is refused, even forced,
    // naming the group that holds the old one.
    let next = integration_tests::release_package(tmp.path(), "2.1.0", "2.0.0", None);
    let image = api.upload(&next, "controller-2.1.pkg", |_| {}).await.unwrap()["image_path"].clone();
    for force in [false, true] {
        let (kind, message) =
            refusal(api.post("/api/cluster/upgrade", &json!({"image_path": image, "force": force})).await);
        assert_eq!(kind, ErrorKind::PreconditionFailed, "{message}");
        assert!(
            message.contains("SE group g1 on 1.0.0") && message.contains("three versions"),
            "it names the group: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_on_error_rollback_returns_the_group_to_the_old_version() {
    let (c, api, tmp) = setup("g1:active-active:2").await;
    let web = api
        .post("/api/virtualservice", &json!({"name": "web", "se_group": "g1", "port": 8080, "scale": 2}))
        .await
        .unwrap();
    // The active SE goes last: it cannot start the new version, the other one did.
    let (active, other) =
        (web["placements"][0].as_str().unwrap().to_owned(), web["placements"][1].as_str().unwrap().to_owned());
    let image =
        api.upload(&package(tmp.path(), Some(&active)), "controller.pkg", |_| {}).await.unwrap()["image_path"].clone();
    let (_, end) = run_upgrade(&c, json!({"image_path": image, "action_on_error": "rollback"})).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    assert_eq!(group(&end, "g1").state, GroupState::RolledBack, "{end:#?}");
    assert!(end.reason.contains("rolled back"), "{end:#?}");
    assert!(end.drained.is_empty(), "{end:#?}");
    for n in c.cluster().nodes {
        let want = if n.role == common::Role::ServiceEngine { "1.0.0" } else { "2.0.0" };
        assert_eq!(n.version, want, "{n:?}");
    }
    let rolled = node(&end, &other);
    assert!(rolled.events.iter().any(|e| e.task == Task::Rollback), "{rolled:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_on_error_continue_completes_saying_who_stayed_behind() {
    let (c, api, tmp) = setup("g1:active-active:2").await;
    // Through the CLI, as an operator sets it.
    let pkg = package(tmp.path(), Some("g1-se1"));
    let out = c.molt(&["upgrade", "system", "image_path", pkg.to_str().unwrap(), "action_on_error", "continue"]);
    let end = status(&api).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    assert_eq!(end.action_on_error, Some(ActionOnError::Continue), "{end:#?}");
    let reason = end.reason.as_str();
    assert!(reason.contains("g1-se1") && reason.contains("continue"), "the failure is recorded: {reason}");
    for n in c.cluster().nodes {
        let want = if n.id.as_str() == "g1-se1" { "1.0.0" } else { "2.0.0" };
        assert_eq!(n.version, want, "{n:?}");
    }
    // Nothing shows running under the ended operation, and history says what happened.
    for n in &end.nodes {
        assert!(n.events.iter().all(|e| e.status != EventStatus::Running), "{n:#?}");
    }
    let last = end.history.last().unwrap();
    assert_eq!((last.operation, last.state), (Operation::Upgrade, OpState::Completed));
    assert!(last.reason.contains("g1-se1"), "{last:?}");
}
