//! `studio gen`: a synthetic delta log for samples and load tests.

use std::io::{BufWriter, Write};

use anyhow::{Context, ensure};
use studio_model::generate::{Faults, GenSpec, generate};

use crate::cli::GenArgs;

pub fn run(args: GenArgs) -> anyhow::Result<()> {
    for (name, rate) in [
        ("--duplicate-rate", args.duplicate_rate),
        ("--malformed-rate", args.malformed_rate),
    ] {
        ensure!(
            (0.0..=1.0).contains(&rate),
            "{name} must be between 0 and 1, got {rate}"
        );
    }
    ensure!(args.blobs >= 1, "--blobs must be at least 1");
    let spec = GenSpec {
        blobs: args.blobs,
        deltas: args.deltas,
        seed: args.seed,
        faults: Faults {
            duplicate_rate: args.duplicate_rate,
            malformed_rate: args.malformed_rate,
            shuffle_window: args.shuffle_window,
        },
    };
    let stats = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let stats = generate(&spec, &mut out)?;
            out.flush()?;
            stats
        }
        None => {
            let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            let stats = generate(&spec, &mut out)?;
            out.flush()?;
            stats
        }
    };
    tracing::info!(?stats, "generated");
    Ok(())
}
