//! `grammar-checker`: offline grammar and spelling with `harper-core`; findings go to
//! `/grammar` of the same blob.

use std::sync::{Arc, Mutex};

use harper_core::linting::{LintGroup, Linter, Suggestion};
use harper_core::spell::FstDictionary;
use harper_core::{Dialect, Document};
use serde_json::{Value, json};

use crate::{
    ProviderError, ProviderInput, ProviderOutput, Transformer, transformer::TransformFuture,
};

/// Harper's curated rules with its American English dictionary. The linter is built
/// once and shared (linting takes it mutably, so calls take turns).
pub struct GrammarChecker {
    linter: Arc<Mutex<LintGroup>>,
}

impl GrammarChecker {
    /// Builds the linter (loads the built-in dictionary).
    pub fn new() -> Self {
        GrammarChecker {
            linter: Arc::new(Mutex::new(LintGroup::new_curated(
                FstDictionary::curated(),
                Dialect::American,
            ))),
        }
    }
}

impl Default for GrammarChecker {
    fn default() -> Self {
        Self::new()
    }
}

/// The findings for `text`: `[{start, end, text, message, kind, suggestions}]`, with
/// character offsets, in text order.
pub fn check(linter: &mut LintGroup, text: &str) -> Value {
    let document = Document::new_plain_english_curated(text);
    let chars: Vec<char> = text.chars().collect();
    let mut lints = linter.lint(&document);
    lints.sort_by_key(|l| (l.span.start, l.span.end));
    Value::Array(
        lints
            .into_iter()
            .map(|lint| {
                let suggestions: Vec<Value> = lint
                    .suggestions
                    .iter()
                    .map(|s| match s {
                        Suggestion::ReplaceWith(with) => {
                            json!({"replace_with": with.iter().collect::<String>()})
                        }
                        Suggestion::InsertAfter(text) => {
                            json!({"insert_after": text.iter().collect::<String>()})
                        }
                        Suggestion::Remove => json!({"remove": true}),
                    })
                    .collect();
                let end = lint.span.end.min(chars.len());
                let start = lint.span.start.min(end);
                json!({
                    "start": start,
                    "end": end,
                    "text": chars[start..end].iter().collect::<String>(),
                    "message": lint.message,
                    "kind": lint.lint_kind.to_string(),
                    "suggestions": suggestions,
                })
            })
            .collect(),
    )
}

impl Transformer for GrammarChecker {
    fn transform<'a>(&'a self, input: &'a ProviderInput) -> TransformFuture<'a> {
        Box::pin(async move {
            let text = input.content().to_owned();
            let linter = Arc::clone(&self.linter);
            let findings = tokio::task::spawn_blocking(move || {
                let mut linter = linter.lock().unwrap_or_else(|e| e.into_inner());
                check(&mut linter, &text)
            })
            .await
            .map_err(|e| ProviderError::Failed(format!("grammar check panicked: {e}")))?;
            Ok(ProviderOutput::Annotate(json!({ "grammar": findings })))
        })
    }
}
