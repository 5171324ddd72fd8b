//! Human-readable views of the leader's JSON answers.

use std::fmt::Write;

use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `v` with every control character in its strings shown escaped (`\u{1b}`),
/// so that no value a node or the leader sends can drive the terminal.
pub fn terminal_safe(v: &Value) -> Value {
    match v {
        Value::String(s) if s.chars().any(char::is_control) => Value::String(
            s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.into() }).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(terminal_safe).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), terminal_safe(v))).collect()),
        other => other.clone(),
    }
}

/// What `molt rollback segroup NAME...` reports: about the groups it was
/// asked for, whatever state the others are in.
pub fn rollback_verdict(end: &Value, asked: &[String]) -> Result<String, String> {
    let state_of = |g: &str| {
        end["se_groups"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == g))
            .and_then(|x| x["state"].as_str())
            .unwrap_or("unknown")
            .to_owned()
    };
    let not_back: Vec<String> = asked
        .iter()
        .filter(|g| state_of(g) != "rolled_back")
        .map(|g| format!("SE group {g} is {}", state_of(g)))
        .collect();
    if not_back.is_empty() {
        return Ok(format!("rolled back: SE group {}", asked.join(", SE group ")));
    }
    let reason = end["reason"].as_str().filter(|r| !r.is_empty()).map(|r| format!(" ({r})")).unwrap_or_default();
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
pub fn eta(v: &Value) -> Option<String> {
    if let Some(left) = v["eta_seconds"].as_u64() {
        let end = v["expected_end"].as_f64().map(|e| format!(" (ends about {})", time(e)));
        return Some(format!("about {} left{}", duration(left), end.unwrap_or_default()));
    }
    (v["state"] == "paused").then(|| "no end while paused".to_owned())
}

/// The upgrade profile when it is not the default one (one SE of a group at
/// a time, groups in parallel, every transfer at once, uncapped).
pub fn profile(p: &Value) -> Option<String> {
    let mut parts = vec![];
    let parallel: Vec<String> = p["max_parallel_ses"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, k)| k.as_u64().unwrap_or(1) > 1)
        .map(|(g, k)| format!("{g} {k}"))
        .collect();
    if !parallel.is_empty() {
        parts.push(format!("SEs at once per group: {}", parallel.join(", ")));
    }
    if p["groups_in_series"] == true {
        parts.push("SE groups in series".into());
    }
    if let Some(k) = p["max_transfers"].as_u64().filter(|k| *k > 0) {
        parts.push(format!("{k} transfers at once"));
    }
    if let Some(r) = p["transfer_rate_mib"].as_u64().filter(|r| *r > 0) {
        parts.push(format!("each transfer capped at {r} MiB/s"));
    }
    (!parts.is_empty()).then(|| format!("profile: {}", parts.join("; ")))
}

/// `molt show cluster`.
pub fn cluster(v: &Value) -> String {
    let v = &terminal_safe(v);
    let mut out = String::new();
    let _ = writeln!(out, "cluster {}  leader {}", s(&v["cluster"]), s(&v["leader"]));
    let _ = writeln!(
        out,
        "{:<12} {:<11} {:<7} {:<20} {:<9} {:<10} {:<8} STAGED",
        "NODE", "ROLE", "KIND", "ADDRESS", "VERSION", "STATE", "GROUP"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let staged: Vec<String> = n["staged"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| format!("{} ({})", s(&x["version"]), &s(&x["sha256"])[..12.min(s(&x["sha256"]).len())]))
            .collect();
        let transfer = n["transfers"].as_array().and_then(|t| t.first()).map(|t| {
            let (r, total) = (t["received"].as_u64().unwrap_or(0), t["total"].as_u64().unwrap_or(1).max(1));
            format!(" receiving {}%", r * 100 / total)
        });
        let _ = writeln!(
            out,
            "{:<12} {:<11} {:<7} {:<20} {:<9} {:<10} {:<8} {}{}",
            s(&n["id"]),
            s(&n["role"]),
            n["deployment"].as_str().unwrap_or("-"),
            s(&n["addr"]),
            if n["version"].as_str().unwrap_or("").is_empty() { "-" } else { s(&n["version"]) },
            s(&n["state"]),
            n["se_group"].as_str().unwrap_or("-"),
            if staged.is_empty() { "-".to_owned() } else { staged.join(", ") },
            transfer.unwrap_or_default()
        );
    }
    out
}

/// `molt show upgrade status`.
pub fn status(v: &Value) -> String {
    let v = &terminal_safe(v);
    let mut out = String::new();
    let state = s(&v["state"]);
    if state == "idle" {
        let _ = writeln!(out, "no upgrade or prestage has run since the leader started");
    } else {
        let _ = writeln!(
            out,
            "{} {}: {}  phase {}  {}%",
            s(&v["operation"]),
            s(&v["to_version"]),
            state,
            s(&v["phase"]),
            v["progress"].as_u64().unwrap_or(0)
        );
        if let Some(eta) = eta(v) {
            let _ = writeln!(out, "{eta}: {}", s(&v["eta_basis"]));
        }
        if let Some(p) = profile(&v["profile"]) {
            let _ = writeln!(out, "{p}");
        }
        if let Some(id) = v["operation_id"].as_str() {
            let started = v["started_at"].as_f64().map(time).unwrap_or_default();
            let _ = writeln!(out, "operation_id {id}  started {started}  (its log lines carry operation_id={id})");
        }
        let _ = writeln!(out, "image {} (sha256 {})", s(&v["image_path"]), s(&v["image_sha256"]));
        if v["docker_image_path"].is_string() {
            let _ =
                writeln!(out, "docker image {} (sha256 {})", s(&v["docker_image_path"]), s(&v["docker_image_sha256"]));
        }
        if v["force"] == true || v["disruptive"] == true {
            let _ = writeln!(out, "force {}  disruptive {}", v["force"], v["disruptive"]);
        }
        if let Some(policy) = v["action_on_error"].as_str().filter(|p| *p != "suspend") {
            let _ = writeln!(out, "action_on_error {policy}");
        }
        if let Some(r) = v["reason"].as_str().filter(|r| !r.is_empty()) {
            let _ = writeln!(out, "reason: {r}");
        }
        if state == "paused" {
            let _ =
                writeln!(out, "paused by the operator: `molt upgrade resume` goes on, `molt upgrade abort` stops it");
        }
        if v["abort_requested"] == true {
            let _ = writeln!(out, "aborting (the operator asked): what is in flight finishes, then it rolls back");
        }
        if let Some(g) = v["pause_after"].as_str() {
            let _ = writeln!(out, "canary: SE group {g} first, then it pauses");
        }
        let behind: Vec<&str> =
            v["se_groups_behind"].as_array().into_iter().flatten().filter_map(|g| g.as_str()).collect();
        if !behind.is_empty() {
            let _ = writeln!(
                out,
                "SE groups on {}: {} (`molt upgrade segroup {}` moves them on)",
                s(&v["from_version"]),
                behind.join(", "),
                behind.join(" ")
            );
        }
        for c in v["prechecks"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  check {:<16} {:<7} {}", s(&c["check"]), s(&c["result"]), s(&c["message"]));
        }
        if let Some(sig) = v["package_signature"].as_str().filter(|s| !s.is_empty()) {
            let _ = writeln!(out, "package: {sig}");
        }
        for g in v["se_groups"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  SE group {:<8} {:<15} {:<12} {}%",
                s(&g["name"]),
                s(&g["ha_mode"]),
                s(&g["state"]),
                g["progress"]
            );
            let checks: Vec<&str> = g["gates"]["checks"].as_array().into_iter().flatten().map(s).collect();
            if !checks.is_empty() {
                let _ = writeln!(out, "    health gates: {}", checks.join("; "));
            }
            for r in g["gates"]["results"].as_array().into_iter().flatten() {
                let verdict = if r["status"] == "done" { "passed" } else { s(&r["status"]) };
                let _ = writeln!(out, "    gate {:<12} {verdict}  {}", s(&r["se"]), s(&r["message"]));
            }
        }
        for vs in v["virtual_services"].as_array().into_iter().flatten() {
            let measured = vs["measured_downtime_ms"]
                .as_u64()
                .map(|ms| format!("{ms} ms down"))
                .unwrap_or_else(|| "not measured yet".into());
            let _ = writeln!(
                out,
                "  virtual service {:<10} {:<22} {}",
                s(&vs["name"]),
                if vs["predicted_disruption"] == true { "predicted: disrupted" } else { "predicted: no impact" },
                measured
            );
        }
        for n in v["nodes"].as_array().into_iter().flatten() {
            let last = n["events"].as_array().and_then(|e| e.last());
            let from = n["source"].as_str().map(|f| format!(" (from {f})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<12} {:<11} {:<8} {:<8} {:<9} {}{from}",
                s(&n["id"]),
                s(&n["role"]),
                s(&n["state"]),
                s(&n["version"]),
                last.map(|e| s(&e["task"]).to_owned()).unwrap_or_default(),
                last.map(|e| s(&e["message"]).to_owned()).unwrap_or_default()
            );
        }
    }
    let history = v["history"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !history.is_empty() {
        let _ = writeln!(out, "history:");
        for h in history {
            let _ = writeln!(
                out,
                "  {}  {:<9} {} -> {}  {}  {}",
                time(h["started_at"].as_f64().unwrap_or(0.0)),
                s(&h["operation"]),
                s(&h["from_version"]),
                s(&h["to_version"]),
                s(&h["state"]),
                s(&h["reason"])
            );
        }
    }
    let audit = v["audit"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !audit.is_empty() {
        let _ = writeln!(out, "operator actions (last {} of {}):", audit.len().min(5), audit.len());
        for a in &audit[audit.len().saturating_sub(5)..] {
            let _ = writeln!(
                out,
                "  {}  {} ({})  {}  -> {}{}",
                time(a["at"].as_f64().unwrap_or(0.0)),
                s(&a["who"]),
                s(&a["role"]),
                s(&a["action"]),
                a["status"],
                match a["count"].as_u64() {
                    Some(n) if n > 1 => format!(" ({n} times in a row)"),
                    _ => String::new(),
                }
            );
            if let Some(d) = a["body_sha256"].as_str() {
                let _ = writeln!(out, "      body sha256 {d}");
            }
            if let Some(g) = a["gates"].as_str() {
                let _ = writeln!(out, "      health gates {g}");
            }
        }
    }
    out
}

/// `upgrade system ... prechecks_only`.
pub fn prechecks(v: &Value) -> String {
    let v = &terminal_safe(v);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pre-checks for {} → {}{}: {}",
        s(&v["from_version"]),
        s(&v["to_version"]),
        if v["disruptive"] == true { " (disruptive)" } else { "" },
        if v["ok"] == true { "the upgrade can start" } else { "the upgrade would be refused" }
    );
    for c in v["prechecks"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {:<16} {:<7} {}", s(&c["check"]), s(&c["result"]), s(&c["message"]));
    }
    for vs in v["virtual_services"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  virtual service {:<10} {:<12} {}",
            s(&vs["name"]),
            if vs["predicted_disruption"] == true { "disrupted" } else { "no downtime" },
            s(&vs["reason"])
        );
    }
    if let Some(p) = profile(&v["profile"]) {
        let _ = writeln!(out, "{p}");
    }
    if let Some(h) = v["plan_hash"].as_str() {
        let _ = writeln!(out, "plan_hash {h}: add `plan_hash {h}` to the upgrade to start exactly this plan");
    }
    out
}

/// One text progress bar: `[#######-------------]  35%`.
fn bar(pct: u64) -> String {
    const W: u64 = 30;
    let pct = pct.min(100);
    let full = (pct * W / 100) as usize;
    format!("[{}{}] {pct:>3}%", "#".repeat(full), "-".repeat(W as usize - full))
}

fn task_done(n: &Value, task: &str) -> bool {
    n["events"].as_array().into_iter().flatten().any(|e| e["task"] == task && e["status"] == "done")
}

/// `molt show upgrade status --watch`: a progress bar per phase (overall,
/// distribution, controllers, each SE group), then the usual status.
pub fn phase_bars(v: &Value) -> String {
    let v = &terminal_safe(v);
    let mut out = String::new();
    if s(&v["state"]) == "idle" {
        return out;
    }
    let row = |out: &mut String, name: &str, pct: u64, note: String| {
        let _ = writeln!(out, "  {name:<16} {}  {note}", bar(pct));
    };
    let _ = writeln!(
        out,
        "{} {} → {}  {}  phase {}",
        s(&v["operation"]),
        s(&v["from_version"]),
        s(&v["to_version"]),
        s(&v["state"]),
        s(&v["phase"])
    );
    row(&mut out, "overall", v["progress"].as_u64().unwrap_or(0), eta(v).unwrap_or_default());
    let nodes: Vec<&Value> = v["nodes"].as_array().into_iter().flatten().collect();
    let size = v["image_size"].as_u64().unwrap_or(0);
    let (mut got, mut staged) = (0u64, 0usize);
    for n in &nodes {
        if task_done(n, "stage") {
            got += size;
            staged += 1;
        } else {
            got += n["received"].as_u64().unwrap_or(0).min(size);
        }
    }
    let total = size * nodes.len() as u64;
    let pct = (got * 100).checked_div(total).unwrap_or(0);
    row(&mut out, "distribution", pct, format!("{staged}/{} nodes staged, {} moved", nodes.len(), bytes(got)));
    if v["operation"] == "upgrade" {
        let ctrls: Vec<&&Value> = nodes.iter().filter(|n| n["role"] == "controller").collect();
        let committed = ctrls.iter().filter(|n| task_done(n, "commit")).count();
        let applied = ctrls.iter().filter(|n| task_done(n, "apply")).count();
        let pct = if ctrls.is_empty() { 0 } else { ((applied + committed) * 50 / ctrls.len()) as u64 };
        row(&mut out, "controllers", pct, format!("{applied}/{} installed, {committed} committed", ctrls.len()));
    }
    if v["operation"] == "upgrade" || v["operation"] == "se_group_rollback" {
        for g in v["se_groups"].as_array().into_iter().flatten() {
            let name = format!("SE group {}", s(&g["name"]));
            let ses = g["ses"].as_array().map_or(0, Vec::len);
            let note = format!("{} ({}, {ses} SEs)", s(&g["state"]), s(&g["ha_mode"]));
            row(&mut out, &name, g["progress"].as_u64().unwrap_or(0), note);
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn phase_bars_show_each_phase() {
        let v = json!({
            "state": "in_progress", "operation": "upgrade", "phase": "service_engines", "progress": 60,
            "from_version": "1.0.0", "to_version": "2.0.0", "image_size": 1000,
            "eta_seconds": 130, "expected_end": 86_400.0 * 3.0 + 3_725.0,
            "nodes": [
                {"id": "c1", "role": "controller", "received": 1000, "events": [
                    {"task": "stage", "status": "done"}, {"task": "apply", "status": "done"},
                    {"task": "commit", "status": "done"}]},
                {"id": "se1", "role": "se", "received": 500, "events": [{"task": "stage", "status": "running"}]}
            ],
            "se_groups": [{"name": "g1", "ha_mode": "active-active", "state": "in_progress", "progress": 50, "ses": ["se1"]}]
        });
        let text = phase_bars(&v);
        let line = |name: &str| text.lines().find(|l| l.trim_start().starts_with(name)).unwrap().to_owned();
        assert!(line("overall").contains(&format!("[{}{}]  60%", "#".repeat(18), "-".repeat(12))), "{text}");
        assert!(line("overall").ends_with("about 2m 10s left (ends about 1970-01-04T01:02:05Z)"), "{text}");
        assert!(line("distribution").contains(" 75%") && line("distribution").contains("1/2 nodes staged"), "{text}");
        assert!(line("controllers").contains("100%") && line("controllers").contains("1/1 installed"), "{text}");
        assert!(line("SE group g1").contains(" 50%") && line("SE group g1").contains("active-active, 1 SEs"), "{text}");
        assert!(text.starts_with("upgrade 1.0.0 → 2.0.0  in_progress  phase service_engines"), "{text}");
        assert_eq!(phase_bars(&json!({"state": "idle"})), "");
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
                         "started_at": 1_796_447_000.0, "reason": ""}],
        });
        let text = status(&v);
        assert!(text.contains("  2026-12-05T05:05:03Z  ops (admin)  POST /api/cluster/upgrade  -> 202"), "{text}");
        assert!(text.contains("  2026-12-05T05:03:20Z  upgrade   1.0.0 -> 2.0.0  completed"), "{text}");
    }

    #[test]
    fn the_profile_is_shown_only_where_it_is_not_the_default() {
        let default = json!({"max_parallel_ses": {"g1": 1}, "groups_in_series": false, "max_transfers": 0, "transfer_rate_mib": 0});
        assert_eq!(profile(&default), None);
        let p = json!({"max_parallel_ses": {"g1": 2, "g2": 1}, "groups_in_series": true, "max_transfers": 3, "transfer_rate_mib": 50});
        assert_eq!(
            profile(&p).unwrap(),
            "profile: SEs at once per group: g1 2; SE groups in series; 3 transfers at once; each transfer capped at 50 MiB/s"
        );
        assert_eq!(eta(&json!({"state": "paused"})).unwrap(), "no end while paused");
        assert_eq!(duration(3_725), "1h 02m");
    }

    #[test]
    fn control_characters_from_the_cluster_are_shown_escaped() {
        let v = serde_json::json!({"cluster": "c", "leader": "c1", "nodes": [
            {"id": "se-1", "role": "se", "addr": "1.2.3.4:8443\u{1b}[2J\u{1b}]0;owned\u{7}", "version": "1.0.0",
             "state": "up", "se_group": "g1\u{1b}[31m", "staged": []}
        ]});
        let text = cluster(&v);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("\\u{1b}[2J"), "{text}");
    }

    #[test]
    fn a_rollback_is_judged_by_the_groups_asked_for() {
        let end = serde_json::json!({"state": "suspended", "reason": "SE group g2: g2-se1 did not rejoin",
            "se_groups": [{"name": "g1", "state": "rolled_back"}, {"name": "g2", "state": "suspended"}]});
        let ok = rollback_verdict(&end, &["g1".into()]).unwrap();
        assert_eq!(ok, "rolled back: SE group g1");
        let err = rollback_verdict(&end, &["g1".into(), "g2".into()]).unwrap_err();
        assert!(err.contains("SE group g2 is suspended") && !err.contains("g1 is"), "{err}");
    }
}
