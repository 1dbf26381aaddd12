//! Plain-old-data types shared by hostprof's eBPF program and its userspace.
//!
//! Everything here is `#[repr(C)]`, has no padding and no pointers, so the
//! kernel side can write it into BPF maps and userspace can read it back
//! byte for byte. Names of maps are shared too, so the two sides cannot drift.
#![no_std]

/// Deepest stack either side records (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Length of a task's `comm` (the kernel's `TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Number of map sets the program alternates between (see [`Config::active_set`]).
pub const MAP_SETS: u32 = 2;

/// Names of the BPF maps and program, as they appear in the object file.
///
/// Program names stay under 16 bytes: the kernel keeps that many, and
/// tools (`bpftool`, `cargo xtask bench-off-cpu`) tell programs apart by
/// them.
pub mod names {
    /// The perf-event program of the CPU profile (CPU-clock events).
    pub const PROGRAM: &str = "sample_cpu";
    /// The perf-event program of the page-fault profile (software
    /// `page-faults` events); it shares the CPU program's tail calls,
    /// counts and stacks.
    pub const FAULTS_PROGRAM: &str = "sample_faults";
    /// Per-CPU: which kind (`kernel_kind`) the perf-event program running
    /// on the CPU samples, for the programs it tail-calls.
    pub const SAMPLED_KIND: &str = "SAMPLED_KIND";
    /// The off-CPU switch-out program (`tp_btf/sched_switch`).
    pub const OFF_CPU_SWITCH_OUT: &str = "off_cpu_out";
    /// The tracepoint the off-CPU switch-in attaches to where the kernel
    /// has it (6.16+): the end of `__schedule`, in the context of the
    /// thread that got the CPU back.
    pub const SWITCH_IN_TRACEPOINT: &str = "sched_exit_tp";
    /// The off-CPU switch-in program (`tp_btf/sched_exit_tp`).
    pub const OFF_CPU_SWITCH_IN: &str = "off_cpu_in";
    /// The off-CPU program that unwinds a user stack from tables, by tail call.
    pub const OFF_CPU_UNWIND: &str = "off_cpu_unwind";
    /// The off-CPU program that stores an unwound stack, by tail call.
    pub const OFF_CPU_STORE: &str = "off_cpu_store";
    /// Program array of the off-CPU tail-called programs (a program array
    /// holds programs of one type and, for tracing programs, one hook).
    pub const OFF_CPU_TAIL_CALLS: &str = "OFF_CPU_TAIL_CALLS";
    /// The off-CPU switch-in as a kprobe on `finish_task_switch*`, for
    /// kernels without `sched_exit_tp`.
    pub const OFF_CPU_SWITCH_IN_KPROBE: &str = "off_kp_in";
    /// [`OFF_CPU_UNWIND`] for the kprobe switch-in.
    pub const OFF_CPU_UNWIND_KPROBE: &str = "off_kp_unwind";
    /// [`OFF_CPU_STORE`] for the kprobe switch-in.
    pub const OFF_CPU_STORE_KPROBE: &str = "off_kp_store";
    /// Program array of the kprobe switch-in's tail-called programs.
    pub const OFF_CPU_KPROBE_TAIL_CALLS: &str = "OFF_CPU_KPROBE_TAIL_CALLS";
    /// [`super::OffCpuStart`] in task-local storage: when each thread
    /// left the CPU.
    pub const OFF_CPU_TASKS: &str = "OFF_CPU_TASKS";
    /// Kept waits of every waiting kind (off-CPU, locks), one
    /// [`super::WaitEvent`] each.
    pub const WAIT_EVENTS: &str = "WAIT_EVENTS";
    /// Per-CPU: the kept wait of each kind on its way through the tail calls.
    pub const WAIT_PENDING: &str = "WAIT_PENDING";
    /// The kernel-lock tracepoint where a contention begins (Linux 5.19+).
    pub const CONTENTION_BEGIN: &str = "contention_begin";
    /// The kernel-lock tracepoint where it ends, in the waiter's context.
    pub const CONTENTION_END: &str = "contention_end";
    /// Notes when a thread began to wait for a kernel lock
    /// (`tp_btf/contention_begin`).
    pub const LOCK_BEGIN: &str = "lock_begin";
    /// Measures and records the wait as it ends (`tp_btf/contention_end`).
    pub const LOCK_END: &str = "lock_end";
    /// The locks program that unwinds a user stack from tables, by tail call.
    pub const LOCK_UNWIND: &str = "lock_unwind";
    /// The locks program that stores an unwound stack, by tail call.
    pub const LOCK_STORE: &str = "lock_store";
    /// The locks program that records a kept wait's files, by tail call.
    pub const LOCK_FILES: &str = "lock_files";
    /// Program array of the locks programs' tail calls.
    pub const LOCK_TAIL_CALLS: &str = "LOCK_TAIL_CALLS";
    /// [`super::LockStart`] by [`super::LockWaiter`]: contentions under way.
    pub const LOCK_START: &str = "LOCK_START";
    /// The program that unwinds a user stack from tables, by tail call.
    pub const UNWIND_PROGRAM: &str = "unwind_user";
    /// The program that stores an unwound stack, by tail call.
    pub const STORE_PROGRAM: &str = "unwind_store";
    /// Program array of the tail-called programs.
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    /// The CPU program that records which files a sample's user frames
    /// are in, by tail call (kernels with `bpf_find_vma`, 5.17+).
    pub const CPU_FILES: &str = "cpu_files";
    /// [`CPU_FILES`] for the off-CPU tracepoint switch-in.
    pub const OFF_CPU_FILES: &str = "off_cpu_files";
    /// [`CPU_FILES`] for the off-CPU kprobe switch-in.
    pub const OFF_CPU_FILES_KPROBE: &str = "off_kp_files";
    /// Slot of the files program in each kind's tail-call array.
    pub const TAIL_RECORD_FILES: u32 = 2;
    /// Slots of each tail-call array.
    pub const TAIL_SLOTS: u32 = 3;
    /// Bumps a process's exec generation as an `exec` begins
    /// (`raw_tp/sched_prepare_exec`, Linux 6.10+).
    pub const EXEC_BEGIN: &str = "exec_begin";
    /// Bumps a process's exec generation once an `exec` succeeded
    /// (`raw_tp/sched_process_exec`).
    pub const EXEC_DONE: &str = "exec_done";
    /// Tracepoint [`EXEC_BEGIN`] attaches to.
    pub const EXEC_BEGIN_TRACEPOINT: &str = "sched_prepare_exec";
    /// Tracepoint [`EXEC_DONE`] attaches to.
    pub const EXEC_DONE_TRACEPOINT: &str = "sched_process_exec";
    /// Exec generation ([`ExecGen`](crate::ExecGen)) by tgid: how many
    /// `exec` steps (and an exit) the process went through since hostprof
    /// started (absent: none).
    pub const EXEC_GEN: &str = "EXEC_GEN";
    /// What the files programs know of each process image: the mappings
    /// sent on [`PROCESS_EVENTS`] and the frames waiting for a lookup.
    pub const FILES_STATE: &str = "FILES_STATE";
    /// Per-CPU state of a files walk under way.
    pub const FILES_WALK: &str = "FILES_WALK";
    /// Looks up a process's waiting frames as its threads exit
    /// (`raw_tp/sched_process_exit`).
    pub const FILES_EXIT: &str = "files_exit";
    /// Tracepoint [`FILES_EXIT`] attaches to.
    pub const FILES_EXIT_TRACEPOINT: &str = "sched_process_exit";
    /// Slot of [`UNWIND_PROGRAM`] in [`TAIL_CALLS`].
    pub const TAIL_UNWIND_USER: u32 = 0;
    /// Slot of [`STORE_PROGRAM`] in [`TAIL_CALLS`].
    pub const TAIL_UNWIND_STORE: u32 = 1;
    /// [`super::Config`] array, one entry.
    pub const CONFIG: &str = "CONFIG";
    /// The object's read-only global of [`super::Features`] bits, written
    /// by the loader before any program is verified.
    pub const FEATURES: &str = "FEATURES";
    /// Per-CPU [`super::Stat`] counters.
    pub const STATS: &str = "STATS";
    /// Tgids the userspace asked to profile (only read when
    /// [`super::Config::FILTER_PIDS`] is set).
    pub const PID_FILTER: &str = "PID_FILTER";
    /// Tgids already announced on [`PROCESS_EVENTS`].
    pub const KNOWN_PROCESSES: &str = "KNOWN_PROCESSES";
    /// Ring buffer of [`super::ProcessEvent`]s.
    pub const PROCESS_EVENTS: &str = "PROCESS_EVENTS";
    /// Per-set sample counts, keyed by [`super::SampleKey`].
    pub const COUNTS: [&str; 2] = ["COUNTS_0", "COUNTS_1"];
    /// Per-set stacks, keyed by [`super::StackHash`], valued [`super::Stack`].
    pub const STACKS: [&str; 2] = ["STACKS_0", "STACKS_1"];
    /// Per-set stacks deeper than a [`super::Stack`], valued [`super::DeepStack`].
    pub const DEEP_STACKS: [&str; 2] = ["DEEP_STACKS_0", "DEEP_STACKS_1"];
    /// Per CPU, per set: entries this CPU added to the set since userspace
    /// last emptied it (`u32`; see [`super::Config::drain_soon_at`]).
    pub const SET_FILL: &str = "SET_FILL";
    /// Every loaded file's [`super::UnwindRow`]s, one run per file, in
    /// [`super::UnwindChunk`]s by chunk index (a hash map: memory for the
    /// chunks in use only).
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    /// The `pc` of each chunk's first row, by chunk index (an array the
    /// unwinder binary-searches before it looks a chunk up).
    pub const UNWIND_CHUNK_PCS: &str = "UNWIND_CHUNK_PC";
    /// [`super::UnwindProcess`] by tgid: processes unwound with tables.
    pub const UNWIND_PROCESSES: &str = "UNWIND_PROCESSES";
    /// The OpenTelemetry eBPF instrumentation's trace-context map
    /// ([`super::TraceContext`] by `pid_tgid`), shared through a pin (see
    /// [`super::TRACE_CONTEXT_MAP_PIN`]).
    pub const TRACES_CTX: &str = "traces_ctx_v1";
    /// [`super::ThreadContextLocation`] by tgid: processes that publish
    /// OpenTelemetry thread context, and where their threads keep it.
    pub const THREAD_CONTEXTS: &str = "THREAD_CONTEXTS";
    /// [`super::PythonProcess`] by tgid: CPython processes whose frames
    /// the unwinder walks, and where their interpreter keeps them.
    pub const PYTHON_PROCESSES: &str = "PYTHON_PROCESSES";
    /// Per-CPU scratch for one `_PyInterpreterFrame`'s first bytes.
    pub const PYTHON_SCRATCH: &str = "PYTHON_SCRATCH";
    /// Per-CPU state of a Python frame walk.
    pub const PYTHON_WALK: &str = "PYTHON_WALK";
    /// The Python thread state last found for a thread (by thread
    /// pointer), checked before each use.
    pub const PYTHON_THREADS: &str = "PYTHON_THREADS";

    /// The memory profile's uprobe on each allocator entry point (the
    /// attach cookie says which, [`super::alloc_fn`]).
    pub const MEMORY_ENTRY: &str = "mem_entry";
    /// The memory profile's uretprobe on each allocating entry point.
    pub const MEMORY_RETURN: &str = "mem_return";
    /// The memory program that unwinds a user stack from tables, by tail call.
    pub const MEMORY_UNWIND: &str = "mem_unwind";
    /// The memory program that stores an unwound stack, by tail call.
    pub const MEMORY_STORE: &str = "mem_store";
    /// The memory program that records a sampled allocation's files, by
    /// tail call.
    pub const MEMORY_FILES: &str = "mem_files";
    /// Program array of the memory programs' tail calls.
    pub const MEMORY_TAIL_CALLS: &str = "MEMORY_TAIL_CALLS";
    /// [`super::MemoryThread`] in task-local storage: each thread's byte
    /// countdown and the allocation call it is in.
    pub const MEMORY_THREADS: &str = "MEMORY_THREADS";
    /// Sampled allocations still live, by [`super::LiveKey`] (value:
    /// `bpf_ktime_get_ns()` at allocation).
    pub const MEMORY_LIVE: &str = "MEMORY_LIVE";
    /// [`super::AllocEvent`]s and [`super::FreeEvent`]s, in the order
    /// they happened.
    pub const MEMORY_EVENTS: &str = "MEMORY_EVENTS";
    /// Frees of sampled allocations that did not fit in
    /// [`MEMORY_EVENTS`], by [`super::LiveKey`]; userspace takes them at
    /// each drain.
    pub const MEMORY_FREES: &str = "MEMORY_FREES";
    /// [`super::MEMORY_GAPS`] draws from the exponential distribution of
    /// bytes between two sampled allocations, filled by userspace.
    pub const MEMORY_GAPS: &str = "MEMORY_GAPS";
    /// Processes whose forks the memory profile follows (tgid → 1): the
    /// probed ones (userspace adds each) and the children they fork (the
    /// kernel adds them).
    pub const MEMORY_PROCESSES: &str = "MEMORY_PROCESSES";
    /// The memory program that follows a probed process's forks.
    pub const MEMORY_FORK: &str = "mem_fork";
    /// Its BTF tracepoint.
    pub const MEMORY_FORK_TRACEPOINT: &str = "sched_process_fork";

    /// Names kernel code addresses for userspace (`%pS`): a raw
    /// tracepoint program never attached, run with `BPF_PROG_TEST_RUN`.
    pub const KERNEL_NAMES_PROGRAM: &str = "kernel_names";
    /// The one [`super::KernelNameBatch`] [`KERNEL_NAMES_PROGRAM`] reads
    /// and writes.
    pub const KERNEL_NAMES: &str = "KERNEL_NAMES";
    /// Every raw tracepoint program name above.
    pub const RAW_TRACEPOINTS: &[&str] = &[KERNEL_NAMES_PROGRAM, EXEC_BEGIN, EXEC_DONE, FILES_EXIT];

    /// Every uprobe (entry and return) program name above.
    pub const UPROBES: &[&str] = &[MEMORY_ENTRY, MEMORY_RETURN];

    /// Every perf-event program name above: userspace checks that the
    /// object has them.
    pub const PROGRAMS: &[&str] = &[PROGRAM, UNWIND_PROGRAM, STORE_PROGRAM, CPU_FILES];
    /// Every kprobe program name above.
    pub const KPROBES: &[&str] = &[
        OFF_CPU_SWITCH_IN_KPROBE,
        OFF_CPU_UNWIND_KPROBE,
        OFF_CPU_STORE_KPROBE,
        OFF_CPU_FILES_KPROBE,
        MEMORY_UNWIND,
        MEMORY_STORE,
        MEMORY_FILES,
    ];
    /// Every BTF tracepoint program name above.
    pub const BTF_TRACEPOINTS: &[&str] = &[
        OFF_CPU_SWITCH_OUT,
        OFF_CPU_SWITCH_IN,
        OFF_CPU_UNWIND,
        OFF_CPU_STORE,
        OFF_CPU_FILES,
        LOCK_BEGIN,
        LOCK_END,
        LOCK_UNWIND,
        LOCK_STORE,
        LOCK_FILES,
    ];
    /// Every map name above.
    pub const MAPS: &[&str] = &[
        TAIL_CALLS,
        CONFIG,
        STATS,
        PID_FILTER,
        KNOWN_PROCESSES,
        PROCESS_EVENTS,
        EXEC_GEN,
        FILES_STATE,
        FILES_WALK,
        SAMPLED_KIND,
        COUNTS[0],
        COUNTS[1],
        STACKS[0],
        STACKS[1],
        DEEP_STACKS[0],
        DEEP_STACKS[1],
        UNWIND_ROWS,
        UNWIND_CHUNK_PCS,
        UNWIND_PROCESSES,
        OFF_CPU_TAIL_CALLS,
        OFF_CPU_KPROBE_TAIL_CALLS,
        OFF_CPU_TASKS,
        WAIT_EVENTS,
        WAIT_PENDING,
        LOCK_TAIL_CALLS,
        LOCK_START,
        TRACES_CTX,
        THREAD_CONTEXTS,
        PYTHON_PROCESSES,
        PYTHON_SCRATCH,
        PYTHON_WALK,
        PYTHON_THREADS,
        MEMORY_TAIL_CALLS,
        MEMORY_THREADS,
        MEMORY_LIVE,
        MEMORY_EVENTS,
        MEMORY_FREES,
        MEMORY_GAPS,
        MEMORY_PROCESSES,
        KERNEL_NAMES,
    ];
}

/// Where the OpenTelemetry eBPF instrumentation pins its trace-context map
/// (the specification's proposal for trace–profile correlation): an
/// `LRU_HASH` from a thread's `pid_tgid` to its [`TraceContext`].
pub const TRACE_CONTEXT_MAP_PIN: &str = "/sys/fs/bpf/otel/traces_ctx_v1";

/// Entries of the trace-context map when hostprof creates it.
pub const TRACE_CONTEXT_MAP_ENTRIES: u32 = 16_384;

/// The trace and span a thread is running in, as the shared trace-context
/// map holds it: the W3C trace id and span id, bytes in wire order. All
/// zeros: no context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The 16-byte trace id.
    pub trace_id: [u8; 16],
    /// The 8-byte span id.
    pub span_id: [u8; 8],
}

/// Where a process's threads keep their OpenTelemetry thread-context
/// pointer (`otel_thread_ctx_v1`, OTEP 4947), relative to each thread's
/// thread pointer (`fsbase` on x86-64); found by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadContextLocation {
    /// [`ThreadContextLocation::STATIC`] or [`ThreadContextLocation::DTV`].
    pub kind: u32,
    /// The process's exec generation it was found in: after an `exec`
    /// the new image keeps the tgid, not the location.
    pub exec_gen: u32,
    /// Static TLS: the pointer is at thread pointer + this.
    pub tp_offset: i64,
    /// Dynamic TLS: the module's index in the thread's DTV.
    pub module_id: u64,
    /// Dynamic TLS: the pointer's offset in the module's TLS block.
    pub offset: u64,
}

impl ThreadContextLocation {
    /// In static TLS, at [`Self::tp_offset`] from the thread pointer.
    pub const STATIC: u32 = 1;
    /// In dynamic TLS (glibc x86-64: the DTV pointer at thread pointer +
    /// 8, 16-byte entries), at [`Self::offset`] in module
    /// [`Self::module_id`]'s block.
    pub const DTV: u32 = 2;
}

/// What a thread-context record starts with (OTEP 4947): trace id, span
/// id, then `valid` (1: the record may be read) and the W3C trace flags.
pub const THREAD_CONTEXT_HEADER: usize = 26;
/// Offset of `valid` in a thread-context record.
pub const THREAD_CONTEXT_VALID: usize = 24;

/// Most executable mappings with unwind tables per process; mappings past
/// this many are unwound with frame pointers.
pub const UNWIND_MAPPINGS_MAX: usize = 64;

/// Slots of a user stack the table unwinder records: up to
/// `DEEP_STACK_DEPTH - 1` = 519 frames, and a stack that goes on past them
/// gets [`TRUNCATED_MARK`] in the last slot.
pub const DEEP_STACK_DEPTH: usize = 520;

/// Last frame of a stack that was cut at the depth limit: no code lives at
/// this address, in user space or in the kernel.
pub const TRUNCATED_MARK: u64 = u64::MAX;

/// Words at or above this are marks ([`TRUNCATED_MARK`], [`PYTHON_MARK`],
/// [`UnwindStop::mark`]), never addresses: the top 16 bytes of the address
/// space hold no code.
pub const MARKS_FLOOR: u64 = u64::MAX - 15;

/// Why a table unwind ended. Every reason is a counter
/// ([`UnwindStop::stat`]); a stack that stopped before its outermost frame
/// ends in the reason's mark ([`UnwindStop::mark`]), so the profile shows
/// it as incomplete instead of as a whole stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum UnwindStop {
    /// The unwind goes on.
    Running,
    /// A row said the frame is the outermost (its return address is
    /// undefined: `_start`, `clone3`, a thread's entry), a return address
    /// was planted at a function's first byte (makecontext), or the
    /// return address rows alone found is zero (libgcc's end of stack;
    /// Go's goroutines and threads end so): the stack is whole.
    End,
    /// A frame-pointer step found a zero frame pointer, the ABI's mark of
    /// the outermost frame: the stack is whole.
    FramePointerEnd,
    /// User memory could not be read.
    ReadError,
    /// Neither a row nor a frame pointer applied.
    NoRule,
    /// A step did not move up the stack.
    NoProgress,
    /// A return address was zero after a frame-pointer step (the
    /// registers may be guesses) or in a signal frame.
    ZeroReturn,
    /// The pc is in a file whose table is still being built: stepping
    /// with frame pointers in code that may not keep them would make up
    /// callers.
    TablesPending,
    /// The stack goes on past the depth limit.
    Truncated,
}

impl UnwindStop {
    /// The reasons a stack stops early, each with its mark.
    pub const EARLY: [UnwindStop; 6] = [
        UnwindStop::ReadError,
        UnwindStop::NoRule,
        UnwindStop::NoProgress,
        UnwindStop::ZeroReturn,
        UnwindStop::TablesPending,
        UnwindStop::Truncated,
    ];

    /// The counter of this reason (`None` while running).
    pub const fn stat(self) -> Option<Stat> {
        Some(match self {
            UnwindStop::Running => return None,
            UnwindStop::End => Stat::UnwindStopEnd,
            UnwindStop::FramePointerEnd => Stat::UnwindStopFramePointerEnd,
            UnwindStop::ReadError => Stat::UnwindStopReadError,
            UnwindStop::NoRule => Stat::UnwindStopNoRule,
            UnwindStop::NoProgress => Stat::UnwindStopNoProgress,
            UnwindStop::ZeroReturn => Stat::UnwindStopZeroReturn,
            UnwindStop::TablesPending => Stat::UnwindStopTablesPending,
            UnwindStop::Truncated => Stat::UnwindTruncated,
        })
    }

    /// The word that ends a stack stopped for this reason, after its last
    /// frame; `None` for a whole stack (or one still running).
    pub const fn mark(self) -> Option<u64> {
        Some(match self {
            UnwindStop::Running | UnwindStop::End | UnwindStop::FramePointerEnd => return None,
            UnwindStop::Truncated => TRUNCATED_MARK,
            UnwindStop::ReadError => u64::MAX - 2,
            UnwindStop::NoRule => u64::MAX - 3,
            UnwindStop::NoProgress => u64::MAX - 4,
            UnwindStop::ZeroReturn => u64::MAX - 5,
            UnwindStop::TablesPending => u64::MAX - 6,
        })
    }

    /// The reason whose mark is `word`.
    pub fn from_mark(word: u64) -> Option<UnwindStop> {
        Self::EARLY
            .into_iter()
            .find(|stop| stop.mark() == Some(word))
    }
}

/// Separates a user stack's native frames from the Python frames the
/// unwinder appends after them ([`python_frame`]); no code lives at this
/// address.
pub const PYTHON_MARK: u64 = u64::MAX - 1;

/// Most Python frames recorded per sample (innermost first).
pub const PYTHON_FRAMES_MAX: usize = 96;

/// One Python frame as a stack word: the code object's address (user
/// addresses fit 47 bits on x86-64), whether the frame was the first one
/// its `_PyEval_EvalFrameDefault` call evaluated, and the index of the
/// code unit it is at. Never 0 (a code object is never at address 0) and
/// never one of the marks.
pub mod python_frame {
    /// Bits of the code object's address.
    pub const ADDRESS_MASK: u64 = (1 << 47) - 1;
    /// Set on a frame its C call of the evaluation loop entered first:
    /// the outermost Python frame of that native frame.
    pub const ENTRY: u64 = 1 << 47;
    /// Where the code-unit index starts.
    pub const INSTR_SHIFT: u32 = 48;
    /// Largest code-unit index kept (larger ones saturate): one less
    /// than all ones, so that no word is a mark.
    pub const INSTR_MAX: u64 = 0xfffe;

    /// The word of a frame at code object `code`, code unit `instr`.
    pub const fn encode(code: u64, entry: bool, instr: u64) -> u64 {
        let instr = if instr > INSTR_MAX { INSTR_MAX } else { instr };
        (code & ADDRESS_MASK) | (if entry { ENTRY } else { 0 }) | (instr << INSTR_SHIFT)
    }

    /// (code object address, entry, code-unit index) of `word`.
    pub const fn decode(word: u64) -> (u64, bool, u32) {
        (
            word & ADDRESS_MASK,
            word & ENTRY != 0,
            (word >> INSTR_SHIFT) as u32,
        )
    }
}

/// Where a CPython process keeps its threads' frames, for the unwinder to
/// walk them (set by userspace per process, see `process::python`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonProcess {
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// The exec generation it was found in (see [`ThreadContextLocation`]).
    pub exec_gen: u32,
    /// `PythonProcess::*` flags: how entry frames are marked.
    pub flags: u32,
    /// Field offsets of this interpreter version.
    pub offsets: PythonOffsets,
}

impl PythonProcess {
    /// 3.11: a frame's byte at [`PythonOffsets::frame_entry`] is
    /// `is_entry`, set on the first frame of each C call.
    pub const ENTRY_FLAG: u32 = 1;
    /// 3.12: a frame whose byte at [`PythonOffsets::frame_entry`]
    /// (`owner`) is [`PythonOffsets::shim_owner`] is the shim each C call
    /// pushes first: not a Python frame; the frame before it (innermost
    /// first) is the call's entry.
    pub const ENTRY_SHIM: u32 = 2;
    /// The thread's current frame is at [`PythonOffsets::tstate_frame`]
    /// of its thread state (3.13+), not behind its `cframe`.
    pub const FRAME_IN_TSTATE: u32 = 4;
}

/// Byte offsets of the CPython fields the frame walk reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonOffsets {
    /// `_PyRuntimeState.interpreters.head`.
    pub runtime_interpreters: u16,
    /// `PyInterpreterState.threads.head`.
    pub interp_threads: u16,
    /// `PyThreadState.next`.
    pub tstate_next: u16,
    /// `PyThreadState.thread_id` (`pthread_self()`: the thread pointer).
    pub tstate_thread_id: u16,
    /// `PyThreadState.cframe` (3.11, 3.12), or `current_frame` (3.13+).
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame`.
    pub cframe_current: u16,
    /// `_PyInterpreterFrame.f_code` (`f_executable` in 3.13+).
    pub frame_code: u16,
    /// `_PyInterpreterFrame.previous`.
    pub frame_previous: u16,
    /// `_PyInterpreterFrame.prev_instr` (`instr_ptr` in 3.13+).
    pub frame_instr: u16,
    /// `_PyInterpreterFrame.is_entry` (3.11) or `owner` (3.12+).
    pub frame_entry: u16,
    /// `PyCodeObject.co_code_adaptive`: the first code unit.
    pub code_units: u16,
    /// The `owner` of shim frames (3.12: `FRAME_OWNED_BY_CSTACK`).
    pub shim_owner: u16,
}

/// One row of an unwind table in the kernel's encoding, 8 bytes: from `pc`
/// (an ELF virtual address of the file) to the next row, how to find the
/// caller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// First pc covered (file virtual address; tables of files linked
    /// above 4 GiB are not loaded).
    pub pc: u32,
    /// CFA offset from the register [`Self::cfa_kind`] names, in bytes
    /// or, with [`UnwindRow::CFA_SCALED`], the low 16 bits of its count of
    /// 8-byte units; for [`UnwindRow::CFA_PLT`] the `pc & 15` threshold.
    pub cfa_offset: i16,
    /// `UnwindRow::CFA_*` in the low nibble, [`UnwindRow::RBP_SAVED`] flag.
    pub kind: u8,
    /// Offset from the CFA of the caller's saved rbp, in 8-byte slots
    /// (with [`UnwindRow::RBP_SAVED`]).
    pub rbp_slot: i8,
}

impl UnwindRow {
    /// No rule the unwinder can apply: fall back to frame pointers.
    pub const CFA_NONE: u8 = 0;
    /// CFA = rsp + offset.
    pub const CFA_RSP: u8 = 1;
    /// CFA = rbp + offset.
    pub const CFA_RBP: u8 = 2;
    /// CFA = rsp + 8, + 8 more when `pc & 15 >= offset` (PLT stubs).
    pub const CFA_PLT: u8 = 3;
    /// The outermost frame: the stack ends here.
    pub const CFA_END: u8 = 4;
    /// A signal trampoline (`__restore_rt`): rsp points at the
    /// `ucontext_t` whose saved registers are the interrupted frame's.
    pub const CFA_SIGNAL: u8 = 5;
    /// Not a row of a table: the pc's file has its table still being
    /// built (see [`UnwindMapping::PENDING`]).
    pub const CFA_PENDING: u8 = 7;
    /// No function here: the gap between two functions' rows, of
    /// [`Self::cfa_offset`] bytes (read as `u16`) up to the next
    /// function's first row (0 when that does not fit). Frame pointers apply, except to a
    /// return address at the next function's first byte (see the
    /// unwinder).
    pub const CFA_GAP: u8 = 6;
    /// Mask of the CFA kind in [`Self::kind`].
    pub const CFA_MASK: u8 = 0x0f;
    /// Flag in [`Self::kind`]: the caller's rbp is saved at CFA +
    /// 8 × [`Self::rbp_slot`] (else rbp still holds it).
    pub const RBP_SAVED: u8 = 0x10;
    /// Flag in [`Self::kind`]: the CFA offset is a count of 8-byte units,
    /// 18 bits unsigned: [`Self::cfa_offset`] holds the low 16, the
    /// kind's top two bits the rest. For frames from 32 KiB to 2 MiB
    /// (LLVM has frames of 37 KiB and 502 KiB, librustc_driver of 527 KiB).
    pub const CFA_SCALED: u8 = 0x20;
    /// Where the top bits of a scaled offset start in [`Self::kind`].
    pub const CFA_SCALED_HIGH_SHIFT: u8 = 6;

    /// The `CFA_*` kind.
    pub fn cfa_kind(&self) -> u8 {
        self.kind & Self::CFA_MASK
    }

    /// The CFA offset in bytes (for the `CFA_RSP` and `CFA_RBP` kinds).
    #[inline(always)]
    pub fn cfa_bytes(&self) -> i64 {
        if self.kind & Self::CFA_SCALED != 0 {
            let high = i64::from(self.kind >> Self::CFA_SCALED_HIGH_SHIFT);
            ((high << 16) | i64::from(self.cfa_offset as u16)) * 8
        } else {
            i64::from(self.cfa_offset)
        }
    }
}

/// Rows per [`UnwindChunk`]: a chunk and the hash map's element header fit
/// one 4 KiB allocation of the kernel's BPF memory allocator.
pub const UNWIND_CHUNK_ROWS: u32 = 496;

/// A run of [`UNWIND_CHUNK_ROWS`] rows of `UNWIND_ROWS`: row `i` of the
/// table space is row `i % UNWIND_CHUNK_ROWS` of chunk
/// `i / UNWIND_CHUNK_ROWS`. A file's table starts a chunk; the rows past
/// its end in its last chunk are zero and never read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindChunk {
    /// The rows.
    pub rows: [UnwindRow; UNWIND_CHUNK_ROWS as usize],
}

impl Default for UnwindChunk {
    fn default() -> Self {
        Self {
            rows: [UnwindRow::default(); UNWIND_CHUNK_ROWS as usize],
        }
    }
}

// A chunk stays within one 4 KiB allocation with the map's ~56-byte
// element header.
const _: () = assert!(core::mem::size_of::<UnwindChunk>() <= 4096 - 64);

/// Byte offsets in a signal frame's `ucontext_t` (x86-64), from the stack
/// pointer of the signal trampoline.
pub mod signal_frame {
    /// Saved rbp (`uc_mcontext.gregs[REG_RBP]`).
    pub const RBP: u64 = 120;
    /// Saved rsp.
    pub const RSP: u64 = 160;
    /// Saved rip: the interrupted instruction.
    pub const RIP: u64 = 168;
}

/// An executable mapping of a process whose file has an unwind table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Added (wrapping) to a pc in the mapping to get the file's virtual address.
    pub adjust: u64,
    /// Index of the file's first row in `UNWIND_ROWS`, or
    /// [`UnwindMapping::PENDING`].
    pub row_start: u32,
    /// Number of rows of the file.
    pub row_count: u32,
}

impl UnwindMapping {
    /// [`Self::row_start`] of a mapping whose file's table is still being
    /// built (its `row_count` is 0).
    pub const PENDING: u32 = u32::MAX;
}

/// The table-backed mappings of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindProcess {
    /// Mappings in use, at the front of [`Self::mappings`].
    pub count: u32,
    /// Zero.
    pub pad: u32,
    /// The mappings, sorted by start.
    pub mappings: [UnwindMapping; UNWIND_MAPPINGS_MAX],
}

impl Default for UnwindProcess {
    fn default() -> Self {
        Self {
            count: 0,
            pad: 0,
            mappings: [UnwindMapping::default(); UNWIND_MAPPINGS_MAX],
        }
    }
}

/// A user stack unwound from tables, too deep for a [`Stack`]; innermost
/// first, zero-filled after the last frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeepStack {
    /// Instruction pointers; the first zero ends the stack.
    pub frames: [u64; DEEP_STACK_DEPTH],
}

/// Runtime configuration written by userspace into the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The map set (index into [`names::COUNTS`] / [`names::STACKS`]) that
    /// samples are written to; userspace flips it to drain the other set.
    pub active_set: u32,
    /// Bit set of `Config::*` flags.
    pub flags: u32,
    /// The off-CPU sampling period `P` in nanoseconds: an interval of `d`
    /// ns is kept with probability `min(1, d/P)` (see [`keep_wait`]);
    /// userspace adapts it to the unwind budget.
    pub off_cpu_period_ns: u64,
    /// The same for kernel-lock contentions.
    pub lock_period_ns: u64,
    /// Where the files program finds what it reads (with
    /// [`Config::RECORD_FILES`]).
    pub files: FileOffsets,
    /// `task_struct.thread.fsbase`: a task's thread pointer (with
    /// [`Config::THREAD_CONTEXT`]).
    pub task_fsbase: u32,
    /// `task_struct.tgid`: a task's process id (0: unknown, and forks
    /// are not followed).
    pub task_tgid: u32,
    /// `task_struct.mm`: a task's address space (0: unknown; a child
    /// sharing its parent's, vfork or `posix_spawn`, is then followed as
    /// a fork).
    pub task_mm: u32,
    /// When one CPU has added this many entries to the active set (new
    /// `COUNTS` and `STACKS` entries, kept waits sent), it sends a
    /// [`ProcessEvent::DRAIN_SOON`] so userspace drains before the maps
    /// fill; 0: never.
    pub drain_soon_at: u32,
    /// `task_struct.group_leader`, `task_struct.start_boottime` and
    /// `task_struct.comm`: a new process's leader, its start time and
    /// command name, sent with [`ProcessEvent::NEW`] (0: unknown, not
    /// sent; userspace reads `/proc/PID/stat` instead).
    pub task_group_leader: u32,
    /// See [`Config::task_group_leader`].
    pub task_start_boottime: u32,
    /// See [`Config::task_group_leader`].
    pub task_comm: u32,
    /// Nanoseconds per clock tick of `/proc/PID/stat`'s start times
    /// (`1e9 / _SC_CLK_TCK`): a process's exit is stamped in `EXEC_GEN`
    /// with its start in those ticks ([`ExecGen::exited_ticks`]); 0: not
    /// stamped (set with [`Config::task_group_leader`] only).
    pub ns_per_tick: u32,
}

/// A process's entry in [`names::EXEC_GEN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecGen {
    /// Bumped as an `exec` begins, as it is done, and as the process
    /// exits: which image of the process a sample was taken in.
    pub generation: u32,
    /// Set as the process exits (with the bump), cleared by an `exec`:
    /// its leader's start time in `/proc/PID/stat`'s clock ticks, low 32
    /// bits; 0: no exit seen (or [`Config::ns_per_tick`] is 0). A process
    /// whose pid and start match has exited: userspace need not look for
    /// it in `/proc`.
    pub exited_ticks: u32,
}

/// Byte offsets of the kernel struct fields the files program reads,
/// taken from the running kernel's BTF by userspace (the eBPF side has no
/// CO-RE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOffsets {
    /// `vm_area_struct.vm_start`.
    pub vma_start: u32,
    /// `vm_area_struct.vm_end`.
    pub vma_end: u32,
    /// `vm_area_struct.vm_pgoff`.
    pub vma_pgoff: u32,
    /// `vm_area_struct.vm_file`.
    pub vma_file: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
}

impl Config {
    /// Only record processes whose tgid is in `PID_FILTER`.
    pub const FILTER_PIDS: u32 = 1 << 0;
    /// Drop samples of the idle task (pid 0).
    pub const SKIP_IDLE: u32 = 1 << 1;
    /// Record the file mapping of each sampled user frame
    /// ([`Config::files`] is filled in and the files programs loaded).
    pub const RECORD_FILES: u32 = 1 << 2;
    /// Look each sample's thread up in the trace-context map
    /// ([`names::TRACES_CTX`]).
    pub const TRACE_CONTEXT_MAP: u32 = 1 << 3;
    /// Read the OpenTelemetry thread context of threads of processes in
    /// [`names::THREAD_CONTEXTS`] ([`Config::task_fsbase`] is filled in).
    pub const THREAD_CONTEXT: u32 = 1 << 4;
    /// Walk the Python frames of processes in
    /// [`names::PYTHON_PROCESSES`] ([`Config::task_fsbase`] is filled in).
    pub const PYTHON: u32 = 1 << 5;
}

/// What the loader knows before the programs are verified and never
/// changes while they run: bits of the object's read-only
/// [`names::FEATURES`] global (`aya::EbpfLoader::override_global`).
///
/// Why a global rather than a [`Config`] flag: the verifier reads a
/// frozen read-only global as a constant and does not walk the branch it
/// rules out, nor keep its code. A program built for both unwinders then
/// costs start-up time (the verifier's) and instruction cache only for
/// the one in use; a `Config` flag is a map value the verifier must treat
/// as anything.
pub struct Features;

impl Features {
    /// The table unwinder is loaded (each kind's unwinding and store
    /// programs fill their tail-call slots): the CPU, page-fault, off-CPU
    /// and lock programs hand every sample to it (the memory profile only
    /// those of processes with tables). Without it they read user stacks
    /// with frame pointers themselves.
    pub const TABLES: u32 = 1 << 0;
}

/// Addresses one [`KernelNameBatch`] names.
pub const KERNEL_NAME_BATCH: usize = 128;

/// Bytes of one formatted name, its NUL included: `%pS` writes
/// `name+0xOFFSET/0xSIZE [module]`, a name of up to 512 bytes (the
/// kernel's `KSYM_NAME_LEN` since 6.1; Rust code's names are long), the
/// offsets and a module's name (the kernel's `KSYM_SYMBOL_LEN`, ~620).
pub const KERNEL_NAME_BYTES: usize = 640;

/// Kernel code addresses and their names as the kernel formats them
/// (`bpf_snprintf`'s `%pS`), the one value of [`names::KERNEL_NAMES`].
/// Userspace writes the addresses and runs the program with their count
/// as its first argument; the program writes the names.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KernelNameBatch {
    /// The addresses, the first `count` of them in use.
    pub addresses: [u64; KERNEL_NAME_BATCH],
    /// `addresses[i]`'s name, NUL-terminated (an address the kernel has
    /// no symbol for comes back as `0x` and its hex digits).
    pub names: [[u8; KERNEL_NAME_BYTES]; KERNEL_NAME_BATCH],
}

/// The kinds of profile the kernel programs record, as indices of their
/// blocks of [`Stat`] counters in `STATS` (`kind * Stat::COUNT + stat`).
pub mod kernel_kind {
    /// The CPU profile (`sample_cpu` and its tail calls).
    pub const CPU: u32 = 0;
    /// The off-CPU profile (`off_cpu_*`).
    pub const OFF_CPU: u32 = 1;
    /// The kernel-lock contention profile (`lock_*`).
    pub const LOCKS: u32 = 2;
    /// The page-fault profile (`sample_faults`, then the CPU profile's
    /// tail calls).
    pub const PAGE_FAULTS: u32 = 3;
    /// The memory profile (`mem_*`: uprobes on the allocator).
    pub const MEMORY: u32 = 4;
    /// Number of kinds: `STATS` holds this many blocks of counters.
    pub const COUNT: u32 = 5;
}

/// When a thread left the CPU, in its task-local storage `OFF_CPU_TASKS`
/// (written as it leaves, read and zeroed as it comes back).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuStart {
    /// `bpf_ktime_get_ns()` at switch-out; 0 once consumed.
    pub start_ns: u64,
    /// The thread's state as it left (`prev_state` of `sched_switch`; 0,
    /// `TASK_RUNNING`, when it was preempted).
    pub state: u32,
    /// Zero.
    pub pad: u32,
}

/// A contention under way: a thread waiting for a kernel lock, the key of
/// `LOCK_START`. A thread may wait for two locks at once (an interrupt
/// contending a spinlock while its task spins on a mutex), hence the lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LockWaiter {
    /// Thread id.
    pub tid: u32,
    /// Zero.
    pub pad: u32,
    /// The lock's address.
    pub lock: u64,
}

/// When a contention began, and on what kind of lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStart {
    /// `bpf_ktime_get_ns()` at `contention_begin`.
    pub start_ns: u64,
    /// Its `LCB_F_*` flags (spin, read, write, rt, percpu, mutex).
    pub flags: u32,
    /// Zero.
    pub pad: u32,
}

/// Who waited, where, in what state: the identity of a [`WaitEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WaitKey {
    /// Process id (tgid).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Hash of the user stack in the set's `STACKS` map, 0 when none.
    pub user_stack: StackHash,
    /// Hash of the kernel stack in the set's `STACKS` map, 0 when none.
    pub kernel_stack: StackHash,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Off-CPU: [`OffCpuStart::state`]; locks: [`LockStart::flags`].
    pub state: u32,
    /// The process's exec generation when it blocked (see
    /// [`SampleKey::exec_gen`]).
    pub exec_gen: u32,
    /// The trace and span the thread ran in as it woke (see
    /// [`SampleKey::trace`]).
    pub trace: TraceContext,
}

/// A kept wait (an off-CPU interval or a lock contention), as the kernel
/// sends it on `WAIT_EVENTS`: each is one event, with its time and what it
/// stands for ([`WaitWeight`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitEvent {
    /// Who waited, where.
    pub key: WaitKey,
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) as the wait ended.
    pub time_ns: u64,
    /// The events it stands for, in thousandths.
    pub events_milli: u64,
    /// The time it stands for, in nanoseconds.
    pub nanos: u64,
    /// Its kind ([`kernel_kind`]).
    pub kind: u32,
    /// The map set its stacks are in.
    pub set: u32,
}

/// The allocator functions the memory profile probes: the attach cookie
/// of `mem_entry` and `mem_return`, and what tells them where the size is.
pub mod alloc_fn {
    /// Size in the first argument: `malloc`, `valloc`, `pvalloc`.
    pub const MALLOC: u64 = 0;
    /// `calloc(n, size)`: `n * size` bytes.
    pub const CALLOC: u64 = 1;
    /// `realloc(ptr, size)`: frees `ptr`, allocates `size`.
    pub const REALLOC: u64 = 2;
    /// Size in the second argument: `memalign`, `aligned_alloc`.
    pub const MEMALIGN: u64 = 3;
    /// `posix_memalign(&ptr, align, size)`: the address is written to `ptr`.
    pub const POSIX_MEMALIGN: u64 = 4;
    /// `free(ptr)` (and `cfree`).
    pub const FREE: u64 = 5;
}

/// Entries of [`names::MEMORY_GAPS`].
pub const MEMORY_GAPS: u32 = 1024;

/// [`AllocEvent::tag`] of a sampled allocation tracked as live.
pub const ALLOC_TRACKED: u32 = 1;
/// [`AllocEvent::tag`] of a sampled allocation not tracked
/// (`MEMORY_LIVE` full, or the allocation failed).
pub const ALLOC_UNTRACKED: u32 = 2;
/// [`FreeEvent::tag`].
pub const FREE_TRACKED: u32 = 3;
/// [`ForkEvent::tag`].
pub const FORK: u32 = 4;

/// A thread's memory-profile state, in task-local storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryThread {
    /// Bytes until the thread's next sampled allocation (a draw from
    /// [`names::MEMORY_GAPS`]; 0: not drawn yet).
    pub countdown: i64,
    /// The size of the sampled allocation under way.
    pub size: u64,
    /// `posix_memalign`'s `ptr` argument, where the address goes.
    pub out_ptr: u64,
    /// The stack pointer at the entry of the outermost allocator call
    /// under way: a call entered above it cannot be nested in that one,
    /// which then never returned through its probe (`longjmp`, an
    /// exception).
    pub entry_sp: u64,
    /// Who allocates, where: the sampled allocation under way.
    pub key: WaitKey,
    /// Allocator calls of the thread under way (an allocator function
    /// calling another, `realloc(NULL, n)` calling `malloc`, counts once).
    pub depth: u32,
    /// 1 while the outermost call under way is sampled and its key is
    /// set; 2 while its stack is being taken.
    pub sampled: u32,
    /// The map set the key's stack is in.
    pub set: u32,
    /// The function ([`alloc_fn`]).
    pub function: u32,
}

/// A live sampled allocation's address in its process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LiveKey {
    /// Process id (tgid).
    pub tgid: u32,
    /// Zero.
    pub pad: u32,
    /// The address the allocator returned.
    pub addr: u64,
}

/// A sampled allocation, as the kernel sends it on `MEMORY_EVENTS` as
/// the allocating call returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocEvent {
    /// [`ALLOC_TRACKED`] or [`ALLOC_UNTRACKED`].
    pub tag: u32,
    /// The map set its stack is in.
    pub set: u32,
    /// Who allocated, where (`state`: the [`alloc_fn`]; no kernel stack).
    pub key: WaitKey,
    /// The address returned (0: the call failed).
    pub addr: u64,
    /// The bytes asked for.
    pub size: u64,
    /// `bpf_ktime_get_ns()` as the call returned.
    pub time_ns: u64,
}

/// The free of a tracked allocation, on `MEMORY_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeEvent {
    /// [`FREE_TRACKED`].
    pub tag: u32,
    /// Process id (tgid).
    pub tgid: u32,
    /// The address freed.
    pub addr: u64,
}

/// A probed process forked: from here on in `MEMORY_EVENTS`, the child
/// holds a copy of what the parent held (its tracked allocations are the
/// child's too).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    /// [`FORK`].
    pub tag: u32,
    /// The parent's tgid.
    pub parent: u32,
    /// The child's tgid.
    pub child: u32,
    /// The child's exec generation as it starts.
    pub exec_gen: u32,
}

/// What one kept wait (off-CPU interval or lock contention) stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitWeight {
    /// Blocked time: `max(d, P)` ns.
    pub nanos: u64,
    /// Events, in thousandths: `max(1, P/d)` × 1000.
    pub events_milli: u64,
}

/// Go's unbiased rule for sampling by duration: an interval of `blocked`
/// ns is kept with probability `min(1, blocked/period)` and then stands
/// for `max(blocked, period)` ns and `max(1, period/blocked)` events, so
/// both totals are exact in expectation. `random` is a uniform 64-bit
/// number; `None` means the interval is not kept.
#[inline(always)]
pub fn keep_wait(blocked: u64, period: u64, random: u64) -> Option<WaitWeight> {
    if blocked >= period {
        return Some(WaitWeight {
            nanos: blocked,
            events_milli: 1000,
        });
    }
    // 0 < period here; the modulo's bias is below period / 2^64.
    if random % period >= blocked {
        return None;
    }
    // blocked > 0: random % period < blocked. (A comparison, not
    // `saturating_mul`: BPF has no 128-bit multiply.)
    let period_milli = if period <= u64::MAX / 1000 {
        period * 1000
    } else {
        u64::MAX
    };
    Some(WaitWeight {
        nanos: period,
        events_milli: period_milli / blocked,
    })
}

/// 64-bit hash of a stack's frames; `0` means "no stack".
pub type StackHash = u64;

/// Key of the `COUNTS_*` maps: who was running and where.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// Process id (the kernel's tgid); 0 for the idle task.
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Hash of the user stack in the set's `STACKS` map, 0 when none.
    pub user_stack: StackHash,
    /// Hash of the kernel stack in the set's `STACKS` map, 0 when none.
    pub kernel_stack: StackHash,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The process's exec generation at the sample (`EXEC_GEN`): tells
    /// samples taken before an `exec` from those after it.
    pub exec_gen: u32,
    /// The kind that took the sample ([`kernel_kind::CPU`] or
    /// [`kernel_kind::PAGE_FAULTS`]): both count into the same maps.
    pub kind: u32,
    /// The trace and span the thread was running in (zero: none known).
    pub trace: TraceContext,
}

/// Frames of one stack, innermost first, zero-filled after the last frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Instruction pointers; the first zero ends the stack.
    pub frames: [u64; MAX_STACK_DEPTH],
}

impl Stack {
    /// The recorded frames, without the zero padding.
    pub fn frames(&self) -> &[u64] {
        until_zero(&self.frames)
    }
}

impl DeepStack {
    /// The recorded frames, without the zero padding.
    pub fn frames(&self) -> &[u64] {
        until_zero(&self.frames)
    }
}

fn until_zero(frames: &[u64]) -> &[u64] {
    let len = frames
        .iter()
        .position(|&ip| ip == 0)
        .unwrap_or(frames.len());
    &frames[..len]
}

/// Event sent on `PROCESS_EVENTS`: a process sampled for the first time
/// ([`ProcessEvent::NEW`], so userspace can snapshot its memory map while
/// it still exists), or a file mapping a sampled user frame was in
/// ([`ProcessEvent::FILE`], so the frame resolves after the process is
/// gone, and against the mappings it was sampled under).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessEvent {
    /// [`ProcessEvent::NEW`], [`ProcessEvent::FILE`], [`ProcessEvent::FORK`]
    /// or [`ProcessEvent::DRAIN_SOON`].
    pub kind: u32,
    /// Process id (tgid).
    pub tgid: u32,
    /// Its exec generation (for [`ProcessEvent::FILE`] and
    /// [`ProcessEvent::FORK`], and [`ProcessEvent::NEW`] as it was
    /// announced).
    pub exec_gen: u32,
    /// The file's device, in the kernel's encoding (major << 20 | minor).
    pub dev: u32,
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// The file's inode number.
    pub inode: u64,
    /// For [`ProcessEvent::NEW`]: the process's cgroup (v2) id as it was
    /// announced (`bpf_get_current_cgroup_id`, from its own context); 0
    /// when not known.
    pub cgroup_id: u64,
    /// For [`ProcessEvent::NEW`] from the process's own context: its
    /// leader's `start_boottime` (ns since boot, what `/proc/PID/stat`'s
    /// starttime counts in clock ticks); 0 when not known.
    pub start_boottime: u64,
    /// With `start_boottime`: the leader's `comm` (what `/proc/PID/stat`
    /// shows as the command name of a user process), NUL-padded.
    pub comm: [u8; COMM_LEN],
}

impl ProcessEvent {
    /// A process sampled for the first time.
    pub const NEW: u32 = 0;
    /// A file mapping of a sampled user frame.
    pub const FILE: u32 = 1;
    /// A process the memory profile follows forked: `tgid` is the child
    /// (the memory profile probes it at once).
    pub const FORK: u32 = 2;
    /// A CPU filled the active map set to [`Config::drain_soon_at`]:
    /// drain now rather than at the next scheduled drain (`tgid` is the
    /// set).
    pub const DRAIN_SOON: u32 = 3;
}

/// Indices of the per-CPU `STATS` counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Program invocations.
    Invocations = 0,
    /// Samples recorded: counted into a `COUNTS_*` map (CPU) or sent on
    /// `WAIT_EVENTS` (waits).
    Recorded,
    /// Samples skipped on purpose (pid filter, `--no-idle`).
    Filtered,
    /// Samples lost because the active `COUNTS_*` map (CPU) or the
    /// `WAIT_EVENTS` ring (waits) was full.
    DroppedCountsFull,
    /// Samples lost because the `CONFIG` map could not be read.
    DroppedNoConfig,
    /// User stack could not be read (`bpf_get_stack` error other than no user context).
    UserStackError,
    /// Kernel stack could not be read.
    KernelStackError,
    /// A stack was read but the active `STACKS_*` map was full.
    StackMapFull,
    /// New-process events lost because the ring buffer was full.
    NewProcessLost,
    /// Samples whose user stack was unwound with tables.
    Unwound,
    /// Samples of processes without tables loaded (yet): the unwinder
    /// steps their user stacks with frame pointers only (with the frame
    /// pointer unwinder, `bpf_get_stack` reads them).
    UnwindNoTables,
    /// Frames stepped with frame pointers inside a table unwind (pc outside
    /// every table, or a rule the unwinder cannot apply).
    UnwindFramePointerSteps,
    /// Unwinds that reached a frame its row marks outermost
    /// ([`UnwindStop::End`]).
    UnwindStopEnd,
    /// Unwinds that reached a zero frame pointer
    /// ([`UnwindStop::FramePointerEnd`]).
    UnwindStopFramePointerEnd,
    /// Unwinds stopped because user memory could not be read.
    UnwindStopReadError,
    /// Unwinds stopped because neither a row nor a frame pointer applied.
    UnwindStopNoRule,
    /// Unwinds stopped because a step did not move up the stack.
    UnwindStopNoProgress,
    /// Unwinds stopped at a zero return address ([`UnwindStop::ZeroReturn`]).
    UnwindStopZeroReturn,
    /// Unwinds stopped in a file whose table is still being built
    /// ([`UnwindStop::TablesPending`]).
    UnwindStopTablesPending,
    /// Unwinds cut at the depth limit (the stack ends in [`TRUNCATED_MARK`]).
    UnwindTruncated,
    /// Samples lost because a tail call of the unwinding chain (to the
    /// unwinding or the store program) failed (a loading bug).
    UnwindTailCallFailed,
    /// Waits measured, kept or not: off-CPU intervals (switch-out to
    /// switch-in) or lock contentions (`contention_begin` to `_end`).
    WaitIntervals,
    /// Their total time, in nanoseconds.
    WaitNanos,
    /// File mappings of sampled user frames sent to userspace.
    FilesRecorded,
    /// File mappings lost because the ring buffer was full (sent again
    /// at a later sample), or samples whose frames were not walked because
    /// `FILES_STATE` was full.
    FileRecordLost,
    /// User frames whose mapping `bpf_find_vma` could not look up (the
    /// address space was locked, or the address is unmapped).
    FileLookupFailed,
    /// Samples whose user stack got Python frames appended.
    PythonStacks,
    /// Samples of a Python process whose thread has no Python thread
    /// state (a thread that never ran Python, or one not found among the
    /// first threads of the interpreter) or whose frames could not be read.
    PythonNoFrames,
    /// Python stacks cut at [`PYTHON_FRAMES_MAX`] frames or at the stack's
    /// depth limit.
    PythonTruncated,
    /// Memory: allocation calls seen (every probed allocating function).
    AllocCalls,
    /// Memory: the bytes they asked for.
    AllocBytes,
    /// Memory: sampled allocations not tracked as live because
    /// `MEMORY_LIVE` was full (in `alloc_*`, never in `inuse_*`).
    AllocUntracked,
    /// Memory: frees of tracked allocations sent late, through
    /// `MEMORY_FREES`, because the event ring was full.
    FreesDeferred,
    /// Memory: frees of tracked allocations lost (ring and `MEMORY_FREES`
    /// both full): `inuse_*` may count them still.
    FreesLost,
    /// Memory: sampled allocations dropped because another thread's
    /// probe took this CPU's unwind state mid-way (uprobes can be
    /// preempted).
    UnwindRaced,
    /// Memory: forks of probed processes not followed (the event ring
    /// was full): the child is not probed at once and inherits nothing.
    ForksLost,
}

impl Stat {
    /// Number of counters (the `STATS` array's size).
    pub const COUNT: u32 = 36;

    /// Every counter, in index order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Invocations,
        Stat::Recorded,
        Stat::Filtered,
        Stat::DroppedCountsFull,
        Stat::DroppedNoConfig,
        Stat::UserStackError,
        Stat::KernelStackError,
        Stat::StackMapFull,
        Stat::NewProcessLost,
        Stat::Unwound,
        Stat::UnwindNoTables,
        Stat::UnwindFramePointerSteps,
        Stat::UnwindStopEnd,
        Stat::UnwindStopFramePointerEnd,
        Stat::UnwindStopReadError,
        Stat::UnwindStopNoRule,
        Stat::UnwindStopNoProgress,
        Stat::UnwindStopZeroReturn,
        Stat::UnwindStopTablesPending,
        Stat::UnwindTruncated,
        Stat::UnwindTailCallFailed,
        Stat::WaitIntervals,
        Stat::WaitNanos,
        Stat::FilesRecorded,
        Stat::FileRecordLost,
        Stat::FileLookupFailed,
        Stat::PythonStacks,
        Stat::PythonNoFrames,
        Stat::PythonTruncated,
        Stat::AllocCalls,
        Stat::AllocBytes,
        Stat::AllocUntracked,
        Stat::FreesDeferred,
        Stat::FreesLost,
        Stat::UnwindRaced,
        Stat::ForksLost,
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are `#[repr(C)]`, `Copy`, contain only integers and
    // integer arrays, and have no padding (checked by the size tests below).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ExecGen {}
    unsafe impl aya::Pod for super::SampleKey {}
    unsafe impl aya::Pod for super::Stack {}
    unsafe impl aya::Pod for super::ProcessEvent {}
    unsafe impl aya::Pod for super::UnwindRow {}
    unsafe impl aya::Pod for super::UnwindChunk {}
    unsafe impl aya::Pod for super::UnwindProcess {}
    unsafe impl aya::Pod for super::DeepStack {}
    unsafe impl aya::Pod for super::OffCpuStart {}
    unsafe impl aya::Pod for super::WaitKey {}
    unsafe impl aya::Pod for super::WaitEvent {}
    unsafe impl aya::Pod for super::MemoryThread {}
    unsafe impl aya::Pod for super::LiveKey {}
    unsafe impl aya::Pod for super::AllocEvent {}
    unsafe impl aya::Pod for super::FreeEvent {}
    unsafe impl aya::Pod for super::ForkEvent {}
    unsafe impl aya::Pod for super::KernelNameBatch {}
    unsafe impl aya::Pod for super::TraceContext {}
    unsafe impl aya::Pod for super::ThreadContextLocation {}
    unsafe impl aya::Pod for super::PythonProcess {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<Config>(), 24 + 32 + 32);
        assert_eq!(size_of::<ExecGen>(), 8);
        assert_eq!(size_of::<ThreadContextLocation>(), 32);
        assert_eq!(size_of::<OffCpuStart>(), 16);
        assert_eq!(size_of::<LockWaiter>(), 16);
        assert_eq!(size_of::<LockStart>(), 16);
        assert_eq!(size_of::<TraceContext>(), 24);
        assert_eq!(size_of::<WaitKey>(), 4 + 4 + 8 + 8 + COMM_LEN + 4 + 4 + 24);
        assert_eq!(size_of::<WaitEvent>(), size_of::<WaitKey>() + 32);
        assert_eq!(size_of::<MemoryThread>(), 32 + size_of::<WaitKey>() + 16);
        assert_eq!(size_of::<LiveKey>(), 16);
        assert_eq!(size_of::<AllocEvent>(), 8 + size_of::<WaitKey>() + 24);
        assert_eq!(size_of::<FreeEvent>(), 16);
        assert_eq!(size_of::<ForkEvent>(), 16);
        assert_eq!(size_of::<KernelNameBatch>(), 8 * 128 + 640 * 128);
        assert_eq!(
            size_of::<SampleKey>(),
            4 + 4 + 8 + 8 + COMM_LEN + 4 + 4 + 24
        );
        assert_eq!(size_of::<Stack>(), 8 * MAX_STACK_DEPTH);
        assert_eq!(size_of::<ProcessEvent>(), 16 + 48 + COMM_LEN);
        assert_eq!(size_of::<UnwindRow>(), 8);
        assert_eq!(size_of::<DeepStack>(), 8 * DEEP_STACK_DEPTH);
        assert_eq!(size_of::<UnwindMapping>(), 32);
        assert_eq!(size_of::<UnwindProcess>(), 8 + 32 * UNWIND_MAPPINGS_MAX);
        assert_eq!(size_of::<PythonProcess>(), 16 + 24);
    }

    #[test]
    fn python_frame_words_round_trip_and_are_never_marks() {
        let code = 0x7f12_3456_7898;
        for (entry, instr) in [(false, 0), (true, 17), (false, 0xfffe)] {
            let word = python_frame::encode(code, entry, instr);
            assert_eq!(python_frame::decode(word), (code, entry, instr as u32));
            assert!(word != 0 && word < MARKS_FLOOR);
        }
        // Saturates rather than spilling into the flag.
        let word = python_frame::encode(code, false, 1 << 20);
        assert_eq!(python_frame::decode(word), (code, false, 0xfffe));
        // The largest word: the top address bits are clear.
        let top = python_frame::encode(python_frame::ADDRESS_MASK, true, u64::MAX);
        assert!(top < MARKS_FLOOR);
    }

    #[test]
    fn stop_marks_are_distinct_marks_that_decode_to_their_reason() {
        let mut marks = [PYTHON_MARK; UnwindStop::EARLY.len() + 1];
        for (i, stop) in UnwindStop::EARLY.into_iter().enumerate() {
            let mark = stop.mark().unwrap();
            assert!(mark >= MARKS_FLOOR);
            assert_eq!(UnwindStop::from_mark(mark), Some(stop));
            assert!(stop.stat().is_some());
            marks[i + 1] = mark;
        }
        marks.sort_unstable();
        assert!(marks.windows(2).all(|pair| pair[0] != pair[1]));
        assert_eq!(UnwindStop::Truncated.mark(), Some(TRUNCATED_MARK));
        for whole in [UnwindStop::End, UnwindStop::FramePointerEnd] {
            assert_eq!(whole.mark(), None);
        }
        assert_eq!(UnwindStop::from_mark(0x7f00_0000_1000), None);
    }

    #[test]
    fn stack_frames_stop_at_first_zero() {
        let mut stack = Stack {
            frames: [0; MAX_STACK_DEPTH],
        };
        assert!(stack.frames().is_empty());
        stack.frames[0] = 0x10;
        stack.frames[1] = 0x20;
        assert_eq!(stack.frames(), &[0x10, 0x20]);
        stack.frames = [7; MAX_STACK_DEPTH];
        assert_eq!(stack.frames().len(), MAX_STACK_DEPTH);
    }

    #[test]
    fn long_intervals_are_always_kept_at_their_own_length() {
        for random in [0, 1, u64::MAX] {
            assert_eq!(
                keep_wait(5_000, 1_000, random),
                Some(WaitWeight {
                    nanos: 5_000,
                    events_milli: 1000
                })
            );
            assert_eq!(keep_wait(1_000, 1_000, random).unwrap().nanos, 1_000);
            // P = 0 keeps everything.
            assert_eq!(keep_wait(7, 0, random).unwrap().nanos, 7);
        }
    }

    #[test]
    fn short_intervals_are_kept_with_probability_d_over_p_and_weigh_p() {
        // d = 250, P = 1000: kept when random % 1000 < 250.
        assert_eq!(
            keep_wait(250, 1_000, 249),
            Some(WaitWeight {
                nanos: 1_000,
                events_milli: 4_000
            })
        );
        assert_eq!(keep_wait(250, 1_000, 250), None);
        assert_eq!(keep_wait(250, 1_000, 1_999), None);
        assert!(keep_wait(250, 1_000, 2_100).is_some());
        assert_eq!(
            keep_wait(0, 1_000, 0),
            None,
            "a zero interval is never kept"
        );
    }

    /// The totals of many sampled intervals match the true totals: time
    /// and event counts are unbiased (a deterministic xorshift stands in
    /// for `bpf_get_prandom_u32`).
    #[test]
    fn sampled_totals_are_unbiased() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let period = 100_000;
        let (mut true_ns, mut true_events) = (0u64, 0u64);
        let (mut ns, mut events_milli, mut kept) = (0u64, 0u64, 0u64);
        for i in 0..200_000u64 {
            // 1 us to 300 us, most far below the period.
            let d = 1_000 + (i * 7_919) % 299_000;
            true_ns += d;
            true_events += 1;
            if let Some(w) = keep_wait(d, period, random()) {
                ns += w.nanos;
                events_milli += w.events_milli;
                kept += 1;
            }
        }
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.02;
        assert!(close(ns as f64, true_ns as f64), "{ns} vs {true_ns}");
        assert!(
            close(events_milli as f64 / 1000.0, true_events as f64),
            "{events_milli} vs {true_events}"
        );
        assert!(kept < true_events, "short intervals are sampled: {kept}");
    }

    #[test]
    fn program_names_fit_the_kernel() {
        for name in names::PROGRAMS
            .iter()
            .chain(names::KPROBES)
            .chain(names::BTF_TRACEPOINTS)
            .chain(names::UPROBES)
            .chain(names::RAW_TRACEPOINTS)
        {
            assert!(name.len() < 16, "{name}");
        }
    }

    #[test]
    fn stat_indices_match_all() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as usize, i);
        }
    }
}
