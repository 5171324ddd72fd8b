//! What operators use besides the CLI: the web page (served, and driven in
//! headless Chromium through a whole upgrade) and `GET /metrics`.

use crate::support::*;
use integration_tests::{LocalCluster, TestCluster, browser::Browser, make_package};
use serde_json::json;

use crate::security::raw_https;

fn token(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("pki/admin.token")).unwrap().trim().to_owned()
}

fn addr(c: &TestCluster, id: &str) -> String {
    c.file.nodes.iter().find(|n| n.id == id).unwrap().addr.clone()
}

/// The value of one sample line of a Prometheus text page.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `promtool check metrics` on `page`: it must pass, and say nothing.
fn promtool_check(page: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, which .ci/run installs)");
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{page}");
}

/// `GET /metrics` of `addr` with curl, with the admin's client certificate
/// or none, asking for `accept`; the body.
fn curl_metrics(pki: &std::path::Path, addr: &str, cert: bool, accept: Option<&str>) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--cacert"]).arg(pki.join("ca.pem"));
    if cert {
        cmd.arg("--cert").arg(pki.join("admin.pem")).arg("--key").arg(pki.join("admin.key"));
    }
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd.arg(format!("https://{addr}/metrics")).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn metrics(c: &TestCluster) -> String {
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token(&c.cluster_dir())
    );
    let resp = raw_https(c, &addr(c, "c1"), req.as_bytes(), false).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("content-type: text/plain; version=0.0.4"), "{resp}");
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_nodes_heartbeats_and_operations() {
    let c = TestCluster::builder().group("g1", "active-active", 2).start().await;
    let text = metrics(&c).await;
    for (id, role, group) in [("c1", "controller", ""), ("g1-se1", "se", "g1"), ("g1-se2", "se", "g1")] {
        let series = format!("molt_node_up{{node=\"{id}\",role=\"{role}\",se_group=\"{group}\"}}");
        assert_eq!(sample(&text, &series), Some(1.0), "{series} in\n{text}");
        let age = sample(&text, &format!("molt_node_heartbeat_age_seconds{{node=\"{id}\"}}")).unwrap();
        assert!(age < 5.0, "{id} heartbeat age {age}");
        assert_eq!(sample(&text, &format!("molt_node_version_info{{node=\"{id}\",version=\"1.0.0\"}}")), Some(1.0));
    }
    assert_eq!(sample(&text, "molt_upgrade_state{state=\"idle\"}"), Some(1.0));
    assert_eq!(sample(&text, "molt_image_bytes_served_total"), Some(0.0));

    // A prestage moves bytes and is counted once it completes.
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", common::DeploymentKind::Vm, 1 << 20);
    c.api().upload(&pkg, "controller.pkg", |_| {}).await.unwrap();
    c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap();
    assert_eq!(c.wait_operation(60).await.state, OpState::Completed);
    let text = metrics(&c).await;
    let size = std::fs::metadata(&pkg).unwrap().len() as f64;
    // The leader stages from its own store; the two SEs fetch over the
    // network through a chain (the default fan-out, 1): the leader sends the
    // image to one of them (one copy in all) and it relays it to the other —
    // more from the leader only if the relay was not ready.
    let served = sample(&text, "molt_image_bytes_served_total").unwrap();
    assert!(served >= size && served <= 2.0 * size, "served {served} of a {size}-byte image:\n{text}");
    assert_eq!(sample(&text, "molt_node_image_received_bytes{node=\"g1-se1\"}"), Some(size), "{text}");
    assert_eq!(sample(&text, "molt_upgrade_state{state=\"completed\"}"), Some(1.0));
    assert_eq!(sample(&text, "molt_upgrades_total{operation=\"prestage\",state=\"completed\"}"), Some(1.0));
    assert!(sample(&text, "molt_upgrade_duration_seconds{operation=\"prestage\"}").is_some_and(|d| d > 0.0));

    // promtool (Prometheus's own linter) finds nothing to say of the page.
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    promtool_check(body);
    // Each node's own: on the controller next to the cluster's, and on an SE
    // to a scraper with a cluster certificate (here the admin's).
    assert!(text.lines().any(|l| l.starts_with("molt_agent_staged_image_info{version=\"2.0.0\"")), "{text}");
    let pki = c.cluster_dir().join("pki");
    let se = curl_metrics(&pki, &addr(&c, "g1-se1"), true, None);
    assert!(se.contains("molt_agent_info{node=\"g1-se1\",role=\"se\""), "{se}");
    assert!(se.contains("molt_agent_staged_image_info{version=\"2.0.0\""), "{se}");
    assert!(se.contains("molt_agent_commands{kind=\"stage\",state=\"succeeded\"} 1"), "{se}");
    assert!(se.contains("molt_agent_slot_info{slot=\"a\",version=\"1.0.0\",active=\"true\"} 1"), "{se}");
    promtool_check(&se);
    let open = curl_metrics(&pki, &addr(&c, "g1-se1"), true, Some("application/openmetrics-text; version=1.0.0"));
    assert!(open.ends_with("# EOF\n"), "OpenMetrics when asked: {open}");
    let refused = curl_metrics(&pki, &addr(&c, "g1-se1"), false, None);
    assert!(refused.contains("\"kind\":\"unauthenticated\""), "{refused}");

    // Like the API, metrics need the token.
    let none =
        raw_https(&c, &addr(&c, "c1"), b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false).await;
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_ships_in_the_binary_and_every_controller_serves_it() {
    let c = TestCluster::builder().controllers(3).start().await;
    let get = async |id: &str, path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        raw_https(&c, &addr(&c, id), req.as_bytes(), false).await
    };
    // No token is needed for the page itself: it asks for one.
    let page = get("c1", "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html") && page.contains("content-security-policy: default-src 'self'"), "{page}");
    for text in ["System Upgrade", "Begin System Upgrade", "admin.token"] {
        assert!(page.contains(text), "the page lacks {text:?}");
    }
    assert!(page.contains("cache-control: no-store"), "{page}");
    // Its files are named by their digest, and may be kept for a year.
    let files: Vec<&str> = page.match_indices("/ui/app.").filter_map(|(at, _)| page[at..].split('"').next()).collect();
    let named = |ext: &str| files.iter().find(|f| f.ends_with(ext)).unwrap_or_else(|| panic!("{page}")).to_string();
    let (js_path, css_path) = (named(".js"), named(".css"));
    assert!(
        js_path.ends_with(".js") && css_path.ends_with(".css") && js_path.len() > "/ui/app..js".len(),
        "{js_path} {css_path}"
    );
    let js = get("c1", &js_path).await;
    assert!(js.starts_with("HTTP/1.1 200") && js.contains("text/javascript"), "{js}");
    assert!(js.contains("cache-control: public, max-age=31536000, immutable"), "{js}");
    assert!(js.contains("/api/cluster/upgrade/status"), "the script polls the status");
    let css = get("c1", &css_path).await;
    assert!(css.starts_with("HTTP/1.1 200") && css.contains("text/css"), "{css}");
    // Compressed for a client that accepts gzip.
    let req = format!("GET {js_path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br, gzip\r\nConnection: close\r\n\r\n");
    let gz = raw_https(&c, &addr(&c, "c1"), req.as_bytes(), false).await;
    assert!(
        gz.contains("content-encoding: gzip") && gz.contains("vary: accept-encoding"),
        "{}",
        &gz[..gz.len().min(400)]
    );
    let length = |raw: &str| -> usize {
        let head = raw.split("\r\n\r\n").next().unwrap();
        head.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|n| n.trim().parse().ok()).unwrap()
    };
    assert!(length(&gz) * 2 < length(&js), "gzip {} bytes, plain {}", length(&gz), length(&js));
    // A file that is not the page's is a JSON 404.
    let nope = get("c1", "/ui/nope.js").await;
    assert!(nope.starts_with("HTTP/1.1 404") && nope.contains("application/json"), "{nope}");
    // A follower serves the same page; its API calls reach the leader through it.
    let follower = get("c2", "/").await;
    assert!(follower.starts_with("HTTP/1.1 200") && follower.contains("System Upgrade"), "{follower}");
}

/// axe-core's verdict on the page as it is now: no violation of impact
/// serious or critical, one `<h1>`, and the content in landmarks.
fn accessible(b: &mut Browser, axe: &str, screen: &str) {
    let found = b.axe(axe);
    let bad: Vec<_> = found.iter().filter(|v| matches!(v.impact.as_deref(), Some("serious" | "critical"))).collect();
    assert!(bad.is_empty(), "{screen}: axe-core found {bad:#?}");
    let landmarks =
        found.iter().filter(|v| ["region", "landmark-one-main", "page-has-heading-one"].contains(&v.id.as_str()));
    assert_eq!(landmarks.count(), 0, "{screen}: {found:#?}");
    assert_eq!(b.eval("document.querySelectorAll('h1').length"), json!(1), "{screen}: one h1");
    b.screenshot(&format!("axe-{screen}"));
}

/// Issue 27: axe-core found an unlabelled file input (critical), badges and
/// warnings below AA contrast (serious), no `<main>`, no `<h1>` and content
/// outside landmarks. Checked on the login screen, the main screen, the
/// pre-checks of an uploaded image and a running operation.
#[test]
fn the_page_passes_axe_core_on_every_screen() {
    let axe = integration_tests::browser::axe_script();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt.block_on(TestCluster::builder().group("g1", "active-active", 2).fetch_rate_limit(1 << 20).start());
    let shots = integration_tests::browser::target_dir().join("browser-axe");
    let _ = std::fs::remove_dir_all(&shots);
    let mut b = Browser::start(&shots);
    b.goto(&format!("https://{}/", addr(&c, "c1")));
    b.wait_for("!document.querySelector('#login').hidden", 10);
    accessible(&mut b, &axe, "login");
    b.fill("#token", &token(&c.cluster_dir()));
    b.click("#login-button");
    b.wait_for("document.querySelectorAll('#nodes tbody tr').length === 3", 15);
    accessible(&mut b, &axe, "main");
    // The empty history says so in a row of its own.
    assert!(b.text("#history tbody").contains("No operation has run"), "{}", b.text("#history"));
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", common::DeploymentKind::Vm, 4 << 20);
    b.choose_file("#file", &pkg);
    b.wait_for("!document.querySelector('#upload').disabled", 10);
    b.click("#upload");
    b.wait_for("document.querySelectorAll('#prechecks tbody tr').length > 0", 60);
    accessible(&mut b, &axe, "prechecks");
    // A running operation (a prestage at 1 MiB/s: a few seconds).
    let uploaded = format!("controller://upgrade_pkgs/{}", pkg.file_name().unwrap().to_str().unwrap());
    rt.block_on(c.prestage(&uploaded)).unwrap();
    b.wait_for("document.querySelector('#op-summary').dataset.state === 'in_progress'", 15);
    accessible(&mut b, &axe, "running");
    // Its success is not shown as an error.
    b.wait_for("document.querySelector('#op-summary').dataset.state === 'completed'", 60);
    b.wait_for("document.querySelector('#op-reason').innerText.includes('staged on every node')", 10);
    assert_eq!(b.eval("document.querySelector('#op-reason').classList.contains('error')"), json!(false));
    accessible(&mut b, &axe, "completed");
}

/// The whole operator flow in a real browser against a local cluster whose
/// nodes reboot for real: log in (a wrong token first), upload the package
/// with the file picker, read the pre-checks and impact, begin, and watch it
/// complete while the leader reboots under the page.
#[test]
fn in_a_browser_an_operator_uploads_and_upgrades_the_cluster() {
    let shots = integration_tests::browser::target_dir().join("browser-test");
    let _ = std::fs::remove_dir_all(&shots);
    let c = LocalCluster::for_upgrades("3", "g1:active-active:2");
    let tmp = tempfile::tempdir().unwrap();
    let pkg = integration_tests::release_package(tmp.path(), "2.0.0", "1.0.0", None);
    let n_nodes = c.cluster().nodes.len();
    let url = format!("{}/", c.leader_url());
    // A service whose traffic the page predicts, then shows measured.
    let api = c.api();
    let vs = json!({"name": "web", "se_group": "g1", "port": 8080, "scale": 2});
    tokio::runtime::Runtime::new().unwrap().block_on(api.post("/api/virtualservice", &vs)).unwrap();

    let mut b = Browser::start(&shots);
    b.goto(&url);
    b.wait_for("!document.querySelector('#login').hidden", 10);
    b.fill("#token", "not-the-token");
    b.click("#login-button");
    b.wait_for("document.querySelector('#login-error').innerText.includes('not this cluster')", 10);
    b.screenshot("login-refused");

    b.fill("#token", &token(&c.path()));
    b.click("#login-button");
    b.wait_for(&format!("document.querySelectorAll('#nodes tbody tr').length === {n_nodes}"), 15);
    assert!(b.text("#nodes").contains("1.0.0"));
    assert!(b.text("#groups-summary").contains("SE group g1: 1.0.0"), "{}", b.text("#groups-summary"));
    b.screenshot("versions");

    // A file that is not a package is refused with the reason, and nothing is kept.
    let bogus = tmp.path().join("notes.txt");
    std::fs::write(&bogus, "not a package\n".repeat(1000)).unwrap();
    b.choose_file("#file", &bogus);
    b.wait_for("!document.querySelector('#upload').disabled", 10);
    b.click("#upload");
    b.wait_for("document.querySelector('#upload-text').innerText.startsWith('Upload refused (400)')", 30);
    assert!(b.eval("document.querySelector('#image').hidden") == json!(true), "no image to upgrade with");
    b.screenshot("upload-refused");

    b.choose_file("#file", &pkg);
    b.wait_for("!document.querySelector('#upload').disabled", 10);
    b.click("#upload");
    b.wait_for("document.querySelector('#upload-text').innerText.startsWith('Upload complete')", 120);
    b.wait_for("document.querySelectorAll('#prechecks tbody tr').length > 0", 30);
    b.wait_for("!document.querySelector('#begin').disabled", 30);
    assert!(b.text("#image-info").contains("2.0.0"), "{}", b.text("#image-info"));
    let checks = b.text("#prechecks");
    assert!(!checks.contains("error"), "{checks}");
    let impact = b.text("#impact");
    assert!(impact.contains("web") && impact.contains("no downtime"), "{impact}");
    b.screenshot("uploaded-and-prechecked");

    b.click("#begin");
    b.wait_for("document.querySelector('#confirm').open", 5);
    assert!(b.text("#confirm-text").contains("from 1.0.0 to 2.0.0"), "{}", b.text("#confirm-text"));
    b.screenshot("confirm");
    b.click("#confirm-go");

    // Follow it, taking a picture of the page while the leader is away and
    // of each phase as it comes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let state = b.eval("document.querySelector('#op-summary').dataset.state || ''");
        if state == "completed" {
            break;
        }
        assert!(
            !matches!(state.as_str(), Some("aborted" | "suspended")),
            "the upgrade stopped: {}",
            b.text("#progress-card")
        );
        assert!(std::time::Instant::now() < deadline, "not completed after 180 s: {}", b.text("#progress-card"));
        let away = b.eval("!window.molt.connected") == json!(true);
        let phase = b.eval("(document.querySelector('#op-summary b') || {}).innerText || ''");
        let key =
            if away { "waiting-for-leader".to_owned() } else { format!("phase-{}", phase.as_str().unwrap_or("")) };
        if seen.insert(key.clone()) {
            b.screenshot(&key);
        }
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    // The page followed the leader through its reboot: it saw two generations.
    let gens = b.eval("window.molt.generations");
    assert!(gens.as_array().is_some_and(|g| g.len() >= 2), "the page never saw the leader restart: {gens}");
    b.wait_for("document.querySelector('#history tbody tr') !== null", 10);
    assert!(b.text("#history").contains("completed"), "{}", b.text("#history"));
    b.wait_for(
        &format!("[...document.querySelectorAll('#nodes tbody tr')].filter(r => r.innerText.includes('2.0.0')).length === {n_nodes}"),
        30,
    );
    assert!(b.text("#phases").contains("SE group g1"), "{}", b.text("#phases"));
    let traffic = b.text("#phase-traffic");
    assert!(traffic.contains("web") && traffic.contains(" ms"), "measured downtime is shown: {traffic}");
    b.screenshot("completed");
    // After the upgrade the same image is checked again: it is now the running version.
    // Waits for what it asserts: the checks and the button are drawn apart.
    b.wait_for(
        "document.querySelector('#prechecks').innerText.includes('nothing to upgrade') \
         && document.querySelector('#begin').disabled",
        15,
    );

    // The leader's power is pulled: the page says it is waiting, then reconnects.
    c.power("off", "c1");
    b.wait_for("document.querySelector('#banner').innerText.includes('not answering')", 15);
    b.screenshot("leader-away");
    // Logging in while the controller is away keeps trying until it answers.
    b.click("#logout");
    b.fill("#token", &token(&c.path()));
    b.click("#login-button");
    b.wait_for("document.querySelector('#login-error').innerText.includes('trying again every second')", 15);
    b.screenshot("login-waits");
    c.power("on", "c1");
    b.wait_for("!document.querySelector('#app').hidden", 60);
    b.wait_for("document.querySelector('#banner').innerText.includes('Reconnected')", 60);
    b.screenshot("reconnected");
    eprintln!("screenshots in {}", shots.display());
}

/// The page's controls of a running upgrade: a canary upgrade holds after
/// its first group; the operator presses Resume, Pause, then Abort (the
/// partly upgraded group rolls back), then upgrades the group left behind.
#[test]
fn in_a_browser_an_operator_resumes_pauses_and_aborts_an_upgrade() {
    let shots = integration_tests::browser::target_dir().join("browser-test-control");
    let _ = std::fs::remove_dir_all(&shots);
    let c = LocalCluster::for_upgrades("1", "g1:active-active:2,g2:active-active:3");
    let tmp = tempfile::tempdir().unwrap();
    let pkg = integration_tests::release_package(tmp.path(), "2.0.0", "1.0.0", None);
    let api = c.api();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = || -> UpgradeStatus {
        serde_json::from_value(rt.block_on(api.get("/api/cluster/upgrade/status")).unwrap()).unwrap()
    };
    let image = rt.block_on(api.upload(&pkg, "controller.pkg", |_| {})).unwrap()["image_path"].clone();
    rt.block_on(api.post("/api/cluster/upgrade", &json!({"image_path": image, "pause_after": "g1"}))).unwrap();

    let mut b = Browser::start(&shots);
    b.goto(&format!("{}/", c.leader_url()));
    b.fill("#token", &token(&c.path()));
    b.click("#login-button");
    // The leader reboots during the controllers' phase; the page follows it.
    b.wait_for("document.querySelector('#op-summary').dataset.state === 'paused'", 120);
    b.wait_for("!document.querySelector('#op-resume').hidden", 10);
    assert!(b.text("#op-hint").contains("Paused"), "{}", b.text("#op-hint"));
    assert!(b.text("#op-summary").contains("no end while paused"), "{}", b.text("#op-summary"));
    b.screenshot("paused-after-canary");
    // The page asks before an abort or a system rollback: answer yes.
    b.eval("window.confirm = () => true");

    b.click("#op-resume");
    b.wait_for("document.querySelector('#op-summary').dataset.state === 'in_progress'", 10);
    b.wait_for("!document.querySelector('#op-pause').hidden", 10);
    b.click("#op-pause");
    b.wait_for("document.querySelector('#op-summary').dataset.state === 'paused'", 10);
    assert_eq!(status().state, OpState::Paused);
    b.screenshot("paused-by-the-operator");

    b.click("#op-abort");
    b.wait_for("document.querySelector('#op-summary').dataset.state === 'aborted'", 120);
    let s = status();
    assert_eq!(s.se_groups_behind, ["g2"], "{s:#?}");
    b.wait_for("!document.querySelector('#op-segroup').hidden", 10);
    assert!(b.text("#op-segroup").contains("g2"), "{}", b.text("#op-segroup"));
    b.screenshot("aborted");

    b.click("#op-segroup");
    b.wait_for("document.querySelector('#op-summary').dataset.state === 'completed'", 120);
    let s = status();
    assert_eq!(s.operation, Some(Operation::SeGroupUpgrade), "{s:#?}");
    assert!(s.se_groups_behind.is_empty(), "{s:#?}");
    b.wait_for("!document.querySelector('#op-rollback-system').hidden", 10);
    b.screenshot("rest-upgraded");

    // A read-only token sees the same page and is offered no change.
    let pki = c.path().join("pki");
    let noc = std::fs::read_to_string(integration_tests::process::mint_token(&pki, "read-only", "noc")).unwrap();
    b.click("#logout");
    b.wait_for("!document.querySelector('#login').hidden", 10);
    b.fill("#token", noc.trim());
    b.click("#login-button");
    b.wait_for("document.body.classList.contains('read-only') && !document.querySelector('#app').hidden", 30);
    b.wait_for("document.querySelector('#op-summary').dataset.state === 'completed'", 30);
    let mut shown =
        |sel: &str| b.eval(&format!("getComputedStyle(document.querySelector('{sel}')).display !== 'none'"));
    assert_eq!(shown(".ro-only"), json!(true));
    assert_eq!(shown("#op-controls"), json!(false));
    assert_eq!(shown("#prepare"), json!(false));
    b.screenshot("read-only");
}

/// A 1 GiB image through the browser's file picker: it streams (the page
/// shows progress while it goes) and arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_image_uploads_from_the_browser_with_progress() {
    let c = TestCluster::builder().start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", common::DeploymentKind::Vm, 1 << 30);
    let size = std::fs::metadata(&pkg).unwrap().len();
    let url = format!("https://{}/", addr(&c, "c1"));
    let token = token(&c.cluster_dir());
    let shots = integration_tests::browser::target_dir().join("browser-test-1gib");
    let _ = std::fs::remove_dir_all(&shots);
    let pkg2 = pkg.clone();
    let (partial, secs) = tokio::task::spawn_blocking(move || {
        let mut b = Browser::start(&shots);
        b.goto(&url);
        b.fill("#token", &token);
        b.click("#login-button");
        b.wait_for("!document.querySelector('#app').hidden", 15);
        b.choose_file("#file", &pkg2);
        b.wait_for("!document.querySelector('#upload').disabled", 10);
        let started = std::time::Instant::now();
        b.click("#upload");
        let mut partial = vec![];
        loop {
            let text = b.text("#upload-text");
            if text.starts_with("Upload complete") {
                break;
            }
            assert!(!text.contains("refused") && !text.contains("cut off"), "{text}");
            assert!(started.elapsed().as_secs() < 300, "upload unfinished: {text}");
            if let Some(pct) =
                text.split(" (").nth(1).and_then(|t| t.split('%').next()).and_then(|p| p.parse::<u32>().ok())
                && (1..100).contains(&pct)
            {
                if partial.is_empty() {
                    b.screenshot("uploading");
                }
                partial.push(pct);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let secs = started.elapsed().as_secs_f64();
        b.wait_for("document.querySelector('#image-info').innerText.includes('2.0.0')", 30);
        b.screenshot("uploaded");
        (partial, secs)
    })
    .await
    .unwrap();
    assert!(!partial.is_empty(), "the page never showed the upload part-way");
    let stored = c.data_dir("c1").join("upgrade_pkgs").join(pkg.file_name().unwrap());
    let hash = |p: &std::path::Path| common::package::hash_file(p).unwrap();
    assert_eq!(hash(&stored), hash(&pkg), "the stored image is the file chosen");
    eprintln!(
        "browser upload: {:.2} GiB in {secs:.1} s ({:.2} GiB/s), progress seen at {partial:?}%",
        size as f64 / (1u64 << 30) as f64,
        size as f64 / (1u64 << 30) as f64 / secs
    );
}

/// `molt shell` with its commands on standard input, as a script would use
/// it: the Avi-style commands run, a bad one says why and the shell goes on,
/// `show upgrade status --watch` draws a bar per phase through the leader's
/// reboot and ends with the upgrade, and the history is kept.
#[test]
fn the_shell_runs_an_upgrade_and_watches_it_with_progress_bars() {
    use std::io::Write;
    let c = LocalCluster::for_upgrades("1", "g1:active-active:1");
    let tmp = tempfile::tempdir().unwrap();
    let pkg = integration_tests::release_package(tmp.path(), "2.0.0", "1.0.0", None);
    let history = tmp.path().join("history");
    let script = format!(
        "show cluster\nshow bogus\nupgrade system image_path {} --no-wait\nshow upgrade status --watch\nhistory\nexit\n",
        pkg.display()
    );
    let mut child = std::process::Command::new(integration_tests::bin("molt"))
        .args(["--cluster-dir", c.path().to_str().unwrap(), "shell"])
        .env("MOLT_HISTORY", &history)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("g1-se1") && stdout.contains("NODE"), "show cluster ran: {stdout}");
    assert!(stderr.contains("show what?"), "a bad command says why: {stderr}");
    // Frames of the watch: one bar per phase, the last one complete.
    for phase in ["overall", "distribution", "controllers", "SE group g1"] {
        assert!(stdout.contains(&format!("  {phase}")), "no {phase} bar in {stdout}");
    }
    let last = stdout.rsplit("\x1b[2J\x1b[H").next().unwrap();
    assert!(last.contains("completed") && last.contains(&format!("[{}] 100%", "#".repeat(30))), "{last}");
    assert!(stdout.contains("    2  show bogus\n") && stdout.contains("    5  history\n"), "{stdout}");
    let kept = std::fs::read_to_string(&history).unwrap();
    assert!(kept.contains("show upgrade status --watch") && kept.contains("show bogus"), "{kept}");
    assert_eq!(c.cluster().nodes[0].version, "2.0.0");
}

/// A suspended SE group in the page: the reason and the group's actions are
/// shown; "Resume" tries the failed SE again, and "Roll back group" returns
/// the group's SEs to the old version.
#[test]
fn in_a_browser_a_suspended_group_is_rolled_back() {
    let shots = integration_tests::browser::target_dir().join("browser-test-suspended");
    let _ = std::fs::remove_dir_all(&shots);
    let c = LocalCluster::for_upgrades("1", "g1:active-active:2");
    let tmp = tempfile::tempdir().unwrap();
    // g1-se1 cannot start 2.0.0: its boot loader falls back and the group is suspended.
    let pkg = integration_tests::release_package(tmp.path(), "2.0.0", "1.0.0", Some(("se-agent", "g1-se1")));
    let out = c.molt(&["upgrade", "system", "image_path", pkg.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut b = Browser::start(&shots);
    b.goto(&format!("{}/", c.leader_url()));
    b.fill("#token", &token(&c.path()));
    b.click("#login-button");
    // Logged in first (a failed login would otherwise look like a missing button).
    b.wait_for("!document.querySelector('#app').hidden", 30);
    b.screenshot("logged-in");
    b.wait_for("document.querySelector('.se-group[data-group=\"g1\"] button[data-act=\"rollback\"]')", 180);
    assert!(b.text("#op-reason").contains("g1-se1"), "the reason names the SE: {}", b.text("#op-reason"));
    let summary = b.text("#op-summary");
    assert!(summary.contains("suspended") && summary.contains("phase service_engines"), "{summary}");
    b.screenshot("suspended");
    // Resume tries the failed SE again: it fails again and the group is suspended again.
    // How often a step of g1-se1 appears in its row (`apply`, or `✗` for a failed one).
    let count = |what: &str| {
        format!(
            "[...document.querySelectorAll('.se-group[data-group=\"g1\"] tr')].find(r => r.innerText.includes('g1-se1')).innerText.split('{what}').length - 1"
        )
    };
    // It came back on 1.0.0, was applied once more (a self-revert is not the
    // image's fault), came back again: two tries before the suspension.
    assert_eq!(b.eval(&count("apply")), json!(2));
    b.click(".se-group[data-group=\"g1\"] button[data-act=\"resume\"]");
    b.wait_for(&format!("{} >= 3", count("apply")), 120);
    // The third try fails too; only then is the group suspended again.
    b.wait_for(&format!("{} >= 3", count("✗")), 180);
    b.wait_for("document.querySelector('.se-group[data-group=\"g1\"] button[data-act=\"rollback\"]')", 180);
    b.screenshot("suspended-again");
    b.click(".se-group[data-group=\"g1\"] button[data-act=\"rollback\"]");
    b.wait_for(
        "(document.querySelector('.se-group[data-group=\"g1\"] h3') || {}).innerText?.includes('rolled_back')",
        180,
    );
    b.wait_for(
        "[...document.querySelectorAll('#nodes tbody tr')].filter(r => r.innerText.includes('g1-se') && r.innerText.includes('1.0.0')).length === 2",
        30,
    );
    b.screenshot("rolled-back");
    for n in c.cluster().nodes.iter().filter(|n| n.role == common::Role::ServiceEngine) {
        assert_eq!(n.version, "1.0.0", "{n:?}");
    }
}

/// `molt shell` on a real terminal (a pty made by util-linux's `script`):
/// the prompt names the cluster, Tab completes commands and the cluster's SE
/// group names, and the history file keeps what was run.
#[test]
fn the_shell_completes_commands_and_group_names_on_a_terminal() {
    use std::io::Write;
    let c = LocalCluster::up(&["--controllers", "1", "--groups", "g1:active-active:1"]);
    let tmp = tempfile::tempdir().unwrap();
    let history = tmp.path().join("history");
    let cmd = format!("{} --cluster-dir {} shell", integration_tests::bin("molt").display(), c.path().display());
    let mut child = std::process::Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("MOLT_HISTORY", &history)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut keys = child.stdin.take().unwrap();
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let s2 = screen.clone();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            s2.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    // Type as a person would: each key once the shell has answered the last.
    let wait = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !screen.lock().unwrap().contains(what) {
            assert!(
                std::time::Instant::now() < deadline,
                "the terminal never showed {what:?}: {:?}",
                screen.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let mut typed = |k: &str| {
        keys.write_all(k.as_bytes()).unwrap();
        keys.flush().unwrap();
    };
    // The prompt names the cluster; Tab completes `sh` and `cl`.
    wait("[molt:local]: ");
    typed("sh\t");
    wait("[molt:local]: show ");
    typed("cl\t");
    wait("[molt:local]: show cluster ");
    typed("\r");
    // The completed command ran.
    wait("g1-se1");
    // Tab completes the cluster's SE group name.
    typed("resume segroup \t");
    wait("[molt:local]: resume segroup g1 ");
    typed("\x15exit\r");
    drop(keys);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    let kept = std::fs::read_to_string(&history).unwrap();
    assert!(kept.contains("show cluster") && !kept.contains("resume"), "{kept}");
}
