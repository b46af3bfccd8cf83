//! The built-in providers, by the name a provider's `worker` (or id) gives.
//!
//! | name | reads | writes |
//! |---|---|---|
//! | `grammar-checker` | `/content` | `/grammar` of the same blob: `[{start, end, message, kind, suggestions}]` (char offsets) |
//! | `content-expander` | `/content` | `/expanded` of the same blob, from an OpenAI-compatible chat-completions API |
//! | `render-html` | `/content` (Markdown) | a derived `text/html` blob whose `/content` is the HTML |

mod expander;
mod grammar;
mod render_html;

use std::sync::Arc;

pub use expander::ContentExpander;
pub use grammar::GrammarChecker;
pub use render_html::RenderHtml;

use crate::Transformer;

/// The names of the built-in providers.
pub const NAMES: [&str; 3] = ["grammar-checker", "content-expander", "render-html"];

/// The built-in implementation called `name`, if there is one.
pub fn by_name(name: &str) -> Option<Arc<dyn Transformer>> {
    match name {
        "grammar-checker" => Some(Arc::new(GrammarChecker::new())),
        "content-expander" => Some(Arc::new(ContentExpander::new())),
        "render-html" => Some(Arc::new(RenderHtml)),
        _ => None,
    }
}
