//! Logging setup, once per process: `RUST_LOG`-style filter, plain text on
//! stderr.

use tracing_subscriber::{EnvFilter, fmt};

/// Initializes tracing with `default_filter` unless `RUST_LOG` is set.
/// Safe to call more than once (later calls do nothing).
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).with_target(false).try_init();
}
