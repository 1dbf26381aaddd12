//! The `hostprof` command: a thin layer over the `hostprof` library.

mod agent;
mod cli;
mod record;

use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_checked();
    // The agent reports its lifecycle at info; one-shot commands stay quiet.
    let default_level = match cli.command {
        Command::Agent(_) => "info",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    let result = match cli.command {
        Command::Record(args) => record::run(args),
        Command::Agent(args) => agent::run(args),
        Command::SystemInfo => system_info(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
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
