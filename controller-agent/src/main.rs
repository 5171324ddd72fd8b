//! `controller-agent run|boot --config FILE`.

fn main() -> std::process::ExitCode {
    agent_core::cli::main("controller-agent", |settings, reboot| async move {
        controller_agent::start(settings, reboot).await.map(|(handle, _)| handle)
    })
}
