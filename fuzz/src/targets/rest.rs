//! REST bodies and the configuration changes they make. A body is random
//! JSON over the API's field names; parsing never panics; a sequence of
//! accepted changes always leaves a valid configuration (each service in an
//! existing group, on a usable port not shared in its group, scale 1-64).

use controller_agent::{
    api::parse_json,
    leader::{
        store::{Config, SeGroup, VirtualService},
        upgrade::{GroupRequest, UpgradeRequest},
    },
};
use serde_json::{Value, json};

use crate::Rng;

const KEYS: [&str; 14] = [
    "name",
    "ha_mode",
    "se_group",
    "port",
    "scale",
    "image_path",
    "force",
    "disruptive",
    "prechecks_only",
    "action_on_error",
    "se_groups",
    "skip_suspended",
    "extra",
    "",
];
const AGENT_PORT: u16 = 8443;

fn value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.one_in(2)),
        2 => json!(rng.below(70_000)),
        3 => json!(rng.bits() as i64),
        4 => json!(rng.pick(&["g1", "g2", "web", "active-active", "n-plus-m", "active-standby", "suspend"])),
        5 => json!(rng.text()),
        6 => Value::Array((0..rng.below(3)).map(|_| value(rng, depth + 1)).collect()),
        _ => body(rng, depth + 1),
    }
}

fn body(rng: &mut Rng, depth: u32) -> Value {
    let mut o = serde_json::Map::new();
    for _ in 0..rng.below(6) {
        o.insert(rng.pick(&KEYS).to_owned(), value(rng, depth));
    }
    Value::Object(o)
}

/// A body shaped like a real request, with some values off.
fn shaped(rng: &mut Rng) -> Value {
    let name = || ["g1", "g2", "web", "api", "", "bad name", "x\u{1b}"];
    let mut v = if rng.one_in(2) {
        json!({"name": rng.pick(&name()), "ha_mode": rng.pick(&["active-active", "n-plus-m", "active-standby", "mesh"])})
    } else {
        let port = [80u64, 81, 0, 8443, 65535, 70000][rng.below(6) as usize];
        let scale = [1u64, 2, 64, 0, 65][rng.below(5) as usize];
        json!({"name": rng.pick(&name()), "se_group": rng.pick(&["g1", "g2", "g3"]), "port": port, "scale": scale})
    };
    if rng.one_in(4) {
        v[rng.pick(&KEYS)] = value(rng, 1);
    }
    v
}

fn check(c: &Config) -> Result<(), String> {
    for v in c.virtual_services.values() {
        if !c.se_groups.contains_key(&v.se_group) {
            return Err(format!("{} is in the missing group {}", v.name, v.se_group));
        }
        if v.port == 0 || v.port == AGENT_PORT || !(1..=64).contains(&v.scale) {
            return Err(format!("{v:?} was accepted"));
        }
        if c.virtual_services.values().any(|o| o.name != v.name && o.se_group == v.se_group && o.port == v.port) {
            return Err(format!("port {} is used twice in {}", v.port, v.se_group));
        }
    }
    Ok(())
}

/// One case: a few bodies, each parsed as every request type and applied.
pub fn case(rng: &mut Rng) -> Result<bool, String> {
    let mut config = Config::default();
    let mut accepted = false;
    for _ in 0..1 + rng.below(8) {
        let raw = if rng.one_in(10) {
            rng.bytes_below(40)
        } else {
            let b = if rng.one_in(2) { shaped(rng) } else { body(rng, 0) };
            serde_json::to_vec(&b).expect("serializes")
        };
        let _ = parse_json::<UpgradeRequest>(&raw);
        let _ = parse_json::<GroupRequest>(&raw);
        let replace = rng.one_in(3);
        if let Ok(g) = parse_json::<SeGroup>(&raw) {
            accepted |= config.put_group(g, replace).is_ok();
        }
        if let Ok(v) = parse_json::<VirtualService>(&raw) {
            accepted |= config.put_vs(v, replace, &[AGENT_PORT]).is_ok();
        }
        if rng.one_in(6) {
            let _ = config.delete_group(rng.pick(&["g1", "g2"]));
        }
        check(&config)?;
    }
    Ok(accepted)
}
