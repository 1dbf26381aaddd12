//! Reads the running kernel's machine code to tell whether its
//! `copy_from_user_nofault()` carries the fix for the
//! `bpf_probe_read_user()` freeze bug (see [`super::kernel`] for the bug and
//! when this check runs).
//!
//! `/proc/kallsyms` gives the addresses of `copy_from_user_nofault` and
//! `nmi_uaccess_okay` ([`parse_kallsyms_line`]). The function's bytes come
//! from `/proc/kcore`, an ELF core file as large as the kernel's address
//! space: the `object` crate parses its program headers, read on demand
//! with `pread`, and only the function's bytes are read besides. The fix
//! adds a `call rel32` to `nmi_uaccess_okay`, and the unpatched function
//! makes no such call ([`x86_64_calls_function`]).
//!
//! Everything here needs root; kcore also needs CONFIG_PROC_KCORE and no
//! lockdown. Only x86-64 code is decoded.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use object::elf::{FileHeader64, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use super::kernel::FixEvidence;
use crate::pread::PreadFile;

/// The kernel symbol table: the address, type and name of each symbol.
pub const KALLSYMS_PATH: &str = "/proc/kallsyms";
/// The kernel's memory as an ELF core file. It is readable by root unless
/// the kernel is locked down.
pub const KCORE_PATH: &str = "/proc/kcore";

/// Why the kernel's code could not be inspected. The check then falls back
/// to the version alone, so these are only logged; each message carries
/// its cause and names the fix.
#[derive(Debug, thiserror::Error)]
pub enum CodeCheckError {
    /// A file could not be opened or read.
    #[error("cannot read {}: {error}; run hostprof as root", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// kallsyms lacks one of the symbols, or shows no addresses.
    #[error(
        "copy_from_user_nofault or nmi_uaccess_okay is missing from {KALLSYMS_PATH}, or kernel \
         addresses are hidden: run hostprof as root, or set kernel.kptr_restrict=0"
    )]
    SymbolsMissing,
    /// The core file's ELF headers could not be parsed.
    #[error(
        "{} is not a readable ELF core file ({error}); the kernel may be locked down \
         (boot without lockdown=confidentiality)",
        path.display()
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What `object` reported.
        error: object::Error,
    },
    /// No segment of the core file holds the address.
    #[error(
        "{}: no segment maps kernel address {addr:#x}; kernel text is missing from the core \
         file, so the code cannot be checked",
        path.display()
    )]
    Unmapped {
        /// The file.
        path: PathBuf,
        /// The kernel address looked for.
        addr: u64,
    },
}

/// How many bytes of `copy_from_user_nofault()` are read when its size is
/// unknown. In patched builds the call to `nmi_uaccess_okay()` comes within
/// the first ~0x40 bytes.
const DEFAULT_CODE_LEN: u64 = 256;
/// The most bytes read whatever size kallsyms suggests.
const MAX_CODE_LEN: u64 = 1024;

/// Inspects the running kernel's `copy_from_user_nofault()` for the fix.
///
/// Addresses come from `/proc/kallsyms` and code from `/proc/kcore`.
/// - Returns [`FixEvidence::Patched`] or [`FixEvidence::Unpatched`] on
///   x86-64.
/// - Returns [`FixEvidence::NotInspected`] on other architectures.
/// - Returns an error when a file cannot be read or kernel addresses are
///   hidden.
pub fn inspect_running_kernel() -> Result<FixEvidence, CodeCheckError> {
    if std::env::consts::ARCH != "x86_64" {
        return Ok(FixEvidence::NotInspected);
    }
    let symbols = KernelSymbols::read(Path::new(KALLSYMS_PATH))?;
    let (Some(function), Some(callee)) = (symbols.copy_from_user_nofault, symbols.nmi_uaccess_okay)
    else {
        return Err(CodeCheckError::SymbolsMissing);
    };
    let len = symbols
        .function_end
        .map(|end| end.saturating_sub(function).clamp(1, MAX_CODE_LEN))
        .unwrap_or(DEFAULT_CODE_LEN);
    let code = read_kcore(Path::new(KCORE_PATH), function, len)?;
    let patched = x86_64_calls_function(&code, function, callee);
    log::debug!(
        "copy_from_user_nofault at {function:#x} ({} bytes read) {} nmi_uaccess_okay at {callee:#x}",
        code.len(),
        if patched { "calls" } else { "does not call" }
    );
    Ok(if patched {
        FixEvidence::Patched
    } else {
        FixEvidence::Unpatched
    })
}

/// One `/proc/kallsyms` line split into address, type letter and name,
/// e.g. `(0xffffffff815987b0, 'T', "copy_from_user_nofault")`. The module
/// suffix (`\t[ext4]`) is dropped. An unprivileged reader sees 0 for every
/// address.
///
/// The kernel writes each line as `%px %c %s` (and `\t[%s]` for a
/// module): fields split at single ASCII separators rather than with
/// `split_whitespace` and its Unicode checks (about a third faster over
/// this VM's 121,000 lines, 10–19 ms against 14–28 ms; reading them costs
/// the kernel ~65 ms).
pub fn parse_kallsyms_line(line: &str) -> Option<(u64, char, &str)> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (address, rest) = line.split_once(' ')?;
    let address = u64::from_str_radix(address, 16).ok()?;
    let (kind, rest) = rest.split_once(' ')?;
    let mut kind = kind.chars();
    let kind_char = kind.next()?;
    if kind.next().is_some() {
        return None;
    }
    let name = rest
        .split(['\t', ' '])
        .next()
        .filter(|name| !name.is_empty())?;
    Some((address, kind_char, name))
}

/// The kallsyms entries the code check needs.
#[derive(Debug, Default, PartialEq, Eq)]
struct KernelSymbols {
    copy_from_user_nofault: Option<u64>,
    /// The next higher symbol address after `copy_from_user_nofault`, which
    /// bounds its code.
    function_end: Option<u64>,
    nmi_uaccess_okay: Option<u64>,
}

impl KernelSymbols {
    fn read(path: &Path) -> Result<Self, CodeCheckError> {
        let read_error = |error| CodeCheckError::Read {
            path: path.to_owned(),
            error,
        };
        let reader = BufReader::new(File::open(path).map_err(read_error)?);
        let mut symbols = Self::default();
        for line in reader.lines() {
            symbols.add(&line.map_err(read_error)?);
            if symbols.complete() {
                break;
            }
        }
        Ok(symbols)
    }

    /// Takes in one kallsyms line. Zero addresses (hidden pointers) are
    /// ignored.
    fn add(&mut self, line: &str) {
        let Some((address, kind, name)) = parse_kallsyms_line(line) else {
            return;
        };
        if address == 0 {
            return;
        }
        if let Some(start) = self.copy_from_user_nofault {
            if address > start && self.function_end.is_none_or(|end| address < end) {
                self.function_end = Some(address);
            }
        }
        if !matches!(kind, 't' | 'T') {
            return;
        }
        match name {
            "copy_from_user_nofault" => self.copy_from_user_nofault = Some(address),
            "nmi_uaccess_okay" => self.nmi_uaccess_okay = Some(address),
            _ => {}
        }
    }

    fn complete(&self) -> bool {
        self.copy_from_user_nofault.is_some()
            && self.function_end.is_some()
            && self.nmi_uaccess_okay.is_some()
    }
}

/// Whether x86-64 machine code loaded at `code_addr` contains a direct
/// `call rel32` (opcode E8) to `callee`.
///
/// Every E8 byte is tried as an instruction start. A false match would need
/// the four bytes after a stray E8 to encode this exact target, which is
/// negligible.
///
/// Besides `callee` itself, targets up to 16 bytes before it and 4 bytes
/// after it also count:
/// - before: call-depth tracking (`retbleed=stuff`) redirects direct calls
///   to a thunk in the callee's padding;
/// - after: with IBT, a call may skip the 4-byte ENDBR64.
pub fn x86_64_calls_function(code: &[u8], code_addr: u64, callee: u64) -> bool {
    code.windows(5).enumerate().any(|(at, insn)| {
        if insn[0] != 0xe8 {
            return false;
        }
        let rel = i32::from_le_bytes([insn[1], insn[2], insn[3], insn[4]]);
        let next = code_addr.wrapping_add(at as u64 + 5);
        let target = next.wrapping_add(rel as i64 as u64);
        target >= callee.wrapping_sub(16) && target <= callee.wrapping_add(4)
    })
}

/// Reads up to `len` bytes of kernel memory at virtual address `addr` from
/// an ELF64 core file such as `/proc/kcore`. The read stops at the end of
/// the segment holding `addr`.
fn read_kcore(path: &Path, addr: u64, len: u64) -> Result<Vec<u8>, CodeCheckError> {
    let read_error = |error| CodeCheckError::Read {
        path: path.to_owned(),
        error,
    };
    let format_error = |error| CodeCheckError::Format {
        path: path.to_owned(),
        error,
    };
    let file = PreadFile::open(path).map_err(read_error)?;
    let header = FileHeader64::<Endianness>::parse(&file).map_err(format_error)?;
    let endian = header.endian().map_err(format_error)?;
    let segments = header
        .program_headers(endian, &file)
        .map_err(format_error)?;
    for segment in segments {
        if segment.p_type(endian) != PT_LOAD {
            continue;
        }
        let Some((offset, size)) = segment_file_range(
            segment.p_offset(endian),
            segment.p_vaddr(endian),
            segment.p_filesz(endian),
            addr,
            len,
        ) else {
            continue;
        };
        let size = usize::try_from(size).expect("at most `len` bytes");
        let mut code = vec![0u8; size];
        file.read_exact_at(&mut code, offset).map_err(read_error)?;
        return Ok(code);
    }
    Err(CodeCheckError::Unmapped {
        path: path.to_owned(),
        addr,
    })
}

/// For a `PT_LOAD` segment with file offset `offset`, virtual address
/// `vaddr` and `filesz` bytes in the file: if the segment holds `addr`,
/// returns the file offset of `addr` and how many of the `len` bytes the
/// segment holds.
fn segment_file_range(
    offset: u64,
    vaddr: u64,
    filesz: u64,
    addr: u64,
    len: u64,
) -> Option<(u64, u64)> {
    let skip = addr.checked_sub(vaddr)?;
    if skip >= filesz {
        return None;
    }
    Some((offset.checked_add(skip)?, len.min(filesz - skip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_lines() {
        assert_eq!(
            parse_kallsyms_line("ffffffff815987b0 T copy_from_user_nofault"),
            Some((0xffff_ffff_8159_87b0, 'T', "copy_from_user_nofault"))
        );
        assert_eq!(
            parse_kallsyms_line("ffffffffc0a01000 t ext4_fill_super\t[ext4]"),
            Some((0xffff_ffff_c0a0_1000, 't', "ext4_fill_super"))
        );
        assert_eq!(
            parse_kallsyms_line("0000000000000000 T nmi_uaccess_okay"),
            Some((0, 'T', "nmi_uaccess_okay"))
        );
        assert_eq!(
            parse_kallsyms_line("ffffffff81000000 W weak_one\n"),
            Some((0xffff_ffff_8100_0000, 'W', "weak_one"))
        );
        assert_eq!(parse_kallsyms_line("ffffffff81000000 T \n"), None);
        assert_eq!(parse_kallsyms_line("garbage"), None);
        assert_eq!(parse_kallsyms_line("ffffffff81000000 TT x"), None);
    }

    #[test]
    fn kallsyms_collects_needed_symbols() {
        let mut symbols = KernelSymbols::default();
        for line in [
            "ffffffff81343910 T nmi_uaccess_okay",
            "ffffffff815987a0 t __cfi_copy_from_user_nofault",
            "ffffffff815987b0 T copy_from_user_nofault",
            "ffffffff815988a0 t __cfi_copy_to_user_nofault",
            "ffffffff815988b0 T copy_to_user_nofault",
        ] {
            symbols.add(line);
        }
        assert_eq!(
            symbols,
            KernelSymbols {
                copy_from_user_nofault: Some(0xffff_ffff_8159_87b0),
                function_end: Some(0xffff_ffff_8159_88a0),
                nmi_uaccess_okay: Some(0xffff_ffff_8134_3910),
            }
        );
        assert!(symbols.complete());

        // Hidden addresses (kptr_restrict) yield nothing.
        let mut hidden = KernelSymbols::default();
        hidden.add("0000000000000000 T copy_from_user_nofault");
        hidden.add("0000000000000000 T nmi_uaccess_okay");
        assert_eq!(hidden, KernelSymbols::default());
    }

    /// Encodes `call target` as if placed at `at`.
    fn call(at: u64, target: u64) -> [u8; 5] {
        let rel = target.wrapping_sub(at + 5) as i64 as i32;
        let mut insn = [0xe8, 0, 0, 0, 0];
        insn[1..].copy_from_slice(&rel.to_le_bytes());
        insn
    }

    #[test]
    fn finds_call_to_nmi_uaccess_okay() {
        let base = 0xffff_ffff_8159_87b0u64;
        let callee = 0xffff_ffff_8134_3910u64; // below: negative rel32
        let fentry = 0xffff_ffff_8107_1200u64;

        // Shaped like a patched build: call __fentry__, a bounds check,
        // then the call to nmi_uaccess_okay and `test al, al`.
        let mut code = Vec::new();
        code.extend_from_slice(&call(base, fentry));
        code.extend_from_slice(&[0x48, 0xb8, 0x00, 0xf0, 0xff, 0xff, 0xff, 0x7f, 0, 0]); // movabs
        code.extend_from_slice(&[0x48, 0x39, 0xd0, 0x73, 0x0c]); // cmp; jae
        code.extend_from_slice(&[0x49, 0x89, 0xfd]); // mov r13, rdi
        let at = base + code.len() as u64;
        code.extend_from_slice(&call(at, callee));
        code.extend_from_slice(&[0x84, 0xc0, 0x74, 0x46]); // test al, al; je
        assert!(x86_64_calls_function(&code, base, callee));

        // The same code without that call: unpatched.
        let unpatched: Vec<u8> = code[..code.len() - 9]
            .iter()
            .copied()
            .chain([0x84, 0xc0, 0x74, 0x46])
            .collect();
        assert!(!x86_64_calls_function(&unpatched, base, callee));
        // Same bytes, but judged at another load address: no match.
        assert!(!x86_64_calls_function(&code, base + 0x1000, callee));

        // Call-depth thunk in the callee's padding, and an ENDBR skip.
        assert!(x86_64_calls_function(
            &call(base, callee - 16),
            base,
            callee
        ));
        assert!(x86_64_calls_function(&call(base, callee + 4), base, callee));
        assert!(!x86_64_calls_function(
            &call(base, callee - 17),
            base,
            callee
        ));
        assert!(!x86_64_calls_function(
            &call(base, callee + 5),
            base,
            callee
        ));

        // A forward call (positive rel32) and truncated input.
        let high = base + 0x4000;
        assert!(x86_64_calls_function(&call(base, high), base, high));
        assert!(!x86_64_calls_function(&call(base, high)[..4], base, high));
        assert!(!x86_64_calls_function(&[], base, high));
    }

    /// Builds a minimal ELF64 core file with the given `(vaddr, bytes)`
    /// PT_LOAD segments, plus a PT_NOTE first as in /proc/kcore.
    fn fake_kcore(segments: &[(u64, &[u8])]) -> Vec<u8> {
        let phnum = segments.len() + 1;
        let mut data_offset = 64 + 56 * phnum as u64;
        let mut file = vec![0u8; 64];
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 2; // ELFCLASS64
        file[5] = 1; // ELFDATA2LSB
        file[6] = 1; // EV_CURRENT
        file[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        file[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        file[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes()); // e_phnum
        let mut note = [0u8; 56];
        note[..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        file.extend_from_slice(&note);
        for (vaddr, bytes) in segments {
            let mut phdr = [0u8; 56];
            phdr[..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            phdr[0x08..0x10].copy_from_slice(&data_offset.to_le_bytes());
            phdr[0x10..0x18].copy_from_slice(&vaddr.to_le_bytes());
            phdr[0x20..0x28].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            phdr[0x28..0x30].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            file.extend_from_slice(&phdr);
            data_offset += bytes.len() as u64;
        }
        for (_, bytes) in segments {
            file.extend_from_slice(bytes);
        }
        file
    }

    #[test]
    fn reads_kernel_bytes_from_core_file() {
        let low: Vec<u8> = (0..64).collect();
        let text: Vec<u8> = (0..=255).rev().collect();
        let image = fake_kcore(&[
            (0xffff_8880_0000_0000, &low),
            (0xffff_ffff_8100_0000, &text),
        ]);
        let path = temp_path("kcore");
        std::fs::write(&path, image).unwrap();

        let got = read_kcore(&path, 0xffff_ffff_8100_0010, 4).unwrap();
        assert_eq!(got, [239, 238, 237, 236]);
        // Clamped at the end of the segment.
        let tail = read_kcore(&path, 0xffff_ffff_8100_00fe, 16).unwrap();
        assert_eq!(tail, [1, 0]);
        let first = read_kcore(&path, 0xffff_8880_0000_0000, 3).unwrap();
        assert_eq!(first, [0, 1, 2]);
        // Unmapped address.
        let err = read_kcore(&path, 0xffff_ffff_a000_0000, 4).unwrap_err();
        assert!(
            matches!(
                err,
                CodeCheckError::Unmapped {
                    addr: 0xffff_ffff_a000_0000,
                    ..
                }
            ),
            "{err:?}"
        );

        std::fs::write(&path, [b'x'; 64]).unwrap();
        let err = read_kcore(&path, 0xffff_ffff_8100_0010, 4).unwrap_err();
        assert!(matches!(err, CodeCheckError::Format { .. }), "{err:?}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reads_core_file_with_extended_program_header_count() {
        // With 0xffff or more program headers, e_phnum is PN_XNUM and the
        // count is in section header 0's sh_info.
        let text: Vec<u8> = (0..32).collect();
        let mut image = fake_kcore(&[(0xffff_ffff_8100_0000, &text)]);
        let shoff = image.len() as u64;
        let mut section_0 = [0u8; 64];
        section_0[0x2c..0x30].copy_from_slice(&2u32.to_le_bytes()); // sh_info
        image.extend_from_slice(&section_0);
        image[0x28..0x30].copy_from_slice(&shoff.to_le_bytes()); // e_shoff
        image[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes()); // e_phnum
        image[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        let path = temp_path("xnum");
        std::fs::write(&path, image).unwrap();
        let got = read_kcore(&path, 0xffff_ffff_8100_0004, 2);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got.unwrap(), [4, 5]);

        let err = read_kcore(&path, 0xffff_ffff_8100_0004, 2).unwrap_err();
        assert!(matches!(err, CodeCheckError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("run hostprof as root"), "{err}");
    }

    /// A path in the temporary directory unique to this test process and
    /// thread.
    fn temp_path(what: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "hostprof-kernel-test-{what}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    #[test]
    fn running_kernel_symbols_when_visible() {
        // Environment-dependent: only checked when kallsyms shows addresses.
        let Ok(symbols) = KernelSymbols::read(Path::new(KALLSYMS_PATH)) else {
            return;
        };
        if let (Some(start), Some(end)) = (symbols.copy_from_user_nofault, symbols.function_end) {
            assert!(end > start && end - start < 4096, "{start:#x}..{end:#x}");
        }
    }
}
