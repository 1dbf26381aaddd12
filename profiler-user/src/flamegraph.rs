//! Folded stacks and flamegraph SVGs (rendered by the inferno crate).
//!
//! A folded line is `process;outermost;...;leaf count`: the process's
//! executable name is the root frame, inlined calls are frames of their
//! own, and kernel frames carry inferno's `_[k]` suffix so they are colored
//! apart from user code. Names are escaped ([`crate::text::escape`]): a
//! line holds one stack whatever the names hold, and the SVG, drawn from
//! these lines, shows the escapes too.

use std::collections::BTreeMap;
use std::io::Write;

use crate::profile::{FrameKind, Profile};
use crate::text::escape;

/// Errors writing folded stacks or an SVG.
#[derive(Debug, thiserror::Error)]
pub enum FlamegraphError {
    /// Writing failed.
    #[error("writing flamegraph output failed")]
    Write(#[from] std::io::Error),
}

/// Folded stacks of `profile`, merged and sorted, weighed by the kind's
/// [`crate::kind::ProfileKind::weight`] value.
pub fn folded_lines(profile: &Profile) -> Vec<String> {
    let weight = profile.kind.weight();
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for sample in &profile.samples {
        let mut frames = vec![profile.process(sample.process).executable_name.clone()];
        // Samples are leaf first; folded stacks are root first. Within a
        // location, lines are innermost first too.
        for id in sample.stack.iter().rev() {
            let location = profile.location(*id);
            for line in location.lines.iter().rev() {
                let name = &profile.function(line.function).name;
                frames.push(match location.kind {
                    FrameKind::Kernel => format!("{name}_[k]"),
                    // JIT code, as perf and inferno mark it.
                    FrameKind::V8js | FrameKind::Jvm | FrameKind::Dotnet | FrameKind::Cpython => {
                        format!("{name}_[j]")
                    }
                    FrameKind::Native | FrameKind::Rust => name.clone(),
                });
            }
        }
        // One line per stack: control characters escaped (a newline in a
        // thread name must not split it), and `;`, which separates frames,
        // kept from splitting a name.
        let stack = frames
            .iter()
            .map(|f| escape(f).replace(';', ":"))
            .collect::<Vec<_>>()
            .join(";");
        *merged.entry(stack).or_default() += sample.values[weight];
    }
    merged
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect()
}

/// Writes folded stacks, one per line.
pub fn write_folded(profile: &Profile, mut out: impl Write) -> Result<(), FlamegraphError> {
    for line in folded_lines(profile) {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// Renders a flamegraph SVG titled `title`.
pub fn write_svg(profile: &Profile, out: impl Write, title: &str) -> Result<(), FlamegraphError> {
    let lines = folded_lines(profile);
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = "samples".into();
    options.hash = true;
    options.deterministic = true;
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile still gets a picture.
        let mut out = out;
        writeln!(
            out,
            r#"<?xml version="1.0" standalone="no"?><svg xmlns="http://www.w3.org/2000/svg" width="600" height="60"><text x="10" y="30">{title}: no samples</text></svg>"#
        )?;
        return Ok(());
    }
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::fixtures::{hostile_profile, sample_profile};

    #[test]
    fn folded_stacks_root_first_with_inlines_and_kernel_suffix() {
        let lines = folded_lines(&sample_profile());
        assert_eq!(
            lines,
            vec![
                "app;main;do_syscall_64_[k] 2".to_owned(),
                "app;main;hot;helper 7".to_owned(),
            ]
        );
        let mut out = Vec::new();
        write_folded(&sample_profile(), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 2);
    }

    #[test]
    fn svg_names_the_functions() {
        let mut out = Vec::new();
        write_svg(&sample_profile(), &mut out, "test graph").unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..50]);
        assert!(svg.contains("helper") && svg.contains("test graph"));
    }

    #[test]
    fn hostile_names_stay_on_one_line_and_print_as_escapes() {
        let mut out = Vec::new();
        write_folded(&hostile_profile(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.bytes().any(|b| b != b'\n' && b.is_ascii_control()),
            "{text:?}"
        );
        assert!(!text.chars().any(|c| c != '\n' && crate::text::is_unsafe(c)));
        assert_eq!(
            text,
            "evil\\n\\x1b[31mred;main;a:b\\u{9b}2J\\n1 2 3\n\
             evil\\n\\x1b[31mred;main;evil\\x1b[31m_fn 5\n"
        );
        // Every line parses as `frames count`.
        let total: u64 = text
            .lines()
            .map(|line| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 8);
    }

    #[test]
    fn the_svg_shows_hostile_names_escaped() {
        let mut out = Vec::new();
        write_svg(&hostile_profile(), &mut out, "hostile").unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(!svg.contains('\x1b') && !svg.contains('\u{9b}'));
        assert!(svg.contains("evil\\x1b[31m_fn"), "{svg}");
    }
}
