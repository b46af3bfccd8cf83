//! # studio-providers
//!
//! The provider side of Studio (SPEC S5.7): what answers a transform request.
//!
//! ```text
//!  TransformRequest --> [ Runtime ] --attempts, timeout, backoff, memo--> Transformer
//!                           |                               (built-in, or a sandboxed process)
//!                           +--> Answer { output delta lines, ProcessingResult }
//! ```
//!
//! - [`Transformer`]: one provider implementation. It sees what the provider reads of
//!   the blob and answers with a [`ProviderOutput`]: an annotation of the same blob or
//!   the document of a derived blob.
//! - [`output`]: turns an output into delta records (S3.3 `transform`, S3.1 `create` with
//!   `parent_id`) with ids derived from the request, and compares a recomputed derived
//!   blob with what it holds, so an unchanged branch writes nothing (S5.6).
//! - [`Runtime`]: runs requests on tokio with a per-attempt timeout, retries with
//!   exponential backoff, a bound on concurrency per provider, and a [`Memo`] keyed by
//!   (provider, provider version, fingerprint), in memory or in a SQLite file.
//! - [`builtin`]: `grammar-checker` (harper-core, offline), `content-expander` (an
//!   OpenAI-compatible chat-completions API), `render-html` (pulldown-cmark, derived blob).
//! - [`external`]: a provider's `command`, run per call as a process under the
//!   operating system's limits ([`sandbox`]), speaking JSON lines.
//! - [`policy`]: what a definition may ask for (`api_key_env` allow-list, no
//!   credentials handed to a provider).
#![forbid(missing_docs)]

pub mod builtin;
pub mod external;
pub mod memo;
pub mod output;
pub mod policy;
pub mod runtime;
pub mod sandbox;
pub mod transformer;

pub use memo::Memo;
pub use policy::{Policy, Refused};
pub use runtime::{Answer, Runtime};
pub use transformer::{ProviderError, ProviderInput, ProviderOutput, Transformer};
