//! `hostprof agent`: continuous profiling exported over OTLP.

use std::process::ExitCode;

use anyhow::Context as _;
use hostprof::otlp::HostIdentity;
use hostprof::settings::{AgentOnly, AgentSettings, CommandLine};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::check_pids_exist;

/// Runs the agent until SIGTERM or SIGINT (or prints its configuration).
pub fn run(line: CommandLine<AgentOnly>) -> anyhow::Result<ExitCode> {
    let options = line.settings()?.resolve(|name| std::env::var(name).ok())?;
    if line.print_config {
        print!("{}", AgentSettings::effective(&options).to_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    check_pids_exist(&options.profiler.policy.target)?;
    let host = HostIdentity::detect(options.profiler.node_name.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        hostprof::agent::run(options, host, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
