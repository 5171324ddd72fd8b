//! The `molt` operator CLI as a library, so the test harness and benches can
//! drive the same code an operator runs.

pub mod client;
pub mod docker;
pub mod local;
pub mod partition;
pub mod pki;
pub mod render;
pub mod shell;
pub mod upgrade;

/// The API's types the CLI reads and sends.
pub use molt_api;
