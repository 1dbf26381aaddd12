//! The test workloads and how each one is built: the only recipe table.
//!
//! The end-to-end tests (`profiler-user/tests/e2e`) and `cargo xtask
//! bench-unwind` both compile this file in with `#[path]`, so it uses the
//! standard library only.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workloads' sources. Both crates that include this file sit directly
/// under the workspace root, so the path holds for either.
const SOURCES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../profiler-user/tests/workloads"
);

/// A compiler and its flags.
struct Compiler {
    program: &'static str,
    flags: &'static [&'static str],
}

/// C with frame pointers (and no sibling calls, which would drop frames).
const C_FRAME_POINTERS: Compiler = Compiler {
    program: "gcc",
    flags: &[
        "-O2",
        "-g",
        "-fno-omit-frame-pointer",
        "-fno-optimize-sibling-calls",
    ],
};

/// C without frame pointers: only `.eh_frame` unwinds it.
const C_NO_FRAME_POINTERS: Compiler = Compiler {
    program: "gcc",
    flags: &[
        "-O2",
        "-g",
        "-fomit-frame-pointer",
        "-fno-optimize-sibling-calls",
        "-fasynchronous-unwind-tables",
    ],
};

/// C with frame pointers and no debug info: symbols are named by the
/// symbol table alone.
const C_NO_DEBUG_INFO: Compiler = Compiler {
    program: "gcc",
    flags: &[
        "-O2",
        "-fno-omit-frame-pointer",
        "-fno-optimize-sibling-calls",
    ],
};

/// C++ with frame pointers, like [`C_FRAME_POINTERS`].
const CXX_FRAME_POINTERS: Compiler = Compiler {
    program: "g++",
    flags: C_FRAME_POINTERS.flags,
};

/// Rust release code with forced frame pointers.
const RUST_FRAME_POINTERS: Compiler = Compiler {
    program: "rustc",
    flags: &["-C", "opt-level=3", "-C", "force-frame-pointers=yes", "-g"],
};

/// Rust release code without frame pointers.
const RUST_NO_FRAME_POINTERS: Compiler = Compiler {
    program: "rustc",
    flags: &["-C", "opt-level=3", "-C", "force-frame-pointers=no", "-g"],
};

/// Go (the machine's, 1.19): frame pointers always, `.debug_frame`
/// compressed.
const GO: Compiler = Compiler {
    program: "go",
    flags: &["build"],
};

/// How one output file is built.
struct Recipe {
    /// The file written; a program's name is also its process name.
    output: &'static str,
    /// Its source in [`SOURCES`].
    source: &'static str,
    compiler: Compiler,
    /// A shared library (`lib<name>.so`) rather than a program.
    shared_library: bool,
    /// The shared library of this table the program links against, built
    /// first into the same directory and found there at run time.
    links: Option<&'static str>,
    /// Linked at a fixed address (`-no-pie`): two such programs' code
    /// shares addresses.
    fixed_address: bool,
    /// Flags after the compiler's own.
    extra_flags: &'static [&'static str],
    /// Libraries linked after the source (static archives must follow
    /// what uses them).
    libraries: &'static [&'static str],
}

const fn program(output: &'static str, source: &'static str, compiler: Compiler) -> Recipe {
    Recipe {
        output,
        source,
        compiler,
        shared_library: false,
        links: None,
        fixed_address: false,
        extra_flags: &[],
        libraries: &[],
    }
}

/// Every workload. The same source under several names runs as processes
/// a test can tell apart.
const RECIPES: &[Recipe] = &[
    // With frame pointers.
    program("cpu_chain", "cpu_chain.c", C_FRAME_POINTERS),
    program("short_lived", "cpu_chain.c", C_FRAME_POINTERS),
    // Work before an exec (issue 14, finding 4).
    Recipe {
        fixed_address: true,
        ..program("launcher", "launcher.c", C_FRAME_POINTERS)
    },
    Recipe {
        fixed_address: true,
        ..program("cpu_chain_nopie", "cpu_chain.c", C_FRAME_POINTERS)
    },
    program("syscall_chain", "syscall_chain.c", C_FRAME_POINTERS),
    program("rust_chain", "rust_chain.rs", RUST_FRAME_POINTERS),
    // `deep_chain` with frame pointers: the frame-pointer unwinder's own
    // load in `cargo xtask bench-unwind`.
    program("deep_fp", "deep_chain.c", C_FRAME_POINTERS),
    program("hostile_names", "hostile_names.c", C_NO_DEBUG_INFO),
    // POSIX threads are in glibc's libc (2.34+): no -pthread needed.
    program("off_cpu_chain", "off_cpu_chain.c", C_FRAME_POINTERS),
    program("lock_chain", "lock_chain.c", C_FRAME_POINTERS),
    program("pingpong", "pingpong.c", C_FRAME_POINTERS),
    program("fault_chain", "fault_chain.c", C_FRAME_POINTERS),
    program("alloc_chain", "alloc_chain.c", C_FRAME_POINTERS),
    Recipe {
        extra_flags: &["-x", "c++"],
        ..program("alloc_cxx", "alloc_chain.c", CXX_FRAME_POINTERS)
    },
    program("alloc_rust", "alloc_rust.rs", RUST_FRAME_POINTERS),
    // The same program under other names (a process is told apart by its
    // name in the profile), run with tcmalloc and mimalloc LD_PRELOADed.
    program("alloc_tcmalloc", "alloc_chain.c", C_FRAME_POINTERS),
    program("alloc_mimalloc", "alloc_chain.c", C_FRAME_POINTERS),
    program("malloc_loop", "malloc_loop.c", C_FRAME_POINTERS),
    program("alloc_fork", "alloc_fork.c", C_FRAME_POINTERS),
    // jemalloc linked in (Debian's libjemalloc-dev, `cargo xtask setup`):
    // the program itself defines malloc and free.
    Recipe {
        libraries: &[
            "/usr/lib/x86_64-linux-gnu/libjemalloc.a",
            "-lstdc++",
            "-lm",
            "-pthread",
        ],
        ..program("alloc_jemalloc", "alloc_chain.c", C_FRAME_POINTERS)
    },
    // Publishes OpenTelemetry process and thread context (issue 17):
    // the thread-local variable exported in .dynsym, reached by TLS
    // descriptors as OTEP 4947 recommends (an executable's own variable
    // is reached by local exec anyway).
    Recipe {
        extra_flags: &[
            "-mtls-dialect=gnu2",
            "-Wl,--export-dynamic-symbol=otel_thread_ctx_v1",
        ],
        ..program("otel_thread_ctx", "otel_thread_ctx.c", C_FRAME_POINTERS)
    },
    // The variable in a library, linked in or dlopened (the latter needs
    // libotelctx.so built beside it).
    Recipe {
        shared_library: true,
        extra_flags: &["-mtls-dialect=gnu2"],
        ..program("libotelctx.so", "libotelctx.c", C_FRAME_POINTERS)
    },
    Recipe {
        links: Some("libotelctx.so"),
        extra_flags: &["-DOTEL_CTX_LINKED"],
        ..program("otel_ctx_linked", "otel_thread_ctx.c", C_FRAME_POINTERS)
    },
    Recipe {
        extra_flags: &["-DOTEL_CTX_DLOPEN"],
        ..program("otel_ctx_dlopen", "otel_thread_ctx.c", C_FRAME_POINTERS)
    },
    // Without frame pointers.
    program("nofp_chain", "cpu_chain.c", C_NO_FRAME_POINTERS),
    program("deep_chain", "deep_chain.c", C_NO_FRAME_POINTERS),
    program("deep_500", "deep_chain.c", C_NO_FRAME_POINTERS),
    program("deep_600", "deep_chain.c", C_NO_FRAME_POINTERS),
    program("signal_chain", "signal_chain.c", C_NO_FRAME_POINTERS),
    program("rust_nofp", "rust_chain.rs", RUST_NO_FRAME_POINTERS),
    // The stack corpus (tests/e2e/stacks.rs).
    program(
        "stacks_small_threads",
        "stacks_small_threads.c",
        C_NO_FRAME_POINTERS,
    ),
    program(
        "stacks_sigaltstack",
        "stacks_sigaltstack.c",
        C_NO_FRAME_POINTERS,
    ),
    program("stacks_ucontext", "stacks_ucontext.c", C_NO_FRAME_POINTERS),
    program("stacks_go", "stacks_go.go", GO),
    // A tenant that truncates the library it runs (issue 14, finding 1).
    Recipe {
        shared_library: true,
        ..program("libbulk.so", "libbulk.c", C_NO_FRAME_POINTERS)
    },
    Recipe {
        links: Some("libbulk.so"),
        ..program("truncator", "truncator.c", C_NO_FRAME_POINTERS)
    },
    Recipe {
        shared_library: true,
        ..program("libhop.so", "libhop.c", C_NO_FRAME_POINTERS)
    },
    // A mixed stack: the program keeps frame pointers, the library it
    // calls through has none.
    Recipe {
        links: Some("libhop.so"),
        ..program("lib_chain", "lib_chain.c", C_FRAME_POINTERS)
    },
];

/// Builds the workloads `names`, and the libraries they link against, into
/// `dir` (created if missing); returns the paths of `names`, in order.
pub fn build(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|err| format!("creating {}: {err}", dir.display()))?;
    let mut built = Vec::new();
    for name in names {
        build_one(dir, name, &mut built)?;
    }
    Ok(names.iter().map(|name| dir.join(name)).collect())
}

/// Builds `name` into `dir` unless it is in `built`, its library first.
fn build_one(dir: &Path, name: &str, built: &mut Vec<&'static str>) -> Result<(), String> {
    let recipe = RECIPES
        .iter()
        .find(|r| r.output == name)
        .ok_or_else(|| format!("no workload named {name} in tests/workloads/recipes.rs"))?;
    if built.contains(&recipe.output) {
        return Ok(());
    }
    let mut cmd = Command::new(recipe.compiler.program);
    cmd.args(recipe.compiler.flags).args(recipe.extra_flags);
    if recipe.fixed_address {
        cmd.args(["-fno-pie", "-no-pie"]);
    }
    if recipe.shared_library {
        cmd.args(["-shared", "-fPIC"]);
    }
    cmd.arg("-o")
        .arg(dir.join(recipe.output))
        .arg(Path::new(SOURCES).join(recipe.source));
    cmd.args(recipe.libraries);
    if recipe.compiler.program == "go" && std::env::var_os("GOCACHE").is_none() {
        // Go needs a build cache, under $HOME unless told.
        cmd.env("GOCACHE", std::env::temp_dir().join("hostprof-gocache"));
    }
    if let Some(library) = recipe.links {
        build_one(dir, library, built)?;
        let short = library
            .strip_prefix("lib")
            .and_then(|l| l.strip_suffix(".so"))
            .ok_or_else(|| format!("{library}: a shared library is named lib<name>.so"))?;
        cmd.arg(format!("-L{}", dir.display()))
            .arg(format!("-l{short}"))
            .arg(format!("-Wl,-rpath,{}", dir.display()));
    }
    let out = cmd.output().map_err(|err| {
        format!(
            "could not run {} ({err}): `cargo xtask setup` installs gcc and rustc comes \
             with the Rust toolchain",
            recipe.compiler.program
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    built.push(recipe.output);
    Ok(())
}
