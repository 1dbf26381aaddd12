//! Offsets of kernel struct fields, read from the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), for the eBPF programs, which have no CO-RE.
//!
//! Pure: [`field_offset`] parses BTF bytes. Why not a crate: aya-obj parses
//! BTF but keeps struct members crate-private, and `btf-rs` is
//! LGPL-2.1 (hostprof is MIT OR Apache-2.0). What is needed is small: walk
//! the type section once, find a struct by name, and sum member offsets
//! down through anonymous structs and unions.

use profiler_common::FileOffsets;

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why an offset could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelBtfError {
    /// The kernel's BTF could not be read.
    #[error("{VMLINUX_BTF}: {0}")]
    Unreadable(String),
    /// The bytes are not BTF.
    #[error("not BTF data: {0}")]
    Malformed(&'static str),
    /// No struct of that name.
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    /// The struct has no such field (the kernel renamed it).
    #[error("struct {strukt} in the kernel's BTF has no field {field}")]
    NoField {
        /// The struct.
        strukt: String,
        /// The field.
        field: String,
    },
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// One type of the type section.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    /// Offset of the kind-specific data after the common header.
    extra: usize,
}

/// A parsed BTF blob: its types (by id - 1) and strings.
pub struct Btf<'a> {
    types_data: &'a [u8],
    strings: &'a [u8],
    types: Vec<Type>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Parses the header and indexes the type section (little-endian BTF,
    /// as on every architecture hostprof runs on).
    pub fn parse(data: &'a [u8]) -> Result<Self, KernelBtfError> {
        let bad = KernelBtfError::Malformed;
        let magic = u16::from_le_bytes(
            data.get(0..2)
                .ok_or(bad("short header"))?
                .try_into()
                .unwrap(),
        );
        if magic != MAGIC {
            return Err(bad("bad magic"));
        }
        let field = |at| {
            u32_at(data, at)
                .map(|v| v as usize)
                .ok_or(bad("short header"))
        };
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(4)?, field(8)?, field(12)?, field(16)?, field(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(bad("section overflows"))?;
            let end = start.checked_add(len).ok_or(bad("section overflows"))?;
            data.get(start..end).ok_or(bad("section past the end"))
        };
        let types_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut types = Vec::new();
        let mut at = 0;
        while at < types_data.len() {
            let (Some(name_off), Some(info), Some(size_or_type)) = (
                u32_at(types_data, at),
                u32_at(types_data, at + 4),
                u32_at(types_data, at + 8),
            ) else {
                return Err(bad("truncated type"));
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = match kind {
                1 | 14 | 17 => 4,             // int, var, decl tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                6 | 13 => 8 * vlen,           // enum, func proto
                2 | 7..=12 | 16 | 18 => 0,    // ptr, fwd, typedef, cv, func, float, type tag
                _ => return Err(bad("unknown type kind")),
            };
            types.push(Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type,
                extra: at + 12,
            });
            at += 12 + extra;
        }
        Ok(Self {
            types_data,
            strings,
            types,
        })
    }

    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    fn type_of(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The byte offset of `field` in `struct strukt`, looking through
    /// anonymous struct and union members.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Result<u32, KernelBtfError> {
        let ty = self
            .types
            .iter()
            .find(|t| {
                t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name_off) == strukt.as_bytes()
            })
            .ok_or_else(|| KernelBtfError::NoStruct(strukt.into()))?;
        self.member_bits(ty, field.as_bytes(), 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| KernelBtfError::NoField {
                strukt: strukt.into(),
                field: field.into(),
            })
    }

    /// Bit offset of `field` in the struct or union `ty`; `depth` bounds
    /// the descent through anonymous members.
    fn member_bits(&self, ty: &Type, field: &[u8], depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for i in 0..ty.vlen {
            let at = ty.extra + 12 * i;
            let name_off = u32_at(self.types_data, at)?;
            let member_type = u32_at(self.types_data, at + 4)?;
            let raw_offset = u32_at(self.types_data, at + 8)?;
            let bits = if ty.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            let name = self.name(name_off);
            if name == field {
                return Some(bits);
            }
            if name.is_empty() {
                if let Some(inner) = self.resolve(member_type) {
                    if let Some(found) = self.member_bits(inner, field, depth + 1) {
                        return Some(bits + found);
                    }
                }
            }
        }
        None
    }

    /// The struct or union `id` names, through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..16 {
            let ty = self.type_of(id)?;
            match ty.kind {
                KIND_STRUCT | KIND_UNION => return Some(ty),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return None,
            }
        }
        None
    }
}

/// The offsets the kernel programs read, from one parse of the running
/// kernel's BTF; each is an error of its own when the kernel lacks it.
#[derive(Debug)]
pub struct KernelOffsets {
    /// What the files program reads.
    pub files: Result<FileOffsets, KernelBtfError>,
    /// `task_struct.thread.fsbase`, a task's thread pointer.
    pub task_fsbase: Result<u32, KernelBtfError>,
    /// `task_struct.tgid`, a task's process id.
    pub task_tgid: Result<u32, KernelBtfError>,
    /// `task_struct.mm`, a task's address space.
    pub task_mm: Result<u32, KernelBtfError>,
    /// Where a task's leader, start time and name are.
    pub leader: Result<LeaderOffsets, KernelBtfError>,
}

/// The `task_struct` fields a new process is announced with (see
/// `profiler_common::Config::task_group_leader`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderOffsets {
    /// `task_struct.group_leader`.
    pub group_leader: u32,
    /// `task_struct.start_boottime`.
    pub start_boottime: u32,
    /// `task_struct.comm`.
    pub comm: u32,
}

/// The running kernel's BTF as the kernel gives it, read once for both
/// its readers (these offsets, and aya's attaching of BTF tracepoints):
/// 5.4 MiB on Linux 6.18.
pub fn read_vmlinux() -> Result<Vec<u8>, KernelBtfError> {
    std::fs::read(VMLINUX_BTF).map_err(|err| KernelBtfError::Unreadable(err.to_string()))
}

/// [`KernelOffsets`] of the running kernel.
pub fn running_offsets() -> Result<KernelOffsets, KernelBtfError> {
    offsets(&read_vmlinux()?)
}

/// [`KernelOffsets`] from kernel BTF `data` (see [`read_vmlinux`]).
pub fn offsets(data: &[u8]) -> Result<KernelOffsets, KernelBtfError> {
    let btf = Btf::parse(data)?;
    Ok(KernelOffsets {
        files: file_offsets(&btf),
        task_fsbase: task_fsbase(&btf),
        task_tgid: btf.field_offset("task_struct", "tgid"),
        task_mm: btf.field_offset("task_struct", "mm"),
        leader: leader_offsets(&btf),
    })
}

/// The fields a new process is announced with, from the kernel's BTF.
pub fn leader_offsets(btf: &Btf<'_>) -> Result<LeaderOffsets, KernelBtfError> {
    Ok(LeaderOffsets {
        group_leader: btf.field_offset("task_struct", "group_leader")?,
        start_boottime: btf.field_offset("task_struct", "start_boottime")?,
        comm: btf.field_offset("task_struct", "comm")?,
    })
}

/// The offsets the files program reads, from the running kernel's BTF.
pub fn running_file_offsets() -> Result<FileOffsets, KernelBtfError> {
    running_offsets()?.files
}

/// Offset of `task_struct.thread.fsbase` (x86-64: the thread pointer the
/// TLS of user threads hangs from).
pub fn task_fsbase(btf: &Btf<'_>) -> Result<u32, KernelBtfError> {
    Ok(btf.field_offset("task_struct", "thread")? + btf.field_offset("thread_struct", "fsbase")?)
}

/// The offsets the files program reads (see `profiler_common::FileOffsets`).
pub fn file_offsets(btf: &Btf<'_>) -> Result<FileOffsets, KernelBtfError> {
    Ok(FileOffsets {
        vma_start: btf.field_offset("vm_area_struct", "vm_start")?,
        vma_end: btf.field_offset("vm_area_struct", "vm_end")?,
        vma_pgoff: btf.field_offset("vm_area_struct", "vm_pgoff")?,
        vma_file: btf.field_offset("vm_area_struct", "vm_file")?,
        file_inode: btf.field_offset("file", "f_inode")?,
        inode_ino: btf.field_offset("inode", "i_ino")?,
        inode_sb: btf.field_offset("inode", "i_sb")?,
        sb_dev: btf.field_offset("super_block", "s_dev")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct outer { int a; union { long b; struct { int c; int d; }; }; }`
    /// (a: 0, b: 8, c: 8, d: 12), built by hand.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0d\0int\0long\0";
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[name("int"), 1 << 24, 4, 32]);
        // 2: long (8 bytes)
        push(&[name("long"), 1 << 24, 8, 64]);
        // 3: anonymous struct { int c; int d; }
        push(&[0, (KIND_STRUCT << 24) | 2, 8]);
        push(&[name("c"), 1, 0, name("d"), 1, 32]);
        // 4: anonymous union { long b; struct 3; }
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[name("b"), 2, 0, 0, 3, 0]);
        // 5: typedef of the union, to look through.
        push(&[0, KIND_TYPEDEF << 24, 4]);
        // 6: struct outer { int a; <typedef 5> at bit 64; }
        push(&[name("outer"), (KIND_STRUCT << 24) | 2, 16]);
        push(&[name("a"), 1, 0, 0, 5, 64]);
        let mut data = Vec::new();
        for w in [
            0xeb9f_u32 | (1 << 16),
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        data
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let data = blob();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.field_offset("outer", "a"), Ok(0));
        assert_eq!(btf.field_offset("outer", "b"), Ok(8));
        assert_eq!(btf.field_offset("outer", "c"), Ok(8));
        assert_eq!(btf.field_offset("outer", "d"), Ok(12));
        assert!(matches!(
            btf.field_offset("outer", "e"),
            Err(KernelBtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.field_offset("inner", "a"),
            Err(KernelBtfError::NoStruct(_))
        ));
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0u8; 24]).is_err());
        let mut data = blob();
        data.truncate(40);
        assert!(Btf::parse(&data).is_err(), "sections past the end");
        let mut data = blob();
        data[24 + 7] = 0x7f; // first type's kind: 31, unknown
        assert!(Btf::parse(&data).is_err());
    }

    /// The running kernel's offsets agree with what the kernel's own
    /// layout implies (vm_start first, vm_end after it).
    #[test]
    fn reads_the_running_kernels_offsets() {
        let Ok(data) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("no {VMLINUX_BTF}: nothing to check");
            return;
        };
        let offsets = file_offsets(&Btf::parse(&data).unwrap()).unwrap();
        assert_eq!(offsets.vma_start, 0);
        assert_eq!(offsets.vma_end, 8);
        assert!(offsets.vma_pgoff > 8 && offsets.vma_file > 8);
        assert!(offsets.inode_ino > 0 && offsets.inode_sb > 0 && offsets.sb_dev > 0);
        // x86-64 keeps `thread` last in task_struct (kilobytes in) and
        // fsbase 8-aligned in it.
        let fsbase = task_fsbase(&Btf::parse(&data).unwrap()).unwrap();
        assert!(fsbase > 1024 && fsbase.is_multiple_of(8), "{fsbase}");
        let leader = leader_offsets(&Btf::parse(&data).unwrap()).unwrap();
        assert!(leader.group_leader.is_multiple_of(8), "{leader:?}");
        assert!(leader.start_boottime.is_multiple_of(8), "{leader:?}");
        assert!(leader.comm > 0 && leader.comm < fsbase, "{leader:?}");
    }
}
