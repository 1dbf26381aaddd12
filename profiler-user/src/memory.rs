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

/// Drops this process's resident pages of `bytes`, a part of the binary
/// read once (the embedded eBPF object, parsed at load): they count in
/// the resident set for as long as they stay mapped, and a later read
/// faults them in again from the file. Only whole pages inside `bytes`
/// are dropped.
///
/// # Safety
///
/// `bytes` must lie in a private read-only file mapping (the binary's
/// read-only data, as `include_bytes!` places it): in anonymous memory,
/// `MADV_DONTNEED` would zero the pages.
pub(crate) unsafe fn release_file_pages(bytes: &'static [u8]) {
    // SAFETY: sysconf takes no pointers.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as usize,
        _ => return,
    };
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) is whole pages of a `'static` slice in a
    // private read-only file mapping (the caller's promise); MADV_DONTNEED on such a
    // mapping drops the pages from this process only, and the next read
    // of them maps the file's unchanged contents again, so the slice
    // reads the same bytes afterwards.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if rc != 0 {
        log::debug!(
            "madvise(MADV_DONTNEED) of {} KiB of the binary: {}",
            (end - start) >> 10,
            std::io::Error::last_os_error()
        );
    }
}
