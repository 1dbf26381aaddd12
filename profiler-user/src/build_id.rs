//! GNU build ids of ELF files: read from their notes with bounded `pread`s,
//! and written as hex.
//!
//! The files are other processes' (a tenant's: they may be truncated while
//! read, their notes may claim any length), so only note sections and
//! segments are read — not the symbol tables a full parse reads — and a
//! note's length is checked before it is taken.

use std::fs::File;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, SectionTable};
use object::{Endianness, FileKind};

use crate::pread::PreadFile;

/// The longest build id taken (GNU ld writes 20 bytes, `--build-id=0x…`
/// what it is given): a tenant's note may claim any length.
const MAX_BUILD_ID: usize = 64;

/// Note sections and segments larger than this are not looked through
/// (`.note.gnu.build-id` is 36 bytes; SystemTap's probe notes, the
/// largest real ones, a few tens of KiB).
const MAX_NOTES: u64 = 1 << 20;

/// The build id of the ELF file `file`, from its note sections (or, with
/// none, its note segments); `None` when it has none or is not ELF.
pub(crate) fn read(file: &File) -> Option<Vec<u8>> {
    fn of<Elf: FileHeader<Endian = Endianness>>(reader: &PreadFile) -> Option<Vec<u8>> {
        let header = Elf::parse(reader).ok()?;
        let endian = header.endian().ok()?;
        let sections = header.sections(endian, reader).ok()?;
        if !sections.is_empty() {
            return in_sections(&sections, endian, reader);
        }
        header
            .program_headers(endian, reader)
            .ok()?
            .iter()
            .filter(|segment| segment.p_filesz(endian).into() <= MAX_NOTES)
            .find_map(|segment| {
                let notes = segment.notes(endian, reader).ok()??;
                gnu_build_id(notes, endian)
            })
    }
    let reader = PreadFile::new(file.try_clone().ok()?).ok()?;
    match FileKind::parse(&reader).ok()? {
        FileKind::Elf32 => of::<elf::FileHeader32<Endianness>>(&reader),
        FileKind::Elf64 => of::<elf::FileHeader64<Endianness>>(&reader),
        _ => None,
    }
}

/// The descriptor of the first GNU build id note in `sections`.
pub(crate) fn in_sections<'data, Elf: FileHeader<Endian = Endianness>>(
    sections: &SectionTable<'data, Elf, &'data PreadFile>,
    endian: Endianness,
    reader: &'data PreadFile,
) -> Option<Vec<u8>> {
    sections
        .iter()
        .filter(|section| section.sh_size(endian).into() <= MAX_NOTES)
        .find_map(|section| gnu_build_id(section.notes(endian, reader).ok()??, endian))
}

/// The first GNU build id note of `notes` no longer than [`MAX_BUILD_ID`].
fn gnu_build_id<'data, Elf: FileHeader<Endian = Endianness>>(
    mut notes: object::read::elf::NoteIterator<'data, Elf>,
    endian: Endianness,
) -> Option<Vec<u8>> {
    while let Ok(Some(note)) = notes.next() {
        if note.name() == elf::ELF_NOTE_GNU
            && note.n_type(endian) == elf::NT_GNU_BUILD_ID
            && note.desc().len() <= MAX_BUILD_ID
        {
            return Some(note.desc().to_vec());
        }
    }
    None
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_id_is_the_one_binutils_reads() {
        let own = std::env::current_exe().unwrap();
        let id = read(&File::open(&own).unwrap()).expect("cargo links a build id");
        let out = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&own)
            .output()
            .expect("readelf (binutils: `cargo xtask setup`)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("Build ID: {}", hex(&id))), "{text}");
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0a, 0xff]), "000aff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn not_elf_has_none() {
        let status = File::open("/proc/self/status").unwrap();
        assert_eq!(read(&status), None);
    }
}
