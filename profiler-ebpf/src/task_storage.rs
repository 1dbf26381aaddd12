//! Task-local storage maps (aya-ebpf has no type for them): state kept
//! with a thread and freed with it, never per CPU.

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, BPF_F_NO_PREALLOC},
    helpers::generated::bpf_task_storage_get,
};

/// `BPF_LOCAL_STORAGE_GET_F_CREATE`.
const STORAGE_CREATE: u64 = 1;

/// A task-local storage map definition, as libbpf's BTF map definitions
/// spell it (aya-ebpf has no task storage type): each field's pointee
/// type encodes one attribute, read by the loader from the object's BTF.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader reads from BTF, never
// dereferenced; the kernel owns the storage.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The value of `task` (a trusted `task_struct` pointer: a `tp_btf`
    /// argument, or `bpf_get_current_task_btf()`), created zeroed with `create`; null when it has none.
    #[inline(always)]
    pub fn get(&self, task: *mut core::ffi::c_void, create: bool) -> *mut T {
        let flags = if create { STORAGE_CREATE } else { 0 };
        // SAFETY: the map is this task storage; `task` is a task pointer
        // the verifier checks; a null value pointer asks for zeroes.
        unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task.cast(),
                core::ptr::null_mut(),
                flags,
            )
        }
        .cast()
    }
}
