//! `studio query`: named questions over the views, as a table or JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use studio_connectors::Rows;

use crate::cli::{QueryArgs, Question};
use studio_connectors::{Db, open_reader};

pub fn run(config_file: Option<&Path>, args: QueryArgs) -> anyhow::Result<()> {
    let (config, _providers) = super::load_config(config_file)?;
    let db = Db::parse(&args.db)?;
    let mut reader = open_reader(&config, &db)?;
    let path = db.display();
    if let Question::Blob { blob_id, url: true } = &args.question {
        let expiry = Duration::from_secs(config.content.url_expiry_secs);
        let url = reader
            .blob_url(canonical(blob_id)?, expiry)
            .with_context(|| format!("querying {path}"))?;
        let Some(url) = url else {
            bail!("no blob {blob_id} in {path}")
        };
        println!("{url}");
        return Ok(());
    }
    let rows = match &args.question {
        Question::Blobs { limit } => reader.blobs(*limit),
        Question::Blob { blob_id, .. } => reader.blob(canonical(blob_id)?),
        Question::Deltas { blob_id } => reader.deltas_of(canonical(blob_id)?),
        Question::Descendants { blob_id } => reader.descendants(canonical(blob_id)?),
        Question::Ancestors { blob_id } => reader.ancestors(canonical(blob_id)?),
        Question::Depth {
            user: Some(user), ..
        } => reader.user_depth(canonical(user)?),
        Question::Depth {
            blob: Some(blob), ..
        } => reader.blob_depth(canonical(blob)?),
        Question::Depth { .. } => bail!("depth needs --user USER_ID or --blob BLOB_ID"),
        Question::DeadLetters { limit } => reader.dead_letters(*limit),
    }
    .with_context(|| format!("querying {path}"))?;
    match &args.question {
        Question::Blob { blob_id, .. } if rows.is_empty() => {
            bail!("no blob {blob_id} in {path}")
        }
        Question::Depth {
            user: Some(user), ..
        } if rows.is_empty() => {
            bail!("user {user} owns no blob in {path}")
        }
        Question::Depth {
            blob: Some(blob), ..
        } if rows.is_empty() => bail!("no blob {blob} in {path}"),
        _ => {}
    }
    if args.json {
        let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .into_iter()
            .map(|row| row.into_iter().collect())
            .collect();
        println!("{}", serde_json::to_string_pretty(&objects)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

/// Ids are stored hyphenated and lowercase; accept any form a user may paste.
fn canonical(id: &str) -> anyhow::Result<uuid::Uuid> {
    uuid::Uuid::try_parse(id.trim()).with_context(|| format!("{id:?} is not a UUID"))
}

/// Columns padded to their widest cell; long cells cut at 60 characters.
fn print_table(rows: &Rows) {
    let Some(first) = rows.first() else {
        println!("(no rows)");
        return;
    };
    let cell = |v: &serde_json::Value| -> String {
        let text = match v {
            serde_json::Value::String(s) => s.replace('\n', " "),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        match text.char_indices().nth(60) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text,
        }
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|(_, v)| cell(v)).collect())
        .collect();
    let widths: Vec<usize> = first
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([name.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |items: Vec<&str>| {
        items
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(first.iter().map(|(n, _)| n.as_str()).collect()));
    for row in &cells {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}
