//! Parser for `/proc/<pid>/maps`: pure, no I/O.

use std::path::PathBuf;

/// What backs a mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapPath {
    /// A file, by the path the process sees.
    File(PathBuf),
    /// A file deleted (or replaced) since it was mapped.
    Deleted(PathBuf),
    /// Anonymous memory.
    Anonymous,
    /// A kernel-provided region: `[vdso]`, `[heap]`, `[stack]`, `[anon:name]`, ...
    Pseudo(String),
}

/// One line of a maps file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r` permission.
    pub readable: bool,
    /// `w` permission.
    pub writable: bool,
    /// `x` permission.
    pub executable: bool,
    /// `s` (shared) rather than `p` (private).
    pub shared: bool,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// Device of the file (major, minor).
    pub dev: (u32, u32),
    /// Inode of the file; 0 for anonymous memory.
    pub inode: u64,
    /// What backs the mapping.
    pub path: MapPath,
}

/// A line that is not in the maps format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed /proc/<pid>/maps line ({reason}): {line:?}")]
pub struct MapsParseError {
    /// The offending line.
    pub line: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a whole maps file.
pub fn parse(text: &str) -> Result<Vec<MapEntry>, MapsParseError> {
    parse_selected(text, |_, _| true)
}

/// Parses the lines of a maps file that `keep` selects by their
/// permissions (e.g. `r-xp`) and pathname (empty for anonymous memory),
/// without building the others: most of a process's lines are data a
/// reader of code skips. Every line must still hold the fields.
pub fn parse_selected(
    text: &str,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<Vec<MapEntry>, MapsParseError> {
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields = fields(line)?;
        if keep(fields.perms, fields.path) {
            entries.push(entry(line, &fields)?);
        }
    }
    Ok(entries)
}

/// Parses one maps line, e.g.
/// `7f3c1a000000-7f3c1a021000 r-xp 00002000 fd:01 1234  /usr/lib/libc.so.6`.
#[cfg(test)]
fn parse_line(line: &str) -> Result<MapEntry, MapsParseError> {
    entry(line, &fields(line)?)
}

/// A maps line cut into its fields, unparsed.
struct Fields<'a> {
    range: &'a str,
    perms: &'a str,
    offset: &'a str,
    dev: &'a str,
    inode: &'a str,
    path: &'a str,
}

fn malformed(line: &str, reason: &'static str) -> MapsParseError {
    MapsParseError {
        line: line.to_owned(),
        reason,
    }
}

fn fields(line: &str) -> Result<Fields<'_>, MapsParseError> {
    let mut rest = line;
    let mut field = |what| -> Result<&str, MapsParseError> {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (value, tail) = trimmed.split_at(end);
        if value.is_empty() {
            return Err(malformed(line, what));
        }
        rest = tail;
        Ok(value)
    };
    Ok(Fields {
        range: field("missing address range")?,
        perms: field("missing permissions")?,
        offset: field("missing offset")?,
        dev: field("missing device")?,
        inode: field("missing inode")?,
        path: rest.trim_start(),
    })
}

fn entry(line: &str, fields: &Fields<'_>) -> Result<MapEntry, MapsParseError> {
    let err = |reason| malformed(line, reason);
    let (start, end) = fields
        .range
        .split_once('-')
        .ok_or_else(|| err("bad address range"))?;
    let hex = |s: &str, what| u64::from_str_radix(s, 16).map_err(|_| err(what));
    let start = hex(start, "bad start address")?;
    let end = hex(end, "bad end address")?;
    if end < start {
        return Err(err("range ends before it starts"));
    }
    let perms = fields.perms.as_bytes();
    if perms.len() != 4 {
        return Err(err("permissions are not 4 characters"));
    }
    let (major, minor) = fields
        .dev
        .split_once(':')
        .ok_or_else(|| err("bad device"))?;
    let dev_part = |s: &str| u32::from_str_radix(s, 16).map_err(|_| err("bad device"));

    Ok(MapEntry {
        start,
        end,
        readable: perms[0] == b'r',
        writable: perms[1] == b'w',
        executable: perms[2] == b'x',
        shared: perms[3] == b's',
        file_offset: hex(fields.offset, "bad offset")?,
        dev: (dev_part(major)?, dev_part(minor)?),
        inode: fields.inode.parse().map_err(|_| err("bad inode"))?,
        path: map_path(fields.path),
    })
}

fn map_path(path: &str) -> MapPath {
    if path.is_empty() {
        MapPath::Anonymous
    } else if path.starts_with('[') {
        MapPath::Pseudo(path.to_owned())
    } else if let Some(deleted) = path.strip_suffix(" (deleted)") {
        MapPath::Deleted(deleted.into())
    } else {
        MapPath::File(path.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_mapping() {
        let e = parse_line(
            "7f3c1a028000-7f3c1a19d000 r-xp 00028000 fd:01 2883613                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(e.start, 0x7f3c1a028000);
        assert_eq!(e.end, 0x7f3c1a19d000);
        assert!(e.readable && !e.writable && e.executable && !e.shared);
        assert_eq!(e.file_offset, 0x28000);
        assert_eq!(e.dev, (0xfd, 0x01));
        assert_eq!(e.inode, 2883613);
        assert_eq!(
            e.path,
            MapPath::File("/usr/lib/x86_64-linux-gnu/libc.so.6".into())
        );
    }

    #[test]
    fn pseudo_anonymous_deleted_and_spaces() {
        let vdso = parse_line(
            "7ffd5a3f2000-7ffd5a3f4000 r-xp 00000000 00:00 0                          [vdso]",
        )
        .unwrap();
        assert_eq!(vdso.path, MapPath::Pseudo("[vdso]".into()));
        let anon = parse_line("7f3c1a1f6000-7f3c1a203000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, MapPath::Anonymous);
        let named = parse_line("7f00-7f10 rw-p 00000000 00:00 0   [anon:glibc malloc]").unwrap();
        assert_eq!(named.path, MapPath::Pseudo("[anon:glibc malloc]".into()));
        let deleted = parse_line("55d0-55e0 r-xp 00001000 08:02 42 /tmp/my app (deleted)").unwrap();
        assert_eq!(deleted.path, MapPath::Deleted("/tmp/my app".into()));
        let spaced = parse_line("55d0-55e0 r-xp 00001000 08:02 42 /opt/my app/bin").unwrap();
        assert_eq!(spaced.path, MapPath::File("/opt/my app/bin".into()));
        let shared = parse_line("7f00-7f10 rw-s 00000000 00:05 7 /dev/shm/x").unwrap();
        assert!(shared.shared);
    }

    #[test]
    fn selected_lines_are_parsed_in_order_and_every_line_is_checked() {
        let text = "10-20 r--p 00000000 08:02 42 /bin/app\n\
                    20-30 r-xp 00001000 08:02 42 /bin/app\n\
                    30-40 rw-p 00000000 00:00 0\n\
                    40-50 r-xp 00000000 00:00 0   [vdso]\n";
        let code = parse_selected(text, |perms, _| perms.as_bytes().get(2) == Some(&b'x')).unwrap();
        assert_eq!(
            code,
            vec![
                parse_line("20-30 r-xp 00001000 08:02 42 /bin/app").unwrap(),
                parse_line("40-50 r-xp 00000000 00:00 0   [vdso]").unwrap()
            ]
        );
        let named = parse_selected(text, |_, path| path.starts_with('[')).unwrap();
        assert_eq!(named.len(), 1);
        assert_eq!(
            parse_selected(text, |_, _| true).unwrap(),
            parse(text).unwrap()
        );
        // A line not kept must still be a maps line; one kept must parse.
        assert!(parse_selected("10-20 r--p\n", |_, _| false).is_err());
        assert!(parse_selected("zz-20 r--p 0 00:00 0\n", |_, _| true).is_err());
        assert!(parse_selected("zz-20 r--p 0 00:00 0\n", |_, _| false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for bad in [
            "",
            "zz-10 r-xp 0 00:00 0",
            "10-zz r-xp 0 00:00 0",
            "20-10 r-xp 0 00:00 0",
            "10-20 r-x 0 00:00 0",
            "10-20 r-xp 0 0000 0",
            "10-20 r-xp 0 00:00",
            "10-20 r-xp xyz 00:00 0",
            "10-20 r-xp 0 00:00 -1",
            "1020 r-xp 0 00:00 0",
            "10-20 r-xp 0 gg:00 0",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} must be an error");
        }
        let err = parse("10-20 r-xp 0 00:00 0\nnonsense\n").unwrap_err();
        assert!(err.to_string().contains("nonsense"));
    }

    #[test]
    fn whole_file_skips_blank_lines() {
        let entries = parse("10-20 r-xp 0 00:00 0 /a\n\n20-30 r--p 0 00:00 0 /b\n").unwrap();
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // Cheap deterministic fuzz: every prefix and mutation of real lines.
        let seed = "7f3c1a028000-7f3c1a19d000 r-xp 00028000 fd:01 2883613 /usr/lib/libc.so.6";
        for i in 0..seed.len() {
            let _ = parse_line(&seed[..i]);
            let mut bytes = seed.as_bytes().to_vec();
            for b in [b' ', b'-', b':', b'x', 0xff] {
                bytes[i] = b;
                let _ = parse_line(&String::from_utf8_lossy(&bytes));
            }
        }
    }
}
