//! `hostprof agent`: continuous profiling exported over OTLP.

use std::process::ExitCode;

use anyhow::Context as _;
use hostprof::agent::config::AgentSettings;
use hostprof::otlp::HostIdentity;
use hostprof::profiler::Target;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{check_pids_exist, AgentArgs};

/// Runs the agent until SIGTERM or SIGINT (or prints its configuration).
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => AgentSettings::load(path)?,
        None => AgentSettings::default(),
    };
    let options = file
        .overlay(args.settings())
        .resolve(|name| std::env::var(name).ok())?;
    if args.print_config {
        print!("{}", AgentSettings::effective(&options).to_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    if let Target::Pids(pids) = &options.profiler.policy.target {
        check_pids_exist(pids)?;
    }
    let host = HostIdentity::detect()?;
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
