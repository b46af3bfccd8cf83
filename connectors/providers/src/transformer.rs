//! [`Transformer`]: the interface of one provider implementation.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;
use studio_model::{Provider, TransformRequest};

/// What a provider is given: the request, and its own definition (for `config`).
#[derive(Clone, Debug)]
pub struct ProviderInput {
    /// The request (the blob's document, content type, version, derived blobs).
    pub request: TransformRequest,
    /// The provider's definition.
    pub provider: Provider,
    /// The request's document, read once.
    doc: Value,
    /// The provider's `config`, read once.
    config: Value,
}

impl ProviderInput {
    /// The input of `provider` for `request`.
    pub fn new(request: TransformRequest, provider: Provider) -> Self {
        let (doc, config) = (request.doc.value(), provider.config.value());
        ProviderInput {
            request,
            provider,
            doc,
            config,
        }
    }

    /// The blob's document.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The blob's text at `/content` (empty when absent or not a string).
    pub fn content(&self) -> &str {
        self.doc
            .pointer("/content")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// A string setting of the provider's `config`.
    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(Value::as_str)
    }

    /// A number setting of the provider's `config`.
    pub fn config_u64(&self, key: &str) -> Option<u64> {
        self.config.get(key).and_then(Value::as_u64)
    }
}

/// What a provider answers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ProviderOutput {
    /// A JSON merge patch (RFC 7386) for the blob itself: its annotations.
    Annotate(Value),
    /// The document of the blob derived from this one (S5.6).
    Derive {
        /// The derived blob's content type.
        content_type: String,
        /// Its document.
        doc: Value,
    },
}

/// Why an attempt failed. Every failure is retried until `max_attempts`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider's service answered with an error or something unusable.
    #[error("{0}")]
    Failed(String),
    /// The attempt took longer than `timeout_ms`.
    #[error("timed out after {0} ms")]
    Timeout(u64),
}

/// The future a [`Transformer`] returns.
pub type TransformFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ProviderOutput, ProviderError>> + Send + 'a>>;

/// One provider implementation.
pub trait Transformer: Send + Sync {
    /// Processes one request.
    fn transform<'a>(&'a self, input: &'a ProviderInput) -> TransformFuture<'a>;
}
