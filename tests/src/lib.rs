//! # studio-tests
//!
//! Test support shared by the property tests (`tests/model_vs_dataflow.rs`) and the
//! command-line tests of the `studio` package:
//!
//! - [`model`]: the reference model, a plain sequential implementation of SPEC S3/S4;
//! - [`views`]: the SQLite view tables read back into the same shape;
//! - [`services`]: PostgreSQL and S3 for the storage tests, and a proxy that fakes
//!   their outages;
//! - [`studio_command`]: the `studio` binary under test, without the caller's settings.

pub mod model;
pub mod services;
pub mod views;

/// `program` (the tests' `env!("CARGO_BIN_EXE_studio")`) as a command without the
/// environment's `STUDIO_*` settings and `RUST_LOG`, so that a test gets the defaults
/// it states and sets what it means to.
pub fn studio_command(program: &str) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STUDIO_") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG");
    command
}
