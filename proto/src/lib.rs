//! The `molt.v1` wire protocol, generated from `molt.proto` at build time.
//!
//! Only this crate and `common::convert` handle these types; the rest of molt
//! works with the domain types of `common`.
#![allow(missing_docs, clippy::all, missing_debug_implementations)]

pub mod codec;

/// Generated messages and services of package `molt.v1`.
pub mod v1 {
    tonic::include_proto!("molt.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("molt_descriptor");
