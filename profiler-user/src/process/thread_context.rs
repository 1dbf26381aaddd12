//! OpenTelemetry context a process publishes about itself: the thread
//! context (OTEP 4947), a TLS pointer `otel_thread_ctx_v1` to a record of
//! the span a thread runs, and the process context (OTEP 4719), a named
//! mapping whose protobuf payload says how to read those records
//! (`threadlocal.schema_version`) and names their attribute keys
//! (`threadlocal.attribute_key_map`).
//!
//! Pure, like the maps parser: the caller reads files and process memory,
//! this module makes sense of what it read. Reading a thread's record:
//! 1. [`find_tls_symbol`] on each mapped ELF file: does it define the
//!    variable, and how does its code reach it ([`TlsAccess`])?
//! 2. [`locate`], with the module's load bias and a reader of the
//!    process's memory: where the variable is for any thread of the
//!    process ([`TlsLocation`]), for the kernel side to read at sample time.
//! 3. The process context: [`is_process_context_mapping`] picks its
//!    mapping out of `/proc/PID/maps`, [`parse_header`] reads the mapping's
//!    first 32 bytes, [`decode_process_context`] the payload they point
//!    at; [`decode_record_attributes`] then names a record's attributes.
//!
//! x86-64 only: TLS variant II, the static TLS blocks lie below the thread
//! pointer (`fsbase`), so static offsets are negative.

use hostprof_proto::otlp::common::v1::{any_value, KeyValue};
use hostprof_proto::otlp::resource::v1::Resource;
use object::elf;
use object::read::elf::{
    Dyn as _, FileHeader as _, ProgramHeader as _, Rela as _, SectionHeader as _, Sym as _,
};
use object::read::SectionIndex;
use object::Endianness;
use prost::Message as _;

/// The thread-context variable: a pointer to the thread's record.
pub const SYMBOL: &str = "otel_thread_ctx_v1";

/// Size of the process-context header.
pub const HEADER_SIZE: usize = 32;

/// The largest process-context payload read, in bytes.
pub const MAX_PAYLOAD_SIZE: u32 = 65536;

/// The `threadlocal.schema_version` values whose records this module reads:
/// every writer publishes the first so far, the spec renames it the second.
pub const SUPPORTED_SCHEMAS: [&str; 2] = ["tlsdesc_v1_dev", "tls_v1"];

/// Keys of the attribute key map used at most: a record's key is one byte.
const MAX_KEYS: usize = 256;

/// The highest module id taken for one when telling a TLS descriptor's
/// `tls_index` pointer from a static offset.
const MAX_MODULE_ID: u64 = 4096;

const SIGNATURE: &[u8; 8] = b"OTEL_CTX";
const VERSION: u32 = 2;
const SCHEMA_VERSION_KEY: &str = "threadlocal.schema_version";
const KEY_MAP_KEY: &str = "threadlocal.attribute_key_map";

/// Why thread or process context could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ThreadContextError {
    /// The file is not an ELF file the parser can read.
    #[error("malformed ELF file: {0}")]
    Elf(#[from] object::read::Error),
    /// The dynamic symbol is not a thread-local variable.
    #[error(
        "otel_thread_ctx_v1 is in .dynsym with symbol type {st_type}, not STT_TLS: \
         the writer must declare it thread-local (`__thread`)"
    )]
    NotTls {
        /// Its `STT_*` type.
        st_type: u8,
    },
    /// The variable is not one pointer.
    #[error("otel_thread_ctx_v1 is {size} bytes, not 8: the spec makes it one pointer (`void *`)")]
    WrongSize {
        /// Its `st_size`.
        size: u64,
    },
    /// A TLS symbol without a TLS segment.
    #[error("the file exports otel_thread_ctx_v1 as TLS but has no PT_TLS segment")]
    NoTlsSegment,
    /// The TLS segment cannot hold the variable, or its alignment is not a
    /// power of two.
    #[error(
        "malformed PT_TLS segment (memsz {memsz:#x}, align {align:#x}) for otel_thread_ctx_v1 \
         at {offset:#x}"
    )]
    BadTlsSegment {
        /// `p_memsz`.
        memsz: u64,
        /// `p_align`.
        align: u64,
        /// The variable's offset in the segment (`st_value`).
        offset: u64,
    },
    /// Fewer bytes than a process-context header.
    #[error("process context header is {len} bytes, needs 32: read the whole header")]
    HeaderTooShort {
        /// Bytes given.
        len: usize,
    },
    /// The mapping does not hold a process context.
    #[error("the mapping does not start with the OTEL_CTX signature: not a process context")]
    BadSignature,
    /// A process-context version this module does not read.
    #[error("process context version {version}; hostprof reads version 2")]
    UnsupportedVersion {
        /// The header's version.
        version: u32,
    },
    /// The publisher is rewriting the context.
    #[error("the process context is being updated (published_at is 0): read it again")]
    BeingUpdated,
    /// A payload larger than any process context should be.
    #[error("process context payload of {size} bytes exceeds the 65536-byte limit")]
    PayloadTooLarge {
        /// The header's payload size.
        size: u32,
    },
    /// A payload size without a payload.
    #[error("the process context header has a payload size but a null payload pointer")]
    NullPayload,
    /// The payload is not a `ProcessContext` message.
    #[error("the process context payload is not a ProcessContext protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The process publishes no thread context.
    #[error(
        "the process context has no threadlocal.schema_version: the process publishes no \
         thread context (yet); read it again when its published_at changes"
    )]
    NoSchema,
    /// Records in a format this module does not read.
    #[error(
        "threadlocal.schema_version {version:?} is not one hostprof reads (tlsdesc_v1_dev, tls_v1)"
    )]
    UnsupportedSchema {
        /// The published schema version.
        version: String,
    },
    /// A `threadlocal.*` attribute given twice.
    #[error("the process context has {key} more than once")]
    DuplicateAttribute {
        /// The attribute's key.
        key: &'static str,
    },
    /// A `threadlocal.*` attribute of the wrong type.
    #[error("the process context's {key} is not {expected}")]
    BadAttribute {
        /// The attribute's key.
        key: &'static str,
        /// What it should be.
        expected: &'static str,
    },
}

/// What an ELF file says about the thread-context variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// The file does not define `otel_thread_ctx_v1` in `.dynsym` (it may
    /// import it). A file without section headers is reported so too.
    NotExported,
    /// The file defines it, but in a way this module cannot follow.
    Unsupported(&'static str),
    /// The file defines it, and its code reaches it like this.
    Found(TlsAccess),
}

/// How a module's code reaches its thread-local variable: the TLS access
/// model, from the relocation the module's code uses (or none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsAccess {
    /// TLS descriptor (`-mtls-dialect=gnu2`, the spec's recommendation): a
    /// `{resolver, argument}` pair the dynamic loader fills in.
    TlsDesc {
        /// Link-time address of the descriptor.
        desc_vaddr: u64,
    },
    /// Initial exec: a GOT slot holding the offset from the thread pointer.
    InitialExec {
        /// Link-time address of the GOT slot.
        got_vaddr: u64,
    },
    /// Traditional general dynamic: a GOT pair `{module id, offset in the
    /// module's block}` for `__tls_get_addr`.
    GeneralDynamic {
        /// Link-time address of the pair.
        got_vaddr: u64,
    },
    /// Local exec: the variable is in an executable's own TLS block, at an
    /// offset from the thread pointer fixed at link time.
    LocalExec {
        /// Offset of the variable from the thread pointer.
        tp_offset: i64,
    },
}

/// Where a process keeps the variable for each of its threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsLocation {
    /// In static TLS: at the thread pointer plus `tp_offset`.
    Static {
        /// Offset from the thread pointer (negative on x86-64).
        tp_offset: i64,
    },
    /// In dynamic TLS: at `dtv[module_id]`'s block plus `offset`.
    Dtv {
        /// The module's TLS module id (its DTV index).
        module_id: u64,
        /// Offset of the variable in the module's block.
        offset: u64,
    },
}

/// A dynamic relocation, as much of it as the classification needs.
#[derive(Clone, Copy, Debug)]
struct DynReloc {
    offset: u64,
    kind: u32,
    symbol: u32,
    addend: i64,
}

/// Whether the ELF file `data` defines `otel_thread_ctx_v1`, and how its
/// code accesses it.
///
/// The variable is looked up in `.dynsym` only (the spec's contract); it
/// must be an 8-byte TLS definition in a file with a `PT_TLS` segment. The
/// access model comes from the dynamic relocations (`.rela.dyn`, and
/// `.rela.plt` where lazy-binding linkers put TLS descriptors) naming it:
/// `TPOFF64` is initial exec, `TLSDESC` a descriptor, `DTPMOD64` general
/// dynamic, preferred in that order when a module uses several. Without
/// one, an executable (`ET_EXEC`, a `PT_INTERP`, or `DF_1_PIE` for a
/// static PIE) reaches it by local exec at an offset computed here; a
/// shared object without one is [`Discovery::Unsupported`].
///
/// `data` must be 8-byte aligned (as a read buffer or a mapping is), as
/// the ELF parser requires.
pub fn find_tls_symbol(data: &[u8]) -> Result<Discovery, ThreadContextError> {
    if data.get(..4) == Some(&elf::ELFMAG[..]) && data.get(4) == Some(&elf::ELFCLASS32) {
        return Ok(Discovery::Unsupported("a 32-bit ELF file"));
    }
    let header = elf::FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    let dynsym = sections.symbols(endian, data, elf::SHT_DYNSYM)?;
    let found = dynsym.enumerate().find(|(_, sym)| {
        !sym.is_undefined(endian)
            && dynsym
                .symbol_name(endian, sym)
                .is_ok_and(|name| name == SYMBOL.as_bytes())
    });
    let Some((index, sym)) = found else {
        return Ok(Discovery::NotExported);
    };
    if sym.st_type() != elf::STT_TLS {
        return Err(ThreadContextError::NotTls {
            st_type: sym.st_type(),
        });
    }
    let size = sym.st_size(endian);
    if size != 8 {
        return Err(ThreadContextError::WrongSize { size });
    }
    let segments = header.program_headers(endian, data)?;
    let Some(tls) = segments
        .iter()
        .find(|segment| segment.p_type(endian) == elf::PT_TLS)
    else {
        return Err(ThreadContextError::NoTlsSegment);
    };
    if header.e_machine(endian) != elf::EM_X86_64 {
        return Ok(Discovery::Unsupported("not an x86-64 file"));
    }
    let offset = sym.st_value(endian);
    let memsz = tls.p_memsz(endian);
    let align = tls.p_align(endian).max(1);
    let bad_segment = ThreadContextError::BadTlsSegment {
        memsz,
        align,
        offset,
    };
    if !align.is_power_of_two() || offset.checked_add(size).is_none_or(|end| end > memsz) {
        return Err(bad_segment);
    }

    let mut relocations = Vec::new();
    for section in sections.iter() {
        let Some((relas, link)) = section.rela(endian, data)? else {
            continue;
        };
        // Dynamic relocations are loaded and index .dynsym (or link no
        // table, 0); unloaded ones are --emit-relocs leftovers.
        let loaded = section.sh_flags(endian) & u64::from(elf::SHF_ALLOC) != 0;
        if loaded && (link == dynsym.section() || link == SectionIndex(0)) {
            relocations.extend(relas.iter().map(|rela| DynReloc {
                offset: rela.r_offset(endian),
                kind: rela.r_type(endian, false),
                symbol: rela.r_sym(endian, false),
                addend: rela.r_addend(endian),
            }));
        }
    }
    let symbol = u32::try_from(index.0).unwrap_or(u32::MAX);
    let file_word = |vaddr| file_u64(data, segments, endian, vaddr);
    if let Some(access) = access_from_relocations(&relocations, symbol, offset, file_word) {
        return Ok(Discovery::Found(access));
    }

    let interpreted = segments
        .iter()
        .any(|segment| segment.p_type(endian) == elf::PT_INTERP);
    let pie = match sections.dynamic(endian, data)? {
        Some((entries, _)) => entries.iter().any(|entry| {
            entry.tag(endian) == elf::DT_FLAGS_1
                && entry.d_val(endian) & u64::from(elf::DF_1_PIE) != 0
        }),
        None => false,
    };
    if header.e_type(endian) == elf::ET_EXEC || interpreted || pie {
        let vaddr = tls.p_vaddr(endian);
        return match local_exec_offset(offset, memsz, vaddr, align) {
            Some(tp_offset) => Ok(Discovery::Found(TlsAccess::LocalExec { tp_offset })),
            None => Err(bad_segment),
        };
    }
    Ok(Discovery::Unsupported(
        "a shared object with no TLS relocation for otel_thread_ctx_v1",
    ))
}

/// The access model named by the relocations: those naming the symbol
/// (dynsym index `symbol`) first, then those against symbol 0.
///
/// Symbol 0 is how a linker writes a TLS relocation for a variable it
/// knows is the module's own (protected visibility, `-Bsymbolic`, local
/// dynamic): the target is the module's TLS block plus the addend, or, for
/// `DTPMOD64`, plus the `DTPOFF64` word after it. Such a relocation
/// resolves exactly to the variable when that offset is the variable's
/// `st_value`, whichever variable the compiler meant it for, so that is
/// the test. (GNU ld and gold name exported variables even then; this
/// covers other linkers.)
fn access_from_relocations(
    relocations: &[DynReloc],
    symbol: u32,
    st_value: u64,
    file_word: impl Fn(u64) -> Option<u64>,
) -> Option<TlsAccess> {
    let named = |kind: u32| {
        relocations
            .iter()
            .find(|r| r.kind == kind && r.symbol == symbol)
            .map(|r| r.offset)
    };
    let at_offset = |kind: u32| {
        relocations
            .iter()
            .find(|r| r.kind == kind && r.symbol == 0 && u64::try_from(r.addend) == Ok(st_value))
            .map(|r| r.offset)
    };
    let module_pair = || {
        relocations
            .iter()
            .filter(|r| r.kind == elf::R_X86_64_DTPMOD64 && r.symbol == 0)
            .find(|r| {
                let next = r.offset.wrapping_add(8);
                let dtpoff = match relocations.iter().find(|o| o.offset == next) {
                    Some(o) if o.kind == elf::R_X86_64_DTPOFF64 && o.symbol == 0 => {
                        u64::try_from(o.addend).ok()
                    }
                    Some(_) => None,
                    None => file_word(next),
                };
                dtpoff == Some(st_value)
            })
            .map(|r| r.offset)
    };
    named(elf::R_X86_64_TPOFF64)
        .map(|got_vaddr| TlsAccess::InitialExec { got_vaddr })
        .or_else(|| {
            named(elf::R_X86_64_TLSDESC).map(|desc_vaddr| TlsAccess::TlsDesc { desc_vaddr })
        })
        .or_else(|| {
            named(elf::R_X86_64_DTPMOD64).map(|got_vaddr| TlsAccess::GeneralDynamic { got_vaddr })
        })
        .or_else(|| {
            at_offset(elf::R_X86_64_TPOFF64).map(|got_vaddr| TlsAccess::InitialExec { got_vaddr })
        })
        .or_else(|| {
            at_offset(elf::R_X86_64_TLSDESC).map(|desc_vaddr| TlsAccess::TlsDesc { desc_vaddr })
        })
        .or_else(|| module_pair().map(|got_vaddr| TlsAccess::GeneralDynamic { got_vaddr }))
}

/// The thread-pointer offset of a variable at `st_value` in an
/// executable's TLS segment (`p_memsz`, `p_vaddr`, `p_align`).
///
/// The executable's block is the first below the thread pointer and ends
/// at it: glibc's `_dl_determine_tlsoffset` (TLS_TCB_AT_TP) gives module 1
/// `l_tls_offset = roundup(memsz - firstbyte, align) + firstbyte`, with
/// `firstbyte = -(p_vaddr & (align - 1)) & (align - 1)`, so that the block
/// keeps the segment's misalignment; musl and lld compute the same. That
/// is the smallest size at least `memsz` congruent to `-p_vaddr` modulo
/// the alignment, written below as `roundup(memsz + mis, align) - mis`.
/// For the aligned segments linkers emit (`mis` = 0) it is the usual
/// `roundup(memsz, align)`, which is also what glibc's static startup
/// (`__libc_setup_tls`) uses.
fn local_exec_offset(st_value: u64, memsz: u64, vaddr: u64, align: u64) -> Option<i64> {
    let misalign = vaddr & (align - 1);
    let block = memsz
        .checked_add(misalign)?
        .checked_next_multiple_of(align)?
        - misalign;
    i64::try_from(st_value)
        .ok()?
        .checked_sub(i64::try_from(block).ok()?)
}

/// The 8 bytes the file holds for link-time address `vaddr`, if a loaded
/// segment has them in the file.
fn file_u64(
    data: &[u8],
    segments: &[elf::ProgramHeader64<Endianness>],
    endian: Endianness,
    vaddr: u64,
) -> Option<u64> {
    segments
        .iter()
        .filter(|segment| segment.p_type(endian) == elf::PT_LOAD)
        .find_map(|segment| {
            let within = vaddr.checked_sub(segment.p_vaddr(endian))?;
            if within.checked_add(8)? > segment.p_filesz(endian) {
                return None;
            }
            let start = usize::try_from(segment.p_offset(endian).checked_add(within)?).ok()?;
            let bytes: [u8; 8] = data.get(start..start.checked_add(8)?)?.try_into().ok()?;
            Some(match endian {
                Endianness::Little => u64::from_le_bytes(bytes),
                Endianness::Big => u64::from_be_bytes(bytes),
            })
        })
}

/// Where the variable reached by `access` lives in a process whose module
/// is loaded at `bias` (runtime address minus link-time address), reading
/// the process's 8-byte words through `read_u64`. `None` while the
/// dynamic loader has not filled in the GOT or descriptor, or when what it
/// wrote makes no sense.
///
/// A TLS descriptor's argument is, for a module in static TLS, the
/// variable's offset from the thread pointer, and otherwise a pointer to
/// a `tls_index {module id, offset}` (glibc's `tlsdesc_dynamic_arg`,
/// musl's pair): an argument that points at a plausible module id
/// (1 to 4096) followed by a readable word is the latter. Static offsets
/// are negative on x86-64; a non-negative one (a lazy descriptor's
/// argument points at its relocation) is not used.
pub fn locate(
    access: &TlsAccess,
    bias: u64,
    mut read_u64: impl FnMut(u64) -> Option<u64>,
) -> Option<TlsLocation> {
    match *access {
        TlsAccess::LocalExec { tp_offset } => Some(TlsLocation::Static { tp_offset }),
        TlsAccess::InitialExec { got_vaddr } => {
            static_offset(read_u64(bias.wrapping_add(got_vaddr))?)
        }
        TlsAccess::GeneralDynamic { got_vaddr } => {
            let got = bias.wrapping_add(got_vaddr);
            let module_id = read_u64(got).filter(|&id| id != 0)?;
            let offset = read_u64(got.wrapping_add(8))?;
            Some(TlsLocation::Dtv { module_id, offset })
        }
        TlsAccess::TlsDesc { desc_vaddr } => {
            let desc = bias.wrapping_add(desc_vaddr);
            if read_u64(desc)? == 0 {
                return None;
            }
            let argument = read_u64(desc.wrapping_add(8))?;
            let module_id = read_u64(argument).filter(|id| (1..=MAX_MODULE_ID).contains(id));
            let dynamic = module_id.and_then(|module_id| {
                let offset = read_u64(argument.wrapping_add(8))?;
                Some(TlsLocation::Dtv { module_id, offset })
            });
            dynamic.or_else(|| static_offset(argument))
        }
    }
}

/// The load bias (runtime address minus link-time address) of the ELF
/// file `data` whose executable mapping starts at `start` with file
/// offset `file_offset`: that of the executable `PT_LOAD` segment the
/// mapping's page-aligned offset belongs to (lld and mold pack segments
/// so that one page may hold the end of the previous one too), else of
/// any segment holding the offset. `None` when none does.
pub fn load_bias<'a, R: object::ReadRef<'a>>(data: R, file_offset: u64, start: u64) -> Option<u64> {
    /// x86-64's page size: mappings start at page-aligned file offsets.
    const PAGE: u64 = 4096;
    let header = elf::FileHeader64::<Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let segments = header.program_headers(endian, data).ok()?;
    let holds = |segment: &&elf::ProgramHeader64<Endianness>| {
        let offset = segment.p_offset(endian);
        segment.p_type(endian) == elf::PT_LOAD
            && (offset & !(PAGE - 1)..offset.saturating_add(segment.p_filesz(endian).max(1)))
                .contains(&file_offset)
    };
    let segment = segments
        .iter()
        .filter(holds)
        .find(|segment| segment.p_flags(endian) & elf::PF_X != 0)
        .or_else(|| segments.iter().find(holds))?;
    let vaddr = segment
        .p_vaddr(endian)
        .wrapping_add(file_offset.wrapping_sub(segment.p_offset(endian)));
    Some(start.wrapping_sub(vaddr))
}

/// A word the loader wrote as a thread-pointer offset: usable if negative.
fn static_offset(word: u64) -> Option<TlsLocation> {
    let tp_offset = i64::from_ne_bytes(word.to_ne_bytes());
    (tp_offset < 0).then_some(TlsLocation::Static { tp_offset })
}

/// Whether a `/proc/PID/maps` pathname names a process-context mapping:
/// `[anon_shmem:OTEL_CTX]`, `[anon:OTEL_CTX]` or `/memfd:OTEL_CTX`, with
/// or without ` (deleted)`. (Readers also skip executable mappings.)
pub fn is_process_context_mapping(path_or_name: &str) -> bool {
    let name = path_or_name.trim_end();
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    matches!(
        name,
        "[anon_shmem:OTEL_CTX]" | "[anon:OTEL_CTX]" | "/memfd:OTEL_CTX"
    )
}

/// The process-context header, checked: signature `OTEL_CTX`, version 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextHeader {
    /// Bytes of payload (at most [`MAX_PAYLOAD_SIZE`]).
    pub payload_size: u32,
    /// `CLOCK_BOOTTIME` of the last publication, never 0: a reader copies
    /// the payload and checks this did not change meanwhile.
    pub published_at_ns: u64,
    /// Address of the payload in the publishing process.
    pub payload_addr: u64,
}

/// The header at the start of a process-context mapping (its first
/// [`HEADER_SIZE`] bytes; more are ignored), in native byte order.
pub fn parse_header(bytes: &[u8]) -> Result<ContextHeader, ThreadContextError> {
    let Some(header) = bytes.get(..HEADER_SIZE) else {
        return Err(ThreadContextError::HeaderTooShort { len: bytes.len() });
    };
    if !header.starts_with(SIGNATURE) {
        return Err(ThreadContextError::BadSignature);
    }
    let version = ne_u32(&header[8..12]);
    if version != VERSION {
        return Err(ThreadContextError::UnsupportedVersion { version });
    }
    let payload_size = ne_u32(&header[12..16]);
    let published_at_ns = ne_u64(&header[16..24]);
    let payload_addr = ne_u64(&header[24..32]);
    if published_at_ns == 0 {
        return Err(ThreadContextError::BeingUpdated);
    }
    if payload_size > MAX_PAYLOAD_SIZE {
        return Err(ThreadContextError::PayloadTooLarge { size: payload_size });
    }
    if payload_size > 0 && payload_addr == 0 {
        return Err(ThreadContextError::NullPayload);
    }
    Ok(ContextHeader {
        payload_size,
        published_at_ns,
        payload_addr,
    })
}

fn ne_u32(bytes: &[u8]) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(bytes);
    u32::from_ne_bytes(word)
}

fn ne_u64(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(bytes);
    u64::from_ne_bytes(word)
}

/// The process-context payload,
/// `opentelemetry.proto.processcontext.v1development.ProcessContext`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessContext {
    /// The process's resource (`service.name`, ...).
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// Further attributes, among them the `threadlocal.*` ones.
    #[prost(message, repeated, tag = "2")]
    pub attributes: Vec<KeyValue>,
}

/// What the process context says about its threads' records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadContextSchema {
    /// `threadlocal.schema_version`, one of [`SUPPORTED_SCHEMAS`].
    pub schema_version: String,
    /// `threadlocal.attribute_key_map`: the name of key byte `i` at `i`
    /// (at most 256; empty when not published).
    pub key_map: Vec<String>,
    /// The resource's `service.name`, when a string.
    pub service_name: Option<String>,
}

/// The thread-context schema in a process-context payload. A payload
/// without `threadlocal.schema_version` is [`ThreadContextError::NoSchema`]
/// (the spec has readers wait for the next publication), one with an
/// unknown version [`ThreadContextError::UnsupportedSchema`];
/// `threadlocal.*` attributes given twice or of the wrong type are errors.
pub fn decode_process_context(payload: &[u8]) -> Result<ThreadContextSchema, ThreadContextError> {
    let context = ProcessContext::decode(payload)?;
    let mut schema_version = None;
    let mut key_map = None;
    for attribute in &context.attributes {
        let duplicate = match attribute.key.as_str() {
            SCHEMA_VERSION_KEY => {
                let version = string_value(attribute).ok_or(ThreadContextError::BadAttribute {
                    key: SCHEMA_VERSION_KEY,
                    expected: "a string",
                })?;
                let earlier = schema_version.replace(version.to_owned());
                earlier.is_some().then_some(SCHEMA_VERSION_KEY)
            }
            KEY_MAP_KEY => {
                let earlier = key_map.replace(string_array(attribute)?);
                earlier.is_some().then_some(KEY_MAP_KEY)
            }
            _ => None,
        };
        if let Some(key) = duplicate {
            return Err(ThreadContextError::DuplicateAttribute { key });
        }
    }
    let schema_version = schema_version.ok_or(ThreadContextError::NoSchema)?;
    if !SUPPORTED_SCHEMAS.contains(&schema_version.as_str()) {
        return Err(ThreadContextError::UnsupportedSchema {
            version: schema_version,
        });
    }
    let service_name = context
        .resource
        .as_ref()
        .and_then(|resource| {
            resource
                .attributes
                .iter()
                .find(|attribute| attribute.key == "service.name")
        })
        .and_then(string_value)
        .map(str::to_owned);
    Ok(ThreadContextSchema {
        schema_version,
        key_map: key_map.unwrap_or_default(),
        service_name,
    })
}

fn string_value(attribute: &KeyValue) -> Option<&str> {
    match attribute.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(value) => Some(value),
        _ => None,
    }
}

/// The attribute key map: an array of strings, its first 256 kept.
fn string_array(attribute: &KeyValue) -> Result<Vec<String>, ThreadContextError> {
    let bad = ThreadContextError::BadAttribute {
        key: KEY_MAP_KEY,
        expected: "an array of strings",
    };
    let value = attribute.value.as_ref().and_then(|v| v.value.as_ref());
    let Some(any_value::Value::ArrayValue(array)) = value else {
        return Err(bad);
    };
    let mut keys = Vec::new();
    for element in array.values.iter().take(MAX_KEYS) {
        match &element.value {
            Some(any_value::Value::StringValue(key)) => keys.push(key.clone()),
            _ => return Err(bad),
        }
    }
    Ok(keys)
}

/// The attributes of a record's `attrs-data`, named through `key_map`: a
/// run of `{key u8, length u8, value [u8; length]}` entries, read until
/// one does not fit. Entries whose key is outside the map or whose value
/// is not UTF-8 are skipped; of a key given several times the last valid
/// value counts, in the place of the key's first appearance.
#[allow(
    dead_code,
    reason = "the kernel side does not copy attrs-data yet; the decoder is ready for when it does"
)]
pub fn decode_record_attributes(attrs: &[u8], key_map: &[String]) -> Vec<(String, String)> {
    let mut values: Vec<(usize, &str)> = Vec::new();
    let mut rest = attrs;
    while let [key, len, tail @ ..] = rest {
        let Some(value) = tail.get(..usize::from(*len)) else {
            break;
        };
        rest = &tail[value.len()..];
        let key = usize::from(*key);
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if key >= key_map.len() {
            continue;
        }
        match values.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => values.push((key, value)),
        }
    }
    values
        .into_iter()
        .filter_map(|(key, value)| Some((key_map.get(key)?.clone(), value.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostprof_proto::otlp::common::v1::{AnyValue, ArrayValue};
    use std::collections::HashMap;

    /// A minimal 64-bit little-endian ELF file, built in memory: `.dynsym`
    /// holds `other` (index 1) and, when given, `otel_thread_ctx_v1`
    /// (index 2); one loaded `.rela.dyn`; a `.dynamic`.
    struct TestElf {
        e_type: u16,
        machine: u16,
        interp: bool,
        pie_flag: bool,
        /// PT_TLS `(p_vaddr, p_memsz, p_align)`.
        tls: Option<(u64, u64, u64)>,
        /// `(st_type, st_shndx, st_value, st_size)` of the variable.
        symbol: Option<(u8, u16, u64, u64)>,
        /// `(r_offset, r_type, symbol index, r_addend)`.
        relocs: Vec<(u64, u32, u32, i64)>,
        /// A PT_LOAD segment: link-time address and file contents.
        load: Option<(u64, Vec<u8>)>,
    }

    /// The variable as GNU ld exports it.
    const TLS_VAR: Option<(u8, u16, u64, u64)> = Some((elf::STT_TLS, 20, 0x18, 8));

    fn shared_object() -> TestElf {
        TestElf {
            e_type: elf::ET_DYN,
            machine: elf::EM_X86_64,
            interp: false,
            pie_flag: false,
            tls: Some((0x3e10, 0x20, 8)),
            symbol: TLS_VAR,
            relocs: Vec::new(),
            load: None,
        }
    }

    fn pie() -> TestElf {
        TestElf {
            interp: true,
            pie_flag: true,
            tls: Some((0x3dd0, 8, 8)),
            symbol: Some((elf::STT_TLS, 20, 0, 8)),
            ..shared_object()
        }
    }

    fn pad8(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
    }

    fn put16(out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn put32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn put64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    impl TestElf {
        fn build(&self) -> Vec<u8> {
            // Program headers: (type, offset, vaddr, filesz, memsz, align),
            // offsets patched in once the contents are placed.
            let mut phdrs: Vec<(u32, u64, u64, u64, u64, u64)> = Vec::new();
            if let Some((vaddr, memsz, align)) = self.tls {
                phdrs.push((elf::PT_TLS, 0, vaddr, 0, memsz, align));
            }
            let mut out = vec![0u8; 64];
            let phoff = out.len();
            let phnum = phdrs.len() + usize::from(self.interp) + usize::from(self.load.is_some());
            out.resize(phoff + 56 * phnum, 0);

            pad8(&mut out);
            let dynstr_off = out.len();
            out.extend_from_slice(b"\0other\0otel_thread_ctx_v1\0");
            let dynstr_size = out.len() - dynstr_off;

            pad8(&mut out);
            let dynsym_off = out.len();
            out.extend_from_slice(&[0; 24]);
            let mut symbols = vec![(1u32, elf::STT_OBJECT, 14u16, 0x10u64, 4u64)];
            if let Some((st_type, shndx, value, size)) = self.symbol {
                symbols.push((7, st_type, shndx, value, size));
            }
            for (name, st_type, shndx, value, size) in symbols {
                put32(&mut out, name);
                out.push((elf::STB_GLOBAL << 4) | st_type);
                out.push(0);
                put16(&mut out, shndx);
                put64(&mut out, value);
                put64(&mut out, size);
            }
            let dynsym_size = out.len() - dynsym_off;

            pad8(&mut out);
            let rela_off = out.len();
            for &(offset, kind, symbol, addend) in &self.relocs {
                put64(&mut out, offset);
                put64(&mut out, (u64::from(symbol) << 32) | u64::from(kind));
                put64(&mut out, addend as u64);
            }
            let rela_size = out.len() - rela_off;

            let dynamic_off = out.len();
            if self.pie_flag {
                put64(&mut out, elf::DT_FLAGS_1 as u64);
                put64(&mut out, u64::from(elf::DF_1_PIE));
            }
            put64(&mut out, 0);
            put64(&mut out, 0);
            let dynamic_size = out.len() - dynamic_off;

            if let Some((vaddr, contents)) = &self.load {
                let off = out.len() as u64;
                let size = contents.len() as u64;
                phdrs.push((elf::PT_LOAD, off, *vaddr, size, size, 0x1000));
                out.extend_from_slice(contents);
            }
            if self.interp {
                let off = out.len() as u64;
                out.extend_from_slice(b"/lib/ld.so\0");
                phdrs.push((elf::PT_INTERP, off, 0x318, 11, 11, 1));
            }

            let shstrtab_off = out.len();
            out.extend_from_slice(b"\0.dynstr\0.dynsym\0.rela.dyn\0.dynamic\0.shstrtab\0");
            let shstrtab_size = out.len() - shstrtab_off;

            pad8(&mut out);
            let shoff = out.len();
            // (name, type, flags, offset, size, link, entsize)
            let sections = [
                (0, elf::SHT_NULL, 0, 0, 0, 0, 0),
                (1, elf::SHT_STRTAB, 2, dynstr_off, dynstr_size, 0, 0),
                (9, elf::SHT_DYNSYM, 2, dynsym_off, dynsym_size, 1, 24),
                (17, elf::SHT_RELA, 2, rela_off, rela_size, 2, 24),
                (27, elf::SHT_DYNAMIC, 3, dynamic_off, dynamic_size, 1, 16),
                (36, elf::SHT_STRTAB, 0, shstrtab_off, shstrtab_size, 0, 0),
            ];
            for (name, kind, flags, offset, size, link, entsize) in sections {
                put32(&mut out, name);
                put32(&mut out, kind);
                put64(&mut out, flags);
                put64(&mut out, 0);
                put64(&mut out, offset as u64);
                put64(&mut out, size as u64);
                put32(&mut out, link);
                put32(&mut out, u32::from(kind == elf::SHT_DYNSYM));
                put64(&mut out, 8);
                put64(&mut out, entsize);
            }

            for (i, (kind, offset, vaddr, filesz, memsz, align)) in phdrs.iter().enumerate() {
                let mut ph = Vec::new();
                put32(&mut ph, *kind);
                put32(&mut ph, 4);
                put64(&mut ph, *offset);
                put64(&mut ph, *vaddr);
                put64(&mut ph, *vaddr);
                put64(&mut ph, *filesz);
                put64(&mut ph, *memsz);
                put64(&mut ph, *align);
                let at = phoff + 56 * i;
                out[at..at + 56].copy_from_slice(&ph);
            }

            let mut eh = Vec::new();
            eh.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
            eh.resize(16, 0);
            put16(&mut eh, self.e_type);
            put16(&mut eh, self.machine);
            put32(&mut eh, 1);
            put64(&mut eh, 0);
            put64(&mut eh, if phnum > 0 { phoff as u64 } else { 0 });
            put64(&mut eh, shoff as u64);
            put32(&mut eh, 0);
            put16(&mut eh, 64);
            put16(&mut eh, 56);
            put16(&mut eh, phnum as u16);
            put16(&mut eh, 64);
            put16(&mut eh, sections.len() as u16);
            put16(&mut eh, 5);
            out[..64].copy_from_slice(&eh);
            out
        }

        fn discover(&self) -> Result<Discovery, ThreadContextError> {
            find_tls_symbol(&self.build())
        }
    }

    fn found(file: &TestElf) -> TlsAccess {
        match file.discover() {
            Ok(Discovery::Found(access)) => access,
            other => panic!("expected an access model, got {other:?}"),
        }
    }

    #[test]
    fn load_bias_is_the_runtime_minus_the_link_time_address() {
        let image = TestElf {
            load: Some((0x4000, vec![7; 64])),
            ..pie()
        }
        .build();
        let header = elf::FileHeader64::<Endianness>::parse(&image[..]).unwrap();
        let endian = header.endian().unwrap();
        let offset = header
            .program_headers(endian, &image[..])
            .unwrap()
            .iter()
            .find(|segment| segment.p_type(endian) == elf::PT_LOAD)
            .unwrap()
            .p_offset(endian);
        let bias = 0x5555_0000_0000;
        assert_eq!(load_bias(&image[..], offset, bias + 0x4000), Some(bias));
        assert_eq!(
            load_bias(&image[..], offset + 16, bias + 0x4010),
            Some(bias)
        );
        assert_eq!(
            load_bias(&image[..], offset + 4096, bias),
            None,
            "past the segment"
        );
    }

    #[test]
    fn the_test_binary_does_not_export_the_variable() {
        let data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(find_tls_symbol(&data).unwrap(), Discovery::NotExported);
        assert!(matches!(
            find_tls_symbol(b"not an ELF file at all, just some text...................."),
            Err(ThreadContextError::Elf(_))
        ));
    }

    #[test]
    fn executables_use_local_exec() {
        // What gcc 12 and GNU ld 2.40 produce for the otel_thread_ctx
        // workload as a PIE: .tbss of 8 bytes, the pointer at %fs:-8.
        assert_eq!(found(&pie()), TlsAccess::LocalExec { tp_offset: -8 });
        // The same built -static-pie: no PT_INTERP, DF_1_PIE; the code
        // reads %fs:-0x58.
        let static_pie = TestElf {
            interp: false,
            tls: Some((0xc54f0, 0x78, 8)),
            symbol: Some((elf::STT_TLS, 20, 0x20, 8)),
            ..pie()
        };
        assert_eq!(
            found(&static_pie),
            TlsAccess::LocalExec { tp_offset: -0x58 }
        );
        let fixed = TestElf {
            e_type: elf::ET_EXEC,
            interp: false,
            pie_flag: false,
            ..pie()
        };
        assert_eq!(found(&fixed), TlsAccess::LocalExec { tp_offset: -8 });
        // A segment starting 4 bytes past a 16-byte boundary: glibc's
        // firstbyte rule puts the block end 0x1c below the thread pointer.
        let misaligned = TestElf {
            tls: Some((0x1004, 0x10, 16)),
            symbol: Some((elf::STT_TLS, 20, 8, 8)),
            ..pie()
        };
        assert_eq!(
            found(&misaligned),
            TlsAccess::LocalExec {
                tp_offset: 8 - 0x1c
            }
        );
        assert_eq!(local_exec_offset(0, 0x11, 0x1000, 16), Some(-0x20));
    }

    #[test]
    fn shared_objects_by_their_relocations() {
        // -mtls-dialect=gnu2: TLSDESC (GNU ld puts them in .rela.plt).
        let mut lib = shared_object();
        lib.relocs = vec![
            (0x4000, elf::R_X86_64_TLSDESC, 0, 0),
            (0x4020, elf::R_X86_64_TLSDESC, 1, 0),
            (0x4010, elf::R_X86_64_TLSDESC, 2, 0),
        ];
        assert_eq!(found(&lib), TlsAccess::TlsDesc { desc_vaddr: 0x4010 });
        // Initial exec is preferred when the module also uses it.
        lib.relocs.push((0x3fc0, elf::R_X86_64_TPOFF64, 2, 0));
        assert_eq!(found(&lib), TlsAccess::InitialExec { got_vaddr: 0x3fc0 });
        // Traditional general dynamic.
        lib.relocs = vec![
            (0x3f98, elf::R_X86_64_DTPMOD64, 0, 0),
            (0x3fb0, elf::R_X86_64_DTPMOD64, 2, 0),
            (0x3fb8, elf::R_X86_64_DTPOFF64, 2, 0),
        ];
        assert_eq!(found(&lib), TlsAccess::GeneralDynamic { got_vaddr: 0x3fb0 });
        // Nothing to go by.
        lib.relocs = vec![(0x3fc0, elf::R_X86_64_TPOFF64, 1, 0)];
        assert!(matches!(lib.discover(), Ok(Discovery::Unsupported(_))));
    }

    #[test]
    fn relocations_against_symbol_zero_match_by_offset() {
        let mut lib = shared_object();
        lib.relocs = vec![
            (0x4000, elf::R_X86_64_TLSDESC, 0, 0),
            (0x4010, elf::R_X86_64_TLSDESC, 0, 0x18),
        ];
        assert_eq!(found(&lib), TlsAccess::TlsDesc { desc_vaddr: 0x4010 });
        lib.relocs = vec![
            (0x3fb0, elf::R_X86_64_TPOFF64, 0, 0x10),
            (0x3fb8, elf::R_X86_64_TPOFF64, 0, 0x18),
        ];
        assert_eq!(found(&lib), TlsAccess::InitialExec { got_vaddr: 0x3fb8 });
        // DTPMOD64 against symbol 0: the offset is the next GOT word, in
        // the file or as a DTPOFF64 relocation's addend.
        let mut got = Vec::new();
        for word in [0u64, 0, 0, 0x18] {
            got.extend_from_slice(&word.to_le_bytes());
        }
        lib.load = Some((0x3f90, got));
        lib.relocs = vec![
            (0x3f90, elf::R_X86_64_DTPMOD64, 0, 0),
            (0x3fa0, elf::R_X86_64_DTPMOD64, 0, 0),
        ];
        assert_eq!(found(&lib), TlsAccess::GeneralDynamic { got_vaddr: 0x3fa0 });
        lib.load = None;
        assert!(matches!(lib.discover(), Ok(Discovery::Unsupported(_))));
        lib.relocs = vec![
            (0x3fa0, elf::R_X86_64_DTPMOD64, 0, 0),
            (0x3fa8, elf::R_X86_64_DTPOFF64, 0, 0x18),
        ];
        assert_eq!(found(&lib), TlsAccess::GeneralDynamic { got_vaddr: 0x3fa0 });
    }

    #[test]
    fn what_is_not_the_variable() {
        let lib = |symbol| TestElf {
            symbol,
            ..shared_object()
        };
        assert_eq!(lib(None).discover().unwrap(), Discovery::NotExported);
        // Imported, not defined.
        let imported = lib(Some((elf::STT_TLS, elf::SHN_UNDEF, 0, 8)));
        assert_eq!(imported.discover().unwrap(), Discovery::NotExported);
        assert!(matches!(
            lib(Some((elf::STT_OBJECT, 20, 0x18, 8))).discover(),
            Err(ThreadContextError::NotTls {
                st_type: elf::STT_OBJECT
            })
        ));
        assert!(matches!(
            lib(Some((elf::STT_TLS, 20, 0x18, 4))).discover(),
            Err(ThreadContextError::WrongSize { size: 4 })
        ));
        let no_segment = TestElf {
            tls: None,
            ..shared_object()
        };
        assert!(matches!(
            no_segment.discover(),
            Err(ThreadContextError::NoTlsSegment)
        ));
        let outside = TestElf {
            tls: Some((0x3e10, 0x10, 8)),
            ..shared_object()
        };
        assert!(matches!(
            outside.discover(),
            Err(ThreadContextError::BadTlsSegment { .. })
        ));
        let odd_alignment = TestElf {
            tls: Some((0x3e10, 0x20, 3)),
            ..shared_object()
        };
        assert!(matches!(
            odd_alignment.discover(),
            Err(ThreadContextError::BadTlsSegment { .. })
        ));
        let arm = TestElf {
            machine: elf::EM_AARCH64,
            ..pie()
        };
        assert!(matches!(arm.discover(), Ok(Discovery::Unsupported(_))));
        let mut elf32 = pie().build();
        elf32[4] = elf::ELFCLASS32;
        assert!(matches!(
            find_tls_symbol(&elf32),
            Ok(Discovery::Unsupported(_))
        ));
    }

    /// A process's memory: 8-byte words at addresses.
    fn memory(words: &[(u64, u64)]) -> impl FnMut(u64) -> Option<u64> {
        let words: HashMap<u64, u64> = words.iter().copied().collect();
        move |addr| words.get(&addr).copied()
    }

    const BIAS: u64 = 0x5555_5555_0000;

    #[test]
    fn locate_static_models() {
        let local = TlsAccess::LocalExec { tp_offset: -8 };
        assert_eq!(
            locate(&local, BIAS, memory(&[])),
            Some(TlsLocation::Static { tp_offset: -8 })
        );
        let initial = TlsAccess::InitialExec { got_vaddr: 0x3fc0 };
        let minus_0x40 = (-0x40i64) as u64;
        assert_eq!(
            locate(&initial, BIAS, memory(&[(BIAS + 0x3fc0, minus_0x40)])),
            Some(TlsLocation::Static { tp_offset: -0x40 })
        );
        // Not relocated yet, unreadable, or nonsense.
        assert_eq!(locate(&initial, BIAS, memory(&[(BIAS + 0x3fc0, 0)])), None);
        assert_eq!(locate(&initial, BIAS, memory(&[])), None);
        assert_eq!(
            locate(&initial, BIAS, memory(&[(BIAS + 0x3fc0, 0x40)])),
            None
        );
    }

    #[test]
    fn locate_general_dynamic() {
        let access = TlsAccess::GeneralDynamic { got_vaddr: 0x3fb0 };
        let got = BIAS + 0x3fb0;
        assert_eq!(
            locate(&access, BIAS, memory(&[(got, 3), (got + 8, 0x18)])),
            Some(TlsLocation::Dtv {
                module_id: 3,
                offset: 0x18
            })
        );
        assert_eq!(
            locate(&access, BIAS, memory(&[(got, 0), (got + 8, 0x18)])),
            None
        );
        assert_eq!(locate(&access, BIAS, memory(&[(got, 3)])), None);
    }

    #[test]
    fn locate_tls_descriptors() {
        let access = TlsAccess::TlsDesc { desc_vaddr: 0x4010 };
        let desc = BIAS + 0x4010;
        let resolver = 0x7f00_0000_2000;
        // Static TLS: the argument is the offset.
        let minus_0x58 = (-0x58i64) as u64;
        assert_eq!(
            locate(
                &access,
                BIAS,
                memory(&[(desc, resolver), (desc + 8, minus_0x58)])
            ),
            Some(TlsLocation::Static { tp_offset: -0x58 })
        );
        // Dynamic TLS: the argument points at {module id, offset}.
        let index = 0x5555_6000_0040;
        assert_eq!(
            locate(
                &access,
                BIAS,
                memory(&[
                    (desc, resolver),
                    (desc + 8, index),
                    (index, 2),
                    (index + 8, 0x18)
                ])
            ),
            Some(TlsLocation::Dtv {
                module_id: 2,
                offset: 0x18
            })
        );
        // Not relocated.
        assert_eq!(
            locate(&access, BIAS, memory(&[(desc, 0), (desc + 8, minus_0x58)])),
            None
        );
        // A lazy descriptor: the argument points at its relocation, whose
        // first word (r_offset) is no module id.
        assert_eq!(
            locate(
                &access,
                BIAS,
                memory(&[(desc, resolver), (desc + 8, index), (index, 0x4010)])
            ),
            None
        );
    }

    fn header(
        signature: &[u8; 8],
        version: u32,
        size: u32,
        published: u64,
        payload: u64,
    ) -> Vec<u8> {
        let mut bytes = signature.to_vec();
        bytes.extend_from_slice(&version.to_ne_bytes());
        bytes.extend_from_slice(&size.to_ne_bytes());
        bytes.extend_from_slice(&published.to_ne_bytes());
        bytes.extend_from_slice(&payload.to_ne_bytes());
        bytes
    }

    #[test]
    fn process_context_headers() {
        let good = header(b"OTEL_CTX", 2, 138, 505_166_697_564, 0x7f94_2d0d_c020);
        assert_eq!(
            parse_header(&good).unwrap(),
            ContextHeader {
                payload_size: 138,
                published_at_ns: 505_166_697_564,
                payload_addr: 0x7f94_2d0d_c020
            }
        );
        let mut longer = good.clone();
        longer.extend_from_slice(&[0xaa; 100]);
        assert_eq!(parse_header(&longer).unwrap(), parse_header(&good).unwrap());
        assert!(matches!(
            parse_header(&good[..31]),
            Err(ThreadContextError::HeaderTooShort { len: 31 })
        ));
        assert!(matches!(
            parse_header(&header(b"OTEL_CTx", 2, 1, 1, 1)),
            Err(ThreadContextError::BadSignature)
        ));
        assert!(matches!(
            parse_header(&header(b"OTEL_CTX", 1, 1, 1, 1)),
            Err(ThreadContextError::UnsupportedVersion { version: 1 })
        ));
        assert!(matches!(
            parse_header(&header(b"OTEL_CTX", 2, 70_000, 0, 1)),
            Err(ThreadContextError::BeingUpdated)
        ));
        assert!(parse_header(&header(b"OTEL_CTX", 2, MAX_PAYLOAD_SIZE, 1, 1)).is_ok());
        assert!(matches!(
            parse_header(&header(b"OTEL_CTX", 2, MAX_PAYLOAD_SIZE + 1, 1, 1)),
            Err(ThreadContextError::PayloadTooLarge { size: 65537 })
        ));
        assert!(matches!(
            parse_header(&header(b"OTEL_CTX", 2, 10, 1, 0)),
            Err(ThreadContextError::NullPayload)
        ));
    }

    #[test]
    fn process_context_mappings() {
        for name in [
            "[anon_shmem:OTEL_CTX]",
            "[anon:OTEL_CTX]",
            "/memfd:OTEL_CTX",
            "/memfd:OTEL_CTX (deleted)",
            "[anon:OTEL_CTX] (deleted)",
        ] {
            assert!(is_process_context_mapping(name), "{name}");
        }
        for name in [
            "",
            "[anon:OTEL_CTX2]",
            "/memfd:OTEL_CTX2 (deleted)",
            "/tmp/OTEL_CTX",
            "[heap]",
            "/memfd:other (deleted)",
        ] {
            assert!(!is_process_context_mapping(name), "{name}");
        }
    }

    fn string_any(value: &str) -> AnyValue {
        AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }
    }

    fn string(value: &str) -> Option<AnyValue> {
        Some(string_any(value))
    }

    fn attribute(key: &str, value: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }
    }

    fn strings(values: &[&str]) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: values.iter().copied().map(string_any).collect(),
            })),
        })
    }

    fn encode(attributes: Vec<KeyValue>) -> Vec<u8> {
        ProcessContext {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", string("checkout"))],
                ..Default::default()
            }),
            attributes,
        }
        .encode_to_vec()
    }

    #[test]
    fn the_workloads_payload_decodes() {
        // The bytes the C workload (tests/workloads/otel_thread_ctx.c)
        // publishes, copied from a run.
        let payload = b"\x0a%\x0a#\x0a\x0cservice.name\x12\x13\x0a\x11otel-ctx-workload\
            \x12.\x0a\x1athreadlocal.schema_version\x12\x10\x0a\x0etlsdesc_v1_dev\
            \x121\x0a\x1dthreadlocal.attribute_key_map\x12\x10*\x0e\x0a\x0c\x0a\x0ahttp.route";
        assert_eq!(payload.len(), 138);
        assert_eq!(
            decode_process_context(payload).unwrap(),
            ThreadContextSchema {
                schema_version: "tlsdesc_v1_dev".into(),
                key_map: vec!["http.route".into()],
                service_name: Some("otel-ctx-workload".into()),
            }
        );
    }

    #[test]
    fn process_context_payloads() {
        let schema = decode_process_context(&encode(vec![
            attribute("deployment.environment.name", string("prod")),
            attribute(
                KEY_MAP_KEY,
                strings(&["http.route", "datadog.local_root_span_id"]),
            ),
            attribute(SCHEMA_VERSION_KEY, string("tls_v1")),
        ]))
        .unwrap();
        assert_eq!(schema.schema_version, "tls_v1");
        assert_eq!(schema.key_map, ["http.route", "datadog.local_root_span_id"]);
        assert_eq!(schema.service_name.as_deref(), Some("checkout"));

        // No key map: records still carry trace and span ids.
        let schema = decode_process_context(&encode(vec![attribute(
            SCHEMA_VERSION_KEY,
            string("tlsdesc_v1_dev"),
        )]))
        .unwrap();
        assert!(schema.key_map.is_empty());

        // At most 256 keys.
        let many: Vec<String> = (0..300).map(|i| format!("key.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let schema = decode_process_context(&encode(vec![
            attribute(SCHEMA_VERSION_KEY, string("tlsdesc_v1_dev")),
            attribute(KEY_MAP_KEY, strings(&many)),
        ]))
        .unwrap();
        assert_eq!(schema.key_map.len(), 256);
        assert_eq!(schema.key_map[255], "key.255");
    }

    #[test]
    fn process_context_payloads_without_a_usable_schema() {
        assert!(matches!(
            decode_process_context(&encode(Vec::new())),
            Err(ThreadContextError::NoSchema)
        ));
        assert!(matches!(
            decode_process_context(&[]),
            Err(ThreadContextError::NoSchema)
        ));
        assert!(matches!(
            decode_process_context(&encode(vec![attribute(
                SCHEMA_VERSION_KEY,
                string("go_pprof_labels_v1")
            )])),
            Err(ThreadContextError::UnsupportedSchema { version }) if version == "go_pprof_labels_v1"
        ));
        assert!(matches!(
            decode_process_context(&encode(vec![
                attribute(SCHEMA_VERSION_KEY, string("tls_v1")),
                attribute(SCHEMA_VERSION_KEY, string("tls_v1")),
            ])),
            Err(ThreadContextError::DuplicateAttribute {
                key: SCHEMA_VERSION_KEY
            })
        ));
        assert!(matches!(
            decode_process_context(&encode(vec![
                attribute(SCHEMA_VERSION_KEY, string("tls_v1")),
                attribute(KEY_MAP_KEY, string("http.route")),
            ])),
            Err(ThreadContextError::BadAttribute {
                key: KEY_MAP_KEY,
                ..
            })
        ));
        let int = Some(AnyValue {
            value: Some(any_value::Value::IntValue(2)),
        });
        assert!(matches!(
            decode_process_context(&encode(vec![attribute(SCHEMA_VERSION_KEY, int)])),
            Err(ThreadContextError::BadAttribute {
                key: SCHEMA_VERSION_KEY,
                ..
            })
        ));
        assert!(matches!(
            decode_process_context(b"\xff\xff\xff"),
            Err(ThreadContextError::Protobuf(_))
        ));
    }

    #[test]
    fn record_attributes() {
        let keys = ["http.route".to_owned(), "user".to_owned()];
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        // What the workload writes.
        assert_eq!(
            decode_record_attributes(b"\x00\x09/checkout", &keys),
            pairs(&[("http.route", "/checkout")])
        );
        assert!(decode_record_attributes(b"", &keys).is_empty());
        // Out-of-range keys and invalid UTF-8 are skipped; the last valid
        // occurrence wins, in the first one's place.
        assert_eq!(
            decode_record_attributes(b"\x01\x01a\x07\x02zz\x00\x01b\x01\x01\xff\x01\x01c", &keys),
            pairs(&[("user", "c"), ("http.route", "b")])
        );
        assert_eq!(
            decode_record_attributes(b"\x01\x01a\x01\x01\xff", &keys),
            pairs(&[("user", "a")])
        );
        // Parsing stops at an entry that does not fit.
        assert_eq!(
            decode_record_attributes(b"\x00\x01a\x01\x05abc", &keys),
            pairs(&[("http.route", "a")])
        );
        assert_eq!(decode_record_attributes(b"\x00", &keys), pairs(&[]));
        // Without a key map nothing is named.
        assert!(decode_record_attributes(b"\x00\x01a", &[]).is_empty());
    }
}
