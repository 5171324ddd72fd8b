//! Network partitions in a local cluster: `molt local partition` cuts some
//! nodes off from all the others with an nftables table of this cluster's
//! own; `molt local heal` deletes it. Nodes dial from their own loopback
//! address, so a rule on addresses separates them; the operator's CLI
//! (from 127.0.0.1) still reaches every node.

use std::{io::Write, path::Path, process::Command};

use crate::{client::ClusterFile, local::LocalError};

/// The nftables table of the cluster in `dir` (one per cluster dir).
fn table(dir: &Path) -> String {
    use sha2::Digest;
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let h = sha2::Sha256::digest(abs.to_string_lossy().as_bytes());
    format!("molt_part_{}", hex::encode(&h[..4]))
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<std::process::Output, LocalError> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        LocalError::Invalid(format!(
            "cannot run nft ({e}): install nftables (apt-get install nftables) and run as root"
        ))
    })?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .map_err(|e| LocalError::Invalid(e.to_string()))?;
    }
    child.wait_with_output().map_err(|e| LocalError::Invalid(e.to_string()))
}

/// The ruleset that cuts `cut` off from the other nodes of `cf`.
pub fn ruleset(table: &str, cf: &ClusterFile, cut: &[String]) -> Result<String, LocalError> {
    let ip = |addr: &str| addr.rsplit_once(':').map(|(ip, _)| ip.to_owned()).unwrap_or_else(|| addr.to_owned());
    for id in cut {
        if !cf.nodes.iter().any(|n| &n.id == id) {
            let known: Vec<&str> = cf.nodes.iter().map(|n| n.id.as_str()).collect();
            return Err(LocalError::Invalid(format!(
                "no node {id} in this cluster; its nodes are {}",
                known.join(", ")
            )));
        }
    }
    let (inside, outside): (Vec<_>, Vec<_>) = cf.nodes.iter().partition(|n| cut.contains(&n.id));
    if inside.is_empty() || outside.is_empty() {
        return Err(LocalError::Invalid("name some nodes, not all of them: they are cut off from the rest".into()));
    }
    let set = |v: &[&crate::client::ClusterNode]| v.iter().map(|n| ip(&n.addr)).collect::<Vec<_>>().join(", ");
    let (a, b) = (set(&inside), set(&outside));
    Ok(format!(
        "table ip {table} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
         ip saddr {{ {a} }} ip daddr {{ {b} }} drop\n    ip saddr {{ {b} }} ip daddr {{ {a} }} drop\n  }}\n}}\n"
    ))
}

/// Cuts `nodes` off from every other node of the cluster in `dir`
/// (replacing an earlier partition of this cluster).
pub fn partition(dir: &Path, nodes: &[String]) -> Result<(), LocalError> {
    let cf = ClusterFile::load(dir).map_err(|e| LocalError::Invalid(e.to_string()))?;
    let t = table(dir);
    let rules = ruleset(&t, &cf, nodes)?;
    let _ = nft(&["delete", "table", "ip", &t], None);
    let out = nft(&["-f", "-"], Some(&rules))?;
    if !out.status.success() {
        return Err(LocalError::Invalid(format!(
            "nft refused the partition: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Reconnects every node of the cluster in `dir`.
pub fn heal(dir: &Path) -> Result<(), LocalError> {
    let t = table(dir);
    let out = nft(&["delete", "table", "ip", &t], None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !err.contains("No such file") {
        return Err(LocalError::Invalid(format!("nft could not remove the partition: {err}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterFile {
        let node = |id: &str, addr: &str| crate::client::ClusterNode {
            id: id.into(),
            role: "controller".into(),
            addr: addr.into(),
            data_dir: "/x".into(),
            se_group: None,
        };
        ClusterFile {
            cluster: "c".into(),
            leader_url: String::new(),
            controller_urls: vec![],
            ca: "/x".into(),
            token_file: "/x".into(),
            nodes: vec![node("c1", "127.0.0.11:8443"), node("c2", "127.0.0.12:8443"), node("s1", "127.0.0.21:8443")],
        }
    }

    #[test]
    fn the_rules_cut_both_directions_between_the_two_sides_only() {
        let r = ruleset("t", &cluster(), &["c1".into()]).unwrap();
        assert!(r.contains("ip saddr { 127.0.0.11 } ip daddr { 127.0.0.12, 127.0.0.21 } drop"), "{r}");
        assert!(r.contains("ip saddr { 127.0.0.12, 127.0.0.21 } ip daddr { 127.0.0.11 } drop"), "{r}");
        assert!(ruleset("t", &cluster(), &["c9".into()]).unwrap_err().to_string().contains("no node c9"));
        assert!(ruleset("t", &cluster(), &[]).is_err());
        let all: Vec<String> = ["c1", "c2", "s1"].map(String::from).to_vec();
        assert!(ruleset("t", &cluster(), &all).is_err());
    }
}
