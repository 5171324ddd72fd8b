//! Human-readable views of the leader's JSON answers.

use std::fmt::Write;

use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Formats a byte count as KiB/MiB/GiB.
pub fn bytes(n: u64) -> String {
    const U: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut f = n as f64;
    let mut i = 0;
    while f >= 1024.0 && i < 3 {
        f /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{f:.1} {}", U[i]) }
}

/// `molt show cluster`.
pub fn cluster(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cluster {}  leader {}", s(&v["cluster"]), s(&v["leader"]));
    let _ = writeln!(
        out,
        "{:<12} {:<11} {:<20} {:<9} {:<10} {:<8} STAGED",
        "NODE", "ROLE", "ADDRESS", "VERSION", "STATE", "GROUP"
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
            "{:<12} {:<11} {:<20} {:<9} {:<10} {:<8} {}{}",
            s(&n["id"]),
            s(&n["role"]),
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
        let _ = writeln!(out, "image {} (sha256 {})", s(&v["image_path"]), s(&v["image_sha256"]));
        if v["force"] == true || v["disruptive"] == true {
            let _ = writeln!(out, "force {}  disruptive {}", v["force"], v["disruptive"]);
        }
        if let Some(r) = v["reason"].as_str().filter(|r| !r.is_empty()) {
            let _ = writeln!(out, "reason: {r}");
        }
        for c in v["prechecks"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  check {:<16} {:<7} {}", s(&c["check"]), s(&c["result"]), s(&c["message"]));
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
            let _ = writeln!(
                out,
                "  {:<12} {:<11} {:<8} {:<8} {:<9} {}",
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
                "  {:<9} {} -> {}  {}  {}",
                s(&h["operation"]),
                s(&h["from_version"]),
                s(&h["to_version"]),
                s(&h["state"]),
                s(&h["reason"])
            );
        }
    }
    out
}

/// `upgrade system ... prechecks_only`.
pub fn prechecks(v: &Value) -> String {
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
    out
}
