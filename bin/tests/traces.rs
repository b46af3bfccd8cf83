//! Traces over OTLP (issue 18, observability): `studio replay --providers` exports its
//! spans to a real OTLP/HTTP receiver on loopback (`.ci/services.sh`'s `otlp`, which
//! writes every span it decodes to a file), and the spans match what the views hold:
//! one `delta.apply` per delta (with `telemetry.delta_spans`), one `provider.call` per
//! request the processing table records, and `batch.commit` spans whose delta counts
//! add up to the delta store. An unreachable collector costs spans, not the run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use studio_tests::services::OwnServices;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn studio(endpoint: &str, service_name: &str, delta_spans: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_studio"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STUDIO_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(ROOT)
        .env("STUDIO_TELEMETRY__OTLP_ENDPOINT", endpoint)
        .env("STUDIO_TELEMETRY__SERVICE_NAME", service_name)
        .env("STUDIO_TELEMETRY__DELTA_SPANS", delta_spans.to_string());
    cmd
}

/// `studio --config samples/providers.toml replay samples/documents.jsonl --providers`,
/// which must succeed.
fn replay(mut cmd: Command, db: &Path) {
    let out = cmd
        .args(["--config", "samples/providers.toml", "replay"])
        .arg("samples/documents.jsonl")
        .arg("--db")
        .arg(db)
        .args(["--providers", "--no-progress"])
        .output()
        .expect("run studio");
    assert!(
        out.status.success(),
        "studio replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The spans the receiver wrote for `service_name`, by span name.
fn received(file: &Path, service_name: &str) -> BTreeMap<String, Vec<Value>> {
    let text = std::fs::read_to_string(file).expect("the receiver's spans file");
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in text.lines() {
        let span: Value = serde_json::from_str(line).expect("a span as JSON");
        if span["service"] == service_name {
            by_name
                .entry(span["name"].as_str().unwrap().to_owned())
                .or_default()
                .push(span);
        }
    }
    by_name
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// The values of one column of `sql`'s answer.
fn column(db: &Path, sql: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).expect("open the views");
    let mut statement = conn.prepare(sql).expect(sql);
    statement
        .query_map([], |row| row.get::<_, rusqlite::types::Value>(0))
        .expect(sql)
        .map(|v| match v.expect("a row") {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn a_replay_with_providers_exports_its_spans() {
    let otlp = OwnServices::start(&["otlp"]);
    let (endpoint, file) = (otlp.var("OTLP_ENDPOINT"), otlp.var("OTLP_SPANS"));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("views.sqlite");
    replay(studio(&endpoint, "studio-traced", true), &db);
    let spans = received(Path::new(&file), "studio-traced");

    // One `delta.apply` per delta offered: the log's and the providers' outputs.
    let applied: BTreeSet<String> = spans["delta.apply"]
        .iter()
        .map(|s| attribute(s, "delta.id").as_str().unwrap().to_owned())
        .collect();
    let stored: BTreeSet<String> = column(&db, "SELECT delta_id FROM deltas")
        .into_iter()
        .collect();
    assert_eq!(applied, stored, "a delta.apply span per stored delta");
    let log = std::fs::read_to_string(Path::new(ROOT).join("samples/documents.jsonl")).unwrap();
    for line in log.lines() {
        let id = serde_json::from_str::<Value>(line).unwrap()["id"].clone();
        assert!(applied.contains(id.as_str().unwrap()), "{id} has its span");
    }
    for span in &spans["delta.apply"] {
        assert!(attribute(span, "blob.id").is_string());
        assert!(attribute(span, "operation").is_string());
    }

    // One `provider.call` per request the processing table settled, with its status.
    let calls: BTreeMap<String, String> = spans["provider.call"]
        .iter()
        .map(|s| {
            let request = attribute(s, "request.id").as_str().unwrap().to_owned();
            (request, attribute(s, "status").as_str().unwrap().to_owned())
        })
        .collect();
    let processed: BTreeMap<String, String> = column(&db, "SELECT request_id FROM processing")
        .into_iter()
        .zip(column(&db, "SELECT status FROM processing"))
        .collect();
    assert!(!processed.is_empty(), "the sample's providers ran");
    assert_eq!(
        calls, processed,
        "a provider.call span per request, same status"
    );

    // `batch.commit` spans: their deltas add up to the delta store.
    let committed: u64 = spans["batch.commit"]
        .iter()
        .map(|s| {
            let deltas = attribute(s, "deltas");
            deltas
                .as_u64()
                .or_else(|| deltas.as_str().and_then(|d| d.parse().ok()))
                .unwrap()
        })
        .sum();
    assert_eq!(
        committed,
        stored.len() as u64,
        "batch.commit counts the deltas"
    );

    // Without delta_spans, the per-delta spans stay off; the others are exported.
    let db = dir.path().join("quiet.sqlite");
    replay(studio(&endpoint, "studio-quiet", false), &db);
    let quiet = received(Path::new(&file), "studio-quiet");
    assert!(
        !quiet.contains_key("delta.apply"),
        "no delta spans by default"
    );
    assert!(quiet.contains_key("batch.commit") && quiet.contains_key("provider.call"));
}

#[test]
fn an_unreachable_collector_costs_spans_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens there.
    let db = dir.path().join("views.sqlite");
    replay(studio("http://127.0.0.1:9", "studio-unreached", true), &db);
    let stored = column(&db, "SELECT count(*) FROM deltas");
    assert_ne!(stored, vec!["0".to_owned()], "the replay wrote its views");
}
