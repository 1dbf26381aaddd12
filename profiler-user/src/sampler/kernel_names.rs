//! Kernel code addresses to function names by the kernel's own symbol
//! table, for the symbolizer's kernel frames ([`KernelCodeNames`]).
//!
//! profiler-ebpf's `kernel_names` program formats each address with
//! `bpf_snprintf`'s `%pS`; userspace writes a batch of addresses into its
//! map, runs it (`BPF_PROG_TEST_RUN`) and reads the names back: three
//! syscalls per [`KERNEL_NAME_BATCH`] addresses. Reading `/proc/kallsyms`
//! instead has the kernel format every symbol it has (~120,000 lines,
//! about 60 ms on Linux 6.18, a third of a one-shot capture's CPU) and
//! holds ~2 MiB of names, for the few hundred addresses a profile has.
//! The kernel's lookup also knows modules and BPF programs loaded since,
//! which a table read once does not.

use std::io;
use std::os::fd::AsFd;

use aya::maps::{Array, MapData, MapError};
use aya::programs::{ProgramError, ProgramFd, RawTracePoint};
use aya::Ebpf;
use profiler_common::{names, KernelNameBatch, KERNEL_NAME_BATCH};

use super::bpf_calls;

/// Kernel function names by address.
pub trait KernelCodeNames: Send {
    /// The function each of `addresses` is in, as the kernel names it
    /// (without offset or module), in order; `None` for an address in no
    /// symbol the kernel knows.
    fn names(&mut self, addresses: &[u64]) -> Result<Vec<Option<String>>, KernelNamesError>;
}

/// Why the kernel could not name addresses.
#[derive(Debug, thiserror::Error)]
pub enum KernelNamesError {
    /// The object lacks the program or its map (a build mismatch).
    #[error("the eBPF object has no {0}: rebuild hostprof (cargo xtask build-ebpf)")]
    Missing(&'static str),
    /// The program did not load: a kernel older than 5.17 (`bpf_loop`)
    /// or without `bpf_snprintf` (5.13).
    #[error("loading the kernel_names program (needs Linux 5.17+): {0}")]
    Load(#[source] ProgramError),
    /// The map is not the batch array.
    #[error("opening the KERNEL_NAMES map: {0}")]
    Map(#[source] MapError),
    /// Holding the program open failed (out of descriptors).
    #[error("holding the kernel_names program open: {0}")]
    Hold(#[source] io::Error),
    /// Writing the addresses or reading the names failed.
    #[error("the KERNEL_NAMES batch: {0}")]
    Batch(#[source] MapError),
    /// Running the program failed, or it returned an error.
    #[error("running the kernel_names program: {0}")]
    Run(#[source] io::Error),
}

/// The `kernel_names` program, loaded, with its batch map.
pub struct KernelNamesProgram {
    /// A descriptor of its own: the program stays loaded while the
    /// sampler's `Ebpf` may go first.
    program: ProgramFd,
    batch: Array<MapData, KernelNameBatch>,
}

impl KernelNamesProgram {
    /// Loads the program of `ebpf` (the verifier checks it: tens of
    /// instructions) and takes its map.
    pub(super) fn load(ebpf: &mut Ebpf) -> Result<Self, KernelNamesError> {
        let name = names::KERNEL_NAMES_PROGRAM;
        let program: &mut RawTracePoint = ebpf
            .program_mut(name)
            .ok_or(KernelNamesError::Missing(name))?
            .try_into()
            .map_err(KernelNamesError::Load)?;
        program.load().map_err(KernelNamesError::Load)?;
        let program = program
            .fd()
            .map_err(KernelNamesError::Load)?
            .try_clone()
            .map_err(KernelNamesError::Hold)?;
        let batch = ebpf
            .take_map(names::KERNEL_NAMES)
            .ok_or(KernelNamesError::Missing(names::KERNEL_NAMES))?
            .try_into()
            .map_err(KernelNamesError::Map)?;
        Ok(Self { program, batch })
    }
}

impl KernelCodeNames for KernelNamesProgram {
    fn names(&mut self, addresses: &[u64]) -> Result<Vec<Option<String>>, KernelNamesError> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let mut names = Vec::with_capacity(addresses.len());
        // SAFETY: `KernelNameBatch` is integers and integer arrays: all
        // zeroes is a value.
        let mut batch: Box<KernelNameBatch> = Box::new(unsafe { std::mem::zeroed() });
        for chunk in addresses.chunks(KERNEL_NAME_BATCH) {
            batch.addresses[..chunk.len()].copy_from_slice(chunk);
            self.batch
                .set(0, *batch, 0)
                .map_err(KernelNamesError::Batch)?;
            let returned =
                bpf_calls::run_raw_tracepoint(self.program.as_fd(), &[chunk.len() as u64])
                    .map_err(KernelNamesError::Run)?;
            if returned != 0 {
                return Err(KernelNamesError::Run(io::Error::other(
                    "its bpf_loop did not run",
                )));
            }
            *batch = self.batch.get(&0, 0).map_err(KernelNamesError::Batch)?;
            names.extend(
                batch.names[..chunk.len()]
                    .iter()
                    .map(|text| function_name(text).map(str::to_owned)),
            );
        }
        Ok(names)
    }
}

/// The function name in `text`, `%pS`'s `name+0xOFFSET/0xSIZE [module]`
/// up to its NUL; `None` for an address in no symbol (written as `0x` and
/// its hex digits), or a name cut short (`KERNEL_NAME_BYTES`). An
/// address in a function's padding (`__pfx_NAME`, Linux 6.2+; call-depth
/// thunks run there) is named for the function it pads, as kallsyms
/// named it (its table leaves the paddings out).
fn function_name(text: &[u8]) -> Option<&str> {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let text = std::str::from_utf8(&text[..end]).ok()?;
    let (name, _offset) = text.split_once('+')?;
    let name = name.strip_prefix("__pfx_").unwrap_or(name);
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::KERNEL_NAME_BYTES;

    fn padded(text: &str) -> [u8; KERNEL_NAME_BYTES] {
        let mut bytes = [0u8; KERNEL_NAME_BYTES];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        bytes
    }

    #[test]
    fn the_name_is_what_comes_before_the_offset() {
        assert_eq!(
            function_name(&padded("schedule+0x4a/0xd0")),
            Some("schedule")
        );
        assert_eq!(
            function_name(&padded("kvm_vcpu_block+0x1c/0x90 [kvm]")),
            Some("kvm_vcpu_block")
        );
        assert_eq!(
            function_name(&padded("bpf_prog_6deef7357e7b4530_sample_cpu+0x3e/0x1a8")),
            Some("bpf_prog_6deef7357e7b4530_sample_cpu")
        );
        assert_eq!(
            function_name(&padded("do_one.cold+0x1/0x2")),
            Some("do_one.cold")
        );
        assert_eq!(
            function_name(&padded("__pfx_schedule+0x4/0x10")),
            Some("schedule"),
            "the padding before a function is named for it"
        );
    }

    #[test]
    fn no_symbol_or_a_name_cut_short_is_none() {
        assert_eq!(function_name(&padded("0xffffffffc0a01234")), None);
        assert_eq!(function_name(&padded("")), None);
        // bpf_snprintf cut it: no offset follows.
        let long = "x".repeat(KERNEL_NAME_BYTES - 1);
        assert_eq!(function_name(&padded(&long)), None);
        // Not a full name: text before a NUL only.
        let mut cut = padded("schedule");
        cut[9..12].copy_from_slice(b"+0x");
        assert_eq!(function_name(&cut), None);
    }

    /// Privileged: the program names addresses as `/proc/kallsyms` lists
    /// them, over several batches, and an address in no symbol as none.
    #[test]
    fn the_kernel_names_code_as_kallsyms_lists_it() {
        if super::super::tests::skip_bpf() {
            return;
        }
        let path = crate::system_info::kernel_code::KALLSYMS_PATH;
        let kallsyms = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
        let mut text: Vec<(u64, &str)> = kallsyms
            .lines()
            .filter_map(|line| {
                let (address, kind, name) =
                    crate::system_info::kernel_code::parse_kallsyms_line(line)?;
                // Core kernel text (modules' lines have a `[module]`),
                // weak aliases included (the kernel may name one).
                (address != 0 && matches!(kind, 't' | 'T' | 'w' | 'W') && !line.contains('['))
                    .then_some((address, name))
            })
            .collect();
        text.sort_unstable();
        // Functions alone at their address with room for an address
        // inside (aliases share one, and the kernel picks among them).
        let inside: Vec<(u64, &str)> = text
            .windows(3)
            .filter(|w| w[0].0 < w[1].0 && w[1].0 + 1 < w[2].0)
            .map(|w| (w[1].0 + 1, w[1].1))
            .filter(|(_, name)| !name.starts_with("__pfx_"))
            .step_by(97)
            .take(3 * KERNEL_NAME_BATCH + 5)
            .collect();
        assert!(
            inside.len() > 2 * KERNEL_NAME_BATCH,
            "kallsyms hides addresses (kptr_restrict?): run as root"
        );
        let mut ebpf = super::super::loader()
            .load(super::super::EBPF_OBJECT)
            .expect("load the object");
        let mut program = KernelNamesProgram::load(&mut ebpf)
            .unwrap_or_else(|err| panic!("{:#}", anyhow::Error::from(err)));
        let mut addresses: Vec<u64> = inside.iter().map(|&(address, _)| address).collect();
        // User space: no kernel symbol.
        addresses.push(0x1000);
        let names = program.names(&addresses).expect("named");
        assert_eq!(names.len(), addresses.len());
        for ((address, want), got) in inside.iter().zip(&names) {
            assert_eq!(got.as_deref(), Some(*want), "{address:#x}");
        }
        assert_eq!(names.last(), Some(&None));
    }
}
