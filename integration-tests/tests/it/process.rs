//! The release binaries as an operator runs them: nodes are processes in
//! PID namespaces of their own.

use integration_tests::{LocalCluster, process::molt};

use crate::support::ClusterNodeState;

/// The innermost pid of `pid` (1 if it is the init of its own namespace).
fn ns_pid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

/// The process has exited (a zombie waiting for its reaper counts as gone).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

fn wait_state(c: &LocalCluster, id: &str, want: ClusterNodeState, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while c.state_of(id) != want {
        assert!(std::time::Instant::now() < deadline, "{id} not {want:?} after {secs} s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn local_cluster_nodes_run_in_pid_namespaces_and_take_a_prestage() {
    let c = LocalCluster::up(&[
        "--controllers",
        "3",
        "--groups",
        "g1:active-active:2,g2:n-plus-m:1",
        "--heartbeat-ms",
        "300",
    ]);
    let nodes = c.cluster().nodes;
    assert_eq!(nodes.len(), 6);
    for n in &nodes {
        assert_eq!(n.state, ClusterNodeState::Up, "{n:?}");
        let id = n.id.as_str();
        assert_eq!(ns_pid(c.init_pid(id).unwrap()), 1, "{id} is the init of its own PID namespace");
    }

    // Build a package from the real binaries and distribute it with the CLI.
    let tmp = tempfile::tempdir().unwrap();
    let pkg = integration_tests::process::cli_package(tmp.path(), "2.0.0", "1.0.0");
    let (sha, _) = common::package::hash_file(&pkg).unwrap();
    let out = c.molt(&["upgrade", "prestage", "image_path", pkg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "prestage failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for n in c.cluster().nodes {
        assert_eq!(n.staged.first().map(|s| s.sha256.clone()), Some(sha.to_hex()), "{n:?}");
    }

    // Pull a node's power: it is shown down, its processes are gone; power on brings it back.
    let pid = c.init_pid("g1-se2").unwrap();
    let d = c.path();
    assert!(molt(&["local", "power", "off", "--dir", d.to_str().unwrap(), "g1-se2"]).status.success());
    assert!(gone(pid), "the node's init is gone");
    wait_state(&c, "g1-se2", ClusterNodeState::Down, 3);
    assert!(molt(&["local", "power", "on", "--dir", d.to_str().unwrap(), "g1-se2"]).status.success());
    wait_state(&c, "g1-se2", ClusterNodeState::Up, 20);

    // A refusal exits non-zero and says why.
    let out = c.molt(&["upgrade", "prestage", "image_path", "/etc/hostname"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a molt package"));
}

#[test]
fn cli_refusals_say_what_is_wrong_and_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    for (args, words) in [
        (vec!["show", "cluster"], "--cluster-dir"),
        (vec!["--cluster-dir", d, "show", "cluster"], "molt local up"),
        (vec!["pki", "init", "--dir", d, "--cluster", "x", "--node", "c1=king@h"], "ID=ROLE@HOST"),
        (vec!["package", "inspect", "/etc/hostname"], "not a molt package"),
        (
            vec![
                "package",
                "build",
                "--version",
                "2",
                "--min-compatible",
                "1.0.0",
                "--kind",
                "vm",
                "--payload",
                d,
                "--out",
                "/tmp/x",
            ],
            "--version",
        ),
        (vec!["local", "up", "--dir", d, "--groups", "g1:fancy:2"], "active-active"),
        (vec!["local", "up", "--dir", d, "--subnet", "10.0.0"], "127"),
    ] {
        let out = molt(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{args:?}: {err}");
    }
}

/// `molt ... --json | head`: output into a closed pipe ends molt as it ends
/// `cat` (SIGPIPE), without a panic.
#[test]
fn output_into_a_closed_pipe_ends_molt_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = integration_tests::make_package(tmp.path(), "2.0.0", common::DeploymentKind::Vm, 1 << 20);
    let mut child = std::process::Command::new(integration_tests::bin("molt"))
        .args(["package", "inspect", "--json"])
        .arg(&pkg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before molt writes (its check of the package takes longer).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE, as `cat` is: {:?} {stderr}", out.status);
}

/// The JSON log lines of `node` in a local cluster (its `agent.log` also
/// holds the supervisor's plain lines, which are skipped).
fn json_lines(c: &LocalCluster, node: &str) -> Vec<serde_json::Value> {
    let log = std::fs::read_to_string(c.path().join("nodes").join(node).join("agent.log")).unwrap();
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{node}: a log line is not JSON ({e}): {l}")))
        .collect()
}

/// Whether a JSON log line runs in a span named `name` whose `field` is `value`.
fn in_span(line: &serde_json::Value, name: &str, field: &str, value: &str) -> bool {
    line["spans"].as_array().is_some_and(|spans| spans.iter().any(|s| s["name"] == name && s[field] == value))
}

/// Issue 27: logs were plain text only, with no spans, so one upgrade could
/// not be followed across the leader and the nodes. With `log_format =
/// "json"` every line is a JSON object, and the work of an operation runs in
/// spans that carry its `operation_id` (the status shows it), the node, and
/// the step.
#[test]
fn json_logs_follow_one_operation_across_the_leader_and_the_nodes() {
    let c = LocalCluster::up(&[
        "--controllers",
        "1",
        "--groups",
        "g1:active-active:1",
        "--heartbeat-ms",
        "300",
        "--log-format",
        "json",
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let pkg = integration_tests::process::cli_package(tmp.path(), "2.0.0", "1.0.0");
    let out = c.molt(&["upgrade", "prestage", "image_path", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status: crate::support::UpgradeStatus =
        serde_json::from_value(rt.block_on(c.api().get("/api/cluster/upgrade/status")).unwrap()).unwrap();
    let id = status.operation_id.clone().expect("the status names the operation");
    assert_eq!(status.history.last().and_then(|h| h.operation_id.clone()), Some(id.clone()));
    let shown = String::from_utf8_lossy(&c.molt(&["show", "upgrade", "status"]).stdout).into_owned();
    assert!(shown.contains(&format!("operation_id {id}")), "{shown}");
    // The leader decided the operation's steps in its span...
    let leader = json_lines(&c, "c1");
    assert!(leader.iter().any(|l| in_span(l, "operation", "operation_id", &id)), "c1: nothing under operation {id}");
    assert!(leader.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "c1: {leader:?}");
    // ...and each node ran its step of it in one that names the operation.
    for node in ["c1", "g1-se1"] {
        let lines = json_lines(&c, node);
        let step = lines
            .iter()
            .find(|l| in_span(l, "step", "operation_id", &id) && in_span(l, "step", "step", "stage"))
            .unwrap_or_else(|| panic!("{node}: no line of its stage step of {id}"));
        assert!(in_span(step, "node", "node", node), "{node}: the step's line names the node: {step}");
    }
}

/// An OTLP/gRPC receiver (`integration-tests/tools/otlp_receiver.py`, on
/// OpenTelemetry's own service definitions), stopped when dropped.
struct OtlpReceiver {
    child: std::process::Child,
    port: u16,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl OtlpReceiver {
    fn start() -> Self {
        use std::io::BufRead;
        let python = integration_tests::browser::target_dir().join("tools/venv/bin/python");
        assert!(
            python.exists(),
            "the OTLP test needs grpcio and opentelemetry-proto in target/tools/venv: run .ci/run, or `python3 -m venv \
             target/tools/venv && target/tools/venv/bin/pip install grpcio opentelemetry-proto`"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/otlp_receiver.py");
        let mut child = std::process::Command::new(python)
            .args([script, out.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the receiver said {line:?}"));
        Self { child, port, out, _dir: dir }
    }

    fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 27: spans could not be shipped to a trace viewer. With
/// `otlp_endpoint`, every node exports its spans over OTLP/gRPC to a real
/// receiver, and the spans of one operation, on the leader and on each
/// node, form one trace (their trace id comes from the operation id).
#[test]
fn the_spans_of_one_operation_reach_an_otlp_receiver_as_one_trace() {
    let receiver = OtlpReceiver::start();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let c = LocalCluster::up(&[
        "--controllers",
        "1",
        "--groups",
        "g1:active-active:1",
        "--heartbeat-ms",
        "300",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let pkg = integration_tests::process::cli_package(tmp.path(), "2.0.0", "1.0.0");
    let out = c.molt(&["upgrade", "prestage", "image_path", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status: crate::support::UpgradeStatus = rt.block_on(c.api().get_as("/api/cluster/upgrade/status")).unwrap();
    let id = status.operation_id.expect("the status names the operation");
    let of_op = |s: &serde_json::Value| s["attributes"]["operation_id"] == id.as_str();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (leader, steps) = loop {
        let spans = receiver.spans();
        let leader: Vec<_> = spans
            .iter()
            .filter(|s| s["name"] == "operation" && of_op(s) && s["service"] == "molt-controller-agent")
            .cloned()
            .collect();
        let steps: Vec<_> = spans
            .iter()
            .filter(|s| s["name"] == "step" && of_op(s) && s["attributes"]["step"] == "stage")
            .cloned()
            .collect();
        let on = |node: &str| steps.iter().any(|s| s["instance"] == node);
        if !leader.is_empty() && on("c1") && on("g1-se1") {
            break (leader, steps);
        }
        assert!(std::time::Instant::now() < deadline, "no spans of {id} from the leader and both nodes: {spans:#?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(steps.iter().any(|s| s["service"] == "molt-se-agent" && s["instance"] == "g1-se1"), "{steps:#?}");
    let trace = leader[0]["trace_id"].clone();
    assert!(trace.as_str().is_some_and(|t| t.len() == 32 && t != "0".repeat(32)), "{trace}");
    for s in leader.iter().chain(&steps) {
        assert_eq!(s["trace_id"], trace, "one trace for the operation: {s}");
    }
}

/// Issue 28: `bench_distribution --help` ran the whole benchmark. Every
/// bench now answers `--help` and refuses an unknown flag, before it starts
/// anything.
#[test]
fn every_bench_answers_help_and_refuses_unknown_flags_before_it_starts() {
    for bench in ["bench_distribution", "bench_failover", "bench_flood", "bench_scale", "bench_upgrade"] {
        let help = std::process::Command::new(integration_tests::bin(bench)).arg("--help").output().unwrap();
        let said = String::from_utf8_lossy(&help.stdout);
        assert!(help.status.success() && said.contains("usage: ") && said.contains("flags:"), "{bench}: {said}");
        let bogus = std::process::Command::new(integration_tests::bin(bench)).args(["--bogus", "1"]).output().unwrap();
        assert_eq!(bogus.status.code(), Some(2), "{bench}");
        assert!(String::from_utf8_lossy(&bogus.stderr).contains("unknown argument \"--bogus\""), "{bench}: {bogus:?}");
    }
}

/// Issue 28: a benchmark killed half way left its local cluster running.
/// Interrupted (SIGTERM here, as `timeout` sends), a bench powers its
/// clusters off before it exits.
#[test]
fn an_interrupted_bench_powers_its_cluster_off() {
    use std::io::BufRead;
    let mut bench = std::process::Command::new(integration_tests::bin("bench_scale"))
        .args(["--ses", "2", "--measure-secs", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(bench.stderr.take().unwrap()).lines();
    let dir = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("local cluster ").and_then(|r| r.split(" (").next()).map(std::path::PathBuf::from))
        .expect("the bench names its cluster");
    // Once the leader runs (the bench measures it), interrupt the bench.
    let measuring = lines.by_ref().map_while(Result::ok).any(|l| l.contains("measuring the leader"));
    assert!(measuring, "the bench never got its cluster up");
    let pid: u32 = std::fs::read_to_string(dir.join("nodes/c1/init.pid")).unwrap().trim().parse().unwrap();
    assert!(!gone(pid), "c1 runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bench.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = bench.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(gone(pid), "the interrupted bench left c1 running");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}
