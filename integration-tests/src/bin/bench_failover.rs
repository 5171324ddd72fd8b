//! Controller failover benchmark, all figures from one run on one local
//! cluster of three controllers (heartbeats every second, real processes):
//!
//! 1. the latency of REST configuration writes (each replicated to a
//!    majority, fsynced, applied) over loopback: p50 and p99, against a
//!    baseline measured in the same run on the same disk: a bare redb
//!    commit of the same size, fsynced, which every write needs at least
//!    once (the ratio is printed);
//! 2. the leader's power cut, and the time from then to the first write a
//!    new leader accepts; `--runs N` times (the lost leader is powered on
//!    again and rejoins between runs):
//!    `failover median: M s (min A, max B) over N runs`;
//! 3. a follower cut off from the others for 5 s (nftables), then back:
//!    whether it deposed the leader;
//! 4. the cluster left alone for `--quiet-secs`: the elections in it (the
//!    raft terms the leader's generation went through). Last line:
//!    `quiet: E elections in S s`.
//!
//! ```text
//! cargo build --release --workspace && target/release/bench_failover [--writes 500] [--runs 5]
//! ```

use std::time::{Duration, Instant};

use integration_tests::bench::{Args, Down, Flag};
use integration_tests::bin;
use molt::client::{Api, Connection};
use serde_json::json;

/// The flags this bench takes.
const FLAGS: &[Flag] = &[
    Flag { name: "--runs", help: "failovers measured (the median is reported)", default: "5" },
    Flag { name: "--writes", help: "configuration writes timed before the failover", default: "500" },
    Flag { name: "--quiet-secs", help: "seconds the cluster is left alone, its elections counted", default: "600" },
];

/// What `--help` prints before the flags.
const ABOUT: &str = "Controller failover benchmark on a local cluster of three controllers: write latency, then the leader's loss to the first accepted write.\nusage: bench_failover [FLAGS]";

/// The command line (see `Args::global`).
fn args() -> &'static Args {
    Args::global(ABOUT, FLAGS)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Prints the count, p50, p99 and max of `lat`; returns the p99 (ms).
fn report(what: &str, mut lat: Vec<Duration>) -> f64 {
    lat.sort();
    println!(
        "{what}: {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    pct(&lat, 0.99)
}

/// The baseline of a replicated write: `n` bare redb commits (fsynced,
/// `Durability::Immediate`, redb's default) of a ~300-byte value in `dir`,
/// on the disk the controllers' stores are on.
fn redb_commits(dir: &std::path::Path, n: usize) -> Vec<Duration> {
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
    let db = redb::Database::create(dir.join("baseline.redb")).expect("create the baseline database");
    let value = vec![b'x'; 300];
    (0..n as u64)
        .map(|i| {
            let t = Instant::now();
            let w = db.begin_write().unwrap();
            w.open_table(T).unwrap().insert(i, value.as_slice()).unwrap();
            w.commit().unwrap();
            t.elapsed()
        })
        .collect()
}

#[tokio::main]
async fn main() {
    args();
    common::tls::install_default_provider();
    let writes: usize = args().text("--writes").parse().expect("--writes N");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cluster");
    let _down = Down::up(
        &dir,
        &["--controllers", "3", "--groups", "g1:active-active:1", "--subnet", "127.5.20", "--heartbeat-ms", "1000"],
    );
    let api = Api::new(&Connection::resolve(Some(&dir), None, None, None).unwrap()).unwrap();
    let leader = api.get("/api/cluster").await.unwrap()["leader"].as_str().unwrap().to_owned();

    // 0. A read at the leader: the cost of the REST call itself (a new TLS
    // connection per call, as the CLI makes), without consensus.
    let mut reads = Vec::with_capacity(writes);
    for _ in 0..writes {
        let t = Instant::now();
        api.get("/api/serviceenginegroup").await.unwrap();
        reads.push(t.elapsed());
    }
    report("config reads (no consensus)", reads);

    // 1. Write latency at the leader: SE groups created (one replicated
    // write each), then a virtual service updated (its placement checked too).
    let mut lat = Vec::with_capacity(writes);
    for i in 0..writes {
        let body = json!({"name": format!("bench-{i}"), "ha_mode": "active-active"});
        let t = Instant::now();
        api.post("/api/serviceenginegroup", &body).await.unwrap();
        lat.push(t.elapsed());
    }
    report("config writes on 3 controllers (POST serviceenginegroup)", lat);
    let mut lat = Vec::with_capacity(writes);
    for i in 0..writes {
        let body = json!({"name": "bench", "se_group": "g1", "port": 9000 + (i % 100) as u16});
        let t = Instant::now();
        if i == 0 {
            api.post("/api/virtualservice", &body).await.unwrap();
        } else {
            api.put("/api/virtualservice/bench", &body).await.unwrap();
        }
        lat.push(t.elapsed());
    }
    let molt_p99 = report("config writes on 3 controllers (PUT virtualservice)", lat);
    let bare_p99 = report("baseline: bare redb commit, fsynced, same disk", redb_commits(work.path(), writes));
    println!(
        "write p99: molt {molt_p99:.2} ms = {:.1} x a bare fsynced redb commit ({bare_p99:.2} ms)",
        molt_p99 / bare_p99.max(0.001)
    );

    // 2. The leader's power is cut; how long until a write is accepted
    // again? Then it is powered on, and once every node is up and the three
    // controllers are members again, the next run cuts whichever one leads.
    let runs: usize = args().get("--runs");
    let mut took = Vec::with_capacity(runs);
    let mut leader = leader;
    let power = |state: &str, node: &str| {
        let st = std::process::Command::new(bin("molt"))
            .args(["local", "power", state, "--cluster-dir", dir.to_str().unwrap(), node])
            .status()
            .unwrap();
        assert!(st.success(), "molt local power {state} {node}");
    };
    for run in 1..=runs {
        power("off", &leader);
        let lost = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let body = json!({"name": "bench", "se_group": "g1", "port": 9500 + run as u16});
            if api.put("/api/virtualservice/bench", &body).await.is_ok() {
                break;
            }
            assert!(lost.elapsed() < Duration::from_secs(60), "no write accepted 60 s after the leader was lost");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = lost.elapsed();
        took.push(t);
        let new_leader = api.get("/api/cluster").await.unwrap()["leader"].as_str().unwrap_or("?").to_owned();
        println!(
            "run {run}: leader {leader} lost -> first accepted write on the new leader {new_leader}: {:.2} s ({tries} attempts)",
            t.as_secs_f64()
        );
        power("on", &leader);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = api.get("/api/cluster").await.unwrap_or_default();
            let up = v["nodes"].as_array().is_some_and(|n| n.iter().all(|n| n["state"] == "up"));
            if up && v["controllers"].as_array().is_some_and(|c| c.len() == 3) {
                break;
            }
            assert!(Instant::now() < deadline, "{leader} did not rejoin: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        leader = new_leader;
    }
    took.sort();
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "failover median: {:.2} s (min {:.2}, max {:.2}) over {runs} runs",
        secs(took[took.len() / 2]),
        secs(took[0]),
        secs(took[took.len() - 1])
    );

    // 3. A follower cut off, then back: it campaigned alone (its term went
    // up); back, it must not depose the leader that the others still follow.
    let term = async || -> (String, u64) {
        let v = api.get("/api/cluster").await.unwrap_or_default();
        (v["leader"].as_str().unwrap_or("?").to_owned(), v["generation"].as_u64().unwrap_or(0) >> 32)
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = term().await;
    let follower = ["c1", "c2", "c3"].into_iter().find(|c| *c != before.0).unwrap();
    let nft = |args: &[&str]| {
        let st = std::process::Command::new(bin("molt"))
            .args(["local"])
            .args(args)
            .args(["--cluster-dir", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "molt local {args:?}");
    };
    nft(&["partition", follower]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    nft(&["heal"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = term().await;
    println!(
        "{follower} cut off for 5 s, then back: leader {} (term {}) -> {} (term {}){}",
        before.0,
        before.1,
        after.0,
        after.1,
        if after == before { ": not deposed" } else { ": DEPOSED" }
    );

    // 4. Left alone: every election is a term the leader's generation shows.
    let quiet: u64 = args().get("--quiet-secs");
    let start = term().await;
    let mut terms = std::collections::BTreeSet::from([start.1]);
    let until = Instant::now() + Duration::from_secs(quiet);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        terms.insert(term().await.1);
    }
    println!("quiet: {} elections in {quiet} s", terms.len() - 1);
}
