//! The pure core, step by step: ordering, traffic moves, requests, and the
//! decisions the review found wrong before (each named after its finding).

use std::collections::BTreeMap;

use common::{
    DeploymentKind::{self, Docker, Vm},
    NodeId, Sha256Digest, Version,
    session::{CommandKind, CommandState},
};
use coordinator::{
    config::{Config, SeGroup, VirtualService},
    core::{self, Action, Ctx, Observed, Reported, Seen, Timeouts},
    journal::{ActionOnError, GroupState, Image, Journal, Member, Operation, Outcome, Phase, Step},
    placement,
    request::{self, NodeSummary, RefusalKind, StartCtx, StartRequest},
};

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn id(s: &str) -> NodeId {
    s.parse().unwrap()
}

/// One controller, one active-standby group of two SEs serving `db`.
fn config() -> Config {
    let mut c = Config::default();
    c.put_group(
        SeGroup {
            name: "g1".into(),
            ha_mode: "active-standby".parse().unwrap(),
            max_parallel_ses: None,
            health_gates: vec![],
        },
        false,
    )
    .unwrap();
    c.put_vs(VirtualService { name: "db".into(), se_group: "g1".into(), port: 80, scale: 1 }, false, &[]).unwrap();
    let ses = BTreeMap::from([("g1".to_string(), vec!["s1".to_string(), "s2".to_string()])]);
    c.placements = placement::place(&c, &ses);
    c
}

/// A node on `version`, up, deployed as a vm.
fn summary(node: &str, member: Member, version: &str) -> NodeSummary {
    NodeSummary {
        id: id(node),
        member,
        version: Some(v(version)),
        kind: Vm,
        previous: None,
        health: Default::default(),
    }
}

fn nodes(se_version: &str) -> Vec<NodeSummary> {
    vec![
        summary("c1", Member::Controller, "1.0.0"),
        summary("s1", Member::ServiceEngine("g1".into()), se_version),
        summary("s2", Member::ServiceEngine("g1".into()), se_version),
    ]
}

fn image(to: &str) -> Image {
    image_of(to, Vm)
}

fn image_of(to: &str, kind: DeploymentKind) -> Image {
    Image {
        path: format!("controller://upgrade_pkgs/{}", kind.package_file_name()),
        sha256: Sha256Digest::of(format!("{to}-{}", kind.as_str()).as_bytes()),
        size: 10,
        kind,
        min_compatible: v("1.0.0"),
        signed_by: None,
    }
}

/// An upgrade to `to`, suspending on an SE failure.
fn upgrade_to(to: &str) -> StartRequest {
    StartRequest::new(Operation::Upgrade, image(to), v(to))
}

fn start(on_error: ActionOnError) -> Journal {
    let cfg = config();
    let ns = nodes("1.0.0");
    let req = StartRequest { on_error, ..upgrade_to("2.0.0") };
    let ctx = StartCtx { current: None, nodes: &ns, config: &cfg, leader: &id("c1"), id: "op", now: 0, mutant: None };
    request::start(&req, &ctx).unwrap()
}

fn seen(version: &str, boot: &str, serving: &[&str]) -> Seen {
    Seen {
        up: true,
        version: v(version),
        boot_id: boot.into(),
        pending: false,
        previous: None,
        serving: serving.iter().map(|s| s.to_string()).collect(),
        placing: None,
        results: BTreeMap::new(),
        received: BTreeMap::new(),
    }
}

fn ctx(now: u64) -> Ctx {
    Ctx { now, generation: 1, timeouts: Timeouts::default(), mutant: None }
}

fn succeeded(s: &mut Seen, command: &str) {
    let boot = s.boot_id.clone();
    s.results.insert(command.into(), Reported { state: CommandState::Succeeded, message: "ok".into(), boot_id: boot });
}

/// A journal in the SE phase with `s1` failed and `s2` upgraded, in a group
/// of the given policy.
fn se_failure(on_error: ActionOnError) -> (Journal, Observed) {
    let mut j = start(on_error);
    j.phase = Phase::ServiceEngines;
    for n in j.nodes.values_mut() {
        n.step = Step::Upgraded;
    }
    j.groups.get_mut("g1").unwrap().state = GroupState::InProgress;
    let s1 = j.nodes.get_mut(&id("s1")).unwrap();
    s1.step = Step::Failed;
    s1.note = "came back on 1.0.0".into();
    j.drained.insert(id("s1"));
    let obs = Observed {
        nodes: BTreeMap::from([
            (id("c1"), seen("2.0.0", "b1", &[])),
            (id("s1"), seen("1.0.0", "b2", &[])),
            (id("s2"), seen("2.0.0", "b3", &["db"])),
        ]),
        image_unusable: None,
        probed: None,
    };
    (j, obs)
}

#[test]
fn the_standby_is_upgraded_first() {
    let cfg = config();
    let active = cfg.placements["db"][0].clone();
    let order = placement::rolling_order(&cfg, &[id("s1"), id("s2")]);
    assert_ne!(order[0].as_str(), active, "{order:?}");
}

#[test]
fn a_drained_se_keeps_serving_until_another_serves() {
    let cfg = config();
    let active = id(&cfg.placements["db"][0]);
    let standby = id(&cfg.placements["db"][1]);
    let mut j = start(ActionOnError::Suspend);
    j.phase = Phase::ServiceEngines;
    j.drained.insert(active.clone());
    j.nodes.get_mut(&active).unwrap().step = Step::Draining;
    let mut obs = Observed {
        nodes: BTreeMap::from([
            (active.clone(), seen("1.0.0", "a", &["db"])),
            (standby.clone(), seen("1.0.0", "b", &[])),
        ]),
        image_unusable: None,
        probed: None,
    };
    let ses = [active.clone(), standby.clone()];
    // Draining: the standby takes db over, the active keeps it.
    let push = core::placements_to_push(&cfg, Some(&j), &ses, &obs);
    assert_eq!(push.len(), 1, "{push:?}");
    assert_eq!((&push[0].0, push[0].1[0].name.as_str()), (&standby, "db"));
    // Stopping while the standby does not serve yet: the active keeps db.
    j.nodes.get_mut(&active).unwrap().step = Step::Stopping;
    let push = core::placements_to_push(&cfg, Some(&j), &ses, &obs);
    assert!(push.iter().all(|(se, _)| *se != active), "break before make: {push:?}");
    // Once the standby serves, the active lets go.
    obs.nodes.get_mut(&standby).unwrap().serving = vec!["db".into()];
    let push = core::placements_to_push(&cfg, Some(&j), &ses, &obs);
    assert_eq!(push, vec![(active, vec![])]);
}

#[test]
fn a_third_version_is_refused_naming_the_group_on_the_old_one() {
    // After `molt rollback segroup g1`: g1 on 1.0.0, the controller on 2.0.0.
    let mut ns = nodes("1.0.0");
    ns[0].version = Some(v("2.0.0"));
    let cfg = config();
    let req = StartRequest {
        image: Image { min_compatible: v("2.0.0"), ..image("2.1.0") },
        force: true,
        ..upgrade_to("2.1.0")
    };
    let ctx = StartCtx { current: None, nodes: &ns, config: &cfg, leader: &id("c1"), id: "op", now: 0, mutant: None };
    let e = request::start(&req, &ctx).unwrap_err();
    assert_eq!(e.kind, RefusalKind::PreconditionFailed, "even forced");
    assert!(e.message.contains("SE group g1 on 1.0.0"), "{}", e.message);
    assert!(e.message.contains("bring SE group g1 from 1.0.0 to 2.0.0 first"), "{}", e.message);
    // The mutant that looks at the controllers only lets it through.
    let m = StartCtx { mutant: Some(coordinator::Mutant::TwoVersions), ..ctx };
    assert!(request::start(&req, &m).is_ok());
}

#[test]
fn a_node_that_has_not_reported_blocks_the_start() {
    let mut ns = nodes("1.0.0");
    ns[2].version = None;
    let cfg = config();
    let req = upgrade_to("2.0.0");
    let ctx = StartCtx { current: None, nodes: &ns, config: &cfg, leader: &id("c1"), id: "op", now: 0, mutant: None };
    let e = request::start(&req, &ctx).unwrap_err();
    assert!(e.message.contains("s2 has not reported its version"), "{}", e.message);
}

#[test]
fn a_second_start_while_one_runs_is_a_conflict() {
    let j = start(ActionOnError::Suspend);
    let cfg = config();
    let ns = nodes("1.0.0");
    let req = StartRequest { operation: Operation::Prestage, ..upgrade_to("2.0.0") };
    let ctx =
        StartCtx { current: Some(&j), nodes: &ns, config: &cfg, leader: &id("c1"), id: "op2", now: 0, mutant: None };
    assert_eq!(request::start(&req, &ctx).unwrap_err().kind, RefusalKind::Conflict);
    assert_eq!(request::config_writable(Some(&j)).unwrap_err().kind, RefusalKind::Conflict);
}

#[test]
fn rollback_is_journaled_before_any_se_moves() {
    let (j, obs) = se_failure(ActionOnError::Rollback);
    let d = core::next(&j, &obs, &ctx(1));
    assert_eq!(d.journal.groups["g1"].state, GroupState::RollingBack, "the journal says rolling back");
    assert!(d.journal.nodes[&id("s2")].rollback, "s2 is queued for the rollback");
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::Send { command, .. } if matches!(command.kind, CommandKind::Rollback(_)))),
        "no rollback command in the decision that journals it: {:?}",
        d.actions
    );
}

#[test]
fn continue_records_who_stayed_behind() {
    let (j, obs) = se_failure(ActionOnError::Continue);
    let d = core::next(&j, &obs, &ctx(1));
    let j = d.journal;
    assert_eq!(j.nodes[&id("s1")].step, Step::Skipped);
    assert!(!j.drained.contains(&id("s1")), "back in service");
    assert_eq!(j.outcome, Some(Outcome::Completed));
    assert!(j.reason.contains("skipped, still on 1.0.0: s1"), "{}", j.reason);
    assert!(j.reason.contains("action_on_error: continue"), "{}", j.reason);
}

#[test]
fn an_ended_operation_shows_nothing_running_and_nobody_drained() {
    let (mut j, obs) = se_failure(ActionOnError::Suspend);
    j.nodes.get_mut(&id("s2")).unwrap().step = Step::Upgraded;
    let d = core::next(&j, &obs, &ctx(1));
    let view = coordinator::view::view(&d.journal);
    assert_eq!(view.state, coordinator::view::OpState::Suspended);
    assert_eq!(view.phase, coordinator::view::ShownPhase::ServiceEngines, "it stays in the phase it can go on from");
    assert!(view.nodes.iter().all(|n| n.running.is_none()), "{view:?}");
    assert!(view.drained.is_empty());
}

#[test]
fn an_apply_reported_after_the_reboot_is_not_mistaken_for_a_fallback() {
    let mut j = start(ActionOnError::Suspend);
    j.phase = Phase::ServiceEngines;
    j.groups.get_mut("g1").unwrap().state = GroupState::InProgress;
    for n in j.nodes.values_mut() {
        n.step = Step::Upgraded;
    }
    j.nodes.get_mut(&id("s1")).unwrap().step = Step::Applying;
    j.nodes.get_mut(&id("s1")).unwrap().deadline = Some(1_000_000);
    let cmd = core::command_id("apply", "op", 0, &id("s1"));
    // The result, kept across the reboot, names the boot that ran it.
    let mut s1 = seen("2.0.0", "new", &[]);
    s1.results.insert(cmd, Reported { state: CommandState::Succeeded, message: "ok".into(), boot_id: "old".into() });
    let obs = Observed { nodes: BTreeMap::from([(id("s1"), s1)]), image_unusable: None, probed: None };
    let d = core::next(&j, &obs, &ctx(1));
    assert_eq!(d.journal.nodes[&id("s1")].step, Step::Committing);
}

#[test]
fn progress_never_goes_back_within_an_operation() {
    let mut j = start(ActionOnError::Suspend);
    let mut obs = Observed::default();
    let mut seen_progress = vec![];
    for n in ["c1", "s1", "s2"] {
        obs.nodes.insert(id(n), seen("1.0.0", "b", &[]));
    }
    for t in 1..40u64 {
        let d = core::next(&j, &obs, &ctx(t));
        // Nodes report staging done one by one.
        for c in d.actions.iter() {
            if let Action::Send { node, command } = c {
                succeeded(obs.nodes.get_mut(node).unwrap(), &command.id);
            }
        }
        seen_progress.push(d.journal.progress);
        j = d.journal;
    }
    assert!(seen_progress.windows(2).all(|w| w[0] <= w[1]), "{seen_progress:?}");
    assert!(j.phase != Phase::Distribute, "distribution ended: {:?}", j.phase);
}

/// Found by the simulation: the leader's own rollback shared the followers'
/// deadline, so after waiting for a follower that was down it gave up on
/// itself without sending anything.
#[test]
fn the_leader_waits_for_its_own_rollback_after_the_followers() {
    let mut j = start(ActionOnError::Suspend);
    j.phase = Phase::Controllers;
    j.nodes.insert(id("c2"), coordinator::journal::NodeOp::new(Member::Controller));
    j.nodes.get_mut(&id("c1")).unwrap().step = Step::Rejoining;
    let c2 = j.nodes.get_mut(&id("c2")).unwrap();
    c2.step = Step::Failed;
    c2.note = "apply failed".into();
    // c1 (the leader) is up on 2.0.0; c2 is down.
    let obs =
        Observed { nodes: BTreeMap::from([(id("c1"), seen("2.0.0", "b1", &[]))]), image_unusable: None, probed: None };
    let j = core::next(&j, &obs, &ctx(1)).journal;
    assert_eq!(j.phase, Phase::RollbackControllers);
    let reform = Timeouts::default().reform;
    let d = core::next(&j, &obs, &ctx(reform + 10));
    assert_eq!(d.journal.nodes[&id("c2")].step, Step::Failed, "c2 given up");
    assert_eq!(d.journal.nodes[&id("c1")].step, Step::RollingBack, "the leader still tries");
    assert!(
        d.actions.iter().any(|a| matches!(a, Action::Send { node, command } if *node == id("c1") && matches!(command.kind, CommandKind::Rollback(_)))),
        "{:?}",
        d.actions
    );
}

/// Found by the simulation: after an abort, a controller that had committed
/// the new version before another failed stayed on it.
#[test]
fn after_an_abort_a_committed_node_on_the_new_version_is_rolled_back() {
    let mut j = start(ActionOnError::Suspend);
    j.phase = Phase::Done;
    j.outcome = Some(Outcome::Aborted);
    let mut c1 = seen("2.0.0", "b1", &[]);
    c1.previous = Some(v("1.0.0"));
    let obs = Observed { nodes: BTreeMap::from([(id("c1"), c1)]), image_unusable: None, probed: None };
    let d = core::next(&j, &obs, &ctx(1));
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::Send { command, .. } if matches!(command.kind, CommandKind::Rollback(_)))),
        "{:?}",
        d.actions
    );
}

/// Found by the simulation: a group rollback ended suspended because another
/// group was still suspended from the upgrade, and resuming that group
/// declared it rolled back without moving an SE.
#[test]
fn a_group_rollback_answers_for_its_own_groups() {
    let mut j = start(ActionOnError::Suspend);
    j.operation = Operation::SeGroupRollback;
    j.phase = Phase::RollbackSeGroups;
    j.groups.get_mut("g1").unwrap().state = GroupState::RollingBack;
    for se in ["s1", "s2"] {
        let n = j.nodes.get_mut(&id(se)).unwrap();
        n.rollback = true;
        n.step = Step::RolledBack;
    }
    let mut s3 = coordinator::journal::NodeOp::new(Member::ServiceEngine("g2".into()));
    s3.step = Step::Failed;
    j.nodes.insert(id("s3"), s3);
    j.groups.insert(
        "g2".into(),
        coordinator::journal::GroupOp {
            ses: vec![id("s3")],
            state: GroupState::Suspended,
            reason: "s3: came back on 1.0.0".into(),
            passed: vec![],
            left_out: false,
        },
    );
    let j = core::next(&j, &Observed::default(), &ctx(1)).journal;
    assert_eq!(j.outcome, Some(Outcome::Completed), "{}", j.reason);
    assert_eq!(j.groups["g1"].state, GroupState::RolledBack);
    // g2 is still suspended from the upgrade: resuming it upgrades it again.
    let r = request::resume(Some(&j), &["g2".into()], false, &config()).unwrap();
    assert_eq!((r.operation, r.phase), (Operation::Upgrade, Phase::ServiceEngines));
    assert_eq!(r.groups["g2"].state, GroupState::InProgress);
    assert_eq!(r.nodes[&id("s3")].step, Step::Waiting);
}

/// Found by the simulation: an SE was drained while the other SE of its
/// group was still out of service, leaving its services to nobody.
#[test]
fn a_drain_waits_while_no_other_se_is_in_service() {
    let mut j = start(ActionOnError::Suspend);
    j.phase = Phase::ServiceEngines;
    j.groups.get_mut("g1").unwrap().state = GroupState::InProgress;
    let cfg = config();
    let (active, standby) = (id(&cfg.placements["db"][0]), id(&cfg.placements["db"][1]));
    j.drained.insert(standby.clone());
    j.nodes.get_mut(&standby).unwrap().step = Step::Failed;
    j.drained.insert(active.clone());
    let n = j.nodes.get_mut(&active).unwrap();
    n.step = Step::Draining;
    n.deadline = Some(1_000);
    let obs = Observed {
        nodes: BTreeMap::from([
            (active.clone(), seen("1.0.0", "a", &["db"])),
            (standby.clone(), seen("1.0.0", "b", &[])),
        ]),
        image_unusable: None,
        probed: None,
    };
    let d = core::next(&j, &obs, &ctx(500));
    assert_eq!(d.journal.nodes[&active].step, Step::Draining, "it keeps serving db");
    let d = core::next(&d.journal, &obs, &ctx(2_000));
    let n = &d.journal.nodes[&active];
    assert_eq!(n.step, Step::Failed);
    assert!(n.note.contains("no other SE of its group is in service for db"), "{}", n.note);
}

/// Found by the simulation (seed 20254 of a 2,000-schedule run): an SE
/// told to stop and then to serve again reported serving in between, so
/// the other SE let go and the first one's late stop left nobody serving.
/// An SE with a placement in flight does not count as serving.
#[test]
fn an_se_with_a_placement_in_flight_does_not_count_as_serving() {
    let cfg = config();
    let active = id(&cfg.placements["db"][0]);
    let standby = id(&cfg.placements["db"][1]);
    let mut j = start(ActionOnError::Suspend);
    j.phase = Phase::ServiceEngines;
    j.drained.insert(active.clone());
    j.nodes.get_mut(&active).unwrap().step = Step::Stopping;
    let mut busy = seen("1.0.0", "b", &["db"]);
    busy.placing = Some(vec!["db".into()]);
    let obs = Observed {
        nodes: BTreeMap::from([(active.clone(), seen("1.0.0", "a", &["db"])), (standby.clone(), busy)]),
        image_unusable: None,
        probed: None,
    };
    let push = core::placements_to_push(&cfg, Some(&j), &[active.clone(), standby.clone()], &obs);
    assert!(push.iter().all(|(se, want)| *se != active || !want.is_empty()), "break before make: {push:?}");
}

/// Found by the simulation (seed 2506 of 10,000): an SE whose apply had
/// switched its slots but which had not rebooted yet still reported the
/// old version; the group rollback took it as rolled back, and it then
/// rebooted into the new one. It gets the rollback like any SE that held
/// the new version.
#[test]
fn an_se_switched_for_a_reboot_is_not_taken_as_rolled_back() {
    let (mut j, mut obs) = se_failure(ActionOnError::Rollback);
    j.nodes.get_mut(&id("s2")).unwrap().step = Step::Waiting; // never applied
    // s1 applied 2.0.0 (slots switched) and has not rebooted yet.
    let s1 = obs.nodes.get_mut(&id("s1")).unwrap();
    s1.previous = Some(v("2.0.0"));
    let j = core::next(&j, &obs, &ctx(1)).journal;
    assert_eq!(j.groups["g1"].state, GroupState::RollingBack);
    let j = core::next(&j, &obs, &ctx(2)).journal;
    let s1 = &j.nodes[&id("s1")];
    assert!(matches!(s1.step, Step::Draining | Step::Stopping | Step::RollingBack), "{:?}", s1.step);
    assert_ne!(j.groups["g1"].state, GroupState::RolledBack);
}

/// A mixed cluster (vm controller, docker SEs) upgrades in one operation:
/// each node is sent the image of its own kind, to stage and to apply.
#[test]
fn a_mixed_cluster_sends_each_node_the_image_of_its_kind() {
    let cfg = config();
    let mut ns = nodes("1.0.0");
    for n in &mut ns[1..] {
        n.kind = Docker;
    }
    let req = StartRequest { docker_image: Some(image_of("2.0.0", Docker)), ..upgrade_to("2.0.0") };
    let ctx0 = StartCtx { current: None, nodes: &ns, config: &cfg, leader: &id("c1"), id: "op", now: 0, mutant: None };
    let j = request::start(&req, &ctx0).unwrap();
    assert_eq!(j.image_for(Vm).kind, Vm);
    assert_eq!(j.image_for(Docker).kind, Docker);
    let obs =
        Observed { nodes: ns.iter().map(|n| (n.id.clone(), seen("1.0.0", "b0", &[]))).collect(), ..Default::default() };
    let d = core::next(&j, &obs, &ctx(1));
    let staged: BTreeMap<String, DeploymentKind> = d
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { node, command } => match &command.kind {
                CommandKind::Stage(img) => Some((node.to_string(), img.kind)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(
        staged,
        BTreeMap::from([("c1".into(), Vm), ("s1".into(), Docker), ("s2".into(), Docker)]),
        "{:?}",
        d.actions
    );
    // The SEs' stage commands carry the docker image's digest.
    let docker_sha = image_of("2.0.0", Docker).sha256;
    assert!(d.actions.iter().any(|a| matches!(a, Action::Send { node, command } if node.as_str() == "s1"
        && matches!(&command.kind, CommandKind::Stage(img) if img.sha256 == docker_sha))));
}

/// An upgrade that went to its end: every node upgraded and committed.
fn completed_upgrade() -> Journal {
    let mut j = start(ActionOnError::Suspend);
    for n in j.nodes.values_mut() {
        n.step = Step::Upgraded;
    }
    j.groups.get_mut("g1").unwrap().state = GroupState::Completed;
    j.phase = coordinator::journal::Phase::Done;
    j.outcome = Some(Outcome::Completed);
    j
}

#[test]
fn a_system_rollback_is_refused_when_a_node_no_longer_holds_the_old_version() {
    let j = completed_upgrade();
    let mut ns = nodes("2.0.0");
    ns[0].version = Some(v("2.0.0"));
    for n in &mut ns {
        n.previous = Some(v("1.0.0"));
    }
    ns[2].previous = Some(v("0.9.0"));
    let e = request::rollback_system(Some(&j), &ns, &id("c1"), &config(), 5).unwrap_err();
    assert_eq!(e.kind, RefusalKind::PreconditionFailed);
    assert!(e.message.contains("s2 (its other slot holds 0.9.0)"), "{}", e.message);
    // With the old version in every other slot: the SE group first, the controller after.
    ns[2].previous = Some(v("1.0.0"));
    let r = request::rollback_system(Some(&j), &ns, &id("c1"), &config(), 5).unwrap();
    assert_eq!(r.phase, coordinator::journal::Phase::RollbackSeGroups);
    assert_eq!(r.groups["g1"].state, GroupState::RollingBack);
    assert_eq!(r.nodes[&id("c1")].step, Step::Upgraded, "the controller waits for the SE groups");
}

#[test]
fn pause_holds_the_next_se_and_abort_after_the_commit_rolls_the_group_back() {
    // Mid SE phase: s2 (the standby) upgraded, s1 waiting.
    let mut j = start(ActionOnError::Suspend);
    j.nodes.get_mut(&id("c1")).unwrap().step = Step::Upgraded;
    j.nodes.get_mut(&id("s2")).unwrap().step = Step::Upgraded;
    j.nodes.get_mut(&id("s1")).unwrap().step = Step::Staged;
    j.groups.get_mut("g1").unwrap().state = GroupState::InProgress;
    j.phase = coordinator::journal::Phase::ServiceEngines;
    let mut obs = Observed::default();
    obs.nodes.insert(id("c1"), seen("2.0.0", "c1-b", &[]));
    obs.nodes.insert(id("s2"), seen("2.0.0", "s2-b", &[]));
    obs.nodes.insert(id("s1"), seen("1.0.0", "s1-a", &["db"]));
    let paused = request::pause(Some(&j)).unwrap().unwrap();
    assert!(request::pause(Some(&paused)).unwrap().is_none(), "pausing twice changes nothing");
    let d = core::next(&paused, &obs, &ctx(1));
    assert_eq!(d.journal.nodes[&id("s1")].step, Step::Staged, "held");
    // Nothing is sent; the probes go on while the group is held.
    assert_eq!(d.actions, vec![Action::Probe]);
    assert_eq!(coordinator::view::view(&d.journal).state, coordinator::view::OpState::Paused);
    // Resumed, s1 is drained next.
    let resumed = request::resume_paused(Some(&d.journal)).unwrap().unwrap();
    assert_eq!(core::next(&resumed, &obs, &ctx(2)).journal.nodes[&id("s1")].step, Step::Draining);
    // Aborted instead: the group, partly upgraded, rolls back, s2 with it.
    let aborted = request::abort(Some(&d.journal)).unwrap().unwrap();
    let a = core::next(&aborted, &obs, &ctx(2)).journal;
    assert_eq!(a.groups["g1"].state, GroupState::RollingBack, "{}", a.groups["g1"].reason);
    assert!(a.nodes[&id("s2")].rollback);
    assert!(request::abort(Some(&a)).unwrap().is_none(), "aborting twice changes nothing");
    assert_eq!(request::pause(Some(&a)).unwrap_err().kind, RefusalKind::Conflict);
}

#[test]
fn an_operation_that_continues_an_aborted_upgrade_does_not_inherit_its_abort() {
    // Ended aborted after the commit, with g1 left suspended: the operator resumes it.
    let mut j = completed_upgrade();
    j.abort = true;
    j.outcome = Some(Outcome::Aborted);
    j.groups.get_mut("g1").unwrap().state = GroupState::Suspended;
    let r = request::resume(Some(&j), &[], false, &config()).unwrap();
    assert!(!r.abort && !r.paused && r.pause_after.is_none(), "the resumed group would be aborted again");
    assert_eq!(r.groups["g1"].state, GroupState::InProgress);
}

/// Four active-active SEs: `a` on s1 and s2, `b` on s3 and s4; and a
/// second group `h` of one SE.
fn four_ses(k: Option<u32>, series: bool) -> (Journal, Observed) {
    let mut cfg = Config::default();
    cfg.put_group(
        SeGroup {
            name: "g1".into(),
            ha_mode: "active-active".parse().unwrap(),
            max_parallel_ses: Some(2),
            health_gates: vec![],
        },
        false,
    )
    .unwrap();
    cfg.put_group(
        SeGroup {
            name: "h".into(),
            ha_mode: "active-active".parse().unwrap(),
            max_parallel_ses: None,
            health_gates: vec![],
        },
        false,
    )
    .unwrap();
    for (vs, port) in [("a", 80), ("b", 81)] {
        cfg.put_vs(VirtualService { name: vs.into(), se_group: "g1".into(), port, scale: 2 }, false, &[]).unwrap();
    }
    cfg.placements.insert("a".into(), vec!["s1".into(), "s2".into()]);
    cfg.placements.insert("b".into(), vec!["s3".into(), "s4".into()]);
    let mut ns = vec![summary("c1", Member::Controller, "1.0.0")];
    for (s, g) in [("s1", "g1"), ("s2", "g1"), ("s3", "g1"), ("s4", "g1"), ("h1", "h")] {
        ns.push(summary(s, Member::ServiceEngine(g.into()), "1.0.0"));
    }
    let profile = request::ProfileRequest { max_parallel_ses: k, groups_in_series: Some(series), ..Default::default() };
    let req = StartRequest { profile, ..upgrade_to("2.0.0") };
    let ctx = StartCtx { current: None, nodes: &ns, config: &cfg, leader: &id("c1"), id: "op", now: 0, mutant: None };
    let mut j = request::start(&req, &ctx).unwrap();
    j.phase = Phase::ServiceEngines;
    for n in j.nodes.values_mut() {
        n.step = Step::Staged;
    }
    j.nodes.get_mut(&id("c1")).unwrap().step = Step::Upgraded;
    let mut obs = Observed::default();
    obs.nodes.insert(id("c1"), seen("2.0.0", "c1-b", &[]));
    for (s, serving) in [("s1", &["a"][..]), ("s2", &["a"]), ("s3", &["b"]), ("s4", &["b"]), ("h1", &[])] {
        obs.nodes.insert(id(s), seen("1.0.0", &format!("{s}-a"), serving));
    }
    (j, obs)
}

#[test]
fn a_group_moves_max_parallel_ses_at_once_but_never_two_ses_of_one_service() {
    // The group's own default: 2 at once.
    let (j, obs) = four_ses(None, false);
    assert_eq!(j.parallel_ses("g1"), 2);
    assert_eq!(j.parallel_ses("h"), 1);
    let d = core::next(&j, &obs, &ctx(1)).journal;
    let draining: Vec<&str> =
        d.nodes.iter().filter(|(_, n)| n.step == Step::Draining).map(|(id, _)| id.as_str()).collect();
    assert_eq!(draining.len(), 3, "two of g1 and h's one: {draining:?}");
    assert!(
        [["s1", "s2"], ["s3", "s4"]].iter().all(|pair| !pair.iter().all(|s| draining.contains(s))),
        "never both SEs of a service: {draining:?}"
    );
    // Asked for 4: still never two of one service, so 2.
    let (j, obs) = four_ses(Some(4), false);
    let d = core::next(&j, &obs, &ctx(1)).journal;
    let g1 = |d: &Journal| d.groups["g1"].ses.iter().filter(|s| d.nodes[*s].step == Step::Draining).count();
    assert_eq!(g1(&d), 2);
    // Asked for 1: one at a time, as before.
    let (j, obs) = four_ses(Some(1), false);
    assert_eq!(g1(&core::next(&j, &obs, &ctx(1)).journal), 1);
    // In series: g1 first (by name), h waits.
    let (j, obs) = four_ses(None, true);
    let d = core::next(&j, &obs, &ctx(1)).journal;
    assert_eq!(g1(&d), 2);
    assert_eq!(d.groups["h"].state, GroupState::Pending);
    assert_eq!(d.nodes[&id("h1")].step, Step::Staged);
}

#[test]
fn a_profile_out_of_range_is_refused_naming_the_field() {
    let cfg = config();
    let ns = nodes("1.0.0");
    let ctx = StartCtx { current: None, nodes: &ns, config: &cfg, leader: &id("c1"), id: "op", now: 0, mutant: None };
    for (profile, field) in [
        (request::ProfileRequest { max_parallel_ses: Some(0), ..Default::default() }, "max_parallel_ses 0"),
        (request::ProfileRequest { max_parallel_ses: Some(65), ..Default::default() }, "max_parallel_ses 65"),
        (request::ProfileRequest { max_transfers: Some(0), ..Default::default() }, "max_transfers 0"),
        (request::ProfileRequest { transfer_rate_mib: Some(0), ..Default::default() }, "transfer_rate_mib 0"),
    ] {
        let req = StartRequest { profile, ..upgrade_to("2.0.0") };
        let e = request::start(&req, &ctx).unwrap_err();
        assert_eq!(e.kind, RefusalKind::BadRequest);
        assert!(e.message.starts_with(field), "{e}");
    }
}

#[test]
fn max_transfers_stages_that_many_nodes_at_once_controllers_first() {
    let cfg = config();
    let ns = nodes("1.0.0");
    let sctx = StartCtx { current: None, nodes: &ns, config: &cfg, leader: &id("c1"), id: "op", now: 0, mutant: None };
    let profile = request::ProfileRequest { max_transfers: Some(1), ..Default::default() };
    let j = request::start(&StartRequest { profile, ..upgrade_to("2.0.0") }, &sctx).unwrap();
    let mut obs = Observed::default();
    for s in ["c1", "s1", "s2"] {
        obs.nodes.insert(id(s), seen("1.0.0", &format!("{s}-a"), &[]));
    }
    let d = core::next(&j, &obs, &ctx(1)).journal;
    let staging: Vec<&str> =
        d.nodes.iter().filter(|(_, n)| n.step == Step::Staging).map(|(id, _)| id.as_str()).collect();
    assert_eq!(staging, ["c1"]);
}

/// A journal written by main at 0fc8ecf (format 2), in the SE phase: a
/// group went on past s1, whose health gate failed; s2 is next.
const JOURNAL_0FC8ECF: &str = include_str!("fixtures/journal-0fc8ecf.json");

#[test]
fn a_journal_of_the_previous_format_is_migrated_and_resumed() {
    let v: serde_json::Value = serde_json::from_str(JOURNAL_0FC8ECF).unwrap();
    assert_eq!(v["format"], 2, "the fixture is of the previous format");
    let j = coordinator::journal::from_value(v).expect("migrated");
    assert_eq!(j.format, coordinator::journal::FORMAT);
    assert!(j.is_running());
    // What format 2 kept in prose is typed.
    let s1 = &j.nodes[&id("s1")];
    assert_eq!(s1.cause, Some(coordinator::journal::Cause::GateFailed));
    let passed = &j.groups["g1"].passed;
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0].se, id("s1"));
    assert_eq!(passed[0].reason, "health gate failed on 2.0.0: http://db/ answered 500");
    assert_eq!(j.nodes[&id("c1")].events[0].status, coordinator::journal::EventStatus::Done);
    // The new leader resumes it: s2 is drained next (s1 serves again).
    let obs = Observed {
        nodes: BTreeMap::from([
            (id("c1"), seen("2.0.0", "b1", &[])),
            (id("s1"), seen("2.0.0", "b2", &["db"])),
            (id("s2"), seen("1.0.0", "b3", &["db"])),
        ]),
        ..Default::default()
    };
    let d = core::next(&j, &obs, &ctx(10_000));
    assert_eq!(d.journal.nodes[&id("s2")].step, Step::Draining, "{:?}", d.journal.nodes[&id("s2")]);
    // Read back as the current format, it round-trips.
    let again = coordinator::journal::from_value(serde_json::to_value(&d.journal).unwrap()).unwrap();
    assert_eq!(again, d.journal);
}

#[test]
fn a_journal_of_a_newer_format_is_refused_by_name() {
    let mut v: serde_json::Value = serde_json::from_str(JOURNAL_0FC8ECF).unwrap();
    v["format"] = 9.into();
    let e = coordinator::journal::from_value(v).unwrap_err();
    assert!(e.contains("format 9") && e.contains("newer molt"), "{e}");
}

#[test]
fn the_clusters_reformation_rule_is_the_deadline_for_a_node_down_while_staging() {
    let mut j = start(ActionOnError::Suspend);
    j.config.rules.reform_timeout_secs = Some(10);
    let timeouts = Timeouts::default().under(&j.config);
    assert_eq!(timeouts.reform, 10_000, "the rule, not the node's 300 s");
    let mut obs = Observed::default();
    for n in ["c1", "s1", "s2"] {
        obs.nodes.insert(id(n), seen("1.0.0", "b", &[]));
    }
    let c = |now| Ctx { now, generation: 1, timeouts, mutant: None };
    let j = core::next(&j, &obs, &c(1_000)).journal;
    assert_eq!(j.nodes[&id("s1")].step, Step::Staging);
    obs.nodes.get_mut(&id("s1")).unwrap().up = false;
    let j = core::next(&j, &obs, &c(2_000)).journal;
    let waiting = coordinator::view::waiting(&j, 7_000, timeouts);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert!(waiting[0].starts_with("waiting for s1: down for 5 s while staging (since 00:00:02 UTC)"), "{waiting:?}");
    assert!(waiting[0].contains("gives up on it in 5 s (reform_timeout_secs 10"), "{waiting:?}");
    let still = core::next(&j, &obs, &c(11_000)).journal;
    assert!(still.is_running(), "9 s down: not yet");
    let ended = core::next(&still, &obs, &c(12_500)).journal;
    assert!(!ended.is_running(), "10 s down: given up");
    assert!(ended.reason.contains("s1: down for 10 s while staging"), "{}", ended.reason);
}

#[test]
fn a_journal_whose_references_do_not_hold_is_refused_when_it_is_read() {
    let mut v: serde_json::Value = serde_json::from_str(JOURNAL_0FC8ECF).unwrap();
    v["groups"]["g1"]["ses"].as_array_mut().unwrap().push("s9".into());
    let e = coordinator::journal::from_value(v).unwrap_err();
    assert_eq!(e, "the journal's group g1 names s9, which is not one of its nodes");
    let mut v: serde_json::Value = serde_json::from_str(JOURNAL_0FC8ECF).unwrap();
    v["drained"] = serde_json::json!(["c9"]);
    let e = coordinator::journal::from_value(v).unwrap_err();
    assert_eq!(e, "the journal keeps c9 out of service, which is not one of its nodes");
}

#[test]
fn the_distribution_pre_checks_are_decided_with_the_start() {
    use coordinator::request::{CheckResult, NodeHealth, RefusalKind};
    let req = upgrade_to("2.0.0");
    let check = |ns: &[NodeSummary], name: &str| {
        let (checks, failed) = request::distribution_checks(&req, ns);
        (checks.into_iter().find(|c| c.check == name).unwrap(), failed)
    };
    let mut ns = nodes("1.0.0");
    let (c, failed) = check(&ns, "nodes_up");
    assert_eq!((c.result, failed), (CheckResult::Ok, None));
    ns[1].health = NodeHealth { down: true, ..Default::default() };
    let (c, failed) = check(&ns, "nodes_up");
    assert_eq!((c.result, failed), (CheckResult::Error, Some(RefusalKind::PreconditionFailed)));
    assert!(c.message.contains("nodes not heartbeating: s1"), "{}", c.message);
    // Too little disk, unless the node already holds the image.
    let mut ns = nodes("1.0.0");
    ns[2].health = NodeHealth { disk_free: Some(1), ..Default::default() };
    let (c, failed) = check(&ns, "disk_space");
    assert_eq!((c.result, failed), (CheckResult::Error, Some(RefusalKind::InsufficientStorage)));
    ns[2].health.staged = vec![req.image.sha256];
    assert_eq!(check(&ns, "disk_space").0.result, CheckResult::Ok);
    // A docker node and only the vm package.
    let mut ns = nodes("1.0.0");
    ns[0].kind = DeploymentKind::Docker;
    let (c, failed) = check(&ns, "deployment_kind");
    assert_eq!((c.result, failed), (CheckResult::Error, Some(RefusalKind::BadRequest)));
    // And request::start refuses with every check, the distribution's first.
    let cfg = config();
    let ctx = StartCtx { current: None, nodes: &ns, config: &cfg, leader: &id("c1"), id: "op", now: 0, mutant: None };
    let e = request::start(&req, &ctx).unwrap_err();
    assert_eq!(e.kind, RefusalKind::BadRequest);
    assert_eq!(e.prechecks[0].check, "image");
}
