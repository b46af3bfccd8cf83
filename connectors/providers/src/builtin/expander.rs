//! `content-expander`: asks an OpenAI-compatible chat-completions API to expand a
//! blob's `/content`; the answer goes to `/expanded` of the same blob.
//!
//! Provider `config`: `base_url` (e.g. `https://api.openai.com/v1`), `model`,
//! `api_key_env` (the name of the environment variable holding the key; no key is sent
//! when unset), optional `system_prompt`.

use serde_json::{Value, json};

use crate::{
    ProviderError, ProviderInput, ProviderOutput, Transformer, transformer::TransformFuture,
};

/// The prompt of the seed's content expander.
pub const DEFAULT_PROMPT: &str = "Expand the following text into a detailed, well-structured piece. \
Maintain the original meaning and intent, add relevant details and examples, use clear, \
engaging language, and structure it with paragraphs.";

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
            let body = response
                .text()
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
