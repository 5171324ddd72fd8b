//! Virtual service traffic, from the leader's side: keeping every SE's
//! listeners as the coordinator says (an SE being upgraded is drained
//! make-before-break), and probing every service during the SE phase to
//! measure real downtime.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    NodeId,
    session::{Command, CommandKind, LeaderMessage},
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use coordinator::core;

use super::{LeaderState, placement};

/// Keeps placements computed (when nothing runs) and every SE serving what
/// the coordinator says, make-before-break ([`coordinator::core::placements_to_push`]):
/// a service is added at once, taken off an SE only once another serves it.
pub fn spawn_placer(state: Arc<LeaderState>) {
    state.clone().spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let ses = state.cluster.ses_by_group();
            if !state.read_only() {
                let next = placement::place(&state.config(), &ses);
                let changed = state.config().placements != next;
                if changed {
                    let _gate = state.operation_gate.lock().await;
                    if !state.read_only() {
                        let _ = state
                            .change_config(|c| {
                                c.placements = next;
                                Ok(())
                            })
                            .await;
                    }
                }
            }
            let se_ids: Vec<NodeId> = ses.into_values().flatten().filter_map(|id| id.parse().ok()).collect();
            let obs = super::driver::observed(&state);
            let cfg = state.config().clone();
            let journal = state.journal();
            let mut confirmed = None;
            for (se, want) in core::placements_to_push(&cfg, journal.as_ref(), &se_ids, &obs) {
                let names: Vec<String> = want.iter().map(|w| w.name.clone()).collect();
                let recent = state
                    .placing
                    .lock()
                    .expect("placing lock")
                    .get(&se)
                    .is_some_and(|(n, t, _)| *n == names && t.elapsed() < Duration::from_secs(1));
                if recent {
                    continue;
                }
                // Pushed only while a majority answers this leader (a leader
                // cut off from the others commands nothing).
                if confirmed.is_none() {
                    confirmed = Some(state.may_act().await);
                }
                if confirmed == Some(false) {
                    break;
                }
                let seq = state.place_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = format!("place-{se}-{}-{seq}", state.generation());
                let c = Command { id: id.clone(), generation: state.generation(), kind: CommandKind::Place(want) };
                if state.cluster.send(&se, LeaderMessage::Command(c)).is_ok() {
                    state.placing.lock().expect("placing lock").insert(se, (names, Instant::now(), id));
                }
            }
        }
    });
}

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
/// `interval`, until `stop`; returns the stats per service.
///
/// Rounds start at a fixed cadence whatever their probes take (a probe may
/// wait up to a second on an SE that is going down), and each round is one
/// time slot: a service is down for a slot when no placement answered.
pub async fn probe_until(
    state: Arc<LeaderState>,
    interval: Duration,
    stop: CancellationToken,
) -> BTreeMap<String, ProbeStats> {
    let mut stats: BTreeMap<String, ProbeStats> = BTreeMap::new();
    let mut rounds = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let slot_ms = interval.as_millis() as u64;
    let record = |stats: &mut BTreeMap<String, ProbeStats>, (at, round): Round| {
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
            Some(Ok(round)) = rounds.join_next(), if !rounds.is_empty() => record(&mut stats, round),
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
    while let Some(Ok(round)) = rounds.join_next().await {
        record(&mut stats, round);
    }
    info!(services = stats.len(), "probing stopped");
    stats
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
