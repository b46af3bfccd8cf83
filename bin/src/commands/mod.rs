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
use studio_providers::Policy;

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
/// `[[providers]]`: every command refuses a config whose providers do not fit, or that
/// the provider policy refuses (an `api_key_env` off the allow-list, a credential
/// handed to a provider), whether it runs them or not.
fn load_config(file: Option<&Path>) -> anyhow::Result<(Config, Vec<Provider>)> {
    let config = Config::load(file)?;
    let providers = Provider::from_tables(&config.providers)?;
    let policy = provider_policy(&config)?;
    for provider in &providers {
        policy.check(provider)?;
    }
    Ok((config, providers))
}

/// What provider definitions may ask for, from `[provider_runtime]`.
fn provider_policy(config: &Config) -> anyhow::Result<Policy> {
    Ok(Policy::new(
        config.provider_runtime.api_key_env_allow.clone(),
    )?)
}
