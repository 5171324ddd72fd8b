//! Where traffic goes while an operation runs: what each SE should serve
//! (make-before-break around the SEs being drained or restored), what the
//! placer pushes, and the checks a drain waits for. Pure.

use std::collections::{BTreeMap, BTreeSet};

use common::{NodeId, session::ServiceSpec};

use crate::{
    config::Config,
    journal::{Journal, Step},
    observed::Observed,
    placement,
};

/// What each SE should serve while `journal` runs (or, with `None`, once
/// nothing runs): its placements minus the SEs out of service, with
/// make-before-break — an SE being drained keeps serving until the others
/// have taken over, and the others keep serving until an SE coming back
/// serves again.
pub fn desired_serving(config: &Config, journal: Option<&Journal>) -> BTreeMap<String, Vec<ServiceSpec>> {
    let Some(j) = journal.filter(|j| j.is_running()) else {
        return placement::serving(config, &BTreeSet::new());
    };
    let drained: BTreeSet<String> = j.drained_set().iter().map(|s| s.to_string()).collect();
    let restoring: Vec<&NodeId> = j.ses().filter(|(_, n)| n.step == Step::Restoring).map(|(id, _)| id).collect();
    let draining: Vec<&NodeId> = j.ses().filter(|(_, n)| n.step == Step::Draining).map(|(id, _)| id).collect();
    let mut base = drained.clone();
    base.extend(restoring.iter().map(|s| s.to_string()));
    let mut out = placement::serving(config, &base);
    // A draining SE keeps what it served without its own drain.
    for se in &draining {
        let mut d = base.clone();
        d.remove(se.as_str());
        out.insert(se.to_string(), placement::serving(config, &d).remove(se.as_str()).unwrap_or_default());
    }
    // An SE coming back serves as if it were no longer drained.
    for se in &restoring {
        let mut d = base.clone();
        d.remove(se.as_str());
        out.insert(se.to_string(), placement::serving(config, &d).remove(se.as_str()).unwrap_or_default());
    }
    out
}

/// What the placer pushes: for each SE that is up and does not serve what
/// it should, the services to serve now. Make-before-break everywhere: a
/// service is added at once, but taken off an SE only once another SE is
/// seen serving it with no placement in flight — or nothing else is meant
/// to serve it, as with a single placement.
pub fn placements_to_push(
    config: &Config,
    journal: Option<&Journal>,
    ses: &[NodeId],
    obs: &Observed,
) -> Vec<(NodeId, Vec<ServiceSpec>)> {
    let desired = desired_serving(config, journal);
    let serving_elsewhere =
        |se: &NodeId, name: &str| ses.iter().any(|o| o != se && obs.up(o).is_some_and(|s| s.serves(name)));
    let meant_elsewhere = |se: &NodeId, name: &str| {
        desired.iter().any(|(o, list)| o != se.as_str() && list.iter().any(|x| x.name == name))
    };
    let mut out = vec![];
    for se in ses {
        let Some(s) = obs.up(se) else { continue };
        let want = desired.get(se.as_str()).cloned().unwrap_or_default();
        let mut next: Vec<ServiceSpec> = want.clone();
        for name in &s.serving {
            if want.iter().any(|w| w.name == *name) {
                continue;
            }
            let keep = meant_elsewhere(se, name) && !serving_elsewhere(se, name);
            if let Some(vs) = config.virtual_services.get(name).filter(|_| keep) {
                next.push(ServiceSpec { name: vs.name.clone(), port: vs.port });
            }
        }
        next.sort();
        let mut names: Vec<&str> = next.iter().map(|x| x.name.as_str()).collect();
        names.sort_unstable();
        let mut have: Vec<&str> = s.serving.iter().map(String::as_str).collect();
        have.sort_unstable();
        // Pushed again (at most every second) until a placement is done.
        if names != have || s.placing.is_some() {
            out.push((se.clone(), next));
        }
    }
    out
}

/// Whether an SE serves what it should (an SE that is down has not converged).
pub(crate) fn converged(obs: &Observed, desired: &BTreeMap<String, Vec<ServiceSpec>>, se: &NodeId) -> bool {
    let Some(s) = obs.up(se) else { return false };
    let mut want: Vec<&str> = desired.get(se.as_str()).into_iter().flatten().map(|s| s.name.as_str()).collect();
    want.sort_unstable();
    let mut have: Vec<&str> = s.serving.iter().map(String::as_str).collect();
    have.sort_unstable();
    want == have && s.placing.is_none()
}

/// The services `se` serves that nothing else would serve if it stopped,
/// although they are placed on several SEs (another SE is out of service).
pub(crate) fn uncovered(config: &Config, desired: &BTreeMap<String, Vec<ServiceSpec>>, se: &NodeId) -> Vec<String> {
    let mine = desired.get(se.as_str()).into_iter().flatten();
    mine.filter(|s| config.placements.get(&s.name).is_some_and(|p| p.len() >= 2))
        .filter(|s| !desired.iter().any(|(other, list)| other != se.as_str() && list.contains(s)))
        .map(|s| s.name.clone())
        .collect()
}

/// SEs already out of service go first: draining another one first would
/// leave their services to nobody.
pub(crate) fn drained_first(j: &Journal, ses: &mut [NodeId]) {
    let drained = j.drained_set();
    ses.sort_by_key(|s| !drained.contains(s));
}
