//! Upgrade benchmark: the wall time of a happy-path system upgrade (3
//! controllers, SE groups g1 and g2 of 2 SEs, real reboots through
//! `molt local`), split into distribution, unpacking and rebooting on the
//! critical path, and the rest (commands, commits, drains and restores,
//! heartbeat latency, waits), itself split into the commands' round trips
//! and the waits between steps. Last line:
//! `median: wall W s, distribution D s, unpack U s, reboot path R s, other O s`.
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

use integration_tests::bench::{Args, Down, Flag};
use integration_tests::bin;
use molt::client::{Api, Connection};
use serde_json::{Value, json};

/// The flags this bench takes.
const FLAGS: &[Flag] = &[Flag { name: "--runs", help: "upgrades measured (the median is reported)", default: "3" }];

/// What `--help` prints before the flags.
const ABOUT: &str = "Upgrade benchmark: the wall time of a happy-path system upgrade of a local cluster, split on the critical path.\nusage: bench_upgrade [FLAGS]";

/// The command line (see `Args::global`).
fn args() -> &'static Args {
    Args::global(ABOUT, FLAGS)
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

/// Where one upgrade's wall time went, in seconds.
#[derive(Debug, Clone, Copy)]
struct Breakdown {
    wall: f64,
    /// The first node's staging start to the last node's staging end.
    distribution: f64,
    /// Installing into the inactive slot on the critical path: the slowest
    /// follower's apply, then the slowest group's SEs' applies, one after the
    /// other (the leader's own apply is inside the controllers' reboot window).
    unpack: f64,
    /// Rebooting and rejoining on the critical path (controllers, then the slowest group).
    reboot: f64,
    /// The controllers' part of `reboot`.
    controllers: f64,
    /// The slowest group's part of `reboot`.
    slowest_group: f64,
    /// Of `other`: the steps the leader drives by command on the critical
    /// path, each from its decision to the heartbeat reporting it done (the
    /// controllers' commit; the slowest group's drains, commits and restores).
    commands: f64,
}

impl Breakdown {
    /// What is neither distribution, unpacking nor reboot: commands, commits,
    /// drains and restores, heartbeat latency, waits.
    fn other(&self) -> f64 {
        (self.wall - self.distribution - self.unpack - self.reboot).max(0.0)
    }

    /// Of `other`: what is not a command's round trip, i.e. the time
    /// between steps (the driver's decision after a heartbeat, polls).
    fn waits(&self) -> f64 {
        (self.other() - self.commands).max(0.0)
    }
}

fn duration(e: &Value) -> f64 {
    let (s, t) = span(e);
    t - s
}

fn analyse(status: &Value) -> Breakdown {
    let wall = status["ended_at"].as_f64().unwrap() - status["started_at"].as_f64().unwrap();
    let nodes: Vec<&str> = status["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    let controllers: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["role"] == "controller")
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    let stages: Vec<(f64, f64)> = nodes.iter().flat_map(|n| events(status, n, "stage")).map(span).collect();
    let distribution =
        stages.iter().map(|s| s.1).fold(0.0, f64::max) - stages.iter().map(|s| s.0).fold(f64::MAX, f64::min);
    // A follower reboots when its apply ends; the leader when its own apply
    // started (it reports nothing before rebooting).
    let first_reboot =
        controllers.iter().flat_map(|c| events(status, c, "apply")).map(|e| span(e).1).fold(f64::MAX, f64::min);
    let last_rejoin =
        controllers.iter().flat_map(|c| events(status, c, "rejoin")).map(|e| span(e).1).fold(0.0, f64::max);
    let controller_reboot = (last_rejoin - first_reboot).max(0.0);
    // The followers install before the first reboot; the leader installs
    // after they rejoined, inside the controllers' reboot window (counted there).
    let mut applies: Vec<(f64, f64)> =
        controllers.iter().flat_map(|c| events(status, c, "apply")).map(|e| (span(e).0, duration(e))).collect();
    applies.sort_by(|a, b| a.0.total_cmp(&b.0));
    if applies.len() > 1 {
        applies.pop();
    }
    let controller_apply = applies.iter().map(|a| a.1).fold(0.0, f64::max);
    let controller_commit =
        controllers.iter().flat_map(|c| events(status, c, "commit")).map(duration).fold(0.0, f64::max);
    // The slowest group: the most time in its SEs' applies and reboots.
    let (mut group_apply, mut group_reboot, mut group_commands) = (0.0f64, 0.0f64, 0.0f64);
    for g in status["se_groups"].as_array().unwrap() {
        let ses: Vec<&str> = g["ses"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        let sum = |task: &str| -> f64 { ses.iter().flat_map(|se| events(status, se, task)).map(duration).sum() };
        let (apply, rejoin) = (sum("apply"), sum("rejoin"));
        if apply + rejoin > group_apply + group_reboot {
            (group_apply, group_reboot) = (apply, rejoin);
            group_commands = sum("drain") + sum("commit") + sum("restore");
        }
    }
    Breakdown {
        wall,
        distribution: distribution.max(0.0),
        unpack: controller_apply + group_apply,
        reboot: controller_reboot + group_reboot,
        controllers: controller_reboot,
        slowest_group: group_reboot,
        commands: controller_commit + group_commands,
    }
}

async fn one_run(work: &Path, pkg: &Path, i: usize) -> Value {
    let dir = work.join(format!("cluster-{i}"));
    let subnet = format!("127.4.{}", 10 + i);
    let down =
        Down::up(&dir, &["--controllers", "3", "--groups", "g1:active-active:2,g2:n-plus-m:2", "--subnet", &subnet]);
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
    drop(down);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(end["state"], "completed", "{end:#}");
    if let Ok(path) = std::env::var("MOLT_BENCH_DUMP") {
        std::fs::write(format!("{path}.{i}.json"), serde_json::to_vec_pretty(&end).unwrap()).unwrap();
    }
    end
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    args();
    common::tls::install_default_provider();
    let runs: usize = args().text("--runs").parse().unwrap();
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
        "{:<5} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12} {:>8}",
        "run", "wall s", "dist s", "unpack s", "reboot s", "controllers s", "slowest grp s", "other s"
    );
    let mut rows = vec![];
    for i in 0..runs {
        let end = one_run(work.path(), &pkg, i).await;
        let b = analyse(&end);
        println!(
            "{:<5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>12.2} {:>12.2} {:>8.2}",
            i + 1,
            b.wall,
            b.distribution,
            b.unpack,
            b.reboot,
            b.controllers,
            b.slowest_group,
            b.other()
        );
        rows.push(b);
    }
    rows.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    let m = rows[rows.len() / 2];
    println!(
        "other is {:.0}% of the wall time (the run of median wall time): command round trips {:.2} s, \
         waits between steps {:.2} s",
        100.0 * m.other() / m.wall.max(f64::EPSILON),
        m.commands,
        m.waits()
    );
    println!(
        "median: wall {:.2} s, distribution {:.2} s, unpack {:.2} s, reboot path {:.2} s, other {:.2} s",
        m.wall,
        m.distribution,
        m.unpack,
        m.reboot,
        m.other()
    );
}
