//! Logging setup, once per process: `RUST_LOG`-style filter, on stderr, as
//! plain text or as JSON lines (`log_format` in node.toml). Either way each
//! line carries the spans it runs in — `node`, and for the work of an
//! upgrade `operation_id` and `step` — so one upgrade can be followed across
//! the leader's and the nodes' logs (`grep operation_id=ID`, or a JSON query
//! on `spans[].operation_id`).

use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `fields`, `span`, `spans`.
    Json,
}

/// Initializes tracing with `default_filter` unless `RUST_LOG` is set.
/// Safe to call more than once (later calls do nothing).
pub fn init(default_filter: &str) {
    init_as(default_filter, LogFormat::Text)
}

/// As [`init`], in `format`.
pub fn init_as(default_filter: &str, format: LogFormat) {
    init_with(default_filter, format, None)
}

/// What the log lines are written through: the filter over the registry.
/// A layer added with [`init_with`] (an OTLP exporter) sees what it lets through.
pub type Base = tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;

/// A layer beside the log lines, over [`Base`].
pub type Extra = Box<dyn tracing_subscriber::Layer<Base> + Send + Sync>;

/// As [`init_as`], with `extra` beside the log lines (an exporter of the spans).
pub fn init_with(default_filter: &str, format: LogFormat, extra: Option<Extra>) {
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let lines: Extra = match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_target(false).boxed()
        }
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_target(false)
            .boxed(),
    };
    let layers: Vec<Extra> = std::iter::once(lines).chain(extra).collect();
    let _ = tracing_subscriber::registry().with(filter).with(layers).try_init();
}
