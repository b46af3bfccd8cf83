//! One module per subcommand.

mod gen_log;
mod query;
mod replay;
mod store;

use crate::cli::{Cli, Command};

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay(args) => replay::run(cli.config.as_deref(), args),
        Command::Gen(args) => gen_log::run(args),
        Command::Query(args) => query::run(cli.config.as_deref(), args),
    }
}
