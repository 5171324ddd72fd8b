//! The targets, one module each.

pub mod heartbeat;
pub mod manifest;
pub mod node_toml;
pub mod package;
pub mod rest;
