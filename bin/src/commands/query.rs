//! `studio query`: named questions over the views, as a table or JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use studio_connectors::Rows;

use crate::cli::{QueryArgs, Question};
use studio_connectors::readable::Objects;
use studio_connectors::{Db, Readable, ViewReader, open_reader};
use uuid::Uuid;

pub fn run(config_file: Option<&Path>, args: QueryArgs) -> anyhow::Result<()> {
    let (config, _providers) = super::load_config(config_file)?;
    let db = Db::parse(&args.db)?;
    let mut reader = open_reader(&config, &db)?;
    let path = db.display();
    if let Question::Blob { blob_id, url: true } = &args.question {
        if let Some(user) = &args.as_user
            && !reader.may_read(canonical(user)?, canonical(blob_id)?)?
        {
            bail!("no blob {blob_id} in {path}")
        }
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
    let rows = match &args.as_user {
        Some(user) => as_user(reader.as_mut(), canonical(user)?, &args.question),
        None => all(reader.as_mut(), &args.question),
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

/// The question over every blob.
fn all(reader: &mut dyn ViewReader, question: &Question) -> anyhow::Result<Rows> {
    Ok(match question {
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
    }?)
}

/// The question as `user` (S6.3): only blobs they may read, as the API answers;
/// an unreadable blob is missing. `blobs` lists by id (the API's order).
fn as_user(reader: &mut dyn ViewReader, user: Uuid, question: &Question) -> anyhow::Result<Rows> {
    let rows = |objects: Option<Objects>| -> Rows {
        objects
            .unwrap_or_default()
            .into_iter()
            .map(|o| o.into_iter().collect())
            .collect()
    };
    Ok(match question {
        Question::Blobs { limit } => rows(Some(reader.readable_blobs(user, None, *limit)?.0)),
        Question::Blob { blob_id, .. } => {
            let blob = reader.readable_blob(user, canonical(blob_id)?)?;
            rows(blob.map(|b| vec![b]))
        }
        Question::Deltas { blob_id } => rows(reader.readable_deltas(user, canonical(blob_id)?)?),
        Question::Descendants { blob_id } => {
            rows(reader.readable_relatives(user, canonical(blob_id)?, true)?)
        }
        Question::Ancestors { blob_id } => {
            rows(reader.readable_relatives(user, canonical(blob_id)?, false)?)
        }
        Question::Depth { .. } | Question::DeadLetters { .. } => {
            bail!("--as answers blobs, blob, deltas, descendants and ancestors only")
        }
    })
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
