//! `studio`: the command line. A thin shell over the library crates: parse flags, set
//! up logging, run one command, turn errors into a message and an exit code.

mod api;
mod cli;
mod commands;
mod http;
mod telemetry;

use clap::Parser;

/// The dataflow allocates and frees many small objects per delta (parsed patches,
/// documents, rows); mimalloc is markedly faster at that than the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // A service logs what it does by default; one-shot commands only warn.
    let service = match &cli.command {
        cli::Command::Run(_) | cli::Command::Serve(_) => true,
        cli::Command::Worker(args) => args.requests.is_none(), // on the bus
        _ => false,
    };
    // Only the [telemetry] section is read here; a config that does not load is the
    // command's to report.
    let traces = studio_config::Config::load(cli.config.as_deref())
        .map(|config| config.telemetry)
        .unwrap_or_else(|_| studio_config::Config::default().telemetry);
    let _traces = telemetry::init(cli.log_format, cli.verbose, service, &traces);
    match commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
