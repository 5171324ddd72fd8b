//! What every molt agent runs, leader or not: the one-port TLS server that
//! carries gRPC and HTTPS, the session with the leader, the command
//! executor, and image staging.

pub mod auth;
pub mod boot;
pub mod cli;
pub mod control;
pub mod dataplane;
pub mod docker_node;
pub mod follower;
pub mod gate;
pub mod http;
pub mod image_stream;
pub mod metrics;
pub mod node;
pub mod otlp;
pub mod reboot;
pub mod reflection;
pub mod relay;
pub mod server;

pub use node::{Node, NodeHandle};
