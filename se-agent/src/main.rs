//! `se-agent run|boot --config FILE`.

fn main() -> std::process::ExitCode {
    agent_core::cli::main("se-agent", se_agent::start)
}
