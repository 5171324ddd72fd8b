//! Human-readable views of the leader's answers, read as the API's types
//! ([`molt_api`]).

use std::fmt::Write;

use molt_api::{
    ClusterDoc, UpgradeStatus,
    requests::Plan,
    status::{
        ActionOnError, CheckResult, EventStatus, GroupState, NodeStatus, OpState, Operation, Precheck, Profile, Task,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// How an enum of the API reads on the wire (`in_progress`, `active-active`).
pub fn name(v: &impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// `v` with every control character in its strings shown escaped
/// (`\u{1b}`), so that no value a node or the leader sends can drive the
/// terminal. Strings the API validates (node ids, versions) cannot hold one.
pub fn terminal_safe<T: Serialize + DeserializeOwned + Clone>(v: &T) -> T {
    serde_json::to_value(v).map(|v| escape(&v)).and_then(serde_json::from_value).unwrap_or_else(|_| v.clone())
}

fn escape(v: &Value) -> Value {
    match v {
        Value::String(s) if s.chars().any(char::is_control) => Value::String(
            s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.into() }).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(escape).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), escape(v))).collect()),
        other => other.clone(),
    }
}

/// What `molt rollback segroup NAME...` reports: about the groups it was
/// asked for, whatever state the others are in.
pub fn rollback_verdict(end: &UpgradeStatus, asked: &[String]) -> Result<String, String> {
    let state_of = |g: &str| end.se_groups.iter().find(|x| x.name == g).map(|x| x.state);
    let not_back: Vec<String> = asked
        .iter()
        .filter(|g| state_of(g) != Some(GroupState::RolledBack))
        .map(|g| format!("SE group {g} is {}", state_of(g).map_or("unknown".into(), |s| name(&s))))
        .collect();
    if not_back.is_empty() {
        return Ok(format!("rolled back: SE group {}", asked.join(", SE group ")));
    }
    let reason = Some(&end.reason).filter(|r| !r.is_empty()).map(|r| format!(" ({r})")).unwrap_or_default();
    Err(format!("the rollback did not finish: {}{reason}", not_back.join("; ")))
}
/// Formats a byte count in IEC units (KiB, MiB, GiB).
pub fn bytes(n: u64) -> String {
    common::types::Iec(n).to_string()
}

/// A time (Unix seconds) as RFC 3339 in UTC, to the second:
/// `2026-12-05T13:40:12Z`. The `--json` output keeps the raw seconds.
pub fn time(secs: f64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(secs.floor() as i64)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs} (Unix time)"))
}

/// A duration in seconds as `1h 2m`, `2m 10s` or `45s`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// The time left of a running operation: `about 2m 10s left (ends about
/// 22:41:05 UTC)`, or while paused, that there is no end while held.
pub fn eta(v: &UpgradeStatus) -> Option<String> {
    if let Some(left) = v.eta_seconds {
        let end = v.expected_end.map(|e| format!(" (ends about {})", time(e)));
        return Some(format!("about {} left{}", duration(left), end.unwrap_or_default()));
    }
    (v.state == OpState::Paused).then(|| "no end while paused".to_owned())
}

/// The upgrade profile when it is not the default one (one SE of a group at
/// a time, groups in parallel, every transfer at once, uncapped).
pub fn profile(p: &Profile) -> Option<String> {
    let mut parts = vec![];
    let parallel: Vec<String> =
        p.max_parallel_ses.iter().filter(|(_, k)| **k > 1).map(|(g, k)| format!("{g} {k}")).collect();
    if !parallel.is_empty() {
        parts.push(format!("SEs at once per group: {}", parallel.join(", ")));
    }
    if p.groups_in_series {
        parts.push("SE groups in series".into());
    }
    if p.max_transfers > 0 {
        parts.push(format!("{} transfers at once", p.max_transfers));
    }
    if p.transfer_rate_mib > 0 {
        parts.push(format!("each transfer capped at {} MiB/s", p.transfer_rate_mib));
    }
    (!parts.is_empty()).then(|| format!("profile: {}", parts.join("; ")))
}

/// `molt show cluster`.
pub fn cluster(v: &ClusterDoc) -> String {
    let v = &terminal_safe(v);
    let mut out = String::new();
    let _ = writeln!(out, "cluster {}  leader {}", v.cluster, v.leader.as_deref().unwrap_or("-"));
    let _ = writeln!(
        out,
        "{:<12} {:<11} {:<7} {:<20} {:<9} {:<10} {:<8} STAGED",
        "NODE", "ROLE", "KIND", "ADDRESS", "VERSION", "STATE", "GROUP"
    );
    for n in &v.nodes {
        let staged: Vec<String> =
            n.staged.iter().map(|x| format!("{} ({})", x.version, &x.sha256[..12.min(x.sha256.len())])).collect();
        let transfer = n.transfers.first().map(|t| format!(" receiving {}%", t.received * 100 / t.total.max(1)));
        let _ = writeln!(
            out,
            "{:<12} {:<11} {:<7} {:<20} {:<9} {:<10} {:<8} {}{}",
            n.id.as_str(),
            name(&n.role),
            n.deployment.as_deref().unwrap_or("-"),
            n.addr,
            if n.version.is_empty() { "-" } else { &n.version },
            name(&n.state),
            n.se_group.as_deref().unwrap_or("-"),
            if staged.is_empty() { "-".to_owned() } else { staged.join(", ") },
            transfer.unwrap_or_default()
        );
    }
    out
}

/// An optional enum of the status as it reads (`-` when there is none).
fn or_dash<T: Serialize>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), name)
}

/// `molt show upgrade status`.
pub fn status(v: &UpgradeStatus) -> String {
    let v = &terminal_safe(v);
    let mut out = String::new();
    if v.state == OpState::Idle {
        let _ = writeln!(out, "no upgrade or prestage has run since the leader started");
    } else {
        let _ = writeln!(
            out,
            "{} {}: {}  phase {}  {}%",
            or_dash(&v.operation),
            v.to_version,
            name(&v.state),
            or_dash(&v.phase),
            v.progress
        );
        if let Some(eta) = eta(v) {
            let _ = writeln!(out, "{eta}: {}", v.eta_basis);
        }
        if let Some(p) = v.profile.as_ref().and_then(profile) {
            let _ = writeln!(out, "{p}");
        }
        if let Some(id) = &v.operation_id {
            let started = v.started_at.map(time).unwrap_or_default();
            let _ = writeln!(out, "operation_id {id}  started {started}  (its log lines carry operation_id={id})");
        }
        let _ = writeln!(out, "image {} (sha256 {})", v.image_path, v.image_sha256);
        if let Some(d) = &v.docker_image_path {
            let _ = writeln!(out, "docker image {d} (sha256 {})", v.docker_image_sha256.as_deref().unwrap_or("-"));
        }
        if v.force || v.disruptive {
            let _ = writeln!(out, "force {}  disruptive {}", v.force, v.disruptive);
        }
        if let Some(policy) = v.action_on_error.filter(|p| *p != ActionOnError::Suspend) {
            let _ = writeln!(out, "action_on_error {}", name(&policy));
        }
        if !v.reason.is_empty() {
            let _ = writeln!(out, "reason: {}", v.reason);
        }
        if v.state == OpState::Paused {
            let _ =
                writeln!(out, "paused by the operator: `molt upgrade resume` goes on, `molt upgrade abort` stops it");
        }
        if v.abort_requested {
            let _ = writeln!(out, "aborting (the operator asked): what is in flight finishes, then it rolls back");
        }
        if let Some(g) = &v.pause_after {
            let _ = writeln!(out, "canary: SE group {g} first, then it pauses");
        }
        if !v.se_groups_behind.is_empty() {
            let _ = writeln!(
                out,
                "SE groups on {}: {} (`molt upgrade segroup {}` moves them on)",
                v.from_version,
                v.se_groups_behind.join(", "),
                v.se_groups_behind.join(" ")
            );
        }
        for c in &v.prechecks {
            let _ = writeln!(out, "  check {:<16} {:<7} {}", c.check, name(&c.result), c.message);
        }
        if !v.package_signature.is_empty() {
            let _ = writeln!(out, "package: {}", v.package_signature);
        }
        for g in &v.se_groups {
            let _ = writeln!(
                out,
                "  SE group {:<8} {:<15} {:<12} {}%",
                g.name,
                or_dash(&g.ha_mode),
                name(&g.state),
                g.progress
            );
            if !g.gates.checks.is_empty() {
                let _ = writeln!(out, "    health gates: {}", g.gates.checks.join("; "));
            }
            for r in &g.gates.results {
                let verdict = if r.status == EventStatus::Done { "passed".into() } else { name(&r.status) };
                let _ = writeln!(out, "    gate {:<12} {verdict}  {}", r.se, r.message);
            }
        }
        for vs in &v.virtual_services {
            let measured =
                vs.measured_downtime_ms.map(|ms| format!("{ms} ms down")).unwrap_or_else(|| "not measured yet".into());
            let _ = writeln!(
                out,
                "  virtual service {:<10} {:<22} {}",
                vs.name,
                if vs.predicted_disruption { "predicted: disrupted" } else { "predicted: no impact" },
                measured
            );
        }
        for n in &v.nodes {
            let last = n.events.last();
            let from = n.source.as_ref().map(|f| format!(" (from {f})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<12} {:<11} {:<8} {:<8} {:<9} {}{from}",
                n.id,
                name(&n.role),
                name(&n.state),
                n.version,
                last.map(|e| name(&e.task)).unwrap_or_default(),
                last.map(|e| e.message.as_str()).unwrap_or_default()
            );
        }
    }
    if !v.history.is_empty() {
        let _ = writeln!(out, "history:");
        for h in &v.history {
            let _ = writeln!(
                out,
                "  {}  {:<9} {} -> {}  {}  {}",
                time(h.started_at),
                name(&h.operation),
                h.from_version,
                h.to_version,
                name(&h.state),
                h.reason
            );
        }
    }
    let audit = &v.audit;
    if !audit.is_empty() {
        let _ = writeln!(out, "operator actions (last {} of {}):", audit.len().min(5), audit.len());
        for a in &audit[audit.len().saturating_sub(5)..] {
            let _ = writeln!(
                out,
                "  {}  {} ({})  {}  -> {}{}",
                time(a.at),
                a.who,
                a.role,
                a.action,
                a.status,
                if a.count > 1 { format!(" ({} times in a row)", a.count) } else { String::new() }
            );
            if let Some(d) = &a.body_sha256 {
                let _ = writeln!(out, "      body sha256 {d}");
            }
            if let Some(g) = &a.gates {
                let _ = writeln!(out, "      health gates {g}");
            }
        }
    }
    out
}

/// `upgrade system ... prechecks_only`.
pub fn prechecks(v: &Plan) -> String {
    let v = &terminal_safe(v);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pre-checks for {} → {}{}: {}",
        v.from_version.as_deref().unwrap_or("-"),
        v.to_version,
        if v.disruptive { " (disruptive)" } else { "" },
        if v.ok { "the upgrade can start" } else { "the upgrade would be refused" }
    );
    for c in &v.prechecks {
        let _ = writeln!(out, "  {:<16} {:<7} {}", c.check, name(&c.result), c.message);
    }
    for vs in &v.virtual_services {
        let _ = writeln!(
            out,
            "  virtual service {:<10} {:<12} {}",
            vs.name,
            if vs.predicted_disruption { "disrupted" } else { "no downtime" },
            vs.reason
        );
    }
    if let Some(p) = profile(&v.profile) {
        let _ = writeln!(out, "{p}");
    }
    let h = &v.plan_hash;
    let _ = writeln!(out, "plan_hash {h}: add `plan_hash {h}` to the upgrade to start exactly this plan");
    out
}

/// The pre-checks of a refusal, failed ones then warnings apart (a warning
/// did not refuse anything): the lines `explain` adds to the message.
pub fn refused_checks(checks: &[Precheck]) -> String {
    let of = |result: CheckResult| -> Vec<String> {
        checks.iter().filter(|c| c.result == result).map(|c| format!("  {}: {}", c.check, c.message)).collect()
    };
    let (failed, warnings) = (of(CheckResult::Error), of(CheckResult::Warning));
    let mut text = String::new();
    if !failed.is_empty() {
        text += &format!("\nfailed pre-checks:\n{}", failed.join("\n"));
    }
    if !warnings.is_empty() {
        text += &format!("\nwarnings:\n{}", warnings.join("\n"));
    }
    text
}

/// One text progress bar: `[#######-------------]  35%`.
fn bar(pct: u64) -> String {
    const W: u64 = 30;
    let pct = pct.min(100);
    let full = (pct * W / 100) as usize;
    format!("[{}{}] {pct:>3}%", "#".repeat(full), "-".repeat(W as usize - full))
}

fn task_done(n: &NodeStatus, task: Task) -> bool {
    n.events.iter().any(|e| e.task == task && e.status == EventStatus::Done)
}

/// `molt show upgrade status --watch`: a progress bar per phase (overall,
/// distribution, controllers, each SE group), then the usual status.
pub fn phase_bars(v: &UpgradeStatus) -> String {
    let v = &terminal_safe(v);
    let mut out = String::new();
    if v.state == OpState::Idle {
        return out;
    }
    let row = |out: &mut String, name: &str, pct: u64, note: String| {
        let _ = writeln!(out, "  {name:<16} {}  {note}", bar(pct));
    };
    let _ = writeln!(
        out,
        "{} {} → {}  {}  phase {}",
        or_dash(&v.operation),
        v.from_version,
        v.to_version,
        name(&v.state),
        or_dash(&v.phase)
    );
    row(&mut out, "overall", u64::from(v.progress), eta(v).unwrap_or_default());
    let size = v.image_size;
    let (mut got, mut staged) = (0u64, 0usize);
    for n in &v.nodes {
        if task_done(n, Task::Stage) {
            got += size;
            staged += 1;
        } else {
            got += n.received.min(size);
        }
    }
    let total = size * v.nodes.len() as u64;
    let pct = (got * 100).checked_div(total).unwrap_or(0);
    row(&mut out, "distribution", pct, format!("{staged}/{} nodes staged, {} moved", v.nodes.len(), bytes(got)));
    if v.operation == Some(Operation::Upgrade) {
        let ctrls: Vec<&NodeStatus> = v.nodes.iter().filter(|n| n.role == common::Role::Controller).collect();
        let committed = ctrls.iter().filter(|n| task_done(n, Task::Commit)).count();
        let applied = ctrls.iter().filter(|n| task_done(n, Task::Apply)).count();
        let pct = if ctrls.is_empty() { 0 } else { ((applied + committed) * 50 / ctrls.len()) as u64 };
        row(&mut out, "controllers", pct, format!("{applied}/{} installed, {committed} committed", ctrls.len()));
    }
    if matches!(v.operation, Some(Operation::Upgrade | Operation::SeGroupRollback)) {
        for g in &v.se_groups {
            let label = format!("SE group {}", g.name);
            let note = format!("{} ({}, {} SEs)", name(&g.state), or_dash(&g.ha_mode), g.ses.len());
            row(&mut out, &label, u64::from(g.progress), note);
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A status as the leader would send it (fields left out take their defaults).
    fn st(v: Value) -> UpgradeStatus {
        serde_json::from_value(v).expect("a status")
    }

    fn ev(task: &str, status: &str) -> Value {
        json!({"task": task, "status": status, "start": 0.0, "end": null, "message": ""})
    }

    #[test]
    fn phase_bars_show_each_phase() {
        let v = json!({
            "state": "in_progress", "operation": "upgrade", "phase": "service_engines", "progress": 60,
            "from_version": "1.0.0", "to_version": "2.0.0", "image_size": 1000,
            "eta_seconds": 130, "expected_end": 86_400.0 * 3.0 + 3_725.0,
            "nodes": [
                {"id": "c1", "role": "controller", "state": "done", "version": "2.0.0", "received": 1000, "events": [
                    ev("stage", "done"), ev("apply", "done"), ev("commit", "done")]},
                {"id": "se1", "role": "se", "state": "running", "version": "1.0.0", "received": 500,
                 "events": [ev("stage", "running")]}
            ],
            "se_groups": [{"name": "g1", "ha_mode": "active-active", "state": "in_progress", "progress": 50,
                           "ses": ["se1"], "gates": {"checks": [], "results": []}, "reason": "", "vs_disrupted": []}]
        });
        let text = phase_bars(&st(v));
        let line = |name: &str| text.lines().find(|l| l.trim_start().starts_with(name)).unwrap().to_owned();
        assert!(line("overall").contains(&format!("[{}{}]  60%", "#".repeat(18), "-".repeat(12))), "{text}");
        assert!(line("overall").ends_with("about 2m 10s left (ends about 1970-01-04T01:02:05Z)"), "{text}");
        assert!(line("distribution").contains(" 75%") && line("distribution").contains("1/2 nodes staged"), "{text}");
        assert!(line("controllers").contains("100%") && line("controllers").contains("1/1 installed"), "{text}");
        assert!(line("SE group g1").contains(" 50%") && line("SE group g1").contains("active-active, 1 SEs"), "{text}");
        assert!(text.starts_with("upgrade 1.0.0 → 2.0.0  in_progress  phase service_engines"), "{text}");
        assert_eq!(phase_bars(&st(json!({"state": "idle"}))), "");
    }

    /// Issue 27: audit and history times were raw epoch seconds.
    #[test]
    fn times_read_as_rfc_3339_in_utc_and_sizes_in_iec_units() {
        assert_eq!(time(1_796_447_103.0), "2026-12-05T05:05:03Z");
        assert_eq!(time(1_796_447_103.9), "2026-12-05T05:05:03Z");
        assert_eq!(bytes(198_049_490), "188.9 MiB");
        let v = json!({
            "state": "completed", "operation": "upgrade", "phase": "done", "progress": 100,
            "audit": [{"at": 1_796_447_103.25, "who": "ops", "role": "admin", "action": "POST /api/cluster/upgrade", "status": 202}],
            "history": [{"operation": "upgrade", "from_version": "1.0.0", "to_version": "2.0.0", "state": "completed",
                         "started_at": 1_796_447_000.0, "ended_at": null, "reason": ""}],
        });
        let text = status(&st(v));
        assert!(text.contains("  2026-12-05T05:05:03Z  ops (admin)  POST /api/cluster/upgrade  -> 202"), "{text}");
        assert!(text.contains("  2026-12-05T05:03:20Z  upgrade   1.0.0 -> 2.0.0  completed"), "{text}");
    }

    #[test]
    fn the_profile_is_shown_only_where_it_is_not_the_default() {
        let default = json!({"max_parallel_ses": {"g1": 1}, "groups_in_series": false, "max_transfers": 0, "transfer_rate_mib": 0});
        assert_eq!(profile(&serde_json::from_value(default).unwrap()), None);
        let p = json!({"max_parallel_ses": {"g1": 2, "g2": 1}, "groups_in_series": true, "max_transfers": 3, "transfer_rate_mib": 50});
        assert_eq!(
            profile(&serde_json::from_value(p).unwrap()).unwrap(),
            "profile: SEs at once per group: g1 2; SE groups in series; 3 transfers at once; each transfer capped at 50 MiB/s"
        );
        assert_eq!(eta(&st(json!({"state": "paused"}))).unwrap(), "no end while paused");
        assert_eq!(duration(3_725), "1h 02m");
    }

    #[test]
    fn control_characters_from_the_cluster_are_shown_escaped() {
        let v = serde_json::json!({"cluster": "c", "leader": "c1", "generation": 1, "controllers": [], "nodes": [
            {"id": "se-1", "role": "se", "addr": "1.2.3.4:8443\u{1b}[2J\u{1b}]0;owned\u{7}", "version": "1.0.0",
             "previous_version": null, "state": "up", "se_group": "g1\u{1b}[31m", "deployment": null,
             "disk_free_bytes": null, "staged": [], "transfers": [], "heartbeat_age_ms": null, "boot_id": null}
        ]});
        let text = cluster(&serde_json::from_value(v).unwrap());
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("\\u{1b}[2J"), "{text}");
    }

    #[test]
    fn a_rollback_is_judged_by_the_groups_asked_for() {
        let group = |name: &str, state: &str| {
            json!({"name": name, "state": state, "progress": 0, "ses": [], "gates": {"checks": [], "results": []},
                   "reason": "", "vs_disrupted": []})
        };
        let end = st(json!({"state": "suspended", "reason": "SE group g2: g2-se1 did not rejoin",
            "se_groups": [group("g1", "rolled_back"), group("g2", "suspended")]}));
        let ok = rollback_verdict(&end, &["g1".into()]).unwrap();
        assert_eq!(ok, "rolled back: SE group g1");
        let err = rollback_verdict(&end, &["g1".into(), "g2".into()]).unwrap_err();
        assert!(err.contains("SE group g2 is suspended") && !err.contains("g1 is"), "{err}");
    }
}
