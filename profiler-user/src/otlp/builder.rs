//! Translates a [`Profile`] into an OTLP `ExportProfilesServiceRequest`
//! (profiles v1development, proto v1.10.0): pure, no I/O.
//!
//! Follows the proto's rules: one dictionary for the whole request whose
//! every table starts with its zero value (`string_table[0] == ""`, empty
//! mapping/location/function/link/attribute/stack at index 0), no duplicate
//! table entries, samples with equal {stack, attributes, link} merged, and
//! stacks leaf first. One `ResourceProfiles` per container, and one per
//! process outside containers; in each, one `Profile` per sample type of
//! each profile kind. A sample's trace link is an entry of the link table
//! (`link_index` 0, the zero link, when it ran in no known span).

use std::borrow::Borrow;
use std::hash::Hash;
use std::time::UNIX_EPOCH;

use hostprof_proto::otlp::collector::profiles::v1development::ExportProfilesServiceRequest;
use hostprof_proto::otlp::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use hostprof_proto::otlp::profiles::v1development as pb;
use hostprof_proto::otlp::resource::v1::Resource;

use super::host::HostIdentity;
use crate::container::ContainerRef;
use crate::k8s::PodContainer;
use crate::kind::Event;
use crate::profile::{FrameKind, Process, Profile};
use crate::trace_link::TraceLink;
use crate::FastMap;

/// The instrumentation scope every profile is reported under.
const SCOPE_NAME: &str = "hostprof";

/// An append-only table handing out one index per distinct key, with the
/// zero value at index 0.
struct Table<K, V> {
    items: Vec<V>,
    index: FastMap<K, i32>,
}

impl<K: Eq + Hash, V: Default> Table<K, V> {
    fn new() -> Self {
        Self {
            items: vec![V::default()],
            index: FastMap::default(),
        }
    }

    fn intern(&mut self, key: K, make: impl FnOnce() -> V) -> i32 {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        self.insert(key, make())
    }

    /// Like [`Self::intern`], looked up by a borrowed key: the owned key
    /// and the value are made only when the entry is new.
    fn intern_borrowed<Q>(&mut self, key: &Q, make: impl FnOnce() -> (K, V)) -> i32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let (key, value) = make();
        self.insert(key, value)
    }

    fn insert(&mut self, key: K, value: V) -> i32 {
        let i = i32::try_from(self.items.len()).expect("fewer than 2^31 dictionary entries");
        self.items.push(value);
        self.index.insert(key, i);
        i
    }
}

/// An attribute's value as callers pass it (borrowed: a sample's thread
/// name is looked up, not copied, once its attribute exists).
#[derive(Clone, Copy)]
enum AttrValue<'a> {
    Str(&'a str),
    Int(i64),
}

/// An attribute's value as the attribute table is keyed: a string value
/// by its index among the distinct string values (not emitted; the
/// attribute carries the string itself).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum AttrKey {
    Str(i32),
    Int(i64),
}

/// A location as the dictionary dedupes it: mapping index, address,
/// (function index, line) pairs and attribute indices.
type LocationKey = (i32, u64, Vec<(i32, i64)>, Vec<i32>);

/// The request-wide dictionary under construction. Every table is keyed
/// by its entries' contents, so profiles of several kinds that share
/// functions, mappings and locations share their entries.
struct Dictionary {
    strings: Table<String, String>,
    attributes: Table<(i32, AttrKey), pb::KeyValueAndUnit>,
    /// The distinct string values of attributes, indexed for [`AttrKey`].
    attribute_strings: Table<String, ()>,
    stacks: Table<Vec<i32>, pb::Stack>,
    links: Table<TraceLink, pb::Link>,
    functions: Table<(i32, i32, i32), pb::Function>,
    mappings: Table<(u64, u64, u64, i32, Vec<i32>), pb::Mapping>,
    locations: Table<LocationKey, pb::Location>,
}

impl Dictionary {
    fn new() -> Self {
        Self {
            strings: Table::new(),
            attributes: Table::new(),
            attribute_strings: Table::new(),
            stacks: Table::new(),
            links: Table::new(),
            functions: Table::new(),
            mappings: Table::new(),
            locations: Table::new(),
        }
    }

    /// Adds `profile`'s functions, mappings and locations; returns the
    /// dictionary index of each of its locations.
    fn profile_locations(&mut self, profile: &Profile) -> Vec<i32> {
        let functions: Vec<i32> = profile
            .functions
            .iter()
            .map(|f| {
                let name = self.string(&f.name);
                let system_name = self.string(f.system_name.as_deref().unwrap_or(&f.name));
                let filename = f.filename.as_deref().map_or(0, |n| self.string(n));
                self.functions
                    .intern((name, system_name, filename), || pb::Function {
                        name_strindex: name,
                        system_name_strindex: system_name,
                        filename_strindex: filename,
                        start_line: 0,
                    })
            })
            .collect();
        let mappings: Vec<i32> = profile
            .mappings
            .iter()
            .map(|m| {
                let filename = self.string(&m.path);
                let attributes: Vec<i32> = m
                    .build_id
                    .iter()
                    .map(|id| self.attribute("process.executable.build_id.gnu", AttrValue::Str(id)))
                    .collect();
                let key = (
                    m.start,
                    m.limit,
                    m.file_offset,
                    filename,
                    attributes.clone(),
                );
                self.mappings.intern(key, || pb::Mapping {
                    memory_start: m.start,
                    memory_limit: m.limit,
                    file_offset: m.file_offset,
                    filename_strindex: filename,
                    attribute_indices: attributes,
                })
            })
            .collect();
        profile
            .locations
            .iter()
            .map(|l| {
                let frame_type = match l.kind {
                    FrameKind::Kernel => "kernel",
                    FrameKind::Native => "native",
                    FrameKind::Rust => "rust",
                    FrameKind::V8js => "v8js",
                    FrameKind::Jvm => "jvm",
                    FrameKind::Dotnet => "dotnet",
                    FrameKind::Cpython => "cpython",
                };
                let attributes =
                    vec![self.attribute("profile.frame.type", AttrValue::Str(frame_type))];
                let mapping = l.mapping.map_or(0, |m| mappings[m.index()]);
                let lines: Vec<(i32, i64)> = l
                    .lines
                    .iter()
                    .map(|line| {
                        (
                            functions[line.function.index()],
                            line.line.map_or(0, i64::from),
                        )
                    })
                    .collect();
                let key = (mapping, l.address, lines.clone(), attributes.clone());
                self.locations.intern(key, || pb::Location {
                    mapping_index: mapping,
                    address: l.address,
                    lines: lines
                        .into_iter()
                        .map(|(function_index, line)| pb::Line {
                            function_index,
                            line,
                            column: 0,
                        })
                        .collect(),
                    attribute_indices: attributes,
                })
            })
            .collect()
    }

    fn string(&mut self, s: &str) -> i32 {
        if s.is_empty() {
            return 0;
        }
        self.strings
            .intern_borrowed(s, || (s.to_owned(), s.to_owned()))
    }

    fn attribute(&mut self, key: &str, value: AttrValue<'_>) -> i32 {
        let key_strindex = self.string(key);
        let value_key = match value {
            AttrValue::Str(s) => AttrKey::Str(
                self.attribute_strings
                    .intern_borrowed(s, || (s.to_owned(), ())),
            ),
            AttrValue::Int(i) => AttrKey::Int(i),
        };
        self.attributes
            .intern((key_strindex, value_key), || pb::KeyValueAndUnit {
                key_strindex,
                value: Some(AnyValue {
                    value: Some(match value {
                        AttrValue::Str(s) => any_value::Value::StringValue(s.to_owned()),
                        AttrValue::Int(i) => any_value::Value::IntValue(i),
                    }),
                }),
                unit_strindex: 0,
            })
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> pb::ValueType {
        pb::ValueType {
            type_strindex: self.string(ty),
            unit_strindex: self.string(unit),
        }
    }
}

fn key_value(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn str_kv(key: &str, value: &str) -> KeyValue {
    key_value(key, any_value::Value::StringValue(value.to_owned()))
}

/// Values and events of samples merged by (stack index, attribute
/// indices, link index).
type MergedSamples = FastMap<(i32, Vec<i32>, i32), (Vec<i64>, Vec<Event>)>;

/// Builds the export request for `profiles` (one per kind, from the same
/// window): one dictionary shared by all, and in every resource one OTLP
/// `Profile` per sample type of each kind that has samples there (the
/// proto allows one sample type per `Profile`).
pub fn build_request(profiles: &[Profile], host: &HostIdentity) -> ExportProfilesServiceRequest {
    let mut dict = Dictionary::new();
    // Samples per resource, then per profile kind: one resource per
    // container, one per process outside containers. In a container's
    // resource the process is a sample attribute.
    let mut per_group: Vec<(Group<'_>, Vec<MergedSamples>)> = Vec::new();
    let mut slot: FastMap<Group<'_>, usize> = FastMap::default();
    let mut location_indices: Vec<i32> = Vec::new();
    for (k, profile) in profiles.iter().enumerate() {
        let locations = dict.profile_locations(profile);
        // Each process's resource and sample attributes, found at its
        // first sample (not hashed again for every sample).
        let mut processes: Vec<Option<(usize, Vec<i32>)>> = vec![None; profile.processes.len()];
        for sample in &profile.samples {
            location_indices.clear();
            location_indices.extend(sample.stack.iter().map(|l| locations[l.index()]));
            let stack_index = dict
                .stacks
                .intern_borrowed(location_indices.as_slice(), || {
                    let indices = location_indices.clone();
                    (
                        indices.clone(),
                        pb::Stack {
                            location_indices: indices,
                        },
                    )
                });
            let (i, process_attributes) =
                processes[sample.process.index()].get_or_insert_with(|| {
                    let (group, attributes) =
                        process_group(&mut dict, profile.process(sample.process));
                    let i = *slot.entry(group.clone()).or_insert_with(|| {
                        per_group.push((group, vec![MergedSamples::default(); profiles.len()]));
                        per_group.len() - 1
                    });
                    (i, attributes)
                });
            let mut attributes =
                Vec::with_capacity(2 + process_attributes.len() + sample.labels.len());
            attributes.push(dict.attribute("thread.name", AttrValue::Str(&sample.thread_name)));
            attributes.push(dict.attribute("thread.id", AttrValue::Int(i64::from(sample.tid))));
            attributes.extend_from_slice(process_attributes);
            for (key, value) in &sample.labels {
                attributes.push(dict.attribute(key, AttrValue::Str(value)));
            }
            let link_index = sample.link.map_or(0, |link| {
                dict.links.intern(link, || pb::Link {
                    trace_id: link.trace_id.to_vec(),
                    span_id: link.span_id.to_vec(),
                })
            });
            let (values, events) = per_group[*i].1[k]
                .entry((stack_index, attributes, link_index))
                .or_insert_with(|| (vec![0; sample.values.len()], Vec::new()));
            for (sum, &value) in values.iter_mut().zip(&sample.values) {
                *sum += value as i64;
            }
            events.extend_from_slice(&sample.events);
        }
    }

    let scope = InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let resource_profiles = per_group
        .into_iter()
        .map(|(group, per_kind)| {
            let otlp_profiles = profiles
                .iter()
                .zip(per_kind)
                .filter(|(_, samples)| !samples.is_empty())
                .flat_map(|(profile, samples)| otlp_profiles(&mut dict, profile, samples))
                .collect();
            pb::ResourceProfiles {
                resource: Some(Resource {
                    attributes: resource_attributes(&group, host),
                    ..Default::default()
                }),
                scope_profiles: vec![pb::ScopeProfiles {
                    scope: Some(scope.clone()),
                    profiles: otlp_profiles,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();

    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(pb::ProfilesDictionary {
            mapping_table: dict.mappings.items,
            location_table: dict.locations.items,
            function_table: dict.functions.items,
            link_table: dict.links.items,
            string_table: dict.strings.items,
            attribute_table: dict.attributes.items,
            stack_table: dict.stacks.items,
        }),
    }
}

/// The resource `process` is reported under, and the attributes its
/// samples carry there (in a container's resource: which process).
fn process_group<'a>(dict: &mut Dictionary, process: &'a Process) -> (Group<'a>, Vec<i32>) {
    match &process.container {
        Some(container) => {
            let mut attributes = vec![
                dict.attribute("process.pid", AttrValue::Int(i64::from(process.pid))),
                dict.attribute(
                    "process.executable.name",
                    AttrValue::Str(&process.executable_name),
                ),
            ];
            if let Some(path) = &process.executable_path {
                attributes.push(dict.attribute(
                    "process.executable.path",
                    AttrValue::Str(&path.to_string_lossy()),
                ));
            }
            (
                Group::Container(container, process.pod.as_deref()),
                attributes,
            )
        }
        None => (Group::Process(process), Vec::new()),
    }
}

/// One OTLP `Profile` per sample type of `profile`, over one resource's
/// merged `samples`, in the profile's sample-type order.
fn otlp_profiles(
    dict: &mut Dictionary,
    profile: &Profile,
    samples: MergedSamples,
) -> Vec<pb::Profile> {
    let mut samples: Vec<_> = samples.into_iter().collect();
    samples.sort_by(|a, b| a.0.cmp(&b.0));
    let time_unix_nano = profile
        .start_time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let period_type = dict.value_type(profile.period_type.name, profile.period_type.unit);
    profile
        .sample_types
        .iter()
        .enumerate()
        .map(|(v, sample_type)| pb::Profile {
            sample_type: Some(dict.value_type(sample_type.name, sample_type.unit)),
            samples: samples
                .iter()
                // A sample with nothing of this type is left out of its
                // profile (the memory profile's in-use samples allocated
                // nothing in the window, its allocations hold nothing).
                .filter(|(_, (values, events))| !events.is_empty() || values[v] != 0)
                .map(
                    |((stack_index, attribute_indices, link_index), (values, events))| {
                        // With events, a value per event at its time (the
                        // proto's per-observation shape); else the sum.
                        let (values, timestamps_unix_nano) = if events.is_empty() {
                            (vec![values[v]], Vec::new())
                        } else {
                            let mut events = events.clone();
                            events.sort_unstable();
                            events
                                .iter()
                                .map(|e| (e.values[v] as i64, e.time_unix_nano))
                                .unzip()
                        };
                        pb::Sample {
                            stack_index: *stack_index,
                            attribute_indices: attribute_indices.clone(),
                            link_index: *link_index,
                            values,
                            timestamps_unix_nano,
                        }
                    },
                )
                .collect(),
            time_unix_nano,
            duration_nano: profile.duration.as_nanos() as u64,
            period_type: Some(period_type),
            period: profile.period as i64,
            ..Default::default()
        })
        .collect()
}

/// What one `ResourceProfiles` stands for.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Group<'a> {
    /// Every process of a container, with its Kubernetes names if known.
    Container(&'a ContainerRef, Option<&'a PodContainer>),
    /// One process outside containers.
    Process(&'a Process),
}

fn resource_attributes(group: &Group<'_>, host: &HostIdentity) -> Vec<KeyValue> {
    let mut attributes = vec![
        str_kv("host.name", &host.host_name),
        str_kv("os.type", "linux"),
    ];
    if let Some(id) = &host.host_id {
        attributes.push(str_kv("host.id", id));
    }
    match group {
        Group::Container(container, pod) => {
            attributes.push(str_kv("container.id", container.id.as_str()));
            if let Some(runtime) = container.runtime.name() {
                attributes.push(str_kv("container.runtime", runtime));
            }
            if let Some(uid) = &container.pod_uid {
                attributes.push(str_kv("k8s.pod.uid", uid.as_str()));
            }
            if let Some(pod) = pod {
                attributes.push(str_kv("k8s.pod.name", &pod.pod_name));
                attributes.push(str_kv("k8s.namespace.name", &pod.namespace));
                attributes.push(str_kv("k8s.container.name", &pod.container_name));
                if let Some(node) = &pod.node_name {
                    attributes.push(str_kv("k8s.node.name", node));
                }
            }
        }
        Group::Process(process) => {
            attributes.push(key_value(
                "process.pid",
                any_value::Value::IntValue(i64::from(process.pid)),
            ));
            attributes.push(str_kv("process.executable.name", &process.executable_name));
            if let Some(path) = &process.executable_path {
                attributes.push(str_kv("process.executable.path", &path.to_string_lossy()));
            }
        }
    }
    for (key, value) in &host.extra {
        if !attributes.iter().any(|kv| &kv.key == key) {
            attributes.push(str_kv(key, value));
        }
    }
    attributes
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::profile::fixtures::sample_profile;

    fn host() -> HostIdentity {
        HostIdentity {
            host_name: "node-1".into(),
            host_id: Some("abc123".into()),
            extra: vec![("service.name".into(), "hostprof".into())],
        }
    }

    /// A window's worth of a busy host's CPU samples (3,000 distinct
    /// samples of 40 processes over 2,000 locations) built into a request
    /// 50 times: what one export costs. A figure, not a check (run by
    /// hand: `cargo test --release -p hostprof --lib request_build_time
    /// -- --ignored --nocapture`).
    #[test]
    #[ignore = "a timing, run by hand"]
    fn request_build_time() {
        use crate::profile::ProfileBuilder;
        use crate::ProfileKind;
        let mut b = ProfileBuilder::new(ProfileKind::Cpu);
        let locations: Vec<_> = (0..2000u64)
            .map(|i| b.named_location(&format!("function_{i}"), 0x1000 + i * 16))
            .collect();
        let processes: Vec<_> = (0..40u32)
            .map(|n| {
                b.process(Process {
                    pid: 100 + n,
                    executable_name: format!("process{n}"),
                    executable_path: Some(format!("/usr/bin/process{n}").into()),
                    container: None,
                    pod: None,
                })
            })
            .collect();
        let mut x = 1u64;
        for n in 0..3000u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let depth = 8 + (x >> 60) as usize;
            let stack = (0..depth)
                .map(|d| locations[((x >> (d * 2)) as usize + d * 7) % locations.len()])
                .collect();
            let process = processes[(n % 40) as usize];
            b.add_cpu(
                process,
                1000 + (n % 97) as u32,
                "worker-thread",
                stack,
                1 + n % 3,
            );
        }
        let profile = b.build(
            std::time::SystemTime::UNIX_EPOCH,
            std::time::Duration::from_secs(10),
            10_101_010,
        );
        let started = std::time::Instant::now();
        for _ in 0..50 {
            std::hint::black_box(build_request(std::slice::from_ref(&profile), &host()));
        }
        println!(
            "build_request: {:.2} ms per request of {} samples",
            started.elapsed().as_secs_f64() * 1e3 / 50.0,
            profile.samples.len()
        );
    }

    /// `sample_profile` with its sample copied twice into span `a` and
    /// once into span `b`.
    fn linked_profile() -> (Profile, TraceLink, TraceLink) {
        let link = |n| TraceLink {
            trace_id: [n; 16],
            span_id: [n + 1; 8],
        };
        let (a, b) = (link(1), link(7));
        let mut profile = sample_profile();
        let plain = profile.samples[0].clone();
        for l in [a, a, b] {
            let mut sample = plain.clone();
            sample.link = Some(l);
            profile.samples.push(sample);
        }
        (profile, a, b)
    }

    #[test]
    fn links_are_deduplicated_and_keep_samples_apart() {
        let (profile, a, b) = linked_profile();
        let request = build_request(&[profile], &host());
        let d = request.dictionary.unwrap();
        assert_eq!(d.link_table.len(), 3, "the zero link, a and b");
        assert_eq!(d.link_table[0], pb::Link::default());
        let index = |l: TraceLink| {
            d.link_table
                .iter()
                .position(|x| x.trace_id == l.trace_id && x.span_id == l.span_id)
                .unwrap() as i32
        };
        let samples = &request.resource_profiles[0].scope_profiles[0].profiles[0].samples;
        let mut by_link: Vec<(i32, i64)> = samples
            .iter()
            .map(|s| (s.link_index, s.values[0]))
            .collect();
        by_link.sort_unstable();
        let unlinked = sample_profile().samples;
        let plain = unlinked[0].values[0] as i64;
        let mut want: Vec<(i32, i64)> = unlinked.iter().map(|s| (0, s.values[0] as i64)).collect();
        want.extend([(index(a), 2 * plain), (index(b), plain)]);
        want.sort_unstable();
        assert_eq!(by_link, want, "equal stacks in other spans stay apart");
    }

    #[test]
    fn samples_with_events_carry_a_value_per_event_at_its_time() {
        let mut profile = sample_profile();
        let mut timed = profile.samples[0].clone();
        timed.link = Some(TraceLink {
            trace_id: [3; 16],
            span_id: [4; 8],
        });
        let width = timed.values.len();
        let event = |time, n| Event {
            time_unix_nano: time,
            values: vec![n; width],
        };
        // Two equal samples: their events merge, by time.
        let mut later = timed.clone();
        timed.events = vec![event(30, 2)];
        later.events = vec![event(10, 1), event(20, 5)];
        profile.samples.extend([timed, later]);
        let request = build_request(&[profile], &host());
        for p in &request.resource_profiles[0].scope_profiles[0].profiles {
            let with_events: Vec<_> = p
                .samples
                .iter()
                .filter(|s| !s.timestamps_unix_nano.is_empty())
                .collect();
            assert_eq!(with_events.len(), 1);
            assert_eq!(with_events[0].timestamps_unix_nano, vec![10, 20, 30]);
            assert_eq!(with_events[0].values, vec![1, 5, 2]);
            assert!(
                p.samples
                    .iter()
                    .filter(|s| s.timestamps_unix_nano.is_empty())
                    .all(|s| s.values.len() == 1),
                "samples without events keep one summed value"
            );
        }
    }

    #[test]
    fn dictionary_starts_with_zero_values_and_has_no_duplicates() {
        let request = build_request(&[sample_profile()], &host());
        let d = request.dictionary.unwrap();
        assert_eq!(d.string_table[0], "");
        assert_eq!(d.mapping_table[0], pb::Mapping::default());
        assert_eq!(d.location_table[0], pb::Location::default());
        assert_eq!(d.function_table[0], pb::Function::default());
        assert_eq!(d.link_table, vec![pb::Link::default()]);
        assert_eq!(d.attribute_table[0], pb::KeyValueAndUnit::default());
        assert_eq!(d.stack_table[0], pb::Stack::default());
        let strings: HashSet<&String> = d.string_table.iter().collect();
        assert_eq!(strings.len(), d.string_table.len());
        let stacks: HashSet<&Vec<i32>> =
            d.stack_table.iter().map(|s| &s.location_indices).collect();
        assert_eq!(stacks.len(), d.stack_table.len());
        let attrs: HashSet<String> = d.attribute_table.iter().map(|a| format!("{a:?}")).collect();
        assert_eq!(attrs.len(), d.attribute_table.len());
    }

    #[test]
    fn profiles_of_one_window_share_the_dictionary() {
        let one = build_request(&[sample_profile()], &host());
        let two = build_request(&[sample_profile(), sample_profile()], &host());
        let (d1, d2) = (one.dictionary.unwrap(), two.dictionary.unwrap());
        assert_eq!(d1, d2, "equal entries are shared, not repeated");
        let profiles = &two.resource_profiles[0].scope_profiles[0].profiles;
        assert_eq!(profiles.len(), 4, "two sample types of each profile");
        assert_eq!(profiles[0], profiles[2]);
    }

    #[test]
    fn every_index_resolves_and_stacks_are_leaf_first() {
        let request = build_request(&[sample_profile()], &host());
        let d = request.dictionary.as_ref().unwrap();
        let s = |i: i32| d.string_table[i as usize].as_str();
        assert_eq!(
            request.resource_profiles.len(),
            1,
            "one process, one resource"
        );
        let rp = &request.resource_profiles[0];
        let attrs: HashMap<&str, &AnyValue> = rp
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_ref().unwrap()))
            .collect();
        let string = |k: &str| match &attrs[k].value {
            Some(any_value::Value::StringValue(v)) => v.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(string("host.name"), "node-1");
        assert_eq!(string("host.id"), "abc123");
        assert_eq!(string("os.type"), "linux");
        assert_eq!(string("process.executable.name"), "app");
        assert_eq!(string("process.executable.path"), "/usr/bin/app");
        assert_eq!(string("service.name"), "hostprof");
        assert_eq!(
            attrs["process.pid"].value,
            Some(any_value::Value::IntValue(42))
        );
        let scope = &rp.scope_profiles[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "hostprof");
        let p = &scope.profiles[0];
        assert_eq!(s(p.sample_type.unwrap().type_strindex), "samples");
        assert_eq!(s(p.period_type.unwrap().unit_strindex), "nanoseconds");
        assert_eq!(p.period, 10_000_000);
        assert_eq!(p.time_unix_nano, 5_000_000_000);
        assert_eq!(p.duration_nano, 2_000_000_000);
        let total: i64 = p.samples.iter().map(|x| x.values[0]).sum();
        assert_eq!(total, 9);
        assert_eq!(scope.profiles.len(), 2, "one profile per sample type");
        let cpu = &scope.profiles[1];
        assert_eq!(s(cpu.sample_type.unwrap().type_strindex), "cpu");
        assert_eq!(s(cpu.sample_type.unwrap().unit_strindex), "nanoseconds");
        for (count, time) in p.samples.iter().zip(&cpu.samples) {
            assert_eq!(count.stack_index, time.stack_index);
            assert_eq!(time.values[0], count.values[0] * 10_000_000);
        }
        for sample in &p.samples {
            let stack = &d.stack_table[sample.stack_index as usize];
            let leaf = &d.location_table[stack.location_indices[0] as usize];
            let names: Vec<&str> = leaf
                .lines
                .iter()
                .map(|l| s(d.function_table[l.function_index as usize].name_strindex))
                .collect();
            assert!(
                names == ["helper", "hot"] || names == ["do_syscall_64"],
                "{names:?}"
            );
            for &a in &sample.attribute_indices {
                let key = s(d.attribute_table[a as usize].key_strindex);
                assert!(key == "thread.name" || key == "thread.id");
            }
            let mapping = &d.mapping_table[leaf.mapping_index as usize];
            assert!(!s(mapping.filename_strindex).is_empty());
        }
        let kernel_loc = d
            .location_table
            .iter()
            .find(|l| l.address == 0xffff_ffff_8100_0000)
            .unwrap();
        let frame_type = &d.attribute_table[kernel_loc.attribute_indices[0] as usize];
        assert_eq!(s(frame_type.key_strindex), "profile.frame.type");
        assert_eq!(
            frame_type.value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("kernel".into()))
        );
        let app_mapping = d
            .mapping_table
            .iter()
            .find(|m| s(m.filename_strindex) == "/usr/bin/app")
            .unwrap();
        let build_id = &d.attribute_table[app_mapping.attribute_indices[0] as usize];
        assert_eq!(s(build_id.key_strindex), "process.executable.build_id.gnu");
    }

    /// Two processes of one container, registered in a different order
    /// in each of two profiles: one resource, and every sample carries
    /// its own process's pid (each profile's processes are looked up once
    /// by their index in that profile).
    #[test]
    fn processes_of_a_container_keep_their_own_attributes_across_profiles() {
        use crate::profile::ProfileBuilder;
        use crate::ProfileKind;
        let path = format!(
            "/kubepods/besteffort/pod3f1c2a4b-5d6e-4f70-8192-a3b4c5d6e7f8/{}",
            "cd".repeat(32)
        );
        let container = crate::container::cgroup::parse_cgroup_path(&path);
        let profile = |pids: [u32; 2]| {
            let mut b = ProfileBuilder::new(ProfileKind::Cpu);
            let main = b.named_location("main", 0x10);
            for pid in pids {
                let process = b.process(Process {
                    pid,
                    executable_name: format!("app{pid}"),
                    executable_path: Some(format!("/usr/bin/app{pid}").into()),
                    container: container.clone(),
                    pod: None,
                });
                // The thread id is the pid: each sample names its process.
                b.add_cpu(process, pid, "main", vec![main], 1);
            }
            b.build(
                std::time::SystemTime::UNIX_EPOCH,
                std::time::Duration::from_secs(1),
                10_000_000,
            )
        };
        let request = build_request(&[profile([7, 9]), profile([9, 7])], &host());
        let d = request.dictionary.as_ref().unwrap();
        let s = |i: i32| d.string_table[i as usize].as_str();
        assert_eq!(request.resource_profiles.len(), 1);
        let mut seen = 0;
        for profile in &request.resource_profiles[0].scope_profiles[0].profiles {
            for sample in &profile.samples {
                let ints: HashMap<&str, String> = sample
                    .attribute_indices
                    .iter()
                    .map(|&a| {
                        let kv = &d.attribute_table[a as usize];
                        (s(kv.key_strindex), format!("{:?}", kv.value))
                    })
                    .collect();
                assert_eq!(ints["process.pid"], ints["thread.id"], "{ints:?}");
                let pid = if ints["thread.id"].contains("IntValue(7)") {
                    7
                } else {
                    9
                };
                assert!(
                    ints["process.executable.name"].contains(&format!("app{pid}")),
                    "{ints:?}"
                );
                seen += 1;
            }
        }
        // Two profiles of two sample types each, two samples in each.
        assert_eq!(seen, 8);
    }

    #[test]
    fn a_container_is_one_resource_with_the_process_on_its_samples() {
        let mut profile = sample_profile();
        let id = "ab".repeat(32);
        let path = format!("/kubepods/besteffort/pod3f1c2a4b-5d6e-4f70-8192-a3b4c5d6e7f8/{id}");
        profile.processes[0].container = crate::container::cgroup::parse_cgroup_path(&path);
        let request = build_request(&[profile], &host());
        let d = request.dictionary.as_ref().unwrap();
        let s = |i: i32| d.string_table[i as usize].as_str();
        assert_eq!(request.resource_profiles.len(), 1);
        let rp = &request.resource_profiles[0];
        let keys: HashMap<&str, String> = rp
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), format!("{:?}", kv.value)))
            .collect();
        assert!(keys["container.id"].contains(&id));
        assert!(keys["k8s.pod.uid"].contains("3f1c2a4b-5d6e-4f70-8192-a3b4c5d6e7f8"));
        assert!(!keys.contains_key("process.pid"), "{keys:?}");
        assert!(!keys.contains_key("container.runtime"), "runtime unknown");
        for sample in &rp.scope_profiles[0].profiles[0].samples {
            let sample_keys: HashSet<&str> = sample
                .attribute_indices
                .iter()
                .map(|&a| s(d.attribute_table[a as usize].key_strindex))
                .collect();
            for key in ["process.pid", "process.executable.name", "thread.id"] {
                assert!(sample_keys.contains(key), "{sample_keys:?}");
            }
        }
    }
}
