//! Mantle's public gRPC API, package `mantle.v1`.
//!
//! The `.proto` files under `proto/mantle/v1/` are the contract; this crate compiles them.
//! Only the daemon's `api/` layer, the client and tests may depend on it.

pub mod codec;

/// Generated messages, clients and servers of package `mantle.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("mantle.v1");
}

/// The encoded `FileDescriptorSet` of every Mantle proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mantle_descriptor");
