//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature):
//! each takes raw bytes, turns them into its parser's input the way the
//! profiler reads them, runs the parser and checks what must hold of its
//! result. Not part of the library's interface.

use std::io::{Seek as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;

use crate::otlp::export::{decode_outcome, grpc_error, http_refusal};
use crate::otlp::retry::{classify, Backoff, Verdict, MAX_SERVER_HINT};
use crate::settings::{AgentSettings, CommandGroup, RecordSettings, Settings};

/// `/proc/<pid>/maps` text (read as UTF-8 text, as the process table
/// reads it): parsing gives entries or an error, and every entry's range
/// is ordered.
pub fn proc_maps(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(entries) = crate::process::maps::parse(text) {
        for entry in entries {
            assert!(entry.start <= entry.end, "{entry:?}");
        }
    }
}

/// A perf map (`/tmp/perf-PID.map`, written by the process profiled),
/// read in two parts as a growing file is: every address found lies in
/// an entry's range, and every name parses as each runtime's.
pub fn perf_map(data: &[u8]) {
    use crate::process::perfmap::{JitFunction, PerfMap, Runtime};
    let text = String::from_utf8_lossy(data);
    let split = text.len() / 2;
    let split = (0..=split)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let mut map = PerfMap::parse(&text[..split]);
    let consumed = usize::try_from(map.consumed()).expect("within the text");
    map.extend(&text[consumed..]);
    for probe in data
        .chunks(8)
        .map(|c| c.iter().fold(0u64, |a, &b| a << 8 | u64::from(b)))
    {
        if let Some(name) = map.find(probe) {
            for runtime in [Runtime::V8, Runtime::Jvm, Runtime::Python, Runtime::Other] {
                let _ = JitFunction::parse(name, runtime);
            }
        }
    }
}

/// A Python process's memory as hostprof reads it (the process writes
/// it: it may lie): the first 584 bytes as a 3.13 `_Py_DebugOffsets`,
/// then code objects read at each 64-byte step of the input with that
/// layout (or 3.11's and 3.12's), addresses being offsets in the input,
/// and the location table of each at every code unit. Nothing may
/// panic, and what is read stays within its caps.
pub fn cpython_objects(data: &[u8]) {
    use crate::process::cpython::{self, DEBUG_OFFSETS_SIZE};
    let read = |addr: u64, len: usize| {
        let start = usize::try_from(addr).ok()?;
        Some(data.get(start..start.checked_add(len)?)?.to_vec())
    };
    let mut layouts = vec![cpython::layout(3, 11), cpython::layout(3, 12)];
    if let Some(offsets) = data.get(..DEBUG_OFFSETS_SIZE) {
        layouts.push(cpython::from_debug_offsets(offsets, 0x030d_00f0).ok());
    }
    for layout in layouts.into_iter().flatten() {
        for addr in (0..data.len() as u64).step_by(64) {
            let Some(code) = cpython::read_code(&layout, addr, read) else {
                continue;
            };
            assert!(code.name.chars().count() <= 1024, "{}", code.name.len());
            assert!(code.filename.chars().count() <= 1024);
            assert!(code.linetable.len() <= 64 << 10);
            // Every code unit the table can cover (8 an entry), up to 512.
            for instr in 0..=(code.linetable.len() as u32 * 8).min(512) {
                let _ = cpython::line_of(&code.linetable, code.first_line, instr);
            }
        }
    }
}

/// `/proc/<pid>/cgroup` text: its paths, and the container they name.
pub fn proc_cgroup(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let paths = crate::container::cgroup_paths(text);
    if let Some(found) = crate::container::parse_proc_cgroup(text) {
        // The id is one a path names (in either case).
        let id = found.id.as_str();
        assert!(paths.iter().any(|p| p.to_ascii_lowercase().contains(id)));
    }
}

/// A `--config` file's text, for both commands: it loads or gives an
/// error; settings that load resolve or give an error, and print
/// (`--print-config`'s form) as YAML that loads back to the same settings.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if data.len() > crate::input::MAX_CONFIG_BYTES {
        return;
    }
    fn one<C: CommandGroup>(text: &str, resolve: impl Fn(&Settings<C>)) {
        let path = Path::new("fuzz.yaml");
        let Ok(settings) = Settings::<C>::from_yaml(text, path) else {
            return;
        };
        let printed = settings.to_yaml();
        let again = Settings::<C>::from_yaml(&printed, path)
            .unwrap_or_else(|err| panic!("printed settings do not load: {err}\n{printed}"));
        assert_eq!(again, settings, "printed:\n{printed}");
        resolve(&settings);
    }
    one::<crate::settings::AgentOnly>(text, |s: &AgentSettings| {
        let _ = s.resolve(|_| None);
    });
    one::<crate::settings::RecordOnly>(text, |s: &RecordSettings| {
        let _ = s.resolve(|_| None);
    });
}

/// An ELF file as the unwind-table loader reads one a process maps: its
/// CFI size, its table and the table's kernel encoding; and as
/// symbolization copies it (`symbolize::sealed`). The bytes are
/// written to an anonymous memory file, read through its descriptor.
pub fn unwind_table(data: &[u8]) {
    let file = memory_file(data);
    // The same file as symbolization copies it: a copy or an error.
    if let Ok(copy) = crate::symbolize::sealed::SealedElf::copy(&file, 1 << 20) {
        assert!(copy.copied() <= data.len() as u64);
    }
    let _ = crate::unwind::build::cfi_size(&file);
    let Ok(built) = crate::unwind::build::from_open_file(&file, "fuzz.elf") else {
        return;
    };
    let rows = built.table.rows();
    assert!(rows.windows(2).all(|pair| pair[0].pc < pair[1].pc));
    if let Ok(encoded) = crate::unwind::encode::encode(&built.table) {
        assert_eq!(encoded.len(), rows.len());
    }
}

/// A file with `data` in it and nothing on disk.
fn memory_file(data: &[u8]) -> std::fs::File {
    // SAFETY: the name is a NUL-terminated string; memfd_create has no
    // other preconditions.
    let fd = unsafe { libc::memfd_create(c"hostprof-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(data).expect("writing a memory file");
    file.rewind().expect("rewinding a memory file");
    file
}

/// A collector's answer to an export, the first byte choosing which kind:
/// an HTTP success body (an `ExportProfilesServiceResponse`), an HTTP
/// failure (status, `Retry-After`, body) or a gRPC status (its
/// `grpc-status`, `grpc-message` and `grpc-status-details-bin` headers).
/// Each becomes what the exporter returns, which the retry rules classify
/// and the outage log prints.
pub fn otlp_response(data: &[u8]) {
    let Some((&kind, mut rest)) = data.split_first() else {
        return;
    };
    let url = "http://collector.fuzz:4318/v1development/profiles".to_owned();
    let error = match kind % 3 {
        0 => match decode_outcome(url, rest, data.len()) {
            Ok(_) => return,
            Err(err) => err,
        },
        1 => {
            let Some(code) = field(&mut rest).get(..2) else {
                return;
            };
            let Ok(status) = reqwest::StatusCode::from_u16(u16::from_le_bytes([code[0], code[1]]))
            else {
                return;
            };
            if status.is_success() {
                return;
            }
            let retry_after = reqwest::header::HeaderValue::from_bytes(field(&mut rest)).ok();
            http_refusal(url, status, retry_after.as_ref(), rest)
        }
        _ => {
            let mut headers = reqwest::header::HeaderMap::new();
            for name in ["grpc-status", "grpc-message"] {
                if let Ok(value) = reqwest::header::HeaderValue::from_bytes(field(&mut rest)) {
                    headers.insert(name, value);
                }
            }
            let Some(status) = tonic::Status::from_header_map(&headers) else {
                return;
            };
            // The details as tonic decodes them from base64. Details that
            // are not base64 make tonic panic, which the exporter catches
            // (its tests cover that) but libFuzzer would count as a crash.
            let status = tonic::Status::with_details(
                status.code(),
                status.message(),
                bytes::Bytes::copy_from_slice(rest),
            );
            grpc_error(url, status)
        }
    };
    let _ = error.to_string();
    if let Verdict::Retry(hint) = classify(&error) {
        let backoff = Backoff::default();
        for attempt in [0, 1, 40] {
            let delay = backoff.delay(attempt, 0.5, hint);
            // The backoff's own delay, or the server's hint up to its cap.
            let hinted = hint.map(|h| h.min(MAX_SERVER_HINT));
            assert!(
                delay <= backoff.max || hinted == Some(delay),
                "{delay:?} {hint:?}"
            );
            assert!(delay <= backoff.max.max(MAX_SERVER_HINT));
        }
    }
}

/// The next length-prefixed field of `data` (one length byte, then up to
/// that many bytes), taken off its front.
fn field<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let Some((&len, rest)) = data.split_first() else {
        return &[];
    };
    let (value, rest) = rest.split_at(usize::from(len).min(rest.len()));
    *data = rest;
    value
}

#[cfg(test)]
mod tests {
    /// A refusal whose `Retry-After` is centuries (the fuzzer's find once
    /// the hint was capped): the delay is the cap.
    #[test]
    fn a_huge_retry_after_is_capped() {
        super::otlp_response(include_bytes!(
            "../../fuzz/corpus/otlp_response/seed-huge-retry-after"
        ));
    }

    /// The perf-map entry point on pseudo-random bytes and on its seed: it
    /// must not panic (a quick stand-in for the fuzzer in unit tests).
    #[test]
    fn perf_map_entry_holds_on_arbitrary_bytes() {
        let seed = include_bytes!("../../fuzz/corpus/perf_map/seed-runtimes");
        super::perf_map(seed);
        let mut state = 1u64;
        for len in 0..3000usize {
            let data: Vec<u8> = (0..len % 97)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    b"0123456789abcdefx :\n*~/JSpy\xff"[(state >> 59) as usize % 26]
                })
                .collect();
            super::perf_map(&data);
        }
    }
}
