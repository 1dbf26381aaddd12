//! The `bpf(2)` calls aya 0.14 has no API for: batched map updates (the
//! unwind tables) and batched lookup-and-delete (the drain), a delete by
//! descriptor, and a test run of a program held by descriptor only (aya's
//! needs the program inside its `Ebpf`, which the sampler keeps, while
//! the symbolizer runs `kernel_names`). Every raw `bpf(2)` syscall of the
//! sampler is here.
//!
//! Hand-written because aya has no batch API, and libbpf-rs would bring in
//! libbpf's C build for these few calls. The batch calls exist since Linux
//! 5.6 (hostprof needs 5.8).

use std::io;
use std::marker::PhantomData;
use std::mem::{size_of, size_of_val, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::MapData;
use aya::Pod;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr`'s element member (lookup, update, delete).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr`'s `test` member (`BPF_PROG_TEST_RUN`).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Entries per `BPF_MAP_LOOKUP_AND_DELETE_BATCH` call at first (grown
/// when a hash bucket holds more).
pub(super) const TAKE_BATCH: usize = 256;

/// The `bpf(2)` command `cmd` with `attr`.
fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a live `union bpf_attr` member for `cmd`, and the
    // pointers it holds point at live arrays of the map's key and value
    // sizes (see the callers).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `values[i]` at `keys[i]` of the map `fd` in one
/// `BPF_MAP_UPDATE_BATCH` call (`V` the map's `repr(C)` value type, the
/// keys `u32`).
pub(super) fn update_batch<V>(fd: i32, name: &str, keys: &[u32], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|err| {
        let first = keys.first().copied().unwrap_or(0);
        io::Error::new(err.kind(), format!("writing {name}[{first}..]: {err}"))
    })
}

/// Deletes `key` from the hash map `fd` (absent is fine).
pub(super) fn delete(fd: i32, key: u32) {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        pad: 0,
        key: &key as *const u32 as u64,
        value: 0,
        flags: 0,
    };
    let _ = bpf(BPF_MAP_DELETE_ELEM, &mut attr);
}

/// Runs the raw tracepoint program `program` once, on this CPU, with
/// `args` as its arguments (`BPF_PROG_TEST_RUN`, Linux 5.10+ for raw
/// tracepoints); returns what it returned.
pub(super) fn run_raw_tracepoint(program: BorrowedFd<'_>, args: &[u64]) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        ctx_size_in: size_of_val(args) as u32,
        ctx_in: args.as_ptr() as u64,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

/// How many `V` one entry's value is: 1, or for a per-CPU map one per
/// possible CPU (each rounded up to 8 bytes by the kernel, which `V` must
/// already be). `None` when `V` does not fit the map's value size.
fn value_slots<V>(value_size: u32, per_cpu: bool, cpus: usize) -> Option<usize> {
    let value_size = value_size as usize;
    if per_cpu {
        (size_of::<V>() == value_size.next_multiple_of(8)).then_some(cpus)
    } else {
        (size_of::<V>() == value_size).then_some(1)
    }
}

/// How a hash map's entries are laid out for [`take_all`], checked once
/// when the map is opened: keys `K`, and values of `slots` `V` (one, or
/// one per possible CPU for a per-CPU map).
pub(super) struct Layout<K, V> {
    slots: usize,
    types: PhantomData<fn(&K, &V)>,
}

impl<K, V> Clone for Layout<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Layout<K, V> {}

impl<K: Pod, V: Pod> Layout<K, V> {
    /// The layout of `map` (`name` for errors; per-CPU values when
    /// `per_cpu`): an error of kind `InvalidData` when its key or value
    /// size does not fit `K` and `V` (others: the map or the CPUs could
    /// not be read).
    pub(super) fn of(map: &MapData, name: &str, per_cpu: bool) -> io::Result<Self> {
        let info = map
            .info()
            .map_err(|err| io::Error::other(format!("reading {name}'s info: {err}")))?;
        let cpus = if per_cpu {
            aya::util::nr_cpus().map_err(|(_, err)| {
                io::Error::new(err.kind(), format!("counting the CPUs for {name}: {err}"))
            })?
        } else {
            1
        };
        let slots = value_slots::<V>(info.value_size(), per_cpu, cpus)
            .filter(|_| info.key_size() as usize == size_of::<K>())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                    "{name} has {}-byte keys and {}-byte values, not the {} and {} bytes expected",
                    info.key_size(),
                    info.value_size(),
                    size_of::<K>(),
                    size_of::<V>()
                ),
                )
            })?;
        Ok(Self {
            slots,
            types: PhantomData,
        })
    }
}

/// Reads and deletes every entry of the hash map `map` (`name` for
/// errors), laid out as `layout` says, in `BPF_MAP_LOOKUP_AND_DELETE_BATCH`
/// calls, a few hundred entries each: one syscall where walking the map
/// took three an entry (next key, lookup, delete). `each` gets every
/// entry; returns how many.
///
/// For a map no program writes any more (a drained set): entries added
/// meanwhile may or may not be taken.
pub(super) fn take_all<K: Pod, V: Pod>(
    map: &MapData,
    name: &str,
    layout: Layout<K, V>,
    mut each: impl FnMut(&K, &[V]),
) -> io::Result<usize> {
    let context =
        |err: io::Error, what: &str| io::Error::new(err.kind(), format!("{what} {name}: {err}"));
    let slots = layout.slots;
    let fd = map.fd().as_fd().as_raw_fd();
    let mut batch = TAKE_BATCH;
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // The kernel's position between calls (a bucket index for hash maps);
    // none on the first call.
    let mut position: u64 = 0;
    let mut first = true;
    let mut taken = 0;
    loop {
        keys.resize_with(batch, MaybeUninit::uninit);
        values.resize_with(batch * slots, MaybeUninit::uninit);
        let mut next: u64 = 0;
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &position as *const u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        let done = match bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) {
            Ok(()) => false,
            // The last batch (possibly empty).
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than a batch: a larger one.
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                batch *= 2;
                continue;
            }
            Err(err) => return Err(context(err, "reading and deleting")),
        };
        let count = (attr.count as usize).min(batch);
        for (i, key) in keys[..count].iter().enumerate() {
            // SAFETY: the kernel wrote `count` keys of `size_of::<K>()`
            // bytes and `count * slots` values of `size_of::<V>()` bytes
            // (`layout` checked them against the map's info); `K` and `V` are
            // `Pod`: any bytes are a valid value.
            let (key, value) = unsafe {
                (
                    key.assume_init_ref(),
                    std::slice::from_raw_parts(values.as_ptr().add(i * slots).cast::<V>(), slots),
                )
            };
            each(key, value);
        }
        taken += count;
        if done {
            return Ok(taken);
        }
        position = next;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_one_slot_or_one_per_cpu_rounded_to_8_bytes() {
        assert_eq!(value_slots::<u64>(8, true, 4), Some(4));
        assert_eq!(value_slots::<u64>(4, true, 4), Some(4), "rounded up to 8");
        assert_eq!(value_slots::<u32>(4, true, 4), None, "V must be rounded");
        assert_eq!(value_slots::<[u64; 127]>(1016, false, 4), Some(1));
        assert_eq!(value_slots::<u64>(16, false, 4), None);
    }
}
