//! Virtual service traffic, from the leader's side: keeping every SE's
//! listeners as the placements say, draining an SE before it reboots
//! (make-before-break), and probing every service during the SE phase to
//! measure real downtime.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    NodeId, Role,
    session::{Command, CommandKind, LeaderMessage},
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{LeaderState, cluster::NodeState, placement};

/// SEs by SE group, as the cluster view knows them.
pub fn ses_by_group(state: &LeaderState) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in state.cluster.snapshot() {
        if n.role == Role::ServiceEngine {
            out.entry(n.se_group.clone().unwrap_or_default()).or_default().push(n.id.to_string());
        }
    }
    out
}

fn push(state: &LeaderState, se: &str, services: Vec<common::session::ServiceSpec>) {
    let Ok(id) = se.parse::<NodeId>() else { return };
    let seq = state.place_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let c =
        Command { id: format!("place-{se}-{seq}"), generation: state.generation, kind: CommandKind::Place(services) };
    let _ = state.cluster.send(&id, LeaderMessage::Command(c));
}

/// SEs whose reported services differ from what they should serve.
fn mismatched(state: &LeaderState, only: Option<&[String]>) -> Vec<(String, Vec<common::session::ServiceSpec>)> {
    let desired = {
        let cfg = state.config.lock().expect("config lock");
        placement::serving(&cfg, &state.drained.lock().expect("drained lock"))
    };
    let mut out = vec![];
    for n in state.cluster.snapshot() {
        if n.role != Role::ServiceEngine || only.is_some_and(|o| !o.contains(&n.id.to_string())) {
            continue;
        }
        if n.state != NodeState::Up {
            // Named SEs that are not up cannot have converged: wait for them.
            if only.is_some() {
                out.push((n.id.to_string(), desired.get(n.id.as_str()).cloned().unwrap_or_default()));
            }
            continue;
        }
        let want = desired.get(n.id.as_str()).cloned().unwrap_or_default();
        let mut have = state.cluster.node(&n.id).and_then(|(hb, _)| hb).map(|h| h.serving).unwrap_or_default();
        have.sort();
        let names: Vec<String> = want.iter().map(|s| s.name.clone()).collect();
        if have != names {
            out.push((n.id.to_string(), want));
        }
    }
    out
}

/// Keeps placements computed and every SE serving what they say.
pub fn spawn_placer(state: Arc<LeaderState>) {
    state.clone().spawn(async move {
        let mut last_push: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if !state.read_only() {
                let ses = ses_by_group(&state);
                let next = placement::place(&state.config.lock().expect("config lock"), &ses);
                let changed = state.config.lock().expect("config lock").placements != next;
                if changed {
                    let _ = state.change_config(|c| {
                        c.placements = next;
                        Ok(())
                    });
                }
            }
            for (se, want) in mismatched(&state, None) {
                if last_push.get(&se).is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
                    push(&state, &se, want);
                    last_push.insert(se, Instant::now());
                }
            }
        }
    });
}

/// Pushes the desired services to `ses` and waits until they serve them.
pub async fn converge(state: &LeaderState, ses: &[String], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut pushed = Instant::now() - Duration::from_secs(10);
    loop {
        let left = mismatched(state, Some(ses));
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let names: Vec<String> = left.into_iter().map(|(se, _)| se).collect();
            return Err(format!(
                "{} did not take their virtual services within {} s",
                names.join(", "),
                timeout.as_secs()
            ));
        }
        if pushed.elapsed() > Duration::from_secs(1) {
            for (se, want) in left {
                push(state, &se, want);
            }
            pushed = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changes the drained set and shows it in the status.
fn set_drained(state: &LeaderState, f: impl FnOnce(&mut std::collections::BTreeSet<String>)) {
    let now: Vec<String> = {
        let mut d = state.drained.lock().expect("drained lock");
        f(&mut d);
        d.iter().cloned().collect()
    };
    state.status.lock().expect("status lock").current.drained = now;
}

/// Takes `se` out of service before it reboots: the others of its group
/// take over first (make), then `se` stops (break).
pub async fn drain(state: &LeaderState, se: &str, group: &[String]) -> Result<(), String> {
    // Journaled before anything moves: a restarted leader knows it.
    state
        .update_journal(|j| {
            j.drained.insert(se.to_owned());
        })
        .map_err(|e| format!("cannot write the upgrade journal, so {se} stays in service: {e}"))?;
    set_drained(state, |d| {
        d.insert(se.to_owned());
    });
    let others: Vec<String> = group.iter().filter(|s| *s != se).cloned().collect();
    converge(state, &others, Duration::from_secs(20)).await?;
    converge(state, &[se.to_owned()], Duration::from_secs(20)).await
}

/// Puts `se` back in service after its upgrade: it serves first, then the
/// others let go of what they took over.
pub async fn undrain(state: &LeaderState, se: &str, group: &[String]) -> Result<(), String> {
    set_drained(state, |d| {
        d.remove(se);
    });
    // If this write fails the SE is back in service anyway; the operation's
    // end clears the journal's set too.
    let _ = state.update_journal(|j| {
        j.drained.remove(se);
    });
    converge(state, &[se.to_owned()], Duration::from_secs(20)).await?;
    let others: Vec<String> = group.iter().filter(|s| *s != se).cloned().collect();
    converge(state, &others, Duration::from_secs(20)).await
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
    let cfg = state.config.lock().expect("config lock");
    cfg.virtual_services
        .values()
        .map(|vs| {
            let places = cfg.placements.get(&vs.name).into_iter().flatten();
            (vs.name.clone(), places.filter_map(|se| addrs.get(se)).map(|ip| (*ip, vs.port).into()).collect())
        })
        .collect()
}

/// The SEs of `group` ordered for a rolling upgrade: those active for the
/// fewest services first (for active-standby: the standby first).
pub fn rolling_order(state: &LeaderState, ses: &[NodeId]) -> Vec<NodeId> {
    let cfg = state.config.lock().expect("config lock");
    let active_for =
        |se: &NodeId| cfg.placements.values().filter(|p| p.first().is_some_and(|a| a == se.as_str())).count();
    let mut v = ses.to_vec();
    v.sort_by_key(|se| (active_for(se), se.clone()));
    v
}
