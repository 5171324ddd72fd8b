//! Virtual service traffic, from the leader's side: probing every service
//! during the SE phase to measure real downtime. (What each SE serves is the
//! driver's placer: [`coordinator::driver`].)

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::LeaderState;

/// Probe results of one virtual service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeStats {
    /// Time during which no placement answered.
    pub measured_downtime_ms: u64,
    /// Probes (one per placement per round) that failed.
    pub failed_probes: u64,
    /// Rounds probed.
    pub rounds: u64,
    /// The first down slots: when, and what each placement answered.
    pub down_slots: Vec<String>,
}

/// One probe round: when it started, and per service each placement's outcome.
type Round = (f64, Vec<(String, Vec<(std::net::SocketAddr, Probe)>)>);

/// How one probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Ok,
    Refused,
    Timeout,
    Bad,
}

async fn probe(addr: std::net::SocketAddr) -> Probe {
    let attempt = async {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return Probe::Refused };
        if s.write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n").await.is_err() {
            return Probe::Bad;
        }
        let mut buf = [0u8; 12];
        match s.read_exact(&mut buf).await {
            Ok(_) if &buf[9..12] == b"200" => Probe::Ok,
            _ => Probe::Bad,
        }
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await.unwrap_or(Probe::Timeout)
}

/// Probes every virtual service on every SE it is placed on, every
/// `interval`, until `stop`; the stats per service so far are in `stats`.
///
/// Rounds start at a fixed cadence whatever their probes take (a probe may
/// wait up to a second on an SE that is going down), and each round is one
/// time slot: a service is down for a slot when no placement answered.
pub async fn probe_until(
    state: Arc<LeaderState>,
    interval: Duration,
    stop: CancellationToken,
    stats: Arc<Mutex<BTreeMap<String, ProbeStats>>>,
) {
    let mut rounds = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let slot_ms = interval.as_millis() as u64;
    let record = |(at, round): Round| {
        let mut stats = stats.lock().expect("probe stats lock");
        for (name, results) in round {
            let s = stats.entry(name.clone()).or_default();
            s.rounds += 1;
            s.failed_probes += results.iter().filter(|(_, p)| *p != Probe::Ok).count() as u64;
            if !results.iter().any(|(_, p)| *p == Probe::Ok) {
                if s.measured_downtime_ms == 0 {
                    warn!(service = %name, "virtual service not answering");
                }
                s.measured_downtime_ms += slot_ms;
                if s.down_slots.len() < 10 {
                    let detail: Vec<String> = results.iter().map(|(a, p)| format!("{a} {p:?}")).collect();
                    s.down_slots.push(format!("{at:.3}: {}", detail.join(", ")));
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(Ok(round)) = rounds.join_next(), if !rounds.is_empty() => record(round),
            _ = tick.tick() => {
                let targets = probe_targets(&state);
                let at = super::status::now();
                rounds.spawn(async move {
                    let probes = targets.into_iter().map(|(name, addrs)| async move {
                        let results = futures_util::future::join_all(addrs.iter().map(|a| probe(*a))).await;
                        (name, addrs.into_iter().zip(results).collect::<Vec<_>>())
                    });
                    (at, futures_util::future::join_all(probes).await)
                });
            }
        }
    }
    info!(services = stats.lock().expect("probe stats lock").len(), "probing stopped");
}

/// Every virtual service with the addresses of the SEs it is placed on.
fn probe_targets(state: &LeaderState) -> Vec<(String, Vec<std::net::SocketAddr>)> {
    let addrs: BTreeMap<String, std::net::IpAddr> = state
        .cluster
        .snapshot()
        .into_iter()
        .filter_map(|n| n.addr.parse::<std::net::SocketAddr>().ok().map(|a| (n.id.to_string(), a.ip())))
        .collect();
    let cfg = state.config();
    cfg.virtual_services
        .values()
        .map(|vs| {
            let places = cfg.placements.get(&vs.name).into_iter().flatten();
            (vs.name.clone(), places.filter_map(|se| addrs.get(se)).map(|ip| (*ip, vs.port).into()).collect())
        })
        .collect()
}
