//! molt's upgrade coordinator, pure: the configuration model and placement,
//! the typed journal, the decision function [`core::next`], operators'
//! requests ([`request`]), the status as a view of the journal ([`view`]),
//! the invariants ([`invariants`]) and a deterministic simulation ([`sim`])
//! that checks them over seeded fault schedules (`molt-sim`).
//!
//! Nothing here does I/O or reads a clock: the leader's driver feeds it what
//! its heartbeats say and carries out the actions it returns, after writing
//! the journal it returns.

pub mod config;
pub mod core;
pub mod driver;
pub mod eta;
mod events;
pub mod invariants;
pub mod journal;
pub mod observed;
pub mod placement;
pub mod request;
pub mod sim;
pub mod traffic;
pub mod view;

/// A known defect, put back on purpose so the simulation can show it finds
/// it. Only `molt-sim` and the simulation tests set one; the product passes
/// `None` everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutant {
    /// The start's check ("nothing runs") and its act (write the journal)
    /// happen under different locks, so two starts at once both pass.
    ConcurrentStart,
    /// A group rolled back after an SE failure is told to roll back before
    /// the journal says so, all its SEs at once, none drained.
    RollbackUnjournaled,
    /// The SEs out of service are kept in memory only.
    DrainedInMemory,
    /// The two-versions pre-check looks at the controllers only.
    TwoVersions,
    /// A leader acts without checking that a majority of the controllers
    /// still answers it: cut off and replaced, it goes on writing and
    /// commanding on its old term.
    StaleLeader,
    /// Every node of a mixed cluster is sent the first image, whatever its
    /// deployment kind.
    OneImage,
    /// A paused upgrade goes on starting the next SE of a group.
    PauseIgnored,
    /// An abort after the commit stops the groups where they are, leaving
    /// a group's upgraded SEs beside its old ones.
    AbortInPlace,
    /// A group that moves several SEs at once takes two SEs of one virtual
    /// service out of service together.
    ParallelSharesService,
    /// A failing health gate counts as passed.
    GateIgnored,
    /// The driver carries out a decision whose journal a majority did not
    /// confirm.
    ActOnFailedWrite,
    /// The driver re-sends commands of a journal it did not write in this
    /// step without asking whether a majority still follows it.
    ResendUnconfirmed,
    /// The driver never takes a fetch grant back.
    GrantKept,
    /// A suspended operation's journal keeps its SEs out of service.
    DrainedAfterHalt,
}

impl Mutant {
    /// Every mutant.
    pub const ALL: [Mutant; 14] = [
        Mutant::ConcurrentStart,
        Mutant::RollbackUnjournaled,
        Mutant::DrainedInMemory,
        Mutant::TwoVersions,
        Mutant::StaleLeader,
        Mutant::OneImage,
        Mutant::PauseIgnored,
        Mutant::AbortInPlace,
        Mutant::ParallelSharesService,
        Mutant::GateIgnored,
        Mutant::ActOnFailedWrite,
        Mutant::ResendUnconfirmed,
        Mutant::GrantKept,
        Mutant::DrainedAfterHalt,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::ConcurrentStart => "concurrent-start",
            Mutant::RollbackUnjournaled => "rollback-unjournaled",
            Mutant::DrainedInMemory => "drained-in-memory",
            Mutant::TwoVersions => "two-versions",
            Mutant::StaleLeader => "stale-leader",
            Mutant::OneImage => "one-image",
            Mutant::PauseIgnored => "pause-ignored",
            Mutant::AbortInPlace => "abort-in-place",
            Mutant::ParallelSharesService => "parallel-shares-service",
            Mutant::GateIgnored => "gate-ignored",
            Mutant::ActOnFailedWrite => "act-on-failed-write",
            Mutant::ResendUnconfirmed => "resend-unconfirmed",
            Mutant::GrantKept => "grant-kept",
            Mutant::DrainedAfterHalt => "drained-after-halt",
        }
    }

    /// What it breaks.
    pub fn describe(self) -> &'static str {
        match self {
            Mutant::ConcurrentStart => "the start checks then acts outside the operation gate",
            Mutant::RollbackUnjournaled => "the group rollback acts before it journals (all SEs at once, undrained)",
            Mutant::DrainedInMemory => "the drained set is not journaled",
            Mutant::TwoVersions => "the two-versions check looks at the controllers only",
            Mutant::StaleLeader => "a leader cut off from the other controllers goes on writing and commanding",
            Mutant::OneImage => "a mixed cluster's nodes all get the vm image",
            Mutant::PauseIgnored => "a paused upgrade goes on starting SEs",
            Mutant::AbortInPlace => "an abort after the commit leaves groups partly upgraded",
            Mutant::ParallelSharesService => "max_parallel_ses takes two SEs of one virtual service out together",
            Mutant::GateIgnored => "an SE whose health gate failed counts as upgraded",
            Mutant::ActOnFailedWrite => "the driver acts on a journal a majority did not confirm",
            Mutant::ResendUnconfirmed => "the driver re-sends old commands without asking a majority",
            Mutant::GrantKept => "the driver never takes a fetch grant back",
            Mutant::DrainedAfterHalt => "a suspended operation keeps its SEs out of service",
        }
    }

    /// By name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }
}
