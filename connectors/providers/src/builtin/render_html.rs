//! `render-html`: renders a blob's Markdown `/content` to HTML as a derived blob.

use pulldown_cmark::{Options, Parser, html};
use serde_json::json;

use crate::{ProviderInput, ProviderOutput, Transformer, transformer::TransformFuture};

/// Markdown to HTML with pulldown-cmark (tables, strikethrough, task lists, footnotes).
#[derive(Debug, Default)]
pub struct RenderHtml;

/// Renders Markdown as HTML.
pub fn markdown_to_html(markdown: &str) -> String {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let mut out = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut out, Parser::new_ext(markdown, options));
    out
}

impl Transformer for RenderHtml {
    fn transform<'a>(&'a self, input: &'a ProviderInput) -> TransformFuture<'a> {
        Box::pin(async move {
            Ok(ProviderOutput::Derive {
                content_type: "text/html".into(),
                doc: json!({ "content": markdown_to_html(input.content()) }),
            })
        })
    }
}
