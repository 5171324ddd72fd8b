//! Anonymous connection flood (issue 25, finding 5), measured on a local
//! cluster of three controllers and two SEs (real processes, default
//! limits): from 64 source addresses, as many TLS + HTTP/2 connections
//! without a client certificate as the leader takes, each answering pings
//! and sending nothing. Meanwhile, once a second: a read with the admin
//! certificate (molt's client presents it), a configuration write through
//! a follower, and the nodes' states.
//!
//! ```text
//! cargo build --release --workspace && target/release/bench_flood [--per-address 64] [--hold-secs 30]
//! ```
//!
//! Prints the connections the leader held and refused, how long the held
//! ones lived, and how many of the admin's reads, follower writes and node
//! checks succeeded; the cluster is powered down at the end.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper_util::rt::{TokioExecutor, TokioIo};
use integration_tests::bench::{Args, Down, Flag};

use molt::client::{Api, Connection};
use serde_json::json;

const USAGE: &str =
    "Anonymous connection flood on a local cluster of three controllers and two SEs.\nusage: bench_flood [FLAGS]";

/// The flags this bench takes.
const FLAGS: &[Flag] = &[
    Flag { name: "--hold-secs", help: "seconds the flood is held", default: "30" },
    Flag { name: "--per-address", help: "connections opened from each source address", default: "64" },
];

/// The command line (see `Args::global`).
fn args() -> &'static Args {
    Args::global(USAGE, FLAGS)
}

/// Connections open now, and the most at once.
#[derive(Default)]
struct Gauge {
    now: AtomicU64,
    max: AtomicU64,
}

/// One anonymous HTTP/2 connection from `from`, held until the server
/// closes it: its lifetime after the handshake, or `None` when it was never
/// set up (refused before or during the handshake).
async fn idle_connection(ca: &[u8], from: &str, to: std::net::SocketAddr, open: &Gauge) -> Option<Duration> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(format!("{from}:0").parse().ok()?).ok()?;
    let tcp = sock.connect(to).await.ok()?;
    let cfg = common::tls::anonymous_client_config(ca, &[b"h2"]).ok()?;
    let tls =
        tokio_rustls::TlsConnector::from(cfg).connect(rustls::pki_types::ServerName::from(to.ip()), tcp).await.ok()?;
    let opened = Instant::now();
    let (_send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tls))
        .await
        .ok()?;
    let n = open.now.fetch_add(1, Ordering::Relaxed) + 1;
    open.max.fetch_max(n, Ordering::Relaxed);
    let _ = conn.await;
    open.now.fetch_sub(1, Ordering::Relaxed);
    Some(opened.elapsed())
}

#[tokio::main]
async fn main() {
    args();
    common::tls::install_default_provider();
    let per_address: usize = args().text("--per-address").parse().expect("--per-address N");
    let hold: u64 = args().text("--hold-secs").parse().expect("--hold-secs S");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cluster");
    let _down = Down::up(&dir, &["--controllers", "3", "--groups", "g1:active-active:2", "--subnet", "127.5.30"]);
    let api = Api::new(&Connection::resolve(Some(&dir), None, None, None).unwrap()).unwrap();
    let cluster = api.get("/api/cluster").await.unwrap();
    let leader = cluster["leader"].as_str().unwrap().to_owned();
    let nodes: Vec<(String, String)> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_owned(), n["addr"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let addr_of = |id: &str| nodes.iter().find(|(n, _)| n == id).map(|(_, a)| a.clone()).unwrap();
    let follower = nodes.iter().find(|(n, _)| n.starts_with('c') && *n != leader).unwrap().0.clone();
    let to: std::net::SocketAddr = addr_of(&leader).parse().unwrap();
    let ca = Arc::new(std::fs::read(dir.join("pki/ca.pem")).unwrap());

    // The flood: 64 addresses, `per_address` connections each, each opened
    // again as soon as it is closed, for the whole window.
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(hold);
    let open = Arc::new(Gauge::default());
    let (made, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let lifetimes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut flood = tokio::task::JoinSet::new();
    for a in 0..64 {
        for _ in 0..per_address {
            let (ca, from) = (ca.clone(), format!("127.9.{}.{}", a / 200, a % 200 + 1));
            let (open, made, refused, lifetimes) = (open.clone(), made.clone(), refused.clone(), lifetimes.clone());
            flood.spawn(tokio::time::timeout_at(deadline, async move {
                loop {
                    made.fetch_add(1, Ordering::Relaxed);
                    match idle_connection(&ca, &from, to, &open).await {
                        // Closed within a second of its handshake: over a budget.
                        Some(t) if t < Duration::from_secs(1) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(t) => lifetimes.lock().unwrap().push(t),
                        None => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
    }
    // Meanwhile, once a second: the admin, a write through a follower, the nodes.
    let via_follower = api.pinned(addr_of(&follower).parse().unwrap());
    let (mut reads, mut writes, mut checks) = ((0, 0), (0, 0), (0, 0));
    let mut worst_read = Duration::ZERO;
    for i in 0..hold {
        let t = Instant::now();
        let read = api.get("/api/cluster").await;
        worst_read = worst_read.max(t.elapsed());
        reads.1 += 1;
        if let Ok(v) = &read {
            reads.0 += 1;
            checks.1 += 1;
            if v["nodes"].as_array().unwrap().iter().all(|n| n["state"] == "up") {
                checks.0 += 1;
            }
        }
        writes.1 += 1;
        let body = json!({"name": format!("flood-{i}"), "ha_mode": "active-active"});
        if via_follower.post("/api/serviceenginegroup", &body).await.is_ok() {
            writes.0 += 1;
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(t.elapsed())).await;
    }
    while flood.join_next().await.is_some() {}
    let lived = lifetimes.lock().unwrap().clone();
    let max_life = lived.iter().max().copied().unwrap_or_default();
    println!(
        "flood: {} anonymous HTTP/2 connections opened from 64 addresses ({per_address} at a time each) over {:.0} s: at most {} open at once, {} refused at once, {} closed idle after at most {:.1} s",
        made.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        open.max.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        lived.len(),
        max_life.as_secs_f64()
    );
    println!(
        "meanwhile, once a second: admin reads {}/{} (slowest {:.0} ms), writes through follower {follower} {}/{}, all 5 nodes up {}/{}",
        reads.0,
        reads.1,
        worst_read.as_secs_f64() * 1000.0,
        writes.0,
        writes.1,
        checks.0,
        checks.1
    );
}
