//! `studio serve`: the query API over a view store (docs/access.md), and `/metrics`.

use std::path::Path;

use crate::api::{ApiState, router, serve_blocking};
use crate::cli::ServeArgs;
use crate::http;

pub fn run(config_file: Option<&Path>, args: ServeArgs) -> anyhow::Result<()> {
    let (mut config, _providers) = super::load_config(config_file)?;
    args.cache.apply(&mut config);
    let metrics = http::install_recorder()?;
    let state = ApiState::open(&config, &args.db, args.readers)?;
    serve_blocking(
        &args.listen,
        router(state).merge(http::metrics_router(metrics)),
    )
}
