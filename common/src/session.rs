//! The session protocol in domain terms. The wire forms live in `proto`;
//! [`crate::convert`] translates.

use crate::{DeploymentKind, NodeId, Role, Sha256Digest, Version};

/// An agent's observed state, sent every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender.
    pub node_id: NodeId,
    /// Sender's role.
    pub role: Role,
    /// Version of the active slot.
    pub version: Version,
    /// New on every boot of the agent.
    pub boot_id: String,
    /// How the node is deployed.
    pub deployment: DeploymentKind,
    /// SE group (Service Engines).
    pub se_group: Option<String>,
    /// Where the agent listens.
    pub addr: String,
    /// Free bytes where the node keeps its data.
    pub disk_free_bytes: u64,
    /// Images verified and kept in staging.
    pub staged: Vec<StagedImage>,
    /// Transfers in progress.
    pub transfers: Vec<Transfer>,
    /// Outcome of recent commands.
    pub results: Vec<CommandResult>,
    /// Increments with every heartbeat of a boot.
    pub seq: u64,
    /// The active slot is on trial (not committed).
    pub pending: bool,
    /// Version of the previous slot, if there is one.
    pub previous_version: Option<Version>,
    /// Virtual services this SE serves now.
    pub serving: Vec<String>,
}

/// An image held, verified, in a node's staging area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedImage {
    /// Its SHA-256.
    pub sha256: Sha256Digest,
    /// The version it installs.
    pub version: Version,
    /// Its size.
    pub size: u64,
}

/// A transfer in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The image.
    pub sha256: Sha256Digest,
    /// Bytes received and verified so far.
    pub received: u64,
    /// Total bytes.
    pub total: u64,
}

/// Where a command stands on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandState {
    /// Accepted and under way.
    Running,
    /// Done.
    Succeeded,
    /// Refused or failed; the message says why.
    Failed,
}

/// A command's outcome as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    /// The command's id.
    pub id: String,
    /// Its state.
    pub state: CommandState,
    /// Why it failed, or what it did.
    pub message: String,
    /// The boot of the agent that ran it, when it is not the one reporting
    /// it (empty: the reporting one).
    pub boot_id: String,
}

/// An order from the leader. Idempotent by `id`; fenced by `generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Unique id; a repeated id is not run twice.
    pub id: String,
    /// The leader's generation; commands from an older one are refused.
    pub generation: u64,
    /// What to do.
    pub kind: CommandKind,
    /// The operation it belongs to (its journal's id), as the node's logs
    /// and traces name it; none for a placement outside any operation.
    pub operation_id: Option<String>,
}

/// What a command orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// Fetch, verify and keep an image.
    Stage(ImageRef),
    /// Install a staged image into the inactive slot, activate it on trial, reboot.
    Apply(ImageRef),
    /// Keep the running slot (it must run `version`).
    Commit(Version),
    /// Return to the previous slot, which must hold this version, and reboot.
    Rollback(Version),
    /// Serve exactly these virtual services (SEs only).
    Place(Vec<ServiceSpec>),
    /// Run these health checks; succeeds when every one passes (SEs only).
    Gate(Vec<GateCheck>),
}

/// One health check of an SE group's gate, as the SE runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateCheck {
    /// `GET http://SE_ADDRESS:port/path` answers `status`, within `tries`
    /// tries a second apart.
    Http {
        /// The virtual service checked.
        virtual_service: String,
        /// Its port.
        port: u16,
        /// The path asked for.
        path: String,
        /// The status expected.
        status: u16,
        /// How many tries.
        tries: u32,
    },
    /// An executable on the node exits 0 within `timeout_secs`.
    Exec {
        /// The program (an absolute path) and its arguments.
        argv: Vec<String>,
        /// How long it may run.
        timeout_secs: u32,
    },
}

impl std::fmt::Display for GateCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GateCheck::Http { virtual_service, path, status, tries, .. } => {
                write!(f, "http {virtual_service} GET {path} answers {status} (up to {tries} tries)")
            }
            GateCheck::Exec { argv, timeout_secs } => write!(f, "exec {} (within {timeout_secs} s)", argv.join(" ")),
        }
    }
}

/// A virtual service as an SE serves it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceSpec {
    /// Its name.
    pub name: String,
    /// The TCP port it listens on.
    pub port: u16,
}

impl CommandKind {
    /// A short name for logs and events.
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::Stage(_) => "stage",
            CommandKind::Apply(_) => "apply",
            CommandKind::Commit(_) => "commit",
            CommandKind::Rollback(_) => "rollback",
            CommandKind::Place(_) => "place",
            CommandKind::Gate(_) => "gate",
        }
    }
}

/// An image as the leader describes it to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// SHA-256 of the package file.
    pub sha256: Sha256Digest,
    /// Its size.
    pub size: u64,
    /// The version it installs.
    pub version: Version,
    /// Its deployment kind.
    pub kind: DeploymentKind,
    /// Its minimum compatible version.
    pub min_compatible: Version,
}

/// The leader's greeting on a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The leader.
    pub leader_id: NodeId,
    /// The leader's generation.
    pub generation: u64,
    /// The interval at which the leader expects heartbeats.
    pub heartbeat_interval_ms: u32,
}

/// What the leader sends down a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderMessage {
    /// First message of a session.
    Welcome(Welcome),
    /// An order.
    Command(Command),
}
