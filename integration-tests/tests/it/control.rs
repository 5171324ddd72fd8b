//! Operator control of a running upgrade, at process level through the CLI:
//! pause, resume and abort; a canary (`se_groups`, `pause_after`) and
//! `upgrade segroup`; `rollback system`. Real reboots, as in `upgrade`.

use std::time::{Duration, Instant};

use molt::client::{Api, ClientError};
use serde_json::{Value, json};

use crate::support::*;

fn ok(out: &std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

fn version_of(v: &[(String, String, ClusterNodeState)], id: &str) -> String {
    v.iter().find(|(n, _, _)| n == id).map(|(_, ver, _)| ver.clone()).unwrap_or_default()
}

/// The decisions the leader's driver has taken (`molt_driver_steps_total`).
async fn driver_steps(api: &Api) -> u64 {
    let text = api.get_text("/metrics").await.unwrap();
    let line = text.lines().find(|l| l.starts_with("molt_driver_steps_total ")).expect("the counter");
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() as u64
}

/// The message of a conflict (409): what the state does not allow.
fn conflict(r: Result<Value, ClientError>, what: &str) -> String {
    let (kind, message) = refusal(r);
    assert_eq!(kind, ErrorKind::Conflict, "{what}: {message}");
    message
}

/// The message of a request refused as wrong (400).
fn bad_request(r: Result<Value, ClientError>) -> String {
    let (kind, message) = refusal(r);
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_group_of_an_approved_plan_then_the_rest_then_the_whole_system_back() {
    let (c, api) = start(&["--controllers", "1", "--groups", "g1:active-active:2,g2:active-standby:2"]);
    api.post("/api/virtualservice", &json!({"name": "web", "se_group": "g2", "port": 8080})).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), "2.0.0", "1.0.0", None);
    let pkg = pkg.to_str().unwrap();

    // A group that does not exist is refused before anything moves.
    let out = c.molt(&["upgrade", "system", "image_path", pkg, "se_groups", "g9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no SE group g9"), "{out:?}");
    assert_eq!(status(&api).await.state, OpState::Idle);

    // The plan shown by the pre-checks, then the configuration changes: a
    // start that carries the old plan is refused, the new plan starts.
    let plan = |out: &str| -> String {
        let line = out.lines().find_map(|l| l.strip_prefix("plan_hash ")).unwrap_or_else(|| panic!("{out}"));
        line.split(':').next().unwrap().to_owned()
    };
    let shown = plan(&ok(&c.molt(&["upgrade", "system", "image_path", pkg, "se_groups", "g1", "prechecks_only"])));
    api.post("/api/virtualservice", &json!({"name": "api", "se_group": "g1", "port": 8081, "scale": 2})).await.unwrap();
    let before = config(&api).await;
    let out = c.molt(&["upgrade", "system", "image_path", pkg, "se_groups", "g1", "plan_hash", &shown]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("the plan changed since {shown}")), "{err}");
    assert_eq!(status(&api).await.state, OpState::Idle, "nothing started");
    let approved = plan(&ok(&c.molt(&["upgrade", "system", "image_path", pkg, "se_groups", "g1", "prechecks_only"])));
    assert_ne!(approved, shown);

    // The controllers and g1 only.
    ok(&c.molt(&["upgrade", "system", "image_path", pkg, "se_groups", "g1", "plan_hash", &approved]));
    let s = status(&api).await;
    assert_eq!(s.plan_hash.as_deref(), Some(approved.as_str()));
    assert!(s.package_signature.starts_with("unsigned: no trusted_keys"), "{s:#?}");
    assert_eq!(s.state, OpState::Completed, "{s:#?}");
    assert_eq!(s.se_groups_behind, ["g2"], "{s:#?}");
    assert_eq!(group(&s, "g2").state, GroupState::NotStarted);
    assert!(s.reason.contains("molt upgrade segroup g2"), "the reason says what to run: {s:#?}");
    let v = versions(&api).await;
    for (id, want) in
        [("c1", "2.0.0"), ("g1-se1", "2.0.0"), ("g1-se2", "2.0.0"), ("g2-se1", "1.0.0"), ("g2-se2", "1.0.0")]
    {
        assert_eq!(version_of(&v, id), want, "{id}: {v:?}");
    }
    let shown = ok(&c.molt(&["show", "upgrade", "status"]));
    assert!(shown.contains("SE groups on 1.0.0: g2 (`molt upgrade segroup g2`"), "{shown}");

    // A third version is refused while g2 is behind (two versions at most).
    let pkg3 = package(tmp.path(), "3.0.0", "2.0.0", None);
    let out = c.molt(&["upgrade", "system", "image_path", pkg3.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("three versions"), "{out:?}");

    // A group that is done already, or unknown, cannot be "upgraded".
    let out = c.molt(&["upgrade", "segroup", "g1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("SE group g1 is completed"), "{out:?}");

    // The rest, to the controllers' version: staged, then one SE at a time.
    ok(&c.molt(&["upgrade", "segroup", "g2"]));
    let s = status(&api).await;
    assert_eq!((s.operation, s.state), (Some(Operation::SeGroupUpgrade), OpState::Completed), "{s:#?}");
    assert!(s.se_groups_behind.is_empty(), "{s:#?}");
    all_up_on(&api, "2.0.0", &[], 30).await;

    // Everything back, SE groups first, the controller last.
    let out = ok(&c.molt(&["rollback", "system"]));
    assert!(out.contains("system_rollback"), "{out}");
    let s = status(&api).await;
    assert_eq!((s.operation, s.state), (Some(Operation::SystemRollback), OpState::Completed), "{s:#?}");
    all_up_on(&api, "1.0.0", &[], 60).await;
    let ops: Vec<Operation> = s.history.iter().map(|h| h.operation).collect();
    assert_eq!(ops, [Operation::Upgrade, Operation::SeGroupUpgrade, Operation::SystemRollback], "{:?}", s.history);
    // The SEs were rolled back before the controller: their events end first.
    let ended = |id: &str| -> f64 { node(&s, id).events.iter().filter_map(|e| e.end).fold(0.0, f64::max) };
    assert!(ended("g2-se1") < ended("c1") && ended("g1-se2") < ended("c1"), "{s:#?}");
    assert_eq!(config(&api).await, before, "the configuration is kept");
    // Once back, a second system rollback has nothing to return to.
    let again = conflict(api.post("/api/cluster/upgrade/rollback", &json!({"system": true})).await, "rollback again");
    assert!(again.contains("rolled back to 1.0.0 already"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_after_a_canary_holds_resume_goes_on_and_abort_leaves_whole_groups() {
    let (c, api) = start(&["--controllers", "1", "--groups", "g1:active-active:2,g2:active-active:3"]);
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), "2.0.0", "1.0.0", None);
    let pkg = pkg.to_str().unwrap();
    // Nothing runs: nothing to pause or abort.
    assert!(conflict(api.post("/api/cluster/upgrade/pause", &json!({})).await, "pause").contains("nothing to pause"));

    // g1 goes first, alone; the command returns once the upgrade holds.
    let out = ok(&c.molt(&["upgrade", "system", "image_path", pkg, "pause_after", "g1"]));
    assert!(out.contains("paused: `molt upgrade resume`"), "{out}");
    let s = status(&api).await;
    assert_eq!(s.state, OpState::Paused, "{s:#?}");
    assert_eq!(s.phase, Some(ShownPhase::ServiceEngines));
    assert_eq!(group(&s, "g1").state, GroupState::Completed);
    assert_eq!(group(&s, "g2").state, GroupState::Pending);
    // Held: nothing moves over 30 decisions of the driver, and the
    // configuration stays read-only.
    let steps = driver_steps(&api).await;
    integration_tests::eventually(60, "30 steps of the driver while paused", async || {
        driver_steps(&api).await >= steps + 30
    })
    .await;
    let v = versions(&api).await;
    for id in ["g2-se1", "g2-se2", "g2-se3"] {
        assert_eq!(version_of(&v, id), "1.0.0", "{id} moved while paused: {v:?}");
    }
    let write = api.post("/api/virtualservice", &json!({"name": "x", "se_group": "g1", "port": 9000})).await;
    assert_eq!(refusal(write).0, ErrorKind::ReadOnly);
    // Pausing again changes nothing.
    ok(&c.molt(&["upgrade", "pause"]));
    assert_eq!(status(&api).await.state, OpState::Paused);

    // Resume; then abort while g2 is partly upgraded.
    ok(&c.molt(&["upgrade", "resume", "--no-wait"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !versions(&api).await.iter().any(|(id, v, _)| id.starts_with("g2") && v == "2.0.0") {
        assert!(Instant::now() < deadline, "no SE of g2 came up on 2.0.0 after resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = ok(&c.molt(&["upgrade", "abort"]));
    assert!(out.contains("aborted by the operator after the controllers committed"), "{out}");
    let s = status(&api).await;
    assert_eq!(s.state, OpState::Aborted, "{s:#?}");
    assert_eq!(group(&s, "g1").state, GroupState::Completed);
    assert_eq!(group(&s, "g2").state, GroupState::RolledBack, "{s:#?}");
    assert_eq!(s.se_groups_behind, ["g2"]);
    all_up_on(&api, "2.0.0", &["g2-se1", "g2-se2", "g2-se3"], 30).await;
    let v = versions(&api).await;
    for id in ["g2-se1", "g2-se2", "g2-se3"] {
        assert_eq!(version_of(&v, id), "1.0.0", "{id}: every SE of g2 back on one version: {v:?}");
    }
    // Aborting again changes nothing; pause and resume no longer apply.
    api.post("/api/cluster/upgrade/abort", &json!({})).await.unwrap();
    assert!(
        conflict(api.post("/api/cluster/upgrade/pause", &json!({})).await, "pause").contains("no upgrade is running")
    );
    // The page and the metrics know the new state names.
    assert_eq!(s.history.last().map(|h| h.state), Some(OpState::Aborted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_before_the_commit_rolls_every_controller_back() {
    let (c, api) = start(&["--controllers", "3", "--groups", "g1:active-active:2"]);
    api.post("/api/virtualservice", &json!({"name": "web", "se_group": "g1", "port": 8080})).await.unwrap();
    let before = config(&api).await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), "2.0.0", "1.0.0", None);
    ok(&c.molt(&["upgrade", "system", "image_path", pkg.to_str().unwrap(), "--no-wait"]));
    wait_phase(&api, ShownPhase::Controllers).await;
    let out = ok(&c.molt(&["upgrade", "abort"]));
    assert!(out.contains("aborted by the operator before the controllers committed 2.0.0"), "{out}");
    let s = status(&api).await;
    assert_eq!((s.state, s.phase), (OpState::Aborted, Some(ShownPhase::RolledBack)), "{s:#?}");
    all_up_on(&api, "1.0.0", &[], 60).await;
    assert_eq!(config(&api).await, before);
    // After the end, abort is idempotent and resume has nothing to resume.
    api.post("/api/cluster/upgrade/abort", &json!({})).await.unwrap();
    conflict(api.post("/api/cluster/upgrade/resume", &json!({})).await, "resume after the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_reads_and_every_change_is_audited_with_who_made_it() {
    let (c, api) = start(&["--controllers", "1", "--groups", "g1:active-active:2"]);
    let pki = c.path().join("pki");
    let mint = |role: &str, name: &str| -> std::path::PathBuf {
        let token = integration_tests::process::mint_token(&pki, role, name);
        assert!(pki.join(format!("{name}.pem")).is_file() && pki.join(format!("{name}.key")).is_file());
        token
    };
    let (noc, ops) = (mint("read-only", "noc"), mint("admin", "ops"));
    // A node's name is not a token's.
    let clash = integration_tests::process::molt(&[
        "pki",
        "token",
        "--dir",
        pki.to_str().unwrap(),
        "--role",
        "admin",
        "--name",
        "g1-se1",
    ]);
    assert!(!clash.status.success());
    let as_ = |token: &std::path::Path, args: &[&str]| {
        let mut all = vec!["--token-file", token.to_str().unwrap()];
        all.extend_from_slice(args);
        c.molt(&all)
    };
    // Read-only reads: the cluster and the status.
    ok(&as_(&noc, &["show", "cluster"]));
    ok(&as_(&noc, &["show", "upgrade", "status"]));
    // And may change nothing: 403, saying why.
    let out = as_(&noc, &["upgrade", "pause"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the token noc is read-only") && err.contains("403"), "{err}");
    let out = as_(&noc, &["rollback", "system"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"), "{out:?}");
    // A named admin token changes the configuration.
    let tmp = tempfile::tempdir().unwrap();
    let conn = molt::client::Connection::resolve(Some(&c.path()), None, Some(&ops), None).unwrap();
    let ops_api = molt::client::Api::new(&conn).unwrap();
    ops_api.post("/api/virtualservice", &json!({"name": "web", "se_group": "g1", "port": 8080})).await.unwrap();
    // A token changed by hand is no token.
    let forged = tmp.path().join("forged.token");
    std::fs::write(&forged, std::fs::read_to_string(&noc).unwrap().replace("read-only", "admin")).unwrap();
    let out = as_(&forged, &["show", "cluster"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");

    // The audit trail: who, what, when, and the answer.
    let s = status(&api).await;
    let audit = &s.audit;
    let find = |who: &str, action: &str| audit.iter().find(|a| a.who == who && a.action.starts_with(action));
    let paused = find("noc", "POST /api/cluster/upgrade/pause").unwrap_or_else(|| panic!("{audit:#?}"));
    assert_eq!((paused.role.as_str(), paused.status), ("read-only", 403));
    let created = find("ops", "POST /api/virtualservice").unwrap_or_else(|| panic!("{audit:#?}"));
    assert_eq!(created.role, "admin");
    assert!(created.status < 300 && created.at > 1.7e9, "{created:?}");
    assert!(find("noc", "GET").is_none(), "reads are not changes: {audit:#?}");
    let sent = serde_json::to_vec(&json!({"name": "web", "se_group": "g1", "port": 8080})).unwrap();
    assert_eq!(created.body_sha256, Some(common::Sha256Digest::of(&sent).to_hex()), "{created:?}");
    assert!(created.gates.is_none(), "{created:?}");
    let shown = ok(&c.molt(&["show", "upgrade", "status"]));
    assert!(shown.contains("ops (admin)  POST /api/virtualservice"), "{shown}");
    assert!(shown.contains("body sha256 "), "{shown}");

    // The client certificate carries the token's role: with no token, curl
    // presenting noc's certificate reads, and is refused a change.
    let curl = |cert: &str, method: &str, path: &str| -> (String, String) {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert", pki.join("ca.pem").to_str().unwrap()])
            .args(["--cert", pki.join(format!("{cert}.pem")).to_str().unwrap()])
            .args(["--key", pki.join(format!("{cert}.key")).to_str().unwrap()])
            .args(["-X", method, "-w", "\n%{http_code}", &format!("{}{path}", c.leader_url())])
            .args(if method == "POST" { &["-H", "content-type: application/json", "-d", "{}"][..] } else { &[] })
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (body.to_owned(), code.to_owned())
    };
    let identity = |name: &str| {
        let pem = std::fs::read(pki.join(format!("{name}.pem"))).unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        common::identity::PeerIdentity::from_cert_der(&der).unwrap().uri()
    };
    assert!(identity("noc").ends_with("/read-only/noc") && identity("ops").ends_with("/admin/ops"));
    let (body, code) = curl("noc", "GET", "/api/cluster/upgrade/status");
    assert_eq!(code, "200", "{body}");
    let (body, code) = curl("noc", "POST", "/api/cluster/upgrade/pause");
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!((code.as_str(), &body["kind"]), ("403", &json!(ErrorKind::Forbidden)), "{body}");
    assert!(body["error"].as_str().unwrap().contains("the token noc is read-only"), "it names the token: {body}");
    // Revoking a name revokes its certificate and its token.
    ok(&integration_tests::process::molt(&["pki", "revoke", "--dir", pki.to_str().unwrap(), "noc"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = as_(&noc, &["show", "cluster"]);
        if String::from_utf8_lossy(&out.stderr).contains("the token noc is revoked") {
            break;
        }
        assert!(Instant::now() < deadline, "the token noc still works: {out:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, code) = curl("noc", "GET", "/api/cluster/upgrade/status");
    assert_ne!(code, "200", "the revoked certificate is refused at the handshake");
    ok(&as_(&ops, &["show", "cluster"]));
}

/// A node's pass in the SE phase: from its drain to its last event's end.
fn pass(s: &UpgradeStatus, id: &str) -> (f64, f64) {
    let n = node(s, id);
    let start = n.events.iter().find(|e| e.task == Task::Drain).map(|e| e.start);
    let end = n.events.iter().filter_map(|e| e.end).fold(0.0, f64::max);
    (start.unwrap_or_else(|| panic!("{id} was never drained: {n:#?}")), end)
}

fn overlap(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_profile_moves_ses_in_parallel_groups_in_series_and_the_eta_counts_down() {
    let (c, api) = start(&["--controllers", "1", "--groups", "g1:active-active:4,g2:active-active:1"]);
    // Bad profiles are refused, naming the field, and nothing changes.
    let bad = json!({"name": "g1", "ha_mode": "active-active", "max_parallel_ses": 0});
    let message = bad_request(api.put("/api/serviceenginegroup/g1", &bad).await);
    assert!(message.contains("max_parallel_ses 0: must be 1-64"), "it names the field: {message}");
    // g1 moves two SEs at once by its own configuration.
    let g1 = json!({"name": "g1", "ha_mode": "active-active", "max_parallel_ses": 2});
    api.put("/api/serviceenginegroup/g1", &g1).await.unwrap();
    for (vs, port) in [("a", 8080), ("b", 8081)] {
        api.post("/api/virtualservice", &json!({"name": vs, "se_group": "g1", "port": port, "scale": 2}))
            .await
            .unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), "2.0.0", "1.0.0", None);
    let pkg = pkg.to_str().unwrap();
    for (words, says) in [
        (&["max_parallel_ses", "0"][..], "max_parallel_ses takes a number above 0"),
        (&["se_group_order", "sideways"][..], "se_group_order sideways: expected parallel"),
        (&["max_transfers"][..], "max_transfers takes a number above 0"),
    ] {
        let mut args = vec!["upgrade", "system", "image_path", pkg];
        args.extend_from_slice(words);
        let out = c.molt(&args);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(says), "{out:?}");
    }
    let path = upload(&api, std::path::Path::new(pkg)).await;
    let wrong = api.post("/api/cluster/upgrade", &json!({"image_path": path, "max_parallel_ses": 65})).await;
    let message = bad_request(wrong);
    assert!(message.contains("max_parallel_ses 65: must be 1-64"), "it names the field: {message}");
    assert_eq!(status(&api).await.state, OpState::Idle);

    // The plan shows the profile.
    let profile = ["se_group_order", "series", "max_transfers", "2", "transfer_rate_mib", "100"];
    let mut args = vec!["upgrade", "system", "image_path", pkg];
    args.extend_from_slice(&profile);
    let mut checks = args.clone();
    checks.push("prechecks_only");
    let shown = ok(&c.molt(&checks));
    assert!(
        shown.contains("profile: SEs at once per group: g1 2; SE groups in series; 2 transfers at once; each transfer capped at 100 MiB/s"),
        "{shown}"
    );
    assert!(shown.contains("its group moves up to 2 SEs at once, but never two of these"), "{shown}");

    // Started without waiting; `show upgrade status --watch` follows it with the time left.
    args.push("--no-wait");
    ok(&c.molt(&args));
    let dir = c.path().to_path_buf();
    let watch = std::thread::spawn(move || {
        integration_tests::process::molt(&[
            "--cluster-dir",
            dir.to_str().unwrap(),
            "show",
            "upgrade",
            "status",
            "--watch",
        ])
    });
    let mut samples = vec![];
    let mut shown_running = None;
    let deadline = Instant::now() + Duration::from_secs(240);
    let end = loop {
        let s = status(&api).await;
        if s.state != OpState::InProgress {
            break s;
        }
        assert!(Instant::now() < deadline, "the upgrade did not end: {s:#?}");
        samples.push((s.progress, s.eta_seconds, s.eta_basis.clone()));
        if shown_running.is_none() && s.phase == Some(ShownPhase::ServiceEngines) {
            shown_running = Some(ok(&c.molt(&["show", "upgrade", "status"])));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    let watched = ok(&watch.join().unwrap());
    assert!(watched.contains(" left (ends about "), "the --watch bars show the time left: {watched}");
    let shown = shown_running.expect("the SE phase was seen");
    assert!(shown.contains(" left (ends about ") && shown.contains("profile: "), "{shown}");

    // While it ran: a time left in every sample, at first a guess (no
    // history), then from this run's own times; progress never went back.
    assert!(samples.iter().all(|(_, eta, _)| eta.is_some()), "{samples:?}");
    assert!(samples[0].2.starts_with("a first guess"), "{samples:?}");
    assert!(samples.iter().any(|(_, _, b)| b.starts_with("from the times measured in this run")), "{samples:?}");
    assert!(samples.windows(2).all(|w| w[0].0 <= w[1].0), "progress went back: {samples:?}");
    // Ended: no time left, and the times measured go into the history for the next one.
    assert!(end.eta_seconds.is_none() && end.eta_basis == "ended", "{end:#?}");
    let timings = end.history.last().unwrap().timings;
    assert!(timings.se_ms > Some(0) && timings.controllers_ms > Some(0), "{timings:?}");
    let profile = end.profile.as_ref().unwrap();
    assert_eq!(profile.max_parallel_ses, [("g1".to_owned(), 2), ("g2".to_owned(), 1)].into(), "{end:#?}");

    // Two nodes staged at a time, each at no more than 100 MiB/s.
    let stages: Vec<(&str, f64, f64)> = end
        .nodes
        .iter()
        .map(|n| {
            let e = n.events.iter().find(|e| e.task == Task::Stage).unwrap();
            (n.id.as_str(), e.start, e.end.unwrap())
        })
        .collect();
    let size = end.image_size as f64;
    for (id, start, stop) in &stages {
        let at_once = stages.iter().filter(|o| o.1 <= *start && *start < o.2).count();
        assert!(at_once <= 2, "{at_once} nodes staged at once: {stages:?}");
        // The leader copies from its own store; the others stream from it.
        let mib_s = size / (1 << 20) as f64 / (stop - start);
        assert!(*id == "c1" || mib_s <= 105.0, "{id} staged at {mib_s:.0} MiB/s: {stages:?}");
    }

    // Two SEs of g1 were out together, never two of one virtual service,
    // and no virtual service lost traffic; g2 went after g1.
    let placements = get(&api, "/api/virtualservice").await;
    for vs in placements.as_array().unwrap() {
        let p: Vec<String> = vs["placements"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().into()).collect();
        assert_eq!(p.len(), 2, "{vs}");
        assert!(!overlap(pass(&end, &p[0]), pass(&end, &p[1])), "{p:?} were out together: {end:#?}");
    }
    let ses = ["g1-se1", "g1-se2", "g1-se3", "g1-se4"];
    let together = ses.iter().any(|a| ses.iter().any(|b| a < b && overlap(pass(&end, a), pass(&end, b))));
    assert!(together, "no two SEs of g1 were out at once: {end:#?}");
    let g1_end = ses.iter().map(|s| pass(&end, s).1).fold(0.0, f64::max);
    assert!(pass(&end, "g2-se1").0 >= g1_end, "g2 started before g1 ended: {end:#?}");
    for vs in &end.virtual_services {
        assert_eq!(vs.measured_downtime_ms.unwrap_or(0), 0, "{vs:#?}");
    }
    all_up_on(&api, "2.0.0", &[], 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_gate_is_an_se_failure_then_passing_gates_let_the_group_on() {
    let (c, api) = start(&["--controllers", "1", "--groups", "g1:active-active:2", "--allow-gate-program", "/bin/sh"]);
    api.post("/api/virtualservice", &json!({"name": "web", "se_group": "g1", "port": 8080, "scale": 2})).await.unwrap();
    let gates = |exec: &[&str]| {
        json!({"name": "g1", "ha_mode": "active-active", "health_gates": [
            {"http": {"virtual_service": "web", "path": "/health", "status": 200, "tries": 5}},
            {"exec": {"command": exec, "timeout_secs": 10}},
        ]})
    };
    // A gate on a service that does not exist, or a relative program, is refused.
    let bad =
        json!({"name": "g1", "ha_mode": "active-active", "health_gates": [{"http": {"virtual_service": "nope"}}]});
    let m = bad_request(api.put("/api/serviceenginegroup/g1", &bad).await);
    assert!(m.contains("health_gates[0]: virtual service nope does not exist"), "{m}");
    let m = bad_request(api.put("/api/serviceenginegroup/g1", &gates(&["check.sh"])).await);
    assert!(m.contains("health_gates[1]: command [\"check.sh\"]: must start with an absolute path"), "{m}");
    // The new build is sick on the SEs: the exec gate fails, and the group returns to 1.0.0.
    let sick = gates(&["/bin/sh", "-c", "echo the new build is sick >&2; exit 1"]);
    api.put("/api/serviceenginegroup/g1", &sick).await.unwrap();
    // The trail names the program an exec gate will run on the SEs, and the
    // digest of the body that set it.
    let s = status(&api).await;
    let set = s.audit.iter().rfind(|a| a.action == "PUT /api/serviceenginegroup/g1").unwrap();
    assert_eq!(set.status, 200, "{set:?}");
    let set_gates: Value = serde_json::from_str(set.gates.as_deref().unwrap()).unwrap();
    assert_eq!(set_gates, sick["health_gates"], "{set:?}");
    let digest = common::Sha256Digest::of(&serde_json::to_vec(&sick).unwrap()).to_hex();
    assert_eq!(set.body_sha256.as_deref(), Some(digest.as_str()), "{set:?}");
    let gated = conflict(api.delete("/api/virtualservice/web").await, "delete a gated service");
    assert!(gated.contains("checked by a health gate of SE group g1"), "{gated}");
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), "2.0.0", "1.0.0", None);
    ok(&c.molt(&["upgrade", "system", "image_path", pkg.to_str().unwrap(), "action_on_error", "rollback"]));
    let s = status(&api).await;
    assert_eq!(s.state, OpState::Completed, "{s:#?}");
    let g = group(&s, "g1");
    assert_eq!(g.state, GroupState::RolledBack, "{s:#?}");
    // The reason carries what the gate program said.
    assert!(g.reason.contains("health gate failed on 2.0.0"), "{g:#?}");
    assert!(g.reason.contains("exit 1: the new build is sick"), "{g:#?}");
    let failed: Vec<_> = g.gates.results.iter().filter(|r| r.status == EventStatus::Failed).collect();
    assert_eq!(failed.len(), 1, "the first SE failed its gate, the second never ran it: {g:#?}");
    // The http gate passed before the exec gate failed.
    assert!(failed[0].message.contains("answers 200 (up to 5 tries): 200 on try"), "{g:#?}");
    let v = versions(&api).await;
    for (id, want) in [("c1", "2.0.0"), ("g1-se1", "1.0.0"), ("g1-se2", "1.0.0")] {
        assert_eq!(version_of(&v, id), want, "{id}: {v:?}");
    }
    for vs in &s.virtual_services {
        assert_eq!(vs.measured_downtime_ms.unwrap_or(0), 0, "{vs:#?}");
    }
    let shown = ok(&c.molt(&["show", "upgrade", "status"]));
    assert!(shown.contains("health gates: http web GET /health answers 200 (up to 5 tries); exec /bin/sh"), "{shown}");
    assert!(shown.contains(" failed  health gate failed on 2.0.0"), "{shown}");

    // Fixed, the gates pass on each SE and the group moves on.
    api.put("/api/serviceenginegroup/g1", &gates(&["/bin/sh", "-c", "echo healthy"])).await.unwrap();
    ok(&c.molt(&["upgrade", "segroup", "g1"]));
    let s = status(&api).await;
    let g = group(&s, "g1");
    assert_eq!((s.state, g.state), (OpState::Completed, GroupState::Completed), "{s:#?}");
    assert_eq!(g.gates.results.len(), 2, "{g:#?}");
    assert!(g.gates.results.iter().all(|r| r.status == EventStatus::Done), "{g:#?}");
    all_up_on(&api, "2.0.0", &[], 30).await;
}
