# gdb_stacks.py: a stack oracle. gdb attaches to a running process, unwinds
# every thread once, prints the stacks as JSON lines and detaches, so that a
# test can compare a profiler's sampled stacks with gdb's.
#
# Run it (as root or the process's owner) either way:
#
#   GDB_STACKS_PID=PID gdb -nx -batch -x gdb_stacks.py
#       The preferred form. The script sets gdb up (debuginfod off,
#       pagination and confirmations off, backtrace past main and past the
#       entry point), reads the executable's symbols while the process
#       still runs (file /proc/PID/exe), then attaches, timing the attach
#       and swallowing gdb's attach chatter: stdout has the JSON lines only.
#   gdb -nx -batch -iex 'set debuginfod enabled off' -p PID -x gdb_stacks.py
#       gdb attaches before the script runs, so debuginfod must be turned
#       off with -iex (else gdb may ask or download), and gdb prints its
#       own lines ("[New LWP N]", "[Thread debugging using libthread_db
#       enabled]", the frame it stopped in, ...) on stdout before the JSON:
#       keep the lines that start with '{'.
#
# Either way, GDB_STACKS_OUT=FILE writes the JSON lines to FILE instead of
# stdout, and GDB_STACKS_MAX_FRAMES (default 10000) caps each stack. gdb's
# warnings go to stderr. The exit status is 0 even when the attach failed:
# see the summary's "error".
#
# Output: one line per thread, in gdb's thread order (the main thread first):
#
#   {"tid": 4242, "name": "small_0", "frames": [FRAME, ...],
#    "stop": "outermost", "stop_code": "OUTERMOST"}
#
# name is the thread's comm. frames are innermost first; each FRAME is
#
#   {"pc": "0x55d0c0a011c9", "name": "small_spin", "type": "NORMAL",
#    "lib": null, "sym": "small_spin"}
#
#  - pc: gdb's frame.pc(). For the innermost frame, for the frame a signal
#    interrupted (the one older than a SIGTRAMP frame) and for the SIGTRAMP
#    frame itself it is the pc; for every other frame it is the return
#    address, just past the call: `info frame` says "rip = X in f; saved
#    rip = Y" and the next older frame's pc is Y.
#  - name: gdb's name for the function: from DWARF when there is debug
#    info (so glibc's internal names: __GI___clock_gettime,
#    __libc_start_main_impl, ...; C++ and Rust demangled), else the
#    demangled ELF symbol, or null (JIT code, a stripped binary's local
#    functions).
#  - type: NORMAL, INLINE, TAILCALL, SIGTRAMP (the signal trampoline,
#    glibc's __restore_rt), DUMMY, ARCH or SENTINEL. An INLINE frame is a
#    function inlined into the next older frame: its pc equals that
#    frame's pc. A TAILCALL frame is a caller gdb infers from DWARF
#    call-site info: nothing of it is on the stack. A caller comparing
#    with a profiler that reads the machine stack drops both.
#  - lib: the shared object holding pc, or null (the main executable, the
#    vDSO, JIT code, an unmapped pc).
#  - sym: the ELF symbol (linkage name, not demangled: "_ZN6toplev4main..",
#    "_RNv..", "runtime.goexit.abi0", "__libc_start_main") holding the
#    pc, or pc - 1 when pc is a return address, as `info symbol` says; or
#    null. An INLINE frame has its containing function's symbol.
#  - return_to_entry (only when true): pc is a return address that is the
#    first byte of sym, so pc - 1 is in no function. makecontext makes
#    such a frame: a coroutine's outermost function returns to
#    __start_context. gdb finds no unwind info at pc - 1 and guesses the
#    frames older than this one: they are garbage.
#
# stop is gdb's reason (frame_stop_reason_string) why the outermost frame
# listed has no caller: "outermost" when the unwind info says the stack
# ends there (_start, clone3, __clone: their CFI marks the return address
# undefined), "previous frame identical to this frame (corrupt stack?)",
# "previous frame inner to this frame (corrupt stack?)", "memory error
# while unwinding", ... and "no reason" when the unwind ran out without a
# reason: Go stacks (runtime.goexit, runtime.clone, runtime.mcall are
# followed by a frame with pc 0x0), garbage frames, or the cap (then
# "truncated" is true). stop_code is the same as a name: OUTERMOST,
# SAME_ID, INNER_ID, NO_SAVED_PC, MEMORY_ERROR, NO_REASON, ... A thread
# gdb could not unwind (or whose unwind raised) has an "error" string, and
# the frames it got before that.
#
# The last line is a summary:
#
#   {"summary": true, "pid": 4242, "threads": 5, "attach_ms": 120.3,
#    "unwind_ms": 8.1, "detach_ms": 0.4, "stopped_ms": 129.0, "error": null}
#
# stopped_ms is how long the process was held stopped (attach, which reads
# the shared objects' symbols, + unwind + detach). attach_ms is null when
# gdb attached before the script (-p); stopped_ms then leaves it out.
#
# What a complete stack ends in (gdb 13, Debian 12, x86-64):
#   C/C++/Rust main thread   ... main, __libc_start_call_main,
#                            __libc_start_main_impl, _start; stop outermost
#                            (a stripped executable's main and _start have
#                            name null: still "outermost")
#   pthreads                 ... start_thread, clone3; stop outermost
#   makecontext coroutine    ... coro_outer, then __start_context with
#                            return_to_entry, then garbage; stop no reason
#   signal handler           handler frames, __restore_rt (SIGTRAMP), then
#                            the interrupted stack down to _start
#   Go goroutine             ... runtime.goexit, then pc 0x0; stop no reason
#   Go runtime threads       ... runtime.mstart, runtime.clone (or
#                            runtime.mcall on g0), then pc 0x0
#   JIT code (node, java)    garbage frames (name null, pcs such as 0x1):
#                            gdb is no oracle there
#
# A snapshot is not a uniform sample in time: the attach's SIGSTOP takes
# effect when the thread next enters the kernel, and stops were seen to
# land in system calls far more often than the time spent there (6 of 16
# snapshots of stacks_sigaltstack in a clock_gettime system call that
# takes < 1 % of its time). Compare the stacks' shapes, not how often each
# shows.

import json
import os
import sys
import time

import gdb

FRAME_TYPES = {}
for _name in ("NORMAL", "DUMMY", "INLINE", "TAILCALL", "SIGTRAMP", "ARCH", "SENTINEL"):
    if hasattr(gdb, _name + "_FRAME"):
        FRAME_TYPES[getattr(gdb, _name + "_FRAME")] = _name

STOP_CODES = {}
for _attr in dir(gdb):
    if _attr.startswith("FRAME_UNWIND_") and _attr not in ("FRAME_UNWIND_FIRST_ERROR",):
        STOP_CODES[getattr(gdb, _attr)] = _attr[len("FRAME_UNWIND_"):]

CALLER_TYPES = (gdb.NORMAL_FRAME, gdb.TAILCALL_FRAME)

SETTINGS = (
    "set pagination off",
    "set confirm off",
    "set height 0",
    "set width 0",
    "set debuginfod enabled off",
    "set backtrace past-main on",
    "set backtrace past-entry on",
    "set backtrace limit unlimited",
    "set print thread-events off",
    "set print inferior-events off",
    "set suppress-cli-notifications on",
)


def _quiet(command):
    """Runs a gdb command, ignoring its output and any error (a setting this
    gdb does not have, such as debuginfod in a gdb built without it)."""
    try:
        gdb.execute(command, to_string=True)
    except gdb.error:
        pass


def _elf_symbol(address):
    """The ELF (minimal) symbol holding address and address's offset in it,
    as `info symbol` says, or (None, None)."""
    try:
        text = gdb.execute("info symbol 0x%x" % address, to_string=True).strip()
    except gdb.error:
        return None, None
    if not text or text.startswith("No symbol matches"):
        return None, None
    text = text.split(" in section ", 1)[0]
    head, sep, offset = text.rpartition(" + ")
    if sep and offset.isdigit():
        return head, int(offset)
    return text, 0


def _describe(frame):
    pc = frame.pc()
    try:
        name = frame.name()
    except gdb.error:
        name = None
    try:
        lib = gdb.solib_name(pc)
    except gdb.error:
        lib = None
    return {
        "pc": "0x%x" % pc,
        "name": name,
        "type": FRAME_TYPES.get(frame.type(), str(frame.type())),
        "lib": lib,
        "sym": None,
    }


def _add_symbols(frames, lookups):
    """Sets each frame's "sym", the ELF symbol (linkage name) holding the
    address in lookups, and "return_to_entry"."""
    _quiet("set print demangle off")
    try:
        for described, (pc, is_caller) in zip(frames, lookups):
            # A caller's pc is a return address: look up the call itself.
            sym, _ = _elf_symbol(pc - 1 if is_caller and pc > 0 else pc)
            if sym is None and is_caller and pc > 0:
                # A return address that is a function's first byte: a frame
                # made up to return into it, as makecontext does with
                # __start_context. gdb finds no unwind info at pc - 1, so
                # the frames older than this one are guesses.
                at_pc, offset = _elf_symbol(pc)
                if at_pc is not None and offset == 0:
                    sym = at_pc
                    described["return_to_entry"] = True
            described["sym"] = sym
    finally:
        _quiet("set print demangle on")


def _thread_entry(thread, max_frames):
    entry = {"tid": thread.ptid[1], "name": None, "frames": [], "stop": None, "stop_code": None}
    try:
        entry["name"] = thread.name
    except Exception:
        pass
    lookups = []
    try:
        thread.switch()
        frame = gdb.newest_frame()
        last = None
        newer_real = None
        while frame is not None:
            if len(entry["frames"]) >= max_frames:
                entry["truncated"] = True
                break
            # pc is a return address when the frame is a normal one and
            # the next newer real (non-inline) frame is too; not when the
            # frame is the innermost, a signal interrupted it, or it is the
            # signal trampoline. So gdb's get_frame_address_in_block.
            is_caller = newer_real in CALLER_TYPES and frame.type() in (
                CALLER_TYPES + (gdb.INLINE_FRAME,))
            entry["frames"].append(_describe(frame))
            lookups.append((frame.pc(), is_caller))
            if frame.type() != gdb.INLINE_FRAME:
                newer_real = frame.type()
            last = frame
            frame = frame.older()
        if last is not None:
            reason = last.unwind_stop_reason()
            entry["stop"] = gdb.frame_stop_reason_string(reason)
            entry["stop_code"] = STOP_CODES.get(reason, str(reason))
    except Exception as err:  # gdb.error, gdb.MemoryError, anything
        entry["error"] = "%s: %s" % (type(err).__name__, err)
    try:
        _add_symbols(entry["frames"], lookups)
    except Exception as err:
        entry.setdefault("error", "symbols: %s: %s" % (type(err).__name__, err))
    return entry


def snapshot(pid=None, out=None):
    """Attaches to pid (unless gdb already has a live inferior), prints the
    stacks of all its threads and detaches."""
    out = out or sys.stdout
    max_frames = int(os.environ.get("GDB_STACKS_MAX_FRAMES", "10000"))
    summary = {"summary": True, "pid": pid, "threads": 0, "attach_ms": None,
               "unwind_ms": None, "detach_ms": None, "stopped_ms": None, "error": None}
    for command in SETTINGS:
        _quiet(command)
    inferior = gdb.selected_inferior()
    start = time.monotonic()
    attached = False
    try:
        if inferior.pid == 0:
            if pid is None:
                raise RuntimeError("no process: set GDB_STACKS_PID or run gdb -p PID")
            # Read the executable's symbols while the process still runs:
            # attaching stops it while gdb reads the rest (~25 % less for
            # cc1plus). /proc/PID/exe is the right file even in another
            # mount namespace.
            _quiet("file /proc/%d/exe" % pid)
            start = time.monotonic()
            gdb.execute("attach %d" % pid, to_string=True)
            summary["attach_ms"] = round((time.monotonic() - start) * 1e3, 1)
            inferior = gdb.selected_inferior()
        summary["pid"] = inferior.pid
        attached = inferior.pid != 0
        unwind_start = time.monotonic()
        threads = sorted(inferior.threads(), key=lambda t: t.num)
        for thread in threads:
            out.write(json.dumps(_thread_entry(thread, max_frames)) + "\n")
        out.flush()
        summary["threads"] = len(threads)
        summary["unwind_ms"] = round((time.monotonic() - unwind_start) * 1e3, 1)
    except Exception as err:
        summary["error"] = "%s: %s" % (type(err).__name__, err)
    finally:
        if attached or gdb.selected_inferior().pid != 0:
            detach_start = time.monotonic()
            try:
                gdb.execute("detach", to_string=True)
            except Exception as err:
                summary["error"] = summary["error"] or "detach: %s" % err
            now = time.monotonic()
            summary["detach_ms"] = round((now - detach_start) * 1e3, 1)
            summary["stopped_ms"] = round((now - start) * 1e3, 1)
        out.write(json.dumps(summary) + "\n")
        out.flush()


def main():
    pid = os.environ.get("GDB_STACKS_PID")
    path = os.environ.get("GDB_STACKS_OUT")
    out = open(path, "w") if path else None
    try:
        snapshot(int(pid) if pid else None, out)
    finally:
        if out is not None:
            out.close()


main()
