//! The coordinator under seeded fault schedules: no invariant breaks over
//! 2,000 schedules, and every known defect put back is found.

use coordinator::{
    Mutant,
    sim::{self, FaultCounts},
};

/// Runs `count` schedules from `seed` on two threads; returns the failing
/// seeds with their first violation, and the faults injected.
fn run(seed: u64, count: u64, mutant: Option<Mutant>) -> (Vec<(u64, String)>, FaultCounts) {
    let half = count / 2;
    let parts = [(seed, half), (seed + half, count - half)];
    let handles: Vec<_> =
        parts.into_iter().map(|(s, n)| std::thread::spawn(move || sim::run_many(s, n, mutant))).collect();
    let mut failing = vec![];
    let mut faults = FaultCounts::new();
    for h in handles {
        for r in h.join().expect("simulation thread") {
            for (k, n) in r.faults {
                *faults.entry(k).or_default() += n;
            }
            if let Some(v) = r.violations.first() {
                failing.push((r.seed, v.clone()));
            }
        }
    }
    (failing, faults)
}

#[test]
fn two_thousand_schedules_break_no_invariant() {
    let (failing, faults) = run(1, 2_000, None);
    let replay: Vec<String> =
        failing.iter().take(5).map(|(s, v)| format!("{v}\n  replay: {}", sim::replay_command(*s, None))).collect();
    assert!(failing.is_empty(), "{} schedules broke an invariant:\n{}", failing.len(), replay.join("\n"));
    // The schedules really injected each kind of fault, in the steps that matter.
    for (kind, step) in [
        ("leader-crash", "controllers"),
        ("leader-crash", "service_engines"),
        ("leader-crash", "distribute"),
        ("leader-partitioned", "controllers"),
        ("leader-partitioned", "service_engines"),
        ("leader-partitioned", "distribute"),
        ("leader-disk-full", "distribute"),
        ("leader-disk-full", "service_engines"),
        ("power-off", "stage"),
        ("power-off", "apply"),
        ("power-off", "reboot"),
        ("power-off", "rejoin"),
        ("power-off", "commit"),
        ("power-off", "rollback"),
        ("power-off", "drain"),
        ("message-lost", "apply"),
        ("message-delayed", "commit"),
        ("disk-full", "stage"),
        ("image-does-not-boot", "reboot"),
        ("health-gate-fails", "gate"),
        ("request-at-once", "start"),
        ("request-at-once", "config-write"),
        ("request-at-once", "resume"),
        ("request-at-once", "rollback"),
        ("request-at-once", "prestage"),
        ("request-at-once", "pause"),
        ("request-at-once", "abort"),
        ("request-at-once", "upgrade-segroup"),
        ("request-at-once", "rollback-system"),
    ] {
        let n = faults.get(&(kind.to_owned(), step.to_owned())).copied().unwrap_or(0);
        assert!(n > 0, "no {kind} fault was injected in {step}: {faults:?}");
    }
}

#[test]
fn every_mutant_is_caught() {
    for m in Mutant::ALL {
        // Stop at the first violation: each is found within a few hundred schedules.
        let found = (1..=2_000u64).step_by(100).find_map(|s| {
            let (failing, _) = run(s, 100, Some(m));
            failing.into_iter().next()
        });
        let (seed, v) = found.unwrap_or_else(|| panic!("mutant {} was not caught in 2,000 schedules", m.name()));
        // And the failing seed replays the same violation.
        let again = sim::run(seed, Some(m));
        assert_eq!(again.violations.first(), Some(&v), "mutant {} does not replay", m.name());
    }
}

#[test]
fn a_schedule_replays_identically() {
    let a = sim::run_traced(17, None);
    let b = sim::run_traced(17, None);
    assert_eq!(a.1, b.1);
    assert!(!a.1.is_empty());
}
