//! Builds the eBPF object (profiler-ebpf) with the nightly toolchain and
//! bpf-linker, and leaves it in OUT_DIR for `include_bytes!`.
//!
//! Why build it here rather than check in a prebuilt object: the object is
//! always in step with the source and with `profiler-common`'s layouts, and
//! nothing binary lives in the repository. The price is that building
//! userspace needs nightly + rust-src + bpf-linker, which `cargo xtask setup`
//! installs (idempotently) on a fresh machine.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "profiler-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../profiler-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).map_err(|err| {
        anyhow::anyhow!(
            "building the eBPF object failed ({err:#}); \
             run `cargo xtask setup` to install nightly, rust-src and bpf-linker"
        )
    })
}
