//! The command line both agent binaries share: `run --config FILE`,
//! `boot --config FILE` and `install --config FILE --package PKG`.

use std::{future::Future, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use common::{DeploymentKind, config::NodeSettings};

use crate::{
    NodeHandle,
    reboot::{ContainerReboot, Reboot, SystemReboot},
};

#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve on the configured address (default port 8443).
    Run {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Boot loader: choose the slot from the boot record and exec its agent.
    Boot {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// A docker node: run the slot's image as the node's container, and
        /// again after each reboot (a host unit, `molt-docker-boot.service`).
        #[arg(long)]
        docker: bool,
    },
    /// First installation on this node: verify PACKAGE and install it as the
    /// version the boot loader starts. Later versions come through the leader.
    Install {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// A package built by `molt package build` (its kind must be the node's deployment).
        #[arg(long)]
        package: PathBuf,
    },
}

/// Parses the command line of agent `name` and runs it; `start` starts the
/// agent with validated settings and the system's reboot.
pub fn main<F, Fut, E>(name: &'static str, start: F) -> ExitCode
where
    F: FnOnce(NodeSettings, Arc<dyn Reboot>) -> Fut,
    Fut: Future<Output = Result<NodeHandle, E>>,
    E: std::fmt::Display,
{
    common::tls::install_default_provider();
    let cli = Cli::parse_from(std::env::args_os().enumerate().map(|(i, a)| if i == 0 { name.into() } else { a }));
    // The log format is the node's configuration's (text when it cannot be
    // read: the error about it is then printed as text).
    let config = match &cli.cmd {
        Cmd::Run { config } | Cmd::Boot { config, .. } | Cmd::Install { config, .. } => config,
    };
    let file = common::config::NodeConfigFile::read(config).ok();
    let format = file.as_ref().and_then(|f| f.log_format).unwrap_or_default();
    // Spans go to a collector too when the configuration names one (an
    // endpoint that does not work is said, and the agent runs without).
    let (otlp, otlp_error) = match file.as_ref().and_then(|f| Some((f.otlp_endpoint.as_deref()?, &f.node_id))) {
        Some((endpoint, node)) => match crate::otlp::layer(endpoint, &format!("molt-{name}"), node) {
            Ok(layer) => (Some(layer), None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    common::telemetry::init_with("info", format, otlp);
    if let Some(e) = otlp_error {
        tracing::error!("{e}; spans are written to the log only");
    }
    let outcome: Result<(), String> = match cli.cmd {
        Cmd::Boot { config, docker: true } => match tokio::runtime::Runtime::new() {
            Err(e) => Err(format!("cannot start the runtime: {e}")),
            Ok(rt) => rt.block_on(crate::docker_node::supervise(&config)).map_err(|e| format!("boot failed: {e}")),
        },
        Cmd::Boot { config, docker: false } => {
            // `boot` only returns on failure: on success it has exec'd the slot's agent.
            let Err(e) = crate::boot::boot(&config);
            Err(format!("boot failed: {e}"))
        }
        Cmd::Install { config, package } => {
            NodeSettings::load(&config).map_err(|e| e.to_string()).and_then(|settings| {
                let slots = common::slots::Slots::new(&settings.data_dir);
                let m = slots
                    .install_first(&package, settings.deployment, &settings.trusted_keys)
                    .map_err(|e| format!("{}: nothing was installed: {e}", package.display()))?;
                let unit = match (settings.deployment, settings.role) {
                    (DeploymentKind::Docker, _) => "molt-docker-boot",
                    (_, common::Role::Controller) => "molt-controller",
                    _ => "molt-se",
                };
                println!(
                    "installed {} into {}; start it with `systemctl enable --now {unit}`",
                    m.version,
                    slots.slot_dir(common::slots::Slot::A).display(),
                );
                Ok(())
            })
        }
        Cmd::Run { config } => match NodeSettings::load(&config) {
            Err(e) => Err(e.to_string()),
            Ok(settings) => match tokio::runtime::Runtime::new() {
                Err(e) => Err(format!("cannot start the runtime: {e}")),
                Ok(rt) => rt.block_on(async move {
                    let reboot: Arc<dyn Reboot> = match settings.deployment {
                        DeploymentKind::Vm => Arc::new(SystemReboot),
                        DeploymentKind::Docker => Arc::new(ContainerReboot),
                    };
                    let handle = start(settings, reboot).await.map_err(|e| e.to_string())?;
                    crate::boot::wait_for_stop_signal().await;
                    handle.shutdown.cancel();
                    let _ = handle.task.await;
                    Ok(())
                }),
            },
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
