//! molt's property and fuzz targets, on stable Rust and without an engine:
//! a seeded generator ([`Rng`]) drives each target for a number of cases, and
//! each case checks the target's properties. A case is replayed from its seed
//! and number alone (`molt-fuzz --target T --seed S --case K`).
//!
//! Targets ([`TARGETS`]): `package` (verify and unpack against the payload
//! model), `manifest`, `rest` (REST bodies and the configuration they change),
//! `heartbeat` (wire heartbeats into domain ones), `node-toml`.
//!
//! `cargo test -p molt-fuzz` runs 10,000 cases of each; the binary runs
//! longer campaigns. Cases that once failed are kept in `tests/regressions.rs`.
#![deny(missing_docs)]

pub mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator of case `case` of a campaign seeded with `seed`.
    pub fn for_case(seed: u64, case: u64) -> Self {
        let mut r = Rng((seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        r.bits();
        r
    }
    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.bits() % n
    }
    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    /// One of `from`.
    pub fn pick<'a, T: ?Sized>(&mut self, from: &[&'a T]) -> &'a T {
        from[self.below(from.len() as u64) as usize]
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.bits() as u8).collect()
    }
    /// Fewer than `max` random bytes.
    pub fn bytes_below(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }
    /// A string that is often hostile: control characters, escapes,
    /// multi-byte characters, long runs, or something ordinary.
    pub fn text(&mut self) -> String {
        const PIECES: [&str; 16] = [
            "",
            "a",
            "g1",
            "se-1",
            "c1",
            "1.0.0",
            "2.0.0",
            "127.0.0.1:8443",
            "\u{1b}[2J",
            "\n",
            "\0",
            "é",
            "..",
            "/",
            "{",
            "active-active",
        ];
        let n = self.below(6);
        let mut s: String = (0..n).map(|_| self.pick(&PIECES)).collect();
        if self.one_in(20) {
            s.push_str(&"x".repeat(self.below(300) as usize));
        }
        s
    }
}

/// What a case found: the property it broke, or the panic it caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The case number (with the campaign's seed, it replays the case).
    pub case: u64,
    /// What went wrong.
    pub message: String,
}

/// What a campaign saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Cases run.
    pub cases: u64,
    /// Cases the code under test accepted (the rest it refused with an error).
    pub accepted: u64,
    /// Cases that broke a property or panicked.
    pub failures: Vec<Failure>,
}

/// One target: its name and one case (`Ok(true)` accepted, `Ok(false)` refused cleanly).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name for `--target`.
    pub name: &'static str,
    /// What it checks.
    pub about: &'static str,
    /// Runs one case.
    pub run: fn(&mut Rng) -> Result<bool, String>,
}

/// Every target.
pub const TARGETS: [Target; 5] = [
    Target {
        name: "package",
        about: "random hostile payloads and mutated packages: verify agrees with unpack, nothing escapes the slot, a refusal changes nothing",
        run: targets::package::case,
    },
    Target {
        name: "manifest",
        about: "random and mutated package headers: no panic; an accepted manifest is consistent and round-trips",
        run: targets::manifest::case,
    },
    Target {
        name: "rest",
        about: "random JSON bodies of the REST API, and the configuration changes they make: no panic; what is accepted is valid",
        run: targets::rest::case,
    },
    Target {
        name: "heartbeat",
        about: "random wire heartbeats: no panic; an accepted one has bounded printable strings and a parseable address",
        run: targets::heartbeat::case,
    },
    Target {
        name: "node-toml",
        about: "mutated node.toml files: no panic; accepted settings hold every validated rule",
        run: targets::node_toml::case,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Runs cases `first..first + cases` of `target` from `seed`.
pub fn campaign(target: &Target, seed: u64, first: u64, cases: u64) -> Report {
    let mut report = Report::default();
    for case in first..first + cases {
        let mut rng = Rng::for_case(seed, case);
        report.cases += 1;
        match catch_unwind(AssertUnwindSafe(|| (target.run)(&mut rng))) {
            Ok(Ok(true)) => report.accepted += 1,
            Ok(Ok(false)) => {}
            Ok(Err(message)) => report.failures.push(Failure { case, message }),
            Err(panic) => {
                let message = format!("panicked: {}", common::panic_message(&*panic));
                report.failures.push(Failure { case, message });
            }
        }
    }
    report
}
