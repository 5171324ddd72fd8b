//! The SE phase of an upgrade: SE groups in parallel, the SEs of a group one
//! at a time (all at once when disruptive), each drained before its reboot
//! and put back after it, with every virtual service probed throughout.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{NodeId, session::CommandKind};
use tracing::warn;

use super::{
    super::{LeaderState, cluster::NodeState},
    Next, OpState, POLL, Step, cmd, finish, journal, run_command, run_command_on, set_phase, update,
};

pub(super) async fn service_engines(state: &Arc<LeaderState>) -> Next {
    set_phase(state, "service_engines", 60);
    // After the leader's own reboot the SEs redial one by one: traffic can
    // only be moved between SEs the leader sees, so wait for all of them.
    let all: Vec<NodeId> = journal(state).se_groups.values().flatten().cloned().collect();
    let deadline = Instant::now() + state.settings.reform_timeout;
    while !all.iter().all(|se| state.cluster.node(se).is_some_and(|(_, s)| s == NodeState::Up))
        && Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let prober = state.clone().spawn(crate::leader::traffic::probe_until(
        state.clone(),
        Duration::from_millis(100),
        stop.clone(),
    ));
    let j = journal(state);
    let tasks: Vec<_> = j
        .se_groups
        .keys()
        .filter(|g| !j.suspended.contains_key(*g))
        .map(|g| state.clone().spawn(upgrade_group(state.clone(), g.clone())))
        .collect();
    let groups: Vec<String> = j.se_groups.keys().filter(|g| !j.suspended.contains_key(*g)).cloned().collect();
    for (g, t) in groups.iter().zip(tasks) {
        if let Err(e) = t.await {
            update(state, |j| {
                j.suspended.insert(g.clone(), format!("internal error: {e}"));
            });
        }
    }
    stop.cancel();
    if let Ok(stats) = prober.await {
        record_traffic(state, &stats);
    }
    let j = journal(state);
    if j.suspended.is_empty() {
        let mut notes = vec![];
        if !j.skipped.is_empty() {
            let ids: Vec<String> = j.skipped.iter().map(|s| s.to_string()).collect();
            notes.push(format!("skipped, still on {}: {}", j.from, ids.join(", ")));
        }
        for (g, why) in &j.rolled_back {
            notes.push(format!("SE group {g} rolled back to {} because {why}", j.from));
        }
        for (g, why) in &j.continued {
            notes.push(format!("SE group {g} went on past failed SEs (action_on_error: continue): {why}"));
        }
        let note = notes.join("; ");
        finish(state, OpState::Completed, note, false);
    } else {
        let why: Vec<String> = j.suspended.iter().map(|(g, r)| format!("SE group {g} suspended: {r}")).collect();
        finish(state, OpState::Suspended, why.join("; "), false);
    }
    Some((Step::Done, String::new()))
}

/// Writes what the probes measured into the status.
fn record_traffic(state: &LeaderState, stats: &BTreeMap<String, crate::leader::traffic::ProbeStats>) {
    let groups: BTreeMap<String, String> = state
        .config
        .lock()
        .expect("config lock")
        .virtual_services
        .values()
        .map(|v| (v.name.clone(), v.se_group.clone()))
        .collect();
    let mut b = state.status.lock().expect("status lock");
    for row in &mut b.current.virtual_services {
        let name = row["name"].as_str().unwrap_or_default().to_owned();
        let s = stats.get(&name).cloned().unwrap_or_default();
        row["measured_downtime_ms"] = s.measured_downtime_ms.into();
        row["failed_probes"] = s.failed_probes.into();
        row["probe_rounds"] = s.rounds.into();
        row["down_slots"] = serde_json::json!(s.down_slots);
    }
    for g in &mut b.current.se_groups {
        let name = g["name"].as_str().unwrap_or_default().to_owned();
        let hit: Vec<&String> = stats
            .iter()
            .filter(|(vs, s)| s.measured_downtime_ms > 0 && groups.get(*vs) == Some(&name))
            .map(|(vs, _)| vs)
            .collect();
        g["vs_disrupted"] = serde_json::json!(hit);
    }
    drop(b);
    state.save_status();
}

fn set_group(state: &LeaderState, group: &str, st: &str, done: usize, total: usize) {
    let mut b = state.status.lock().expect("status lock");
    if let Some(g) = b.current.se_groups.iter_mut().find(|g| g["name"] == group) {
        g["state"] = st.into();
        g["progress"] = ((done * 100) / total.max(1)).into();
    }
    let total_groups = b.current.se_groups.len().max(1);
    let sum: u64 = b.current.se_groups.iter().map(|g| g["progress"].as_u64().unwrap_or(0)).sum();
    b.advance((60 + (sum * 40) / (100 * total_groups as u64)).min(99) as u8);
}

/// One group: its SEs one at a time (all at once when disruptive).
/// Returns every SE of `group` to the old version after one failed
/// (`action_on_error: rollback`); the journal already says so. Idempotent:
/// an SE already on the old version is left as it is.
async fn roll_group_back(state: &Arc<LeaderState>, group: &str, ses: &[NodeId], reason: String) {
    set_group(state, group, "rolling_back", 0, ses.len());
    let members: Vec<String> = ses.iter().map(|s| s.to_string()).collect();
    for se in ses {
        if let Err(e) = rollback_se(state, se, &members).await {
            update(state, |j| {
                j.rolling_back.remove(group);
                j.suspended.insert(group.to_owned(), format!("{reason}; then the rollback of {se} failed: {e}"));
            });
            set_group(state, group, "suspended", 0, ses.len());
            state.save_status();
            return;
        }
    }
    update(state, |j| {
        j.rolling_back.remove(group);
        j.rolled_back.insert(group.to_owned(), reason);
    });
    set_group(state, group, "rolled_back", ses.len(), ses.len());
    state.save_status();
}

async fn upgrade_group(state: Arc<LeaderState>, group: String) {
    let j = journal(&state);
    let ses = j.se_groups.get(&group).cloned().unwrap_or_default();
    if let Some(reason) = j.rolling_back.get(&group) {
        // The leader restarted in the middle of this group's rollback: finish it.
        roll_group_back(&state, &group, &ses, reason.clone()).await;
        return;
    }
    if j.rolled_back.contains_key(&group) {
        return;
    }
    // Standbys first (for active-standby), never the SEs skipped by a resume.
    let todo: Vec<NodeId> = crate::leader::traffic::rolling_order(&state, &ses)
        .into_iter()
        .filter(|s| !j.se_done.get(&group).is_some_and(|d| d.contains(s)) && !j.skipped.contains(s))
        .collect();
    let batches: Vec<Vec<NodeId>> = if j.disruptive { vec![todo] } else { todo.into_iter().map(|s| vec![s]).collect() };
    set_group(&state, &group, "in_progress", ses.len() - batches.iter().map(Vec::len).sum::<usize>(), ses.len());
    for batch in batches {
        let members: Vec<String> = ses.iter().map(|s| s.to_string()).collect();
        let tasks: Vec<_> = batch
            .iter()
            .map(|se| state.clone().spawn(upgrade_se(state.clone(), se.clone(), members.clone())))
            .collect();
        let mut failed = vec![];
        for (se, t) in batch.iter().zip(tasks) {
            match t.await {
                Ok(Ok(())) => {
                    let j = update(&state, |j| j.se_done.entry(group.clone()).or_default().push(se.clone()));
                    let done = j.se_done.get(&group).map(Vec::len).unwrap_or(0);
                    set_group(&state, &group, "in_progress", done, ses.len());
                    state.save_status();
                }
                Ok(Err(e)) => failed.push(format!("{se}: {e}")),
                Err(e) => failed.push(format!("{se}: {e}")),
            }
        }
        if !failed.is_empty() {
            let reason = failed.join("; ");
            if j.action_on_error == "continue" {
                warn!(%group, %reason, "SE failed; continuing as action_on_error says");
                // Recorded before going on: the operation ends saying who stayed behind.
                update(&state, |j| {
                    j.skipped.extend(batch.iter().cloned());
                    let why = j.continued.entry(group.clone()).or_default();
                    if !why.is_empty() {
                        why.push_str("; ");
                    }
                    why.push_str(&reason);
                });
                continue;
            }
            if j.action_on_error == "rollback" {
                warn!(%group, %reason, "SE failed; rolling the group back as action_on_error says");
                // Journaled before the first SE moves: a restarted leader rolls back, not forward.
                update(&state, |j| {
                    j.rolling_back.insert(group.clone(), reason.clone());
                });
                roll_group_back(&state, &group, &ses, reason).await;
                return;
            }
            warn!(%group, %reason, "SE group suspended");
            update(&state, |j| {
                j.suspended.insert(group.clone(), reason);
                j.failed.insert(group.clone(), batch.clone());
            });
            let done = journal(&state).se_done.get(&group).map(Vec::len).unwrap_or(0);
            set_group(&state, &group, "suspended", done, ses.len());
            state.save_status();
            return;
        }
    }
    set_group(&state, &group, "completed", ses.len(), ses.len());
    state.save_status();
}

/// One SE: apply, wait for its heartbeat on the new version, commit.
async fn upgrade_se(state: Arc<LeaderState>, se: NodeId, group: Vec<String>) -> Result<(), String> {
    let j = journal(&state);
    if !j.disruptive {
        state.status.lock().expect("status lock").begin(se.as_str(), "drain");
        let drained = crate::leader::traffic::drain(&state, se.as_str(), &group).await;
        state.status.lock().expect("status lock").end(
            se.as_str(),
            drained.is_ok(),
            drained.as_ref().map(|_| "its virtual services moved to the other SEs").unwrap_or_else(|e| e),
        );
        drained?;
    }
    let deadline = Instant::now() + state.settings.reform_timeout;
    state.status.lock().expect("status lock").begin(se.as_str(), "apply");
    let applied = run_command_on(&state, &se, &cmd(&state, &j, &se, CommandKind::Apply(j.image_ref())), deadline).await;
    let result = async {
        // `applied_by`: the boot that installed the image; any later boot is its reboot.
        let (m, applied_by) = applied?;
        let already = m.starts_with("already running");
        {
            let mut b = state.status.lock().expect("status lock");
            b.end(se.as_str(), true, &m);
            b.begin(se.as_str(), "rejoin");
        }
        loop {
            if let Some((Some(hb), NodeState::Up)) = state.cluster.node(&se) {
                let rebooted = already || hb.boot_id != applied_by;
                if rebooted && hb.version == j.to {
                    break;
                }
                if rebooted && hb.version == j.from {
                    return Err(format!(
                        "came back on {}: {} did not start and its boot loader fell back",
                        j.from, j.to
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("did not rejoin on {} within {} s", j.to, state.settings.reform_timeout.as_secs()));
            }
            tokio::time::sleep(POLL).await;
        }
        {
            let mut b = state.status.lock().expect("status lock");
            b.end(se.as_str(), true, &format!("rejoined on {}", j.to));
            b.begin(se.as_str(), "commit");
        }
        let committed = run_command(&state, &se, &cmd(&state, &j, &se, CommandKind::Commit(j.to)), deadline).await?;
        {
            let mut b = state.status.lock().expect("status lock");
            b.end(se.as_str(), true, &committed);
            b.begin(se.as_str(), "restore");
        }
        // Back in service: its placements return (make before break).
        crate::leader::traffic::undrain(&state, se.as_str(), &group).await?;
        Ok(format!("serving its virtual services on {}", j.to))
    }
    .await;
    let mut b = state.status.lock().expect("status lock");
    b.end(se.as_str(), result.is_ok(), result.as_ref().unwrap_or_else(|e| e));
    if result.is_ok()
        && let Some(n) = b.current.nodes.iter_mut().find(|n| n.id == se.as_str())
    {
        n.version = j.to.to_string();
    }
    result.map(|_| ())
}

/// Returns the SE groups the journal names to the old version: each SE that
/// runs the new one is drained, rolled back (reboot) and put back in service,
/// one at a time.
pub(super) async fn rollback_groups(state: &Arc<LeaderState>) -> Next {
    set_phase(state, "rollback_se_groups", 60);
    let j = journal(state);
    let tasks: Vec<_> = j
        .rollback_groups
        .iter()
        .map(|g| {
            let state = state.clone();
            let ses = j.se_groups.get(g).cloned().unwrap_or_default();
            let g = g.clone();
            state.clone().spawn(async move {
                set_group(&state, &g, "rolling_back", 0, ses.len());
                let members: Vec<String> = ses.iter().map(|s| s.to_string()).collect();
                for (i, se) in ses.iter().enumerate() {
                    if let Err(e) = rollback_se(&state, se, &members).await {
                        update(&state, |j| {
                            j.suspended.insert(g.clone(), format!("rollback of {se} failed: {e}"));
                        });
                        set_group(&state, &g, "suspended", i, ses.len());
                        return;
                    }
                    set_group(&state, &g, "rolling_back", i + 1, ses.len());
                }
                set_group(&state, &g, "rolled_back", ses.len(), ses.len());
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let j = journal(state);
    if j.suspended.is_empty() {
        finish(
            state,
            OpState::Completed,
            format!("SE groups {} rolled back to {}", j.rollback_groups.join(", "), j.from),
            false,
        );
    } else {
        let why: Vec<String> = j.suspended.iter().map(|(g, r)| format!("SE group {g}: {r}")).collect();
        finish(state, OpState::Suspended, why.join("; "), false);
    }
    Some((Step::Done, String::new()))
}

async fn rollback_se(state: &Arc<LeaderState>, se: &NodeId, group: &[String]) -> Result<(), String> {
    let j = journal(state);
    let on_new = state.cluster.node(se).and_then(|(hb, _)| hb).is_some_and(|h| h.version == j.to);
    if on_new {
        crate::leader::traffic::drain(state, se.as_str(), group).await?;
        state.status.lock().expect("status lock").begin(se.as_str(), "rollback");
        let deadline = Instant::now() + state.settings.reform_timeout;
        let c = cmd(state, &j, se, CommandKind::Rollback(j.from));
        let result = async {
            let (_, by) = run_command_on(state, se, &c, deadline).await?;
            loop {
                if let Some((Some(hb), NodeState::Up)) = state.cluster.node(se)
                    && hb.boot_id != by
                    && hb.version == j.from
                {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!("did not rejoin on {}", j.from));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        .await;
        let mut b = state.status.lock().expect("status lock");
        b.end(se.as_str(), result.is_ok(), result.as_ref().map(|_| "back on the old version").unwrap_or_else(|e| e));
        if result.is_ok()
            && let Some(n) = b.current.nodes.iter_mut().find(|n| n.id == se.as_str())
        {
            n.version = j.from.to_string();
        }
        drop(b);
        result?;
    }
    crate::leader::traffic::undrain(state, se.as_str(), group).await
}
