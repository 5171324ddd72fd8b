//! The benchmarks' command line, one parser for all of them: `--help`
//! prints what a bench measures and its flags, and exits 0 before anything
//! runs; an unknown flag, a flag without its value, or a value that does
//! not parse exits 2 naming it, before anything runs.

use std::{collections::BTreeMap, str::FromStr};

/// One flag: its name (`--runs`), what it sets, its default.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// `--name`.
    pub name: &'static str,
    /// What it sets.
    pub help: &'static str,
    /// Its value when not given.
    pub default: &'static str,
}

/// A bench's parsed command line.
#[derive(Debug)]
pub struct Args {
    values: BTreeMap<&'static str, String>,
}

/// Ends the bench before anything runs, saying what is wrong: exit 2, as
/// for a flag that does not parse.
#[allow(clippy::exit, reason = "a bench's command-line refusal, before anything runs")]
pub fn refuse(why: &str) -> ! {
    eprintln!("error: {why}; see --help");
    std::process::exit(2)
}

impl Args {
    /// Parses this process's arguments against `flags`; `about` is the
    /// bench's description (its usage line first).
    pub fn parse(about: &str, flags: &[Flag]) -> Self {
        match Self::from(std::env::args().skip(1), flags) {
            Ok(Some(a)) => a,
            Ok(None) => {
                println!("{about}\n\nflags:");
                for f in flags {
                    println!("  {:<18} {} (default {})", format!("{} V", f.name), f.help, f.default);
                }
                std::process::exit(0)
            }
            Err(e) => refuse(&e),
        }
    }

    /// This process's arguments, parsed once (the first call, at the top of
    /// `main`, ends the bench on `--help` or a bad flag before anything runs).
    pub fn global(about: &str, flags: &[Flag]) -> &'static Self {
        static ARGS: std::sync::OnceLock<Args> = std::sync::OnceLock::new();
        ARGS.get_or_init(|| Self::parse(about, flags))
    }

    /// Parses `args`: `None` when help was asked for.
    pub fn from(args: impl IntoIterator<Item = String>, flags: &[Flag]) -> Result<Option<Self>, String> {
        let mut values: BTreeMap<&'static str, String> = flags.iter().map(|f| (f.name, f.default.to_owned())).collect();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if a == "--help" || a == "-h" {
                return Ok(None);
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (a.clone(), None),
            };
            let Some(f) = flags.iter().find(|f| f.name == name) else {
                return Err(format!("unknown argument {a:?}"));
            };
            let v = inline.or_else(|| it.next()).ok_or_else(|| format!("{} needs a value", f.name))?;
            values.insert(f.name, v);
        }
        Ok(Some(Self { values }))
    }

    /// The value of `flag`, parsed; exits 2 naming it when it does not parse.
    pub fn get<T: FromStr>(&self, flag: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.values.get(flag).unwrap_or_else(|| panic!("{flag} is not a flag of this bench"));
        raw.parse().unwrap_or_else(|e| refuse(&format!("{flag} {raw:?}: {e}")))
    }

    /// The value of `flag` as given.
    pub fn text(&self, flag: &str) -> String {
        self.values.get(flag).unwrap_or_else(|| panic!("{flag} is not a flag of this bench")).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[Flag { name: "--runs", help: "runs", default: "3" }];

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        Args::from(args.iter().map(|s| s.to_string()), FLAGS)
    }

    #[test]
    fn flags_parse_help_stops_and_unknown_ones_are_refused() {
        assert_eq!(parse(&[]).unwrap().unwrap().get::<u32>("--runs"), 3);
        assert_eq!(parse(&["--runs", "5"]).unwrap().unwrap().get::<u32>("--runs"), 5);
        assert_eq!(parse(&["--runs=7"]).unwrap().unwrap().get::<u32>("--runs"), 7);
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--runs", "2", "-h"]).unwrap().is_none());
        assert_eq!(parse(&["--rusn", "2"]).unwrap_err(), "unknown argument \"--rusn\"");
        assert_eq!(parse(&["--runs"]).unwrap_err(), "--runs needs a value");
    }
}

/// The local clusters this bench has up, powered off if it is interrupted.
static LIVE: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

fn local_down(dir: &std::path::Path) {
    let _ = std::process::Command::new(crate::bin("molt"))
        .args(["local", "down", "--cluster-dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// A local cluster a bench made: powered off when this is dropped (at the
/// end of its run, or by a panic, such as `println!` into a closed pipe), and
/// when the bench gets SIGINT, SIGTERM or SIGHUP. Declare it after the
/// temporary dir that holds the cluster, so the cluster is down before its
/// dir is removed.
#[derive(Debug)]
pub struct Down(std::path::PathBuf);

impl Down {
    /// Watches `dir` (from within the bench's tokio runtime).
    pub fn new(dir: &std::path::Path) -> Self {
        static SIGNALS: std::sync::Once = std::sync::Once::new();
        SIGNALS.call_once(|| {
            tokio::spawn(async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {}, _ = hup.recv() => {} }
                let live = LIVE.lock().expect("live clusters").clone();
                for dir in &live {
                    local_down(dir);
                }
                eprintln!("interrupted: {} local cluster(s) powered off", live.len());
                std::process::exit(130);
            });
        });
        LIVE.lock().expect("live clusters").push(dir.to_owned());
        eprintln!("local cluster {} (powered off when the bench ends or is interrupted)", dir.display());
        Self(dir.to_owned())
    }

    /// `molt local up --cluster-dir DIR ARGS...`, watched.
    pub fn up(dir: &std::path::Path, args: &[&str]) -> Self {
        let down = Self::new(dir);
        let st = std::process::Command::new(crate::bin("molt"))
            .args(["local", "up", "--cluster-dir"])
            .arg(dir)
            .args(args)
            .status()
            .expect("molt local up");
        assert!(st.success(), "molt local up {args:?} failed");
        down
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        local_down(&self.0);
        LIVE.lock().expect("live clusters").retain(|d| d != &self.0);
    }
}

pub mod critical;

/// CPU seconds (user + system) process `pid` has used (0 once it is gone).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    // USER_HZ: 100 on every Linux architecture molt runs on.
    (ticks(11) + ticks(12)) / 100.0
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`), 0 if absent.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// The CPU time and the largest resident memory of some nodes of a local
/// cluster over a while, their reboots included: each node's process is
/// the one its `init.pid` names at each sample (a node that rebooted is a
/// new process; the CPU time of the one before is kept).
#[derive(Debug)]
pub struct NodeUsage {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: Option<std::thread::JoinHandle<(f64, u64)>>,
}

impl NodeUsage {
    /// Samples the nodes `ids` of the cluster in `dir` every 100 ms until [`NodeUsage::end`].
    pub fn watch(dir: &std::path::Path, ids: &[&str]) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let files: Vec<std::path::PathBuf> = ids.iter().map(|id| dir.join("nodes").join(id).join("init.pid")).collect();
        let done = stop.clone();
        let sampler = std::thread::spawn(move || {
            // Per node: (its pid now, CPU seconds of its processes before this one, at the start).
            let pid = |f: &std::path::Path| std::fs::read_to_string(f).ok().and_then(|p| p.trim().parse::<u32>().ok());
            let mut nodes: Vec<(Option<u32>, f64, f64)> = files
                .iter()
                .map(|f| {
                    let p = pid(f);
                    (p, 0.0, p.map_or(0.0, cpu_secs))
                })
                .collect();
            let mut last: Vec<f64> = nodes.iter().map(|n| n.2).collect();
            let mut rss_max = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, f) in files.iter().enumerate() {
                    let now = pid(f);
                    if now != nodes[i].0 {
                        // Rebooted: the previous process's time, as last seen, is kept.
                        nodes[i].1 += last[i] - nodes[i].2;
                        nodes[i].0 = now;
                        nodes[i].2 = 0.0;
                        last[i] = 0.0;
                    }
                    if let Some(p) = now {
                        last[i] = cpu_secs(p).max(last[i]);
                        rss_max = rss_max.max(status_kib(p, "VmRSS:"));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let cpu: f64 = nodes.iter().zip(&last).map(|(n, l)| n.1 + l - n.2).sum();
            (cpu, rss_max)
        });
        Self { stop, sampler: Some(sampler) }
    }

    /// Stops sampling: the nodes' CPU seconds in all, and the largest
    /// resident memory any of them had (KiB).
    pub fn end(mut self) -> (f64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.sampler.take().and_then(|s| s.join().ok()).unwrap_or_default()
    }
}
