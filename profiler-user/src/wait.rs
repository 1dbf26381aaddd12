//! Why an off-CPU thread waited, from the kernel frames where it blocked:
//! the `wait.class` label (`futex`, `io`, `network`, `sleep`, `epoll`,
//! `pipe`, `runqueue`, or `other`), so a user can ask "what waits on
//! disk" with `pprof -tagfocus=wait.class=io` or an OTLP attribute filter.
//!
//! Pure: a function of the symbolized kernel stack and the thread state.
//! A preempted thread waited for a CPU (`runqueue`) whatever its stack;
//! otherwise the innermost frame that names a kind of wait decides,
//! scanning out from the scheduler (whose own frames name nothing, except
//! `io_schedule`). `epoll` stands for every readiness wait: `epoll_wait`,
//! `poll` and `select`.

/// The label key.
pub const WAIT_CLASS: &str = "wait.class";

/// (class, function-name prefixes), tried in this order on each frame.
const RULES: &[(&str, &[&str])] = &[
    (
        "pipe",
        &[
            "pipe_read",
            "pipe_write",
            "anon_pipe_read",
            "anon_pipe_write",
            "pipe_wait",
            "wait_for_partner",
        ],
    ),
    ("futex", &["futex_", "__futex_"]),
    (
        "epoll",
        &[
            "ep_poll",
            "do_epoll_wait",
            "do_select",
            "core_sys_select",
            "do_sys_poll",
            "do_poll",
        ],
    ),
    (
        "sleep",
        &[
            "do_nanosleep",
            "hrtimer_nanosleep",
            "common_nsleep",
            "msleep",
            "usleep_range",
            "__x64_sys_pause",
        ],
    ),
    (
        "network",
        &[
            "tcp_",
            "udp_",
            "unix_",
            "inet_",
            "sk_wait",
            "sk_stream_wait",
            "__skb_wait",
            "__skb_recv",
            "skb_recv",
            "sock_",
            "__sys_recv",
            "__sys_send",
            "__sys_accept",
            "__sys_connect",
        ],
    ),
    (
        "io",
        &[
            "io_schedule",
            "folio_wait",
            "__folio_lock",
            "wait_on_page",
            "__lock_page",
            "bit_wait_io",
            "submit_bio",
            "blk_",
            "jbd2",
            "__wait_on_buffer",
            "filemap_",
            "io_cqring_wait",
            "ext4_",
            "xfs_",
            "btrfs_",
            "nfs_",
        ],
    ),
];

/// The wait class of a sample whose thread left the CPU in state
/// `thread_state` (the `thread.state` label) and blocked in
/// `kernel_frames` (function names, innermost first).
pub fn wait_class<'a>(
    thread_state: Option<&str>,
    kernel_frames: impl IntoIterator<Item = &'a str>,
) -> &'static str {
    if thread_state == Some("preempted") {
        return "runqueue";
    }
    for frame in kernel_frames {
        // `finish_task_switch.isra.0`, `foo.cold`: the function is `foo`.
        let name = frame.split('.').next().unwrap_or(frame);
        for (class, prefixes) in RULES {
            if prefixes.iter().any(|p| name.starts_with(p)) {
                return class;
            }
        }
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED: [&str; 3] = ["finish_task_switch.isra.0", "__schedule", "schedule"];

    fn class(state: &str, frames: &[&str]) -> &'static str {
        let stack: Vec<&str> = SCHED.iter().chain(frames).copied().collect();
        wait_class(Some(state), stack)
    }

    #[test]
    fn blocking_paths_are_classified_by_their_innermost_named_frame() {
        let syscall = ["do_syscall_64", "entry_SYSCALL_64_after_hwframe"];
        let with = |frames: &[&'static str]| -> Vec<&'static str> {
            frames.iter().chain(&syscall).copied().collect()
        };
        assert_eq!(
            class(
                "sleeping",
                &with(&["pipe_read", "vfs_read", "ksys_read", "__x64_sys_read"])
            ),
            "pipe"
        );
        assert_eq!(
            class(
                "sleeping",
                &with(&[
                    "futex_wait_queue",
                    "__futex_wait",
                    "futex_wait",
                    "do_futex",
                    "__x64_sys_futex"
                ])
            ),
            "futex"
        );
        assert_eq!(
            class(
                "sleeping",
                &with(&[
                    "schedule_hrtimeout_range_clock",
                    "do_nanosleep",
                    "hrtimer_nanosleep",
                    "__x64_sys_clock_nanosleep"
                ])
            ),
            "sleep"
        );
        assert_eq!(
            class(
                "sleeping",
                &with(&[
                    "schedule_hrtimeout_range_clock",
                    "ep_poll",
                    "do_epoll_wait",
                    "__x64_sys_epoll_wait"
                ])
            ),
            "epoll"
        );
        assert_eq!(
            class(
                "sleeping",
                &with(&[
                    "schedule_timeout",
                    "wait_woken",
                    "sk_wait_data",
                    "tcp_recvmsg_locked",
                    "tcp_recvmsg",
                    "inet_recvmsg",
                    "sock_recvmsg"
                ])
            ),
            "network"
        );
        assert_eq!(
            class(
                "disk",
                &with(&[
                    "io_schedule",
                    "folio_wait_bit_common",
                    "filemap_read",
                    "vfs_read"
                ])
            ),
            "io"
        );
    }

    #[test]
    fn anonymous_pipes_of_newer_kernels_are_pipes() {
        // Linux 6.14+ names the read of an anonymous pipe anon_pipe_read.
        let frames = ["anon_pipe_read", "vfs_read", "ksys_read"];
        assert_eq!(class("sleeping", &frames), "pipe");
    }

    #[test]
    fn a_preempted_thread_waits_on_the_run_queue_whatever_its_stack() {
        assert_eq!(
            class("preempted", &["irqentry_exit_to_user_mode", "pipe_read"]),
            "runqueue"
        );
    }

    #[test]
    fn unknown_or_missing_stacks_are_other() {
        assert_eq!(class("sleeping", &["worker_thread", "kthread"]), "other");
        assert_eq!(wait_class(None, []), "other");
        assert_eq!(
            wait_class(Some("sleeping"), ["[kernel.kallsyms]+0x1"]),
            "other"
        );
    }
}
