//! Encodes a [`Profile`] as pprof (`profile.proto`), gzip-compressed.
//!
//! The profile's tables are already interned, so this only translates:
//! table index `i` becomes pprof id `i + 1` (0 means "none" in pprof), and
//! every string goes through one string table whose entry 0 is "".

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::UNIX_EPOCH;

use flate2::write::GzEncoder;
use flate2::Compression;
use hostprof_proto::pprof;
use prost::Message;

use crate::profile::Profile;
use crate::trace_link::{SPAN_ID, TRACE_ID};

/// Errors writing a pprof file.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    /// Writing or compressing failed.
    #[error("writing the pprof profile failed")]
    Write(#[from] std::io::Error),
    /// The output file could not be created.
    #[error("cannot create {path} (check that the directory exists and is writable)")]
    Create {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Interns strings into a pprof string table.
#[derive(Debug)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Self {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.index.get(s) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), id);
        id
    }
}

/// The pprof message for `profile`.
pub fn encode(profile: &Profile) -> pprof::Profile {
    let mut strings = Strings::new();
    let value_type = |strings: &mut Strings, ty: &str, unit: &str| pprof::ValueType {
        r#type: strings.id(ty),
        unit: strings.id(unit),
    };
    let sample_type = profile
        .sample_types
        .iter()
        .map(|t| value_type(&mut strings, t.name, t.unit))
        .collect();
    let period_type = Some(value_type(
        &mut strings,
        profile.period_type.name,
        profile.period_type.unit,
    ));
    let period = profile.period as i64;

    let function = profile
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| pprof::Function {
            id: i as u64 + 1,
            name: strings.id(&f.name),
            system_name: strings.id(f.system_name.as_deref().unwrap_or(&f.name)),
            filename: f.filename.as_deref().map_or(0, |n| strings.id(n)),
            start_line: 0,
        })
        .collect();

    // What the locations of each mapping carry, for the has_* flags.
    let mut carried = vec![Carried::default(); profile.mappings.len()];
    for location in &profile.locations {
        let Some(mapping) = location.mapping else {
            continue;
        };
        let c = &mut carried[mapping.index()];
        c.functions = true;
        c.inline |= location.lines.len() > 1;
        for line in &location.lines {
            c.lines |= line.line.is_some();
            c.filenames |= profile.function(line.function).filename.is_some();
        }
    }
    let mapping = profile
        .mappings
        .iter()
        .zip(&carried)
        .enumerate()
        .map(|(i, (m, c))| pprof::Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.file_offset,
            filename: strings.id(&m.path),
            build_id: m.build_id.as_deref().map_or(0, |b| strings.id(b)),
            has_functions: c.functions,
            has_filenames: c.filenames,
            has_line_numbers: c.lines,
            has_inline_frames: c.inline,
        })
        .collect();

    let location = profile
        .locations
        .iter()
        .enumerate()
        .map(|(i, l)| pprof::Location {
            id: i as u64 + 1,
            mapping_id: l.mapping.map_or(0, |m| m.index() as u64 + 1),
            address: l.address,
            line: l
                .lines
                .iter()
                .map(|line| pprof::Line {
                    function_id: line.function.index() as u64 + 1,
                    line: line.line.map_or(0, i64::from),
                    column: 0,
                })
                .collect(),
            is_folded: false,
        })
        .collect();

    let [pid_key, tid_key] = ["pid", "tid"].map(|k| strings.id(k));
    let sample = profile
        .samples
        .iter()
        .map(|s| {
            let process = profile.process(s.process);
            let mut label = vec![
                pprof::Label {
                    key: pid_key,
                    num: i64::from(process.pid),
                    ..Default::default()
                },
                pprof::Label {
                    key: tid_key,
                    num: i64::from(s.tid),
                    ..Default::default()
                },
            ];
            let mut text = vec![
                ("thread_name", s.thread_name.as_str()),
                ("process", process.executable_name.as_str()),
            ];
            if let Some(container) = &process.container {
                text.push(("container.id", container.id.as_str()));
                if let Some(uid) = &container.pod_uid {
                    text.push(("k8s.pod.uid", uid.as_str()));
                }
            }
            if let Some(pod) = &process.pod {
                text.push(("k8s.pod.name", &pod.pod_name));
                text.push(("k8s.namespace.name", &pod.namespace));
                text.push(("k8s.container.name", &pod.container_name));
                if let Some(node) = &pod.node_name {
                    text.push(("k8s.node.name", node));
                }
            }
            text.extend(s.labels.iter().map(|(key, value)| (*key, value.as_str())));
            let link = s.link.map(|link| (link.trace_id_hex(), link.span_id_hex()));
            if let Some((trace_id, span_id)) = &link {
                text.push((TRACE_ID, trace_id));
                text.push((SPAN_ID, span_id));
            }
            label.extend(text.into_iter().map(|(key, value)| pprof::Label {
                key: strings.id(key),
                str: strings.id(value),
                ..Default::default()
            }));
            pprof::Sample {
                location_id: s.stack.iter().map(|l| l.index() as u64 + 1).collect(),
                value: s.values.iter().map(|&v| v as i64).collect(),
                label,
            }
        })
        .collect();

    let mut comment = Vec::new();
    let stats = &profile.stats;
    if stats.dropped > 0 {
        comment.push(strings.id(&format!(
            "{} samples were dropped in the kernel (maps full)",
            stats.dropped
        )));
    }
    let lost_stacks = stats.user_stack_errors + stats.kernel_stack_errors + stats.stacks_lost;
    if lost_stacks > 0 {
        comment.push(strings.id(&format!("{lost_stacks} stacks could not be read")));
    }
    let default_sample_type = strings.id(profile.sample_types[profile.default_sample_type].name);
    let time_nanos = profile
        .start_time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);

    pprof::Profile {
        sample_type,
        sample,
        mapping,
        location,
        function,
        string_table: strings.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos,
        duration_nanos: profile.duration.as_nanos() as i64,
        period_type,
        period,
        comment,
        default_sample_type,
        doc_url: 0,
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Carried {
    functions: bool,
    filenames: bool,
    lines: bool,
    inline: bool,
}

/// Writes `profile` gzip-compressed to `out`.
pub fn write_gzip(profile: &Profile, out: impl Write) -> Result<(), PprofError> {
    let bytes = encode(profile).encode_to_vec();
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()?.flush()?;
    Ok(())
}

/// Writes `profile` gzip-compressed to the file at `path`.
pub fn write_file(profile: &Profile, path: &Path) -> Result<(), PprofError> {
    let file = std::fs::File::create(path).map_err(|source| PprofError::Create {
        path: path.display().to_string(),
        source,
    })?;
    write_gzip(profile, std::io::BufWriter::new(file))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Read;

    use super::*;
    use crate::profile::fixtures::sample_profile;

    /// The string labels of sample `index` of `p`, by key.
    fn string_labels(p: &pprof::Profile, index: usize) -> HashMap<&str, &str> {
        let s = |i: i64| p.string_table[i as usize].as_str();
        p.sample[index]
            .label
            .iter()
            .filter(|l| l.str != 0)
            .map(|l| (s(l.key), s(l.str)))
            .collect()
    }

    #[test]
    fn encodes_a_self_consistent_profile() {
        let profile = sample_profile();
        let mut gz = Vec::new();
        write_gzip(&profile, &mut gz).unwrap();
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut bytes)
            .unwrap();
        let p = pprof::Profile::decode(&bytes[..]).unwrap();
        let s = |i: i64| p.string_table[i as usize].as_str();

        assert_eq!(p.string_table[0], "");
        let unique: HashSet<&String> = p.string_table.iter().collect();
        assert_eq!(unique.len(), p.string_table.len(), "no duplicate strings");
        assert_eq!(
            p.sample_type
                .iter()
                .map(|t| (s(t.r#type), s(t.unit)))
                .collect::<Vec<_>>(),
            vec![("samples", "count"), ("cpu", "nanoseconds")]
        );
        let period_type = p.period_type.unwrap();
        assert_eq!(
            (s(period_type.r#type), s(period_type.unit)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(p.period, 10_000_000);
        assert_eq!(p.time_nanos, 5_000_000_000);
        assert_eq!(p.duration_nanos, 2_000_000_000);
        assert_eq!(s(p.default_sample_type), "cpu");
        assert!(s(p.comment[0]).contains("1 samples were dropped"));

        let functions: HashMap<u64, &pprof::Function> =
            p.function.iter().map(|f| (f.id, f)).collect();
        let locations: HashMap<u64, &pprof::Location> =
            p.location.iter().map(|l| (l.id, l)).collect();
        let mappings: HashMap<u64, &pprof::Mapping> = p.mapping.iter().map(|m| (m.id, m)).collect();
        assert!(
            !functions.contains_key(&0)
                && !locations.contains_key(&0)
                && !mappings.contains_key(&0)
        );
        for l in &p.location {
            assert!(mappings.contains_key(&l.mapping_id));
            for line in &l.line {
                assert!(functions.contains_key(&line.function_id));
            }
        }
        let app = p
            .mapping
            .iter()
            .find(|m| s(m.filename) == "/usr/bin/app")
            .unwrap();
        assert_eq!(s(app.build_id), "abcd");
        assert!(
            app.has_functions && app.has_filenames && app.has_line_numbers && app.has_inline_frames
        );

        let hot = &p.sample[0];
        assert_eq!(hot.value, vec![7, 70_000_000]);
        let leaf = locations[&hot.location_id[0]];
        let names: Vec<&str> = leaf
            .line
            .iter()
            .map(|l| s(functions[&l.function_id].name))
            .collect();
        assert_eq!(names, vec!["helper", "hot"], "innermost inlined first");
        let labels: HashMap<&str, &pprof::Label> =
            hot.label.iter().map(|l| (s(l.key), l)).collect();
        assert_eq!(labels["pid"].num, 42);
        assert_eq!(labels["tid"].num, 43);
        assert_eq!(s(labels["thread_name"].str), "worker");
        assert_eq!(s(labels["process"].str), "app");
        assert!(!labels.contains_key("container.id"));
        assert!(!labels.contains_key(TRACE_ID), "no span, no trace label");

        let mut linked = sample_profile();
        let mut span_id = [0; 8];
        span_id[7] = 0xab;
        linked.samples[0].link = Some(crate::trace_link::TraceLink {
            trace_id: [0x4b; 16],
            span_id,
        });
        let p = encode(&linked);
        let labels = string_labels(&p, 0);
        assert_eq!(labels[TRACE_ID], "4b".repeat(16));
        assert_eq!(labels[SPAN_ID], "00000000000000ab");

        let mut in_pod = sample_profile();
        let id = "cd".repeat(32);
        in_pod.processes[0].container = crate::container::cgroup::parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod3f1c2a4b_5d6e_4f70_8192_a3b4c5d6e7f8.slice/cri-containerd-{id}.scope"
        ));
        let p = encode(&in_pod);
        let labels = string_labels(&p, 0);
        assert_eq!(labels["container.id"], id);
        assert_eq!(
            labels["k8s.pod.uid"],
            "3f1c2a4b-5d6e-4f70-8192-a3b4c5d6e7f8"
        );
    }
}
