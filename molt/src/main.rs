//! `molt`: the operator CLI. Parses the contract's grammar and calls the
//! library; every refusal prints what was wrong and what to do, and exits
//! non-zero.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

mod demo;

use clap::{Parser, Subcommand};
use common::{DeploymentKind, Version};
use molt::{
    client::{Api, ClientError, Connection},
    local::{self, GroupSpec, LocalSpec},
    molt_api::{
        ClusterDoc, UpgradeStatus,
        config::SeGroup,
        requests::{GroupRequest, NoFields, PrestageRequest, SeGroupOrder, Started, UpgradeRequest},
        status::{ActionOnError, NodeState, OpState},
    },
    pki::{self, NodeSpec},
    render, upgrade,
};

#[derive(Parser)]
#[command(name = "molt", version, about = "molt: upgrade a controller/Service Engine cluster in one action")]
struct Cli {
    /// A local cluster made by `molt local up`.
    #[arg(long, env = "MOLT_CLUSTER_DIR", global = true)]
    cluster_dir: Option<PathBuf>,
    /// The leader's URL, https://IP:8443.
    #[arg(long, env = "MOLT_CONTROLLER", global = true)]
    controller: Option<String>,
    /// File holding the admin token.
    #[arg(long, env = "MOLT_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// The cluster CA certificate.
    #[arg(long, env = "MOLT_CA", global = true)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster CA and certificates.
    Pki {
        #[command(subcommand)]
        cmd: PkiCmd,
    },
    /// Build and inspect packages.
    Package {
        #[command(subcommand)]
        cmd: PackageCmd,
    },
    /// `upgrade prestage image_path PATH` | `upgrade system image_path PATH [docker_image_path PATH] [se_groups NAME...] [pause_after NAME] [plan_hash H] [action_on_error suspend|continue|rollback] [max_parallel_ses N] [se_group_order parallel|series] [max_transfers N] [transfer_rate_mib N] [force] [disruptive] [prechecks_only]` | `upgrade segroup NAME...` | `upgrade pause|resume|abort`
    Upgrade {
        /// Return once the operation has started.
        #[arg(long)]
        no_wait: bool,
        /// Print the final status as JSON.
        #[arg(long)]
        json: bool,
        #[arg(num_args = 1.., trailing_var_arg = true)]
        words: Vec<String>,
    },
    /// `show cluster` | `show upgrade status`
    Show {
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Keep refreshing.
        #[arg(long)]
        watch: bool,
        #[arg(num_args = 1..)]
        words: Vec<String>,
    },
    /// `resume segroup NAME... [skip_suspended]`: resume suspended SE groups.
    Resume {
        /// Return once it has started.
        #[arg(long)]
        no_wait: bool,
        #[arg(num_args = 1.., trailing_var_arg = true)]
        words: Vec<String>,
    },
    /// `rollback segroup NAME...`: return SE groups to the previous version; `rollback system`: everything.
    Rollback {
        /// Return once it has started.
        #[arg(long)]
        no_wait: bool,
        #[arg(num_args = 1.., trailing_var_arg = true)]
        words: Vec<String>,
    },
    /// Controller membership: `cluster add-controller ID=ADDR` | `cluster remove-controller ID`.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Local clusters on this machine.
    Local {
        #[command(subcommand)]
        cmd: LocalCmd,
    },
    /// An interactive prompt taking the same commands (`help` lists them).
    Shell,
    /// Run the main job on a throwaway local cluster: up, build a package, distribute it, report, down.
    Demo {
        /// Keep the cluster dir here instead of a temporary one (and leave it up).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// vm (processes in PID namespaces), docker (containers, needs Docker
        /// Engine) or mixed (controllers on vm, SEs on docker).
        #[arg(long, default_value = "vm")]
        deployment: String,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Add a controller (ID=IP:PORT): it joins as a learner, catches up
    /// with the replicated state, then votes. Refused during an upgrade.
    AddController { spec: String },
    /// Remove a controller (a dead one, before adding its replacement).
    /// Refused during an upgrade.
    RemoveController { id: String },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create the CA, node certificates, admin certificate and token.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cluster: String,
        /// ID=ROLE@HOST, repeated.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// Days the node and admin certificates are valid.
        #[arg(long, default_value_t = pki::DEFAULT_VALIDITY_DAYS)]
        validity_days: u32,
    },
    /// Re-issue a node's certificate and key (same identity and hosts); the
    /// node takes them within seconds, without a restart. `--all` re-issues
    /// every certificate of the PKI dir (nodes, admin, tokens), as this
    /// version of molt issues them.
    Renew {
        #[arg(long)]
        dir: PathBuf,
        /// The node (or `admin`, or a token's name).
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        node: Option<String>,
        /// Every certificate of the PKI dir.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = pki::DEFAULT_VALIDITY_DAYS)]
        validity_days: u32,
    },
    /// A REST token with a role, for a person or a tool: DIR/NAME.token
    /// (and a matching client certificate DIR/NAME.pem, DIR/NAME.key).
    /// read-only may read status, cluster and metrics; admin may do all.
    Token {
        #[arg(long)]
        dir: PathBuf,
        /// admin or read-only.
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = pki::DEFAULT_VALIDITY_DAYS)]
        validity_days: u32,
    },
    /// Revoke node ids or certificate serials (added to DIR/revoked.txt,
    /// which nodes re-read; copy it to nodes that keep their own).
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        /// Node ids or hex serials.
        #[arg(required = true)]
        entries: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PackageCmd {
    /// Build a package from a payload directory.
    Build {
        #[arg(long)]
        version: String,
        #[arg(long)]
        min_compatible: String,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        payload: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Sign the manifest (which names the payload's SHA-256) with this
        /// key (`signing.key` from `molt package keygen`).
        #[arg(long)]
        sign_key: Option<PathBuf>,
    },
    /// Write a new ed25519 key pair: DIR/signing.key (keep it secret) and
    /// DIR/signing.pub (list it in the nodes' trusted_keys).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a package and print its manifest.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum LocalCmd {
    /// Start every node of a local cluster (creating it on first use).
    Up {
        /// The cluster dir (or the global `--cluster-dir`).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        controllers: usize,
        /// NAME:HA:COUNT,...
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long, default_value = "1.0.0")]
        version: String,
        /// First three octets of the nodes' loopback addresses.
        #[arg(long, default_value = "127.0.0")]
        subnet: String,
        /// Port every node listens on.
        #[arg(long, default_value_t = common::DEFAULT_PORT)]
        port: u16,
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// Cap image distribution per transfer (bytes/s).
        #[arg(long)]
        fetch_rate_limit: Option<u64>,
        /// Cap what each node sends of an image, over all its streams
        /// (bytes/s), as a network would.
        #[arg(long)]
        egress_limit: Option<u64>,
        /// Nodes the leader streams an image to itself, and each relay
        /// (0: every node from the leader; default 4).
        #[arg(long)]
        relay_fanout: Option<usize>,
        /// Seconds an uncommitted boot waits for the leader before rolling back.
        #[arg(long)]
        self_revert_secs: Option<u64>,
        /// Seconds nodes have to rejoin after an apply before the upgrade fails.
        #[arg(long)]
        reform_timeout_secs: Option<u64>,
        /// vm (processes in PID namespaces), docker (containers), or mixed
        /// (controllers on vm, SEs on docker).
        #[arg(long, default_value = "vm")]
        deployment: String,
        /// The cluster's name; docker nodes are the containers molt-CLUSTER-NODE.
        #[arg(long, default_value = "local")]
        cluster: String,
        /// A public key (signing.pub) every node trusts to sign packages;
        /// repeat it to trust several. Without it, signatures are not checked.
        #[arg(long = "trusted-key")]
        trusted_keys: Vec<PathBuf>,
        /// A program exec health gates may run on every SE (absolute path;
        /// repeat it for several). Without it, exec gates fail on the SEs.
        #[arg(long = "allow-gate-program")]
        allowed_gate_programs: Vec<PathBuf>,
        /// How the nodes write their logs (`agent.log`): text or json.
        #[arg(long, default_value = "text")]
        log_format: String,
        /// An OpenTelemetry collector (OTLP/gRPC, http://HOST:4317) every
        /// node exports its spans to.
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// Power every node off (the cluster dir stays).
    Down {
        /// The cluster dir (or the global `--cluster-dir`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Cut these nodes off from all the others (nftables; replaces an earlier partition).
    Partition {
        /// The cluster dir (or the global `--cluster-dir`).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Reconnect every node.
    Heal {
        /// The cluster dir (or the global `--cluster-dir`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Pull or restore a node's power.
    Power {
        /// on | off
        state: String,
        /// The cluster dir (or the global `--cluster-dir`).
        #[arg(long)]
        dir: Option<PathBuf>,
        node: String,
    },
    /// (internal) The per-node supervisor.
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        dir: PathBuf,
        node: String,
    },
    /// (internal) One power-on of a node in a new PID namespace.
    #[command(hide = true)]
    Nsboot {
        #[arg(long)]
        dir: PathBuf,
        node: String,
    },
}

/// A failure to report: message, and the exit code.
struct Failure(String, u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string(), 1)
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), 2)
}

/// Output into a closed pipe (`molt ... --json | head`) ends molt quietly,
/// by SIGPIPE as it ends `cat`, instead of a panic in `println!`. SIGPIPE
/// itself stays ignored (Rust's runtime default): a TLS write to a socket the
/// controller closed (`writev`, which has no `MSG_NOSIGNAL`) must be an error
/// the client retries, not the end of the process. So only the failed print
/// to stdout restores SIGPIPE's default action and raises it.
#[allow(unsafe_code)]
fn end_quietly_on_a_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            use nix::sys::signal::{SigHandler, Signal, raise, signal};
            // SAFETY: SIG_DFL installs no Rust handler; the process ends at the raise.
            let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
            let _ = raise(Signal::SIGPIPE);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    end_quietly_on_a_closed_stdout();
    common::telemetry::init("warn");
    common::tls::install_default_provider();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = if matches!(cli.cmd, Cmd::Shell) { shell(&cli, &rt) } else { rt.block_on(run(cli)) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

/// `molt shell`: each line runs as `molt [connection options] WORDS...`.
fn shell(cli: &Cli, rt: &tokio::runtime::Runtime) -> Result<(), Failure> {
    let mut globals: Vec<std::ffi::OsString> = vec!["molt".into()];
    let options = [
        ("--cluster-dir", cli.cluster_dir.as_ref().map(|p| p.as_os_str())),
        ("--controller", cli.controller.as_deref().map(std::ffi::OsStr::new)),
        ("--token-file", cli.token_file.as_ref().map(|p| p.as_os_str())),
        ("--ca", cli.ca.as_ref().map(|p| p.as_os_str())),
    ];
    for (flag, value) in options {
        if let Some(v) = value {
            globals.extend([flag.into(), v.to_owned()]);
        }
    }
    let helper = molt::shell::ShellHelper::default();
    let groups = helper.groups.clone();
    let client = api(cli).ok();
    let refresh = |groups: &std::sync::Mutex<Vec<String>>| {
        let Some(api) = &client else { return };
        if let Ok(v) = rt.block_on(api.get_as::<Vec<SeGroup>>("/api/serviceenginegroup")) {
            *groups.lock().expect("groups lock") = v.into_iter().map(|g| g.name).collect();
        }
    };
    let cluster = client.as_ref().and_then(|api| rt.block_on(api.get_as::<ClusterDoc>("/api/cluster")).ok());
    let prompt = match &cluster {
        Some(c) => format!("[molt:{}]: ", c.cluster),
        None => {
            eprintln!("warning: the leader does not answer yet; commands will say why when they run");
            "[molt]: ".to_owned()
        }
    };
    refresh(&groups);
    let history = std::env::var_os("MOLT_HISTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".molt_history")));
    println!("molt shell: `help` lists the commands, Tab completes, Ctrl-D leaves.");
    molt::shell::run(&prompt, helper, history.as_deref(), |words| {
        let argv = globals.iter().cloned().chain(words.iter().map(Into::into));
        let ok = match Cli::try_parse_from(argv) {
            Ok(Cli { cmd: Cmd::Shell, .. }) => {
                eprintln!("error: already in the shell");
                false
            }
            Ok(c) => {
                let outcome = rt.block_on(async {
                    tokio::select! {
                        r = run(c) => r,
                        _ = tokio::signal::ctrl_c() => Err(Failure(
                            "interrupted; an operation the leader runs goes on: `show upgrade status` follows it".into(),
                            130,
                        )),
                    }
                });
                match outcome {
                    Ok(()) => true,
                    Err(Failure(msg, _)) => {
                        eprintln!("error: {msg}");
                        false
                    }
                }
            }
            Err(e) => {
                let _ = e.print();
                false
            }
        };
        refresh(&groups);
        ok
    })
    .map_err(|e| Failure(format!("the shell's terminal: {e}"), 1))
    .and_then(|last_ok| if last_ok { Ok(()) } else { Err(Failure("the last command failed".into(), 1)) })
}

fn api(cli: &Cli) -> Result<Api, Failure> {
    let conn = Connection::resolve(
        cli.cluster_dir.as_deref(),
        cli.controller.as_deref(),
        cli.token_file.as_deref(),
        cli.ca.as_deref(),
    )?;
    Ok(Api::new(&conn)?)
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.cmd {
        Cmd::Pki { cmd: PkiCmd::Init { dir, cluster, nodes, validity_days } } => {
            let specs: Vec<NodeSpec> = nodes.iter().map(|n| n.parse()).collect::<Result<_, _>>()?;
            pki::init_with(dir, cluster, &specs, *validity_days)?;
            println!(
                "wrote CA, {} node certificates (valid {validity_days} days), admin certificate and admin.token to {}",
                specs.len(),
                dir.display()
            );
            Ok(())
        }
        Cmd::Pki { cmd: PkiCmd::Renew { dir, node, all, validity_days } } => {
            let renewed = match node {
                Some(node) if !*all => {
                    let id: common::NodeId =
                        node.parse().map_err(|e| pki::PkiError::Invalid(format!("--node {node:?}: {e}")))?;
                    let r = pki::renew(dir, &id, *validity_days)?;
                    vec![(id, r)]
                }
                _ => pki::renew_all(dir, *validity_days)?,
            };
            for (id, r) in renewed {
                println!(
                    "renewed {id}: serial {} (replaces {}), valid until {}; a running node takes it within seconds",
                    r.serial,
                    r.replaces,
                    render::time(r.not_after as f64)
                );
            }
            Ok(())
        }
        Cmd::Pki { cmd: PkiCmd::Token { dir, role, name, validity_days } } => {
            let r = common::token::ApiRole::parse(role)
                .ok_or_else(|| usage(format!("--role {role:?}: expected admin or read-only")))?;
            let path = pki::token(dir, r, name, *validity_days)?;
            println!(
                "{} token for {name}: {} (with {name}.pem and {name}.key); use it with --token-file or MOLT_TOKEN_FILE",
                r.name(),
                path.display()
            );
            Ok(())
        }
        Cmd::Pki { cmd: PkiCmd::Revoke { dir, entries } } => {
            pki::revoke(dir, entries)?;
            println!(
                "revoked {} in {}; nodes that read it refuse and close their connections within seconds",
                entries.join(", "),
                dir.join(pki::REVOKED_FILE).display()
            );
            Ok(())
        }
        Cmd::Package { cmd } => package(cmd).await,
        Cmd::Upgrade { no_wait, json, words } => {
            // The Avi-style words swallow what follows them: take options found there too.
            let json = *json || words.iter().any(|w| w == "--json");
            let no_wait = *no_wait || words.iter().any(|w| w == "--no-wait");
            let words: Vec<String> =
                words.iter().filter(|w| !matches!(w.as_str(), "--json" | "--no-wait")).cloned().collect();
            upgrade_cmd(&cli, &words, no_wait, json).await
        }
        Cmd::Show { json, watch, words } => show(&cli, words, *json, *watch).await,
        Cmd::Resume { no_wait, words } => group_cmd(&cli, "resume", words, *no_wait).await,
        Cmd::Rollback { no_wait, words } => group_cmd(&cli, "rollback", words, *no_wait).await,
        Cmd::Cluster { cmd } => {
            let api = api(&cli)?;
            let v = match cmd {
                ClusterCmd::AddController { spec } => {
                    let (id, addr) = spec
                        .split_once('=')
                        .ok_or_else(|| usage(format!("{spec:?}: expected ID=IP:PORT, such as c4=10.0.0.4:8443")))?;
                    api.post("/api/cluster/controllers", &serde_json::json!({"id": id, "addr": addr})).await?
                }
                ClusterCmd::RemoveController { id } => api.delete(&format!("/api/cluster/controllers/{id}")).await?,
            };
            for m in v["controllers"].as_array().into_iter().flatten() {
                let lead = if m["leader"] == true { "  (leader)" } else { "" };
                println!(
                    "{:<12} {:<22} {}{lead}",
                    m["id"].as_str().unwrap_or(""),
                    m["addr"].as_str().unwrap_or(""),
                    m["raft"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Cmd::Local { cmd } => local_cmd(cmd, cli.cluster_dir.as_deref()).await,
        Cmd::Demo { dir, deployment } => demo::demo(dir.clone(), deployment.parse()?).await,
        Cmd::Shell => Err(usage("already in the shell")),
    }
}

async fn package(cmd: &PackageCmd) -> Result<(), Failure> {
    match cmd {
        PackageCmd::Build { version, min_compatible, kind, payload, out, sign_key } => {
            let version: Version = version.parse().map_err(|e| usage(format!("--version: {e}")))?;
            let min: Version = min_compatible.parse().map_err(|e| usage(format!("--min-compatible: {e}")))?;
            let kind: DeploymentKind = kind.parse().map_err(|e| usage(format!("--kind: {e}")))?;
            let key = match sign_key {
                Some(p) => {
                    Some(common::package::signing::SigningKey::load(p).map_err(|e| usage(format!("--sign-key {e}")))?)
                }
                None => None,
            };
            let info = match kind {
                DeploymentKind::Vm => common::package::build_signed(payload, version, min, kind, out, key.as_ref())?,
                DeploymentKind::Docker => molt::docker::build_package(payload, version, min, out, key.as_ref()).await?,
            };
            if let Some(k) = &key {
                println!("signed by key {}", k.public().id());
            }
            println!("{}  {}", info.sha256, out.display());
            println!(
                "{} package {} (min compatible {}), {} entries, {}",
                kind,
                version,
                min,
                info.entries,
                render::bytes(info.size)
            );
            Ok(())
        }
        PackageCmd::Keygen { out } => {
            let k = common::package::signing::keygen(out).map_err(|e| Failure(e.to_string(), 1))?;
            println!(
                "key {}: {} (secret) and {}",
                k.id(),
                out.join("signing.key").display(),
                out.join("signing.pub").display()
            );
            println!(
                "sign with `molt package build ... --sign-key {}`; nodes trust it with trusted_keys = [\"{}\"] in node.toml",
                out.join("signing.key").display(),
                out.join("signing.pub").display()
            );
            Ok(())
        }
        PackageCmd::Inspect { file, json } => {
            let f = std::fs::File::open(file).map_err(|e| Failure(format!("{}: {e}", file.display()), 1))?;
            let info = common::package::verify(std::io::BufReader::with_capacity(1 << 20, f))
                .map_err(|e| Failure(format!("{}: {e}", file.display()), 1))?;
            if *json {
                print_json(&serde_json::to_value(&info).expect("serializes"));
            } else {
                let m = &info.manifest;
                println!("package   {}", file.display());
                println!("sha256    {}", info.sha256);
                println!("size      {} ({})", info.size, render::bytes(info.size));
                println!("version   {}", m.version);
                println!("min compatible {}", m.min_compatible);
                println!("kind      {}", m.kind);
                println!(
                    "payload   {} ({}), {} entries, sha256 {}",
                    m.payload_size,
                    render::bytes(m.payload_size),
                    info.entries,
                    m.payload_sha256
                );
                println!("built at  {}", render::time(m.built_at as f64));
                match &m.signature {
                    Some(sig) => println!("signed by key {} (checked by nodes that trust it)", sig.key_id),
                    None => println!("unsigned"),
                }
                println!("verified: digest, size and every entry path are valid");
            }
            Ok(())
        }
    }
}

/// What follows an upgrade action: `image_path PATH`, then flags, among
/// them `docker_image_path PATH` (a mixed cluster's docker package).
struct ImageWords {
    path: String,
    docker_path: Option<String>,
    /// `action_on_error suspend|continue|rollback`.
    on_error: Option<ActionOnError>,
    /// `se_groups NAME...`: only these groups (a canary).
    se_groups: Vec<String>,
    /// `pause_after NAME`: this group first, then hold.
    pause_after: Option<String>,
    /// `plan_hash H`: start only if the plan is still the one shown.
    plan_hash: Option<String>,
    /// The upgrade profile: `max_parallel_ses N`, `max_transfers N`,
    /// `transfer_rate_mib N` (numbers) and `se_group_order parallel|series`.
    profile: ProfileWords,
    flags: Vec<String>,
}

/// The upgrade profile as the words set it (the rest is the leader's default).
#[derive(Debug, Default)]
struct ProfileWords {
    max_parallel_ses: Option<u32>,
    max_transfers: Option<u32>,
    transfer_rate_mib: Option<u64>,
    se_group_order: Option<SeGroupOrder>,
}

impl ProfileWords {
    fn is_empty(&self) -> bool {
        self.max_parallel_ses.is_none()
            && self.max_transfers.is_none()
            && self.transfer_rate_mib.is_none()
            && self.se_group_order.is_none()
    }
}

/// Parses `image_path PATH [docker_image_path PATH] [flags...]`.
fn image_words(words: &[String]) -> Result<ImageWords, Failure> {
    let [kw, path, rest @ ..] = words else {
        return Err(usage("expected `image_path PATH` after the upgrade action"));
    };
    if kw != "image_path" {
        return Err(usage("expected `image_path PATH` after the upgrade action"));
    }
    let mut out = ImageWords {
        path: path.clone(),
        docker_path: None,
        on_error: None,
        se_groups: vec![],
        pause_after: None,
        plan_hash: None,
        profile: ProfileWords::default(),
        flags: vec![],
    };
    let mut it = rest.iter().peekable();
    while let Some(w) = it.next() {
        match w.as_str() {
            "se_groups" => {
                while let Some(g) = it.next_if(|g| !molt::shell::SYSTEM_WORDS.contains(&g.as_str())) {
                    out.se_groups.push(g.clone());
                }
                if out.se_groups.is_empty() {
                    return Err(usage("se_groups takes the names of the SE groups to upgrade: `se_groups g1 g2`"));
                }
            }
            "pause_after" => {
                let g = it.next().ok_or_else(|| usage("pause_after takes an SE group: `pause_after g1`"))?;
                out.pause_after = Some(g.clone());
            }
            "plan_hash" => {
                let h = it.next().ok_or_else(|| usage("plan_hash takes the hash `prechecks_only` printed"))?;
                out.plan_hash = Some(h.clone());
            }
            w @ ("max_parallel_ses" | "max_transfers" | "transfer_rate_mib") => {
                let n = it.next().and_then(|n| n.parse::<u32>().ok().filter(|n| *n > 0));
                let n = n.ok_or_else(|| usage(format!("{w} takes a number above 0: `{w} 2`")))?;
                match w {
                    "max_parallel_ses" => out.profile.max_parallel_ses = Some(n),
                    "max_transfers" => out.profile.max_transfers = Some(n),
                    _ => out.profile.transfer_rate_mib = Some(u64::from(n)),
                }
            }
            "se_group_order" => match it.next().map(String::as_str) {
                Some(o @ ("parallel" | "series")) => {
                    out.profile.se_group_order =
                        Some(if o == "series" { SeGroupOrder::Series } else { SeGroupOrder::Parallel });
                }
                other => {
                    return Err(usage(format!(
                        "se_group_order {}: expected parallel (every SE group at once) or series (one group after the other)",
                        other.unwrap_or("(nothing)")
                    )));
                }
            },
            "docker_image_path" => {
                let p = it.next().ok_or_else(|| usage("docker_image_path takes a PATH (controller_docker.tgz)"))?;
                out.docker_path = Some(p.clone());
            }
            "action_on_error" => match it.next().map(String::as_str) {
                Some("suspend") => out.on_error = Some(ActionOnError::Suspend),
                Some("continue") => out.on_error = Some(ActionOnError::Continue),
                Some("rollback") => out.on_error = Some(ActionOnError::Rollback),
                other => {
                    return Err(usage(format!(
                        "action_on_error {}: expected suspend (the group stops), continue (the group goes on past the SE) or rollback (the group returns to the old version)",
                        other.unwrap_or("(nothing)")
                    )));
                }
            },
            _ => out.flags.push(w.clone()),
        }
    }
    Ok(out)
}

/// The `controller://` paths of a request's images (the docker nodes' one
/// second), uploading local files.
async fn images_on_leader(api: &Api, words: &ImageWords, json: bool) -> Result<(String, Option<String>), Failure> {
    let image = upgrade::image_path_on_leader(api, &words.path, json).await?;
    let docker = match &words.docker_path {
        Some(d) => Some(upgrade::image_path_on_leader(api, d, json).await?),
        None => None,
    };
    Ok((image, docker))
}

async fn upgrade_cmd(cli: &Cli, words: &[String], no_wait: bool, json: bool) -> Result<(), Failure> {
    let (action, rest) =
        words.split_first().ok_or_else(|| usage("upgrade what? `upgrade prestage image_path PATH`"))?;
    match action.as_str() {
        "prestage" => {
            let words = image_words(rest)?;
            if let Some(f) = words.flags.first() {
                return Err(usage(format!("prestage takes no option {f:?}")));
            }
            if words.on_error.is_some()
                || !words.se_groups.is_empty()
                || words.pause_after.is_some()
                || words.plan_hash.is_some()
                || !words.profile.is_empty()
            {
                return Err(usage(
                    "prestage installs nothing: action_on_error, se_groups, pause_after, plan_hash and the profile \
                     (max_parallel_ses, se_group_order, max_transfers, transfer_rate_mib) go with `upgrade system`",
                ));
            }
            let api = api(cli)?;
            let (image_path, docker_image_path) = images_on_leader(&api, &words, json).await?;
            let body = PrestageRequest { image_path: image_path.clone(), docker_image_path };
            let _: UpgradeStatus = api.post_as("/api/cluster/upgrade/prestage", &body).await.map_err(explain)?;
            let image = image_path;
            if no_wait {
                println!("prestage of {image} started; follow it with `molt show upgrade status`");
                return Ok(());
            }
            finish(&api, json, "the prestage").await
        }
        "system" => {
            let words = image_words(rest)?;
            let (mut force, mut disruptive, mut prechecks_only) = (false, false, false);
            for f in &words.flags {
                match f.as_str() {
                    "force" => force = true,
                    "disruptive" => disruptive = true,
                    "prechecks_only" => prechecks_only = true,
                    other => {
                        return Err(usage(format!(
                            "unknown option {other:?}: expected force, disruptive or prechecks_only"
                        )));
                    }
                }
            }
            let api = api(cli)?;
            let (image_path, docker_image_path) = images_on_leader(&api, &words, json).await?;
            let p = &words.profile;
            let body = UpgradeRequest {
                image_path,
                docker_image_path,
                force,
                disruptive,
                prechecks_only,
                action_on_error: words.on_error.unwrap_or(ActionOnError::Suspend),
                se_groups: words.se_groups.clone(),
                pause_after: words.pause_after.clone(),
                plan_hash: words.plan_hash.clone(),
                max_parallel_ses: p.max_parallel_ses,
                se_group_order: p.se_group_order,
                max_transfers: p.max_transfers,
                transfer_rate_mib: p.transfer_rate_mib,
            };
            let answer: Started = api.post_as("/api/cluster/upgrade", &body).await.map_err(explain)?;
            let status = match answer {
                Started::Plan(plan) => {
                    if json {
                        print_json(&plan);
                    } else {
                        print!("{}", render::prechecks(&plan));
                    }
                    return if plan.ok { Ok(()) } else { Err(Failure("the pre-checks failed".into(), 1)) };
                }
                Started::Status(status) => status,
            };
            if no_wait {
                println!("upgrade to {} started; follow it with `molt show upgrade status`", status.to_version);
                return Ok(());
            }
            finish(&api, json, "the upgrade").await
        }
        "pause" | "resume" | "abort" => {
            if let Some(w) = rest.first() {
                return Err(usage(format!("upgrade {action} takes no argument ({w:?})")));
            }
            let api = api(cli)?;
            let before: UpgradeStatus = api.post_as(&format!("/api/cluster/upgrade/{action}"), &NoFields {}).await?;
            hold_cmd(&api, action, before, no_wait, json).await
        }
        "segroup" => {
            if rest.is_empty() {
                return Err(usage("name the SE groups to upgrade: `upgrade segroup NAME...`"));
            }
            let api = api(cli)?;
            let body = GroupRequest { se_groups: rest.to_vec(), ..GroupRequest::default() };
            let _: UpgradeStatus = api.post_as("/api/cluster/upgrade/segroup", &body).await?;
            if no_wait {
                println!("upgrade of SE groups {} started; follow it with `molt show upgrade status`", rest.join(", "));
                return Ok(());
            }
            finish(&api, json, "the upgrade of the SE groups").await
        }
        other => Err(usage(format!(
            "unknown upgrade action {other:?}: expected prestage, system, segroup, pause, resume or abort"
        ))),
    }
}

/// After pause, resume or abort: a pause waits until what was in flight has
/// finished (the hold is then in effect); resume and abort follow the
/// operation to its end.
async fn hold_cmd(api: &Api, action: &str, answer: UpgradeStatus, no_wait: bool, json: bool) -> Result<(), Failure> {
    if no_wait {
        println!("{action}: the upgrade is {}", render::name(&answer.state));
        return Ok(());
    }
    if action == "resume" {
        return finish(api, json, "the resumed upgrade").await;
    }
    if action == "abort" {
        let end = upgrade::follow(api, json).await?;
        if json {
            print_json(&end);
        } else {
            print!("{}", render::status(&end));
        }
        return match end.state {
            OpState::Aborted => Ok(()),
            s => Err(Failure(format!("the upgrade ended {} before the abort took effect", render::name(&s)), 1)),
        };
    }
    loop {
        let v: UpgradeStatus = api.get_as("/api/cluster/upgrade/status").await?;
        let in_flight: Vec<&str> =
            v.nodes.iter().filter(|n| n.state == NodeState::Running).map(|n| n.id.as_str()).collect();
        if v.state != OpState::Paused || in_flight.is_empty() {
            if json {
                print_json(&v);
            } else {
                print!("{}", render::status(&v));
            }
            return match v.state {
                OpState::Paused => Ok(()),
                s => Err(Failure(format!("the upgrade is {}, not paused", render::name(&s)), 1)),
            };
        }
        if !json {
            eprintln!("pausing: waiting for {} to finish what they are doing", in_flight.join(", "));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `resume segroup NAME... [skip_suspended]` / `rollback segroup NAME...`.
async fn group_cmd(cli: &Cli, action: &str, words: &[String], no_wait: bool) -> Result<(), Failure> {
    let (kw, rest) = words.split_first().ok_or_else(|| usage(format!("{action} what? `{action} segroup NAME...`")))?;
    if action == "rollback" && kw == "system" {
        if let Some(w) = rest.first() {
            return Err(usage(format!("rollback system takes no argument ({w:?})")));
        }
        let api = api(cli)?;
        let body = GroupRequest { system: true, ..GroupRequest::default() };
        let _: UpgradeStatus = api.post_as("/api/cluster/upgrade/rollback", &body).await.map_err(explain)?;
        if no_wait {
            println!("system rollback started; follow it with `molt show upgrade status`");
            return Ok(());
        }
        return finish(&api, false, "the system rollback").await;
    }
    if kw != "segroup" {
        return Err(usage(format!("{action} {kw:?}: expected `{action} segroup NAME...`")));
    }
    let skip = rest.iter().any(|w| w == "skip_suspended");
    if skip && action != "resume" {
        return Err(usage("skip_suspended goes with resume"));
    }
    let groups: Vec<&String> = rest.iter().filter(|w| *w != "skip_suspended").collect();
    if groups.is_empty() && action == "rollback" {
        return Err(usage("name the SE groups to roll back: `rollback segroup NAME...`"));
    }
    let api = api(cli)?;
    let body =
        GroupRequest { se_groups: groups.iter().map(|g| g.to_string()).collect(), skip_suspended: skip, system: false };
    let _: UpgradeStatus = api.post_as(&format!("/api/cluster/upgrade/{action}"), &body).await?;
    if no_wait {
        println!("{action} started; follow it with `molt show upgrade status`");
        return Ok(());
    }
    if action != "rollback" {
        return finish(&api, false, &format!("the {action}")).await;
    }
    let end = upgrade::follow(&api, false).await?;
    print!("{}", render::status(&end));
    let asked: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    match render::rollback_verdict(&end, &asked) {
        Ok(done) => {
            println!("{done}");
            Ok(())
        }
        Err(why) => Err(Failure(why, 1)),
    }
}

/// Follows the running operation to its end, shows it, and succeeds only
/// if it completed.
async fn finish(api: &Api, json: bool, what: &str) -> Result<(), Failure> {
    let end = upgrade::follow(api, json).await?;
    if json {
        print_json(&end);
    } else {
        print!("{}", render::status(&end));
    }
    match end.state {
        OpState::Completed => Ok(()),
        OpState::Paused => {
            if !json {
                println!("paused: `molt upgrade resume` goes on, `molt upgrade abort` stops it");
            }
            Ok(())
        }
        s => Err(Failure(format!("{what} ended {}: {}", render::name(&s), end.reason), 1)),
    }
}

/// Adds the pre-checks to a refusal's message: the failed ones, then the
/// warnings apart (a warning did not refuse anything).
fn explain(e: ClientError) -> Failure {
    match e.prechecks() {
        Some(checks) => Failure(format!("{e}{}", render::refused_checks(&checks)), 1),
        None => e.into(),
    }
}

async fn show(cli: &Cli, words: &[String], json: bool, watch: bool) -> Result<(), Failure> {
    let what: Vec<&str> = words.iter().map(String::as_str).collect();
    let api = api(cli)?;
    match what[..] {
        ["cluster"] => show_one(&api, "/api/cluster", json, watch, |v: &ClusterDoc| (render::cluster(v), false)).await,
        ["upgrade", "status"] => {
            show_one(&api, "/api/cluster/upgrade/status", json, watch, |v: &UpgradeStatus| {
                let running = matches!(v.state, OpState::InProgress | OpState::Prechecking);
                let bars = if watch { render::phase_bars(v) } else { String::new() };
                (bars + &render::status(v), running)
            })
            .await
        }
        _ => Err(usage("show what? `show cluster` or `show upgrade status`")),
    }
}

/// Shows one answer of the API, or with `watch` redraws it every second,
/// waiting out the leader's reboot, until an operation seen running (as
/// `render` says) has ended.
async fn show_one<T: serde::de::DeserializeOwned + serde::Serialize>(
    api: &Api,
    path: &str,
    json: bool,
    watch: bool,
    render: impl Fn(&T) -> (String, bool),
) -> Result<(), Failure> {
    if !watch {
        let v: T = api.get_as(path).await?;
        if json {
            print_json(&v)
        } else {
            print!("{}", render(&v).0)
        }
        return Ok(());
    }
    let mut seen_running = false;
    let mut away_since: Option<std::time::Instant> = None;
    loop {
        let v: T = match api.get_as(path).await {
            Ok(v) => {
                away_since = None;
                v
            }
            Err(ClientError::Unreachable { message, .. }) => {
                let since = *away_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(300) {
                    return Err(Failure(format!("the leader has not answered for 5 minutes: {message}"), 1));
                }
                println!("waiting for the leader ({} s): {message}", since.elapsed().as_secs());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (text, running) = render(&v);
        if json {
            print_json(&v);
        } else {
            print!("\x1b[2J\x1b[H{text}");
        }
        if seen_running && !running {
            return Ok(());
        }
        seen_running |= running;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The cluster dir a `local` command names with `--dir` (kept as an alias)
/// or the global `--cluster-dir` (`MOLT_CLUSTER_DIR`).
fn cluster_dir<'a>(dir: &'a Option<PathBuf>, global: Option<&'a Path>) -> Result<&'a Path, Failure> {
    dir.as_deref().or(global).ok_or_else(|| usage("which local cluster? give --cluster-dir DIR (or MOLT_CLUSTER_DIR)"))
}

async fn local_cmd(cmd: &LocalCmd, global: Option<&Path>) -> Result<(), Failure> {
    match cmd {
        LocalCmd::Up {
            dir,
            controllers,
            groups,
            version,
            subnet,
            port,
            heartbeat_ms,
            fetch_rate_limit,
            egress_limit,
            relay_fanout,
            self_revert_secs,
            reform_timeout_secs,
            deployment,
            cluster,
            trusted_keys,
            allowed_gate_programs,
            log_format,
            otlp_endpoint,
        } => {
            let dir = cluster_dir(dir, global)?.to_owned();
            let spec = LocalSpec {
                dir: dir.clone(),
                controllers: *controllers,
                groups: groups.iter().map(|g| g.parse::<GroupSpec>()).collect::<Result<_, _>>()?,
                version: version.parse().map_err(|e| usage(format!("--version: {e}")))?,
                subnet: local::parse_subnet(subnet)?,
                heartbeat_ms: *heartbeat_ms,
                fetch_rate_limit: *fetch_rate_limit,
                egress_limit: *egress_limit,
                relay_fanout: *relay_fanout,
                bin_dir: local::own_bin_dir(),
                port: *port,
                self_revert_secs: *self_revert_secs,
                reform_timeout_secs: *reform_timeout_secs,
                deployment: deployment.parse()?,
                cluster: cluster.clone(),
                trusted_keys: trusted_keys.clone(),
                allowed_gate_programs: allowed_gate_programs.clone(),
                log_format: match log_format.as_str() {
                    "text" => common::telemetry::LogFormat::Text,
                    "json" => common::telemetry::LogFormat::Json,
                    other => return Err(usage(format!("--log-format {other:?}: expected text or json"))),
                },
                otlp_endpoint: otlp_endpoint.clone(),
            };
            let started = std::time::Instant::now();
            let cf = local::up(&spec, Duration::from_secs(60)).await?;
            println!(
                "local cluster up in {:.1} s: {} nodes, leader {}\n  molt --cluster-dir {} show cluster",
                started.elapsed().as_secs_f64(),
                cf.nodes.len(),
                cf.leader_url,
                dir.display()
            );
            Ok(())
        }
        LocalCmd::Down { dir } => Ok(local::down(cluster_dir(dir, global)?)?),
        LocalCmd::Partition { dir, nodes } => Ok(molt::partition::partition(cluster_dir(dir, global)?, nodes)?),
        LocalCmd::Heal { dir } => Ok(molt::partition::heal(cluster_dir(dir, global)?)?),
        LocalCmd::Power { state, dir, node } => match (state.as_str(), cluster_dir(dir, global)?) {
            ("on", dir) => Ok(local::power_on(dir, node)?),
            ("off", dir) => Ok(local::power_off(dir, node)?),
            (other, _) => Err(usage(format!("power {other:?}: expected on or off"))),
        },
        LocalCmd::Supervise { dir, node } => Ok(local::supervise(dir, node)?),
        // The supervisor reads how the node ended from the exit code.
        #[allow(clippy::exit)]
        LocalCmd::Nsboot { dir, node } => match local::nsboot(dir, node) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(local::NSBOOT_OFF)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_lists_its_failed_checks_and_its_warnings_apart() {
        let body = serde_json::json!({"error": "refused", "kind": "precondition_failed", "prechecks": [
            {"check": "version", "result": "warning", "message": "forced: the upgrade is disruptive"},
            {"check": "nodes_up", "result": "error", "message": "nodes not heartbeating: g1-se1"},
            {"check": "image", "result": "ok", "message": "fine"},
        ]});
        let e = ClientError::Api { status: http::StatusCode::PRECONDITION_FAILED, message: "refused".into(), body };
        let Failure(text, _) = explain(e);
        let (failed, warnings) = text.split_once("\nwarnings:\n").expect("a warnings part");
        assert!(
            failed.contains("failed pre-checks:\n  nodes_up: nodes not heartbeating") && !failed.contains("version"),
            "{text}"
        );
        assert_eq!(warnings, "  version: forced: the upgrade is disruptive");
        assert!(!text.contains("image: fine"), "{text}");
    }
}
