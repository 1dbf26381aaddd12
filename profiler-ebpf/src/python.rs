//! CPython frames: after the table unwinder has walked a sample's native
//! user stack, the Python frames of the sampled thread are appended to it
//! (after [`PYTHON_MARK`], innermost first), so userspace can splice them
//! in at each `_PyEval_EvalFrameDefault` frame.
//!
//! Userspace tells, per process, where the interpreter is and the field
//! offsets of its version (`PYTHON_PROCESSES`, see `process::python`).
//! Here: the thread's `PyThreadState` is the one whose `thread_id`
//! (`pthread_self()`, the thread pointer on x86-64) is the task's fsbase,
//! found in the interpreter's thread list and cached per thread
//! (`PYTHON_THREADS`, checked before each use); its current frame chain
//! (`_PyInterpreterFrame.previous`) is walked one frame per `bpf_loop`
//! iteration, each frame read in one helper call. A frame becomes one
//! word ([`python_frame`]): its code object, its code-unit index and
//! whether its C call of the evaluation loop entered it first. Names,
//! files and lines are read by userspace from the code objects.
//!
//! The walk runs in the sampled thread's context (the CPU program
//! interrupts it; the wait programs run as it gets its CPU back), so the
//! thread is not running Python while it is read.

use aya_ebpf::cty::c_void;
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_ktime_get_ns, generated},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use profiler_common::{
    kernel_kind, python_frame, Config, PythonOffsets, PythonProcess, Stat, DEEP_STACK_DEPTH,
    PYTHON_FRAMES_MAX, PYTHON_MARK,
};

use crate::exec;
use crate::stack::{self, read_user, Kind, LoopBody, LOOP_ON, LOOP_STOP};

/// Python processes, by tgid (set by userspace).
#[map(name = "PYTHON_PROCESSES")]
static PYTHON_PROCESSES: HashMap<u32, PythonProcess> =
    HashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);

/// What the last search of a thread's state found, by tid (at most; an
/// LRU map is allocated whole, so userspace sizes it to the host at load).
#[map(name = "PYTHON_THREADS")]
static PYTHON_THREADS: LruHashMap<u32, ThreadSearch> = LruHashMap::with_max_entries(16_384, 0);

/// What a search of the interpreter's thread list found for a thread.
#[repr(C)]
#[derive(Clone, Copy)]
struct ThreadSearch {
    /// Its `PyThreadState`; 0: none (a thread that runs no Python code:
    /// a native pool's, say), not searched again for [`MISS_TTL_NS`].
    tstate: u64,
    /// When (`bpf_ktime_get_ns`).
    at_ns: u64,
}

/// How long a thread found without a thread state is not searched again.
const MISS_TTL_NS: u64 = 1_000_000_000;

/// Bytes of a frame read at once: every field the walk needs lies in the
/// first 72 bytes of `_PyInterpreterFrame` in the versions supported.
const FRAME_BYTES: usize = 80;
/// Word fields are read at `offset & WORD_MASK`, byte fields at
/// `offset & BYTE_MASK`: provably inside the 128-byte buffer.
const WORD_MASK: u16 = 63;
const BYTE_MASK: u16 = 127;

/// Per-CPU buffer for one frame's first bytes, one per kind (kept off the
/// 512-byte stack, and a map value can be indexed at a bounded variable
/// offset; a CPU sample may interrupt an off-CPU walk on the same CPU).
#[map(name = "PYTHON_SCRATCH")]
static PYTHON_SCRATCH: PerCpuArray<[u8; 128]> =
    PerCpuArray::with_max_entries(kernel_kind::COUNT, 0);

/// Per CPU, per kind: the walk in progress. In a map, not on the stack:
/// the verifier knows nothing of a map value's contents, so each step it
/// checks starts from the same unknown depth and the loop's states
/// converge at once; a depth on the stack is a different known number at
/// every step, and it walked all 519 (a quarter of a million instructions
/// to verify, most of the unwinder's load time).
#[map(name = "PYTHON_WALK")]
static PYTHON_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(kernel_kind::COUNT, 0);

/// Thread states looked at when searching the interpreter's list.
const THREADS_MAX: u32 = 64;

/// A walk in progress ([`PYTHON_WALK`]).
#[repr(C)]
struct Walk {
    /// The next frame to read (0: done).
    frame: u64,
    /// Slots of the scratch stack written so far.
    depth: u32,
    /// The thread walked: a memory-profile walk runs in a uprobe, which
    /// can be preempted, and another thread's probe on this CPU may take
    /// the slot meanwhile; the walk then stops, with no Python frames.
    tid: u32,
    /// Python frames written.
    written: u32,
    /// `PythonProcess::*` flags.
    flags: u32,
    offsets: PythonOffsets,
}

/// Appends the current thread's Python frames after the `depth` native
/// frames of `kind`'s scratch stack (when process `tgid` is a Python
/// process known in this image); returns the new depth.
#[inline(always)]
pub fn append(kind: Kind, config: &Config, tgid: u32, tid: u32, depth: usize) -> usize {
    if config.flags & Config::PYTHON == 0 {
        return depth;
    }
    // SAFETY: copied out at once; userspace only replaces whole entries.
    let Some(process) = (unsafe { PYTHON_PROCESSES.get(&tgid) }).copied() else {
        return depth;
    };
    if process.exec_gen != exec::generation(tgid) {
        return depth; // found in the image before an exec
    }
    // Room for the mark, a frame and the terminating zero.
    if depth + 3 > DEEP_STACK_DEPTH {
        kind.bump(Stat::PythonNoFrames);
        return depth;
    }
    let Some(frame) = current_frame(config, &process, tid) else {
        kind.bump(Stat::PythonNoFrames);
        return depth;
    };
    let Some(scratch) = kind.scratch() else {
        return depth;
    };
    // SAFETY: this CPU's scratch stack of the kind; nothing else touches
    // it while this program runs.
    let stack = unsafe { &mut *scratch };
    let Some(slot) = stack.frames.get_mut(depth) else {
        return depth;
    };
    *slot = PYTHON_MARK;
    let Some(walk) = PYTHON_WALK.get_ptr_mut(kind.index()) else {
        return depth;
    };
    // SAFETY: this CPU's walk of the kind; nothing else touches it while
    // this program runs (`step` only through this pointer's map slot,
    // during the loop, while no reference to it is held here).
    unsafe {
        walk.write(Walk {
            frame,
            depth: depth as u32 + 1,
            tid,
            written: 0,
            flags: process.flags,
            offsets: process.offsets,
        })
    };
    let looped = stack::loop_over(PYTHON_FRAMES_MAX as u32, &mut Steps { kind: kind.index() });
    // SAFETY: as above; the loop has returned.
    let walk = unsafe { &*walk };
    if walk.written == 0 || !looped || !stack::still_owned_by(walk.tid) {
        // Nothing readable: no mark either.
        kind.bump(Stat::PythonNoFrames);
        return depth;
    }
    kind.bump(Stat::PythonStacks);
    if walk.frame != 0 {
        kind.bump(Stat::PythonTruncated);
    }
    walk.depth as usize
}

/// The innermost `_PyInterpreterFrame` of the current thread.
#[inline(always)]
fn current_frame(config: &Config, process: &PythonProcess, tid: u32) -> Option<u64> {
    let fsbase = stack::thread_pointer(config)?;
    let thread_id = u64::from(process.offsets.tstate_thread_id);
    // SAFETY: reads the monotonic clock; no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: copied out at once.
    let cached = unsafe { PYTHON_THREADS.get(&tid) }.copied();
    let mut stale = 0;
    if let Some(found) = cached {
        if found.tstate == 0 && now.wrapping_sub(found.at_ns) < MISS_TTL_NS {
            return None; // searched a moment ago: no thread state
        }
        // A state freed and its memory reused keeps its `thread_id`:
        // one without a frame is searched for again.
        if found.tstate != 0 && read_user(found.tstate + thread_id) == Some(fsbase) {
            if let Some(frame) = frame_of(process, found.tstate) {
                return Some(frame);
            }
            stale = found.tstate;
        }
    }
    let tstate = search(process, fsbase).unwrap_or(0);
    let _ = PYTHON_THREADS.insert(&tid, &ThreadSearch { tstate, at_ns: now }, 0);
    if tstate == 0 || tstate == stale {
        return None;
    }
    frame_of(process, tstate)
}

/// The innermost frame of thread state `tstate`.
#[inline(always)]
fn frame_of(process: &PythonProcess, tstate: u64) -> Option<u64> {
    let offsets = &process.offsets;
    let at = read_user(tstate + u64::from(offsets.tstate_frame))?;
    if process.flags & PythonProcess::FRAME_IN_TSTATE != 0 {
        return (at != 0).then_some(at);
    }
    if at == 0 {
        return None;
    }
    let frame = read_user(at + u64::from(offsets.cframe_current))?;
    (frame != 0).then_some(frame)
}

/// The `PyThreadState` whose `thread_id` is `fsbase`, among the first
/// [`THREADS_MAX`] of the interpreter's list (the newest interpreter:
/// sub-interpreters' threads are not searched).
#[inline(always)]
fn search(process: &PythonProcess, fsbase: u64) -> Option<u64> {
    let offsets = &process.offsets;
    let interpreter = read_user(process.runtime + u64::from(offsets.runtime_interpreters))?;
    let mut search = ThreadStateSearch {
        tstate: read_user(interpreter + u64::from(offsets.interp_threads))?,
        fsbase,
        thread_id: u64::from(offsets.tstate_thread_id),
        next: u64::from(offsets.tstate_next),
        found: 0,
    };
    // A loop step per thread state: the verifier checks one step, where
    // a plain loop was walked state by state (a quarter of the store
    // program's verification).
    if !stack::loop_over(THREADS_MAX, &mut search) || search.found == 0 {
        return None;
    }
    Some(search.found)
}

/// [`search`]'s loop state: the thread state to look at next.
#[repr(C)]
struct ThreadStateSearch {
    tstate: u64,
    fsbase: u64,
    thread_id: u64,
    next: u64,
    /// The state found (0: none yet).
    found: u64,
}

impl LoopBody for ThreadStateSearch {
    /// Looks at one thread state; stops at the one sought, at the list's
    /// end, or where user memory cannot be read (nothing found then).
    #[inline(always)]
    fn step(&mut self, _index: u64) -> i64 {
        if self.tstate == 0 {
            return LOOP_STOP;
        }
        match read_user(self.tstate + self.thread_id) {
            Some(id) if id == self.fsbase => {
                self.found = self.tstate;
                LOOP_STOP
            }
            Some(_) => match read_user(self.tstate + self.next) {
                Some(next) => {
                    self.tstate = next;
                    LOOP_ON
                }
                None => LOOP_STOP,
            },
            None => LOOP_STOP,
        }
    }
}

/// The walk's loop context: the kind, whose walk is in [`PYTHON_WALK`].
struct Steps {
    kind: u32,
}

impl LoopBody for Steps {
    #[inline(always)]
    fn step(&mut self, _index: u64) -> i64 {
        step(self.kind)
    }
}

/// One frame of the walk of `kind` (an index): writes its word and moves
/// to its caller. Returns 1 (stop) when the chain or the room ends.
#[inline(always)]
fn step(kind: u32) -> i64 {
    let Some(walk) = PYTHON_WALK.get_ptr_mut(kind) else {
        return LOOP_STOP;
    };
    // SAFETY: this CPU's walk of the kind, which `append` does not hold a
    // reference to during the loop.
    let walk = unsafe { &mut *walk };
    if !stack::still_owned_by(walk.tid) {
        return LOOP_STOP; // another thread's walk took the slot (see `Walk::tid`)
    }
    if walk.frame == 0 {
        return LOOP_STOP;
    }
    let depth = walk.depth as usize;
    // Keep the last slot for the terminating zero.
    if depth + 1 >= DEEP_STACK_DEPTH {
        return LOOP_STOP;
    }
    let (Some(buffer), Some(scratch)) = (
        PYTHON_SCRATCH.get_ptr_mut(kind),
        Kind::from_index(kind).scratch(),
    ) else {
        return LOOP_STOP;
    };
    // SAFETY: this CPU's buffer; the helper writes at most FRAME_BYTES
    // (< 128) bytes and fails cleanly on memory it cannot read.
    let read = unsafe {
        generated::bpf_probe_read_user(
            buffer.cast(),
            FRAME_BYTES as u32,
            walk.frame as *const c_void,
        )
    };
    if read != 0 {
        walk.frame = 0;
        return LOOP_STOP;
    }
    // SAFETY: this CPU's values; nothing else touches them meanwhile.
    let (bytes, stack) = unsafe { (&*buffer, &mut *scratch) };
    let offsets = walk.offsets;
    let code = field(bytes, offsets.frame_code);
    let previous = field(bytes, offsets.frame_previous);
    let instr = field(bytes, offsets.frame_instr);
    let entry_byte = byte(bytes, offsets.frame_entry);
    walk.frame = previous;
    if walk.flags & PythonProcess::ENTRY_SHIM != 0 && u16::from(entry_byte) == offsets.shim_owner {
        // The shim its C call pushed: the frame before it entered first.
        if walk.written > 0 {
            if let Some(word) = stack.frames.get_mut(depth.wrapping_sub(1)) {
                *word |= python_frame::ENTRY;
            }
        }
        return LOOP_ON;
    }
    // An address that does not fit a frame word (only a process writing
    // its own frames can make one): not a frame.
    if code & python_frame::ADDRESS_MASK == 0 || code > python_frame::ADDRESS_MASK {
        return LOOP_ON;
    }
    let first = code.wrapping_add(u64::from(offsets.code_units));
    let index = if instr > first {
        (instr - first) / 2
    } else {
        0
    };
    let entry = walk.flags & PythonProcess::ENTRY_FLAG != 0 && entry_byte != 0;
    if let Some(word) = stack.frames.get_mut(depth) {
        *word = python_frame::encode(code, entry, index);
        walk.depth += 1;
        walk.written += 1;
    }
    LOOP_ON
}

/// The 8 bytes at `offset` of a frame's first bytes.
#[inline(always)]
fn field(bytes: &[u8; 128], offset: u16) -> u64 {
    let at = usize::from(offset & WORD_MASK);
    // SAFETY: at + 8 <= 71 < 128: inside the buffer; unaligned reads are
    // fine for the BPF target.
    unsafe { core::ptr::read_unaligned(bytes.as_ptr().add(at).cast::<u64>()) }
}

/// The byte at `offset` of a frame's first bytes.
#[inline(always)]
fn byte(bytes: &[u8; 128], offset: u16) -> u8 {
    let at = usize::from(offset & BYTE_MASK);
    // SAFETY: at < 128: inside the buffer.
    unsafe { *bytes.as_ptr().add(at) }
}
