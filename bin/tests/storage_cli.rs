//! The `studio` binary with Postgres and S3 (issue 7): a 2 MiB document goes to S3
//! under a versioned key, `studio query blob` prints it, `--url` gives a presigned URL
//! that downloads the same bytes, a new version writes a new object and the old one
//! stays readable; SQLite follows the same rule with a local directory.
//!
//! Needs PostgreSQL (`DATABASE_URL`) and S3 (`S3_ENDPOINT`, `AWS_*`); when those are not
//! set the test starts both for the run, and fails, saying why, if it cannot.

use std::path::PathBuf;

use serde_json::{Value, json};
use std::time::Duration;

use studio_connectors::content::s3::{S3Options, S3Store};
use studio_connectors::content::{ContentOptions, ContentSpec, LargeStoreSpec};
use studio_connectors::postgres::{PgOptions, PgViews};
use studio_connectors::retry::RetryPolicy;
use studio_connectors::{OpenMode, ViewSink};
use studio_model::{BlobRow, Doc, Timestamp, ViewBatch};
use studio_tests::services::{fresh_bucket, fresh_database, pg_texts, s3_endpoint};

fn s3_options(endpoint: &str, bucket: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".into(),
        bucket: bucket.to_owned(),
        force_path_style: true,
        create_bucket: false,
        timeout: Duration::from_secs(5),
    }
}

fn studio() -> std::process::Command {
    studio_tests::studio_command(env!("CARGO_BIN_EXE_studio"))
}

fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run studio");
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn a_two_mib_document_round_trips_through_s3_with_versions_and_a_presigned_url() {
    let endpoint = s3_endpoint();
    let bucket = fresh_bucket("large");
    let url = fresh_database("large");
    let dir = tempfile::tempdir().expect("temp dir");
    let blob = "0000000b-0000-4000-8000-000000000001";
    let words: String = (0..(2 << 20) / 8)
        .map(|i| format!("w{:06} ", i % 999_983))
        .collect();
    let v1 = json!({"title": "big", "content": words});
    let v2 = json!({"title": "bigger", "content": words});
    let log = dir.path().join("large.jsonl");
    let lines = [
        json!({"id": "0000000d-0000-4000-8000-000000000001", "blob_id": blob,
               "user_id": "0000000a-0000-4000-8000-000000000001", "operation": "create",
               "version": 1, "created_at": "2026-01-01T00:00:00Z", "patch": v1}),
        json!({"id": "0000000d-0000-4000-8000-000000000002", "blob_id": blob,
               "user_id": "0000000a-0000-4000-8000-000000000001", "operation": "update",
               "version": 2, "created_at": "2026-01-02T00:00:00Z", "patch": {"title": "bigger"}}),
    ];
    std::fs::write(&log, lines.map(|l| l.to_string()).join("\n")).expect("write");
    assert!(v1.to_string().len() >= 2 << 20, "a 2 MiB document");

    let env = [
        ("STUDIO_CONTENT__LARGE_STORE", "s3"),
        ("STUDIO_S3__ENDPOINT", endpoint.as_str()),
        ("STUDIO_S3__BUCKET", bucket.as_str()),
        ("STUDIO_RETRY__GIVE_UP_AFTER_SECS", "60"),
    ];
    // Two batches: v1 is written (and kept) before v2 replaces it in the view.
    run_ok(studio().envs(env).args([
        "replay",
        log.to_str().unwrap(),
        "--db",
        &url,
        "--batch-records",
        "1",
    ]));
    let refs = pg_texts(&url, "SELECT doc_ref FROM blobs");
    assert_eq!(refs, [format!("s3://{bucket}/blobs/{blob}/v2.json")]);
    let out = run_ok(
        studio()
            .envs(env)
            .args(["query", "--db", &url, "--json", "blob", blob]),
    );
    let rows: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(rows[0]["doc"].as_str(), Some(v2.to_string().as_str()));
    assert_eq!(rows[0]["version"], 2);

    let presigned = run_ok(
        studio()
            .envs(env)
            .args(["query", "--db", &url, "blob", blob, "--url"]),
    );
    let presigned = presigned.trim();
    assert!(presigned.contains("X-Amz-Signature"), "{presigned}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = runtime.block_on(async {
        let response = reqwest::get(presigned)
            .await
            .expect("GET the presigned URL");
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.expect("body")
    });
    assert_eq!(
        &body[..],
        v2.to_string().as_bytes(),
        "the URL gives the same bytes"
    );

    // An update makes a new object; the old version stays readable. (The replay above
    // may have merged its two batches into one transaction, so v1 need not exist: the
    // next version is written through the sink itself, one batch.)
    let mut sink = PgViews::open(PgOptions {
        url: url.clone(),
        mode: OpenMode::Maintain,
        rows_per_statement: 100,
        timeout: Duration::from_secs(20),
        content: ContentSpec {
            options: ContentOptions::default(),
            large: LargeStoreSpec::S3(s3_options(&endpoint, &bucket)),
        },
        retry: RetryPolicy::default(),
    })
    .expect("open the sink");
    let v3 = json!({"title": "biggest", "content": words});
    let at = Timestamp::parse_rfc3339("2026-01-03T00:00:00Z").unwrap();
    let mut batch = ViewBatch::default();
    batch.blobs.upserts.push(BlobRow {
        blob_id: blob.parse().unwrap(),
        user_id: "0000000a-0000-4000-8000-000000000001".parse().unwrap(),
        version: 3,
        content_type: "application/json".into(),
        doc: Doc::new(v3.clone()),
        parent_id: None,
        created_at: Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
        updated_at: at,
        deleted_at: None,
    });
    sink.write(&batch).expect("write version 3");
    let refs = pg_texts(&url, "SELECT doc_ref FROM blobs");
    assert_eq!(refs, [format!("s3://{bucket}/blobs/{blob}/v3.json")]);
    let (old, new) = runtime.block_on(async {
        let store = S3Store::connect(&s3_options(&endpoint, &bucket))
            .await
            .expect("S3");
        let old = store
            .get(&format!("s3://{bucket}/blobs/{blob}/v2.json"))
            .await
            .expect("v2 is still there");
        let new = store.get(&refs[0]).await.expect("v3");
        (old, new)
    });
    assert_eq!(old, v2.to_string().into_bytes());
    assert_eq!(new, v3.to_string().into_bytes());

    // SQLite follows the same rule, here with a local directory for large documents.
    let db = dir.path().join("views.sqlite");
    run_ok(studio().args([
        "replay",
        log.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]));
    let file = PathBuf::from(format!("{}.blobs/blobs/{blob}/v2.json", db.display()));
    assert_eq!(
        std::fs::read(&file).expect("the large file"),
        v2.to_string().into_bytes()
    );
    let out = run_ok(studio().args([
        "query",
        "--db",
        db.to_str().unwrap(),
        "--json",
        "blob",
        blob,
    ]));
    let rows: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(rows[0]["doc"].as_str(), Some(v2.to_string().as_str()));
    let inline = pg_texts(
        &url,
        "SELECT count(*)::text FROM blobs WHERE doc IS NOT NULL",
    );
    assert_eq!(inline, ["0"], "the one document is large");
}

#[test]
fn postgres_with_default_settings_keeps_large_documents_in_its_own_table() {
    let url = fresh_database("defaults");
    let dir = tempfile::tempdir().expect("temp dir");
    let large_blob = "0000000b-0000-4000-8000-000000000001";
    let small_blob = "0000000b-0000-4000-8000-000000000002";
    let words: String = (0..(1 << 20) / 8)
        .map(|i| format!("w{:06} ", i % 999_983))
        .collect();
    let large = json!({"title": "big", "content": words});
    let small = json!({"title": "small", "content": "read me with SQL"});
    assert!(large.to_string().len() >= 1 << 20, "a 1 MiB document");
    let log = dir.path().join("defaults.jsonl");
    let create = |n: u32, blob: &str, doc: &Value| {
        json!({"id": format!("0000000d-0000-4000-8000-{n:012x}"), "blob_id": blob,
               "user_id": "0000000a-0000-4000-8000-000000000001", "operation": "create",
               "version": 1, "created_at": "2026-01-01T00:00:00Z", "patch": doc})
        .to_string()
    };
    let lines = [create(1, large_blob, &large), create(2, small_blob, &small)];
    std::fs::write(&log, lines.join("\n")).expect("write");

    // No content or S3 settings at all, and a working directory of its own: nothing is
    // written beside it.
    let cwd = tempfile::tempdir().expect("temp dir");
    let out = run_ok(studio().current_dir(cwd.path()).args([
        "replay",
        log.to_str().unwrap(),
        "--db",
        &url,
    ]));
    assert!(
        out.contains(
            "large docs             1 (of 1048576 bytes or more) in the Postgres table large_docs"
        ),
        "the summary says where large documents went:\n{out}"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "nothing beside the working directory"
    );
    assert_eq!(
        pg_texts(&url, "SELECT doc_ref FROM blobs WHERE doc IS NULL"),
        [format!("postgres:large_docs/blobs/{large_blob}/v1.json")]
    );
    assert_eq!(
        pg_texts(
            &url,
            "SELECT doc->>'content' FROM blobs WHERE doc IS NOT NULL"
        ),
        ["read me with SQL"]
    );
    let out = run_ok(
        studio()
            .current_dir(cwd.path())
            .args(["query", "--db", &url, "--json", "blob", large_blob]),
    );
    let rows: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(rows[0]["doc"].as_str(), Some(large.to_string().as_str()));
    assert_eq!(
        pg_texts(&url, "SELECT pg_column_compression(doc) FROM large_docs"),
        ["lz4"]
    );

    // The summary of a SQLite replay names its directory.
    let db = dir.path().join("views.sqlite");
    let out = run_ok(studio().args([
        "replay",
        log.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]));
    assert!(
        out.contains(&format!(
            "1 (of 1048576 bytes or more) in the directory {}.blobs",
            db.display()
        )),
        "{out}"
    );
}
