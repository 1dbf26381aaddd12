//! Which container (and Kubernetes pod) a process runs in, from its cgroup
//! path: pure string parsing of `/proc/<pid>/cgroup`, no I/O.
//!
//! Container runtimes name the cgroup of a container after its 64-hex-digit
//! id, in one of two styles depending on the cgroup driver:
//!
//! - systemd driver: a scope unit per container, `<prefix>-<id>.scope`, with
//!   the prefix naming the runtime: `cri-containerd-` (containerd),
//!   `crio-` (CRI-O), `docker-` (Docker), `libpod-` (podman). Pods are
//!   slices, `kubepods-<qos>-pod<uid>.slice`, with the uid's dashes written
//!   as underscores (systemd reserves `-` as the slice separator).
//! - cgroupfs driver: the bare id as a directory, `/docker/<id>` or
//!   `/kubepods/<qos>/pod<uid>/<id>`, with the uid as is.
//!
//! The same layouts appear nested (kind, docker-in-docker, a container's
//! own sub-cgroups): the last component that names a container wins, and
//! the pod is the last pod component before it. The conmon monitor scopes
//! of CRI-O and podman (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`)
//! are the runtime's, not the container's, and are not attributed.

use std::fmt;

/// A container id: 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// The id, or `None` unless `s` is 64 hex digits (upper case accepted
    /// and lowered).
    pub fn new(s: &str) -> Option<Self> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(s.to_ascii_lowercase()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kubernetes pod uid in canonical form (lowercase, dashed 8-4-4-4-12).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUid(String);

impl PodUid {
    /// The uid, or `None` unless `s` is a UUID written with dashes or (as
    /// the systemd driver writes it) underscores.
    pub fn new(s: &str) -> Option<Self> {
        let groups: Vec<&str> = s.split(['-', '_']).collect();
        let lengths = [8, 4, 4, 4, 12];
        let valid = s.len() == 36
            && groups.len() == lengths.len()
            && groups
                .iter()
                .zip(lengths)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        valid.then(|| Self(groups.join("-").to_ascii_lowercase()))
    }

    /// The uid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The container runtime, when the cgroup path tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// containerd (`cri-containerd-<id>.scope`).
    Containerd,
    /// CRI-O (`crio-<id>.scope`).
    CriO,
    /// Docker (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// podman (`libpod-<id>.scope`).
    Podman,
    /// A bare id (cgroupfs driver under `kubepods`): any CRI runtime.
    Unknown,
}

impl Runtime {
    /// The runtime's name as OpenTelemetry's `container.runtime` spells it;
    /// `None` when unknown.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Runtime::Containerd => Some("containerd"),
            Runtime::CriO => Some("cri-o"),
            Runtime::Docker => Some("docker"),
            Runtime::Podman => Some("podman"),
            Runtime::Unknown => None,
        }
    }
}

/// The container a process runs in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// Container id.
    pub id: ContainerId,
    /// Runtime that created it.
    pub runtime: Runtime,
    /// Kubernetes pod uid, when the container is in a pod.
    pub pod_uid: Option<PodUid>,
}

/// Systemd scope prefixes and their runtimes; the conmon prefixes come
/// first so they are matched (and refused) before their shorter cousins.
const SCOPE_PREFIXES: [(&str, Option<Runtime>); 6] = [
    ("crio-conmon-", None),
    ("libpod-conmon-", None),
    ("cri-containerd-", Some(Runtime::Containerd)),
    ("crio-", Some(Runtime::CriO)),
    ("docker-", Some(Runtime::Docker)),
    ("libpod-", Some(Runtime::Podman)),
];

/// Every cgroup path in the text of `/proc/<pid>/cgroup` (one per
/// hierarchy, duplicates removed), unified hierarchy first.
pub fn cgroup_paths(contents: &str) -> Vec<String> {
    let mut paths: Vec<(bool, &str)> = contents
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let hierarchy = fields.next()?;
            let _controllers = fields.next()?;
            Some((hierarchy != "0", fields.next()?))
        })
        .collect();
    paths.sort_by_key(|(legacy, _)| *legacy);
    let mut out: Vec<String> = Vec::new();
    for (_, path) in paths {
        if !out.iter().any(|p| p == path) {
            out.push(path.to_owned());
        }
    }
    out
}

/// The container of a process from the text of `/proc/<pid>/cgroup`: the
/// unified (v2, `0::`) line first, then every v1 hierarchy's line.
pub fn parse_proc_cgroup(contents: &str) -> Option<ContainerRef> {
    cgroup_paths(contents)
        .iter()
        .find_map(|path| parse_cgroup_path(path))
}

/// The container named by one cgroup path, if any.
pub fn parse_cgroup_path(path: &str) -> Option<ContainerRef> {
    let mut found = None;
    let mut pod_uid = None;
    for component in path.split('/') {
        if let Some(uid) = pod_of(component) {
            pod_uid = Some(uid);
        } else if let Some((id, runtime)) = container_of(component) {
            // Under /docker/ a bare id is Docker's; elsewhere unknown.
            let runtime = runtime.unwrap_or(if path.starts_with("/docker/") {
                Runtime::Docker
            } else {
                Runtime::Unknown
            });
            found = Some(ContainerRef {
                id,
                runtime,
                pod_uid: pod_uid.clone(),
            });
        }
    }
    found
}

/// `Some((id, runtime))` when `component` names a container: a runtime
/// scope (runtime known) or a bare id (runtime `None`).
fn container_of(component: &str) -> Option<(ContainerId, Option<Runtime>)> {
    if let Some(id) = ContainerId::new(component) {
        return Some((id, None));
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let (prefix, runtime) = SCOPE_PREFIXES
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))?;
    let id = ContainerId::new(&name[prefix.len()..])?;
    runtime.map(|runtime| (id, Some(runtime)))
}

/// The pod uid when `component` is a pod's cgroup: `pod<uid>` (cgroupfs)
/// or `...-pod<uid_with_underscores>.slice` (systemd).
fn pod_of(component: &str) -> Option<PodUid> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let uid = name
        .strip_prefix("pod")
        .or_else(|| name.rsplit_once("-pod").map(|(_, uid)| uid))?;
    PodUid::new(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "3f1c2a4b-5d6e-4f70-8192-a3b4c5d6e7f8";
    const UID_SYSTEMD: &str = "3f1c2a4b_5d6e_4f70_8192_a3b4c5d6e7f8";

    fn expect(path: &str, runtime: Runtime, pod: bool) {
        let found = parse_cgroup_path(path).unwrap_or_else(|| panic!("no container in {path}"));
        assert_eq!(found.id.as_str(), ID, "{path}");
        assert_eq!(found.runtime, runtime, "{path}");
        assert_eq!(
            found.pod_uid.as_ref().map(PodUid::as_str),
            pod.then_some(UID),
            "{path}"
        );
    }

    #[test]
    fn real_world_layouts() {
        use Runtime::*;
        let cases = [
            // containerd, systemd driver, each QoS class.
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"), Containerd, true),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"), Containerd, true),
            (format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"), Containerd, true),
            // cgroupfs driver.
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Unknown, true),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), Unknown, true),
            (format!("/kubepods/pod{UID}/{ID}"), Unknown, true),
            // CRI-O, both drivers.
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"), CriO, true),
            (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), CriO, true),
            // Docker.
            (format!("/system.slice/docker-{ID}.scope"), Docker, false),
            (format!("/docker/{ID}"), Docker, false),
            // podman, rootful and rootless.
            (format!("/machine.slice/libpod-{ID}.scope"), Podman, false),
            (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), Podman, false),
            // A container's own sub-cgroups.
            (format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope/init"), Containerd, true),
            (format!("/docker/{ID}/sub/group"), Docker, false),
            // kind: kubelet inside a node container.
            (format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"), Containerd, true),
            // Upper-case hex is normalized.
            (format!("/docker/{}", ID.to_uppercase()), Docker, false),
        ];
        for (path, runtime, pod) in cases {
            expect(&path, runtime, pod);
        }
    }

    #[test]
    fn nested_containers_attribute_to_the_innermost() {
        let outer = "f".repeat(64);
        let path = format!("/system.slice/docker-{outer}.scope/kubepods/pod{UID}/{ID}");
        expect(&path, Runtime::Unknown, true);
    }

    #[test]
    fn not_containers() {
        for path in [
            "/",
            "",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/sshd.service",
            "/init.scope",
            "/kubepods.slice/kubepods-besteffort.slice",
            &format!("/kubepods/besteffort/pod{UID}"),
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("/system.slice/crio-conmon-{ID}.scope"),
            &format!("/docker/{}", &ID[..63]),
            &format!("/system.slice/docker-{ID}x.scope"),
            "/kubepods/pod1234/abc",
        ] {
            assert_eq!(parse_cgroup_path(path), None, "{path}");
        }
    }

    #[test]
    fn proc_cgroup_prefers_the_unified_line_and_falls_back_to_v1() {
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse_proc_cgroup(&v2).unwrap().runtime, Runtime::Docker);
        let v1 = format!(
            "12:pids:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"
        );
        assert_eq!(parse_proc_cgroup(&v1).unwrap().id.as_str(), ID);
        let hybrid = format!("1:name=systemd:/docker/{ID}\n0::/\n");
        assert_eq!(
            parse_proc_cgroup(&hybrid).unwrap().runtime,
            Runtime::Docker,
            "an empty unified line falls back to v1"
        );
        assert_eq!(parse_proc_cgroup("0::/user.slice\n"), None);
        assert_eq!(
            cgroup_paths("2:cpu:/a\n0::/b\n1:name=systemd:/a\n"),
            vec!["/b".to_owned(), "/a".to_owned()]
        );
        assert_eq!(parse_proc_cgroup(""), None);
        assert_eq!(parse_proc_cgroup("garbage without colons"), None);
    }

    #[test]
    fn ids_and_uids_validate() {
        assert!(ContainerId::new(ID).is_some());
        assert!(ContainerId::new(&ID[1..]).is_none());
        assert!(ContainerId::new(&format!("{}g", &ID[1..])).is_none());
        assert_eq!(PodUid::new(UID_SYSTEMD).unwrap().as_str(), UID);
        assert_eq!(PodUid::new(&UID.to_uppercase()).unwrap().as_str(), UID);
        assert!(PodUid::new("3f1c2a4b-5d6e-4f70-8192a3b4c5d6e7f8").is_none());
        assert!(PodUid::new("3f1c2a4b-5d6e-4f70-8192-a3b4c5d6e7fz").is_none());
        assert_eq!(Runtime::CriO.name(), Some("cri-o"));
        assert_eq!(Runtime::Unknown.name(), None);
    }

    /// Deterministic pseudo-random strings (xorshift), so the test needs no
    /// extra crate and replays the same inputs every run.
    fn noise(seed: &mut u64, len: usize) -> String {
        const ALPHABET: &[char] = &[
            '/', '-', '_', '.', ':', '\n', 'a', 'f', '0', '9', 'p', 'o', 'd', 's', 'c', 'é', '€',
            '😀', ' ',
        ];
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ALPHABET[(*seed % ALPHABET.len() as u64) as usize]
            })
            .collect()
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let valid =
            format!("0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope");
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for round in 0..20_000 {
            let len = round % 200;
            let junk = noise(&mut seed, len);
            let cut = (seed as usize) % (valid.len() + 1);
            for input in [
                junk.clone(),
                format!("{}{junk}", &valid[..cut]),
                format!("{junk}{}", &valid[cut..]),
            ] {
                if let Some(found) = parse_proc_cgroup(&input) {
                    assert!(ContainerId::new(found.id.as_str()).is_some());
                    if let Some(uid) = &found.pod_uid {
                        assert!(PodUid::new(uid.as_str()).is_some());
                    }
                }
            }
        }
    }
}
