//! `hostprof agent`: continuous profiling exported over OTLP.

use std::process::ExitCode;

use anyhow::Context as _;
use hostprof::agent::queue::QueueLimits;
use hostprof::agent::{retry::Backoff, AgentOptions};
use hostprof::otlp::{ExporterConfig, ExporterFlags, HostIdentity};
use hostprof::profiler::ProfilerOptions;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::AgentArgs;

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let exporter = match args.otlp.exporter_config(|name| std::env::var(name).ok())? {
        Some(config) => config,
        // The agent always exports: default to a local collector.
        None => {
            ExporterConfig::resolve(&ExporterFlags::default(), |name| std::env::var(name).ok())?
        }
    };
    let options = AgentOptions {
        profiler: ProfilerOptions {
            policy: args.sampling.policy()?,
            ..ProfilerOptions::default()
        },
        interval: args.interval,
        exporter,
        queue: QueueLimits {
            max_requests: args.queue_max_requests.max(1),
            max_bytes: args.queue_max_bytes,
        },
        shutdown_timeout: args.shutdown_timeout,
        backoff: Backoff::default(),
    };
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
