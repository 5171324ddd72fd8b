//! `node.toml`: a valid file with lines dropped, repeated, or given other
//! values. Loading never panics; accepted settings hold every rule that
//! validation promises.

use std::{path::PathBuf, sync::OnceLock};

use common::{Role, config::NodeSettings};

use crate::Rng;

/// Certificates for the files to point at, made once per process.
fn pki() -> &'static PathBuf {
    static PKI: OnceLock<PathBuf> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("molt-fuzz-pki-{}", std::process::id()));
        if !dir.join("ca.pem").exists() {
            let nodes: Vec<molt::pki::NodeSpec> =
                ["c1=controller@127.0.0.11", "se-1=se@127.0.0.21"].iter().map(|s| s.parse().expect("valid")).collect();
            molt::pki::init(&dir, "fuzz", &nodes).expect("pki init");
        }
        dir
    })
}

fn template(pki: &std::path::Path, se: bool) -> String {
    let (id, role, listen, extra) = if se {
        ("se-1", "se", "127.0.0.21:8443", "se_group = \"g1\"\n".to_owned())
    } else {
        ("c1", "controller", "127.0.0.11:8443", format!("[api]\ntoken_file = \"{}/admin.token\"\n", pki.display()))
    };
    let sel =
        if se { "" } else { "\n[[service_engines]]\nid = \"se-1\"\naddr = \"127.0.0.21:8443\"\nse_group = \"g1\"\n" };
    let (top, table) = extra.split_at(if se { extra.len() } else { 0 });
    format!(
        "cluster = \"fuzz\"\nnode_id = \"{id}\"\nrole = \"{role}\"\nlisten = \"{listen}\"\ndata_dir = \"/tmp/molt-fuzz\"\n\
         deployment = \"vm\"\nleader = \"c1\"\nheartbeat_interval_ms = 1000\nupload_stall_secs = 60\n{top}\
         [tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/{id}.pem\"\nkey = \"{p}/{id}.key\"\n{table}\
         [limits]\nmax_connections = 4096\nfetch_streams_per_node = 2\n\
         [[controllers]]\nid = \"c1\"\naddr = \"127.0.0.11:8443\"\n{sel}",
        p = pki.display()
    )
}

const VALUES: [&str; 16] = [
    "\"\"",
    "0",
    "1",
    "-1",
    "49",
    "50",
    "60000",
    "60001",
    "99999999999999999999",
    "\"c2\"",
    "\"se\"",
    "\"admin\"",
    "\"docker\"",
    "\"127.0.0.1\"",
    "true",
    "[]",
];

/// One case.
pub fn case(rng: &mut Rng) -> Result<bool, String> {
    let pki = pki();
    let mut lines: Vec<String> = template(pki, rng.one_in(2)).lines().map(str::to_owned).collect();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(lines.len() as u64) as usize;
        match rng.below(4) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                if let Some((k, _)) = lines[i].split_once(" = ") {
                    lines[i] = format!("{k} = {}", rng.pick(&VALUES));
                }
            }
            _ => lines
                .insert(i, format!("{} = {}", rng.pick(&["extra", "se_group", "leader", "listen"]), rng.pick(&VALUES))),
        }
    }
    let text = lines.join("\n");
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(file.path(), &text).map_err(|e| e.to_string())?;
    let Ok(s) = NodeSettings::load(file.path()) else { return Ok(false) };
    let fail = |why: &str| Err(format!("{why}: accepted\n{text}"));
    if !matches!(s.controllers.len(), 1 | 3) || !s.controllers.iter().any(|c| c.id == s.leader.id) {
        return fail("controllers");
    }
    if !(50..=60_000).contains(&(s.heartbeat_interval.as_millis() as u64)) {
        return fail("heartbeat interval");
    }
    if (s.role == Role::ServiceEngine) != s.se_group.is_some() || s.role == Role::Admin {
        return fail("role and SE group");
    }
    if s.role == Role::Controller && s.api_token.is_none() {
        return fail("a controller without a token");
    }
    if s.role != Role::Controller && !s.service_engines.is_empty() {
        return fail("service_engines on an SE");
    }
    if s.tls.identity().node_id != s.node_id {
        return fail("a certificate of another node");
    }
    Ok(true)
}
