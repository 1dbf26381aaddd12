//! JIT code by name: the `/tmp/perf-PID.map` files that Node.js
//! (`--perf-basic-prof`), the JVM (`jcmd PID Compiler.perfmap`), .NET
//! (`DOTNET_PerfMapEnabled=1`) and Python 3.12+ (`-X perf`) write, one
//! line per piece of generated code: `START SIZE NAME`, hexadecimal, with
//! or without `0x`.
//!
//! Pure: [`PerfMap`] is parsed from text the caller read (see
//! `procfs::read_perf_map`), grown from what was appended since
//! ([`PerfMap::extend`]), and answers lookups. What real producers write is
//! tolerated: a half-written last line is left for the next read, a line
//! that does not parse is skipped and counted, and an entry overlapping
//! earlier ones replaces them where they overlap (code moved or freed, the
//! later line is the truth).

use std::collections::BTreeMap;

/// The runtime that wrote a perf map, from the process's executable name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// V8: Node.js, Deno.
    V8,
    /// A Java virtual machine.
    Jvm,
    /// .NET.
    Dotnet,
    /// CPython (3.12+ with `-X perf`).
    Python,
    /// Anything else that writes perf maps.
    Other,
}

impl Runtime {
    /// The runtime of an executable named `name` (its file name).
    pub fn of_executable(name: &str) -> Self {
        match name {
            "node" | "nodejs" | "deno" => Runtime::V8,
            "java" => Runtime::Jvm,
            "dotnet" => Runtime::Dotnet,
            _ if name.starts_with("python") => Runtime::Python,
            _ => Runtime::Other,
        }
    }
}

/// A function of JIT code: its name, and its source file and line when
/// the runtime wrote them into the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitFunction {
    /// Function name.
    pub name: String,
    /// Source file.
    pub file: Option<String>,
    /// Line in it.
    pub line: Option<u32>,
}

impl JitFunction {
    /// The function a perf-map name of `runtime` stands for: V8's
    /// `JS:*fn /app/x.js:12:3` (any `Type:` prefix, any tier marker) is
    /// `fn` in `/app/x.js` line 12, CPython's `py::fn:/app/x.py` is `fn` in
    /// `/app/x.py`, the JVM's `long Hot.run(long)` is `Hot.run(long)`;
    /// anything else is its name as written.
    pub fn parse(raw: &str, runtime: Runtime) -> Self {
        let plain = || JitFunction {
            name: raw.to_owned(),
            file: None,
            line: None,
        };
        match runtime {
            Runtime::V8 => v8_function(raw).unwrap_or_else(plain),
            Runtime::Python => python_function(raw).unwrap_or_else(plain),
            Runtime::Jvm => jvm_function(raw).unwrap_or_else(plain),
            Runtime::Dotnet | Runtime::Other => plain(),
        }
    }
}

/// `Type:[marker]name file:line:column`, the name possibly empty
/// (anonymous functions, shown as `(anonymous)` as Chrome does).
fn v8_function(raw: &str) -> Option<JitFunction> {
    let (kind, rest) = raw.split_once(':')?;
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let rest = rest.trim_start_matches(['*', '~', '^', '+']);
    let (name, location) = match rest.rsplit_once(' ') {
        Some((name, location)) => (name, Some(location)),
        None => (rest, None),
    };
    let (file, line) = match location.and_then(split_file_line) {
        Some((file, line)) => (Some(file.to_owned()), Some(line)),
        // Not a location after all: part of the name (builtins, stubs).
        None => return Some(named(rest.to_owned(), None, None)),
    };
    let name = if name.is_empty() { "(anonymous)" } else { name };
    Some(named(name.to_owned(), file, line))
}

/// `file:line[:column]` into the file and the line.
fn split_file_line(location: &str) -> Option<(&str, u32)> {
    let (head, last) = location.rsplit_once(':')?;
    let last: u32 = last.parse().ok()?;
    if let Some((file, line)) = head.rsplit_once(':') {
        if let (false, Ok(line)) = (file.is_empty(), line.parse::<u32>()) {
            return Some((file, line));
        }
    }
    (!head.is_empty()).then_some((head, last))
}

/// `<return type> <class>.<method>(<parameters>)`, as `jcmd PID
/// Compiler.perfmap` writes a compiled method: without the return type.
fn jvm_function(raw: &str) -> Option<JitFunction> {
    let (returns, method) = raw.split_once(' ')?;
    let name = &method[..method.find('(')?];
    let plausible = !returns.contains('(') && name.contains('.') && method.ends_with(')');
    plausible.then(|| named(method.to_owned(), None, None))
}

/// `py::name:file`.
fn python_function(raw: &str) -> Option<JitFunction> {
    let rest = raw.strip_prefix("py::")?;
    let (name, file) = rest.split_once(':')?;
    Some(named(name.to_owned(), Some(file.to_owned()), None))
}

fn named(name: String, file: Option<String>, line: Option<u32>) -> JitFunction {
    JitFunction { name, file, line }
}

/// The entries of one perf map, without overlaps, for lookups by address.
#[derive(Clone, Debug, Default)]
pub struct PerfMap {
    /// start → (end, index in `names`); disjoint ranges.
    ranges: BTreeMap<u64, (u64, u32)>,
    names: Vec<Box<str>>,
    /// Bytes of the file consumed: up to the end of the last whole line.
    consumed: u64,
    /// The last bytes consumed (at most [`PerfMap::TAIL_BYTES`]).
    tail: Vec<u8>,
    /// Lines skipped because they did not parse.
    malformed: u64,
}

impl PerfMap {
    /// A map of the whole-line entries of `text` (a file's beginning).
    pub fn parse(text: &str) -> Self {
        let mut map = Self::default();
        map.extend(text);
        map
    }

    /// Adds the whole lines of `text`, which continues the file where
    /// [`PerfMap::consumed`] ended; a last line without its newline is left
    /// for the next call.
    pub fn extend(&mut self, text: &str) {
        let whole = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => return,
        };
        self.consumed += whole.len() as u64;
        self.tail.extend_from_slice(whole.as_bytes());
        let excess = self.tail.len().saturating_sub(Self::TAIL_BYTES);
        self.tail.drain(..excess);
        for line in whole.lines() {
            match parse_line(line) {
                Some((start, size, name)) => self.insert(start, size, name),
                None if line.trim().is_empty() => {}
                None => self.malformed += 1,
            }
        }
    }

    /// Bytes of the file this map has read (whole lines).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// How many of the last bytes read [`PerfMap::tail`] keeps.
    pub const TAIL_BYTES: usize = 64;

    /// The last bytes read, which end at [`PerfMap::consumed`]: a file
    /// that no longer has them there was written again, not appended to.
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// Lines that did not parse.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// The name of the code holding `addr`.
    pub fn find(&self, addr: u64) -> Option<&str> {
        let (_, &(end, name)) = self.ranges.range(..=addr).next_back()?;
        (addr < end).then(|| &*self.names[name as usize])
    }

    /// Adds `[start, start + size)`, replacing what it overlaps.
    fn insert(&mut self, start: u64, size: u64, name: &str) {
        let Some(end) = start.checked_add(size).filter(|_| size > 0) else {
            self.malformed += 1;
            return;
        };
        let Ok(index) = u32::try_from(self.names.len()) else {
            return;
        };
        // Disjoint ranges sorted by start have sorted ends too: the ones
        // overlapping are the last few starting before `end`.
        let overlapping: Vec<(u64, (u64, u32))> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, &(e, _))| e > start)
            .map(|(&s, &v)| (s, v))
            .collect();
        for (s, (e, n)) in overlapping {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, (start, n));
            }
            if e > end {
                self.ranges.insert(end, (e, n));
            }
        }
        self.names.push(name.into());
        self.ranges.insert(start, (end, index));
    }
}

/// `START SIZE NAME`, hexadecimal numbers with or without `0x`.
fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let mut parts = line.splitn(3, ' ');
    let start = hex(parts.next()?)?;
    let size = hex(parts.next()?)?;
    let name = parts.next()?.trim_end_matches('\r');
    (!name.is_empty()).then_some((start, size, name))
}

fn hex(text: &str) -> Option<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_with_and_without_0x() {
        let map = PerfMap::parse(
            "3a8e6f40 58 LazyCompile:~hot /app/main.js:3\n\
             0x7f0000001000 0x100 Interpreter\n",
        );
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.find(0x3a8e_6f40),
            Some("LazyCompile:~hot /app/main.js:3")
        );
        assert_eq!(
            map.find(0x3a8e_6f97),
            Some("LazyCompile:~hot /app/main.js:3")
        );
        assert_eq!(map.find(0x3a8e_6f98), None);
        assert_eq!(map.find(0x7f00_0000_10ff), Some("Interpreter"));
        assert_eq!(map.find(0x1000), None);
    }

    #[test]
    fn a_half_written_last_line_waits_for_the_rest() {
        let mut map = PerfMap::parse("1000 10 first\n2000 10 sec");
        assert_eq!(map.len(), 1);
        assert_eq!(map.consumed(), 14);
        // The next read starts where the whole lines ended.
        map.extend("2000 10 second\n3000 10 third\n");
        assert_eq!(map.find(0x2005), Some("second"));
        assert_eq!(map.find(0x3005), Some("third"));
        assert_eq!(map.malformed(), 0);
    }

    #[test]
    fn later_entries_win_where_they_overlap() {
        let map = PerfMap::parse(
            "1000 100 old\n\
             1040 20 new\n\
             0ff0 20 left\n\
             10f0 100 right\n",
        );
        assert_eq!(map.find(0x0ff5), Some("left"));
        assert_eq!(map.find(0x100f), Some("left"));
        assert_eq!(map.find(0x1010), Some("old"));
        assert_eq!(map.find(0x1020), Some("old"));
        assert_eq!(map.find(0x1045), Some("new"));
        assert_eq!(map.find(0x1060), Some("old"));
        assert_eq!(map.find(0x10f5), Some("right"));
        assert_eq!(map.find(0x11ef), Some("right"));
        // A later entry covering several earlier ones replaces them all.
        let map = PerfMap::parse("1000 10 a\n1010 10 b\n1020 10 c\n1008 20 d\n");
        let names: Vec<_> = [0x1004, 0x1009, 0x1015, 0x1027, 0x1029]
            .iter()
            .map(|&a| map.find(a).unwrap())
            .collect();
        assert_eq!(names, ["a", "d", "d", "d", "c"]);
    }

    #[test]
    fn garbage_lines_are_skipped_and_counted() {
        let map = PerfMap::parse(
            "zz 10 x\n1000\n1000 0 empty\n\n1000 10 ok\nffffffffffffffff 10 wraps\n",
        );
        assert_eq!(map.len(), 1);
        assert_eq!(map.malformed(), 4);
        assert_eq!(map.find(0x1000), Some("ok"));
    }

    #[test]
    fn v8_names_give_function_file_and_line() {
        let v8 = |raw| JitFunction::parse(raw, Runtime::V8);
        assert_eq!(
            v8("JS:*hot /app/main.js:12:3"),
            named("hot".into(), Some("/app/main.js".into()), Some(12))
        );
        assert_eq!(
            v8("LazyCompile:~parse file:///app/lib.mjs:7"),
            named("parse".into(), Some("file:///app/lib.mjs".into()), Some(7))
        );
        assert_eq!(
            v8("JS:~ /app/main.js:1:1"),
            named("(anonymous)".into(), Some("/app/main.js".into()), Some(1))
        );
        assert_eq!(
            v8("Builtin:ArrayPrototypePush"),
            named("ArrayPrototypePush".into(), None, None)
        );
        assert_eq!(
            v8("Builtin:CallFunction_ReceiverIsAny"),
            named("CallFunction_ReceiverIsAny".into(), None, None)
        );
        // Not V8's format: kept as written.
        assert_eq!(v8("hot loop"), named("hot loop".into(), None, None));
        assert_eq!(
            JitFunction::parse("py::handler:/app/main.py", Runtime::Python),
            named("handler".into(), Some("/app/main.py".into()), None)
        );
        let jvm = |raw| JitFunction::parse(raw, Runtime::Jvm);
        assert_eq!(
            jvm("long Hot.hotMethod(long)"),
            named("Hot.hotMethod(long)".into(), None, None)
        );
        assert_eq!(
            jvm("void java.util.HashMap.resize(java.lang.Object[], int)"),
            named(
                "java.util.HashMap.resize(java.lang.Object[], int)".into(),
                None,
                None
            )
        );
        assert_eq!(jvm("Interpreter"), named("Interpreter".into(), None, None));
        assert_eq!(
            jvm("StubRoutines (1)"),
            named("StubRoutines (1)".into(), None, None)
        );
    }

    #[test]
    fn runtimes_by_executable() {
        assert_eq!(Runtime::of_executable("node"), Runtime::V8);
        assert_eq!(Runtime::of_executable("java"), Runtime::Jvm);
        assert_eq!(Runtime::of_executable("python3.12"), Runtime::Python);
        assert_eq!(Runtime::of_executable("luajit"), Runtime::Other);
    }

    #[test]
    fn never_panics_on_arbitrary_text() {
        let mut seed = 7u64;
        for _ in 0..2000 {
            let line: String = (0..seed % 40)
                .map(|i| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(i);
                    b"0123456789abcdefx :\n*~/JS"[(seed >> 59) as usize % 25] as char
                })
                .collect();
            let map = PerfMap::parse(&line);
            let _ = map.find(seed);
            let _ = JitFunction::parse(&line, Runtime::V8);
        }
    }
}
