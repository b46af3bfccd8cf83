//! # studio-tests
//!
//! Test support shared by the property tests (`tests/model_vs_dataflow.rs`) and the
//! command-line tests of the `studio` package:
//!
//! - [`model`]: the reference model, a plain sequential implementation of SPEC S3/S4;
//! - [`views`]: the SQLite view tables read back into the same shape;
//! - [`services`]: PostgreSQL and S3 for the storage tests, and a proxy that fakes
//!   their outages.

pub mod model;
pub mod services;
pub mod views;
