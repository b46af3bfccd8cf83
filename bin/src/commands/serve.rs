//! `studio serve`: the query API over a view store (docs/access.md).

use std::path::Path;

use crate::api::{ApiState, router, serve_blocking};
use crate::cli::ServeArgs;

pub fn run(config_file: Option<&Path>, args: ServeArgs) -> anyhow::Result<()> {
    let (config, _providers) = super::load_config(config_file)?;
    let state = ApiState::open(&config, &args.db, args.readers)?;
    serve_blocking(&args.listen, router(state))
}
