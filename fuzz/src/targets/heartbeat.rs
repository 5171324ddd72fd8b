//! Wire heartbeats into domain heartbeats: never a panic; an accepted one
//! carries bounded, printable strings and an address that parses.

use common::convert;
use proto::v1 as pb;

use crate::Rng;

fn field(rng: &mut Rng, good: &str) -> String {
    if rng.one_in(3) { rng.text() } else { good.to_owned() }
}

/// One case.
pub fn case(rng: &mut Rng) -> Result<bool, String> {
    let hb = pb::Heartbeat {
        node_id: field(rng, "se-1"),
        role: field(rng, "se"),
        version: field(rng, "1.0.0"),
        boot_id: field(rng, "3f2a"),
        deployment: field(rng, "vm"),
        se_group: field(rng, "g1"),
        addr: field(rng, "127.0.0.1:8443"),
        disk_free_bytes: rng.bits(),
        seq: rng.bits(),
        pending: rng.one_in(2),
        previous_version: if rng.one_in(2) { String::new() } else { field(rng, "0.9.0") },
        staged: (0..rng.below(3))
            .map(|_| pb::StagedImage {
                sha256: field(rng, &"ab".repeat(32)),
                version: field(rng, "2.0.0"),
                size: rng.bits(),
            })
            .collect(),
        transfers: (0..rng.below(3))
            .map(|_| pb::Transfer { sha256: field(rng, &"cd".repeat(32)), received: rng.bits(), total: rng.bits() })
            .collect(),
        ..Default::default()
    };
    let msg =
        pb::AgentMessage { kind: if rng.one_in(20) { None } else { Some(pb::agent_message::Kind::Heartbeat(hb)) } };
    let Ok(h) = convert::heartbeat_of(msg) else { return Ok(false) };
    for (name, s) in [("boot_id", &h.boot_id), ("addr", &h.addr), ("se_group", &h.se_group.clone().unwrap_or_default())]
    {
        if s.len() > 64 || s.chars().any(char::is_control) {
            return Err(format!("{name} {s:?} was accepted"));
        }
    }
    if h.addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("addr {:?} was accepted", h.addr));
    }
    if h.node_id.as_str().chars().any(char::is_control) {
        return Err(format!("node id {:?} was accepted", h.node_id));
    }
    Ok(true)
}
