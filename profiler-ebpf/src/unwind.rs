//! The user-stack unwinder: walks a stack from the sampled registers with
//! the `.eh_frame` rows userspace loaded into `UNWIND_ROWS`.
//!
//! At each frame: find the process's mapping holding the pc (binary search
//! in its `UNWIND_PROCESSES` entry), the row covering the pc's file address
//! (binary search in the file's slice of `UNWIND_ROWS`), compute the CFA,
//! read the return address at CFA-8 and the saved rbp with
//! `bpf_probe_read_user`. Where no row applies (no table for the file, a
//! gap, an expression the table could not encode) it steps with the frame
//! pointer instead, so mixed stacks come out whole.
//!
//! One frame is one iteration of `bpf_loop` (kernel 5.17+): the verifier
//! checks the step once instead of following every path of every frame,
//! which is what lets one program run reach 519 frames: `DEEP_STACK_DEPTH`
//! slots, the last kept for the truncation mark. The state lives in a
//! per-CPU map; the stack is then stored by the tail-called
//! `unwind_store`, verified on its own. Every unwind of a user stack ends
//! with one of the `Stat::Unwind*` reasons counted, in the counters of the
//! kind that started it (a thread without one, a kernel thread, goes to
//! the store program as an empty unwind, counted nowhere).
//!
//! Both kinds use it: the CPU program from the sampled registers, the
//! off-CPU program from the registers the blocked thread saved when it
//! entered the kernel. Each kind tail-calls through its own program array
//! (a program array only holds programs of its owner's type).

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_NO_PREALLOC},
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    EbpfContext,
};
use profiler_common::{
    signal_frame, Stat, UnwindChunk, UnwindMapping, UnwindProcess, UnwindRow, UnwindStop,
    DEEP_STACK_DEPTH, TRUNCATED_MARK, UNWIND_CHUNK_ROWS, UNWIND_MAPPINGS_MAX,
};

use crate::python;
use crate::stack::{self, read_user, Kind, LoopBody, LOOP_ON, LOOP_STOP};

/// Default capacity of `UNWIND_ROWS` and `UNWIND_CHUNK_PCS`, in chunks
/// (64 MiB of 8-byte rows); userspace sets it from the table budget at
/// load.
const UNWIND_CHUNKS: u32 = (8 << 20) / UNWIND_CHUNK_ROWS;

/// Binary-search steps over a file's chunks: enough for 2^20 chunks (2^28
/// rows), more than any budget allows.
const CHUNK_SEARCH_STEPS: u32 = 20;

/// Binary-search steps over a chunk's rows (`UNWIND_CHUNK_ROWS` < 2^9).
const ROW_SEARCH_STEPS: u32 = 9;

/// Binary-search steps over a process's mappings (`UNWIND_MAPPINGS_MAX`
/// is 2^6).
const MAPPING_SEARCH_STEPS: u32 = 7;

/// The rows, by chunk: a hash map allocates only the chunks in use (an
/// array of the whole budget would be allocated whole at load).
#[map(name = "UNWIND_ROWS")]
static UNWIND_ROWS: HashMap<u32, UnwindChunk> =
    HashMap::with_max_entries(UNWIND_CHUNKS, BPF_F_NO_PREALLOC);

/// The first row's pc of each chunk in use.
#[map(name = "UNWIND_CHUNK_PC")]
static UNWIND_CHUNK_PCS: Array<u32> = Array::with_max_entries(UNWIND_CHUNKS, 0);

#[map(name = "UNWIND_PROCESSES")]
static UNWIND_PROCESSES: HashMap<u32, UnwindProcess> =
    HashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);

/// Per-CPU state of an unwind in progress across tail calls, one slot per
/// kind (see `crate::stack` on why kinds do not share scratch space).
#[map(name = "UNWIND_STATE")]
static UNWIND_STATE: PerCpuArray<UnwindState> =
    PerCpuArray::with_max_entries(profiler_common::kernel_kind::COUNT, 0);

/// Where an unwind stands between program runs.
#[derive(Clone, Copy)]
pub struct UnwindState {
    pc: u64,
    sp: u64,
    bp: u64,
    depth: u32,
    tgid: u32,
    tid: u32,
    /// The kind whose counters the unwind bumps (`Kind::index`).
    kind: u32,
    /// The pc is an interrupted instruction, not a return address (the
    /// leaf, or the frame a signal interrupted): look it up as it is.
    pc_is_exact: bool,
    /// `bp` was read from a frame's save slot (a row's, or the frame
    /// chain's), not taken from a register that code without frame
    /// pointers uses for anything: only then is a zero the ABI's
    /// outermost mark.
    bp_saved: bool,
    /// A frame-pointer step came before: the registers may be guesses.
    guessed: bool,
    stop: UnwindStop,
}

/// An unwind in progress on this CPU.
pub struct Unwind {
    state: &'static mut UnwindState,
}

impl Unwind {
    /// Unwinds the current thread's user stack whole from its user
    /// registers `regs` (see [`Unwind::run`]). Before its tables are
    /// loaded every step is a frame-pointer step, so the stack still ends
    /// in a counted reason (and a mark when it stopped early), unlike the
    /// kernel's frame-pointer walk. Without registers (a kernel thread,
    /// the idle task) the unwind is empty, nothing counted, for the store
    /// program to record the sample with its kernel stack: recording is
    /// then code of that program alone.
    #[inline(always)]
    pub fn of_thread(regs: Option<pt_regs>, kind: Kind, tgid: u32, tid: u32) -> Option<Unwind> {
        let state = UNWIND_STATE.get_ptr_mut(kind.index())?;
        // SAFETY: this CPU's state; nothing else touches it meanwhile.
        let state = unsafe { &mut *state };
        let (pc, sp, bp) = regs.map_or((0, 0, 0), |regs| (regs.rip, regs.rsp, regs.rbp));
        // Field by field, each a volatile store: a struct literal's zero
        // fields become `memset`s, which the BPF target emits as byte
        // loops the verifier walks byte by byte inside every state.
        let fresh = state as *mut UnwindState;
        // SAFETY: `fresh` is this CPU's live state (above); each pointer is
        // to one of its fields.
        unsafe {
            addr_of_mut!((*fresh).pc).write_volatile(pc);
            addr_of_mut!((*fresh).sp).write_volatile(sp);
            addr_of_mut!((*fresh).bp).write_volatile(bp);
            addr_of_mut!((*fresh).depth).write_volatile(0);
            addr_of_mut!((*fresh).tgid).write_volatile(tgid);
            addr_of_mut!((*fresh).tid).write_volatile(tid);
            addr_of_mut!((*fresh).kind).write_volatile(kind.index());
            addr_of_mut!((*fresh).pc_is_exact).write_volatile(regs.is_some());
            addr_of_mut!((*fresh).bp_saved).write_volatile(false);
            addr_of_mut!((*fresh).guessed).write_volatile(false);
            addr_of_mut!((*fresh).stop).write_volatile(UnwindStop::Running);
        }
        let mut unwind = Unwind { state };
        if regs.is_some() {
            if has_tables(tgid) {
                kind.bump(Stat::Unwound);
            } else {
                kind.bump(Stat::UnwindNoTables);
            }
            unwind.run();
        }
        Some(unwind)
    }

    /// Picks up the unwind of `kind` its unwinding program left on this CPU.
    #[inline(always)]
    pub fn resume(kind: Kind) -> Option<Unwind> {
        let state = UNWIND_STATE.get_ptr_mut(kind.index())?;
        // SAFETY: this CPU's state, written by the run that tail-called us.
        Some(Unwind {
            state: unsafe { &mut *state },
        })
    }

    /// The sampled thread: (tgid, tid).
    #[inline(always)]
    pub fn thread(&self) -> (u32, u32) {
        (self.state.tgid, self.state.tid)
    }

    /// Steps the whole stack, one frame per `bpf_loop` iteration (the
    /// verifier checks the step once, not once per frame), up to 519
    /// frames (`DEEP_STACK_DEPTH` slots, the last kept for the truncation
    /// mark).
    #[inline(always)]
    pub fn run(&mut self) {
        let mut steps = Steps {
            kind: self.state.kind,
        };
        if !stack::loop_over(DEEP_STACK_DEPTH as u32, &mut steps) {
            self.state.stop = UnwindStop::NoRule;
        } else if self.state.stop == UnwindStop::Running {
            self.truncate();
        }
    }

    /// The kind that started the unwind.
    #[inline(always)]
    pub fn kind(&self) -> Kind {
        Kind::from_index(self.state.kind)
    }

    /// Hands the sample over to the store program in slot `slot` of
    /// `programs`; returns only when the tail call failed (an empty slot),
    /// having counted the lost sample.
    #[inline(always)]
    pub fn store_in_tail_call<C: EbpfContext>(
        &mut self,
        ctx: &C,
        programs: &ProgramArray,
        slot: u32,
    ) {
        chain_on(ctx, programs, slot, self.kind());
    }

    /// Ends an unwind that ran out of loop iterations: the last frame
    /// becomes the truncation mark.
    #[inline(always)]
    fn truncate(&mut self) {
        let Some(scratch) = self.kind().scratch() else {
            return;
        };
        // SAFETY: this CPU's scratch value; nothing else touches it meanwhile.
        let stack = unsafe { &mut *scratch };
        // Replace the last frame: the stack ends in the mark.
        let last = (self.state.depth as usize).wrapping_sub(1);
        if let Some(frame) = stack.frames.get_mut(last) {
            *frame = TRUNCATED_MARK;
        }
        self.state.stop = UnwindStop::Truncated;
    }

    /// Counts why the unwind ended, marks a stack that stopped early with
    /// its reason ([`UnwindStop::mark`]; a truncated one has its mark
    /// already), appends the thread's Python frames (in a Python process,
    /// see [`crate::python`]), ends the scratch stack's frames with a zero
    /// (hashing and userspace stop there) and returns their number.
    #[inline(always)]
    pub fn finish(self) -> usize {
        let stop = self.state.stop;
        if let Some(stat) = stop.stat() {
            self.kind().bump(stat);
        }
        let mut depth = self.state.depth as usize;
        if let (Some(mark), Some(scratch)) = (stop.mark(), self.kind().scratch()) {
            // SAFETY: this CPU's scratch value; nothing else touches it meanwhile.
            let stack = unsafe { &mut *scratch };
            // Frames stop one slot short of the last (the truncation
            // mark's): a stack that stopped early always has room.
            if stop != UnwindStop::Truncated {
                if let Some(frame) = stack.frames.get_mut(depth) {
                    *frame = mark;
                    depth += 1;
                }
            }
        }
        if let Some(config) = self.kind().config() {
            depth = python::append(self.kind(), config, self.state.tgid, self.state.tid, depth);
        }
        if let Some(scratch) = self.kind().scratch() {
            // SAFETY: this CPU's scratch value; nothing else touches it meanwhile.
            let stack = unsafe { &mut *scratch };
            if let Some(frame) = stack.frames.get_mut(depth) {
                *frame = 0;
            }
        }
        depth
    }
}

/// Goes on in the unwinding chain's program in slot `slot` of `programs`
/// (the caller's own array, of programs of its type); returns only when
/// the tail call failed (an empty slot: a loading bug), having counted
/// the lost sample of `kind`.
#[inline(always)]
pub fn chain_on<C: EbpfContext>(ctx: &C, programs: &ProgramArray, slot: u32, kind: Kind) {
    // SAFETY: `programs` is the caller's own array, whose slots hold
    // programs of the caller's type, or nothing.
    let _ = unsafe { programs.tail_call(ctx, slot) };
    kind.bump(Stat::UnwindTailCallFailed);
}

/// Whether userspace loaded an entry (tables, some maybe pending) for
/// `tgid`.
#[inline(always)]
pub fn has_tables(tgid: u32) -> bool {
    // SAFETY: plain lookup; the value is not read here.
    unsafe { UNWIND_PROCESSES.get(&tgid) }.is_some()
}

/// The unwinding loop's context: the kind, whose state is in
/// [`UNWIND_STATE`] (its contents unknown to the verifier, so the loop's
/// states converge at once).
struct Steps {
    kind: u32,
}

impl LoopBody for Steps {
    #[inline(always)]
    fn step(&mut self, _index: u64) -> i64 {
        step_one(Kind::from_index(self.kind))
    }
}

/// One unwinding step: pushes the current pc and finds the caller's
/// registers. Returns 1 (stop looping) once the unwind has ended.
#[inline(always)]
fn step_one(kind: Kind) -> i64 {
    let (Some(state), Some(scratch)) = (UNWIND_STATE.get_ptr_mut(kind.index()), kind.scratch())
    else {
        return LOOP_STOP;
    };
    // SAFETY: this CPU's values; nothing else touches them meanwhile.
    let (state, stack) = unsafe { (&mut *state, &mut *scratch) };
    if state.stop != UnwindStop::Running {
        return LOOP_STOP;
    }
    let depth = state.depth as usize;
    if depth >= DEEP_STACK_DEPTH - 1 {
        // The last slot: the stack goes on, but not here.
        if let Some(frame) = stack.frames.get_mut(DEEP_STACK_DEPTH - 1) {
            *frame = TRUNCATED_MARK;
        }
        state.depth = DEEP_STACK_DEPTH as u32;
        state.stop = UnwindStop::Truncated;
        return LOOP_STOP;
    }
    stack.frames[depth] = state.pc;
    state.depth += 1;
    // A return address points after the call: look up the call.
    let lookup_pc = if state.pc_is_exact {
        state.pc
    } else {
        state.pc.wrapping_sub(1)
    };
    // SAFETY: plain lookup of a value userspace writes whole. None: no
    // tables (yet), every step with the frame pointer.
    let process = unsafe { UNWIND_PROCESSES.get(&state.tgid) };
    let row = process.and_then(|process| find_row(process, lookup_pc));
    let mut row_step = false;
    let step = match row {
        Some((row, _)) if row.cfa_kind() == UnwindRow::CFA_END => {
            state.stop = UnwindStop::End;
            return LOOP_STOP;
        }
        Some((row, _)) if row.cfa_kind() == UnwindRow::CFA_PENDING => {
            state.stop = UnwindStop::TablesPending;
            return LOOP_STOP;
        }
        // A return address whose call would be in the gap before a
        // function, at the function's first byte, was planted, not pushed
        // by a call: makecontext's return into `__start_context`. Nothing
        // a caller left lies beyond it.
        Some((row, vaddr))
            if row.cfa_kind() == UnwindRow::CFA_GAP
                && !state.pc_is_exact
                && u64::from(vaddr) + 1 == u64::from(row.pc) + u64::from(row.cfa_offset as u16) =>
        {
            // Userspace names a caller's frame by its address - 1 (the
            // call instruction); this one has no call: its name is at
            // its own address.
            if let Some(frame) = stack.frames.get_mut(depth) {
                *frame = state.pc.wrapping_add(1);
            }
            state.stop = UnwindStop::End;
            return LOOP_STOP;
        }
        Some((row, _)) if row.cfa_kind() == UnwindRow::CFA_SIGNAL => step_signal(state.sp),
        Some((row, _)) if row.cfa_kind() != UnwindRow::CFA_GAP => {
            row_step = true;
            step_with_row(&row, state.pc, state.sp, state.bp, state.bp_saved)
        }
        // A gap between functions, a file without a table, no entry yet.
        _ => {
            if process.is_some() {
                kind.bump(Stat::UnwindFramePointerSteps);
            }
            state.guessed = true;
            step_with_frame_pointer(state.bp, state.bp_saved)
        }
    };
    match step {
        Step::Frame {
            pc,
            sp,
            bp,
            bp_saved,
            exact,
        } => {
            // A frame that does not move up the stack would loop; a
            // signal frame may move anywhere (sigaltstack).
            if sp <= state.sp && !exact {
                state.stop = UnwindStop::NoProgress;
            } else if pc == 0 && row_step && !state.guessed {
                // Where rows alone found the return address, a zero one
                // ends the stack (libgcc's unwinder reads it so; Go's
                // goroutines and threads end so).
                state.stop = UnwindStop::End;
            } else if pc == 0 {
                state.stop = UnwindStop::ZeroReturn;
            }
            state.pc = pc;
            state.sp = sp;
            state.bp = bp;
            state.bp_saved = bp_saved;
            state.pc_is_exact = exact;
        }
        Step::ReadError => state.stop = UnwindStop::ReadError,
        Step::NoRule => state.stop = UnwindStop::NoRule,
        Step::FramePointerEnd => state.stop = UnwindStop::FramePointerEnd,
    }
    i64::from(state.stop != UnwindStop::Running)
}

/// The user registers the current task saved when it entered the kernel
/// (a syscall, an interrupt, a fault), from the top of its kernel stack.
/// `None` for kernel threads.
#[inline(always)]
pub fn current_user_regs() -> Option<pt_regs> {
    // SAFETY: the helper returns the current task (a BTF pointer) and its
    // saved user registers, or 0.
    let user = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) };
    if user == 0 {
        return None;
    }
    // SAFETY: `user` points at the task's `pt_regs`, readable with
    // bpf_probe_read_kernel.
    let regs = unsafe { bpf_probe_read_kernel(user as *const pt_regs) }.ok()?;
    (regs.cs & 3 == 3).then_some(regs)
}

/// The outcome of one step.
enum Step {
    /// The caller's registers; `exact` when its pc is not a return address.
    Frame {
        pc: u64,
        sp: u64,
        bp: u64,
        /// `bp` came from a save slot (see [`UnwindState`]).
        bp_saved: bool,
        exact: bool,
    },
    /// User memory could not be read.
    ReadError,
    /// Nothing applies (no row, and not a frame pointer step).
    NoRule,
    /// A zero frame pointer: the outermost frame, by the ABI.
    FramePointerEnd,
}

/// The row covering `pc` in the table of the mapping holding it, and the
/// file address `pc` is at; `None` when no table covers it or its rule is
/// not one the unwinder applies.
#[inline(always)]
fn find_row(process: &UnwindProcess, pc: u64) -> Option<(UnwindRow, u32)> {
    // The last mapping with start <= pc (mappings are sorted by start).
    let count = process.count.min(UNWIND_MAPPINGS_MAX as u32);
    let lo = search(process, (0, count, pc), MAPPING_SEARCH_STEPS)?;
    if lo == 0 {
        return None;
    }
    // The mask keeps the index provably in bounds for the verifier
    // (UNWIND_MAPPINGS_MAX is a power of two; lo - 1 < count <= it).
    let mapping = &process.mappings[(lo as usize - 1) & (UNWIND_MAPPINGS_MAX - 1)];
    if pc >= mapping.end {
        return None;
    }
    if mapping.row_start == UnwindMapping::PENDING {
        let pending = UnwindRow {
            kind: UnwindRow::CFA_PENDING,
            ..UnwindRow::default()
        };
        return Some((pending, 0));
    }
    let vaddr = pc.wrapping_add(mapping.adjust);
    if vaddr > u64::from(u32::MAX) {
        return None;
    }
    let vaddr = vaddr as u32;
    // The last row with row.pc <= vaddr: first the last of the file's
    // chunks (its table starts a chunk) whose first row's pc is <= vaddr,
    // then the row in that chunk.
    if mapping.row_count == 0 {
        return None;
    }
    let end = mapping.row_start.checked_add(mapping.row_count)?;
    let first_chunk = mapping.row_start / UNWIND_CHUNK_ROWS;
    let last_chunk = (end - 1) / UNWIND_CHUNK_ROWS;
    let bounds = (first_chunk, last_chunk + 1, u64::from(vaddr));
    let lo = search(&ChunkPcs, bounds, CHUNK_SEARCH_STEPS)?;
    if lo <= first_chunk {
        return None;
    }
    let chunk_index = lo - 1;
    // SAFETY: a plain lookup; the value is only read, and userspace
    // replaces a chunk only once no entry points at its rows.
    let chunk = unsafe { UNWIND_ROWS.get(&chunk_index) }?;
    // The file's rows in this chunk: [0, count); row 0's pc <= vaddr.
    let count = (end - chunk_index * UNWIND_CHUNK_ROWS).min(UNWIND_CHUNK_ROWS);
    let lo = search(chunk, (1, count, u64::from(vaddr)), ROW_SEARCH_STEPS)?;
    // lo is 0 when the search failed: no row.
    let row = *chunk.rows.get((lo as usize).wrapping_sub(1))?;
    (row.cfa_kind() != UnwindRow::CFA_NONE).then_some((row, vaddr))
}

/// A binary search for the last entry whose key is at most `key`, in
/// `[lo, hi)`: `lo` is one past it when done, 0 when it failed.
#[derive(Clone, Copy)]
#[repr(C)]
struct Search {
    lo: u32,
    hi: u32,
    key: u64,
}

/// A search's `bpf_loop` context, on the stack: what is searched and the
/// bounds so far. Each step is checked once (not every narrowing of the
/// bounds, as a plain loop was: the mapping search as a 7-step loop was
/// three quarters of the instructions verified for `unwind_user`).
#[repr(C)]
struct SearchIn<T> {
    table: *const T,
    bounds: Search,
}

/// Runs a binary search over `table` from `(lo, hi, key)` for at most
/// `steps` steps; the resulting `lo` (see [`Search`]), `None` when the
/// loop failed.
#[inline(always)]
fn search<T: Sorted>(table: &T, (lo, hi, key): (u32, u32, u64), steps: u32) -> Option<u32> {
    let mut input = SearchIn {
        table: table as *const T,
        bounds: Search { lo, hi, key },
    };
    stack::loop_over(steps, &mut input).then_some(input.bounds.lo)
}

/// A table a [`Search`] runs over: the key of its entry `index`, `None`
/// when it cannot be read.
trait Sorted {
    fn key(&self, index: u32) -> Option<u64>;
}

/// A process's mappings, by start address.
impl Sorted for UnwindProcess {
    #[inline(always)]
    fn key(&self, index: u32) -> Option<u64> {
        self.mappings.get(index as usize).map(|m| m.start)
    }
}

/// A chunk's rows, by file address.
impl Sorted for UnwindChunk {
    #[inline(always)]
    fn key(&self, index: u32) -> Option<u64> {
        self.rows.get(index as usize).map(|row| u64::from(row.pc))
    }
}

/// The chunks in use (`UNWIND_CHUNK_PCS`), by their first row's address.
struct ChunkPcs;

impl Sorted for ChunkPcs {
    #[inline(always)]
    fn key(&self, index: u32) -> Option<u64> {
        UNWIND_CHUNK_PCS.get(index).map(|&pc| u64::from(pc))
    }
}

impl<T: Sorted> LoopBody for SearchIn<T> {
    /// One step of a search over a `T`: narrows its bounds on the middle
    /// entry, or fails the search (`lo` 0) when that cannot be read.
    #[inline(always)]
    fn step(&mut self, _index: u64) -> i64 {
        let state = &mut self.bounds;
        if state.lo >= state.hi {
            return LOOP_STOP;
        }
        let mid = state.lo + (state.hi - state.lo) / 2;
        // SAFETY: `table` is the caller's (a map value, or a marker),
        // alive for the loop.
        match unsafe { &*self.table }.key(mid) {
            Some(key) if key <= state.key => state.lo = mid + 1,
            Some(_) => state.hi = mid,
            None => {
                state.lo = 0;
                return LOOP_STOP;
            }
        }
        LOOP_ON
    }
}

/// One step with a table row.
#[inline(always)]
fn step_with_row(row: &UnwindRow, pc: u64, sp: u64, bp: u64, bp_saved: bool) -> Step {
    let offset = row.cfa_bytes() as u64;
    let cfa = match row.cfa_kind() {
        UnwindRow::CFA_RSP => sp.wrapping_add(offset),
        UnwindRow::CFA_RBP => bp.wrapping_add(offset),
        UnwindRow::CFA_PLT => sp + 8 + if (pc & 15) >= offset { 8 } else { 0 },
        _ => return Step::NoRule,
    };
    let Some(ra) = read_user(cfa.wrapping_sub(8)) else {
        return Step::ReadError;
    };
    let (caller_bp, bp_saved) = if row.kind & UnwindRow::RBP_SAVED != 0 {
        let at = cfa.wrapping_add((row.rbp_slot as i64 as u64).wrapping_mul(8));
        match read_user(at) {
            Some(bp) => (bp, true),
            None => return Step::ReadError,
        }
    } else {
        (bp, bp_saved)
    };
    Step::Frame {
        pc: ra,
        sp: cfa,
        bp: caller_bp,
        bp_saved,
        exact: false,
    }
}

/// One step out of a signal trampoline: the interrupted frame's registers
/// are in the `ucontext_t` at the stack pointer.
#[inline(always)]
fn step_signal(sp: u64) -> Step {
    let (Some(pc), Some(caller_sp), Some(bp)) = (
        read_user(sp + signal_frame::RIP),
        read_user(sp + signal_frame::RSP),
        read_user(sp + signal_frame::RBP),
    ) else {
        return Step::ReadError;
    };
    Step::Frame {
        pc,
        sp: caller_sp,
        bp,
        bp_saved: false,
        exact: true,
    }
}

/// One step with the frame pointer: the return address above the saved
/// rbp. A zero frame pointer read from a save slot ends the stack (the
/// ABI's outermost mark); one in a register may be anything.
#[inline(always)]
fn step_with_frame_pointer(bp: u64, bp_saved: bool) -> Step {
    if bp == 0 {
        return if bp_saved {
            Step::FramePointerEnd
        } else {
            Step::NoRule
        };
    }
    match (read_user(bp + 8), read_user(bp)) {
        (Some(ra), Some(caller_bp)) => Step::Frame {
            pc: ra,
            sp: bp + 16,
            bp: caller_bp,
            bp_saved: true,
            exact: false,
        },
        _ => Step::ReadError,
    }
}
