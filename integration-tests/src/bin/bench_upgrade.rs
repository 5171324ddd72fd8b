//! Upgrade benchmark: the wall time of a happy-path system upgrade of a
//! local cluster (real processes, real reboots), accounted on its critical
//! path: the chain of steps each of which waited for the one before
//! (`integration_tests::bench::critical`), whose parts add up to the wall
//! time exactly. Last line:
//! `median: wall W s = staging S + unpack U + reboot R + traffic T + gates G + round trips C + waits H + idle I`.
//!
//! By default 3 controllers and SE groups g1 (active-active) and g2
//! (n-plus-m) of 2 SEs. `--ses N --groups G [--max-parallel-ses K]`: 3
//! controllers and N SEs in G active-active groups, K SEs of a group at
//! once; each run then also prints its wall time against the ideal the
//! rules allow (the distribution, the controllers' path, and for the
//! largest group ⌈SEs/K⌉ SE passes of the median SE's pass), and the
//! controllers' CPU time and largest resident memory during the run.
//!
//! ```text
//! cargo build --release --workspace && target/release/bench_upgrade [--runs 3] [--ses 64 --groups 4 --max-parallel-ses 2]
//! ```

use std::{path::Path, time::Duration};

use integration_tests::bench::{Args, Down, Flag, NodeUsage, critical::CriticalPath};
use integration_tests::bin;
use molt::{
    client::{Api, Connection},
    molt_api::{
        UpgradeStatus,
        requests::{Started, UpgradeRequest},
        status::{OpState, Task},
    },
};

/// The flags this bench takes.
const FLAGS: &[Flag] = &[
    Flag { name: "--runs", help: "upgrades measured (the median is reported)", default: "3" },
    Flag { name: "--ses", help: "SEs, in --groups active-active groups (0: g1 and g2 of 2 SEs)", default: "0" },
    Flag { name: "--groups", help: "SE groups the --ses SEs are spread over", default: "1" },
    Flag { name: "--max-parallel-ses", help: "SEs of a group upgraded at once", default: "1" },
    Flag { name: "--max-transfers", help: "nodes staging the image at once (0: all)", default: "0" },
];

/// What `--help` prints before the flags.
const ABOUT: &str = "Upgrade benchmark: the wall time of a happy-path system upgrade of a local cluster, accounted on its critical path.\nusage: bench_upgrade [FLAGS]";

/// The command line (see `Args::global`).
fn args() -> &'static Args {
    Args::global(ABOUT, FLAGS)
}

/// The cluster's shape.
struct Shape {
    /// `--groups` of `molt local up`.
    groups: String,
    ses: usize,
    /// The SEs of the largest group.
    largest: usize,
    parallel: usize,
    scale: bool,
}

impl Shape {
    fn from_args() -> Self {
        let (ses, groups, parallel): (usize, usize, usize) =
            (args().get("--ses"), args().get("--groups"), args().get("--max-parallel-ses"));
        if ses == 0 {
            return Self {
                groups: "g1:active-active:2,g2:n-plus-m:2".into(),
                ses: 4,
                largest: 2,
                parallel: 1,
                scale: false,
            };
        }
        assert!(groups >= 1 && groups <= ses && parallel >= 1, "--groups 1..=--ses, --max-parallel-ses 1 or more");
        let per = |g: usize| ses / groups + usize::from(g < ses % groups);
        let spec: Vec<String> = (0..groups).map(|g| format!("g{}:active-active:{}", g + 1, per(g))).collect();
        Self { groups: spec.join(","), ses, largest: per(0), parallel, scale: true }
    }
}

/// What the rules allow: the distribution, the controllers' path (their
/// first apply to their last commit), and ⌈SEs/K⌉ passes of the median SE
/// (its drain to its restore) for the largest group.
fn ideal(end: &UpgradeStatus, shape: &Shape) -> (f64, f64, f64, f64) {
    let steps = |role: common::Role, task: Task| -> Vec<(f64, f64)> {
        end.nodes
            .iter()
            .filter(|n| n.role == role)
            .flat_map(|n| n.events.iter())
            .filter(|e| e.task == task)
            .map(|e| (e.start, e.end.unwrap_or(e.start)))
            .collect()
    };
    let all_stages: Vec<(f64, f64)> = [common::Role::Controller, common::Role::ServiceEngine]
        .into_iter()
        .flat_map(|r| steps(r, Task::Stage))
        .collect();
    let first = |v: &[(f64, f64)]| v.iter().map(|s| s.0).fold(f64::MAX, f64::min);
    let last = |v: &[(f64, f64)]| v.iter().map(|s| s.1).fold(0.0, f64::max);
    let distribution = (last(&all_stages) - first(&all_stages)).max(0.0);
    let c = common::Role::Controller;
    let controllers = (last(&steps(c, Task::Commit)) - first(&steps(c, Task::Apply))).max(0.0);
    let mut passes: Vec<f64> = end
        .nodes
        .iter()
        .filter(|n| n.role == common::Role::ServiceEngine)
        .filter_map(|n| {
            let drain = n.events.iter().find(|e| e.task == Task::Drain)?.start;
            let restore = n.events.iter().rev().find(|e| e.task == Task::Restore)?.end?;
            Some(restore - drain)
        })
        .collect();
    passes.sort_by(f64::total_cmp);
    let pass = passes.get(passes.len() / 2).copied().unwrap_or(0.0);
    let ses = pass * shape.largest.div_ceil(shape.parallel) as f64;
    (distribution + controllers + ses, distribution, controllers, ses)
}

async fn one_run(work: &Path, pkg: &Path, i: usize, shape: &Shape) -> (UpgradeStatus, f64, u64) {
    let dir = work.join(format!("cluster-{i}"));
    let subnet = format!("127.4.{}", 10 + i);
    let down = Down::up(&dir, &["--controllers", "3", "--groups", &shape.groups, "--subnet", &subnet]);
    let api = Api::new(&Connection::resolve(Some(&dir), None, None, None).unwrap()).unwrap();
    let up = api.upload(pkg, "controller.pkg", |_| {}).await.unwrap();
    let mut req = UpgradeRequest::new(up["image_path"].as_str().unwrap().to_owned());
    if shape.scale {
        req.max_parallel_ses = Some(shape.parallel as u32);
    }
    let transfers: u32 = args().get("--max-transfers");
    req.max_transfers = (transfers > 0).then_some(transfers);
    let usage = NodeUsage::watch(&dir, &["c1", "c2", "c3"]);
    let Started::Status(started) = api.post_as("/api/cluster/upgrade", &req).await.unwrap() else {
        panic!("the upgrade did not start")
    };
    // The end of this operation (a controller without a leader may answer
    // from a replica that is behind: only this operation's end counts).
    let end = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(v) = api.get_as::<UpgradeStatus>("/api/cluster/upgrade/status").await else { continue };
        if v.operation_id == started.operation_id && v.state != OpState::InProgress {
            break v;
        }
    };
    let (cpu, rss_kib) = usage.end();
    drop(down);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    if let Ok(path) = std::env::var("MOLT_BENCH_DUMP") {
        std::fs::write(format!("{path}.{i}.json"), serde_json::to_vec_pretty(&end).unwrap()).unwrap();
    }
    (end, cpu, rss_kib)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    args();
    common::tls::install_default_provider();
    let runs: usize = args().get("--runs");
    let shape = Shape::from_args();
    let work = tempfile::Builder::new().prefix("molt-bench-upgrade-").tempdir().unwrap();
    let payload = work.path().join("payload/bin");
    std::fs::create_dir_all(&payload).unwrap();
    for b in ["controller-agent", "se-agent"] {
        // Scale runs ship the agents stripped of their debug lines (33 MiB
        // instead of 195: every SE stages the package and unpacks it).
        let stripped = shape.scale
            && std::process::Command::new("strip")
                .arg("-o")
                .arg(payload.join(b))
                .arg(bin(b))
                .status()
                .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(bin(b), payload.join(b)).unwrap();
        }
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
        "molt upgrade benchmark: 3 controllers + {} SEs ({}), {} at once per group, 1.0.0 → 2.0.0, {} MiB package, heartbeat 1 s",
        shape.ses,
        shape.groups,
        shape.parallel,
        info.size >> 20
    );
    let mut rows: Vec<CriticalPath> = vec![];
    for i in 0..runs {
        let (end, cpu, rss_kib) = one_run(work.path(), &pkg, i, &shape).await;
        let p = CriticalPath::of(&end).expect("the operation ended");
        println!("run {}: {}", i + 1, p.line());
        println!(
            "  leader's overhead on the path (round trips + waits + idle): {:.2} s = {:.1}% of the wall time",
            p.overhead(),
            100.0 * p.overhead() / p.wall.max(f64::EPSILON)
        );
        if shape.scale {
            let (ideal, dist, ctrl, ses) = ideal(&end, &shape);
            println!(
                "  ideal {ideal:.2} s (distribution {dist:.2} + controllers {ctrl:.2} + {} SE passes {ses:.2}); wall = {:.2} x ideal",
                shape.largest.div_ceil(shape.parallel),
                p.wall / ideal.max(f64::EPSILON)
            );
            println!(
                "  controllers during the run: {cpu:.1} CPU s ({:.0}% of a core), largest resident memory {} MiB",
                100.0 * cpu / p.wall.max(f64::EPSILON),
                rss_kib / 1024
            );
        }
        rows.push(p);
    }
    rows.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    let m = rows[rows.len() / 2];
    println!("median: {}", m.line());
}
