//! Distribution benchmark: molt's prestage against a plain rustls copy of
//! the same bytes, measured in the same run (see shared/perf.md).
//!
//! ```text
//! cargo build --release --workspace
//! target/release/bench_distribution [--size-mib 1024] [--agents 1,8] [--small-mib 256]
//!     [--cap-agents 16,64] [--node-cap-mib 16,4] [--cap-size-mib 64] [--cap-fanouts 1,2,4,8]
//! ```
//!
//! - baseline: one mutual-TLS connection (tokio-rustls, the cluster's
//!   certificates) carries the package in 1 MiB writes; the receiver hashes
//!   on its own thread, writes with `O_DIRECT` as molt's staging does
//!   (`common::fsutil::DirectAppend`), fsyncs — the work of staging without
//!   gRPC or the protocol. Median of three. The headline compares with it;
//!   the same copy through the page cache is the second line. The upload is
//!   compared the same way with the leader's own read + hash + write.
//! - molt: `molt local up` (1 controller + N SEs, real processes), upload,
//!   then prestage; the SE wave's time comes from the per-node events of the
//!   status (the leader stages its own copy from its store, not over the
//!   network). The leader's peak RSS is its process's VmHWM.
//! - relays: for each `--cap-agents` count, every node's egress capped at
//!   its `--node-cap-mib` (a NIC), one agent, then that many agents with
//!   each relay fan-out of `--cap-fanouts` (0: every agent from the leader,
//!   as without relays). The caps keep the agents' total (agents × cap)
//!   well under what 2 cores hash and encrypt, or the machine and not the
//!   cap is measured. The line of the default fan-out
//!   (`common::config::DEFAULT_RELAY_FANOUT`) comes first, then the best.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::Bytes;
use integration_tests::bench::{Args, Down, Flag, status_kib};
use integration_tests::payload_dir;
use molt::client::{Api, Connection};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;

/// The flags this bench takes.
const FLAGS: &[Flag] = &[
    Flag { name: "--agents", help: "agents per run, comma-separated", default: "1,8" },
    Flag { name: "--cap-agents", help: "agents of the capped relay runs, comma-separated (0: none)", default: "16,64" },
    Flag { name: "--cap-fanouts", help: "relay fan-outs of the capped runs, comma-separated", default: "1,2,4,8" },
    Flag { name: "--cap-size-mib", help: "image size of the capped runs, MiB", default: "64" },
    Flag {
        name: "--node-cap-mib",
        help: "each node's egress cap in the capped runs, MiB/s: one for all, or one per --cap-agents",
        default: "16,4",
    },
    Flag { name: "--size-mib", help: "image size, MiB", default: "1024" },
    Flag { name: "--small-mib", help: "image size of the many-agent runs, MiB", default: "256" },
];

/// What `--help` prints before the flags.
const ABOUT: &str = "Distribution benchmark: molt's prestage against a plain rustls copy of the same bytes (see shared/perf.md).\nusage: bench_distribution [FLAGS]";

/// The command line (see `Args::global`).
fn args() -> &'static Args {
    Args::global(ABOUT, FLAGS)
}

fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / d.as_secs_f64()
}

fn build_package(dir: &Path, mib: u64) -> PathBuf {
    let payload = payload_dir(&dir.join(format!("p{mib}")), (mib * MIB) as usize);
    let out = dir.join(format!("controller-{mib}.pkg"));
    common::package::build(
        &payload,
        "2.0.0".parse().unwrap(),
        "1.0.0".parse().unwrap(),
        common::DeploymentKind::Vm,
        &out,
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(payload);
    out
}

/// One plain mTLS copy with hashing on a separate thread, write and fsync.
async fn plain_copy(pki: &Path, pkg: &Path, dst: &Path, direct: bool) -> Duration {
    let m = |id: &str| {
        common::tls::TlsMaterial::load(
            &pki.join("ca.pem"),
            &pki.join(format!("{id}.pem")),
            &pki.join(format!("{id}.key")),
        )
        .unwrap()
    };
    let server_cfg = std::sync::Arc::new(
        common::credentials::Credentials::load(&pki.join("ca.pem"), &pki.join("c1.pem"), &pki.join("c1.key"), None)
            .unwrap(),
    )
    .server_config()
    .unwrap();
    let client_cfg = m("g1-se1").client_config(&[b"h2"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.3.255.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let src = pkg.to_owned();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(server_cfg).accept(tcp).await.unwrap();
        let mut f = tokio::fs::File::open(src).await.unwrap();
        let mut buf = vec![0u8; MIB as usize];
        loop {
            let n = f.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            tls.write_all(&buf[..n]).await.unwrap();
        }
        tls.shutdown().await.unwrap();
    });
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let mut tls = tokio_rustls::TlsConnector::from(client_cfg).connect(name, tcp).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let out = dst.to_owned();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut h = sha2::Sha256::new();
        if direct {
            // As molt's staging writes (direct I/O where the file system allows it).
            let mut f = common::fsutil::DirectAppend::open(&out).unwrap();
            while let Some(b) = rx.blocking_recv() {
                h.update(&b);
                f.write(&b).unwrap();
            }
            f.finish().unwrap();
        } else {
            let mut f = std::fs::File::create(out).unwrap();
            while let Some(b) = rx.blocking_recv() {
                h.update(&b);
                f.write_all(&b).unwrap();
            }
            f.sync_all().unwrap();
        }
        h.finalize()
    });
    loop {
        let mut buf = bytes::BytesMut::zeroed(MIB as usize);
        let n = tls.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.truncate(n);
        tx.send(buf.freeze()).await.unwrap();
    }
    drop(tx);
    writer.await.unwrap();
    let took = started.elapsed();
    server.await.unwrap();
    took
}

/// An sshd of its own on a loopback port, and `scp` of `pkg` to it, then
/// `sha256sum` of the copy, then `sync`: what an operator does by hand. None
/// when sshd is not installed.
fn scp_sha256sum(work: &Path, pkg: &Path) -> Option<Duration> {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        return None;
    }
    let d = work.join("ssh");
    std::fs::create_dir_all(&d).ok()?;
    let keygen = |name: &str| {
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join(name))
            .status()
            .is_ok_and(|s| s.success())
    };
    if !keygen("host") || !keygen("id") {
        return None;
    }
    std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).ok()?;
    let config = format!(
        "Port 2222\nListenAddress 127.3.254.1\nHostKey {0}/host\nAuthorizedKeysFile {0}/authorized_keys\n\
         PermitRootLogin yes\nStrictModes no\nUsePAM no\nPidFile {0}/sshd.pid\nSubsystem sftp internal-sftp\n",
        d.display()
    );
    std::fs::write(d.join("sshd_config"), config).ok()?;
    // sshd's privilege separation directory (made by its service otherwise).
    std::fs::create_dir_all("/run/sshd").ok()?;
    let mut server =
        std::process::Command::new(sshd).arg("-D").arg("-e").arg("-f").arg(d.join("sshd_config")).spawn().ok()?;
    std::thread::sleep(Duration::from_millis(500));
    let dst = work.join("scp-copy.pkg");
    let started = Instant::now();
    let copied = std::process::Command::new("scp")
        .args(["-q", "-P", "2222", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-i"])
        .arg(d.join("id"))
        .arg(pkg)
        .arg(format!("root@127.3.254.1:{}", dst.display()))
        .status()
        .is_ok_and(|s| s.success());
    let verified = copied
        && std::process::Command::new("sha256sum")
            .arg(&dst)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        && std::process::Command::new("sync").status().is_ok_and(|s| s.success());
    let took = started.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&dst);
    verified.then_some(took)
}

/// Reads `src`, hashes it on a thread of its own, writes it to `dst`, fsyncs.
fn hash_write_fsync(src: &Path, dst: &Path, direct: bool) -> Duration {
    use std::io::{Read, Write};
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(8);
    let hasher = std::thread::spawn(move || {
        let mut h = sha2::Sha256::new();
        for b in rx {
            h.update(&b);
        }
        h.finalize()
    });
    let mut input = std::fs::File::open(src).unwrap();
    let mut out = std::fs::File::create(dst).unwrap();
    let mut out_direct = direct.then(|| common::fsutil::DirectAppend::open(dst).unwrap());
    loop {
        let mut buf = Vec::with_capacity(MIB as usize);
        let n = Read::by_ref(&mut input).take(MIB).read_to_end(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        match &mut out_direct {
            Some(d) => d.write(&buf).unwrap(),
            None => out.write_all(&buf).unwrap(),
        }
        tx.send(Bytes::from(buf)).unwrap();
    }
    drop(tx);
    hasher.join().unwrap();
    match out_direct {
        Some(d) => drop(d.finish().unwrap()),
        None => out.sync_all().unwrap(),
    }
    started.elapsed()
}

struct MoltRun {
    agents: usize,
    size: u64,
    upload: Duration,
    wave: Duration,
    per_agent_mean: Duration,
    leader_hwm_kib: u64,
}

/// The capped runs of one agent count: one agent, then each fan-out.
struct Capped {
    agents: usize,
    cap_mib: u64,
    one: MoltRun,
    runs: Vec<(usize, MoltRun)>,
}

impl Capped {
    /// The count's lines: every fan-out, then the default's ratio and the
    /// best one's.
    fn report(&self, size_mib: u64) {
        let (n, cap) = (self.agents, self.cap_mib);
        let wave = |r: &MoltRun| r.wave.as_secs_f64();
        println!(
            "\nnode cap {cap} MiB/s, {size_mib} MiB image: 1 agent {:.2} s (leader peak RSS {} MiB)",
            wave(&self.one),
            self.one.leader_hwm_kib / 1024
        );
        for (k, r) in &self.runs {
            println!(
                "  {n} agents, relay_fanout {k}: {:.2} s = {:.2}x one agent (leader peak RSS {} MiB)",
                wave(r),
                wave(r) / wave(&self.one),
                r.leader_hwm_kib / 1024
            );
        }
        let default = common::config::DEFAULT_RELAY_FANOUT;
        if let Some((_, r)) = self.runs.iter().find(|(k, _)| *k == default) {
            println!(
                "{n} agents vs 1 with node cap {cap} MiB/s: {:.2}\u{d7} (relay_fanout {default}, the default; aim: 1.15\u{d7} or less)",
                wave(r) / wave(&self.one)
            );
        }
        if let Some((k, r)) = self.runs.iter().min_by(|a, b| wave(&a.1).total_cmp(&wave(&b.1))) {
            println!("  best here: relay_fanout {k}, {:.2}\u{d7}", wave(r) / wave(&self.one));
        }
    }
}

/// How the nodes of a run send images.
#[derive(Debug, Clone, Copy, Default)]
struct Net {
    /// Every node's egress cap, bytes/s.
    egress: Option<u64>,
    /// The leader's relay fan-out (none: the default).
    fanout: Option<usize>,
}

async fn molt_run(work: &Path, pkg: &Path, agents: usize, subnet: u8, net: Net) -> MoltRun {
    let dir = work.join(format!("cluster-{agents}-{subnet}"));
    // SE groups of at most 50 (`molt local up`'s limit per group).
    let per = agents.div_ceil(agents.div_ceil(50));
    let groups: Vec<String> =
        (0..agents.div_ceil(per)).map(|g| format!("g{}:active-active:{}", g + 1, per.min(agents - g * per))).collect();
    let groups = groups.join(",");
    let subnet = format!("127.3.{subnet}");
    let mut up = vec!["--controllers", "1", "--groups", &groups, "--subnet", &subnet];
    let (egress, fanout) = (net.egress.map(|e| e.to_string()), net.fanout.map(|k| k.to_string()));
    if let Some(e) = &egress {
        up.extend(["--egress-limit", e]);
    }
    if let Some(k) = &fanout {
        up.extend(["--relay-fanout", k]);
    }
    let down = Down::up(&dir, &up);
    let api = Api::new(&Connection::resolve(Some(&dir), None, None, None).unwrap()).unwrap();
    let size = std::fs::metadata(pkg).unwrap().len();
    let t = Instant::now();
    let up = api.upload(pkg, "controller.pkg", |_| {}).await.unwrap();
    let upload = t.elapsed();
    api.post("/api/cluster/upgrade/prestage", &serde_json::json!({ "image_path": up["image_path"] })).await.unwrap();
    let end = loop {
        let v = api.get("/api/cluster/upgrade/status").await.unwrap();
        if v["state"] != "in_progress" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(end["state"], "completed", "{end:#}");
    let ses: Vec<&serde_json::Value> = end["nodes"].as_array().unwrap().iter().filter(|n| n["role"] == "se").collect();
    let start = ses.iter().map(|n| n["events"][0]["start"].as_f64().unwrap()).fold(f64::MAX, f64::min);
    let stop = ses.iter().map(|n| n["events"][0]["end"].as_f64().unwrap()).fold(0.0, f64::max);
    let mean = ses
        .iter()
        .map(|n| n["events"][0]["end"].as_f64().unwrap() - n["events"][0]["start"].as_f64().unwrap())
        .sum::<f64>()
        / ses.len() as f64;
    let leader_pid: u32 = std::fs::read_to_string(dir.join("nodes/c1/init.pid")).unwrap().trim().parse().unwrap();
    let hwm = status_kib(leader_pid, "VmHWM:");
    drop(down);
    let _ = std::fs::remove_dir_all(&dir);
    MoltRun {
        agents,
        size,
        upload,
        wave: Duration::from_secs_f64(stop - start),
        per_agent_mean: Duration::from_secs_f64(mean),
        leader_hwm_kib: hwm,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    args();
    common::tls::install_default_provider();
    let size_mib: u64 = args().text("--size-mib").parse().unwrap();
    let small_mib: u64 = args().text("--small-mib").parse().unwrap();
    let agents: Vec<usize> = args().text("--agents").split(',').map(|a| a.parse().unwrap()).collect();
    let cap_size_mib: u64 = args().text("--cap-size-mib").parse().unwrap();
    let cap_agents: Vec<usize> =
        args().text("--cap-agents").split(',').map(|a| a.parse().unwrap()).filter(|&n| n > 0).collect();
    let cap_mibs: Vec<u64> = args().text("--node-cap-mib").split(',').map(|a| a.parse().unwrap()).collect();
    if !cap_agents.is_empty() && cap_mibs.len() != 1 && cap_mibs.len() != cap_agents.len() {
        integration_tests::bench::refuse("--node-cap-mib takes one cap, or one per --cap-agents count");
    }
    let fanouts: Vec<usize> = args().text("--cap-fanouts").split(',').map(|a| a.parse().unwrap()).collect();
    let work = tempfile::Builder::new().prefix("molt-bench-").tempdir_in(std::env::temp_dir()).unwrap();
    eprintln!("building packages ({small_mib} MiB and {size_mib} MiB)...");
    let pkg = build_package(work.path(), size_mib);
    let small = build_package(work.path(), small_mib);
    let size = std::fs::metadata(&pkg).unwrap().len();

    let pki = work.path().join("pki");
    let specs: Vec<molt::pki::NodeSpec> =
        ["c1=controller@127.3.255.1", "g1-se1=se@127.3.255.2"].iter().map(|s| s.parse().unwrap()).collect();
    molt::pki::init(&pki, "bench", &specs).unwrap();
    let mut plain = Vec::new();
    let mut plain_direct = Vec::new();
    for i in 0..3 {
        let dst = work.path().join(format!("plain-{i}"));
        plain.push(plain_copy(&pki, &pkg, &dst, false).await);
        let _ = std::fs::remove_file(&dst);
        plain_direct.push(plain_copy(&pki, &pkg, &dst, true).await);
        let _ = std::fs::remove_file(dst);
    }
    plain.sort();
    plain_direct.sort();
    let plain_med = plain[1];
    let plain_rate = gib_s(size, plain_med);
    let plain_direct_rate = gib_s(size, plain_direct[1]);

    let scp = scp_sha256sum(work.path(), &pkg);

    let mut runs = Vec::new();
    for (i, &n) in agents.iter().enumerate() {
        eprintln!("molt prestage of {size_mib} MiB to {n} agent(s)...");
        runs.push(molt_run(work.path(), &pkg, n, 10 + i as u8, Net::default()).await);
    }
    // After the molt runs (its writes would slow theirs): what the leader does with an upload, without the network: read, hash
    // (on a thread of its own), write, fsync. Median of three.
    let mut local = Vec::new();
    let mut local_direct = Vec::new();
    for i in 0..3 {
        let dst = work.path().join(format!("local-{i}"));
        local.push(hash_write_fsync(&pkg, &dst, false));
        let _ = std::fs::remove_file(&dst);
        local_direct.push(hash_write_fsync(&pkg, &dst, true));
        let _ = std::fs::remove_file(dst);
    }
    local.sort();
    local_direct.sort();
    let local_med = local[1];
    eprintln!("molt prestage of {small_mib} MiB to 1 agent (leader memory vs image size)...");
    let small_run = molt_run(work.path(), &small, 1, 30, Net::default()).await;

    // Relays under a per-node egress cap standing in for each node's NIC
    // (`--cap-agents 0` skips them).
    let mut capped = Vec::new();
    if !cap_agents.is_empty() {
        let capped_pkg = build_package(work.path(), cap_size_mib);
        for (j, &n) in cap_agents.iter().enumerate() {
            let cap_mib = cap_mibs[j.min(cap_mibs.len() - 1)];
            let subnet = |i: usize| (40 + 10 * j + i) as u8;
            let cap = Some(cap_mib * MIB);
            eprintln!("molt prestage of {cap_size_mib} MiB, every node sending at most {cap_mib} MiB/s: 1 agent...");
            let one = molt_run(work.path(), &capped_pkg, 1, subnet(0), Net { egress: cap, fanout: None }).await;
            let mut runs = Vec::new();
            for (i, &k) in fanouts.iter().enumerate() {
                eprintln!("... {n} agents, relay_fanout {k}...");
                let net = Net { egress: cap, fanout: Some(k) };
                runs.push((k, molt_run(work.path(), &capped_pkg, n, subnet(1 + i), net).await));
            }
            capped.push(Capped { agents: n, cap_mib, one, runs });
        }
    }

    println!("\nmolt distribution benchmark ({} MiB package, loopback, 2 cores)", size / MIB);
    println!(
        "plain rustls mTLS copy + hash thread + O_DIRECT write + fsync: {:.2} s = {plain_direct_rate:.2} GiB/s \
         (median of 3; through the page cache: {plain_rate:.2} GiB/s)",
        plain_direct[1].as_secs_f64()
    );
    println!(
        "{:<8} {:>10} {:>12} {:>14} {:>14} {:>10} {:>16}",
        "agents", "upload s", "wave s", "per-agent GiB/s", "total GiB/s", "vs plain", "leader peak RSS"
    );
    for r in runs.iter().chain(std::iter::once(&small_run)) {
        let per_agent = gib_s(r.size, r.per_agent_mean);
        let total = gib_s(r.size * r.agents as u64, r.wave);
        println!(
            "{:<8} {:>10.2} {:>12.2} {:>14.2} {:>14.2} {:>9.0}% {:>12} MiB   ({} MiB image)",
            r.agents,
            r.upload.as_secs_f64(),
            r.wave.as_secs_f64(),
            per_agent,
            total,
            100.0 * per_agent / plain_direct_rate,
            r.leader_hwm_kib / 1024,
            r.size / MIB
        );
    }
    let one = &runs[0];
    let one_rate = gib_s(one.size, one.per_agent_mean);
    println!(
        "\none agent: molt {one_rate:.2} GiB/s vs plain {plain_direct_rate:.2} GiB/s = {:.0}% (aim: 90% or more; \
         the plain copy writes with O_DIRECT, as molt's staging does)",
        100.0 * one_rate / plain_direct_rate
    );
    println!(
        "  against the plain copy through the page cache ({plain_rate:.2} GiB/s): {:.0}%",
        100.0 * one_rate / plain_rate
    );
    let upload_rate = gib_s(one.size, one.upload);
    let (own_direct, own_cached) = (gib_s(size, local_direct[1]), gib_s(size, local_med));
    println!(
        "upload: {upload_rate:.2} GiB/s vs the leader's own read + hash + write + fsync {own_direct:.2} GiB/s = {:.0}% \
         (aim: 90% or more; written with O_DIRECT, as the upload does)",
        100.0 * upload_rate / own_direct
    );
    println!(
        "  against the same through the page cache ({own_cached:.2} GiB/s): {:.0}%",
        100.0 * upload_rate / own_cached
    );

    match scp {
        Some(t) => println!(
            "vs scp+sha256sum: {:.2}\u{d7} (scp, sha256sum, sync: {:.2} s; molt's one agent: {:.2} s)",
            t.as_secs_f64() / one.per_agent_mean.as_secs_f64(),
            t.as_secs_f64(),
            one.per_agent_mean.as_secs_f64()
        ),
        None => println!("vs scp+sha256sum: not measured (no /usr/sbin/sshd, or it did not start)"),
    }
    for c in &capped {
        c.report(cap_size_mib);
    }
    println!(
        "leader peak RSS: {} MiB with a {} MiB image, {} MiB with a {} MiB image",
        small_run.leader_hwm_kib / 1024,
        small_run.size / MIB,
        one.leader_hwm_kib / 1024,
        one.size / MIB
    );
}
