//! The one place where wire types (`proto::v1`) meet domain types. Incoming
//! messages are validated here (`TryFrom`), so the rest of molt only sees
//! well-formed values.

use proto::v1 as pb;

use crate::session::*;

/// A wire message that does not make a valid domain value.
#[derive(Debug, thiserror::Error)]
#[error("invalid {message}: {field}: {reason}")]
pub struct InvalidMessage {
    /// Which message.
    pub message: &'static str,
    /// Which field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl From<InvalidMessage> for tonic::Status {
    fn from(e: InvalidMessage) -> Self {
        crate::errors::ErrorKind::BadRequest.grpc(e.to_string())
    }
}

fn field<T, E: std::fmt::Display>(
    message: &'static str,
    field: &'static str,
    r: Result<T, E>,
) -> Result<T, InvalidMessage> {
    r.map_err(|e| InvalidMessage { message, field, reason: e.to_string() })
}

/// Bounds of what a node reports, checked where a heartbeat comes in: a
/// node's report goes into the leader's memory, its journal (replicated to
/// every controller) and its history, so none of it may be unbounded.
pub mod bounds {
    /// A command's id (`KIND-OPERATION-TRY-NODE`, or a reconcile's with a boot id).
    pub const ID: usize = 256;
    /// A command's message; a longer one is cut by its sender ([`super::one_line`]).
    pub const MESSAGE: usize = 1024;
    /// A virtual service's name.
    pub const NAME: usize = 64;
    /// Command results in one heartbeat (an agent keeps 64).
    pub const RESULTS: usize = 256;
    /// Staged images, and transfers, in one heartbeat.
    pub const IMAGES: usize = 64;
    /// Virtual services one SE serves.
    pub const SERVING: usize = 4096;
}

/// A list of at most `max` entries.
fn at_most<T>(message: &'static str, name: &'static str, v: Vec<T>, max: usize) -> Result<Vec<T>, InvalidMessage> {
    if v.len() > max {
        return Err(InvalidMessage { message, field: name, reason: format!("{} entries, more than {max}", v.len()) });
    }
    Ok(v)
}

/// `s` on one line of at most `max` bytes: control characters (a newline
/// in an error chain, a tool's output) become spaces, and a longer text is
/// cut at a character boundary with `…`. What an agent sends thus always
/// passes the leader's check ([`printable`]).
pub fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > max {
        let mut cut = max - '…'.len_utf8();
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

impl TryFrom<pb::Heartbeat> for Heartbeat {
    type Error = InvalidMessage;
    fn try_from(h: pb::Heartbeat) -> Result<Self, Self::Error> {
        const M: &str = "heartbeat";
        Ok(Heartbeat {
            node_id: field(M, "node_id", h.node_id.parse())?,
            role: field(M, "role", h.role.parse())?,
            version: field(M, "version", h.version.parse())?,
            boot_id: printable(M, "boot_id", h.boot_id, 64)?,
            deployment: field(M, "deployment", h.deployment.parse())?,
            se_group: Some(printable(M, "se_group", h.se_group, 64)?).filter(|g| !g.is_empty()),
            addr: {
                let addr = printable(M, "addr", h.addr, 64)?;
                field(M, "addr", addr.parse::<std::net::SocketAddr>())?;
                addr
            },
            disk_free_bytes: h.disk_free_bytes,
            staged: at_most(M, "staged", h.staged, bounds::IMAGES)?
                .into_iter()
                .map(|s| {
                    Ok(StagedImage {
                        sha256: field(M, "staged.sha256", s.sha256.parse())?,
                        version: field(M, "staged.version", s.version.parse())?,
                        size: s.size,
                    })
                })
                .collect::<Result<_, InvalidMessage>>()?,
            transfers: at_most(M, "transfers", h.transfers, bounds::IMAGES)?
                .into_iter()
                .map(|t| {
                    Ok(Transfer {
                        sha256: field(M, "transfers.sha256", t.sha256.parse())?,
                        received: t.received,
                        total: t.total,
                    })
                })
                .collect::<Result<_, InvalidMessage>>()?,
            results: at_most(M, "results", h.results, bounds::RESULTS)?
                .into_iter()
                .map(CommandResult::try_from)
                .collect::<Result<_, _>>()?,
            seq: h.seq,
            pending: h.pending,
            previous_version: if h.previous_version.is_empty() {
                None
            } else {
                Some(field(M, "previous_version", h.previous_version.parse())?)
            },
            serving: at_most(M, "serving", h.serving, bounds::SERVING)?
                .into_iter()
                .map(|v| printable(M, "serving", v, bounds::NAME))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<Heartbeat> for pb::Heartbeat {
    fn from(h: Heartbeat) -> Self {
        pb::Heartbeat {
            node_id: h.node_id.to_string(),
            role: h.role.to_string(),
            version: h.version.to_string(),
            boot_id: h.boot_id,
            deployment: h.deployment.to_string(),
            se_group: h.se_group.unwrap_or_default(),
            addr: h.addr,
            disk_free_bytes: h.disk_free_bytes,
            staged: h
                .staged
                .into_iter()
                .map(|s| pb::StagedImage { sha256: s.sha256.to_hex(), version: s.version.to_string(), size: s.size })
                .collect(),
            transfers: h
                .transfers
                .into_iter()
                .map(|t| pb::Transfer { sha256: t.sha256.to_hex(), received: t.received, total: t.total })
                .collect(),
            results: h.results.into_iter().map(Into::into).collect(),
            seq: h.seq,
            pending: h.pending,
            previous_version: h.previous_version.map(|v| v.to_string()).unwrap_or_default(),
            serving: h.serving,
        }
    }
}

impl TryFrom<pb::CommandResult> for CommandResult {
    type Error = InvalidMessage;
    fn try_from(r: pb::CommandResult) -> Result<Self, Self::Error> {
        let state = match pb::CommandState::try_from(r.state) {
            Ok(pb::CommandState::Running) => CommandState::Running,
            Ok(pb::CommandState::Succeeded) => CommandState::Succeeded,
            Ok(pb::CommandState::Failed) => CommandState::Failed,
            _ => {
                return Err(InvalidMessage {
                    message: "command result",
                    field: "state",
                    reason: format!("unknown state {}", r.state),
                });
            }
        };
        const M: &str = "command result";
        let id = printable(M, "id", r.id, bounds::ID)?;
        let message = printable(M, "message", r.message, bounds::MESSAGE)?;
        let boot_id = printable(M, "boot_id", r.boot_id, 64)?;
        Ok(CommandResult { id, state, message, boot_id })
    }
}

impl From<CommandResult> for pb::CommandResult {
    fn from(r: CommandResult) -> Self {
        let state = match r.state {
            CommandState::Running => pb::CommandState::Running,
            CommandState::Succeeded => pb::CommandState::Succeeded,
            CommandState::Failed => pb::CommandState::Failed,
        };
        let message = one_line(&r.message, bounds::MESSAGE);
        pb::CommandResult { id: r.id, state: state as i32, message, boot_id: r.boot_id }
    }
}

impl TryFrom<pb::ImageRef> for ImageRef {
    type Error = InvalidMessage;
    fn try_from(i: pb::ImageRef) -> Result<Self, Self::Error> {
        const M: &str = "image";
        Ok(ImageRef {
            sha256: field(M, "sha256", i.sha256.parse())?,
            size: i.size,
            version: field(M, "version", i.version.parse())?,
            kind: field(M, "kind", i.kind.parse())?,
            min_compatible: field(M, "min_compatible", i.min_compatible.parse())?,
        })
    }
}

impl From<ImageRef> for pb::ImageRef {
    fn from(i: ImageRef) -> Self {
        pb::ImageRef {
            sha256: i.sha256.to_hex(),
            size: i.size,
            version: i.version.to_string(),
            kind: i.kind.to_string(),
            min_compatible: i.min_compatible.to_string(),
        }
    }
}

impl TryFrom<pb::Command> for Command {
    type Error = InvalidMessage;
    fn try_from(c: pb::Command) -> Result<Self, Self::Error> {
        let missing = |field| InvalidMessage { message: "command", field, reason: "missing".into() };
        if c.id.is_empty() || c.id.len() > 128 {
            return Err(InvalidMessage { message: "command", field: "id", reason: "must be 1-128 characters".into() });
        }
        let kind = match c.kind.ok_or_else(|| missing("kind"))? {
            pb::command::Kind::Stage(s) => {
                CommandKind::Stage(s.image.ok_or_else(|| missing("stage.image"))?.try_into()?)
            }
            pb::command::Kind::Apply(a) => {
                CommandKind::Apply(a.image.ok_or_else(|| missing("apply.image"))?.try_into()?)
            }
            pb::command::Kind::Commit(c) => CommandKind::Commit(field("commit", "version", c.version.parse())?),
            pb::command::Kind::Rollback(r) => {
                CommandKind::Rollback(field("rollback", "to_version", r.to_version.parse())?)
            }
            pb::command::Kind::Place(p) => CommandKind::Place(
                p.services
                    .into_iter()
                    .map(|s| {
                        let port = u16::try_from(s.port).ok().filter(|p| *p > 0);
                        let port = field("place", "port", port.ok_or("must be 1-65535"))?;
                        Ok(ServiceSpec { name: s.name, port })
                    })
                    .collect::<Result<_, InvalidMessage>>()?,
            ),
            pb::command::Kind::Gate(g) => CommandKind::Gate(
                g.checks
                    .into_iter()
                    .map(|c| match c.kind.ok_or_else(|| missing("gate.kind"))? {
                        pb::gate_check::Kind::Http(h) => {
                            let port = u16::try_from(h.port).ok().filter(|p| *p > 0);
                            let status = u16::try_from(h.status).ok().filter(|s| (100..=599).contains(s));
                            Ok(GateCheck::Http {
                                virtual_service: h.virtual_service,
                                port: field("gate", "port", port.ok_or("must be 1-65535"))?,
                                path: h.path,
                                status: field("gate", "status", status.ok_or("must be 100-599"))?,
                                tries: h.tries.clamp(1, 60),
                            })
                        }
                        pb::gate_check::Kind::Exec(e) if e.argv.is_empty() => {
                            Err(InvalidMessage { message: "gate", field: "argv", reason: "empty".into() })
                        }
                        pb::gate_check::Kind::Exec(e) => {
                            Ok(GateCheck::Exec { argv: e.argv, timeout_secs: e.timeout_secs.clamp(1, 600) })
                        }
                    })
                    .collect::<Result<_, InvalidMessage>>()?,
            ),
        };
        if c.operation_id.len() > 128 || c.operation_id.chars().any(char::is_control) {
            return Err(InvalidMessage {
                message: "command",
                field: "operation_id",
                reason: "must be at most 128 printable characters".into(),
            });
        }
        let operation_id = Some(c.operation_id).filter(|o| !o.is_empty());
        Ok(Command { id: c.id, generation: c.generation, kind, operation_id })
    }
}

impl From<Command> for pb::Command {
    fn from(c: Command) -> Self {
        let kind = match c.kind {
            CommandKind::Stage(i) => pb::command::Kind::Stage(pb::Stage { image: Some(i.into()) }),
            CommandKind::Apply(i) => pb::command::Kind::Apply(pb::Apply { image: Some(i.into()) }),
            CommandKind::Commit(v) => pb::command::Kind::Commit(pb::Commit { version: v.to_string() }),
            CommandKind::Rollback(v) => pb::command::Kind::Rollback(pb::Rollback { to_version: v.to_string() }),
            CommandKind::Place(services) => pb::command::Kind::Place(pb::Place {
                services: services.into_iter().map(|s| pb::ServiceSpec { name: s.name, port: s.port.into() }).collect(),
            }),
            CommandKind::Gate(checks) => pb::command::Kind::Gate(pb::Gate {
                checks: checks
                    .into_iter()
                    .map(|c| pb::GateCheck {
                        kind: Some(match c {
                            GateCheck::Http { virtual_service, port, path, status, tries } => {
                                pb::gate_check::Kind::Http(pb::HttpCheck {
                                    virtual_service,
                                    port: port.into(),
                                    path,
                                    status: status.into(),
                                    tries,
                                })
                            }
                            GateCheck::Exec { argv, timeout_secs } => {
                                pb::gate_check::Kind::Exec(pb::ExecCheck { argv, timeout_secs })
                            }
                        }),
                    })
                    .collect(),
            }),
        };
        pb::Command {
            id: c.id,
            generation: c.generation,
            kind: Some(kind),
            operation_id: c.operation_id.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::LeaderMessage> for LeaderMessage {
    type Error = InvalidMessage;
    fn try_from(m: pb::LeaderMessage) -> Result<Self, Self::Error> {
        match m.kind {
            Some(pb::leader_message::Kind::Welcome(w)) => Ok(LeaderMessage::Welcome(Welcome {
                leader_id: field("welcome", "leader_id", w.leader_id.parse())?,
                generation: w.generation,
                heartbeat_interval_ms: w.heartbeat_interval_ms,
            })),
            Some(pb::leader_message::Kind::Command(c)) => Ok(LeaderMessage::Command(c.try_into()?)),
            None => Err(InvalidMessage { message: "leader message", field: "kind", reason: "missing".into() }),
        }
    }
}

impl From<LeaderMessage> for pb::LeaderMessage {
    fn from(m: LeaderMessage) -> Self {
        let kind = match m {
            LeaderMessage::Welcome(w) => pb::leader_message::Kind::Welcome(pb::Welcome {
                leader_id: w.leader_id.to_string(),
                generation: w.generation,
                heartbeat_interval_ms: w.heartbeat_interval_ms,
            }),
            LeaderMessage::Command(c) => pb::leader_message::Kind::Command(c.into()),
        };
        pb::LeaderMessage { kind: Some(kind) }
    }
}

/// Wraps a heartbeat for the session stream.
pub fn agent_message(h: Heartbeat) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(pb::agent_message::Kind::Heartbeat(h.into())) }
}

/// One chunk of an image on the wire.
pub fn image_chunk(offset: u64, data: bytes::Bytes) -> pb::ImageChunk {
    pb::ImageChunk { offset, data }
}

/// A string field of at most `max` bytes of printable characters: nothing
/// from a peer reaches a log, a terminal or a page with control characters.
fn printable(message: &'static str, name: &'static str, s: String, max: usize) -> Result<String, InvalidMessage> {
    if s.len() > max {
        return Err(InvalidMessage { message, field: name, reason: format!("longer than {max} bytes") });
    }
    if s.chars().any(char::is_control) {
        return Err(InvalidMessage { message, field: name, reason: "holds control characters".into() });
    }
    Ok(s)
}

/// Unwraps a session stream message into a heartbeat.
pub fn heartbeat_of(m: pb::AgentMessage) -> Result<Heartbeat, InvalidMessage> {
    match m.kind {
        Some(pb::agent_message::Kind::Heartbeat(h)) => h.try_into(),
        None => Err(InvalidMessage { message: "agent message", field: "kind", reason: "missing".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> pb::Heartbeat {
        pb::Heartbeat {
            node_id: "g1-se1".into(),
            role: "se".into(),
            version: "1.0.0".into(),
            boot_id: "b1".into(),
            deployment: "vm".into(),
            se_group: "g1".into(),
            addr: "127.0.0.1:8443".into(),
            ..Default::default()
        }
    }

    fn result(message: &str) -> pb::CommandResult {
        pb::CommandResult {
            id: "apply-op1-0-g1-se1".into(),
            state: pb::CommandState::Failed as i32,
            message: message.into(),
            boot_id: String::new(),
        }
    }

    fn refused(h: pb::Heartbeat) -> String {
        Heartbeat::try_from(h).unwrap_err().to_string()
    }

    #[test]
    fn what_a_node_reports_is_bounded_and_printable() {
        Heartbeat::try_from(heartbeat()).unwrap();
        let with = |r: pb::CommandResult| pb::Heartbeat { results: vec![r], ..heartbeat() };
        // A message that would clear an operator's terminal, or is too long.
        assert!(refused(with(result("x\u{1b}[2J"))).contains("message: holds control characters"));
        assert!(refused(with(result(&"x".repeat(2000)))).contains("message: longer than 1024 bytes"));
        let long_id = pb::CommandResult { id: "i".repeat(300), ..result("") };
        assert!(refused(with(long_id)).contains("id: longer than 256 bytes"));
        // Lists have a bound.
        let many = pb::Heartbeat { results: vec![result(""); 257], ..heartbeat() };
        assert!(refused(many).contains("results: 257 entries, more than 256"));
        let serving = pb::Heartbeat { serving: vec!["vs1".into(); 4097], ..heartbeat() };
        assert!(refused(serving).contains("serving: 4097 entries"));
        let bad_name = pb::Heartbeat { serving: vec!["vs\n1".into()], ..heartbeat() };
        assert!(refused(bad_name).contains("serving: holds control characters"));
        let staged = pb::Heartbeat { staged: vec![Default::default(); 65], ..heartbeat() };
        assert!(refused(staged).contains("staged: 65 entries"));
    }

    #[test]
    fn what_an_agent_sends_passes_the_leaders_check() {
        // A multi-line, overlong message (an error chain, a tool's output)
        // is put on one line and cut, so the agent's own report is never
        // refused.
        let text = format!("first line\nsecond\tline {}é", "y".repeat(3000));
        let r = CommandResult {
            id: "apply-op1-0-g1-se1".into(),
            state: CommandState::Failed,
            message: text,
            boot_id: String::new(),
        };
        let back = CommandResult::try_from(pb::CommandResult::from(r)).unwrap();
        assert!(back.message.len() <= bounds::MESSAGE && back.message.ends_with('…'), "{}", back.message.len());
        assert!(back.message.starts_with("first line second line yyy"), "{}", &back.message[..30]);
        assert_eq!(one_line("ok", 10), "ok");
        assert_eq!(one_line("ééééé", 7), "éé…");
    }
}
