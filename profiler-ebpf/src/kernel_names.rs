//! Names of kernel code addresses, formatted by the kernel for userspace's
//! kernel frames.
//!
//! `bpf_snprintf`'s `%pS` looks an address up in the kernel's own symbol
//! table (modules and BPF programs included) and writes
//! `name+0xOFFSET/0xSIZE [module]`. Reading `/proc/kallsyms` instead has
//! the kernel format all of its ~120,000 lines (about 60 ms on Linux
//! 6.18, a third of a one-shot capture's CPU) for the few hundred
//! addresses a profile holds.
//!
//! The program is never attached: userspace writes a batch of addresses
//! into `KERNEL_NAMES` and runs it with `BPF_PROG_TEST_RUN`, the count as
//! its first argument. It needs Linux 5.17+ (`bpf_loop`; `bpf_snprintf`
//! is 5.13); userspace reads kallsyms where it does not load.

use aya_ebpf::{
    helpers::generated::bpf_snprintf,
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use profiler_common::{KernelNameBatch, KERNEL_NAME_BATCH, KERNEL_NAME_BYTES};

use crate::stack::{self, LoopBody, LOOP_ON, LOOP_STOP};

/// The batch being named (written and read by userspace).
#[map(name = "KERNEL_NAMES")]
static KERNEL_NAMES: Array<KernelNameBatch> = Array::with_max_entries(1, 0);

/// `bpf_snprintf`'s format, which must be in a frozen read-only map: a
/// `static` goes to `.rodata`, which aya loads as one.
static SYMBOL_FORMAT: [u8; 4] = *b"%pS\0";

/// Names the first `arg(0)` addresses of the batch (at most
/// [`KERNEL_NAME_BATCH`]). Returns 0, or 1 when the loop did not run.
#[raw_tracepoint]
pub fn kernel_names(ctx: RawTracePointContext) -> i32 {
    let count: u64 = ctx.arg(0);
    let count = count.min(KERNEL_NAME_BATCH as u64) as u32;
    if stack::loop_over(count, &mut Naming) {
        0
    } else {
        1
    }
}

/// One address named per step.
struct Naming;

impl LoopBody for Naming {
    #[inline(always)]
    fn step(&mut self, index: u64) -> i64 {
        let index = index as usize;
        if index >= KERNEL_NAME_BATCH {
            return LOOP_STOP;
        }
        let Some(batch) = KERNEL_NAMES.get_ptr_mut(0) else {
            return LOOP_STOP;
        };
        // SAFETY: the map's one value, which only this program (run by
        // userspace, one run at a time) writes.
        let batch = unsafe { &mut *batch };
        let mut args = [batch.addresses[index]];
        // SAFETY: the output is the name's `KERNEL_NAME_BYTES` bytes in
        // the map value; the format is NUL-terminated in a frozen
        // read-only map; `args` holds the one 8-byte value it formats.
        let written = unsafe {
            bpf_snprintf(
                batch.names[index].as_mut_ptr().cast(),
                KERNEL_NAME_BYTES as u32,
                SYMBOL_FORMAT.as_ptr().cast(),
                args.as_mut_ptr(),
                8,
            )
        };
        if written < 0 {
            // Nothing written (the helper's buffers busy): not the name
            // an earlier batch left in the slot.
            batch.names[index][0] = 0;
        }
        LOOP_ON
    }
}
