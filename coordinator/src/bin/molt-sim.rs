//! `molt-sim`: runs the coordinator's deterministic simulation over seeded
//! fault schedules and checks the invariants after every step.
//!
//! ```text
//! molt-sim [--schedules N] [--seed S] [--mutant NAME] [--list-mutants] [--trace]
//! ```
//! Prints the faults injected (kind × step), the outcomes, each violation
//! with the command that replays it, and as its last line
//! `schedules: N, violations: V`; exits 1 when V > 0.

use std::{collections::BTreeMap, process::ExitCode};

use coordinator::{Mutant, sim};

const USAGE: &str = "usage: molt-sim [--schedules N] [--seed S] [--mutant NAME] [--list-mutants] [--trace]";

struct Args {
    schedules: u64,
    seed: u64,
    mutant: Option<Mutant>,
    trace: bool,
    list: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { schedules: 1_000, seed: 1, mutant: None, trace: false, list: false };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        let number = |v: String| v.parse::<u64>().map_err(|_| format!("{v:?} is not a number\n{USAGE}"));
        match flag.as_str() {
            "--schedules" => a.schedules = number(value()?)?,
            "--seed" => a.seed = number(value()?)?,
            "--mutant" => {
                let name = value()?;
                a.mutant = Some(
                    Mutant::parse(&name)
                        .ok_or_else(|| format!("no mutant {name:?}; `molt-sim --list-mutants` lists them"))?,
                );
            }
            "--trace" => a.trace = true,
            "--list-mutants" => a.list = true,
            _ => return Err(USAGE.into()),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let Args { schedules, seed, mutant, trace, list } = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if list {
        for m in Mutant::ALL {
            println!("{:<22} {}", m.name(), m.describe());
        }
        return ExitCode::SUCCESS;
    }
    if trace {
        let (r, lines) = sim::run_traced(seed, mutant);
        for l in lines {
            println!("{l}");
        }
        for v in &r.violations {
            println!("VIOLATION {v}");
        }
        return if r.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let started = std::time::Instant::now();
    let mut faults: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut violations = 0u64;
    let mut first_failing = None;
    let mut virtual_ms = 0u64;
    // Schedules are independent: run them on every core, report in seed order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let chunk = schedules.div_ceil(threads).max(1);
    let reports: Vec<sim::Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let from = seed + t * chunk;
                let count = chunk.min((seed + schedules).saturating_sub(from));
                scope.spawn(move || sim::run_many(from, count, mutant))
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("simulation thread")).collect()
    });
    for r in reports {
        let s = r.seed;
        for (k, n) in r.faults {
            *faults.entry(k).or_default() += n;
        }
        for (k, n) in r.outcomes {
            *outcomes.entry(k).or_default() += n;
        }
        virtual_ms += r.virtual_ms;
        if !r.violations.is_empty() {
            violations += 1;
            if violations <= 5 {
                println!("seed {s}: {}", r.violations[0]);
                for v in &r.violations[1..] {
                    println!("    {v}");
                }
                println!("    replay: {}", sim::replay_command(s, mutant));
            }
            first_failing.get_or_insert(s);
        }
    }
    println!("faults injected (kind × step):");
    for ((kind, step), n) in &faults {
        println!("  {kind:<22} {step:<16} {n}");
    }
    println!("operations ended:");
    for (k, n) in &outcomes {
        println!("  {k:<30} {n}");
    }
    println!(
        "virtual time: {:.1} h in {:.1} s{}",
        virtual_ms as f64 / 3.6e6,
        started.elapsed().as_secs_f64(),
        mutant.map(|m| format!(", mutant {}", m.name())).unwrap_or_default()
    );
    if let Some(s) = first_failing {
        println!("first failing seed: {s}");
    }
    println!("schedules: {schedules}, violations: {violations}");
    if violations > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
