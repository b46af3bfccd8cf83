//! # studio-dataflow
//!
//! Wires sources -> operators -> sinks on timely workers. The model (what a delta
//! means) is the `studio-model` crate beside this one, re-exported as [`model`]; the
//! operators live in `studio-operators`; this crate only connects them and runs them.
//!
//! ```text
//!  Source (a log file, Kafka, NATS) on a reader thread; worker 0 feeds raw records
//!     | parse (S1, exchanged by position)  -----------------------+ malformed
//!     v                                                           |
//!  DedupById (exchange by id, S4.2) ---> duplicates (counted)     |
//!     v                                                           |
//!  ApplyDeltas (exchange by blob_id, S3/S4)                       |
//!     | blobs, processed_by (-old +new), applied, dead letters <--+
//!     v
//!  view sink (exchange to worker 0): one ViewBatch per completed timestamp
//!     v  bounded channel (back-pressure)
//!  writer thread: ViewSink (SQLite), one transaction per batch or group of batches
//! ```
//!
//! - [`render`] builds the dataflow of one worker.
//! - [`sink`] turns the view collections into [`model::ViewBatch`]es.
//! - [`pipeline`] runs it: the one source -> dataflow -> writer path, with a clock.
//! - [`replay`] (a bounded replay of files) and [`run`] (the service: a bus in, durable
//!   views, recovery on start) are its two configurations.
//! - [`providers`] hands pending transform requests to the built-in workers in process
//!   (a replay); [`worker`] answers them from the bus (`studio worker --source`).
#![forbid(missing_docs)]

pub mod pipeline;
pub mod providers;
pub mod render;
pub mod replay;
pub mod run;
pub mod sink;
pub mod worker;

pub use pipeline::WorkerError;
pub use studio_model as model;
