//! Compiles `molt.proto` without a system `protoc`: protox parses it, then
//! tonic-prost-build generates the code from the file descriptor set.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=molt.proto");
    let fds = protox::compile(["molt.proto"], ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("molt_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        // Image chunks are sliced out of the receive buffer, not copied.
        .bytes(".molt.v1.ImageChunk.data")
        // Small per-call buffers: a session lasts as long as its node.
        .codec_path("crate::codec::SmallBuffers")
        .compile_fds(fds)?;
    Ok(())
}
