//! Helpers the end-to-end suites share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// True when the user opted out of BPF tests; panics with the reason when
/// BPF is unusable and they did not.
pub fn skip_bpf() -> bool {
    if std::env::var_os("HOSTPROF_SKIP_BPF_TESTS").is_some_and(|v| v == "1") {
        eprintln!("HOSTPROF_SKIP_BPF_TESTS=1: skipping a test that needs BPF");
        return true;
    }
    if let Err(err) = hostprof::system_info::preflight() {
        panic!(
            "this test loads the real eBPF program and cannot here: {err}\n\
             (set HOSTPROF_SKIP_BPF_TESTS=1 to skip BPF tests explicitly)"
        );
    }
    false
}

/// Serializes the end-to-end tests, which all run in this one binary. Each
/// profiles the whole host or keeps it busy (whole-host agents, CPU-bound
/// workloads): run together on a small machine, each would take the CPU the
/// others' timings and table loading need, and would see the others'
/// processes (several suites run a `cpu_chain`). Hold the guard for the
/// whole test.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Google's pprof tool: `HOSTPROF_PPROF`, else `target/tools/pprof`, else
/// `pprof` on PATH. Panics with the fix when it is missing.
pub fn pprof_tool() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("HOSTPROF_PPROF") {
        return path.into();
    }
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/pprof");
    if built.exists() {
        return built;
    }
    if let Ok(out) = std::process::Command::new("which").arg("pprof").output() {
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().into();
        }
    }
    panic!(
        "Google's pprof tool is needed to check the output independently; \
         run `cargo xtask setup` (it builds target/tools/pprof) or set HOSTPROF_PPROF"
    );
}

/// Runs the pprof tool with `args` on `profile` and returns its stdout.
pub fn pprof(tool: &std::path::Path, args: &[&str], profile: &std::path::Path) -> String {
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(profile)
        .env("PPROF_BINARY_PATH", "/nonexistent")
        .output()
        .unwrap_or_else(|err| panic!("run {}: {err}", tool.display()));
    assert!(
        out.status.success(),
        "pprof {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stacks of one process as `pprof -traces` prints them, leaf first, with
/// their sample counts.
pub struct Traces(pub Vec<(u64, Vec<String>)>);

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sorted: Vec<_> = self.0.iter().collect();
        sorted.sort_by_key(|t| std::cmp::Reverse(t.0));
        for (count, stack) in sorted.iter().take(12) {
            writeln!(f, "{count:>6} {}", stack.join(" <- "))?;
        }
        Ok(())
    }
}

impl Traces {
    /// Traces of the samples whose `process` label is exactly `process`.
    pub fn of(tool: &std::path::Path, profile: &std::path::Path, process: &str) -> Traces {
        Traces::with_label(tool, profile, "process", process)
    }

    /// Traces of process `pid` (a numeric label).
    pub fn of_pid(tool: &std::path::Path, profile: &std::path::Path, pid: u32) -> Traces {
        let focus = format!("-tagfocus=pid={pid}");
        Traces::parse(&pprof(
            tool,
            &["-traces", &focus, "-sample_index=samples"],
            profile,
        ))
    }

    /// Traces of the samples whose label `key` is exactly `value`.
    pub fn with_label(
        tool: &std::path::Path,
        profile: &std::path::Path,
        key: &str,
        value: &str,
    ) -> Traces {
        Traces::query(tool, profile, key, value, &["-sample_index=samples"])
    }

    /// Traces of `process` with each frame as `function file:line`
    /// (`pprof -lines`).
    pub fn with_lines(tool: &std::path::Path, profile: &std::path::Path, process: &str) -> Traces {
        Traces::query(
            tool,
            profile,
            "process",
            process,
            &["-sample_index=samples", "-lines"],
        )
    }

    /// Off-CPU traces of the samples whose label `key` is exactly `value`,
    /// weighed by time blocked, in nanoseconds.
    pub fn off_cpu(
        tool: &std::path::Path,
        profile: &std::path::Path,
        key: &str,
        value: &str,
    ) -> Traces {
        Traces::weighed(tool, profile, key, value, "off_cpu", "ms")
    }

    /// Lock-contention traces of the samples whose label `key` is exactly
    /// `value`, weighed by delay, in nanoseconds.
    pub fn locks(
        tool: &std::path::Path,
        profile: &std::path::Path,
        key: &str,
        value: &str,
    ) -> Traces {
        Traces::weighed(tool, profile, key, value, "delay", "ms")
    }

    /// Page-fault traces of the samples whose label `key` is exactly
    /// `value`, weighed by the faults they stand for.
    pub fn page_faults(
        tool: &std::path::Path,
        profile: &std::path::Path,
        key: &str,
        value: &str,
    ) -> Traces {
        Traces::query(tool, profile, key, value, &["-sample_index=page_faults"])
    }

    /// Memory traces of the samples whose label `key` is exactly `value`,
    /// weighed by the byte-valued sample type `index` (`alloc_space`,
    /// `inuse_space`), in bytes.
    pub fn bytes(
        tool: &std::path::Path,
        profile: &std::path::Path,
        key: &str,
        value: &str,
        index: &str,
    ) -> Traces {
        Traces::weighed(tool, profile, key, value, index, "B")
    }

    /// [`Traces::bytes`] of the samples of process `pid` (a numeric
    /// label: pprof matches its value, not a pattern).
    pub fn bytes_of_pid(
        tool: &std::path::Path,
        profile: &std::path::Path,
        pid: u32,
        index: &str,
    ) -> Traces {
        let focus = format!("-tagfocus=pid={pid}");
        let index = format!("-sample_index={index}");
        Traces::parse(&pprof(
            tool,
            &["-traces", &focus, &index, "-unit=B"],
            profile,
        ))
    }

    /// Traces weighed by the sample type `index`, printed in `unit`.
    fn weighed(
        tool: &std::path::Path,
        profile: &std::path::Path,
        key: &str,
        value: &str,
        index: &str,
        unit: &str,
    ) -> Traces {
        let index = format!("-sample_index={index}");
        let unit = format!("-unit={unit}");
        Traces::query(tool, profile, key, value, &[&index, &unit])
    }

    /// `pprof -traces` with `args` of the samples whose label `key` is
    /// exactly `value`.
    fn query(
        tool: &std::path::Path,
        profile: &std::path::Path,
        key: &str,
        value: &str,
        args: &[&str],
    ) -> Traces {
        let focus = format!("-tagfocus={key}=^{value}$");
        let mut all = vec!["-traces", focus.as_str()];
        all.extend_from_slice(args);
        Traces::parse(&pprof(tool, &all, profile))
    }

    /// Parses `pprof -traces` text: blocks separated by dashed lines, label
    /// lines `<key right-aligned in 10>:  <values>`, stack lines
    /// `<value right-aligned in 10>   <function>`. A value is a count, or
    /// milliseconds (`-unit=ms`), read as nanoseconds, or bytes
    /// (`-unit=B`).
    pub fn parse(text: &str) -> Traces {
        let mut traces = Vec::new();
        for block in text.split("-----------+") {
            let mut count = None;
            let mut stack = Vec::new();
            for line in block.lines() {
                if line.len() <= 13 || line.get(10..13) != Some("   ") {
                    continue;
                }
                let value = line[..10].trim();
                if !value.is_empty() {
                    count = value
                        .parse::<u64>()
                        .ok()
                        .or_else(|| {
                            let ms = value.strip_suffix("ms")?.parse::<f64>().ok()?;
                            Some((ms * 1e6) as u64)
                        })
                        .or_else(|| value.strip_suffix('B')?.parse::<u64>().ok());
                }
                let name = line[13..].trim();
                stack.push(name.trim_end_matches(" (inline)").to_owned());
            }
            if let Some(count) = count {
                traces.push((count, stack));
            }
        }
        Traces(traces)
    }

    /// All samples.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(c, _)| c).sum()
    }

    /// Samples whose stack satisfies `pred`.
    pub fn count(&self, pred: impl Fn(&[String]) -> bool) -> u64 {
        self.0.iter().filter(|(_, s)| pred(s)).map(|(c, _)| c).sum()
    }

    /// Every frame name of every stack.
    pub fn frames(&self) -> impl Iterator<Item = &String> {
        self.0.iter().flat_map(|(_, s)| s.iter())
    }
}

/// Asserts that the resource of process `executable` in `export` (one
/// export as `otlp_receiver.py` reports it) has frames of type
/// `frame_type` (`profile.frame.type`).
pub fn assert_frame_type(export: &serde_json::Value, executable: &str, frame_type: &str) {
    let frame_types = export["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["attributes"]["process.executable.name"] == executable)
        .map(|r| r["frame_types"].clone())
        .unwrap_or_else(|| panic!("a resource for {executable} in {export}"));
    assert!(
        frame_types.as_array().unwrap().contains(&frame_type.into()),
        "{executable}'s frames include {frame_type}: {frame_types}"
    );
}

/// True when `stack` (leaf first) holds `chain` (leaf first) as consecutive frames.
pub fn has_chain(stack: &[String], chain: &[&str]) -> bool {
    stack
        .windows(chain.len())
        .any(|w| w.iter().zip(chain).all(|(a, b)| a == b))
}

/// Test programs compiled into a temporary directory.
pub struct Workloads {
    dir: tempfile::TempDir,
}

impl Workloads {
    /// Compiles the workloads `names` (see `tests/workloads/recipes.rs`).
    pub fn build(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        build_workloads(dir.path(), names);
        Self { dir }
    }

    /// Starts workload `name` for `run_ms` milliseconds.
    pub fn spawn(&self, name: &str, run_ms: u64) -> Child {
        Command::new(self.dir.path().join(name))
            .arg(run_ms.to_string())
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {name}: {err}"))
    }

    /// A path in the workloads' directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Opens the workloads' directory to other users, so an unprivileged
    /// user can run them (see [`as_nobody`]).
    pub fn share(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the workloads' directory");
    }
}

/// A command that runs `program` as the unprivileged user nobody (uid and
/// gid 65534, no supplementary groups), as a tenant's code runs.
pub fn as_nobody(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program);
    cmd
}

/// True when `text` holds a control character (C0, DEL or C1) other than
/// the newlines ending its lines.
pub fn has_raw_controls(text: &[u8]) -> bool {
    String::from_utf8_lossy(text)
        .chars()
        .any(|c| c != '\n' && c.is_control())
}

/// A read-only file system mounted on a new directory (root ignores
/// permission bits, so only a read-only mount makes a directory it cannot
/// write to); unmounted on drop.
pub struct ReadOnlyDir {
    path: PathBuf,
}

impl ReadOnlyDir {
    /// Mounts an empty read-only tmpfs on `path` (created).
    pub fn mount(path: &Path) -> Self {
        std::fs::create_dir_all(path).expect("mkdir the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a read-only tmpfs on {} failed (needs root): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: path.to_owned(),
        }
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        Command::new("umount").arg(&self.path).status().ok();
    }
}

/// Compiles the workloads `names` into `dir`, panicking with the compiler's
/// errors when that fails.
pub fn build_workloads(dir: &Path, names: &[&str]) {
    if let Err(err) = crate::workloads::build(dir, names) {
        panic!("{err}");
    }
}

/// A child process killed, if still running, when this is dropped: a test
/// that fails before it stops its whole-host agent must not leave the agent
/// profiling the host under the tests that run after it in this binary.
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Its piped standard input.
    pub fn stdin(&mut self) -> &mut std::process::ChildStdin {
        self.0
            .as_mut()
            .and_then(|child| child.stdin.as_mut())
            .expect("stdin piped")
    }

    /// Its piped standard output, taken.
    pub fn stdout(&mut self) -> std::process::ChildStdout {
        self.0
            .as_mut()
            .and_then(|child| child.stdout.take())
            .expect("stdout piped")
    }

    /// Its piped standard error, taken.
    pub fn stderr(&mut self) -> std::process::ChildStderr {
        self.0
            .as_mut()
            .and_then(|child| child.stderr.take())
            .expect("stderr piped")
    }

    /// Waits for it to exit and collects its piped output.
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        self.0.take().expect("running").wait_with_output()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// Starts a helper script whose first line of output is `<prefix><rest>`
/// once it listens; returns it and `<rest>`.
pub fn start_announcing(cmd: &mut Command, prefix: &str) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (cargo xtask setup)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read the helper's first line");
    let Some(rest) = line.strip_prefix(prefix) else {
        panic!(
            "{cmd:?} did not start ({line:?}); \
             run `cargo xtask setup` to install its Python packages"
        );
    };
    (child, rest.trim().to_owned())
}

/// Reads `output` (a child's stderr) until a line containing `marker`,
/// then goes on reading it in a thread, echoing every line, so the child
/// never blocks on a full pipe; the thread's result is all of it.
pub fn wait_for_line(
    output: impl std::io::Read + Send + 'static,
    marker: &'static str,
) -> std::thread::JoinHandle<String> {
    let (seen, wait) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.contains(marker) {
                let _ = seen.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if wait
        .recv_timeout(std::time::Duration::from_secs(120))
        .is_err()
    {
        panic!("no line with {marker:?} in 120 s (or the child exited first)");
    }
    reader
}

/// The OTLP receiver of tests/e2e/otlp_receiver.py (official Python types).
pub struct Receiver {
    child: Child,
    /// Its gRPC port.
    pub grpc_port: u16,
    /// Its HTTP port.
    pub http_port: u16,
    out: std::path::PathBuf,
}

impl Receiver {
    /// Starts it, writing to `dir`; `args` are extra options of
    /// otlp_receiver.py (`--fail-first N`, `--fail-as HOW`, `--delay S`,
    /// `--reject N`, `--tls-cert PEM --tls-key PEM`).
    pub fn start(dir: &std::path::Path, args: &[&str]) -> Self {
        let out = dir.join("received.jsonl");
        let (child, ports) = start_announcing(
            Command::new("python3")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/e2e/otlp_receiver.py"
                ))
                .arg("--out")
                .arg(&out)
                .args(args),
            "PORTS ",
        );
        let ports: Vec<u16> = ports
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        Self {
            child,
            grpc_port: ports[0],
            http_port: ports[1],
            out,
        }
    }

    /// Requests answered with a failure so far (`--fail-first`), as
    /// their transports (`http`, `grpc`).
    pub fn failures(&self) -> Vec<String> {
        std::fs::read_to_string(self.out.with_extension("jsonl.failed"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Its port for `protocol` (`grpc`, else HTTP).
    pub fn port(&self, protocol: &str) -> u16 {
        match protocol {
            "grpc" => self.grpc_port,
            _ => self.http_port,
        }
    }

    /// Requests that arrived so far, answered or not (a `--delay`ed
    /// request counts as it arrives).
    pub fn arrived_count(&self) -> usize {
        std::fs::read(self.out.with_extension("arrivals"))
            .unwrap_or_default()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// How many requests were received so far (whole lines only: the
    /// receiver may be writing one while this reads).
    pub fn received_count(&self) -> usize {
        std::fs::read(&self.out)
            .unwrap_or_default()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// Summaries of every request received so far.
    pub fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A cgroup directory removed (with the process moved out) on drop.
pub struct FakeContainer {
    dirs: Vec<PathBuf>,
    root: PathBuf,
}

impl FakeContainer {
    /// Creates the cgroups of container `container_id` in pod `pod_uid`
    /// (kubelet + containerd, systemd driver).
    pub fn create(container_id: &str, pod_uid: &str) -> Self {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
            .expect("cgroup v2 is mounted at /sys/fs/cgroup/unified or /sys/fs/cgroup");
        let uid = pod_uid.replace('-', "_");
        let mut dir = root.clone();
        let mut dirs = Vec::new();
        for component in [
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            format!("kubepods-besteffort-pod{uid}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ] {
            dir.push(component);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
                dirs.push(dir.clone());
            }
        }
        Self { dirs, root }
    }

    /// The container's cgroup directory.
    pub fn leaf(&self) -> &Path {
        self.dirs.last().expect("created")
    }

    /// Moves process `pid` into the container's cgroup.
    pub fn adopt(&self, pid: u32) {
        std::fs::write(self.leaf().join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|err| panic!("moving {pid} into {}: {err}", self.leaf().display()));
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        // Move anything left back to the root, then remove leaf first.
        if let Ok(pids) = std::fs::read_to_string(self.leaf().join("cgroup.procs")) {
            for pid in pids.lines() {
                std::fs::write(self.root.join("cgroup.procs"), pid).ok();
            }
        }
        for dir in self.dirs.iter().rev() {
            std::fs::remove_dir(dir).ok();
        }
    }
}

/// A private CA and a certificate it signed for 127.0.0.1, written to `dir`
/// as ca.pem, server.pem and server.key.
pub fn private_ca(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "hostprof test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// Polls until `done` holds, failing the test after `limit`: tests wait
/// for what they need to see, not for a time that a loaded machine may
/// not meet.
pub fn wait_until(limit: std::time::Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not after {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}
