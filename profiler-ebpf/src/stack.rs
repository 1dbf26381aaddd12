//! What every program shares: the configuration, the per-kind counters,
//! process announcements, and the double-buffered stack store.
//!
//! Why `bpf_get_stack` + our own hash map rather than a `STACK_TRACE` map and
//! `bpf_get_stackid`: a stack-trace map buckets stacks by a 32-bit hash
//! modulo its size and, without `BPF_F_REUSE_STACKID`, fails the sample's
//! stack on every bucket collision (with it, it silently overwrites a stack
//! other samples still point to). With a few hundred distinct stacks per
//! drain that loses roughly one stack in a few hundred. A hash map keyed by a
//! 64-bit hash of the frames has no buckets to collide in; two different
//! stacks share a key with probability ~n²/2⁶⁵, negligible here.
//!
//! Per-CPU scratch space (`SCRATCH`, and the unwinder's state) has one
//! slot per kind: the CPU program runs from the CPU-clock timer interrupt,
//! which may fire while an off-CPU program runs on the same CPU (the
//! switch-in tracepoint runs with interrupts enabled), so the two must not
//! share a slot. A kind's programs never nest in each other on one CPU.

use core::{
    ffi::c_void,
    mem::{align_of, size_of, MaybeUninit},
};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_probe_read_user,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_stack, bpf_loop},
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    EbpfContext, Global,
};
use profiler_common::{
    kernel_kind, Config, DeepStack, Features, ProcessEvent, Stack, StackHash, Stat, COMM_LEN,
    DEEP_STACK_DEPTH, MAX_STACK_DEPTH,
};

/// Default capacity of each `STACKS_*` map; userspace may resize at load.
const STACKS_ENTRIES: u32 = 16_384;
/// Capacity of each `DEEP_STACKS_*` map (stacks deeper than 127 frames).
const DEEP_STACKS_ENTRIES: u32 = 4_096;
pub const EEXIST: i32 = 17;

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// [`Features`] bits, set by the loader (`names::FEATURES`); the verifier
/// reads them as constants.
#[no_mangle]
static FEATURES: Global<u32> = Global::new(0);

/// Whether the table unwinder is loaded ([`Features::TABLES`]): a
/// constant to the verifier.
#[inline(always)]
pub fn tables_loaded() -> bool {
    FEATURES.load() & Features::TABLES != 0
}

/// `Stat::COUNT` counters per kind, per CPU: each CPU bumps its own slot
/// with a plain add (the BPF target has no 64-bit atomic add in stable
/// `core`), userspace sums them.
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT * kernel_kind::COUNT, 0);

/// Selected processes (with `Config::FILTER_PIDS`), set by userspace:
/// allocated as they are added, as most runs select few or none.
#[map(name = "PID_FILTER")]
static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Processes announced to userspace, which deletes those that exit: the
/// live sampled processes (an LRU map is allocated whole, ~80 bytes an
/// entry, so userspace sizes it to the host at load; one evicted is
/// announced again, which userspace takes as known).
#[map(name = "KNOWN_PROCESSES")]
static KNOWN_PROCESSES: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16_384, 0);

/// New processes and the file mappings of sampled frames (see
/// [`crate::files`]): 80-byte events (88 with the ring's header), so
/// 256 KiB hold ~3,000.
#[map(name = "PROCESS_EVENTS")]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

// Stacks are 1 KiB each (deep ones 4 KiB): allocate on use rather than up front.
#[map(name = "STACKS_0")]
static STACKS_0: HashMap<StackHash, Stack> =
    HashMap::with_max_entries(STACKS_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "STACKS_1")]
static STACKS_1: HashMap<StackHash, Stack> =
    HashMap::with_max_entries(STACKS_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DEEP_STACKS_0")]
static DEEP_STACKS_0: HashMap<StackHash, DeepStack> =
    HashMap::with_max_entries(DEEP_STACKS_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DEEP_STACKS_1")]
static DEEP_STACKS_1: HashMap<StackHash, DeepStack> =
    HashMap::with_max_entries(DEEP_STACKS_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CPU scratch space for one stack per kind (too large for the
/// 512-byte BPF stack). `bpf_get_stack` fills its first `Stack`-sized
/// part; the unwinder all of it.
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<DeepStack> = PerCpuArray::with_max_entries(kernel_kind::COUNT, 0);

/// Per CPU: how many program chains of hostprof's (an entry program and
/// the programs it tail-calls) are running on this CPU now. The locks
/// programs run inside any code that contends for a lock, hostprof's own
/// programs included (a map's or ring's spinlock); nested there, taking
/// one of those locks again could deadlock the CPU, so they do nothing
/// unless theirs is the only chain running ([`entry`], [`tail`]). The
/// off-CPU bookkeeping of every switch takes none of the locks the locks
/// programs take (task storage, a per-CPU slot) and counts no chain; its
/// recording of a kept interval does.
#[map(name = "CHAIN_DEPTH")]
static CHAIN_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, per map set: entries this CPU added to the set since
/// userspace last emptied it (see [`added_entry`]).
#[map(name = "SET_FILL")]
static SET_FILL: PerCpuArray<u32> = PerCpuArray::with_max_entries(2, 0);

/// Counts one entry this CPU added to the active set (a new `COUNTS`
/// entry, a kept wait sent; see [`added_entries`]).
#[inline(always)]
pub fn added_entry() {
    added_entries(1);
}

/// Counts `n` entries this CPU added to the active set; on reaching
/// `Config::drain_soon_at` it asks userspace to drain now
/// ([`ProcessEvent::DRAIN_SOON`]), so a burst of distinct samples between
/// two drains does not fill the maps.
#[inline(always)]
pub fn added_entries(n: u32) {
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    let Some(fill) = SET_FILL.get_ptr_mut(config.active_set & 1) else {
        return;
    };
    // SAFETY: this CPU's slot. A program nested in another on this CPU
    // (the CPU-clock interrupt in an off-CPU program) may lose the other's
    // add: the count is a trigger, not a total, and whichever add computes
    // the threshold sends.
    let before = unsafe {
        let before = *fill;
        *fill = before.saturating_add(n);
        before
    };
    let at = config.drain_soon_at;
    if at == 0 || before >= at || before.saturating_add(n) < at {
        return;
    }
    if !send_event(ProcessEvent::DRAIN_SOON, config.active_set, |_| {}) {
        // The ring is full: the next entry asks again.
        // SAFETY: as above.
        unsafe { *fill = before };
    }
}

/// Runs the body of an entry program (one a hook runs) as a chain on
/// this CPU; `body` gets the number of chains running, its own included.
/// The chain ends where a program of it returns: `body`'s return, or that
/// of a program it tail-calls ([`tail`]).
#[inline(always)]
pub fn entry<R>(body: impl FnOnce(u32) -> R) -> R {
    let depth = match CHAIN_DEPTH.get_ptr_mut(0) {
        // SAFETY: this CPU's counter; nested chains finish before the one
        // they interrupted goes on, so the counts nest.
        Some(depth) => unsafe {
            *depth += 1;
            *depth
        },
        None => 1,
    };
    let result = body(depth);
    leave();
    result
}

/// Runs the body of a tail-called program: the chain ends as it returns.
#[inline(always)]
pub fn tail<R>(body: impl FnOnce() -> R) -> R {
    let result = body();
    leave();
    result
}

#[inline(always)]
fn leave() {
    if let Some(depth) = CHAIN_DEPTH.get_ptr_mut(0) {
        // SAFETY: as in `entry`.
        unsafe { *depth = (*depth).saturating_sub(1) };
    }
}

/// Which kind's counters a program bumps.
#[derive(Clone, Copy)]
pub struct Kind(u32);

impl Kind {
    pub const CPU: Kind = Kind(kernel_kind::CPU);
    pub const OFF_CPU: Kind = Kind(kernel_kind::OFF_CPU);
    pub const LOCKS: Kind = Kind(kernel_kind::LOCKS);
    pub const PAGE_FAULTS: Kind = Kind(kernel_kind::PAGE_FAULTS);
    pub const MEMORY: Kind = Kind(kernel_kind::MEMORY);

    /// The kind `index` (as stored in the unwinder's state).
    #[inline(always)]
    pub fn from_index(index: u32) -> Kind {
        Kind(index)
    }

    /// Its index in `profiler_common::kernel_kind`.
    #[inline(always)]
    pub fn index(self) -> u32 {
        self.0
    }

    /// Adds one to this kind's counter `stat`.
    #[inline(always)]
    pub fn bump(self, stat: Stat) {
        self.add(stat, 1);
    }

    /// Adds `n` to this kind's counter `stat`.
    #[inline(always)]
    pub fn add(self, stat: Stat, n: u64) {
        if let Some(counter) = STATS.get_ptr_mut(self.0 * Stat::COUNT + stat as u32) {
            // SAFETY: this CPU's slot; the programs do not nest on one CPU
            // (see the module's doc).
            unsafe { *counter += n };
        }
    }

    /// This kind's scratch stack on this CPU.
    #[inline(always)]
    pub fn scratch(self) -> Option<*mut DeepStack> {
        SCRATCH.get_ptr_mut(self.0)
    }

    /// The configuration, counting a lost sample when it cannot be read.
    #[inline(always)]
    pub fn config(self) -> Option<&'static Config> {
        let config = CONFIG.get(0);
        if config.is_none() {
            self.bump(Stat::DroppedNoConfig);
        }
        config
    }
}

/// Whether `tgid` passes the pid filter (when `config` asks for one).
#[inline(always)]
pub fn pid_wanted(config: &Config, tgid: u32) -> bool {
    // SAFETY: plain lookup; the value is never dereferenced.
    config.flags & Config::FILTER_PIDS == 0 || unsafe { PID_FILTER.get(tgid) }.is_some()
}

/// The stack maps of one set, picked where each is used.
///
/// Why an index and not references to the maps: the verifier cannot
/// merge a path that holds `STACKS_0` with one that holds `STACKS_1`
/// (different map pointers), so references taken once at the start of a
/// program made it check everything after twice, once per set. Picked
/// at each use (the index read anew, so the compiler keeps no pointer
/// across the program), the two paths meet again right after the call.
#[derive(Clone, Copy)]
pub struct StackSet {
    index: u32,
}

impl StackSet {
    /// The set's map of stacks up to 127 frames.
    #[inline(always)]
    pub fn stacks(&self) -> &'static HashMap<StackHash, Stack> {
        pick(&self.index, &STACKS_0, &STACKS_1)
    }

    /// The set's map of deeper stacks.
    #[inline(always)]
    pub fn deep_stacks(&self) -> &'static HashMap<StackHash, DeepStack> {
        pick(&self.index, &DEEP_STACKS_0, &DEEP_STACKS_1)
    }
}

/// `set_0` for set 0, else `set_1`: the set's map of a pair, the index
/// read where the map is used (see [`StackSet`]).
#[inline(always)]
pub fn pick<T>(index: &u32, set_0: &'static T, set_1: &'static T) -> &'static T {
    // SAFETY: `index` is a live reference; the read is volatile only so
    // that the compiler does not pick the map once for every use.
    if unsafe { core::ptr::read_volatile(index) } == 0 {
        set_0
    } else {
        set_1
    }
}

/// The stack maps of the set `config` names.
#[inline(always)]
pub fn stack_set(config: &Config) -> StackSet {
    stack_set_at(config.active_set)
}

/// The stack maps of set `index`.
#[inline(always)]
pub fn stack_set_at(index: u32) -> StackSet {
    StackSet { index }
}

/// Copies the stack `hash` from the map set `from` into the set `to` (a
/// stack taken before the sets flipped, needed by an event sent after
/// it); false when `from` no longer holds it.
#[inline(always)]
pub fn carry(hash: StackHash, from: u32, to: u32, kind: Kind) -> bool {
    let (from, to) = (stack_set_at(from), stack_set_at(to));
    // SAFETY: plain lookups; the values are copied into the other map.
    if let Some(stack) = unsafe { from.stacks().get(&hash) } {
        return insert_stack(to.stacks(), hash, stack, kind) != 0;
    }
    // SAFETY: as above.
    if let Some(stack) = unsafe { from.deep_stacks().get(&hash) } {
        return insert_stack(to.deep_stacks(), hash, stack, kind) != 0;
    }
    false
}

/// Reads one stack of the task `ctx` belongs to into scratch space
/// (`flags` 0: kernel, `BPF_F_USER_STACK`: user, with frame pointers),
/// stores it in `stacks` under its hash and returns the hash; 0 when the
/// task has no such stack. `LOOPS`: the calling program may use
/// `bpf_loop` (the table unwinder's programs, Linux 5.17+), whose hash
/// the verifier checks far faster than the plain loop the others need.
#[inline(always)]
pub fn store_stack<const LOOPS: bool, C: EbpfContext>(
    ctx: &C,
    stacks: &HashMap<StackHash, Stack>,
    flags: u64,
    kind: Kind,
    error: Stat,
) -> StackHash {
    match read_stack(ctx, flags, kind, error, 0) {
        Some(frames) => store_scratch::<LOOPS>(frames, stacks, kind),
        None => 0,
    }
}

/// Reads the user stack of the task `ctx` belongs to with frame pointers,
/// stopped at a function's first instruction (a uprobe at an allocator's
/// entry), stores it like [`store_stack`] and returns its hash. The
/// function has not pushed its frame yet, so the frame-pointer walk goes
/// from it straight to its caller's caller: `return_address` (the word at
/// the stack pointer, into the caller) is put back as frame 1, unless the
/// kernel did (Linux 6.12+ does for a function that starts by pushing its
/// frame pointer).
#[inline(always)]
pub fn store_entry_stack<C: EbpfContext>(
    ctx: &C,
    stacks: &HashMap<StackHash, Stack>,
    kind: Kind,
    return_address: u64,
) -> StackHash {
    // From the second frame: frame 0 is then moved or filled below.
    let Some(frames) = read_stack(ctx, BPF_F_USER_STACK as u64, kind, Stat::UserStackError, 1)
    else {
        return 0;
    };
    // SAFETY: this CPU's slot of the kind (see `read_stack`); every index
    // is below `MAX_STACK_DEPTH`, inside the slot.
    unsafe {
        if frames.add(2).read_volatile() == return_address {
            // The kernel put the caller back: move the frames down one.
            for i in 0..MAX_STACK_DEPTH - 1 {
                frames
                    .add(i)
                    .write_volatile(frames.add(i + 1).read_volatile());
            }
            frames.add(MAX_STACK_DEPTH - 1).write_volatile(0);
        } else {
            frames.write_volatile(frames.add(1).read_volatile());
            frames.add(1).write_volatile(return_address);
        }
    }
    store_scratch::<false>(frames, stacks, kind)
}

/// Reads one stack (see [`store_stack`]) into this CPU's scratch space of
/// the kind from frame `skip` on, the `Stack`-sized prefix of the slot
/// zero-filled past it; the slot's frames when the task has such a stack
/// (`error` counted when it could not be read).
#[inline(always)]
fn read_stack<C: EbpfContext>(
    ctx: &C,
    flags: u64,
    kind: Kind,
    error: Stat,
    skip: usize,
) -> Option<*mut u64> {
    let Some(scratch) = kind.scratch() else {
        kind.bump(error);
        return None;
    };
    let frames = scratch.cast::<u64>();
    // SAFETY: `scratch` points at this CPU's slot of the kind, which
    // nothing else touches while this program runs on this CPU; its first
    // `size_of::<Stack>()` bytes are a `Stack` (the same frames array,
    // shorter), of which the helper writes the part from frame `skip`
    // (`skip` is 0 or 1) and zero-fills it past the frames it writes.
    let len = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            frames.add(skip).cast(),
            (size_of::<Stack>() - skip * size_of::<u64>()) as u32,
            flags,
        )
    };
    if len < 0 {
        kind.bump(error);
        return None;
    }
    (len > 0).then_some(frames)
}

/// Stores the `Stack` at the start of this CPU's scratch `frames` in
/// `stacks` under its hash.
#[inline(always)]
fn store_scratch<const LOOPS: bool>(
    frames: *mut u64,
    stacks: &HashMap<StackHash, Stack>,
    kind: Kind,
) -> StackHash {
    // SAFETY: `frames` is this CPU's scratch slot (see `read_stack`),
    // whose prefix is a `Stack`; the helper has returned.
    let stack = unsafe { &*frames.cast::<Stack>() };
    let hash = if LOOPS {
        hash_frames(frames.cast(), MAX_STACK_DEPTH)
    } else {
        hash_stack(&stack.frames)
    };
    insert_hashed(stacks, hash, stack, kind)
}

/// Stores `stack` under `hash` like [`insert_stack`], unless the hash
/// failed (0: no stack).
#[inline(always)]
fn insert_hashed<V>(
    stacks: &HashMap<StackHash, V>,
    hash: StackHash,
    stack: &V,
    kind: Kind,
) -> StackHash {
    if hash == 0 {
        return 0;
    }
    insert_stack(stacks, hash, stack, kind)
}

/// Stores the unwound stack of `depth` frames in this CPU's scratch space:
/// in the set's `STACKS` map when it fits a [`Stack`], else in its
/// `DEEP_STACKS` map. Returns its hash, 0 when there is none.
#[inline(always)]
pub fn save_unwound(set: &StackSet, depth: usize, kind: Kind) -> StackHash {
    let Some(scratch) = kind.scratch() else {
        return 0;
    };
    if depth == 0 {
        return 0;
    }
    if depth <= MAX_STACK_DEPTH {
        let hash = hash_frames(scratch, MAX_STACK_DEPTH);
        // SAFETY: this CPU's scratch value; a `Stack` is its prefix. The
        // unwinder ended the frames with a zero (or filled the prefix).
        let stack = unsafe { &*scratch.cast::<Stack>() };
        insert_hashed(set.stacks(), hash, stack, kind)
    } else {
        let hash = hash_frames(scratch, DEEP_STACK_DEPTH);
        // SAFETY: as above.
        let stack = unsafe { &*scratch };
        insert_hashed(set.deep_stacks(), hash, stack, kind)
    }
}

/// Stores `stack` under `hash` unless a stack already has that hash.
#[inline(always)]
fn insert_stack<V>(
    stacks: &HashMap<StackHash, V>,
    hash: StackHash,
    stack: &V,
    kind: Kind,
) -> StackHash {
    match stacks.insert(hash, stack, BPF_NOEXIST as u64) {
        Ok(()) => {
            // A deep stack counts as the short ones its bytes would hold
            // (4): its map's room is a quarter of the short ones' least.
            added_entries((size_of::<V>() / size_of::<Stack>()).max(1) as u32);
            hash
        }
        Err(err) if err == -EEXIST => hash,
        Err(_) => {
            kind.bump(Stat::StackMapFull);
            0
        }
    }
}

/// FNV-1a's offset basis and prime: a stack's hash is FNV-1a over its
/// frame words up to the first zero, never 0 (0 means "no stack"); the
/// same whichever function below computes it.
const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hash of a frame-pointer stack (at most 127 frames), in a plain
/// loop: the programs that read stacks with `bpf_get_stack` load on
/// Linux 5.8+, which has no `bpf_loop` (5.17). The verifier walks the
/// loop frame by frame; 127 frames are affordable.
#[inline(always)]
fn hash_stack(frames: &[u64; MAX_STACK_DEPTH]) -> StackHash {
    let mut hash = FNV_BASIS;
    for &ip in frames.iter() {
        if ip == 0 {
            break;
        }
        hash = (hash ^ ip).wrapping_mul(FNV_PRIME);
    }
    hash.max(1)
}

/// The hash of an unwound stack, the first `limit` frame words of
/// `scratch` (a kind's scratch stack); 0 when the loop failed.
///
/// A loop step per frame (see [`loop_over`]) rather than a plain loop,
/// which the verifier walked frame by frame with the rest of the program
/// after each exit (that made loading the unwinder's programs take a
/// second and a half of kernel time). Only the table unwinder's programs
/// store unwound stacks, and they need `bpf_loop` anyway.
#[inline(always)]
fn hash_frames(scratch: *const DeepStack, limit: usize) -> StackHash {
    let mut hashing = Hashing {
        frames: scratch,
        hash: FNV_BASIS,
    };
    if loop_over(limit as u32, &mut hashing) {
        hashing.hash.max(1)
    } else {
        0
    }
}

/// The state of [`hash_frames`]' loop.
#[repr(C)]
struct Hashing {
    frames: *const DeepStack,
    hash: u64,
}

impl LoopBody for Hashing {
    /// Hashes frame `index`; stops at the first zero or past the stack.
    #[inline(always)]
    fn step(&mut self, index: u64) -> i64 {
        // SAFETY: `frames` is this CPU's scratch slot of the kind (a live
        // `DeepStack`): nothing else touches it while this program runs.
        let frames = unsafe { &(*self.frames).frames };
        match frames.get(index as usize) {
            Some(&ip) if ip != 0 => {
                self.hash = (self.hash ^ ip).wrapping_mul(FNV_PRIME);
                LOOP_ON
            }
            _ => LOOP_STOP,
        }
    }
}

/// [`LoopBody::step`]'s result that goes on to the next step.
pub const LOOP_ON: i64 = 0;
/// [`LoopBody::step`]'s result that ends the loop.
pub const LOOP_STOP: i64 = 1;

/// The state a `bpf_loop`'s steps share, on the caller's stack for the
/// whole loop (see [`loop_over`]).
pub trait LoopBody {
    /// Step `index`: [`LOOP_ON`] or [`LOOP_STOP`].
    fn step(&mut self, index: u64) -> i64;
}

/// Runs `body`'s step at most `count` times with `bpf_loop` (Linux
/// 5.17+); false when the loop failed. The verifier checks the step for
/// the states it can be entered in (once, or until they converge on
/// 6.7+), whatever the count, where a plain loop is walked iteration by
/// iteration with the rest of the program after each exit; Linux 6.0+
/// inlines the loop (`flags` 0, a known callback).
#[inline(always)]
pub fn loop_over<B: LoopBody>(count: u32, body: &mut B) -> bool {
    // SAFETY: `loop_step::<B>` has the callback signature bpf_loop
    // expects and reads its context as the `B` given here, which stays
    // borrowed (on the caller's stack) until bpf_loop returns.
    let looped = unsafe {
        bpf_loop(
            count,
            loop_step::<B> as *mut c_void,
            (body as *mut B).cast(),
            0,
        )
    };
    looped >= 0
}

/// [`loop_over`]'s callback: one step of the `B` at `context`.
extern "C" fn loop_step<B: LoopBody>(index: u64, context: *mut c_void) -> i64 {
    // SAFETY: `loop_over` passes its exclusively borrowed `B`.
    let body = unsafe { &mut *context.cast::<B>() };
    body.step(index)
}

/// The current thread's id (the kernel's pid).
#[inline(always)]
pub fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Whether a walk that thread `owner` began in a per-CPU slot (unwind,
/// files and Python walk state) may go on. A uprobe's programs can be
/// preempted (they run with migration, not preemption, disabled):
/// another thread's probe on this CPU may have taken the slot meanwhile,
/// and the walk must then stop rather than go on with the other's state.
#[inline(always)]
pub fn still_owned_by(owner: u32) -> bool {
    owner == current_tid()
}

// The deep map is only for stacks the short one cannot hold.
const _: () = assert!(DEEP_STACK_DEPTH > MAX_STACK_DEPTH);

/// The 8 bytes of user memory at `addr`.
#[inline(always)]
pub fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copies from user memory and fails
    // cleanly (rather than faulting) on an address it cannot read.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The current task's thread pointer (x86-64 fsbase, at
/// `config.task_fsbase` of its `task_struct`); `None` when unset.
#[inline(always)]
pub fn thread_pointer(config: &Config) -> Option<u64> {
    // SAFETY: the current task pointer as a number; bpf_probe_read_kernel
    // checks the address it is given.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: as above.
    let fsbase: u64 =
        unsafe { bpf_probe_read_kernel((task + u64::from(config.task_fsbase)) as *const u64) }
            .ok()?;
    (fsbase != 0).then_some(fsbase)
}

/// Tells userspace about a process the first time a program sees it, from
/// the process's own context with its cgroup id (which spares userspace
/// reading `/proc/PID/cgroup` for every process of a cgroup it knows) and
/// its leader's start time and name (which spare it `/proc/PID/stat`).
#[inline(always)]
pub fn announce(tgid: u32, kind: Kind) {
    // SAFETY: plain lookup; the value is never dereferenced.
    if unsafe { KNOWN_PROCESSES.get(tgid) }.is_some() {
        return;
    }
    if KNOWN_PROCESSES.insert(tgid, 1, BPF_NOEXIST as u64).is_err() {
        return; // another CPU announced it first
    }
    let own = (bpf_get_current_pid_tgid() >> 32) as u32 == tgid;
    let sent = send_event(ProcessEvent::NEW, tgid, |event| {
        event.exec_gen = crate::exec::generation(tgid);
        if own {
            // SAFETY: no arguments; reads the current task's cgroup.
            event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
            leader_facts(event);
        }
    });
    if !sent {
        kind.bump(Stat::NewProcessLost);
        // Forget it so the next sample tries again.
        let _ = KNOWN_PROCESSES.remove(tgid);
    }
}

/// Writes the current task's leader's start time and `comm` into a NEW
/// event (left zero where the kernel's offsets are unknown or a read
/// fails: userspace then reads `/proc/PID/stat`).
#[inline(always)]
fn leader_facts(event: &mut ProcessEvent) {
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    if config.task_comm == 0 {
        return;
    }
    let Some((leader, start)) = current_leader(config) else {
        return;
    };
    // SAFETY: bpf_probe_read_kernel checks the address it is given;
    // `comm` is the event's own array.
    let read = unsafe {
        bpf_probe_read_kernel_buf(
            (leader + u64::from(config.task_comm)) as *const u8,
            &mut event.comm,
        )
    };
    if read.is_ok() {
        event.start_boottime = start;
    } else {
        // SAFETY: the event's own array.
        unsafe { zero(&mut event.comm) };
    }
}

/// The current task's leader (its `task_struct` address) and that
/// leader's `start_boottime`; `None` where the kernel's offsets are
/// unknown (`config`), for a kernel thread (no address space: `stat`
/// names it with more than `comm`, a workqueue's name after a kworker's)
/// or when a read fails.
#[inline(always)]
pub fn current_leader(config: &Config) -> Option<(u64, u64)> {
    if config.task_group_leader == 0 || config.task_start_boottime == 0 || config.task_mm == 0 {
        return None;
    }
    // SAFETY: the current task pointer as a number; every read below goes
    // through bpf_probe_read_kernel, which checks the address it is given.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: as above.
    let mm = unsafe { bpf_probe_read_kernel((task + u64::from(config.task_mm)) as *const u64) };
    if mm.ok()? == 0 {
        return None;
    }
    // SAFETY: as above.
    let leader = unsafe {
        bpf_probe_read_kernel((task + u64::from(config.task_group_leader)) as *const u64)
    }
    .ok()?;
    // SAFETY: as above.
    let start = unsafe {
        bpf_probe_read_kernel((leader + u64::from(config.task_start_boottime)) as *const u64)
    }
    .ok()?;
    Some((leader, start))
}

/// The process's start (its leader's) in `/proc/PID/stat`'s clock
/// ticks, low 32 bits, for [`profiler_common::ExecGen::exited_ticks`];
/// 0 when not known.
#[inline(always)]
pub fn current_start_ticks() -> u32 {
    let Some(config) = CONFIG.get(0) else {
        return 0;
    };
    if config.ns_per_tick == 0 {
        return 0;
    }
    match current_leader(config) {
        Some((_, start)) => (start / u64::from(config.ns_per_tick)) as u32,
        None => 0,
    }
}

/// Zeroes `*value` with stores the compiler cannot merge into a `memset`
/// call: the BPF target's `memset` is a byte loop, which the verifier
/// walks byte by byte on every path that reaches it (`send_event`'s
/// 80-byte event alone was thousands of the instructions it checked per
/// program). The loop has a constant count: it is unrolled.
///
/// # Safety
/// `value` must be valid for writes of a `T`, and every bit pattern of
/// `T` valid (all zeros is written byte by byte or word by word).
#[inline(always)]
pub unsafe fn zero<T>(value: *mut T) {
    if align_of::<T>() >= size_of::<u64>() && size_of::<T>() % size_of::<u64>() == 0 {
        let words = value.cast::<u64>();
        for i in 0..size_of::<T>() / size_of::<u64>() {
            // SAFETY: inside `*value`, aligned (see above).
            unsafe { words.add(i).write_volatile(0) };
        }
    } else {
        let bytes = value.cast::<u8>();
        for i in 0..size_of::<T>() {
            // SAFETY: inside `*value`.
            unsafe { bytes.add(i).write_volatile(0) };
        }
    }
}

/// The current task's `comm`, written by the helper straight into the
/// result (it pads the name with zeros, or zeroes all of it when it
/// fails): no zero-filled array first, whose `memset` the verifier would
/// walk byte by byte (see [`zero`]).
#[inline(always)]
pub fn current_comm() -> [u8; COMM_LEN] {
    let mut comm = MaybeUninit::<[u8; COMM_LEN]>::uninit();
    // SAFETY: the helper writes all `COMM_LEN` bytes whatever happens.
    unsafe {
        bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32);
        comm.assume_init()
    }
}

/// Sends an event of `kind` about `tgid` on the process ring, written in
/// place (its senders run deep in chains whose stack has no room for a
/// copy): zeroed, then `fill` writes the fields of its kind. False when
/// the ring is full.
#[inline(always)]
pub fn send_event(kind: u32, tgid: u32, fill: impl FnOnce(&mut ProcessEvent)) -> bool {
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        return false;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: ring memory the size of a `ProcessEvent`, ours until it is
    // submitted: zeroed whole (every bit pattern of its integers is valid)
    // before a reference to it is made.
    let event = unsafe {
        zero(event);
        &mut *event
    };
    event.kind = kind;
    event.tgid = tgid;
    fill(event);
    entry.submit(0);
    true
}
