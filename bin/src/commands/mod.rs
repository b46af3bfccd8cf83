//! One module per subcommand.

mod gen_log;
mod loadgen;
mod query;
mod replay;
mod run;
mod serve;
mod worker;

use std::path::Path;

use studio_config::Config;
use studio_model::Provider;

use crate::cli::{Cli, Command};

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay(args) => replay::run(cli.config.as_deref(), args),
        Command::Run(args) => run::run(cli.config.as_deref(), args),
        Command::Gen(args) => gen_log::run(args),
        Command::Query(args) => query::run(cli.config.as_deref(), args),
        Command::Serve(args) => serve::run(cli.config.as_deref(), args),
        Command::Worker(args) => worker::run(cli.config.as_deref(), args),
        Command::Loadgen(args) => loadgen::run(cli.config.as_deref(), args),
    }
}

/// Loads the configuration (defaults < file < `STUDIO_*` environment) and reads its
/// `[[providers]]`: every command refuses a config whose providers do not fit, whether
/// it runs them or not.
fn load_config(file: Option<&Path>) -> anyhow::Result<(Config, Vec<Provider>)> {
    let config = Config::load(file)?;
    let providers = Provider::from_tables(&config.providers)?;
    Ok((config, providers))
}
