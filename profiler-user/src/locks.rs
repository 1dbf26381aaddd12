//! Lock contention: what kind of lock a wait was for, in the kernel (from
//! the `LCB_F_*` flags of `contention_begin`) and in user space (from the
//! stack of a thread blocked in a futex), and where the lock was taken.
//!
//! Pure: functions of flags and symbolized frame names.
//!
//! How a user-space wait is classified: an off-CPU interval is lock
//! contention when its thread blocked in a futex wait (wait class
//! `futex`) and, scanning its user frames from the innermost, a lock
//! acquisition's slow path comes before any other kind of wait: glibc's
//! `__lll_lock_wait` and `pthread_mutex_*lock`, `pthread_rwlock_*`,
//! Rust std's `Mutex::lock_contended` and `RwLock::{read,write}_contended`,
//! `parking_lot`'s slow paths and Go's `runtime.lock2`. Condition-variable
//! waits (`pthread_cond_*`, `Condvar::wait`), semaphores, barriers,
//! `pthread_join` and everything not a futex (`epoll`,
//! sleeps, I/O) are not contention. A condition variable re-taking its
//! mutex after the wake-up *is* (its innermost frame is the mutex's). Only
//! the innermost [`SCAN_FRAMES`] user frames are looked at, so a lock
//! taken far up a stack that then waits on something else is not counted.

/// The label naming the kind of lock (`mutex`, `rwsem:write`,
/// `pthread_mutex`, …).
pub const LOCK_TYPE: &str = "lock.type";
/// The label saying whose lock it is: `kernel` or `user`.
pub const LOCK_SPACE: &str = "lock.space";

/// User frames scanned for a lock acquisition, innermost first.
pub const SCAN_FRAMES: usize = 8;

// include/trace/events/lock.h
const LCB_F_SPIN: u32 = 1 << 0;
const LCB_F_READ: u32 = 1 << 1;
const LCB_F_WRITE: u32 = 1 << 2;
const LCB_F_RT: u32 = 1 << 3;
const LCB_F_PERCPU: u32 = 1 << 4;
const LCB_F_MUTEX: u32 = 1 << 5;

/// The kind of kernel lock whose contention carried `flags`.
pub fn kernel_lock_type(flags: u32) -> &'static str {
    let access = |read: &'static str, write: &'static str, neither: &'static str| {
        if flags & LCB_F_READ != 0 {
            read
        } else if flags & LCB_F_WRITE != 0 {
            write
        } else {
            neither
        }
    };
    if flags & LCB_F_MUTEX != 0 {
        "mutex"
    } else if flags & LCB_F_RT != 0 {
        "rt_mutex"
    } else if flags & LCB_F_PERCPU != 0 {
        access("percpu_rwsem:read", "percpu_rwsem:write", "percpu_rwsem")
    } else if flags & LCB_F_SPIN != 0 {
        access("rwlock:read", "rwlock:write", "spinlock")
    } else {
        access("rwsem:read", "rwsem:write", "other")
    }
}

/// What a user frame says about the wait it is in.
enum Frame {
    /// The slow path of acquiring this kind of lock.
    Lock(&'static str),
    /// Another kind of wait: not lock contention.
    OtherWait,
}

/// (substring of the function name, what it is), tried in order.
const USER_RULES: &[(&str, Frame)] = &[
    // glibc's internal locks (malloc arenas, stdio, the loader).
    ("__lll_lock_wait_private", Frame::Lock("glibc_internal")),
    ("lll_lock_wait", Frame::Lock("pthread_mutex")),
    ("pthread_mutex_cond_lock", Frame::Lock("pthread_mutex")),
    ("pthread_mutex_lock", Frame::Lock("pthread_mutex")),
    ("pthread_mutex_timedlock", Frame::Lock("pthread_mutex")),
    ("pthread_mutex_clocklock", Frame::Lock("pthread_mutex")),
    ("pthread_rwlock_rdlock", Frame::Lock("pthread_rwlock:read")),
    (
        "pthread_rwlock_timedrdlock",
        Frame::Lock("pthread_rwlock:read"),
    ),
    (
        "pthread_rwlock_clockrdlock",
        Frame::Lock("pthread_rwlock:read"),
    ),
    ("pthread_rwlock_wrlock", Frame::Lock("pthread_rwlock:write")),
    (
        "pthread_rwlock_timedwrlock",
        Frame::Lock("pthread_rwlock:write"),
    ),
    (
        "pthread_rwlock_clockwrlock",
        Frame::Lock("pthread_rwlock:write"),
    ),
    ("Mutex::lock_contended", Frame::Lock("rust_mutex")),
    ("RwLock::read_contended", Frame::Lock("rust_rwlock:read")),
    ("RwLock::write_contended", Frame::Lock("rust_rwlock:write")),
    ("RawMutex::lock_slow", Frame::Lock("parking_lot_mutex")),
    (
        "RawRwLock::lock_shared_slow",
        Frame::Lock("parking_lot_rwlock:read"),
    ),
    (
        "RawRwLock::lock_upgradable_slow",
        Frame::Lock("parking_lot_rwlock:read"),
    ),
    (
        "RawRwLock::lock_exclusive_slow",
        Frame::Lock("parking_lot_rwlock:write"),
    ),
    ("runtime.lock2", Frame::Lock("go_runtime_lock")),
    ("pthread_cond_", Frame::OtherWait),
    ("Condvar::wait", Frame::OtherWait),
    ("sem_wait", Frame::OtherWait),
    ("sem_timedwait", Frame::OtherWait),
    ("sem_clockwait", Frame::OtherWait),
    ("pthread_barrier_wait", Frame::OtherWait),
    ("pthread_join", Frame::OtherWait),
    ("pthread_clockjoin", Frame::OtherWait),
    ("pthread_timedjoin", Frame::OtherWait),
    ("runtime.notesleep", Frame::OtherWait),
    ("runtime.futexsleep", Frame::OtherWait),
];

/// The kind of user-space lock an off-CPU wait was contention for, or
/// `None` when it was not lock contention: `wait_class` is the sample's
/// `wait.class` label, `user_frames` its user function names, innermost
/// first (see the module's doc).
pub fn user_lock_type<'a>(
    wait_class: Option<&str>,
    user_frames: impl IntoIterator<Item = &'a str>,
) -> Option<&'static str> {
    if wait_class != Some("futex") {
        return None;
    }
    for name in user_frames.into_iter().take(SCAN_FRAMES) {
        let rule = USER_RULES.iter().find(|(part, _)| name.contains(part));
        match rule {
            Some((_, Frame::Lock(kind))) => return Some(kind),
            Some((_, Frame::OtherWait)) => return None,
            None => {}
        }
    }
    None
}

/// Function-name prefixes of lock implementations and the scheduler: the
/// frames skipped to find where a lock was taken.
const LOCK_MACHINERY: &[&str] = &[
    // Kernel.
    "queued_",
    "native_queued_",
    "__pv_queued_",
    "_raw_",
    "do_raw_",
    "__mutex_lock",
    "mutex_lock",
    "__mutex_",
    "mutex_optimistic_spin",
    "osq_lock",
    "rwsem_",
    "down_",
    "__down_",
    "percpu_down_",
    "__percpu_down_",
    "percpu_rwsem_",
    "rt_mutex",
    "__rt_mutex",
    "rtlock_",
    "rt_spin_lock",
    "schedule",
    "__schedule",
    "io_schedule",
    "preempt_schedule",
    "finish_task_switch",
    // User space.
    "__lll_lock_wait",
    "lll_lock_wait",
    "lll_mutex_lock",
    "__pthread_mutex",
    "___pthread_mutex",
    "pthread_mutex",
    "__pthread_rwlock",
    "pthread_rwlock",
    "__futex",
    "futex_",
    "syscall",
    "__GI_",
];

/// Substrings of lock-implementation frames with namespaces (Rust,
/// `parking_lot`, Go).
const LOCK_MACHINERY_PARTS: &[&str] = &[
    "::futex::",
    "_contended",
    "RawMutex::",
    "RawRwLock::",
    "parking_lot_core::",
    "runtime.lock",
    "runtime.futex",
];

/// Whether `name` is part of a lock's implementation (or the scheduler)
/// rather than the code that took the lock.
pub fn is_lock_machinery(name: &str) -> bool {
    let bare = name.split('.').next().unwrap_or(name);
    LOCK_MACHINERY.iter().any(|p| bare.starts_with(p))
        || LOCK_MACHINERY_PARTS.iter().any(|p| name.contains(p))
}

/// Where a lock was taken: the innermost of `frames` (function names,
/// innermost first) outside the lock's implementation, or `None` when
/// every frame is.
pub fn acquired_in<'a>(frames: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    frames.into_iter().find(|name| !is_lock_machinery(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_locks_are_named_by_their_flags() {
        assert_eq!(kernel_lock_type(LCB_F_SPIN), "spinlock");
        assert_eq!(kernel_lock_type(LCB_F_SPIN | LCB_F_READ), "rwlock:read");
        assert_eq!(kernel_lock_type(LCB_F_SPIN | LCB_F_WRITE), "rwlock:write");
        assert_eq!(
            kernel_lock_type(LCB_F_MUTEX | LCB_F_SPIN),
            "mutex",
            "spinning"
        );
        assert_eq!(kernel_lock_type(LCB_F_MUTEX), "mutex");
        assert_eq!(kernel_lock_type(LCB_F_READ), "rwsem:read");
        assert_eq!(kernel_lock_type(LCB_F_WRITE), "rwsem:write");
        assert_eq!(
            kernel_lock_type(LCB_F_PERCPU | LCB_F_WRITE),
            "percpu_rwsem:write"
        );
        assert_eq!(kernel_lock_type(LCB_F_RT), "rt_mutex");
        assert_eq!(kernel_lock_type(0), "other");
    }

    #[test]
    fn glibc_mutex_waits_are_contention() {
        let stack = [
            "__futex_abstimed_wait_common64",
            "__GI___lll_lock_wait",
            "lll_mutex_lock_optimized",
            "___pthread_mutex_lock",
            "contend",
            "start_thread",
        ];
        assert_eq!(user_lock_type(Some("futex"), stack), Some("pthread_mutex"));
        assert_eq!(acquired_in(stack), Some("contend"));
        // A preempted thread or another wait class is not.
        assert_eq!(user_lock_type(Some("runqueue"), stack), None);
        assert_eq!(user_lock_type(None, stack), None);
    }

    #[test]
    fn condition_variable_waits_are_not_but_their_relock_is() {
        let wait = [
            "__futex_abstimed_wait_common",
            "___pthread_cond_wait",
            "pool_worker_idle",
            "___pthread_mutex_lock",
        ];
        assert_eq!(user_lock_type(Some("futex"), wait), None);
        let relock = [
            "__lll_lock_wait",
            "__pthread_mutex_cond_lock",
            "___pthread_cond_wait",
            "consumer",
        ];
        assert_eq!(user_lock_type(Some("futex"), relock), Some("pthread_mutex"));
    }

    #[test]
    fn rust_and_parking_lot_locks_are_recognized() {
        let std_mutex = [
            "std::sys::pal::unix::futex::futex_wait",
            "std::sys::sync::mutex::futex::Mutex::lock_contended",
            "std::sync::poison::mutex::Mutex<T>::lock",
            "app::handler",
        ];
        assert_eq!(user_lock_type(Some("futex"), std_mutex), Some("rust_mutex"));
        assert_eq!(
            acquired_in(std_mutex),
            Some("std::sync::poison::mutex::Mutex<T>::lock")
        );
        let rwlock = [
            "std::sys::pal::unix::futex::futex_wait",
            "std::sys::sync::rwlock::futex::RwLock::write_contended",
        ];
        assert_eq!(
            user_lock_type(Some("futex"), rwlock),
            Some("rust_rwlock:write")
        );
        let condvar = [
            "std::sys::pal::unix::futex::futex_wait",
            "std::sys::sync::condvar::futex::Condvar::wait",
            "std::sync::mpmc::array::Channel<T>::recv",
        ];
        assert_eq!(user_lock_type(Some("futex"), condvar), None);
        let parked = ["syscall", "std::thread::park", "tokio::runtime::park"];
        assert_eq!(user_lock_type(Some("futex"), parked), None);
        // parking_lot parks inside its slow paths: the park is neutral.
        let parking_lot = [
            "syscall",
            "parking_lot_core::thread_parker::imp::ThreadParker::futex_wait",
            "parking_lot_core::parking_lot::park",
            "parking_lot::raw_mutex::RawMutex::lock_slow",
            "app::handler",
        ];
        assert_eq!(
            user_lock_type(Some("futex"), parking_lot),
            Some("parking_lot_mutex")
        );
        assert_eq!(acquired_in(parking_lot), Some("app::handler"));
        let parking_lot_condvar = [
            "parking_lot_core::parking_lot::park",
            "parking_lot::condvar::Condvar::wait_until_internal",
        ];
        assert_eq!(user_lock_type(Some("futex"), parking_lot_condvar), None);
    }

    #[test]
    fn only_the_innermost_frames_are_scanned() {
        let mut deep = vec!["syscall"; SCAN_FRAMES];
        deep.push("___pthread_mutex_lock");
        assert_eq!(user_lock_type(Some("futex"), deep), None);
    }

    #[test]
    fn the_acquiring_kernel_function_skips_the_lock_code() {
        let kernel = [
            "finish_task_switch.isra.0",
            "__schedule",
            "schedule",
            "schedule_preempt_disabled",
            "rwsem_down_write_slowpath",
            "down_write_killable",
            "vm_mmap_pgoff",
            "do_syscall_64",
        ];
        assert_eq!(acquired_in(kernel), Some("vm_mmap_pgoff"));
        let spin = [
            "native_queued_spin_lock_slowpath",
            "_raw_spin_lock",
            "lockref_get",
        ];
        assert_eq!(acquired_in(spin), Some("lockref_get"));
        assert_eq!(acquired_in(["_raw_spin_lock"]), None);
    }
}
