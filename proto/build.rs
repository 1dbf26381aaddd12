//! Compiles `profile.proto` with protox (a protobuf compiler written in
//! Rust, so no `protoc` binary is needed) and prost-build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=profile.proto");
    let descriptors = protox::compile(["profile.proto"], ["."])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
