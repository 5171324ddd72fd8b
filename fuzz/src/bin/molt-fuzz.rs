//! `molt-fuzz --target NAME --cases N [--seed S]`: runs a longer campaign of
//! one target (or `all`); prints what it saw, and as its last line
//! `cases: N, failures: F`; exits non-zero when F > 0. A failure prints the
//! command that replays it.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "molt-fuzz", about = "molt's property and fuzz targets")]
struct Args {
    /// A target name, or `all`.
    #[arg(long, default_value = "all")]
    target: String,
    /// Cases per target.
    #[arg(long, default_value_t = 10_000)]
    cases: u64,
    /// Seed of the campaign (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Run only this case (to replay a failure).
    #[arg(long)]
    case: Option<u64>,
    /// List the targets.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The descriptors of a node's agent at their tightest (`ulimit -n
    // 256`): the package target's unpacking must succeed within them.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((256, 256));
    if let Err(e) = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256.min(hard), hard) {
        eprintln!("warning: cannot lower the descriptor limit to 256: {e}");
    }
    if args.list {
        for t in molt_fuzz::TARGETS {
            println!("{:10} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    let targets: Vec<_> = if args.target == "all" {
        molt_fuzz::TARGETS.iter().collect()
    } else {
        match molt_fuzz::target(&args.target) {
            Some(t) => vec![t],
            None => {
                let names: Vec<_> = molt_fuzz::TARGETS.iter().map(|t| t.name).collect();
                eprintln!("error: no target {:?}; the targets are {}", args.target, names.join(", "));
                return ExitCode::from(2);
            }
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let (first, cases) = match args.case {
        Some(k) => (k, 1),
        None => (0, args.cases),
    };
    let (mut total, mut failures) = (0, 0);
    for t in targets {
        let started = std::time::Instant::now();
        let r = molt_fuzz::campaign(t, seed, first, cases);
        println!(
            "{}: {} cases ({} accepted, {} refused) in {:.1} s, {} failures",
            t.name,
            r.cases,
            r.accepted,
            r.cases - r.accepted - r.failures.len() as u64,
            started.elapsed().as_secs_f64(),
            r.failures.len()
        );
        for f in r.failures.iter().take(5) {
            println!("  case {}: {}", f.case, f.message);
            println!("  replay: molt-fuzz --target {} --seed {seed} --case {}", t.name, f.case);
        }
        total += r.cases;
        failures += r.failures.len();
    }
    println!("cases: {total}, failures: {failures}");
    if failures > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
