//! Which file each sampled user frame is in, recorded at sample time.
//!
//! Userspace resolves a user address through its snapshot of the
//! process's `/proc/PID/maps`. A process that lives a few milliseconds is
//! often gone before that snapshot is taken, and a process that `exec`s
//! has other mappings afterwards. So, after a sample is counted, the kind
//! tail-calls its files program, which walks the sample's user frames and
//! looks the mapping of each one it has not seen yet up with
//! `bpf_find_vma` (5.17+): start, end, file offset, and the file's device
//! and inode, sent once per process image (tgid, exec generation) and
//! mapping on `PROCESS_EVENTS`. Userspace then resolves the frame through
//! any open file with that identity, after the process is gone, and
//! against the image the sample was taken in.
//!
//! `bpf_find_vma` defers the address-space unlock to an irq_work when
//! interrupts are off, and fails while that work is pending: from the
//! CPU-clock interrupt, one lookup per sample succeeds. The frames it could
//! not look up wait in the image's `FILES_STATE` entry and are looked up
//! where interrupts are on and the mappings still exist: at the next
//! off-CPU sample, as the process `exec`s (`sched_prepare_exec`, before the
//! mappings change) and as its threads exit (`sched_process_exit`, which
//! runs before the address space is released on 6.16+).
//!
//! Cost: per frame, a range check against the mapping of the previous
//! frame; per mapping change, a lookup of the image's entry; nothing at
//! all when this CPU's previous walk was the same image and stack, or
//! (CPU and page-fault samples) when the sample's key was already counted
//! in the active map set, whose first count walked the same image and
//! stack, and the image has nothing waiting and lost no frame's mapping
//! during this set (a lookup of its entry; [`walk_again`]): a busy
//! thread's repeated stacks skip the walk until the sets flip. Kernels
//! without `bpf_find_vma` leave the tail-call slots empty and samples
//! resolve through `/proc` snapshots alone.

use core::mem::size_of;

use aya_ebpf::cty::c_void;
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_probe_read_kernel as read_raw},
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::RawTracePointContext,
    EbpfContext,
};
use profiler_common::{
    kernel_kind, names, Config, DeepStack, FileOffsets, ProcessEvent, Stack, StackHash, Stat,
    DEEP_STACK_DEPTH, MARKS_FLOOR, MAX_STACK_DEPTH,
};

use crate::exec;
use crate::stack::{self, Kind, LoopBody, LOOP_ON, LOOP_STOP};
use crate::unwind;

/// Process images with an entry at once (allocated on use, removed as
/// the process exits).
const IMAGES: u32 = 16_384;
/// Mappings remembered per image; past them the oldest is forgotten (and
/// sent again if a frame needs it again).
const RANGES: usize = 16;
/// Frames waiting for a lookup per image (a power of two).
const PENDING: usize = 8;
const _: () = assert!(PENDING.is_power_of_two());
/// `-EBUSY`: the address space's unlock is still pending.
const EBUSY: i64 = -16;

/// A process image: (tgid, exec generation).
#[derive(Clone, Copy)]
#[repr(C)]
struct Image {
    tgid: u32,
    exec_gen: u32,
}

/// What is known of an image's mappings.
#[derive(Clone, Copy)]
#[repr(C)]
struct ImageFiles {
    /// Mappings sent, `[start, end)`; slot `next % RANGES` is replaced next.
    ranges: [[u64; 2]; RANGES],
    next: u32,
    /// Frames in `pending`, at the front.
    pending_count: u32,
    /// The map set (+ 1; 0: none) during which a frame of the image was
    /// left without its mapping sent: waiting, or dropped (the waiting
    /// list full, the ring full). Until the sets flip, every sample of
    /// the image walks its frames again (see [`walk_again`]).
    incomplete_in: u32,
    _pad: u32,
    pending: [u64; PENDING],
}

#[map(name = "FILES_STATE")]
static FILES_STATE: HashMap<Image, ImageFiles> =
    HashMap::with_max_entries(IMAGES, BPF_F_NO_PREALLOC);

/// An all-zero `ImageFiles` that new entries are copied from (too large
/// for the 512-byte BPF stack); never written.
#[map(name = "FILES_EMPTY")]
static FILES_EMPTY: Array<ImageFiles> = Array::with_max_entries(1, 0);

/// The sample a kind hands to its files program, and the one its files
/// program walked last, per CPU.
#[derive(Clone, Copy)]
struct Pending {
    /// The thread sampled: a memory-profile chain runs in a uprobe, which
    /// can be preempted between handing the sample over and its files
    /// program reading it (see [`stack::still_owned_by`]).
    tid: u32,
    tgid: u32,
    exec_gen: u32,
    stack: StackHash,
    set: u32,
    last_tgid: u32,
    last_exec_gen: u32,
    last_stack: StackHash,
}

#[map(name = "FILES_PENDING")]
static FILES_PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(kernel_kind::COUNT, 0);

/// Whether a sample of the image (`tgid`, `exec_gen`) whose key was
/// already counted in map set `set` must walk its frames anyway: that
/// key's first walk sent the mappings of its frames unless the image has
/// frames waiting, or lost one during this set (see
/// [`ImageFiles::incomplete_in`]), or has no entry (the map was full).
#[inline(always)]
pub fn walk_again(tgid: u32, exec_gen: u32, set: u32) -> bool {
    // SAFETY: plain lookup; two fields read at once.
    match unsafe { FILES_STATE.get(&Image { tgid, exec_gen }) } {
        Some(files) => files.pending_count != 0 || files.incomplete_in == set.wrapping_add(1),
        None => true,
    }
}

/// Marks `files` as having left a frame's mapping unsent in the active
/// set (see [`ImageFiles::incomplete_in`]).
#[inline(always)]
fn mark_incomplete(kind: Kind, files: &mut ImageFiles) {
    if let Some(config) = kind.config() {
        files.incomplete_in = config.active_set.wrapping_add(1);
    }
}

/// Hands a counted sample's user stack to the kind's files program in
/// slot `TAIL_RECORD_FILES` of `programs`. Returns when there is nothing
/// to walk or the slot is empty (no `bpf_find_vma`).
#[inline(always)]
pub fn walk_in_tail_call<C: EbpfContext>(
    ctx: &C,
    programs: &ProgramArray,
    kind: Kind,
    tgid: u32,
    exec_gen: u32,
    user_stack: StackHash,
    set: u32,
) {
    if tgid == 0 || user_stack == 0 {
        return;
    }
    let Some(pending) = FILES_PENDING.get_ptr_mut(kind.index()) else {
        return;
    };
    // SAFETY: this CPU's slot of the kind; a kind's programs do not nest
    // on one CPU.
    let pending = unsafe { &mut *pending };
    if pending.last_tgid == tgid
        && pending.last_exec_gen == exec_gen
        && pending.last_stack == user_stack
    {
        return; // walked just before
    }
    pending.tid = stack::current_tid();
    pending.tgid = tgid;
    pending.exec_gen = exec_gen;
    pending.stack = user_stack;
    pending.set = set;
    // SAFETY: the slot holds the files program of the caller's type (and
    // hook), or nothing.
    let _ = unsafe { programs.tail_call(ctx, names::TAIL_RECORD_FILES) };
}

/// The body of each kind's files program: looks up the frames the image
/// still has waiting, then walks the pending sample's user stack.
#[inline(always)]
pub fn record(kind: Kind) {
    let Some(config) = kind.config() else {
        return;
    };
    if config.flags & Config::RECORD_FILES == 0 {
        return;
    }
    let (Some(pending), Some(scratch)) = (FILES_PENDING.get_ptr_mut(kind.index()), kind.scratch())
    else {
        return;
    };
    // SAFETY: this CPU's slot of the kind; see `walk_in_tail_call`.
    let pending = unsafe { &mut *pending };
    // A copy, read once: a preempted memory probe's slot may be taken by
    // another thread's sample meanwhile, whose image this walk must not
    // write into.
    let sample = *pending;
    if !stack::still_owned_by(sample.tid) {
        return;
    }
    let image = Image {
        tgid: sample.tgid,
        exec_gen: sample.exec_gen,
    };
    if !ensure_entry(&image) {
        kind.bump(Stat::FileRecordLost); // FILES_STATE is full
        return;
    }
    look_up_waiting(kind, &image, config.files);
    if !copy_stack(sample.stack, sample.set, scratch) {
        return; // drained meanwhile
    }
    pending.last_tgid = sample.tgid;
    pending.last_exec_gen = sample.exec_gen;
    pending.last_stack = sample.stack;
    if Walk::start(kind, image, config.files).is_some() {
        stack::loop_over(DEEP_STACK_DEPTH as u32, &mut FrameFiles(kind.index()));
    }
}

/// Creates `image`'s entry unless it has one; false when the map is full.
#[inline(always)]
fn ensure_entry(image: &Image) -> bool {
    if FILES_STATE.get_ptr(image).is_some() {
        return true;
    }
    let Some(empty) = FILES_EMPTY.get(0) else {
        return false;
    };
    // Another CPU may have created it meanwhile: fine either way.
    let _ = FILES_STATE.insert(image, empty, BPF_NOEXIST as u64);
    FILES_STATE.get_ptr(image).is_some()
}

/// Looks up the frames `image` has waiting (from samples taken with
/// interrupts off); those still busy wait on.
#[inline(always)]
fn look_up_waiting(kind: Kind, image: &Image, offsets: FileOffsets) {
    let Some(files) = FILES_STATE.get_ptr_mut(image) else {
        return;
    };
    // SAFETY: a live map value; see `look_up` on concurrent writers.
    let count = unsafe { (*files).pending_count } as usize;
    if count == 0 {
        return;
    }
    if Walk::start(kind, *image, offsets).is_some() {
        stack::loop_over(count as u32, &mut WaitingFiles(kind.index()));
    }
}

/// The loop over an image's waiting frames: the kind whose walk it is
/// (see [`Walk::of_kind`]).
struct WaitingFiles(u32);

impl LoopBody for WaitingFiles {
    #[inline(always)]
    fn step(&mut self, _index: u64) -> i64 {
        waiting_frame(self.0)
    }
}

/// One waiting frame of the walk's image: taken off the list (the last
/// one first) and looked up, waiting again if the lookup is still busy.
#[inline(always)]
fn waiting_frame(kind: u32) -> i64 {
    let Some(walk) = Walk::of_kind(kind) else {
        return LOOP_STOP;
    };
    if walk.busy != 0 {
        return LOOP_STOP;
    }
    let Some(files) = FILES_STATE.get_ptr_mut(&walk.image) else {
        return LOOP_STOP;
    };
    // SAFETY: a live map value; see `look_up` on concurrent writers.
    let files = unsafe { &mut *files };
    let count = files.pending_count;
    if count == 0 || count as usize > PENDING {
        return LOOP_STOP;
    }
    let last = count - 1;
    let addr = files.pending[bounded(last as usize)];
    files.pending_count = last;
    look_up(walk, addr);
    LOOP_ON
}

/// Looks up what `image` (the current process's) still has waiting, where
/// interrupts are on: as it execs and as its threads exit. Counted in the
/// off-CPU kind's counters: like the off-CPU programs, these tracepoints
/// run with preemption off, so neither interrupts the other on a CPU
/// (only the CPU kind's interrupt can, and it has its own counters).
#[inline(always)]
pub fn flush(image_gen: u32) {
    if let Some((image, offsets)) = current_image(image_gen) {
        look_up_waiting(Kind::OFF_CPU, &image, offsets);
    }
}

/// The current process's image `exec_gen`, and the offsets to read its
/// mappings with; `None` when files are not recorded.
#[inline(always)]
fn current_image(exec_gen: u32) -> Option<(Image, FileOffsets)> {
    let config = Kind::OFF_CPU.config()?;
    if config.flags & Config::RECORD_FILES == 0 {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    Some((Image { tgid, exec_gen }, config.files))
}

/// As an exec begins, once the generation has moved on to `exec_gen`:
/// records, for that generation, the mapping of the current task's user
/// pc (the old image's `execve` call). Samples taken inside `execve` after
/// the address space switched carry that one user address, which the new
/// mappings do not hold; with it recorded they name the call instead of
/// `[unknown]`.
#[inline(always)]
pub fn record_exec_call(exec_gen: u32) {
    let Some((image, offsets)) = current_image(exec_gen) else {
        return;
    };
    let Some(regs) = unwind::current_user_regs() else {
        return;
    };
    if !ensure_entry(&image) {
        return;
    }
    if let Some(walk) = Walk::start(Kind::OFF_CPU, image, offsets) {
        look_up(walk, regs.rip);
    }
}

/// A thread exits (`sched_process_exit(task, group_dead)`): its process's
/// waiting frames are looked up while the mappings exist; with the last
/// thread the entry goes and the generation moves on (see [`crate::exec`]).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn files_exit(ctx: RawTracePointContext) -> i32 {
    stack::entry(|_| {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let exec_gen = exec::generation(tgid);
        flush(exec_gen);
        let group_dead: u64 = ctx.arg(1);
        if group_dead & 1 != 0 {
            forget(tgid, exec_gen);
            exec::exited();
            crate::memory::exited(tgid);
        }
        0
    })
}

/// Drops what is known of the image (`tgid`, `exec_gen`): it exited, or
/// exec'd into another.
#[inline(always)]
pub fn forget(tgid: u32, exec_gen: u32) {
    let _ = FILES_STATE.remove(&Image { tgid, exec_gen });
}

/// Copies the stack stored under `hash` in set `set` into `scratch`,
/// zero-terminated; false when it is in neither of the set's maps.
#[inline(always)]
fn copy_stack(hash: StackHash, set: u32, scratch: *mut DeepStack) -> bool {
    let maps = stack::stack_set_at(set);
    if let Some(stack) = maps.stacks().get_ptr(hash) {
        // SAFETY: `stack` is a live map value of `size_of::<Stack>()`
        // bytes, `scratch` this CPU's slot of the kind, larger.
        let copied = unsafe { read_raw(scratch.cast(), size_of::<Stack>() as u32, stack.cast()) };
        // SAFETY: as above; the slot after a `Stack`'s frames ends them.
        unsafe { (*scratch).frames[MAX_STACK_DEPTH] = 0 };
        return copied == 0;
    }
    if let Some(stack) = maps.deep_stacks().get_ptr(hash) {
        // SAFETY: as above, with a `DeepStack` (the scratch's own size).
        let copied =
            unsafe { read_raw(scratch.cast(), size_of::<DeepStack>() as u32, stack.cast()) };
        return copied == 0;
    }
    false
}

/// Per CPU, per kind: the walk under way. In a map, not on the stack (the
/// loops' context is the kind's index): the verifier knows nothing of a
/// map value's contents, so each step it checks starts from the same
/// unknown state and the loop's states converge at once; on the stack, a
/// walk that found its lookups busy (or not) was a state of its own, and
/// every lookup was checked again for each.
#[map(name = "FILES_WALK")]
static FILES_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(kernel_kind::COUNT, 0);

/// A walk's state ([`FILES_WALK`]).
#[repr(C)]
struct Walk {
    kind: u32,
    /// The thread that began the walk (see [`Walk::is_current`]).
    owner: u32,
    /// A lookup failed with `-EBUSY`: the others of this run would too.
    busy: u32,
    image: Image,
    /// The mapping of the previous frame.
    last_start: u64,
    last_end: u64,
    offsets: FileOffsets,
    /// What the last `bpf_find_vma` read (see [`read_vma`]).
    vma: Vma,
}

impl Walk {
    /// Starts a walk of `image` for `kind`, reading mappings through
    /// `offsets`, in the kind's slot of [`FILES_WALK`].
    #[inline(always)]
    fn start(kind: Kind, image: Image, offsets: FileOffsets) -> Option<&'static mut Walk> {
        let walk = FILES_WALK.get_ptr_mut(kind.index())?;
        // SAFETY: this CPU's slot of the kind; nothing else touches it
        // while this program runs (the loop's steps reach it through the
        // kind's index, while no other reference to it is used).
        let walk = unsafe { &mut *walk };
        walk.kind = kind.index();
        walk.owner = stack::current_tid();
        walk.busy = 0;
        walk.image = image;
        // Volatile: two plain zero stores become a 16-byte `memset`, a
        // byte loop on the BPF target that the verifier walks.
        // SAFETY: fields of the live slot above.
        unsafe {
            core::ptr::addr_of_mut!(walk.last_start).write_volatile(0);
            core::ptr::addr_of_mut!(walk.last_end).write_volatile(0);
        }
        walk.offsets = offsets;
        Some(walk)
    }

    /// The walk of the kind `kind` (an index; a loop's context), while
    /// the thread that began it still owns the slot.
    #[inline(always)]
    fn of_kind(kind: u32) -> Option<&'static mut Walk> {
        // SAFETY: as in `start`.
        let walk = unsafe { &mut *FILES_WALK.get_ptr_mut(kind)? };
        walk.is_current().then_some(walk)
    }

    /// Whether the thread that began the walk still owns the slot (see
    /// [`stack::still_owned_by`]): else it must stop rather than look up
    /// its own mappings under another's image.
    #[inline(always)]
    fn is_current(&self) -> bool {
        stack::still_owned_by(self.owner)
    }
}

/// What `bpf_find_vma`'s callback read of the mapping.
#[repr(C)]
#[derive(Clone, Copy)]
struct Vma {
    start: u64,
    end: u64,
    file_offset: u64,
    inode: u64,
    dev: u32,
    found: u32,
}

/// The loop over a sample's frames: the kind whose walk it is (see
/// [`Walk::of_kind`]).
struct FrameFiles(u32);

impl LoopBody for FrameFiles {
    #[inline(always)]
    fn step(&mut self, index: u64) -> i64 {
        file_of_frame(self.0, index)
    }
}

/// Frame `index` of the walk of `kind`; returns 1 (stop) at the end of
/// the stack.
#[inline(always)]
fn file_of_frame(kind: u32, index: u64) -> i64 {
    let Some(walk) = Walk::of_kind(kind) else {
        return LOOP_STOP;
    };
    let Some(scratch) = Kind::from_index(walk.kind).scratch() else {
        return LOOP_STOP;
    };
    let i = index as usize;
    if i >= DEEP_STACK_DEPTH {
        return LOOP_STOP;
    }
    // SAFETY: this CPU's scratch slot of the kind, filled by `record`.
    let addr = unsafe { (*scratch).frames[i] };
    // The end of the native frames: a mark, and the Python frames after
    // one, are no addresses.
    if addr == 0 || addr >= MARKS_FLOOR {
        return LOOP_STOP;
    }
    // The first frame goes on even when no mapping holds it: the sampled
    // pc itself (a jump through a bad pointer, the vsyscall page).
    if look_up(walk, addr) || i == 0 {
        LOOP_ON
    } else {
        LOOP_STOP
    }
}

/// Finds the mapping of `addr` unless the walk or the image knows it, and
/// sends it; when the lookup is busy, leaves `addr` waiting. A function of
/// its own: the verifier checks it once, not at each call.
///
/// False when a walk of a stack's frames may stop there: `addr` is in no
/// mapping (a return address no mapping holds comes from a broken chain,
/// frame pointers followed into data in a program built without them, and
/// so do the frames above it), or the lookups are busy and the image has
/// as many frames waiting as it keeps. Without the stop, each garbage
/// frame cost a map lookup and often a `bpf_find_vma`.
#[inline(never)]
fn look_up(walk: &mut Walk, addr: u64) -> bool {
    if walk.last_start <= addr && addr < walk.last_end {
        return true; // same mapping as the previous frame
    }
    if !walk.is_current() {
        return false; // another thread's walk took the slot (see `is_current`)
    }
    let kind = Kind::from_index(walk.kind);
    let Some(files) = FILES_STATE.get_ptr_mut(&walk.image) else {
        return false;
    };
    // SAFETY: a live map value. Two CPUs sampling threads of one process
    // at once may both write it; the worst outcome is a mapping sent
    // twice or a waiting frame lost, never a wrong mapping.
    let files = unsafe { &mut *files };
    for range in files.ranges.iter() {
        if range[0] <= addr && addr < range[1] {
            walk.last_start = range[0];
            walk.last_end = range[1];
            return true;
        }
    }
    if walk.busy != 0 {
        return wait(kind, files, addr);
    }
    // Zeroed word by word, not by a `memset` call (see `stack::zero`).
    // SAFETY: the walk's own field, every field an integer: zero is one.
    unsafe { stack::zero(&mut walk.vma) };
    // The callback's context: where the walk is. It writes what it reads
    // into the walk (a map value), not into this stack: the verifier
    // tracks what a stack slot holds, and each of the callback's returns
    // (a read that failed, an anonymous mapping, a file) left a different
    // stack, so it checked the rest of the walk once per return.
    let mut context: *mut Walk = walk;
    // SAFETY: the current task is a valid BTF task pointer; `read_vma`
    // has the callback signature bpf_find_vma expects and `context`
    // lives on this stack for the call.
    let result = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf(),
            addr,
            read_vma as *mut c_void,
            (&mut context as *mut *mut Walk).cast(),
            0,
        )
    };
    // Copied out before the ownership check: a memory-profile chain runs
    // in a uprobe and can be preempted, and another thread's chain on
    // this CPU may have taken the slot (and its `vma`) meanwhile.
    let (vma, image) = (walk.vma, walk.image);
    if !walk.is_current() {
        return false;
    }
    if result == EBUSY {
        walk.busy = 1;
        return wait(kind, files, addr);
    }
    if result != 0 || vma.found == 0 || vma.end <= addr {
        kind.bump(Stat::FileLookupFailed);
        return false;
    }
    walk.last_start = vma.start;
    walk.last_end = vma.end;
    let slot = (files.next as usize) % RANGES;
    files.ranges[slot] = [vma.start, vma.end];
    files.next = files.next.wrapping_add(1);
    if vma.inode == 0 {
        return true; // anonymous memory (JIT code): nothing to send
    }
    let sent = stack::send_event(ProcessEvent::FILE, image.tgid, |event| {
        event.exec_gen = image.exec_gen;
        event.dev = vma.dev;
        event.start = vma.start;
        event.end = vma.end;
        event.file_offset = vma.file_offset;
        event.inode = vma.inode;
    });
    if sent {
        kind.bump(Stat::FilesRecorded);
    } else {
        kind.bump(Stat::FileRecordLost);
        mark_incomplete(kind, files);
        // Forget it so a later sample sends it again.
        // SAFETY: the entry's own range.
        unsafe { stack::zero(&mut files.ranges[slot]) };
    }
    true
}

/// `index` masked into `pending`'s bounds where the verifier sees it (a
/// volatile read, so the compiler cannot drop the mask as redundant with
/// the caller's check).
#[inline(always)]
fn bounded(index: usize) -> usize {
    // SAFETY: reads a local.
    unsafe { core::ptr::read_volatile(&index) & (PENDING - 1) }
}

/// Leaves `addr` for a later lookup, unless the image has enough waiting
/// (then false); either way the image's frames are incomplete in this set.
#[inline(always)]
fn wait(kind: Kind, files: &mut ImageFiles, addr: u64) -> bool {
    mark_incomplete(kind, files);
    let count = files.pending_count as usize;
    if count >= PENDING {
        return false;
    }
    files.pending[bounded(count)] = addr;
    files.pending_count += 1;
    true
}

/// `bpf_find_vma`'s callback: reads the mapping's range and file identity
/// into the walk's [`Vma`], through the offsets userspace took from BTF.
#[inline(never)]
extern "C" fn read_vma(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    // SAFETY: `look_up` passes a pointer to its pointer to the walk, a
    // live map value (this CPU's slot of the kind); `look_up` reads what
    // is written here only once it knows the slot is still its own.
    let walk = unsafe { &mut **(ctx as *mut *mut Walk) };
    let offsets = walk.offsets;
    let out = &mut walk.vma;
    // The address as a number: the fields are read with
    // bpf_probe_read_kernel at offsets only known at run time.
    let base = launder(vma as u64);
    let (Some(start), Some(end), Some(pgoff), Some(file)) = (
        read_u64(base, offsets.vma_start),
        read_u64(base, offsets.vma_end),
        read_u64(base, offsets.vma_pgoff),
        read_u64(base, offsets.vma_file),
    ) else {
        return 0;
    };
    out.start = start;
    out.end = end;
    out.found = 1;
    if file == 0 {
        return 0;
    }
    let Some(inode) = read_u64(file, offsets.file_inode).filter(|&p| p != 0) else {
        return 0;
    };
    let (Some(ino), Some(sb)) = (
        read_u64(inode, offsets.inode_ino),
        read_u64(inode, offsets.inode_sb),
    ) else {
        return 0;
    };
    let Some(dev) = read_u64(sb, offsets.sb_dev) else {
        return 0;
    };
    out.file_offset = pgoff << 12;
    out.inode = ino;
    out.dev = dev as u32; // s_dev is a 32-bit dev_t
    0
}

/// Reads the 8 bytes at `base + offset` of kernel memory.
#[inline(always)]
fn read_u64(base: u64, offset: u32) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an
    // error, not a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u64) }.ok()
}

/// `value` as a plain number the verifier does not track as a pointer
/// (it forbids arithmetic with unknown offsets on BTF pointers).
#[inline(always)]
fn launder(value: u64) -> u64 {
    // SAFETY: reads 8 bytes of this stack frame.
    unsafe { bpf_probe_read_kernel(&value as *const u64) }.unwrap_or(0)
}
