//! CPython processes: finds them, tells the kernel where to walk their
//! frames, and names the code objects the walk recorded.
//!
//! A process is checked when first sampled and after each `exec` or
//! `dlopen` (when its executable mappings change): every mapped file is
//! searched once (by file identity) for `_PyRuntime`, `Py_Version` and
//! `_PyEval_EvalFrameDefault`. In a file that defines them all (the
//! `python3.x` executable, or `libpython3.x.so` of an embedding program)
//! the version picks the field offsets ([`super::cpython`]); a version
//! without known offsets is reported once and profiled natively, never
//! guessed. The kernel then appends each sample's Python frames to its
//! user stack (`profiler-ebpf/src/python.rs`).
//!
//! Each frame is the address of a code object and a code-unit index.
//! After each drain, the code objects not seen before are read from the
//! process's memory (`/proc/PID/mem`: name, file, first line, line table)
//! while the process still runs, at most [`MAX_READS_PER_SECOND`] a
//! second of the drain's span, and cached per process image for the window; lines are worked
//! out from the code-unit index. At each window's end the caches are
//! emptied, so a code object freed and another allocated at its address
//! (code compiled at run time: `exec`, `eval`, `reload`) is read afresh,
//! and a process's memory is held for one window only.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use profiler_common::{python_frame, PythonProcess};

use super::cpython::{self, CodeInfo, Layout};
use super::thread_context::load_bias;
use super::{ModuleId, ProcessTable};
use crate::pread::PreadFile;
use crate::sampler::ProcessMap;

/// Code objects read per second between drains, all processes: a tenant
/// can make its frames point anywhere, and each read is a few syscalls on
/// the pipeline's thread. Frames past it stay unnamed (`[python]`).
const MAX_READS_PER_SECOND: usize = 4096;

/// What a file holds of an interpreter: link-time addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interpreter {
    /// `_PyRuntime`.
    runtime: u64,
    /// `_PyEval_EvalFrameDefault`: start and size.
    eval: (u64, u64),
    /// `Py_Version` (`PY_VERSION_HEX`); `None` before 3.11, which does
    /// not export it.
    version: Option<u32>,
}

/// A Python process image the kernel walks.
struct Image {
    /// Its exec generation.
    exec_gen: u32,
    layout: Layout,
    /// Where `_PyEval_EvalFrameDefault` is in this process.
    eval: (u64, u64),
    /// Code objects read so far (`None`: not readable as one).
    codes: HashMap<u64, Option<Arc<CodeInfo>>>,
}

/// One Python frame of a sample, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonFrame {
    /// The function's qualified name.
    pub name: String,
    /// Its source file.
    pub file: String,
    /// The line the frame is at, when the code object's table tells.
    pub line: Option<u32>,
}

/// Python processes found, and their code objects.
pub struct PythonProcesses {
    sink: Box<dyn ProcessMap<PythonProcess>>,
    /// What each file searched holds (`None`: no interpreter).
    files: HashMap<ModuleId, Option<Interpreter>>,
    images: HashMap<u32, Image>,
    /// Code objects the current drain may still read.
    reads_left: usize,
    /// Files whose interpreter was reported as not walked.
    reported: HashSet<ModuleId>,
}

impl PythonProcesses {
    /// Discovery that publishes Python processes to `sink`.
    pub fn new(sink: Box<dyn ProcessMap<PythonProcess>>) -> Self {
        Self {
            sink,
            files: HashMap::new(),
            images: HashMap::new(),
            reads_left: 0,
            reported: HashSet::new(),
        }
    }

    /// Checks process `tgid` from its snapshot in `processes` (after it
    /// was snapshotted: first seen, exec'd, or its mappings changed).
    pub fn check(&mut self, tgid: u32, processes: &ProcessTable) {
        let Some(info) = processes.process(tgid) else {
            return;
        };
        let Some(exec_gen) = info.exec_gen else {
            return; // an exec while it was read: checked at the next snapshot
        };
        if self
            .images
            .get(&tgid)
            .is_some_and(|image| image.exec_gen == exec_gen)
        {
            return;
        }
        for mapping in &info.mappings {
            let interpreter = *self
                .files
                .entry(mapping.module)
                .or_insert_with(|| search(processes, mapping.module));
            let Some(interpreter) = interpreter else {
                continue;
            };
            let Some(bias) = module_bias(
                processes,
                mapping.module,
                mapping.file_offset,
                mapping.start,
            ) else {
                continue;
            };
            let runtime = interpreter.runtime.wrapping_add(bias);
            let version = interpreter.version.map(cpython::version_from_hex);
            let layout = match (version, interpreter.version) {
                (Some((3, 13)), Some(hex)) => debug_offsets(tgid, runtime, hex),
                (Some((major, minor)), _) => cpython::layout(major, minor).ok_or_else(|| {
                    format!("Python {major}.{minor} is not supported (3.11 to 3.13 are)")
                }),
                _ => Err("Python 3.10 or older is not supported (3.11 to 3.13 are)".into()),
            };
            let (layout, (major, minor)) = match (layout, version) {
                (Ok(layout), Some(version)) => (layout, version),
                (Err(why), _) => {
                    // Once per file (a failed read of one process's
                    // offsets says nothing of the next one's).
                    if self.reported.insert(mapping.module) {
                        log::warn!(
                            "process {tgid}: {why}: its stacks show the interpreter's C \
                             functions only"
                        );
                    }
                    continue;
                }
                (Ok(_), None) => continue,
            };
            self.sink.publish(
                tgid,
                PythonProcess {
                    runtime,
                    exec_gen,
                    flags: layout.flags,
                    offsets: layout.kernel,
                },
            );
            let eval = (interpreter.eval.0.wrapping_add(bias), interpreter.eval.1);
            log::info!("process {tgid}: Python {major}.{minor}, walking its frames");
            self.images.insert(
                tgid,
                Image {
                    exec_gen,
                    layout,
                    eval,
                    codes: HashMap::new(),
                },
            );
            return;
        }
        // Not (or no longer) Python in this image.
        if self.images.remove(&tgid).is_some() {
            self.sink.withdraw(tgid);
        }
    }

    /// Reads the code objects of `frames` (Python frame words of process
    /// `tgid`, image `exec_gen`) not read before.
    pub fn learn(&mut self, tgid: u32, exec_gen: u32, frames: &[u64]) {
        let Some(image) = self.images.get_mut(&tgid) else {
            return;
        };
        if image.exec_gen != exec_gen {
            return;
        }
        let mut mem: Option<Option<File>> = None;
        for &word in frames {
            let (code, _, _) = python_frame::decode(word);
            if image.codes.contains_key(&code) {
                continue;
            }
            if self.reads_left == 0 {
                return;
            }
            self.reads_left -= 1;
            let mem = mem.get_or_insert_with(|| File::open(format!("/proc/{tgid}/mem")).ok());
            let Some(mem) = mem else {
                return; // gone: its frames stay unnamed
            };
            let read = |addr: u64, len: usize| {
                let mut buf = vec![0; len];
                mem.read_exact_at(&mut buf, addr).ok()?;
                Some(buf)
            };
            let info = cpython::read_code(&image.layout, code, read).map(Arc::new);
            image.codes.insert(code, info);
        }
    }

    /// Starts the budget of code-object reads of a drain `since_last`
    /// after the one before (a second's at least).
    pub fn drain_started(&mut self, since_last: Duration) {
        self.reads_left =
            (MAX_READS_PER_SECOND as f64 * since_last.as_secs_f64().max(1.0)) as usize;
    }

    /// At a window's end, once its samples are named: empties the code
    /// caches, forgets the images no longer in `processes` (exited, or
    /// exec'd since: a pid reused by a new Python process keeps its new
    /// image) and what was found in `modules`, files no live process maps.
    pub fn prune(&mut self, modules: &[ModuleId], processes: &ProcessTable) {
        let live = |tgid: u32, exec_gen: u32| {
            processes
                .process(tgid)
                .is_some_and(|info| info.exec_gen == Some(exec_gen))
        };
        let gone: Vec<u32> = self
            .images
            .iter()
            .filter(|(&tgid, image)| !live(tgid, image.exec_gen))
            .map(|(&tgid, _)| tgid)
            .collect();
        for tgid in gone {
            self.images.remove(&tgid);
            self.sink.withdraw(tgid);
        }
        for image in self.images.values_mut() {
            image.codes = HashMap::new();
        }
        for module in modules {
            self.files.remove(module);
            self.reported.remove(module);
        }
    }

    /// The `_PyEval_EvalFrameDefault` range of image `exec_gen` of `tgid`.
    pub fn eval_range(&self, tgid: u32, exec_gen: u32) -> Option<(u64, u64)> {
        let image = self.images.get(&tgid)?;
        (image.exec_gen == exec_gen).then_some(image.eval)
    }

    /// The frame `word` of image `exec_gen` of `tgid`, named; `None` when
    /// its code object could not be read.
    pub fn frame(&self, tgid: u32, exec_gen: u32, word: u64) -> Option<PythonFrame> {
        let image = self.images.get(&tgid)?;
        if image.exec_gen != exec_gen {
            return None;
        }
        let (code, _, instr) = python_frame::decode(word);
        let info = image.codes.get(&code)?.as_ref()?;
        let line = cpython::line_of(&info.linetable, info.first_line, instr)
            .and_then(|line| u32::try_from(line).ok());
        Some(PythonFrame {
            name: info.name.clone(),
            file: info.filename.clone(),
            line,
        })
    }
}

/// The layout a 3.13+ process `pid` describes in the `_Py_DebugOffsets`
/// at the start of its `_PyRuntime` (at `runtime`).
fn debug_offsets(pid: u32, runtime: u64, version: u32) -> Result<Layout, String> {
    let (major, minor) = cpython::version_from_hex(version);
    let mut bytes = vec![0; cpython::DEBUG_OFFSETS_SIZE];
    File::open(format!("/proc/{pid}/mem"))
        .and_then(|mem| mem.read_exact_at(&mut bytes, runtime))
        .map_err(|err| format!("Python {major}.{minor}: reading its debug offsets: {err}"))?;
    cpython::from_debug_offsets(&bytes, version)
        .map_err(|err| format!("Python {major}.{minor}: {err}"))
}

/// What file `module` holds of an interpreter.
fn search(processes: &ProcessTable, module: ModuleId) -> Option<Interpreter> {
    // Read with bounded preads, never mapped: the file is another
    // process's, and one truncated while mapped would kill us (SIGBUS).
    let data = PreadFile::new(processes.module(module).open_file()?).ok()?;
    // The full symbol table only of interpreters' files (`python3.x`,
    // `libpython3.x.so`: a static interpreter may export nothing);
    // every other file's exported symbols, the short list.
    let path = &processes.module(module).path;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let all = name.starts_with("python") || name.starts_with("libpython");
    match interpreter_in(&data, all) {
        Ok(found) => found,
        Err(err) => {
            log::debug!("{}: {err}", processes.module(module).path.display());
            None
        }
    }
}

/// The load bias of `module` mapped at `start` from `file_offset`.
fn module_bias(
    processes: &ProcessTable,
    module: ModuleId,
    file_offset: u64,
    start: u64,
) -> Option<u64> {
    let data = PreadFile::new(processes.module(module).open_file()?).ok()?;
    load_bias(&data, file_offset, start)
}

/// The interpreter an ELF image defines, if it does: in its exported
/// symbols, or (`all`) in its full symbol table too.
fn interpreter_in<'a, R: object::ReadRef<'a>>(
    data: R,
    all: bool,
) -> Result<Option<Interpreter>, object::read::Error> {
    let file = object::read::elf::ElfFile64::<object::Endianness, R>::parse(data)?;
    let mut runtime = None;
    let mut eval = None;
    let mut version = None;
    let full = all.then(|| file.symbols()).into_iter().flatten();
    for symbol in file.dynamic_symbols().chain(full) {
        match symbol.name() {
            Ok("_PyRuntime") if runtime.is_none() => runtime = Some(symbol.address()),
            Ok("_PyEval_EvalFrameDefault") if eval.is_none() => {
                eval = Some((symbol.address(), symbol.size()));
            }
            Ok("Py_Version") if version.is_none() => {
                let Some(index) = symbol.section_index() else {
                    continue;
                };
                let section = file.section_by_index(index)?;
                if let Some(bytes) = section.data_range(symbol.address(), 4)? {
                    version = Some(u32::from_le_bytes(bytes.try_into().unwrap_or_default()));
                }
            }
            _ => {}
        }
        if runtime.is_some() && eval.is_some() && version.is_some() {
            break;
        }
    }
    Ok(match (runtime, eval) {
        (Some(runtime), Some(eval)) if eval.1 > 0 => Some(Interpreter {
            runtime,
            eval,
            version,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine's own interpreter, when it is one this build knows
    /// (the test machines have 3.11).
    #[test]
    fn the_python_executable_defines_its_interpreter() {
        let Ok(data) = std::fs::read("/usr/bin/python3.11") else {
            eprintln!("no /usr/bin/python3.11 here: skipped");
            return;
        };
        let found = interpreter_in(&data[..], false)
            .unwrap()
            .expect("an interpreter");
        assert_eq!(found.version.map(cpython::version_from_hex), Some((3, 11)));
        assert!(found.runtime > 0 && found.eval.1 > 1000, "{found:?}");
        assert!(cpython::layout(3, 11).is_some());
    }

    #[test]
    fn other_elf_files_define_none() {
        let data = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(interpreter_in(&data[..], true).unwrap(), None);
        assert!(interpreter_in(&b"not an ELF file"[..], false).is_err());
    }
}
