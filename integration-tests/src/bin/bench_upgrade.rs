//! Upgrade benchmark: the wall time of a happy-path system upgrade (3
//! controllers, SE groups g1 and g2 of 2 SEs, real reboots through
//! `molt local`), and beside it the time nodes spent rebooting and rejoining
//! on the critical path. The difference is molt's orchestration overhead
//! (distribution, commands, commits, heartbeat latency).
//!
//! ```text
//! cargo build --release --workspace && target/release/bench_upgrade [--runs 3]
//! ```
//!
//! Critical path = controller phase (from the first controller's reboot to
//! the last controller's rejoin) + the slowest SE group's sum of its SEs'
//! reboot-and-rejoin times (SEs of a group go one at a time; groups in
//! parallel). All times come from the per-node events of the status.

use std::{path::Path, time::Duration};

use integration_tests::bin;
use molt::client::{Api, Connection};
use serde_json::{Value, json};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_owned())
}

fn events<'a>(status: &'a Value, node: &str, task: &str) -> Vec<&'a Value> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["id"] == node)
        .flat_map(|n| n["events"].as_array().unwrap())
        .filter(|e| e["task"] == task)
        .collect()
}

fn span(e: &Value) -> (f64, f64) {
    (e["start"].as_f64().unwrap(), e["end"].as_f64().unwrap_or(e["start"].as_f64().unwrap()))
}

/// (wall, critical reboot path, controller phase reboot, slowest group) in seconds.
fn analyse(status: &Value) -> (f64, f64, f64, f64) {
    let wall = status["ended_at"].as_f64().unwrap() - status["started_at"].as_f64().unwrap();
    let controllers: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["role"] == "controller")
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    // A follower reboots when its apply ends; the leader when its own apply
    // started (it reports nothing before rebooting).
    let first_reboot =
        controllers.iter().flat_map(|c| events(status, c, "apply")).map(|e| span(e).1).fold(f64::MAX, f64::min);
    let last_rejoin =
        controllers.iter().flat_map(|c| events(status, c, "rejoin")).map(|e| span(e).1).fold(0.0, f64::max);
    let controller_reboot = (last_rejoin - first_reboot).max(0.0);
    let mut slowest = 0.0f64;
    for g in status["se_groups"].as_array().unwrap() {
        let sum: f64 = g["ses"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|se| events(status, se.as_str().unwrap(), "rejoin"))
            .map(|e| {
                let (s, t) = span(e);
                t - s
            })
            .sum();
        slowest = slowest.max(sum);
    }
    (wall, controller_reboot + slowest, controller_reboot, slowest)
}

async fn one_run(work: &Path, pkg: &Path, i: usize) -> Value {
    let dir = work.join(format!("cluster-{i}"));
    let st = std::process::Command::new(bin("molt"))
        .args(["local", "up", "--dir", dir.to_str().unwrap(), "--controllers", "3"])
        .args(["--groups", "g1:active-active:2,g2:n-plus-m:2", "--subnet", &format!("127.4.{}", 10 + i)])
        .status()
        .unwrap();
    assert!(st.success());
    let api = Api::new(&Connection::resolve(Some(&dir), None, None, None).unwrap()).unwrap();
    let up = api.upload(pkg, "controller.pkg", |_| {}).await.unwrap();
    api.post("/api/cluster/upgrade", &json!({ "image_path": up["image_path"] })).await.unwrap();
    let end = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(v) = api.get("/api/cluster/upgrade/status").await else { continue };
        if v["state"] != "in_progress" {
            break v;
        }
    };
    let _ = std::process::Command::new(bin("molt")).args(["local", "down", "--dir", dir.to_str().unwrap()]).status();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(end["state"], "completed", "{end:#}");
    end
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    common::tls::install_default_provider();
    let runs: usize = arg("--runs", "3").parse().unwrap();
    let work = tempfile::Builder::new().prefix("molt-bench-upgrade-").tempdir().unwrap();
    let payload = work.path().join("payload/bin");
    std::fs::create_dir_all(&payload).unwrap();
    for b in ["controller-agent", "se-agent"] {
        std::fs::copy(bin(b), payload.join(b)).unwrap();
    }
    let pkg = work.path().join("controller.pkg");
    let info = common::package::build(
        &work.path().join("payload"),
        "2.0.0".parse().unwrap(),
        "1.0.0".parse().unwrap(),
        common::DeploymentKind::Vm,
        &pkg,
    )
    .unwrap();
    println!(
        "molt upgrade benchmark: 3 controllers + g1, g2 of 2 SEs, 1.0.0 → 2.0.0, {} MiB package, heartbeat 1 s",
        info.size >> 20
    );
    println!(
        "{:<5} {:>8} {:>16} {:>14} {:>14} {:>12}",
        "run", "wall s", "reboot path s", "controllers s", "slowest grp s", "overhead s"
    );
    let mut rows = vec![];
    for i in 0..runs {
        let end = one_run(work.path(), &pkg, i).await;
        let (wall, critical, ctl, grp) = analyse(&end);
        println!("{:<5} {wall:>8.2} {critical:>16.2} {ctl:>14.2} {grp:>14.2} {:>12.2}", i + 1, wall - critical);
        rows.push((wall, critical));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (wall, critical) = rows[rows.len() / 2];
    println!(
        "median: wall {wall:.2} s, of which nodes rebooting and rejoining on the critical path {critical:.2} s, orchestration {:.2} s",
        wall - critical
    );
}
