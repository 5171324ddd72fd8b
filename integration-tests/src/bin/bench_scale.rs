//! Control-plane scale: one leader (a real process) and N lightweight SE
//! sessions, each with its own certificate over its own mutual-TLS
//! connection, from its own loopback address, heartbeating at 1 Hz.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/bench_scale --ses 1000 [--measure-secs 20]
//! ```
//!
//! Measured on the leader's process: CPU over the window (utime + stime from
//! /proc, as % of one core) and its resident memory at the end; then one SE
//! is killed (its connection closes, as a killed process's would) and one
//! hangs (its connection stays open, its heartbeats stop), and the time
//! until the leader's `GET /api/cluster` shows each down is measured. Last
//! line: `ses: N, leader cpu: X% of a core, rss: Y MiB, down detected in Z s`
//! (Z for the killed SE; the hung one is on the line before), after the
//! cost of one heartbeat in microseconds of the leader's CPU.
//!
//! Up to 15,000 sessions: each takes a socket in this process and one in
//! the leader, so the open-files limit must allow n + a few hundred (20,000
//! here); addresses are 127.7.x.y.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{DeploymentKind, Role, convert, session::Heartbeat, tls::TlsMaterial};
use integration_tests::bench::{Args, Down, Flag, cpu_secs, status_kib};
use integration_tests::bin;
use molt::{
    client::{Api, Connection},
    local::{GroupSpec, LocalSpec},
    pki::NodeSpec,
};
use proto::v1::leader_client::LeaderClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The flags this bench takes.
const FLAGS: &[Flag] = &[
    Flag { name: "--measure-secs", help: "seconds the leader is measured", default: "20" },
    Flag { name: "--ses", help: "SE sessions", default: "1000" },
];

/// What `--help` prints before the flags.
const ABOUT: &str = "Control-plane scale: one leader (a real process) and N SE sessions over mutual TLS, heartbeating at 1 Hz.\nusage: bench_scale [FLAGS]";

/// The command line (see `Args::global`).
fn args() -> &'static Args {
    Args::global(ABOUT, FLAGS)
}

fn se_ip(i: usize) -> String {
    format!("127.7.{}.{}", i / 250, i % 250 + 1)
}

/// One SE: a session with the leader, a heartbeat a second, until `stop`;
/// `hang` stops the heartbeats but keeps the connection.
async fn se_session(pki: &Path, i: usize, leader: String, hang: Arc<AtomicBool>) {
    let id = format!("se-{i}");
    let m = TlsMaterial::load(&pki.join("ca.pem"), &pki.join(format!("{id}.pem")), &pki.join(format!("{id}.key")))
        .expect("the SE's certificate");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&m.ca_pem))
        .identity(Identity::from_pem(&m.cert_pem, &m.key_pem));
    let ip: std::net::IpAddr = se_ip(i).parse().unwrap();
    let addr = format!("{ip}:8443");
    let mut seq = 0u64;
    let boot_id = common::types::random_hex(8);
    let mut beat = move || {
        seq += 1;
        convert::agent_message(Heartbeat {
            node_id: id.parse().unwrap(),
            role: Role::ServiceEngine,
            version: "1.0.0".parse().unwrap(),
            boot_id: boot_id.clone(),
            deployment: DeploymentKind::Vm,
            se_group: Some("g1".into()),
            addr: addr.clone(),
            disk_free_bytes: 100 << 30,
            staged: vec![],
            transfers: vec![],
            results: vec![],
            seq,
            pending: false,
            previous_version: None,
            serving: vec![],
        })
    };
    loop {
        let channel = Endpoint::from_shared(format!("https://{leader}"))
            .unwrap()
            .local_address(Some(ip))
            .tls_config(tls.clone())
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await;
        let Ok(channel) = channel else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(beat()).await.unwrap();
        let Ok(resp) = LeaderClient::new(channel).session(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut inbound = resp.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if hang.load(Ordering::Relaxed) {
                continue;
            }
            if tx.send(beat()).await.is_err() {
                break;
            }
        }
    }
}

async fn se_state(api: &Api, id: &str) -> String {
    let v = api.get("/api/cluster").await.unwrap_or_default();
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == id)
        .map(|n| n["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

async fn time_until_down(api: &Api, id: &str, from: Instant) -> f64 {
    loop {
        if se_state(api, id).await != "up" {
            return from.elapsed().as_secs_f64();
        }
        assert!(from.elapsed() < Duration::from_secs(60), "{id} never shown down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raises this process's open-files limit to its hard limit (the leader,
/// started from here, inherits it), or ends the bench saying what to do
/// when that is below `n` sessions and some room.
fn open_files_for(n: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = n as u64 + 512;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if hard < need {
        integration_tests::bench::refuse(&format!(
            "{n} sessions need {need} open files, the hard limit is {hard}: raise it (ulimit -Hn) or use fewer --ses"
        ));
    }
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    args();
    common::tls::install_default_provider();
    let (n, window): (usize, u64) = (args().get("--ses"), args().get("--measure-secs"));
    if !(2..=15000).contains(&n) {
        integration_tests::bench::refuse("--ses is between 2 and 15000");
    }
    open_files_for(n);
    let work = tempfile::Builder::new().prefix("molt-scale-").tempdir_in(std::env::temp_dir()).unwrap();
    let dir = work.path().join("cluster");
    // A one-controller local cluster (its own SE is never powered on), then N more SEs.
    let spec = LocalSpec {
        groups: vec![GroupSpec { name: "g1".into(), ha: "active-active".into(), count: 1 }],
        cluster: "scale".into(),
        ..LocalSpec::new(dir.clone(), molt::local::own_bin_dir(), [127, 6, 0])
    };
    let file = molt::local::prepare(&spec).expect("prepare the controller");
    let pki = dir.join("pki");
    let t = Instant::now();
    let specs: Vec<NodeSpec> = (0..n).map(|i| format!("se-{i}=se@{}", se_ip(i)).parse().unwrap()).collect();
    molt::pki::add(&pki, &specs, 30).expect("issue the SEs' certificates");
    eprintln!("{n} certificates issued in {:.1} s", t.elapsed().as_secs_f64());
    let c1_toml = dir.join("nodes/c1/node.toml");
    let mut cfg: common::config::NodeConfigFile = toml::from_str(&std::fs::read_to_string(&c1_toml).unwrap()).unwrap();
    cfg.service_engines.extend((0..n).map(|i| common::config::ServiceEngineEntry {
        id: format!("se-{i}"),
        addr: format!("{}:8443", se_ip(i)),
        se_group: "g1".into(),
    }));
    // One connection per SE: past 4,096 the leader's default cap, an operator raises it.
    cfg.limits.get_or_insert_with(Default::default).max_connections = Some((n + 256).max(4096));
    std::fs::write(&c1_toml, toml::to_string(&cfg).unwrap()).unwrap();
    let _down = Down::new(&dir);
    let st = std::process::Command::new(bin("molt"))
        .args(["local", "power", "on", "--dir", dir.to_str().unwrap(), "c1"])
        .status()
        .unwrap();
    assert!(st.success());
    let api = Api::new(&Connection::resolve(Some(&dir), None, None, None).unwrap()).unwrap();
    let leader_addr = file.nodes.iter().find(|x| x.id == "c1").unwrap().addr.clone();
    let t = Instant::now();
    while api.get("/api/cluster").await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "the leader did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid: u32 = std::fs::read_to_string(dir.join("nodes/c1/init.pid")).unwrap().trim().parse().unwrap();

    eprintln!("opening {n} sessions...");
    let hangs: Vec<Arc<AtomicBool>> = (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut tasks = Vec::new();
    for (i, hang) in hangs.iter().enumerate() {
        let (pki, leader, hang) = (pki.clone(), leader_addr.clone(), hang.clone());
        tasks.push(tokio::spawn(async move { se_session(&pki, i, leader, hang).await }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let t = Instant::now();
    loop {
        let v = api.get("/api/cluster").await.unwrap();
        let up = v["nodes"].as_array().unwrap().iter().filter(|x| x["role"] == "se" && x["state"] == "up").count();
        if up >= n {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "only {up} of {n} SEs up after 5 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{n} SEs up in {:.1} s; measuring the leader for {window} s...", t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, t0) = (cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(window)).await;
    let cpu = 100.0 * (cpu_secs(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let rss_mib = status_kib(pid, "VmRSS:") / 1024;
    let hwm_mib = status_kib(pid, "VmHWM:") / 1024;

    // One SE hangs (connection open, no heartbeats); one is killed.
    let interval = 1.0;
    hangs[1].store(true, Ordering::Relaxed);
    let hung = time_until_down(&api, "se-1", Instant::now()).await;
    let killed_at = Instant::now();
    tasks[0].abort();
    let killed = time_until_down(&api, "se-0", killed_at).await;

    drop(_down);
    println!("\nmolt control-plane scale: 1 leader, {n} SE sessions (mutual TLS each), heartbeats every {interval} s");
    println!("leader cpu over {window} s: {cpu:.1}% of a core; rss {rss_mib} MiB (peak {hwm_mib} MiB)");
    // CPU seconds over the heartbeats received in the window (n a second).
    let per_beat_us = cpu / 100.0 * interval / n as f64 * 1e6;
    println!(
        "cost per heartbeat: {per_beat_us:.1} µs of the leader's CPU (its CPU over the {n} heartbeats a second it receives)"
    );
    println!(
        "an SE that hangs (connection open, no heartbeats) shown down after {hung:.1} s = {:.1} heartbeat intervals",
        hung / interval
    );
    println!("ses: {n}, leader cpu: {cpu:.1}% of a core, rss: {rss_mib} MiB, down detected in {killed:.1} s");
}
