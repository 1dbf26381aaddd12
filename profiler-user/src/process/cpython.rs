//! CPython's in-memory layout on x86-64 Linux, for walking its frames in
//! the kernel and naming them here. Pure: memory is read through a
//! caller's function.
//!
//! The offsets of 3.11 and 3.12 were printed by a C program compiled
//! against each version's headers (`offsetof` over `Py_BUILD_CORE`
//! internals: `pycore_runtime.h`, `pycore_interp.h`, `pycore_frame.h`,
//! `cpython/code.h`, `cpython/unicodeobject.h`; 3.11.7 and 3.12.1).
//! 3.13 publishes its own at the start of `_PyRuntime`: `_Py_DebugOffsets`,
//! cookie `xdebugpy` ([`from_debug_offsets`], whose field positions were
//! checked the same way against 3.13.0's header). That struct changes
//! between minor versions, so later versions are reported and profiled
//! natively until their layout is added here.
//!
//! Entry frames: in 3.11 a frame's `is_entry` is set on the first frame a
//! C call of `_PyEval_EvalFrameDefault` evaluates; from 3.12 that call
//! first pushes a shim frame owned by the C stack (`owner` ==
//! `FRAME_OWNED_BY_CSTACK`, 3 in 3.12 and 3.13), which is no Python frame
//! and marks the frame after it as the call's entry.

use profiler_common::{PythonOffsets, PythonProcess};

/// Where the fields the frame walk and the naming read are, in one
/// CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// What the kernel walk needs.
    pub kernel: PythonOffsets,
    /// `PythonProcess::*` flags of the version.
    pub flags: u32,
    /// `PyCodeObject.co_name`.
    pub code_name: u64,
    /// `PyCodeObject.co_qualname`.
    pub code_qualname: u64,
    /// `PyCodeObject.co_filename`.
    pub code_filename: u64,
    /// `PyCodeObject.co_firstlineno` (an `int`).
    pub code_first_line: u64,
    /// `PyCodeObject.co_linetable` (a `bytes`).
    pub code_linetable: u64,
    /// `PyASCIIObject.length`.
    pub str_length: u64,
    /// `PyASCIIObject.state` (a bit field: `kind` bits 2-4, `compact`
    /// bit 5, `ascii` bit 6 in 3.11 and 3.12).
    pub str_state: u64,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's text starts.
    pub ascii_data: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where another compact string's
    /// text starts.
    pub compact_data: u64,
    /// `PyVarObject.ob_size` of a `bytes`.
    pub bytes_size: u64,
    /// `PyBytesObject.ob_sval`.
    pub bytes_data: u64,
}

/// The layout of CPython `major.minor`, when this build knows it.
pub fn layout(major: u8, minor: u8) -> Option<Layout> {
    match (major, minor) {
        (3, 11) => Some(Layout {
            kernel: PythonOffsets {
                runtime_interpreters: 40,
                interp_threads: 16,
                tstate_next: 8,
                tstate_thread_id: 152,
                tstate_frame: 56,
                cframe_current: 8,
                frame_code: 32,
                frame_previous: 48,
                frame_instr: 56,
                frame_entry: 68,
                code_units: 184,
                shim_owner: 0,
            },
            flags: PythonProcess::ENTRY_FLAG,
            code_name: 120,
            code_qualname: 128,
            code_filename: 112,
            code_first_line: 72,
            code_linetable: 136,
            str_length: 16,
            str_state: 32,
            ascii_data: 48,
            compact_data: 72,
            bytes_size: 16,
            bytes_data: 32,
        }),
        (3, 12) => Some(Layout {
            kernel: PythonOffsets {
                runtime_interpreters: 40,
                interp_threads: 72,
                tstate_next: 8,
                tstate_thread_id: 136,
                tstate_frame: 56,
                cframe_current: 0,
                frame_code: 0,
                frame_previous: 8,
                frame_instr: 56,
                frame_entry: 70,
                code_units: 192,
                shim_owner: FRAME_OWNED_BY_CSTACK,
            },
            flags: PythonProcess::ENTRY_SHIM,
            code_name: 120,
            code_qualname: 128,
            code_filename: 112,
            code_first_line: 68,
            code_linetable: 136,
            str_length: 16,
            str_state: 32,
            ascii_data: 40,
            compact_data: 56,
            bytes_size: 16,
            bytes_data: 32,
        }),
        _ => None,
    }
}

/// `FRAME_OWNED_BY_CSTACK` of 3.12 and 3.13.
const FRAME_OWNED_BY_CSTACK: u16 = 3;

/// Largest object field offset taken from a process's debug offsets.
const MAX_OBJECT_OFFSET: u64 = 4096;

/// What the start of `_PyRuntime` of a 3.13+ process must hold.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";
/// Bytes of 3.13's `_Py_DebugOffsets`.
pub const DEBUG_OFFSETS_SIZE: usize = 584;

/// Why a process's `_Py_DebugOffsets` were not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DebugOffsetsError {
    /// The cookie is not there.
    #[error("_PyRuntime does not start with the debug offsets' cookie")]
    NoCookie,
    /// They describe another version than the file says.
    #[error("the debug offsets are of version {found:#x}, the file says {expected:#x}")]
    Version {
        /// `PY_VERSION_HEX` of the offsets.
        found: u64,
        /// That of `Py_Version`.
        expected: u64,
    },
    /// A free-threaded build (no GIL): its objects are laid out otherwise.
    #[error("a free-threaded (no-GIL) build is not supported")]
    FreeThreaded,
    /// Too short, or a field too far for the kernel walk.
    #[error("the debug offsets are malformed ({0})")]
    Malformed(&'static str),
}

/// The layout of a 3.13 process from the `_Py_DebugOffsets` at the start
/// of its `_PyRuntime` (`bytes`, [`DEBUG_OFFSETS_SIZE`] of them), checked
/// against `version_hex` (its `Py_Version`).
pub fn from_debug_offsets(bytes: &[u8], version_hex: u32) -> Result<Layout, DebugOffsetsError> {
    if bytes.get(..8) != Some(&DEBUG_COOKIE[..]) {
        return Err(DebugOffsetsError::NoCookie);
    }
    let field = |at: u64| u64_at(bytes, at).ok_or(DebugOffsetsError::Malformed("too short"));
    let version = field(8)?;
    // Patch releases share the layout; the release level and serial may differ.
    if version >> 16 != u64::from(version_hex >> 16) || version_from_hex(version_hex) != (3, 13) {
        return Err(DebugOffsetsError::Version {
            found: version,
            expected: u64::from(version_hex),
        });
    }
    if field(16)? != 0 {
        return Err(DebugOffsetsError::FreeThreaded);
    }
    let small = |at: u64| {
        let value = field(at)?;
        u16::try_from(value).map_err(|_| DebugOffsetsError::Malformed("an offset over 64 KiB"))
    };
    // Field positions in 3.13's struct (uint64_t each): runtime_state at
    // 24, interpreter_state at 48, thread_state at 152,
    // interpreter_frame at 224, code_object at 272, bytes_object at 512,
    // unicode_object at 536.
    let kernel = PythonOffsets {
        runtime_interpreters: small(40)?,
        interp_threads: small(72)?,
        tstate_next: small(168)?,
        tstate_thread_id: small(192)?,
        tstate_frame: small(184)?,
        cframe_current: 0,
        frame_code: small(240)?,
        frame_previous: small(232)?,
        frame_instr: small(248)?,
        frame_entry: small(264)?,
        code_units: small(344)?,
        shim_owner: FRAME_OWNED_BY_CSTACK,
    };
    // The kernel reads a frame's fields in its first 64 (words) or 128
    // (bytes) bytes.
    let words = [kernel.frame_code, kernel.frame_previous, kernel.frame_instr];
    if words.iter().any(|&at| at > 56) || kernel.frame_entry >= 80 {
        return Err(DebugOffsetsError::Malformed(
            "frame fields past the walk's reach",
        ));
    }
    // The process wrote these: each is an offset into an object whose
    // header is read whole, so none may be large (3.13's are under 256).
    let object = |at: u64| {
        let value = field(at)?;
        if value > MAX_OBJECT_OFFSET {
            return Err(DebugOffsetsError::Malformed("an object field past 4 KiB"));
        }
        Ok(value)
    };
    let ascii_data = object(560)?;
    Ok(Layout {
        kernel,
        flags: PythonProcess::ENTRY_SHIM | PythonProcess::FRAME_IN_TSTATE,
        code_name: object(288)?,
        code_qualname: object(296)?,
        code_filename: object(280)?,
        code_first_line: object(312)?,
        code_linetable: object(304)?,
        str_length: object(552)?,
        str_state: object(544)?,
        ascii_data,
        // PyCompactUnicodeObject: the ASCII header, utf8_length, utf8.
        compact_data: ascii_data + 16,
        bytes_size: object(520)?,
        bytes_data: object(528)?,
    })
}

/// (major, minor) of a `PY_VERSION_HEX` (`Py_Version`, exported by 3.11+).
pub fn version_from_hex(hex: u32) -> (u8, u8) {
    ((hex >> 24) as u8, (hex >> 16) as u8)
}

/// What names a code object's frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// Its qualified name (`Class.method`), or its name.
    pub name: String,
    /// Its source file.
    pub filename: String,
    /// The line it starts at.
    pub first_line: i32,
    /// Its location table (`co_linetable`).
    pub linetable: Vec<u8>,
}

/// Characters of a name or file name read (the rest is left out).
const MAX_TEXT: u64 = 1024;
/// Largest line table read.
const MAX_LINETABLE: u64 = 64 << 10;

/// The code object at `addr`, read with `read(addr, len)`; `None` when it
/// does not read as one.
pub fn read_code(
    layout: &Layout,
    addr: u64,
    mut read: impl FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Option<CodeInfo> {
    let header = read(addr, usize::from(layout.kernel.code_units))?;
    let word = |at: u64| u64_at(&header, at);
    let first_line = u32_at(&header, layout.code_first_line)? as i32;
    if !(0..10_000_000).contains(&first_line) {
        return None;
    }
    let qualname = word(layout.code_qualname)?;
    let name = text(layout, qualname, &mut read)
        .or_else(|| text(layout, word(layout.code_name)?, &mut read))?;
    let filename = text(layout, word(layout.code_filename)?, &mut read)?;
    let linetable = bytes(layout, word(layout.code_linetable)?, &mut read)?;
    Some(CodeInfo {
        name,
        filename,
        first_line,
        linetable,
    })
}

/// The compact `str` at `addr`, its first `MAX_TEXT` characters.
///
/// A `str` holds code points, not UTF-16 or UTF-32: lone surrogates are
/// valid in it (`surrogateescape` puts one for each byte of a file name
/// that is not UTF-8), so each is shown as U+FFFD rather than failing the
/// whole string, and two surrogates in a row stay two characters.
fn text(
    layout: &Layout,
    addr: u64,
    read: &mut impl FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Option<String> {
    if addr == 0 {
        return None;
    }
    // The fields every string has (a short ASCII string's whole object
    // may end right after them).
    let header = read(addr, layout.ascii_data as usize)?;
    let length = u64_at(&header, layout.str_length)?;
    let state = u32_at(&header, layout.str_state)?;
    // PyASCIIObject.state: kind bits 2-4, compact bit 5, ascii bit 6
    // (3.11 to 3.13, `cpython/unicodeobject.h`).
    let kind = (state >> 2) & 7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact || !matches!(kind, 1 | 2 | 4) || (ascii && kind != 1) {
        return None;
    }
    let start = if ascii {
        layout.ascii_data
    } else {
        layout.compact_data
    };
    let kind = kind as usize;
    let data = read(
        addr.checked_add(start)?,
        length.min(MAX_TEXT) as usize * kind,
    )?;
    let code_point = |unit: &[u8]| {
        let mut word = [0; 4];
        word[..kind].copy_from_slice(unit);
        char::from_u32(u32::from_le_bytes(word)).unwrap_or(char::REPLACEMENT_CHARACTER)
    };
    Some(data.chunks_exact(kind).map(code_point).collect())
}

/// The contents of the `bytes` object at `addr`.
fn bytes(
    layout: &Layout,
    addr: u64,
    read: &mut impl FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    if addr == 0 {
        return None;
    }
    let header = read(addr, layout.bytes_data as usize)?;
    let size = u64_at(&header, layout.bytes_size)?;
    if size > MAX_LINETABLE {
        return None;
    }
    read(addr.checked_add(layout.bytes_data)?, size as usize)
}

fn u64_at(bytes: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The line of code unit `instr` of a code object starting at
/// `first_line` with location table `table` (the format of CPython 3.11
/// and 3.12, `Objects/locations.md`); `None` where the table gives no
/// line or ends first.
///
/// Each entry covers 1 to 8 code units: its first byte has the top bit
/// set, the entry's code in bits 3-6 and its length - 1 in bits 0-2.
/// Codes 0-9 (short forms) keep the line; 10-12 add `code - 10`; 13 and
/// 14 add a signed varint (14 is followed by end line and columns); 15
/// has no location.
pub fn line_of(table: &[u8], first_line: i32, instr: u32) -> Option<i32> {
    let mut bytes = table.iter().copied();
    let mut line = first_line;
    let mut start: u32 = 0;
    while let Some(first) = bytes.next() {
        if first & 0x80 == 0 {
            return None; // not the start of an entry: a corrupt table
        }
        let code = (first >> 3) & 15;
        let len = u32::from(first & 7) + 1;
        let here = match code {
            0..=9 => {
                bytes.next()?;
                Some(line)
            }
            10..=12 => {
                line = line.saturating_add(i32::from(code) - 10);
                bytes.next()?;
                bytes.next()?;
                Some(line)
            }
            13 => {
                line = line.saturating_add(signed_varint(&mut bytes)?);
                Some(line)
            }
            14 => {
                line = line.saturating_add(signed_varint(&mut bytes)?);
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
                Some(line)
            }
            _ => None,
        };
        if instr < start.saturating_add(len) {
            return here;
        }
        start = start.saturating_add(len);
    }
    None
}

/// A varint of the location table: 6 bits per byte, low first, bit 6 set
/// on every byte but the last.
fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u32> {
    let mut value = 0u32;
    let mut shift = 0;
    loop {
        let byte = bytes.next()?;
        value |= u32::from(byte & 63).checked_shl(shift)?;
        if byte & 64 == 0 {
            return Some(value);
        }
        shift += 6;
    }
}

/// A signed varint: the sign in the low bit.
fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i32> {
    let value = varint(bytes)?;
    let magnitude = i32::try_from(value >> 1).ok()?;
    Some(if value & 1 != 0 {
        -magnitude
    } else {
        magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn versions_from_hex() {
        assert_eq!(version_from_hex(0x030b07f0), (3, 11));
        assert_eq!(version_from_hex(0x030c00f0), (3, 12));
        assert!(layout(3, 11).is_some());
        assert!(layout(3, 12).is_some());
        assert!(layout(3, 10).is_none());
        assert!(layout(3, 13).is_none(), "3.13 describes itself");
    }

    /// A 3.13 `_Py_DebugOffsets` with the values 3.13.0 has on x86-64.
    fn debug_offsets_3_13() -> Vec<u8> {
        let mut bytes = vec![0; DEBUG_OFFSETS_SIZE];
        bytes[..8].copy_from_slice(DEBUG_COOKIE);
        let mut set =
            |at: usize, value: u64| bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        set(8, 0x030d00f0);
        for (at, value) in [
            (40, 632),
            (72, 7344),
            (168, 8),
            (184, 72),
            (192, 152),
            (232, 8),
            (240, 0),
            (248, 56),
            (264, 70),
            (280, 112),
            (288, 120),
            (296, 128),
            (304, 136),
            (312, 68),
            (344, 200),
            (520, 16),
            (528, 32),
            (544, 32),
            (552, 16),
            (560, 40),
        ] {
            set(at, value);
        }
        bytes
    }

    #[test]
    fn debug_offsets_of_3_13_give_its_layout() {
        let layout = from_debug_offsets(&debug_offsets_3_13(), 0x030d00f0).unwrap();
        assert_eq!(layout.kernel.interp_threads, 7344);
        assert_eq!(layout.kernel.tstate_frame, 72);
        assert_eq!(layout.kernel.frame_entry, 70);
        assert_eq!(layout.kernel.code_units, 200);
        assert_eq!(
            layout.flags,
            PythonProcess::ENTRY_SHIM | PythonProcess::FRAME_IN_TSTATE
        );
        assert_eq!((layout.ascii_data, layout.compact_data), (40, 56));
        assert_eq!(layout.code_first_line, 68);
    }

    #[test]
    fn debug_offsets_are_checked() {
        let good = debug_offsets_3_13();
        let mut bad = good.clone();
        bad[0] = b'y';
        assert_eq!(
            from_debug_offsets(&bad, 0x030d00f0),
            Err(DebugOffsetsError::NoCookie)
        );
        assert!(matches!(
            from_debug_offsets(&good, 0x030e00f0),
            Err(DebugOffsetsError::Version { .. })
        ));
        let mut threaded = good.clone();
        threaded[16] = 1;
        assert_eq!(
            from_debug_offsets(&threaded, 0x030d00f0),
            Err(DebugOffsetsError::FreeThreaded)
        );
        // Offsets the kernel walk cannot reach, or a header too large
        // to read (a tenant writes its own debug offsets).
        for (at, value) in [
            (248, 200u64),
            (264, 80),
            (560, u64::MAX - 8),
            (528, 1 << 40),
        ] {
            let mut far = good.clone();
            far[at..at + 8].copy_from_slice(&value.to_le_bytes());
            assert!(
                matches!(
                    from_debug_offsets(&far, 0x030d00f0),
                    Err(DebugOffsetsError::Malformed(_))
                ),
                "{at}: {value}"
            );
        }
        assert!(matches!(
            from_debug_offsets(&good[..100], 0x030d00f0),
            Err(DebugOffsetsError::Malformed(_))
        ));
        // A patch release shares the layout.
        assert!(from_debug_offsets(&good, 0x030d05f0).is_ok());
    }

    /// Lines of every code unit, from CPython 3.11 itself, of code
    /// objects with loops, a jump of 300 lines (the long form), nested
    /// functions, a lambda, a comprehension and a `try`: first line, line
    /// table in hex, then the line of each code unit (`co_positions()`),
    /// `-` for none. The file's header holds the script that wrote it.
    const SOURCE_LINES: &str = include_str!("cpython_lines.txt");

    #[test]
    fn lines_match_cpython_s_own() {
        let mut checked = 0;
        for entry in SOURCE_LINES.lines().filter(|l| !l.starts_with('#')) {
            let mut fields = entry.split(' ');
            let first: i32 = fields.next().unwrap().parse().unwrap();
            let table = hex(fields.next().unwrap());
            for (instr, want) in fields.enumerate() {
                let want = want.parse::<i32>().ok();
                assert_eq!(
                    line_of(&table, first, instr as u32),
                    want,
                    "code unit {instr} of {entry}"
                );
                checked += 1;
            }
            assert_eq!(line_of(&table, first, 100_000), None);
        }
        assert!(checked > 100, "{checked}");
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_corrupt_table_gives_no_line() {
        assert_eq!(line_of(&[0x01, 0x02], 1, 0), None);
        assert_eq!(line_of(&[0xf0], 1, 0), None); // 14 without its varints
        assert_eq!(line_of(&[], 1, 0), None);
        // A varint longer than 32 bits.
        assert_eq!(
            line_of(&[0xe8, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x01], 1, 0),
            None
        );
        // Huge deltas saturate rather than overflow.
        let jump = [0xe8, 0x7e, 0x7f, 0x7f, 0x7f, 0x7f, 0x07];
        let table: Vec<u8> = jump.iter().copied().cycle().take(jump.len() * 4).collect();
        assert_eq!(line_of(&table, i32::MAX - 5, 3), Some(i32::MAX));
    }

    /// A fake process memory: objects laid out as 3.11 lays them out.
    struct Memory(HashMap<u64, Vec<u8>>);

    impl Memory {
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            self.0.iter().find_map(|(&start, bytes)| {
                let at = usize::try_from(addr.checked_sub(start)?).ok()?;
                Some(bytes.get(at..at + len)?.to_vec())
            })
        }
    }

    fn object(fields: &[(u64, &[u8])], size: usize) -> Vec<u8> {
        let mut bytes = vec![0; size];
        for (at, value) in fields {
            let at = *at as usize;
            bytes[at..at + value.len()].copy_from_slice(value);
        }
        bytes
    }

    fn string(layout: &Layout, text: &str) -> Vec<u8> {
        let ascii = text.is_ascii();
        let chars: Vec<char> = text.chars().collect();
        let kind: u32 = match chars.iter().map(|&c| c as u32).max().unwrap_or(0) {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            _ => 4,
        };
        let state = (kind << 2) | (1 << 5) | if ascii { 1 << 6 } else { 0 };
        let data: Vec<u8> = chars
            .iter()
            .flat_map(|&c| (c as u32).to_le_bytes()[..kind as usize].to_vec())
            .collect();
        let start = if ascii {
            layout.ascii_data
        } else {
            layout.compact_data
        };
        let mut bytes = object(
            &[
                (layout.str_length, &(chars.len() as u64).to_le_bytes()),
                (layout.str_state, &state.to_le_bytes()),
            ],
            start as usize,
        );
        bytes.extend(data);
        bytes
    }

    #[test]
    fn code_objects_read_as_3_11_lays_them_out() {
        let layout = layout(3, 11).unwrap();
        let (code, qualname, filename, table) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
        let mut memory = Memory(HashMap::new());
        memory.0.insert(
            code,
            object(
                &[
                    (layout.code_first_line, &7i32.to_le_bytes()),
                    (layout.code_qualname, &qualname.to_le_bytes()),
                    (layout.code_name, &qualname.to_le_bytes()),
                    (layout.code_filename, &filename.to_le_bytes()),
                    (layout.code_linetable, &table.to_le_bytes()),
                ],
                usize::from(layout.kernel.code_units),
            ),
        );
        memory.0.insert(qualname, string(&layout, "Parser.héllo"));
        memory.0.insert(filename, string(&layout, "/app/π/lib.py"));
        let mut linetable = object(
            &[(layout.bytes_size, &3u64.to_le_bytes())],
            layout.bytes_data as usize,
        );
        linetable.extend([0x80, 0x00, 0x00]);
        memory.0.insert(table, linetable);
        let info = read_code(&layout, code, |a, l| memory.read(a, l)).unwrap();
        assert_eq!(
            info,
            CodeInfo {
                name: "Parser.héllo".into(),
                filename: "/app/π/lib.py".into(),
                first_line: 7,
                linetable: vec![0x80, 0x00, 0x00],
            }
        );
        // Something else at the address: not a code object.
        assert_eq!(read_code(&layout, qualname, |a, l| memory.read(a, l)), None);
        assert_eq!(read_code(&layout, 0x9000, |a, l| memory.read(a, l)), None);
    }

    #[test]
    fn wide_strings_decode() {
        let layout = layout(3, 11).unwrap();
        for text in ["plain", "naïve", "λx", "emoji 🐍"] {
            let memory = Memory(HashMap::from([(0x10, string(&layout, text))]));
            let read = &mut |a, l| memory.read(a, l);
            assert_eq!(super::text(&layout, 0x10, read).as_deref(), Some(text));
        }
    }

    #[test]
    fn long_and_surrogate_strings_decode() {
        let layout = layout(3, 12).unwrap();
        let long = "é".repeat(1500);
        let memory = Memory(HashMap::from([(0x10, string(&layout, &long))]));
        let read = &mut |a, l| memory.read(a, l);
        assert_eq!(
            super::text(&layout, 0x10, read),
            Some("é".repeat(MAX_TEXT as usize))
        );
        // "a\udcff\ud83d\udc0d" (UCS2): three code points that are lone
        // surrogates, not a pair.
        let state: u32 = (2 << 2) | (1 << 5);
        let mut bytes = object(
            &[
                (layout.str_length, &4u64.to_le_bytes()),
                (layout.str_state, &state.to_le_bytes()),
            ],
            layout.compact_data as usize,
        );
        for unit in [0x61u16, 0xdcff, 0xd83d, 0xdc0d] {
            bytes.extend(unit.to_le_bytes());
        }
        let memory = Memory(HashMap::from([(0x10, bytes)]));
        let read = &mut |a, l| memory.read(a, l);
        assert_eq!(
            super::text(&layout, 0x10, read).as_deref(),
            Some("a\u{fffd}\u{fffd}\u{fffd}")
        );
    }

    /// A code object of CPython 3.11.7 and what it points to, as
    /// `ctypes.string_at` dumped them (address, bytes); its file name
    /// has a byte that is not UTF-8 (`surrogateescape`). Written by:
    ///
    /// ```text
    /// import ctypes
    /// SOURCE = "class Parser:\n    def parse(self, text):\n        return text.split()\n"
    /// ns = {}
    /// exec(compile(SOURCE, "/srv/caf\udce9/parser.py", "exec"), ns)
    /// code = ns["Parser"].parse.__code__
    /// def obj(o, n):
    ///     print(f"        ({id(o):#x}, \"{ctypes.string_at(id(o), n).hex()}\"),")
    /// obj(code, 184)
    /// obj(code.co_qualname, 48 + len(code.co_qualname) + 1)
    /// obj(code.co_name, 48 + len(code.co_name) + 1)
    /// obj(code.co_filename, 72 + 2 * (len(code.co_filename) + 1))
    /// obj(code.co_linetable, 32 + len(code.co_linetable) + 1)
    /// print(hex(id(code)))
    /// ```
    const REAL_3_11: &[(u64, &str)] = &[
        (0x7f3c705cb2d0, "0300000000000000009be4703c7f0000150000000000000090197f703c7f000070097f703c7f0000a808f5703c7f000003000000f8ff00000200000000000000000000000200000002000000020000000200000000000000000000000000000000cf3c703c7f000000217f703c7f000030637b703c7f0000f09d64703c7f0000f0d83c703c7f000070d93c703c7f0000000000000000000000000000000000000000000000000000000000003c7f00000000000000000000"),
        (0x7f3c703cd8f0, "03000000000000006018e6703c7f00000c00000000000000ffffffffffffffffe40000000000000000000000000000005061727365722e706172736500"),
        (0x7f3c70649df0, "12000000000000006018e6703c7f0000050000000000000081d8790d949a97ffe5000000000000000000000000000000706172736500"),
        (0x7f3c707b6330, "04000000000000006018e6703c7f00001300000000000000e8d4aeb1e23be944a82c81703c7f000000000000000000000000000000000000000000000000000000000000000000002f007300720076002f00630061006600e9dc2f007000610072007300650072002e00700079000000"),
        (0x7f3c703cd970, "02000000000000004086e4703c7f000010000000000000002c452c6b559a56cb8000d80f138f7a8a7a897c8c7cd0081b00"),
    ];

    #[test]
    fn a_real_3_11_code_object_reads() {
        let memory = Memory(
            REAL_3_11
                .iter()
                .map(|&(at, bytes)| (at, hex(bytes)))
                .collect(),
        );
        let layout = layout(3, 11).unwrap();
        let info = read_code(&layout, 0x7f3c705cb2d0, |a, l| memory.read(a, l)).unwrap();
        assert_eq!(info.name, "Parser.parse");
        assert_eq!(info.filename, "/srv/caf\u{fffd}/parser.py");
        assert_eq!(info.first_line, 2);
        assert_eq!(line_of(&info.linetable, info.first_line, 0), Some(2));
    }
}
