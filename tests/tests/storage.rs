//! Hybrid storage against real services (issue 7): Postgres views equal SQLite's for
//! the same log, the delta store's monthly partitions and indexes, and outages of
//! Postgres and S3 in the middle of a replay. (Large documents through S3 and the CLI:
//! `bin/tests/storage_cli.rs`.)
//!
//! These tests need PostgreSQL (`DATABASE_URL`) and an S3-compatible server
//! (`S3_ENDPOINT` and `AWS_*`); when those are not set the tests start both for the run,
//! and fail, saying why, if they cannot (`studio_tests::services`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use studio_config::{Config, ReplayConfig};
use studio_connectors::content::s3::S3Options;
use studio_connectors::content::{ContentOptions, ContentReader, ContentSpec, LargeStoreSpec};
use studio_connectors::postgres::{PgOptions, PgReader, PgViews};
use studio_connectors::retry::RetryPolicy;
use studio_connectors::sqlite::{SqliteOptions, SqliteReader, SqliteViews};
use studio_connectors::{OpenMode, Rows, ViewReader, ViewSink};
use studio_dataflow::providers::ProviderSetup;
use studio_dataflow::replay::{Progress, ReplayOptions, ReplayReport, replay};
use studio_model::generate::{Faults, GenSpec, generate};
use studio_model::{
    AppliedRow, Checkpoint, KeyedChanges, SourcePos, ViewBatch, WaitingRow, parse_record,
};
use studio_tests::services::{
    FlakyProxy, fresh_bucket, fresh_database, host_port, pg_execute, pg_texts, s3_endpoint,
    with_host_port,
};
use studio_tests::views::{assert_same_tables, dump};

const TIMEOUT: Duration = Duration::from_secs(20);

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(300),
        give_up_after: Some(Duration::from_secs(120)),
    }
}

fn replay_config(batch_records: u64) -> ReplayConfig {
    ReplayConfig {
        workers: 1,
        batch_records,
        max_batches_in_flight: 1,
        writer_queue_batches: 1,
        store_records: true,
    }
}

fn s3_options(endpoint: &str, bucket: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".into(),
        bucket: bucket.to_owned(),
        force_path_style: true,
        create_bucket: true,
        timeout: Duration::from_secs(5),
    }
}

fn pg_sink(url: &str, content: ContentSpec) -> PgViews {
    PgViews::open(PgOptions {
        url: url.to_owned(),
        mode: OpenMode::Rebuild,
        rows_per_statement: 500,
        timeout: TIMEOUT,
        content,
        retry: quick_retry(),
    })
    .expect("open the Postgres views")
}

fn sqlite_sink(path: &Path, content: ContentSpec) -> SqliteViews {
    SqliteViews::open(&SqliteOptions {
        path: path.to_path_buf(),
        cache_size_kib: 2048,
        mode: OpenMode::Rebuild,
        content,
        retry: quick_retry(),
    })
    .expect("open the SQLite views")
}

fn run_replay(log: &Path, sink: impl ViewSink + Send + 'static, batch: u64) -> ReplayReport {
    replay(
        &[log.to_path_buf()],
        &replay_config(batch),
        Box::new(sink),
        Arc::new(Progress::default()),
        &Default::default(),
    )
    .expect("replay")
}

fn generated_log(dir: &Path, blobs: u64, deltas: u64, faults: Faults) -> PathBuf {
    let path = dir.join("log.jsonl");
    let mut out = std::fs::File::create(&path).expect("create the log");
    generate(
        &GenSpec {
            blobs,
            deltas,
            seed: 7,
            faults,
        },
        &mut out,
    )
    .expect("generate");
    path
}

fn faults() -> Faults {
    Faults {
        duplicate_rate: 0.02,
        malformed_rate: 0.01,
        shuffle_window: 5,
    }
}

fn pg_reader(url: &str, content: ContentReader) -> PgReader {
    PgReader::open(url, TIMEOUT, content).expect("open the Postgres reader")
}

#[test]
fn postgres_views_equal_sqlite_views_for_the_same_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = generated_log(dir.path(), 300, 4000, faults());
    let content = ContentSpec::in_dir(dir.path().join("large"));
    let db = dir.path().join("views.sqlite");
    let from_sqlite = run_replay(&log, sqlite_sink(&db, content.clone()), 700);
    let url = fresh_database("parity");
    let from_pg = run_replay(&log, pg_sink(&url, content), 700);
    assert_eq!(from_sqlite.accepted, from_pg.accepted);
    assert!(
        from_pg.dead_letters > 0 && from_pg.duplicates > 0,
        "faults were mixed in"
    );
    assert!(from_pg.batches > 3, "several transactions");

    let sqlite = dump(&mut SqliteReader::open(&db, ContentReader::local()).expect("open"));
    let pg = dump(&mut pg_reader(&url, ContentReader::local()));
    let rows: usize = pg.iter().map(|(_, r)| r.len()).sum();
    assert!(rows > 5_000, "the views hold the log ({rows} rows)");
    assert_same_tables(&sqlite, &pg, "SQLite vs Postgres");
    let docs = pg_texts(
        &url,
        "SELECT count(*)::text FROM blobs WHERE doc IS NOT NULL",
    );
    assert_eq!(docs, ["300"], "every document is JSONB");

    // The same questions answer the same.
    let mut sqlite_reader = SqliteReader::open(&db, ContentReader::local()).expect("open");
    let mut pg_reader = pg_reader(&url, ContentReader::local());
    assert_eq!(sqlite_reader.blobs(1000).unwrap().len(), 300);
    for row in sqlite_reader.blobs(50).unwrap() {
        let id = row[0].1.as_str().unwrap().parse().unwrap();
        assert_eq!(sqlite_reader.blob(id).unwrap(), pg_reader.blob(id).unwrap());
        assert_eq!(
            sqlite_reader.descendants(id).unwrap(),
            pg_reader.descendants(id).unwrap()
        );
        assert_eq!(
            sqlite_reader.deltas_of(id).unwrap(),
            pg_reader.deltas_of(id).unwrap()
        );
    }
    assert_eq!(
        sqlite_reader.dead_letters(1000).unwrap(),
        pg_reader.dead_letters(1000).unwrap()
    );
}

/// A log of `blobs` blobs with `versions` versions each, spread over six months of
/// 2025; each update is caused by the delta before it.
fn months_log(dir: &Path, blobs: u32, versions: u32) -> (PathBuf, Vec<(u32, u32, String)>) {
    let id = |kind: u32, n: u32| format!("{kind:08x}-0000-4000-8000-{n:012x}");
    let mut lines = Vec::new();
    let mut written = Vec::new();
    for v in 1..=versions {
        for b in 0..blobs {
            let month = (b + v) % 6 + 1;
            let at = format!("2025-{month:02}-{:02}T12:00:00Z", v % 27 + 1);
            let mut delta = json!({
                "id": id(0xd, b * 100 + v),
                "blob_id": id(0xb, b),
                "user_id": id(0xa, b % 7),
                "operation": if v == 1 { "create" } else { "update" },
                "version": v,
                "created_at": at,
                "patch": {"n": v, "content": format!("blob {b} version {v}")},
            });
            if v > 1 {
                delta["caused_by"] = json!(id(0xd, b * 100 + v - 1));
            }
            lines.push(delta.to_string());
            written.push((b, v, at));
        }
    }
    let path = dir.join("months.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the log");
    (path, written)
}

#[test]
fn deltas_land_in_monthly_partitions_and_blob_queries_use_the_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, written) = months_log(dir.path(), 400, 10);
    let url = fresh_database("partitions");
    let report = run_replay(
        &log,
        pg_sink(&url, ContentSpec::in_dir(dir.path().join("large"))),
        1000,
    );
    assert_eq!(report.accepted, 4000);

    let per_partition = pg_texts(
        &url,
        "SELECT p || ' ' || n FROM (SELECT tableoid::regclass::text AS p, count(*) AS n \
         FROM deltas GROUP BY 1) s ORDER BY 1",
    );
    let mut expected = std::collections::BTreeMap::<String, usize>::new();
    for (_, _, at) in &written {
        *expected
            .entry(format!("deltas_y2025m{}", &at[5..7]))
            .or_default() += 1;
    }
    let expected: Vec<String> = expected.iter().map(|(p, n)| format!("{p} {n}")).collect();
    assert_eq!(
        per_partition, expected,
        "each delta in its month's partition"
    );
    assert_eq!(expected.len(), 6);

    // A blob's deltas in version order, through the index on (blob_id, version).
    let blob = "0000000b-0000-4000-8000-000000000005";
    let plan = pg_texts(
        &url,
        &format!("EXPLAIN SELECT * FROM deltas WHERE blob_id = '{blob}' ORDER BY version"),
    )
    .join("\n");
    assert!(
        plan.contains("Index") && !plan.contains("Seq Scan"),
        "{plan}"
    );
    assert!(plan.contains("blob_id_version_idx"), "{plan}");
    let versions = pg_texts(
        &url,
        &format!("SELECT version::text FROM deltas WHERE blob_id = '{blob}' ORDER BY version"),
    );
    assert_eq!(versions.len(), 10);
    // The deltas caused by one delta, through the index on caused_by.
    let cause = "0000000d-0000-4000-8000-0000000001f7"; // blob 5, version 3
    let plan = pg_texts(
        &url,
        &format!("EXPLAIN SELECT * FROM deltas WHERE caused_by = '{cause}'"),
    )
    .join("\n");
    assert!(
        plan.contains("caused_by_idx") && !plan.contains("Seq Scan"),
        "{plan}"
    );
    let caused = pg_texts(
        &url,
        &format!("SELECT version::text FROM deltas WHERE caused_by = '{cause}'"),
    );
    assert_eq!(caused, ["4"]);
    // Every delta's record is stored exactly as read, at its log position.
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .expect("read the log")
        .lines()
        .map(str::to_owned)
        .collect();
    let records = pg_texts(
        &url,
        "SELECT record FROM deltas ORDER BY pos_part, pos_offset",
    );
    assert_eq!(records.len(), 4000);
    assert!(
        records == lines,
        "records equal the log lines, in log order"
    );
    let positions = pg_texts(
        &url,
        "SELECT count(*)::text FROM deltas WHERE pos_part = 0 AND record IS NOT NULL",
    );
    assert_eq!(positions, ["4000"]);
}

/// Runs `replay` in a thread, cuts `proxy` once the first batch committed, restores it
/// after `outage`, and returns the report.
fn replay_through_outage(
    log: &Path,
    sink: impl ViewSink + Send + 'static,
    proxy: &FlakyProxy,
    outage: Duration,
) -> ReplayReport {
    let progress = Arc::new(Progress::default());
    let handle = {
        let (log, progress) = (log.to_path_buf(), Arc::clone(&progress));
        std::thread::spawn(move || {
            replay(
                &[log],
                &replay_config(100),
                Box::new(sink),
                progress,
                &Default::default(),
            )
            .expect("replay")
        })
    };
    let started = Instant::now();
    while progress.accepted.load(Ordering::Relaxed) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no batch committed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    proxy.cut();
    // A transaction that was committing as the cut came may still land: start
    // counting a moment later.
    std::thread::sleep(Duration::from_millis(300));
    let before = progress.accepted.load(Ordering::Relaxed);
    std::thread::sleep(outage);
    let during = progress.accepted.load(Ordering::Relaxed);
    proxy.restore();
    let report = handle.join().expect("the replay thread");
    assert!(
        !handle_was_early(before, report.accepted),
        "the outage began mid-replay"
    );
    assert_eq!(
        during, before,
        "nothing committed while the service was down"
    );
    assert!(
        proxy.refused() > 0,
        "the sink tried again during the outage"
    );
    report
}

fn handle_was_early(before: u64, total: u64) -> bool {
    before >= total
}

#[test]
fn a_postgres_outage_mid_replay_pauses_and_resumes_to_the_same_views() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = generated_log(dir.path(), 200, 3000, faults());
    let content = ContentSpec::in_dir(dir.path().join("large"));
    let calm = fresh_database("calm");
    let calm_report = run_replay(&log, pg_sink(&calm, content.clone()), 100);

    let disturbed = fresh_database("outage");
    let proxy = FlakyProxy::start(host_port(&disturbed));
    let sink = pg_sink(&with_host_port(&disturbed, proxy.addr()), content);
    let report = replay_through_outage(&log, sink, &proxy, Duration::from_millis(1500));
    assert_eq!(report.accepted, calm_report.accepted);
    assert_eq!(report.dead_letters, calm_report.dead_letters);
    assert_same_tables(
        &dump(&mut pg_reader(&calm, ContentReader::local())),
        &dump(&mut pg_reader(&disturbed, ContentReader::local())),
        "undisturbed vs Postgres outage",
    );
}

#[test]
fn an_s3_outage_mid_replay_pauses_and_resumes_to_the_same_views() {
    let endpoint = s3_endpoint();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = generated_log(dir.path(), 200, 3000, faults());
    // Small threshold: a good share of the generated documents go to S3.
    let content = |endpoint: &str, bucket: &str| ContentSpec {
        options: ContentOptions {
            large_min_bytes: 700,
        },
        large: LargeStoreSpec::S3(s3_options(endpoint, bucket)),
    };
    let calm_bucket = fresh_bucket("calm");
    let calm_db = dir.path().join("calm.sqlite");
    run_replay(
        &log,
        sqlite_sink(&calm_db, content(&endpoint, &calm_bucket)),
        100,
    );

    let proxy = FlakyProxy::start(host_port(&endpoint));
    let proxied = with_host_port(&endpoint, proxy.addr());
    let bucket = fresh_bucket("outage");
    let db = dir.path().join("outage.sqlite");
    replay_through_outage(
        &log,
        sqlite_sink(&db, content(&proxied, &bucket)),
        &proxy,
        Duration::from_millis(1500),
    );

    // Same views (with each run's bucket in its references), and every document
    // readable from S3.
    let reader = || ContentReader::with_s3(s3_options(&endpoint, &calm_bucket));
    let mut calm_reader = SqliteReader::open(&calm_db, reader()).expect("open");
    let mut reader = SqliteReader::open(&db, reader()).expect("open");
    let in_s3 = calm_reader
        .rows(
            "SELECT count(*) AS n FROM blobs WHERE doc_ref IS NOT NULL",
            &[],
        )
        .unwrap();
    assert!(in_s3[0][0].1.as_i64().unwrap() > 20, "{in_s3:?}");
    let calm = dump(&mut calm_reader);
    let disturbed: Vec<(String, Rows)> = dump(&mut reader)
        .into_iter()
        .map(|(t, rows)| {
            let text = serde_json::to_string(&rows)
                .unwrap()
                .replace(&format!("s3://{bucket}/"), &format!("s3://{calm_bucket}/"));
            (t, serde_json::from_str(&text).unwrap())
        })
        .collect();
    assert_same_tables(&calm, &disturbed, "undisturbed vs S3 outage");
    for row in calm_reader.blobs(1000).unwrap() {
        let id = row[0].1.as_str().unwrap().parse().unwrap();
        let a = calm_reader.blob(id).unwrap();
        let b = reader.blob(id).unwrap();
        assert_eq!(a, b, "blob {id} reads the same from both buckets");
    }
}

#[test]
fn a_replay_refuses_a_postgres_schema_holding_foreign_tables() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database("foreign");
    studio_tests::services::pg_execute(
        &url,
        "CREATE TABLE customers (id int); INSERT INTO customers VALUES (1)",
    );
    let err = PgViews::open(PgOptions {
        url: url.clone(),
        mode: OpenMode::Rebuild,
        rows_per_statement: 500,
        timeout: TIMEOUT,
        content: ContentSpec::in_dir(dir.path()),
        retry: quick_retry(),
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("customers"), "{err}");
    assert_eq!(
        pg_texts(&url, "SELECT count(*)::text FROM customers"),
        ["1"]
    );
    let blobs = pg_texts(&url, "SELECT coalesce(to_regclass('blobs')::text, 'none')");
    assert_eq!(blobs, ["none"], "nothing created either");
}

/// `replay --providers` of the bundled documents, as the CLI runs it.
fn replay_with_providers(sink: impl ViewSink + Send + 'static) -> ReplayReport {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples");
    let config = Config::load(Some(&samples.join("providers.toml"))).expect("the config");
    let options = ReplayOptions {
        providers: Some(ProviderSetup {
            providers: studio_model::Provider::from_tables(&config.providers).expect("providers"),
            threads: 2,
            requests_out: None,
            each_batch: false,
            transformers: Vec::new(),
            policy: Default::default(),
        }),
        events: true,
    };
    let report = replay(
        &[samples.join("documents.jsonl")],
        &replay_config(1000),
        Box::new(sink),
        Arc::new(Progress::default()),
        &options,
    )
    .expect("replay");
    assert!(report.counts_add_up(), "{report:?}");
    report
}

/// The provider tables, without the wall-clock columns (processing times, and the
/// `at` of processing events, which is when processing ended), rows sorted.
fn provider_tables(reader: &mut dyn ViewReader) -> Vec<(String, Rows)> {
    [
        ("transform_requests", "SELECT * FROM transform_requests"),
        (
            "processing",
            "SELECT request_id, provider_id, blob_id, version, status, attempts, error FROM processing",
        ),
        (
            "events",
            "SELECT type, blob_id, delta_id, provider_id, payload FROM events",
        ),
        (
            "events.at",
            "SELECT delta_id, at FROM events WHERE type NOT LIKE 'processing.%'",
        ),
        (
            "events.seq",
            "SELECT count(*) AS n, min(seq) AS first, max(seq) AS last FROM events",
        ),
    ]
    .into_iter()
    .map(|(name, sql)| {
        let mut rows = reader
            .rows(sql, &[])
            .unwrap_or_else(|e| panic!("reading {name}: {e}"));
        rows.sort_by_cached_key(|r| serde_json::to_string(r).expect("JSON"));
        (name.to_owned(), rows)
    })
    .collect()
}

#[test]
fn providers_and_events_in_postgres_equal_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let content = ContentSpec::in_dir(dir.path().join("large"));
    let db = dir.path().join("views.sqlite");
    let from_sqlite = replay_with_providers(sqlite_sink(&db, content.clone()));
    let url = fresh_database("providers");
    let from_pg = replay_with_providers(pg_sink(&url, content));
    assert_eq!(from_sqlite.accepted, from_pg.accepted);

    let sqlite =
        provider_tables(&mut SqliteReader::open(&db, ContentReader::local()).expect("open"));
    let pg = provider_tables(&mut pg_reader(&url, ContentReader::local()));
    let count = |tables: &[(String, Rows)], name: &str| {
        tables
            .iter()
            .find(|(t, _)| t == name)
            .expect("table")
            .1
            .len()
    };
    // 3 text blobs + 2 rendered pages for grammar, 2 markdown blobs for render-html.
    assert_eq!(count(&pg, "transform_requests"), 7);
    assert_eq!(count(&pg, "processing"), 7);
    assert!(count(&pg, "events") > 7, "delta and processing events");
    assert_same_tables(&sqlite, &pg, "provider tables, SQLite vs Postgres");
    let seq = &pg.iter().find(|(t, _)| t == "events.seq").expect("seq").1[0];
    assert_eq!(
        seq[0].1, seq[2].1,
        "events.seq is 1..n without gaps: {seq:?}"
    );
    assert_eq!(seq[1].1, json!(1));
    let completed = pg_texts(
        &url,
        "SELECT count(*)::text FROM transform_requests WHERE status = 'completed'",
    );
    assert_eq!(completed, ["7"]);

    // The other views agree too (the provider outputs are deltas like any other). An
    // output's log position is the order the answers arrived in, which differs from
    // run to run: `deltas` is compared without it.
    let deltas = "SELECT delta_id, version, record FROM deltas";
    let mut sqlite_reader = SqliteReader::open(&db, ContentReader::local()).expect("open");
    let mut pg_reader = pg_reader(&url, ContentReader::local());
    let mut sqlite_deltas = sqlite_reader.rows(deltas, &[]).expect("deltas");
    let mut pg_deltas = pg_reader.rows(deltas, &[]).expect("deltas");
    sqlite_deltas.sort_by_cached_key(|r| serde_json::to_string(r).expect("JSON"));
    pg_deltas.sort_by_cached_key(|r| serde_json::to_string(r).expect("JSON"));
    assert_eq!(
        sqlite_deltas, pg_deltas,
        "the delta store with provider outputs"
    );
    let sqlite = dump(&mut sqlite_reader);
    let pg = dump(&mut pg_reader);
    let skip = ["processing", "events", "deltas"];
    let keep = |t: &[(String, Rows)]| -> Vec<(String, Rows)> {
        t.iter()
            .filter(|(n, _)| !skip.contains(&n.as_str()))
            .cloned()
            .collect()
    };
    assert_same_tables(&keep(&sqlite), &keep(&pg), "views with providers");
}

/// An accepted delta's row, from its record.
fn applied(record: &str, pos: SourcePos) -> AppliedRow {
    let d = parse_record(record.as_bytes(), pos).expect("a valid delta");
    AppliedRow {
        delta_id: d.id,
        blob_id: d.blob_id,
        version: d.version,
        operation: d.operation,
        user_id: d.user_id,
        provider_id: d.provider_id.clone(),
        caused_by: d.caused_by,
        created_at: d.created_at,
        pos,
        record: Some(Arc::clone(&d.raw)),
    }
}

fn waiting(record: &str, pos: SourcePos) -> WaitingRow {
    WaitingRow::of(&parse_record(record.as_bytes(), pos).expect("a valid delta"))
}

/// Two batches written through the sink API: the first applies a create and leaves two
/// deltas waiting for a gap, the second fills the gap with version 2 (one waiting delta
/// applies and leaves `deltas_waiting`), the other still waits. Each carries a checkpoint.
fn recovery_batches() -> (Vec<ViewBatch>, Vec<(SourcePos, String)>) {
    let blob = "0000000b-0000-4000-8000-000000000001";
    let user = "0000000a-0000-4000-8000-000000000001";
    // Odd key order and whitespace: the store must keep the bytes.
    let create = format!(
        r#"{{"version": 1,  "id":"0000000d-0000-4000-8000-000000000001","blob_id":"{blob}","user_id":"{user}","operation":"create","created_at":"2026-01-05T10:00:00.123Z","content_type":"text/plain","patch":{{"content":"é \u00e9"}}}}"#
    );
    let v3 = format!(
        r#"{{ "id":"0000000d-0000-4000-8000-000000000003", "blob_id":"{blob}","user_id":"{user}","operation":"update","version":3,"created_at":"2026-01-05T10:00:03Z","patch":{{"n" : 3}} }}"#
    );
    let v4 = format!(
        r#"{{"id":"0000000d-0000-4000-8000-000000000004","blob_id":"{blob}","user_id":"{user}","operation":"update","version":4,"created_at":"2026-02-05T10:00:04Z","patch":{{"n":4}}}}"#
    );
    let v2 = format!(
        r#"{{"id":"0000000d-0000-4000-8000-000000000002","blob_id":"{blob}","user_id":"{user}","operation":"update","version":2,"created_at":"2026-01-05T10:00:02Z","patch":{{"n":2}}}}"#
    );
    let pos = |part, offset| SourcePos { part, offset };
    let first = ViewBatch {
        applied: vec![applied(&create, pos(0, 0))],
        waiting: KeyedChanges {
            upserts: vec![waiting(&v3, pos(1, 0)), waiting(&v4, pos(0, 1))],
            deletes: Vec::new(),
        },
        checkpoint: Some(Checkpoint {
            source: "kafka:deltas".into(),
            positions: vec![pos(0, 1), pos(1, 0)],
            next_seq: 3,
        }),
        ..ViewBatch::default()
    };
    let v3_row = waiting(&v3, pos(1, 0));
    let second = ViewBatch {
        applied: vec![applied(&v2, pos(0, 2)), applied(&v3, pos(1, 0))],
        waiting: KeyedChanges {
            upserts: Vec::new(),
            deletes: vec![v3_row.delta_id],
        },
        checkpoint: Some(Checkpoint {
            source: "kafka:deltas".into(),
            positions: vec![pos(0, 2), pos(1, 0)],
            next_seq: 4,
        }),
        ..ViewBatch::default()
    };
    let expected = vec![
        (pos(0, 0), create),
        (pos(0, 1), v4),
        (pos(0, 2), v2),
        (pos(1, 0), v3),
    ];
    (vec![first, second], expected)
}

/// What `sink` recovers, in log order (a store hands it in any order: the dataflow
/// orders a timestamp's records by position).
fn recovered(
    sink: &mut dyn ViewSink,
    source: &str,
) -> (Vec<(SourcePos, String)>, Option<Checkpoint>) {
    let mut deltas = Vec::new();
    let checkpoint = sink
        .recover(source, &mut |pos, record, _kind| {
            deltas.push((pos, record.to_owned()))
        })
        .expect("recover");
    deltas.sort_by_key(|(pos, _)| (pos.part, pos.offset));
    (deltas, checkpoint)
}

#[test]
fn recover_reads_the_same_deltas_and_checkpoint_from_postgres_and_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let content = ContentSpec::in_dir(dir.path().join("large"));
    let (batches, expected) = recovery_batches();
    let mut sqlite = sqlite_sink(&dir.path().join("views.sqlite"), content.clone());
    let url = fresh_database("recover");
    let mut pg = pg_sink(&url, content);
    // Nothing stored yet: no deltas, no checkpoint.
    assert_eq!(recovered(&mut pg, "kafka:deltas"), (Vec::new(), None));
    for batch in &batches {
        sqlite.write(batch).expect("SQLite write");
        pg.write(batch).expect("Postgres write");
    }
    let from_sqlite = recovered(&mut sqlite, "kafka:deltas");
    let from_pg = recovered(&mut pg, "kafka:deltas");
    assert_eq!(from_pg, from_sqlite, "both stores recover the same");
    assert_eq!(
        from_pg.0, expected,
        "every delta, exactly as read, at its position"
    );
    assert_eq!(
        from_pg.1,
        Some(Checkpoint {
            source: "kafka:deltas".into(),
            positions: vec![
                SourcePos { part: 0, offset: 2 },
                SourcePos { part: 1, offset: 0 }
            ],
            next_seq: 4,
        })
    );
    assert_eq!(
        recovered(&mut pg, "nats:other").1,
        None,
        "another source's checkpoint"
    );
    assert_eq!(
        pg_texts(&url, "SELECT version::text FROM deltas_waiting"),
        ["4"],
        "the delta still waiting"
    );
    // The same rows in every table of the delta store.
    let sqlite_dump = dump(
        &mut SqliteReader::open(&dir.path().join("views.sqlite"), ContentReader::local())
            .expect("open"),
    );
    let pg_dump = dump(&mut pg_reader(&url, ContentReader::local()));
    assert_same_tables(&sqlite_dump, &pg_dump, "delta store, SQLite vs Postgres");
}

/// The rows of `sql` on a SQLite file, through sqlx (as an analyst's SQL would see them).
fn sqlite_rows<T>(path: &Path, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    use sqlx::Connection;
    use std::str::FromStr;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(path);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("open");
        let rows = sqlx::query_as::<_, T>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await.unwrap();
        rows
    })
}

#[test]
fn sqlite_documents_are_json_that_json_extract_reads_on_every_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = generated_log(dir.path(), 300, 4000, faults());
    let db = dir.path().join("views.sqlite");
    let content = ContentSpec::in_dir(dir.path().join("large"));
    run_replay(&log, sqlite_sink(&db, content), 700);

    // blob_id, doc, doc_ref, json_extract(doc, '$.content')
    type Row = (String, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlite_rows(
        &db,
        "SELECT blob_id, doc, doc_ref, json_extract(doc, '$.content') FROM blobs \
         WHERE deleted_at IS NULL",
    );
    assert!(rows.len() > 200, "live blobs: {}", rows.len());
    let mut reader = SqliteReader::open(&db, ContentReader::local()).expect("open");
    let mut with_content = 0;
    for (blob_id, doc, doc_ref, extracted) in rows {
        assert_eq!(doc_ref, None, "{blob_id}: no document here is large");
        let doc = doc.unwrap_or_else(|| panic!("{blob_id}: doc is NULL"));
        // The document as `studio query blob` prints it is the one SQL reads.
        let shown = reader.blob(blob_id.parse().unwrap()).unwrap();
        assert_eq!(shown[0].last().unwrap().1.as_str(), Some(doc.as_str()));
        let value: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
        assert_eq!(
            extracted.as_deref(),
            value["content"].as_str(),
            "{blob_id}: json_extract(doc, '$.content')"
        );
        with_content += usize::from(extracted.is_some());
    }
    assert!(
        with_content > 200,
        "most documents have a content ({with_content})"
    );
}

#[test]
fn an_old_sqlite_database_has_its_lz4_documents_turned_into_json_on_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("old.sqlite");
    let json = r#"{"content":"compressed by an earlier Studio, compressed by an earlier Studio"}"#;
    let packed = lz4_flex::compress_prepend_size(json.as_bytes());
    let hex: String = packed.iter().map(|b| format!("{b:02x}")).collect();
    {
        use sqlx::Connection;
        use std::str::FromStr;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(&db)
                .create_if_missing(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap();
            // The blobs table as earlier versions created it.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE blobs (blob_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, \
                 version INTEGER NOT NULL, content_type TEXT NOT NULL, doc TEXT, doc_lz4 BLOB, \
                 doc_ref TEXT, doc_bytes INTEGER NOT NULL, parent_id TEXT, \
                 created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT); \
                 INSERT INTO blobs VALUES ('0000000b-0000-4000-8000-000000000001', \
                 '0000000a-0000-4000-8000-000000000001', 1, 'application/json', NULL, \
                 x'{hex}', NULL, {}, NULL, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', NULL); \
                 INSERT INTO blobs VALUES ('0000000b-0000-4000-8000-000000000002', \
                 '0000000a-0000-4000-8000-000000000001', 1, 'application/json', '{{\"a\":1}}', \
                 NULL, NULL, 7, NULL, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', NULL);",
                json.len()
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            conn.close().await.unwrap();
        });
    }
    drop(
        SqliteViews::open(&SqliteOptions {
            path: db.clone(),
            cache_size_kib: 2048,
            mode: OpenMode::Maintain,
            content: ContentSpec::in_dir(dir.path().join("large")),
            retry: quick_retry(),
        })
        .expect("open the old database"),
    );
    let docs: Vec<(String, Option<String>)> = sqlite_rows(
        &db,
        "SELECT doc, json_extract(doc, '$.content') FROM blobs ORDER BY blob_id",
    );
    assert_eq!(
        docs,
        [
            (
                json.to_owned(),
                Some("compressed by an earlier Studio, compressed by an earlier Studio".into())
            ),
            (r#"{"a":1}"#.to_owned(), None),
        ]
    );
    let legacy: Vec<(i64,)> = sqlite_rows(
        &db,
        "SELECT count(*) FROM pragma_table_info('blobs') WHERE name = 'doc_lz4'",
    );
    assert_eq!(legacy, [(0,)], "doc_lz4 is dropped");
}

/// A create delta with `doc` as its document.
fn create_line(n: u32, doc: &serde_json::Value) -> String {
    json!({
        "id": format!("0000000d-0000-4000-8000-{n:012x}"),
        "blob_id": format!("0000000b-0000-4000-8000-{n:012x}"),
        "user_id": "0000000a-0000-4000-8000-000000000001",
        "operation": "create",
        "version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "patch": doc,
    })
    .to_string()
}

#[test]
fn postgres_documents_are_jsonb_that_sql_reads_and_postgres_compresses_with_lz4() {
    let dir = tempfile::tempdir().expect("temp dir");
    let words = |n: usize| -> String { (0..n).map(|i| format!("w{:05} ", i % 9_973)).collect() };
    let small = json!({"title": "small", "content": "a few words"});
    let toasted = json!({"title": "toasted", "content": words(2_000)}); // ≈ 14 KB
    let large = json!({"title": "large", "content": words(160_000)}); // ≈ 1.1 MB
    assert!(toasted.to_string().len() > 2_048);
    assert!(large.to_string().len() >= 1 << 20);
    let log = dir.path().join("docs.jsonl");
    let lines = [
        create_line(1, &small),
        create_line(2, &toasted),
        create_line(3, &large),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").expect("write the log");
    let url = fresh_database("jsondocs");
    let content = ContentSpec {
        options: ContentOptions::default(),
        large: LargeStoreSpec::Postgres,
    };
    let report = run_replay(&log, pg_sink(&url, content), 10);
    assert_eq!(report.accepted, 3);

    let contents = pg_texts(
        &url,
        "SELECT coalesce(doc->>'content', 'NULL') FROM blobs ORDER BY blob_id",
    );
    let expected = |d: &serde_json::Value| d["content"].as_str().unwrap().to_owned();
    assert_eq!(
        contents,
        [expected(&small), expected(&toasted), "NULL".into()],
        "doc->>'content' reads the documents kept in blobs"
    );
    assert_eq!(
        pg_texts(
            &url,
            "SELECT pg_column_compression(doc) FROM blobs \
             WHERE blob_id = '0000000b-0000-4000-8000-000000000002'",
        ),
        ["lz4"],
        "Postgres compresses doc with LZ4 (TOAST)"
    );
    let blob3 = "0000000b-0000-4000-8000-000000000003";
    let reference = format!("postgres:large_docs/blobs/{blob3}/v1.json");
    assert_eq!(
        pg_texts(&url, "SELECT doc_ref FROM blobs WHERE doc IS NULL"),
        [reference]
    );
    assert_eq!(
        pg_texts(
            &url,
            "SELECT pg_column_compression(l.doc) || ' ' || (l.doc::jsonb->>'title') \
             FROM blobs b JOIN large_docs l USING (doc_ref)",
        ),
        ["lz4 large"],
        "the large document is in large_docs, compressed, and joins on doc_ref"
    );
    let mut reader = pg_reader(&url, ContentReader::local());
    let shown = reader.blob(blob3.parse().unwrap()).unwrap();
    assert_eq!(
        shown[0].last().unwrap().1.as_str(),
        Some(large.to_string().as_str())
    );
}

#[test]
fn an_old_postgres_database_has_its_lz4_documents_turned_into_jsonb_by_migration_5() {
    let url = fresh_database("oldlz4");
    let mut setup = String::from(
        "CREATE TABLE _studio_migrations (version bigint PRIMARY KEY, name text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now());",
    );
    for (version, name, sql) in studio_connectors::postgres::MIGRATIONS {
        if *version < 5 {
            setup.push_str(sql);
            setup.push_str(&format!(
                ";INSERT INTO _studio_migrations (version, name) VALUES ({version}, '{name}');"
            ));
        }
    }
    let json = r#"{"content":"compressed by an earlier Studio, compressed by an earlier Studio"}"#;
    let packed = lz4_flex::compress_prepend_size(json.as_bytes());
    let hex: String = packed.iter().map(|b| format!("{b:02x}")).collect();
    setup.push_str(&format!(
        "INSERT INTO blobs (blob_id, user_id, version, content_type, doc_lz4, doc_bytes, \
         created_at, updated_at) VALUES ('0000000b-0000-4000-8000-000000000001', \
         '0000000a-0000-4000-8000-000000000001', 1, 'application/json', '\\x{hex}', {}, \
         '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z');",
        json.len()
    ));
    pg_execute(&url, &setup);
    let sink = PgViews::open(PgOptions {
        url: url.clone(),
        mode: OpenMode::Maintain,
        rows_per_statement: 100,
        timeout: TIMEOUT,
        content: ContentSpec {
            options: ContentOptions::default(),
            large: LargeStoreSpec::Postgres,
        },
        retry: quick_retry(),
    })
    .expect("open the old database");
    drop(sink);
    assert_eq!(
        pg_texts(&url, "SELECT doc->>'content' FROM blobs"),
        ["compressed by an earlier Studio, compressed by an earlier Studio"]
    );
    assert_eq!(
        pg_texts(
            &url,
            "SELECT count(*)::text FROM information_schema.columns \
             WHERE table_name = 'blobs' AND column_name = 'doc_lz4'",
        ),
        ["0"],
        "doc_lz4 is dropped"
    );
    let latest = studio_connectors::postgres::MIGRATIONS.last().unwrap().0;
    assert_eq!(
        pg_texts(&url, "SELECT max(version)::text FROM _studio_migrations"),
        [latest.to_string()],
        "migration 5 and every later one ran"
    );
}

/// The tables the migrations make have the declared columns, in order, with the
/// declared types (`studio_model::tables`): the statements generated from the
/// declarations fit the schema that history made.
#[test]
fn the_postgres_migrations_make_the_declared_tables() {
    let url = fresh_database("declared");
    drop(pg_sink(&url, ContentSpec::in_dir(std::env::temp_dir())));
    let declared = studio_model::tables::TABLES
        .into_iter()
        .chain([&studio_model::tables::LARGE_DOCS]);
    for table in declared {
        let found = pg_texts(
            &url,
            &format!(
                "SELECT column_name || ' ' || udt_name FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = '{}' \
                 ORDER BY ordinal_position",
                table.name
            ),
        );
        let expected: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.ty.postgres()))
            .collect();
        assert_eq!(found, expected, "{}", table.name);
    }
}
