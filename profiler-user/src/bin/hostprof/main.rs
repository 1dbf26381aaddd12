//! The `hostprof` command: a thin layer over the `hostprof` library.

mod agent;
mod cli;
mod output;
mod record;

use cli::{Cli, Command};
use hostprof::text::escape;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_checked();
    // The agent reports its lifecycle at info; one-shot commands stay quiet.
    let default_level = match cli.command {
        Command::Agent(_) => "info",
        _ => "warn",
    };
    // Log lines carry names tenants pick (file names, pod names, errors
    // quoting them): escaped like every text output, in env_logger's
    // own layout.
    let layout = env_logger::fmt::ConfigurableFormat::default();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format(move |out, record| {
            let message = record.args().to_string();
            let message = escape(&message);
            layout.format(
                out,
                &log::Record::builder()
                    .args(format_args!("{message}"))
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            )
        })
        .init();
    let result = match cli.command {
        Command::Record(args) => record::run(args),
        Command::Agent(args) => agent::run(args),
        Command::SystemInfo => system_info(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", escape(&format!("{err:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}

fn system_info() -> anyhow::Result<std::process::ExitCode> {
    let checks = hostprof::system_info::collect();
    print!("{}", hostprof::system_info::Report(&checks));
    let failed = checks
        .iter()
        .any(|c| c.status == hostprof::system_info::Status::Fail);
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}
