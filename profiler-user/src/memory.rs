//! The process's own memory.

/// Hands memory the allocator holds but no longer uses back to the kernel,
/// so the resident size after a burst (BTF parsing, symbolization) falls
/// back to what is in use; glibc keeps it otherwise.
pub(crate) fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
