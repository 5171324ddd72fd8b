//! The follower role, which every agent plays (the leader too, towards
//! itself): the session with the leader, command execution, staging.

pub mod dial;
pub mod executor;
pub mod session;
pub mod stage;
