//! `cargo xtask deploy-check [--update]`: the Helm chart and the plain
//! manifests, checked without helm or a cluster.
//!
//! Renders the chart with deploy/tools/render (Helm's template engine: Go
//! text/template and sprig) with its default values and with every
//! `ci/*.yaml` override; the default render must be byte for byte
//! deploy/kubernetes/hostprof.yaml (`--update` rewrites it), and
//! deploy/tools/validate.py checks the values schema, every render against
//! the Kubernetes schemas, the DaemonSet's privileges and that the hostprof
//! binary accepts the agent config the chart ships.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{cmd, setup};

const CHART: &str = "deploy/helm/hostprof";
const MANIFEST: &str = "deploy/kubernetes/hostprof.yaml";

/// Runs the checks; with `update`, rewrites the plain manifest first.
pub fn check(root: &Path, update: bool) -> Result<()> {
    let renderer = root.join("target/tools/helm-render");
    setup::go_build(&renderer, "./deploy/tools/render", root)?;
    let chart = root.join(CHART);
    let out_dir = root.join("target/deploy");
    std::fs::create_dir_all(&out_dir).context("creating target/deploy")?;

    let default = render(&renderer, &chart, None)?;
    let manifest = root.join(MANIFEST);
    if update {
        std::fs::write(&manifest, &default)
            .with_context(|| format!("writing {}", manifest.display()))?;
        println!("[deploy] wrote {MANIFEST}");
    }
    let committed = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    if committed != default {
        let rendered = out_dir.join("default.yaml");
        std::fs::write(&rendered, &default)?;
        bail!(
            "{MANIFEST} differs from what the chart renders with default values \
             (see `diff {MANIFEST} {}`); run `cargo xtask deploy-check --update` \
             after changing the chart",
            rendered.display()
        );
    }
    println!("[deploy] {MANIFEST} is what the chart renders with default values");

    let mut rendered = vec![
        manifest.clone(),
        root.join("deploy/kubernetes/00-namespace.yaml"),
    ];
    let mut overrides: Vec<PathBuf> = std::fs::read_dir(chart.join("ci"))
        .context("listing the chart's ci/ overrides")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    overrides.sort();
    for values in &overrides {
        let name = values.file_name().expect("a file").to_string_lossy();
        let path = out_dir.join(name.as_ref());
        std::fs::write(&path, render(&renderer, &chart, Some(values))?)?;
        rendered.push(path);
    }

    cmd::cargo(root, &["build", "-p", "hostprof"])?;
    let mut validate = Command::new("python3");
    validate
        .arg(root.join("deploy/tools/validate.py"))
        .arg("--chart")
        .arg(&chart)
        .arg("--default")
        .arg(&manifest)
        .arg("--hostprof")
        .arg(root.join("target/debug/hostprof"));
    for path in &rendered {
        validate.arg("--rendered").arg(path);
    }
    cmd::run(&mut validate)
}

fn render(renderer: &Path, chart: &Path, values: Option<&Path>) -> Result<String> {
    let mut render = Command::new(renderer);
    render.arg("-chart").arg(chart);
    if let Some(values) = values {
        render.arg("-f").arg(values);
    }
    let out = render
        .output()
        .with_context(|| format!("running {}", renderer.display()))?;
    if !out.status.success() {
        bail!(
            "rendering the chart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("the render is not UTF-8")
}
