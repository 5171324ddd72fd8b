//! molt's integration tests: one binary (matklad's layout).
//!
//! - `cluster`, `prestage`, `security`: the in-process cluster (real agents,
//!   real mTLS on loopback, tasks instead of processes).
//! - `process`, `upgrade`, `failover`: the release binaries, each node a process in its own PID
//!   namespace, driven through the `molt` CLI as an operator would.

mod cluster;
mod control;
mod described;
mod docker;
mod failover;
mod hardening;
mod install;
mod operations;
mod operator;
mod prestage;
mod process;
mod security;
mod signing;
mod support;
mod traffic;
mod upgrade;
