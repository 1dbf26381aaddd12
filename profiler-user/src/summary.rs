//! The short text report printed after a capture: totals, losses and the
//! functions that spent the most CPU themselves (self time).

use std::collections::HashMap;
use std::fmt;

use crate::profile::Profile;

/// A function and the samples whose leaf frame it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionShare {
    /// Function name.
    pub name: String,
    /// Samples with this function as the innermost frame.
    pub self_samples: u64,
}

/// Totals and top functions of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// All samples.
    pub samples: u64,
    /// Distinct processes.
    pub processes: usize,
    /// Samples lost in the kernel.
    pub dropped: u64,
    /// Stacks that could not be read or stored.
    pub stack_errors: u64,
    /// Functions by self samples, most first.
    pub top: Vec<FunctionShare>,
}

impl Summary {
    /// Summarizes `profile`, keeping the `top_n` heaviest functions.
    pub fn new(profile: &Profile, top_n: usize) -> Self {
        let mut self_samples: HashMap<&str, u64> = HashMap::new();
        for sample in &profile.samples {
            // Innermost line of the leaf location: with inlining, the inlined callee.
            let name = sample.stack.first().map_or("[no stack]", |leaf| {
                let line = &profile.location(*leaf).lines[0];
                profile.function(line.function).name.as_str()
            });
            *self_samples.entry(name).or_default() += sample.count;
        }
        let mut top: Vec<FunctionShare> = self_samples
            .into_iter()
            .map(|(name, self_samples)| FunctionShare {
                name: name.to_owned(),
                self_samples,
            })
            .collect();
        top.sort_by(|a, b| {
            b.self_samples
                .cmp(&a.self_samples)
                .then(a.name.cmp(&b.name))
        });
        top.truncate(top_n);
        let stats = &profile.stats;
        Self {
            samples: profile.total_samples(),
            processes: profile.processes.len(),
            dropped: stats.dropped,
            stack_errors: stats.user_stack_errors + stats.kernel_stack_errors + stats.stacks_lost,
            top,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "samples          {}", self.samples)?;
        writeln!(f, "processes        {}", self.processes)?;
        writeln!(f, "dropped samples  {}", self.dropped)?;
        writeln!(f, "stack errors     {}", self.stack_errors)?;
        if self.top.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "{:>8} {:>6}  function (self)", "samples", "share")?;
        for share in &self.top {
            let percent = if self.samples == 0 {
                0.0
            } else {
                share.self_samples as f64 * 100.0 / self.samples as f64
            };
            writeln!(
                f,
                "{:>8} {:>5.1}%  {}",
                share.self_samples, percent, share.name
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::profile::{FrameKind, Function, Line, Location, Process, ProfileBuilder};

    #[test]
    fn top_functions_by_self_samples() {
        let mut b = ProfileBuilder::new();
        let p = b.process(Process {
            pid: 1,
            executable_name: "app".into(),
            executable_path: None,
            container: None,
            pod: None,
        });
        let loc = |b: &mut ProfileBuilder, name: &str, address| {
            let function = b.function(Function {
                name: name.into(),
                system_name: None,
                filename: None,
            });
            b.location(Location {
                mapping: None,
                address,
                lines: vec![Line {
                    function,
                    line: None,
                }],
                kind: FrameKind::Native,
            })
        };
        let main = loc(&mut b, "main", 1);
        let hot = loc(&mut b, "hot", 2);
        let cold = loc(&mut b, "cold", 3);
        b.add_sample(p, 1, "app", vec![hot, main], 9);
        b.add_sample(p, 1, "app", vec![cold, main], 1);
        let profile = b.build(SystemTime::UNIX_EPOCH, Duration::from_secs(1), 99);
        let summary = Summary::new(&profile, 1);
        assert_eq!(summary.samples, 10);
        assert_eq!(
            summary.top,
            vec![FunctionShare {
                name: "hot".into(),
                self_samples: 9
            }]
        );
        let text = summary.to_string();
        assert!(text.contains("90.0%  hot"), "{text}");
    }
}
