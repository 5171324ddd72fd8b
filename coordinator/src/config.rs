//! The configuration the leader keeps (SE groups, virtual services and
//! where they are placed), with its validation: pure data, shared by the
//! leader's store, the coordinator and the simulation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the SEs of a group share a virtual service (as in the reference
/// product): on the wire and on disk `active-active`, `n-plus-m` or
/// `active-standby`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HaMode {
    /// Every SE it is placed on serves it.
    ActiveActive,
    /// As active-active, with spare SEs in the group.
    NPlusM,
    /// Two SEs: one serves, the other takes over.
    ActiveStandby,
}

impl HaMode {
    /// Every mode.
    pub const ALL: [HaMode; 3] = [HaMode::ActiveActive, HaMode::NPlusM, HaMode::ActiveStandby];

    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            HaMode::ActiveActive => "active-active",
            HaMode::NPlusM => "n-plus-m",
            HaMode::ActiveStandby => "active-standby",
        }
    }
}

impl std::fmt::Display for HaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for HaMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("ha_mode {s:?}: expected active-active, n-plus-m or active-standby"))
    }
}

/// An SE group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeGroup {
    /// Name.
    pub name: String,
    /// How its SEs share a virtual service.
    pub ha_mode: HaMode,
    /// Upgrade profile: SEs of this group moved at once (1 when absent; an
    /// upgrade's `max_parallel_ses` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_ses: Option<u32>,
    /// Checks each SE of the group must pass once it serves again on the
    /// new version; a failing one is an SE failure (`action_on_error`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_gates: Vec<HealthGate>,
}

/// One health gate of an SE group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthGate {
    /// `GET path` on a virtual service of the group, on the SE itself.
    Http {
        /// The virtual service (of this group).
        virtual_service: String,
        /// The path.
        #[serde(default = "root")]
        path: String,
        /// The status it must answer.
        #[serde(default = "ok")]
        status: u16,
        /// Tries, a second apart.
        #[serde(default = "three")]
        tries: u32,
    },
    /// An executable on the SE: it must exit 0 in time.
    Exec {
        /// The program (an absolute path) and its arguments.
        command: Vec<String>,
        /// Seconds it may run.
        #[serde(default = "thirty")]
        timeout_secs: u32,
    },
}

fn root() -> String {
    "/".into()
}
fn ok() -> u16 {
    200
}
fn three() -> u32 {
    3
}
fn thirty() -> u32 {
    30
}

impl HealthGate {
    /// What is wrong with it in group `group` of `cfg`, if anything.
    fn check(&self, cfg: &Config, group: &str) -> Result<(), String> {
        match self {
            HealthGate::Http { virtual_service, path, status, tries } => {
                match cfg.virtual_services.get(virtual_service) {
                    None => return Err(format!("virtual service {virtual_service} does not exist; create it first")),
                    Some(vs) if vs.se_group != group => {
                        return Err(format!(
                            "virtual service {virtual_service} is served by SE group {}, not {group}",
                            vs.se_group
                        ));
                    }
                    Some(_) => {}
                }
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(format!("path {path:?}: must start with / and hold no spaces"));
                }
                if !(100..=599).contains(status) {
                    return Err(format!("status {status}: must be an HTTP status, 100-599"));
                }
                if !(1..=60).contains(tries) {
                    return Err(format!("tries {tries}: must be 1-60"));
                }
            }
            HealthGate::Exec { command, timeout_secs } => {
                if !command.first().is_some_and(|p| p.starts_with('/')) {
                    return Err(format!("command {command:?}: must start with an absolute path to the program"));
                }
                if !(1..=600).contains(timeout_secs) {
                    return Err(format!("timeout_secs {timeout_secs}: must be 1-600"));
                }
            }
        }
        Ok(())
    }

    /// The check as the SE runs it (a gated virtual service cannot be deleted).
    pub fn to_check(&self, cfg: &Config) -> common::session::GateCheck {
        use common::session::GateCheck;
        match self {
            HealthGate::Http { virtual_service, path, status, tries } => GateCheck::Http {
                virtual_service: virtual_service.clone(),
                port: cfg.virtual_services.get(virtual_service).map(|v| v.port).unwrap_or(0),
                path: path.clone(),
                status: *status,
                tries: *tries,
            },
            HealthGate::Exec { command, timeout_secs } => {
                GateCheck::Exec { argv: command.clone(), timeout_secs: *timeout_secs }
            }
        }
    }

    /// The longest it may take, in milliseconds.
    pub fn budget_ms(&self) -> u64 {
        match self {
            HealthGate::Http { tries, .. } => u64::from(*tries) * 3_000,
            HealthGate::Exec { timeout_secs, .. } => u64::from(*timeout_secs) * 1_000,
        }
    }
}

/// The most SEs a group may move at once.
pub const MAX_PARALLEL_SES: u32 = 64;

/// A virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualService {
    /// Name.
    pub name: String,
    /// The SE group that serves it.
    pub se_group: String,
    /// TCP port it listens on.
    pub port: u16,
    /// SEs it is placed on.
    #[serde(default = "one")]
    pub scale: u32,
}

fn one() -> u32 {
    1
}

/// The configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// SE groups by name.
    pub se_groups: BTreeMap<String, SeGroup>,
    /// Virtual services by name.
    pub virtual_services: BTreeMap<String, VirtualService>,
    /// Where each virtual service is placed: SE ids, the active first.
    #[serde(default)]
    pub placements: BTreeMap<String, Vec<String>>,
    /// The rules every leader applies the same way.
    #[serde(default)]
    pub rules: Rules,
}

/// Cluster-wide rules: replicated with the configuration (and snapshotted
/// into an operation's journal when it starts), so whichever controller
/// leads applies the same ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// How long a node may be away (down while staging, rebooting, or
    /// before it acknowledges apply) before its step fails, and how long
    /// the controllers have to re-form; unset: each controller's
    /// `reform_timeout_secs` (node.toml), 300 s by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reform_timeout_secs: Option<u64>,
}

impl Rules {
    /// The bounds of `reform_timeout_secs`.
    pub const REFORM_SECS: std::ops::RangeInclusive<u64> = 10..=3600;

    /// Checks the rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.reform_timeout_secs {
            Some(s) if !Self::REFORM_SECS.contains(&s) => Err(ConfigError::Invalid(format!(
                "reform_timeout_secs {s}: must be {} to {} seconds",
                Self::REFORM_SECS.start(),
                Self::REFORM_SECS.end()
            ))),
            _ => Ok(()),
        }
    }
}

/// Why a configuration change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Invalid object.
    #[error("{0}")]
    Invalid(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// Already exists, or still referenced.
    #[error("{0}")]
    Conflict(String),
    /// Could not be saved.
    #[error("cannot save the configuration: {0}")]
    Io(#[from] std::io::Error),
}

fn check_name(what: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ConfigError::Invalid(format!("{what} name {name:?}: use 1-63 letters, digits, '-', '_' or '.'")));
    }
    Ok(())
}

impl Config {
    /// Validates and inserts (or, with `replace`, updates) an SE group.
    pub fn put_group(&mut self, g: SeGroup, replace: bool) -> Result<(), ConfigError> {
        check_name("SE group", &g.name)?;
        if let Some(k) = g.max_parallel_ses.filter(|k| !(1..=MAX_PARALLEL_SES).contains(k)) {
            return Err(ConfigError::Invalid(format!(
                "max_parallel_ses {k}: must be 1-{MAX_PARALLEL_SES} (SEs of the group upgraded at once)"
            )));
        }
        for (i, gate) in g.health_gates.iter().enumerate() {
            gate.check(self, &g.name).map_err(|e| ConfigError::Invalid(format!("health_gates[{i}]: {e}")))?;
        }
        match (self.se_groups.contains_key(&g.name), replace) {
            (true, false) => return Err(ConfigError::Conflict(format!("SE group {} already exists", g.name))),
            (false, true) => return Err(ConfigError::NotFound(format!("no SE group {}", g.name))),
            _ => {}
        }
        self.se_groups.insert(g.name.clone(), g);
        Ok(())
    }

    /// Removes an SE group that no virtual service uses.
    pub fn delete_group(&mut self, name: &str) -> Result<(), ConfigError> {
        if let Some(vs) = self.virtual_services.values().find(|v| v.se_group == name) {
            return Err(ConfigError::Conflict(format!("SE group {name} still serves virtual service {}", vs.name)));
        }
        self.se_groups.remove(name).map(|_| ()).ok_or_else(|| ConfigError::NotFound(format!("no SE group {name}")))
    }

    /// Validates and inserts (or updates) a virtual service.
    /// `agent_ports` are the ports the agents themselves listen on: an SE
    /// could not bind a service there.
    pub fn put_vs(&mut self, v: VirtualService, replace: bool, agent_ports: &[u16]) -> Result<(), ConfigError> {
        check_name("virtual service", &v.name)?;
        if !self.se_groups.contains_key(&v.se_group) {
            return Err(ConfigError::Invalid(format!("se_group {:?} does not exist; create it first", v.se_group)));
        }
        if v.port == 0 {
            return Err(ConfigError::Invalid("port must be 1-65535".into()));
        }
        if agent_ports.contains(&v.port) {
            return Err(ConfigError::Invalid(format!(
                "port {} is the molt agents' own port (gRPC and the API); an SE cannot serve a virtual service on it, choose another port",
                v.port
            )));
        }
        if !(1..=64).contains(&v.scale) {
            return Err(ConfigError::Invalid(format!("scale {}: must be 1-64", v.scale)));
        }
        if let Some(other) =
            self.virtual_services.values().find(|o| o.port == v.port && o.name != v.name && o.se_group == v.se_group)
        {
            return Err(ConfigError::Conflict(format!(
                "port {} is already used by {} in {}",
                v.port, other.name, v.se_group
            )));
        }
        match (self.virtual_services.contains_key(&v.name), replace) {
            (true, false) => return Err(ConfigError::Conflict(format!("virtual service {} already exists", v.name))),
            (false, true) => return Err(ConfigError::NotFound(format!("no virtual service {}", v.name))),
            _ => {}
        }
        self.virtual_services.insert(v.name.clone(), v);
        Ok(())
    }

    /// Removes a virtual service no health gate checks.
    pub fn delete_vs(&mut self, name: &str) -> Result<(), ConfigError> {
        let gated = self.se_groups.values().find(|g| {
            g.health_gates
                .iter()
                .any(|h| matches!(h, HealthGate::Http { virtual_service, .. } if virtual_service == name))
        });
        if let Some(g) = gated {
            return Err(ConfigError::Conflict(format!(
                "virtual service {name} is checked by a health gate of SE group {}; remove the gate first",
                g.name
            )));
        }
        self.placements.remove(name);
        self.virtual_services
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| ConfigError::NotFound(format!("no virtual service {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(name: &str, group: &str, port: u16) -> VirtualService {
        VirtualService { name: name.into(), se_group: group.into(), port, scale: 1 }
    }

    #[test]
    fn objects_are_validated_and_references_kept() {
        let mut c = Config::default();
        let g = |ha: &str, k| SeGroup {
            name: "g1".into(),
            ha_mode: ha.parse().unwrap(),
            max_parallel_ses: k,
            health_gates: vec![],
        };
        let fancy = serde_json::from_str::<SeGroup>(r#"{"name": "g1", "ha_mode": "fancy"}"#).unwrap_err();
        assert!(fancy.to_string().contains("unknown variant `fancy`"), "{fancy}");
        assert_eq!(
            "fancy".parse::<HaMode>().unwrap_err(),
            "ha_mode \"fancy\": expected active-active, n-plus-m or active-standby"
        );
        for m in HaMode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
            assert_eq!(m.name().parse::<HaMode>(), Ok(m));
        }
        let zero = c.put_group(g("n-plus-m", Some(0)), false).unwrap_err();
        assert!(zero.to_string().contains("max_parallel_ses 0: must be 1-64"), "{zero}");
        c.put_group(g("n-plus-m", Some(2)), false).unwrap();
        assert!(matches!(c.put_vs(vs("web", "nope", 80), false, &[8443]), Err(ConfigError::Invalid(_))));
        c.put_vs(vs("web", "g1", 80), false, &[8443]).unwrap();
        let on_agent_port = c.put_vs(vs("grpc", "g1", 8443), false, &[8443]).unwrap_err();
        assert!(
            matches!(on_agent_port, ConfigError::Invalid(ref m) if m.contains("agents' own port")),
            "{on_agent_port}"
        );
        assert!(matches!(c.put_vs(vs("api", "g1", 80), false, &[8443]), Err(ConfigError::Conflict(_))));
        assert!(matches!(c.delete_group("g1"), Err(ConfigError::Conflict(_))));
        c.delete_vs("web").unwrap();
        c.delete_group("g1").unwrap();
    }
}
