//! `controller-agent run|boot --config FILE`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::config::NodeSettings;

#[derive(Parser)]
#[command(name = "controller-agent", version, about = "molt controller agent")]
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
    },
}

fn main() -> anyhow::Result<()> {
    common::telemetry::init("info");
    common::tls::install_default_provider();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Boot { config } => {
            // `boot` only returns on failure: on success it has exec'd the slot's agent.
            let Err(e) = agent_core::boot::boot(&config);
            Err(e).context("boot failed")
        }
        Cmd::Run { config } => {
            let settings = NodeSettings::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(async move {
                let (handle, _) =
                    controller_agent::start(settings, std::sync::Arc::new(agent_core::reboot::SystemReboot)).await?;
                agent_core::boot::wait_for_stop_signal().await;
                handle.shutdown.cancel();
                let _ = handle.task.await;
                Ok(())
            })
        }
    }
}
