//! Providers end to end (SPEC S5.3–S5.8): `studio_dataflow::replay` with the provider
//! loop into SQLite. Supersession, annotations and a provider's own output not
//! re-triggering, a cascade that stops at an unchanged branch, the built-in providers on
//! the bundled documents, and a property: whatever the batching and the worker count,
//! every (provider, blob) is processed exactly once at its final version and the views
//! are the same.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use studio_config::{Config, ReplayConfig};
use studio_dataflow::providers::{ProviderReport, ProviderSetup};
use studio_dataflow::replay::{Progress, ReplayOptions, ReplayReport, replay};
use studio_model::generate::{Faults, GenSpec, generate};
use studio_model::provider::derived_blob_id;
use studio_model::{Provider, Uuid};
use studio_providers::transformer::TransformFuture;
use studio_providers::{ProviderInput, ProviderOutput, Transformer};
use studio_tests::views::{TextRows, new_sqlite_views, text_rows};

// ---------------------------------------------------------------------------------------
// Test providers: cheap and deterministic
// ---------------------------------------------------------------------------------------

/// Annotates `/words` with the number of words of `/content`.
struct WordCount;

impl Transformer for WordCount {
    fn transform<'a>(&'a self, input: &'a ProviderInput) -> TransformFuture<'a> {
        Box::pin(async move {
            Ok(ProviderOutput::Annotate(
                json!({"words": input.content().split_whitespace().count()}),
            ))
        })
    }
}

/// Writes what it reads: upper-cases `/content`.
struct Shout;

impl Transformer for Shout {
    fn transform<'a>(&'a self, input: &'a ProviderInput) -> TransformFuture<'a> {
        Box::pin(async move {
            Ok(ProviderOutput::Annotate(
                json!({"content": input.content().to_uppercase()}),
            ))
        })
    }
}

/// Derives a blob holding the first `config.keep` characters of `/content`, of
/// content type `config.content_type`.
struct Truncate;

impl Transformer for Truncate {
    fn transform<'a>(&'a self, input: &'a ProviderInput) -> TransformFuture<'a> {
        Box::pin(async move {
            let keep = input.provider.config.value()["keep"].as_u64().unwrap_or(10) as usize;
            Ok(ProviderOutput::Derive {
                content_type: input
                    .config_str("content_type")
                    .unwrap_or("text/plain")
                    .into(),
                doc: json!({"content": input.content().chars().take(keep).collect::<String>()}),
            })
        })
    }
}

fn provider(def: Value) -> Provider {
    serde_json::from_value(def).expect("a provider")
}

// ---------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------

struct Run {
    report: ReplayReport,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    fn providers(&self) -> &ProviderReport {
        self.report.providers.as_ref().expect("a provider report")
    }

    fn rows(&self, sql: &str) -> TextRows {
        text_rows(&self.db, sql)
    }

    fn version_of(&self, blob: Uuid) -> u64 {
        let rows = self.rows(&format!(
            "SELECT CAST(version AS TEXT) FROM blobs WHERE blob_id = '{blob}'"
        ));
        rows.first()
            .and_then(|r| r[0].as_deref())
            .unwrap_or_else(|| panic!("blob {blob} exists"))
            .parse()
            .unwrap()
    }

    fn doc_of(&self, blob: Uuid) -> Value {
        let rows = self.rows(&format!("SELECT doc FROM blobs WHERE blob_id = '{blob}'"));
        serde_json::from_str(rows[0][0].as_deref().unwrap()).unwrap()
    }

    /// (version, outputs) of each completed or failed processing of `provider` on `blob`.
    fn processed(&self, provider: &str, blob: Uuid) -> Vec<String> {
        self.rows(&format!(
            "SELECT p.status || ' v' || p.version FROM processing p \
             WHERE p.provider_id = '{provider}' AND p.blob_id = '{blob}' ORDER BY p.version"
        ))
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
    }
}

fn run(
    log: &[Value],
    providers: Vec<Provider>,
    batch_records: u64,
    workers: usize,
    each_batch: bool,
) -> Run {
    let text: String = log.iter().map(|l| format!("{l}\n")).collect();
    run_text(&text, providers, batch_records, workers, each_batch)
}

fn run_text(
    log: &str,
    providers: Vec<Provider>,
    batch_records: u64,
    workers: usize,
    each_batch: bool,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log.jsonl");
    std::fs::write(&file, log).unwrap();
    let db = dir.path().join("views.sqlite");
    // Documents are plain JSON in `doc`, so the tests can read them with SQL.
    let sink = new_sqlite_views(&db);
    let config = ReplayConfig {
        workers,
        batch_records,
        ..Config::default().replay
    };
    let transformers: Vec<(String, Arc<dyn Transformer>)> = vec![
        ("word-count".into(), Arc::new(WordCount)),
        ("shout".into(), Arc::new(Shout)),
        ("truncate".into(), Arc::new(Truncate)),
    ];
    let options = ReplayOptions {
        providers: Some(ProviderSetup {
            providers,
            threads: 2,
            requests_out: None,
            each_batch,
            transformers,
            policy: Default::default(),
        }),
        events: true,
    };
    let report = replay(
        &[file],
        &config,
        Box::new(sink),
        Arc::new(Progress::default()),
        &options,
    )
    .expect("replay");
    assert!(report.counts_add_up(), "{report:?}");
    Run {
        report,
        db,
        _dir: dir,
    }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x5000 + n)
}

fn at(n: u64) -> String {
    format!("2026-11-01T10:{:02}:{:02}Z", n / 60, n % 60)
}

fn create(blob: u128, content_type: &str, content: &str) -> Value {
    json!({"id": id(blob * 100 + 1), "blob_id": id(blob), "user_id": id(0), "operation": "create",
        "version": 1, "created_at": at(0), "patch": {"content": content},
        "metadata": {"content_type": content_type}})
}

fn update(blob: u128, version: u64, patch: Value) -> Value {
    json!({"id": id(blob * 100 + version as u128), "blob_id": id(blob), "user_id": id(0),
        "operation": "update", "version": version, "created_at": at(version), "patch": patch})
}

fn word_count() -> Provider {
    provider(json!({"id": "word-count", "version": "1", "blob_types": ["text/plain"]}))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn rapid_edits_supersede_older_requests() {
    let mut log = vec![create(1, "text/plain", "one")];
    for v in 2..=20 {
        log.push(update(1, v, json!({"content": format!("edit number {v}")})));
    }
    for (batch, workers) in [(1, 1), (3, 2), (1000, 1)] {
        let r = run(&log, vec![word_count()], batch, workers, false);
        // One request per batch that ended with a new content; all but the last superseded.
        let statuses = r.rows(
            "SELECT status, CAST(COUNT(*) AS TEXT) FROM transform_requests GROUP BY status ORDER BY status",
        );
        let emitted = 20u64.div_ceil(batch);
        assert_eq!(r.providers().requests, emitted, "batch {batch}");
        assert_eq!(r.providers().superseded, emitted - 1, "batch {batch}");
        let mut expected = vec![vec![Some("completed".to_string()), Some("1".to_string())]];
        if emitted > 1 {
            expected.push(vec![
                Some("superseded".to_string()),
                Some((emitted - 1).to_string()),
            ]);
        }
        assert_eq!(statuses, expected, "batch {batch}");
        assert_eq!(r.processed("word-count", id(1)), vec!["completed v20"]);
        assert_eq!(r.providers().calls, 1, "never processed twice");
        assert_eq!(r.doc_of(id(1))["words"], 3);
        assert_eq!(r.version_of(id(1)), 21);
    }
}

#[test]
fn annotations_and_a_providers_own_output_do_not_retrigger() {
    let shout = provider(json!({"id": "shout", "blob_types": ["text/x-shout"]}));
    let log = vec![
        create(1, "text/plain", "two words"),
        create(2, "text/x-shout", "hello"),
        // After batch 1 the providers answered: blob 1 is at v2 (words), blob 2 at v2 (HELLO).
        update(1, 3, json!({"tags": ["an", "annotation"]})),
        update(2, 3, json!({"tags": ["loud"]})),
        update(1, 4, json!({"content": "now three words"})),
    ];
    let r = run(&log, vec![word_count(), shout], 2, 1, true);
    assert_eq!(
        r.report.dead_letters, 0,
        "{:?}",
        r.report.dead_letters_by_reason
    );
    assert_eq!(
        r.processed("word-count", id(1)),
        vec!["completed v1", "completed v4"],
        "the tags did not trigger; the new content did"
    );
    assert_eq!(r.doc_of(id(1))["words"], 3);
    assert_eq!(r.version_of(id(1)), 5);
    assert_eq!(
        r.processed("shout", id(2)),
        vec!["completed v1"],
        "its own output changed what it reads, and did not trigger it"
    );
    assert_eq!(r.doc_of(id(2))["content"], "HELLO");
    assert_eq!(r.version_of(id(2)), 3);
    let events =
        r.rows("SELECT type, CAST(COUNT(*) AS TEXT) FROM events GROUP BY type ORDER BY type");
    let count = |t: &str| {
        events
            .iter()
            .find(|e| e[0].as_deref() == Some(t))
            .and_then(|e| e[1].clone())
            .unwrap_or_default()
    };
    assert_eq!(count("delta.applied"), "8");
    assert_eq!(count("blob.created"), "2");
    assert_eq!(count("processing.complete"), "3");
}

#[test]
fn a_cascade_stops_at_an_unchanged_branch() {
    // stage k derives a text/x-stage-k blob holding the first (80 - 10k) characters of a
    // text/x-stage-(k-1) blob: a chain of 7 derived blobs below the root.
    let stages: Vec<Provider> = (1..=7)
        .map(|k| {
            provider(json!({"id": format!("stage-{k}"), "worker": "truncate",
                "blob_types": [format!("text/x-stage-{}", k - 1)],
                "config": {"keep": 80 - 10 * k, "content_type": format!("text/x-stage-{k}")}}))
        })
        .collect();
    let text: String = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(3);
    let mut edited = text.clone();
    edited.replace_range(15..16, "#"); // inside the first 20 characters, not the first 10
    let log = vec![
        create(1, "text/x-stage-0", &text),
        update(1, 2, json!({"content": edited})),
    ];
    let r = run(&log, stages, 1, 1, true);
    let mut chain = vec![id(1)];
    for k in 1..=7 {
        chain.push(derived_blob_id(&format!("stage-{k}"), chain[k - 1]));
    }
    let versions: Vec<u64> = chain[1..].iter().map(|&b| r.version_of(b)).collect();
    assert_eq!(
        versions,
        vec![2, 2, 2, 2, 2, 2, 1],
        "stage 7 kept its version"
    );
    assert_eq!(
        r.doc_of(chain[6])["content"].as_str().unwrap(),
        &edited[..20]
    );
    assert_eq!(r.doc_of(chain[7])["content"].as_str().unwrap(), &text[..10]);
    // Stage 7 recomputed, found its output unchanged, and wrote nothing.
    assert_eq!(
        r.processed("stage-7", chain[6]),
        vec!["completed v1", "completed v2"]
    );
    let outputs = r.rows(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM deltas_applied WHERE blob_id = '{}'",
        chain[7]
    ));
    assert_eq!(outputs[0][0].as_deref(), Some("1"));
    assert_eq!(r.providers().cascade_depth, 7);
    // The DAG: a chain of depth 7 from the root.
    let depth = r.rows(&format!(
        "SELECT CAST(depth AS TEXT) FROM blob_depth WHERE blob_id = '{}'",
        chain[7]
    ));
    assert_eq!(depth[0][0].as_deref(), Some("7"));
}

#[test]
fn the_built_in_providers_process_the_bundled_documents() {
    let log = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/documents.jsonl"),
    )
    .unwrap();
    let config = Config::load(Some(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/providers.toml"),
    ))
    .unwrap();
    let r = run_text(
        &log,
        Provider::from_tables(&config.providers).unwrap(),
        1000,
        2,
        false,
    );
    let p = r.providers();
    assert_eq!(p.failed, 0);
    assert_eq!(p.superseded, 0);
    // 3 text blobs + 2 rendered pages for grammar, 2 markdown blobs for render-html.
    assert_eq!((p.requests, p.completed), (7, 7));
    assert_eq!(p.cascade_depth, 2, "grammar checks the rendered HTML too");
    let html = r.rows(
        "SELECT b.doc FROM blobs b JOIN blob_edges e ON e.child_id = b.blob_id WHERE b.content_type = 'text/html'",
    );
    assert_eq!(html.len(), 2);
    assert!(
        html.iter()
            .all(|row| row[0].as_deref().unwrap().contains("<h1>"))
    );
    let plain = r.rows("SELECT doc FROM blobs WHERE content_type = 'text/plain'");
    let doc: Value = serde_json::from_str(plain[0][0].as_deref().unwrap()).unwrap();
    assert!(!doc["grammar"].as_array().unwrap().is_empty(), "{doc}");
}

/// Everything a run leaves that must not depend on batching or workers.
fn outcome(r: &Run) -> (TextRows, TextRows) {
    let blobs = r.rows("SELECT blob_id, CAST(version AS TEXT), doc FROM blobs ORDER BY blob_id");
    let processed = r.rows(
        "SELECT provider_id, blob_id, CAST(version AS TEXT), status FROM processing ORDER BY 1, 2",
    );
    (blobs, processed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn every_blob_is_processed_once_at_its_final_version_whatever_the_batching(
        seed in 0u64..1_000,
        batch in 1u64..400,
        workers in 1usize..=2,
    ) {
        let mut log = Vec::new();
        generate(
            &GenSpec {
                blobs: 40,
                deltas: 400,
                seed,
                faults: Faults { duplicate_rate: 0.02, malformed_rate: 0.01, shuffle_window: 8 },
            },
            &mut log,
        )
        .unwrap();
        let log = String::from_utf8(log).unwrap();
        let providers = vec![
            provider(json!({"id": "word-count", "blob_types": ["text/*"]})),
            provider(json!({"id": "render-html", "blob_types": ["text/markdown"]})),
        ];
        let whole = run_text(&log, providers.clone(), 1_000_000, 1, false);
        let batched = run_text(&log, providers, batch, workers, false);
        let (blobs, processed) = outcome(&whole);
        prop_assert!(!processed.is_empty());
        // Exactly once: one row per (provider, blob), each completed.
        let mut pairs: Vec<_> = processed.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
        pairs.dedup();
        prop_assert_eq!(pairs.len(), processed.len());
        prop_assert!(processed.iter().all(|r| r[3].as_deref() == Some("completed")));
        prop_assert_eq!(whole.providers().calls, processed.len() as u64 - whole.providers().memo_hits);
        // The same views and the same processing under any batching and worker count.
        prop_assert_eq!(&outcome(&batched).0, &blobs);
        prop_assert_eq!(&outcome(&batched).1, &processed);
    }
}
