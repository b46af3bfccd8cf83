//! `content-expander`: asks an OpenAI-compatible chat-completions API to expand a
//! blob's `/content`; the answer goes to `/expanded` of the same blob.
//!
//! Provider `config`: `base_url` (e.g. `https://api.openai.com/v1`), `model`,
//! `api_key_env` (the name of the environment variable holding the key; no key is sent
//! when unset; only a name on `provider_runtime.api_key_env_allow`, see
//! [`crate::policy`]), optional `system_prompt`, `max_response_bytes` (answers larger
//! than this fail the attempt unread; default [`DEFAULT_MAX_RESPONSE_BYTES`]).

use serde_json::{Value, json};

use crate::{
    ProviderError, ProviderInput, ProviderOutput, Transformer, transformer::TransformFuture,
};

/// The prompt of the seed's content expander.
pub const DEFAULT_PROMPT: &str = "Expand the following text into a detailed, well-structured piece. \
Maintain the original meaning and intent, add relevant details and examples, use clear, \
engaging language, and structure it with paragraphs.";

/// The largest answer read when `config.max_response_bytes` is not set: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// A chat-completions client (one connection pool for all requests).
pub struct ContentExpander {
    client: reqwest::Client,
}

impl ContentExpander {
    /// A client; timeouts are the runtime's (per attempt).
    pub fn new() -> Self {
        ContentExpander {
            client: reqwest::Client::new(),
        }
    }
}

impl Default for ContentExpander {
    fn default() -> Self {
        Self::new()
    }
}

fn failed(what: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed(what.to_string())
}

/// The body of `response`, refused past `max_bytes` (announced or read).
async fn read_bounded(mut response: reqwest::Response, max_bytes: u64) -> Result<String, String> {
    let too_large = || {
        format!(
            "the answer is larger than {max_bytes} bytes; raise config.max_response_bytes if that is expected"
        )
    };
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if (body.len() + chunk.len()) as u64 > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

impl Transformer for ContentExpander {
    fn transform<'a>(&'a self, input: &'a ProviderInput) -> TransformFuture<'a> {
        Box::pin(async move {
            let base = input
                .config_str("base_url")
                .ok_or_else(|| failed("content-expander: config.base_url is not set"))?;
            let model = input.config_str("model").unwrap_or("gpt-4o-mini");
            let prompt = input.config_str("system_prompt").unwrap_or(DEFAULT_PROMPT);
            let url = format!("{}/chat/completions", base.trim_end_matches('/'));
            let mut call = self.client.post(&url).json(&json!({
                "model": model,
                "messages": [
                    {"role": "system", "content": prompt},
                    {"role": "user", "content": input.content()},
                ],
            }));
            if let Some(key) = input
                .config_str("api_key_env")
                .and_then(|var| std::env::var(var).ok())
            {
                call = call.bearer_auth(key);
            }
            let response = call
                .send()
                .await
                .map_err(|e| failed(format!("POST {url}: {e}")))?;
            let status = response.status();
            let max_bytes = input
                .config_u64("max_response_bytes")
                .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
            let body = read_bounded(response, max_bytes)
                .await
                .map_err(|e| failed(format!("reading the answer of {url}: {e}")))?;
            if !status.is_success() {
                let excerpt: String = body.chars().take(200).collect();
                return Err(failed(format!("{url} answered {status}: {excerpt}")));
            }
            let answer: Value = serde_json::from_str(&body)
                .map_err(|e| failed(format!("{url} answered with malformed JSON: {e}")))?;
            let text = answer
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    failed(format!("{url} answered without choices[0].message.content"))
                })?;
            Ok(ProviderOutput::Annotate(json!({ "expanded": text })))
        })
    }
}
