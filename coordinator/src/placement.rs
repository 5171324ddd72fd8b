//! Where virtual services run, decided purely from the configuration and
//! the SEs the leader knows: placement, which SEs serve what (given SEs
//! drained for an upgrade), and which services an upgrade will disrupt.

use std::collections::{BTreeMap, BTreeSet};

use common::session::ServiceSpec;

use crate::config::{Config, HaMode};

/// SEs a service of `ha_mode` and `scale` is placed on.
pub fn wanted(ha_mode: HaMode, scale: u32) -> usize {
    if ha_mode == HaMode::ActiveStandby { 2 } else { scale as usize }
}

fn ha_of(cfg: &Config, group: &str) -> HaMode {
    cfg.se_groups.get(group).map(|g| g.ha_mode).unwrap_or(HaMode::ActiveActive)
}

/// Places every virtual service on SEs of its group: keeps valid existing
/// placements, fills up with the least loaded SEs (ties by id).
pub fn place(cfg: &Config, ses: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, vs) in &cfg.virtual_services {
        let group: Vec<&str> =
            ses.get(&vs.se_group).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default();
        let want = wanted(ha_of(cfg, &vs.se_group), vs.scale).min(group.len());
        // Existing placements stay, even on SEs the leader does not see right
        // now (after its own restart they redial one by one); only an SE known
        // to be in another group is dropped.
        let elsewhere = |se: &String| ses.iter().any(|(g, list)| *g != vs.se_group && list.contains(se));
        let keep = wanted(ha_of(cfg, &vs.se_group), vs.scale).max(want);
        let mut chosen: Vec<String> =
            cfg.placements.get(name).into_iter().flatten().filter(|se| !elsewhere(se)).take(keep).cloned().collect();
        while chosen.len() < want {
            let Some(next) = group
                .iter()
                .filter(|se| !chosen.iter().any(|c| c == *se))
                .min_by_key(|se| (load.get(**se).copied().unwrap_or(0), **se))
            else {
                break;
            };
            chosen.push((*next).to_owned());
        }
        for se in &chosen {
            *load.entry(se.clone()).or_default() += 1;
        }
        out.insert(name.clone(), chosen);
    }
    out
}

/// What each SE should serve: its placements minus the drained SEs; an
/// active-standby service is served by its first available placement only.
pub fn serving(cfg: &Config, drained: &BTreeSet<String>) -> BTreeMap<String, Vec<ServiceSpec>> {
    let mut out: BTreeMap<String, Vec<ServiceSpec>> = BTreeMap::new();
    for (name, vs) in &cfg.virtual_services {
        let available: Vec<&String> =
            cfg.placements.get(name).into_iter().flatten().filter(|se| !drained.contains(*se)).collect();
        let servers = if ha_of(cfg, &vs.se_group) == HaMode::ActiveStandby {
            &available[..available.len().min(1)]
        } else {
            &available[..]
        };
        for se in servers {
            out.entry((*se).clone()).or_default().push(ServiceSpec { name: name.clone(), port: vs.port });
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// The SEs of a group ordered for a rolling upgrade: those active for the
/// fewest services first (for active-standby: the standby first), ties by id.
pub fn rolling_order(cfg: &Config, ses: &[common::NodeId]) -> Vec<common::NodeId> {
    let active_for =
        |se: &common::NodeId| cfg.placements.values().filter(|p| p.first().is_some_and(|a| a == se.as_str())).count();
    let mut v = ses.to_vec();
    v.sort_by_key(|se| (active_for(se), se.clone()));
    v
}

/// Per virtual service: will a rolling SE upgrade interrupt it, and why.
/// `parallel` is the SEs each group moves at once (1 when absent): SEs that
/// share a service are never out of service together, so it changes the
/// pace, not the impact.
pub fn predict(cfg: &Config, disruptive: bool, parallel: &BTreeMap<String, usize>) -> Vec<(String, bool, String)> {
    cfg.virtual_services
        .iter()
        .map(|(name, vs)| {
            let ha = ha_of(cfg, &vs.se_group);
            let placed = cfg.placements.get(name).map(Vec::len).unwrap_or(0);
            let (hit, why) = if disruptive {
                (true, "disruptive upgrade: all SEs of the group reboot together".to_owned())
            } else if placed < 2 {
                (true, format!("{ha}: placed on {placed} SE, which reboots; nothing else serves it meanwhile"))
            } else if ha == HaMode::ActiveStandby {
                (false, "active-standby: the standby is upgraded first, then the service fails over to it".to_owned())
            } else {
                match parallel.get(&vs.se_group).copied().unwrap_or(1) {
                    k if k > 1 => (
                        false,
                        format!(
                            "{ha}: placed on {placed} SEs; its group moves up to {k} SEs at once, but never two of \
                             these, so the others keep serving"
                        ),
                    ),
                    _ => (
                        false,
                        format!("{ha}: placed on {placed} SEs, upgraded one at a time; the others keep serving"),
                    ),
                }
            };
            (name.clone(), hit, why)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SeGroup, VirtualService};

    fn cfg() -> Config {
        let mut c = Config::default();
        for (g, ha) in [("aa", "active-active"), ("nm", "n-plus-m"), ("as", "active-standby")] {
            c.put_group(
                SeGroup { name: g.into(), ha_mode: ha.parse().unwrap(), max_parallel_ses: None, health_gates: vec![] },
                false,
            )
            .unwrap();
        }
        for (n, g, port, scale) in
            [("web", "aa", 80, 2), ("one", "nm", 81, 1), ("two", "nm", 82, 2), ("db", "as", 83, 1)]
        {
            c.put_vs(VirtualService { name: n.into(), se_group: g.into(), port, scale }, false, &[]).unwrap();
        }
        c
    }

    fn ses() -> BTreeMap<String, Vec<String>> {
        [("aa", ["a1", "a2"]), ("nm", ["n1", "n2"]), ("as", ["s1", "s2"])]
            .iter()
            .map(|(g, s)| (g.to_string(), s.iter().map(|x| x.to_string()).collect()))
            .collect()
    }

    #[test]
    fn places_by_scale_and_mode_and_keeps_existing_placements() {
        let mut c = cfg();
        c.placements = place(&c, &ses());
        assert_eq!(c.placements["web"], ["a1", "a2"]);
        assert_eq!(c.placements["one"].len(), 1);
        assert_eq!(c.placements["two"].len(), 2);
        assert_eq!(c.placements["db"].len(), 2, "active-standby: active and standby");
        let again = place(&c, &ses());
        assert_eq!(again, c.placements, "placement is stable");
        // A leader that just restarted sees no SE yet: placements stay.
        assert_eq!(place(&c, &BTreeMap::new()), c.placements);
    }

    #[test]
    fn draining_moves_service_off_and_active_standby_fails_over() {
        let mut c = cfg();
        c.placements = place(&c, &ses());
        let active = c.placements["db"][0].clone();
        let standby = c.placements["db"][1].clone();
        let s = serving(&c, &BTreeSet::new());
        assert!(s[&active].iter().any(|x| x.name == "db"));
        assert!(!s.get(&standby).is_some_and(|v| v.iter().any(|x| x.name == "db")), "the standby does not serve");
        let s = serving(&c, &BTreeSet::from([active.clone()]));
        assert!(s[&standby].iter().any(|x| x.name == "db"), "failed over");
        let s = serving(&c, &BTreeSet::from(["a1".to_string()]));
        assert!(s.get("a1").is_none_or(|v| v.is_empty()));
        assert!(s["a2"].iter().any(|x| x.name == "web"));
    }

    #[test]
    fn predicts_disruption_for_single_placements_and_disruptive_upgrades() {
        let mut c = cfg();
        c.placements = place(&c, &ses());
        let p: BTreeMap<String, bool> =
            predict(&c, false, &BTreeMap::new()).into_iter().map(|(n, d, _)| (n, d)).collect();
        assert_eq!(
            p,
            BTreeMap::from([("db".into(), false), ("one".into(), true), ("two".into(), false), ("web".into(), false)])
        );
        assert!(predict(&c, true, &BTreeMap::new()).iter().all(|(_, d, _)| *d));
    }
}
