//! End-to-end tests of the built `studio` binary: help, `gen` + `replay`, malformed
//! input, errors and exit codes, worker counts, and replaying into the same database.
//! The views are read back with `studio_tests::views` and held to the reference model
//! (`studio_tests::model`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use studio_tests::model::{self, join_lines, split_lines};
use studio_tests::views::{Tables, raw_bytes, read_tables};

fn studio() -> Command {
    studio_tests::studio_command(env!("CARGO_BIN_EXE_studio"))
}

fn run(args: &[&str]) -> Output {
    studio().args(args).output().expect("run studio")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and asserts success; returns stdout.
fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "studio {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// `studio replay LOG --db DB --json [extra]`: the parsed summary.
fn replay_json(log: &Path, db: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["replay", p(log), "--db", p(db), "--json"];
    args.extend_from_slice(extra);
    let stdout = run_ok(&args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn count(summary: &Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {summary}"))
}

/// The summary's counts add up and describe the tables.
fn check_summary(summary: &Value, tables: &Tables, records: usize) {
    let (read, accepted, duplicates, dead) = (
        count(summary, "records_read"),
        count(summary, "accepted"),
        count(summary, "duplicates"),
        count(summary, "dead_letters"),
    );
    assert_eq!(read, records as u64, "{summary}");
    assert_eq!(accepted + duplicates + dead, read, "{summary}");
    // Accepted grant records count as accepted (docs/access.md).
    assert_eq!(
        tables.applied.len() as u64 + tables.grants_accepted,
        accepted
    );
    assert_eq!(tables.dead_letters.len() as u64, dead);
    let by_reason: u64 = summary["dead_letters_by_reason"]
        .as_object()
        .expect("dead_letters_by_reason")
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_reason, dead, "{summary}");
}

fn uuid_text(kind: u32, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// A delta line: `extra` is appended inside the object (`,"patch":...`).
fn delta(id: u64, blob: u64, op: &str, version: u64, extra: &str) -> String {
    format!(
        r#"{{"id":"{}","blob_id":"{}","user_id":"{}","operation":"{op}","version":{version},"created_at":"2026-01-01T00:00:{:02}Z"{extra}}}"#,
        uuid_text(0xd, id),
        uuid_text(0xb, blob),
        uuid_text(0xa, 1),
        id % 60
    )
}

/// A log with every kind of conflict, gap and rejection over three blobs.
fn tricky_log() -> Vec<Vec<u8>> {
    [
        delta(1, 1, "create", 1, r#","patch":{"a":1}"#),
        delta(2, 1, "update", 3, r#","patch":{"c":3}"#),
        delta(3, 1, "update", 3, r#","patch":{"c":4}"#),
        delta(4, 2, "update", 2, r#","patch":{"x":1}"#),
        "not json".to_owned(),
        delta(
            5,
            1,
            "update",
            2,
            r#","patch":[{"op":"add","path":"/b","value":2}]"#,
        ),
        delta(6, 1, "delete", 4, ""),
        delta(7, 1, "update", 5, r#","patch":{"d":1}"#),
        delta(8, 1, "revert", 5, r#","patch":{"to_version":2}"#),
        delta(9, 3, "create", 2, ""),
        delta(
            10,
            3,
            "create",
            1,
            r#","metadata":{"content_type":"text/plain"}"#,
        ),
        delta(
            11,
            3,
            "transform",
            2,
            r#","provider_id":"p","patch":{"t":1}"#,
        ),
        delta(5, 3, "update", 3, r#","patch":{"dup":1}"#),
        delta(12, 3, "revert", 3, r#","patch":{"to_version":3}"#),
        delta(
            13,
            3,
            "update",
            3,
            r#","patch":[{"op":"remove","path":"/nope"}]"#,
        ),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

#[test]
fn help_succeeds() {
    let top = run_ok(&["--help"]);
    assert!(top.contains("replay") && top.contains("gen"), "{top}");
    let replay = run_ok(&["replay", "--help"]);
    for flag in ["--db", "--workers", "--batch-records", "--json"] {
        assert!(replay.contains(flag), "{flag} missing from: {replay}");
    }
    let generate = run_ok(&["gen", "--help"]);
    for flag in ["--blobs", "--deltas", "--seed", "--duplicate-rate"] {
        assert!(generate.contains(flag), "{flag} missing from: {generate}");
    }
}

#[test]
fn gen_then_replay_matches_the_model_and_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let db = dir.path().join("views.sqlite");
    run_ok(&[
        "gen",
        "--blobs",
        "20",
        "--deltas",
        "400",
        "--seed",
        "5",
        "--duplicate-rate",
        "0.1",
        "--malformed-rate",
        "0.1",
        "--shuffle-window",
        "8",
        "-o",
        p(&log),
    ]);
    let bytes = std::fs::read(&log).unwrap();
    let lines = split_lines(&bytes);
    assert!(lines.len() > 400, "{} lines", lines.len());

    // `gen` is deterministic, and stdout is the same log as -o.
    let stdout = studio()
        .args([
            "gen",
            "--blobs",
            "20",
            "--deltas",
            "400",
            "--seed",
            "5",
            "--duplicate-rate",
            "0.1",
            "--malformed-rate",
            "0.1",
            "--shuffle-window",
            "8",
        ])
        .output()
        .unwrap();
    assert!(stdout.status.success());
    assert_eq!(stdout.stdout, bytes, "gen to stdout differs from gen -o");

    let summary = replay_json(&log, &db, &["--batch-records", "37"]);
    let tables = read_tables(&db).unwrap();
    check_summary(&summary, &tables, lines.len());
    assert!(count(&summary, "duplicates") > 0, "{summary}");
    assert!(count(&summary, "dead_letters") > 0, "{summary}");
    assert_eq!(summary["workers"], 1);

    let expected = model::run(&lines);
    assert_eq!(tables, expected.tables);
    assert_eq!(count(&summary, "accepted"), expected.counts.accepted);
    assert_eq!(count(&summary, "duplicates"), expected.counts.duplicates);
    // The generator's deltas all apply: only malformed lines are dead letters.
    assert_eq!(tables.blobs.len(), 20);
    assert!(
        tables
            .dead_letters
            .iter()
            .all(|d| d.reason.starts_with("S1.1 malformed: ")),
        "{:?}",
        tables.dead_letters
    );
}

#[test]
fn text_summary_reports_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let db = dir.path().join("views.sqlite");
    std::fs::write(&log, join_lines(&tricky_log())).unwrap();
    let stdout = run_ok(&["replay", p(&log), "--db", p(&db)]);
    let expected = model::run(&tricky_log());
    let line_with = |label: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in: {stdout}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert_eq!(line_with("accepted"), expected.counts.accepted);
    assert_eq!(line_with("duplicates"), expected.counts.duplicates);
    assert_eq!(line_with("dead letters"), expected.counts.dead_letters);
    assert!(stdout.contains("S4.3 version conflict"), "{stdout}");
}

/// Malformed records of every kind: dead letters with their exact bytes, and the run
/// goes on to apply what follows them.
#[test]
fn malformed_lines_are_dead_letters_with_raw_bytes_kept() {
    let good = delta(1, 1, "create", 1, r#","patch":{"a":1}"#);
    let value: Value = serde_json::from_str(&good).unwrap();
    let without = |field: &str| {
        let mut v = value.clone();
        v.as_object_mut().unwrap().remove(field);
        v.to_string().into_bytes()
    };
    let with = |field: &str, json: &str| {
        let mut v = value.clone();
        v[field] = serde_json::from_str(json).unwrap();
        v.to_string().into_bytes()
    };
    // (bytes, what the reason must mention)
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "empty record"),
        (b"not json".to_vec(), "not a JSON object"),
        (good.as_bytes()[..good.len() / 2].to_vec(), "not valid JSON"),
        (b"{\"id\": \"\xff\xfe\"}".to_vec(), "not UTF-8"),
        (b"\xc3\x28 garbage".to_vec(), "not UTF-8"),
        (b"[1,2,3]".to_vec(), "not a JSON object"),
        (b"base64:SGVsbG8=".to_vec(), "not a JSON object"),
        (b"not json\r".to_vec(), "not a JSON object"),
        (format!("{good} trailing").into_bytes(), "not valid JSON"),
        (without("id"), "missing field \"id\""),
        (without("blob_id"), "missing field \"blob_id\""),
        (without("user_id"), "missing field \"user_id\""),
        (without("operation"), "missing field \"operation\""),
        (without("version"), "missing field \"version\""),
        (without("created_at"), "missing field \"created_at\""),
        (with("id", "42"), "field \"id\" must be a UUID string"),
        (
            with("blob_id", "\"b-1\""),
            "field \"blob_id\" is not a UUID",
        ),
        (with("user_id", "[]"), "field \"user_id\""),
        (
            with("version", "\"2\""),
            "field \"version\" must be an integer >= 1",
        ),
        (
            with("version", "0"),
            "field \"version\" must be an integer >= 1",
        ),
        (
            with("version", "1.5"),
            "field \"version\" must be an integer >= 1",
        ),
        (with("operation", "\"rename\""), "field \"operation\""),
        (with("operation", "7"), "field \"operation\""),
        (
            with("created_at", "\"yesterday\""),
            "field \"created_at\" is not an RFC 3339 time",
        ),
        (
            with("provider_id", "7"),
            "field \"provider_id\" must be a string",
        ),
        (with("child_ids", "{}"), "child_ids"),
        (with("parent_id", "\"nope\""), "parent_id"),
        (
            with("metadata", "[]"),
            "field \"metadata\" must be an object",
        ),
        (
            with("metadata", r#"{"patch_format":"diff"}"#),
            "metadata.patch_format",
        ),
        (with("operation", "\"transform\""), "provider_id"),
    ];
    let mut lines: Vec<Vec<u8>> = vec![good.clone().into_bytes()];
    for (bytes, _) in &bad {
        lines.push(bytes.clone());
    }
    // Still running after all that: this update applies.
    lines.push(delta(2, 1, "update", 2, r#","patch":{"b":2}"#).into_bytes());

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bad.jsonl");
    let db = dir.path().join("views.sqlite");
    std::fs::write(&log, join_lines(&lines)).unwrap();
    let summary = replay_json(&log, &db, &[]);
    let tables = read_tables(&db).unwrap();
    check_summary(&summary, &tables, lines.len());
    assert_eq!(count(&summary, "accepted"), 2, "{summary}");
    assert_eq!(count(&summary, "dead_letters"), bad.len() as u64);
    assert_eq!(
        summary["dead_letters_by_reason"]["S1.1 malformed"].as_u64(),
        Some(bad.len() as u64),
        "{summary}"
    );
    assert_eq!(tables.blobs.len(), 1);
    assert_eq!(tables.blobs[0].version, 2);
    assert_eq!(tables.blobs[0].doc, r#"{"a":1,"b":2}"#);

    assert_eq!(tables.dead_letters.len(), bad.len());
    for (letter, (bytes, what)) in tables.dead_letters.iter().zip(&bad) {
        assert!(
            letter.reason.starts_with("S1.1 malformed: ") && letter.reason.contains(what),
            "{:?}: expected a malformed reason mentioning {what:?}, got {:?}",
            text(bytes),
            letter.reason
        );
        assert_eq!(&raw_bytes(&letter.raw), bytes, "raw of {:?}", letter.reason);
        assert_eq!(letter.delta_id, None);
        assert_eq!(letter.blob_id, None);
        let utf8_plain = std::str::from_utf8(bytes).is_ok_and(|t| !t.starts_with("base64:"));
        assert_eq!(
            !letter.raw.starts_with("base64:"),
            utf8_plain,
            "{}",
            letter.raw
        );
    }
    // Non-UTF-8 bytes are stored as "base64:" and their standard base64.
    assert_eq!(tables.dead_letters[3].raw, "base64:eyJpZCI6ICL//iJ9");
    assert_eq!(tables.dead_letters[6].raw, "base64:YmFzZTY0OlNHVnNiRzg9");

    // And the model agrees on every table.
    assert_eq!(tables, model::run(&lines).tables);
}

#[test]
fn a_missing_log_file_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("views.sqlite");
    let missing = dir.path().join("no-such-log.jsonl");
    let out = run(&["replay", p(&missing), "--db", p(&db)]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(p(&missing)), "{stderr}");

    // Also when it is the second of two.
    let present = dir.path().join("present.jsonl");
    std::fs::write(&present, join_lines(&tricky_log())).unwrap();
    let out = run(&["replay", p(&present), p(&missing), "--db", p(&db)]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains(p(&missing)), "{out:?}");
}

#[test]
fn an_unwritable_db_path_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    std::fs::write(&log, join_lines(&tricky_log())).unwrap();
    let out = run(&["replay", p(&log), "--db", "/nonexistent-dir/x.sqlite"]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/nonexistent-dir/x.sqlite"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A directory is not a database file either.
    let out = run(&["replay", p(&log), "--db", p(dir.path())]);
    assert!(!out.status.success(), "{out:?}");
    assert!(!text(&out.stderr).contains("panicked"), "{out:?}");
}

#[test]
fn bad_flags_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    std::fs::write(&log, join_lines(&tricky_log())).unwrap();
    let db = dir.path().join("views.sqlite");
    for args in [
        vec!["--no-such-flag"],
        vec!["replay", p(&log), "--db", p(&db), "--bogus"],
        vec!["replay", p(&log)],        // --db is required
        vec!["replay", "--db", p(&db)], // a log is required
        vec!["replay", p(&log), "--db", p(&db), "-w", "two"],
        vec!["replay", p(&log), "--db", p(&db), "--batch-records", "-3"],
        vec!["gen", "--blobs", "many"],
        vec!["frobnicate"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "studio {args:?}: {out:?}");
        assert!(!text(&out.stderr).is_empty(), "studio {args:?}: no message");
    }
    assert!(!db.exists(), "a usage error must not touch the database");

    // Values clap accepts but the config refuses: a failure, with the setting named.
    let out = run(&["replay", p(&log), "--db", p(&db), "-w", "0"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("workers"), "{out:?}");
    let out = run(&["replay", p(&log), "--db", p(&db), "--batch-records", "0"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("batch_records"), "{out:?}");
}

/// An unknown `STUDIO_*` variable is someone else's: warned about, and the command runs
/// (with the known variables still applied). An unknown key in a config file is refused.
#[test]
fn unknown_studio_env_vars_warn_but_unknown_file_keys_fail() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    std::fs::write(&log, join_lines(&tricky_log())).unwrap();
    let db = dir.path().join("views.sqlite");
    let out = studio()
        .args(["replay", p(&log), "--db", p(&db), "--json"])
        .env("STUDIO_DIR", "/x")
        .env("STUDIO_REPLAY__BATCH_RECORDS", "0") // known: still applied, and refused
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("batch_records"), "{out:?}");

    let out = studio()
        .args(["replay", p(&log), "--db", p(&db), "--json"])
        .env("STUDIO_DIR", "/x")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(
        stderr.contains("STUDIO_DIR"),
        "names the variable: {stderr}"
    );
    assert!(
        stderr.contains("content.dir"),
        "the closest setting: {stderr}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(count(&summary, "records_read"), tricky_log().len() as u64);

    let config = dir.path().join("studio.toml");
    std::fs::write(&config, "dir = \"/x\"\n").unwrap();
    let out = run(&["replay", p(&log), "--db", p(&db), "--config", p(&config)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown field"), "{stderr}");
    assert!(stderr.contains("`dir`"), "names the key: {stderr}");
    assert!(stderr.contains("studio.toml"), "names the file: {stderr}");
    assert_eq!(
        stderr.matches("unknown field").count(),
        1,
        "said once: {stderr}"
    );
}

/// `-w 2` gives the same tables as `-w 1`, whatever the batch size.
#[test]
fn two_workers_give_the_same_tables_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("gen.jsonl");
    run_ok(&[
        "gen",
        "--blobs",
        "30",
        "--deltas",
        "1500",
        "--seed",
        "11",
        "--duplicate-rate",
        "0.05",
        "--malformed-rate",
        "0.05",
        "--shuffle-window",
        "5",
        "-o",
        p(&generated),
    ]);
    // Over one share chunk (1024 records), so that both workers read records, and the
    // tricky log at the end.
    let mut bytes = std::fs::read(&generated).unwrap();
    bytes.extend(join_lines(&tricky_log()));
    let log = dir.path().join("log.jsonl");
    std::fs::write(&log, &bytes).unwrap();
    let lines = split_lines(&bytes);
    assert!(lines.len() > 1100);
    let expected = model::run(&lines);

    for batch in ["100000", "64"] {
        let db1 = dir.path().join(format!("w1-{batch}.sqlite"));
        let db2 = dir.path().join(format!("w2-{batch}.sqlite"));
        let s1 = replay_json(&log, &db1, &["-w", "1", "--batch-records", batch]);
        let s2 = replay_json(&log, &db2, &["-w", "2", "--batch-records", batch]);
        assert_eq!(s1["workers"], 1);
        assert_eq!(s2["workers"], 2);
        let (t1, t2) = (read_tables(&db1).unwrap(), read_tables(&db2).unwrap());
        check_summary(&s1, &t1, lines.len());
        check_summary(&s2, &t2, lines.len());
        for key in ["records_read", "accepted", "duplicates", "dead_letters"] {
            assert_eq!(s1[key], s2[key], "{key}");
        }
        assert_eq!(s1["dead_letters_by_reason"], s2["dead_letters_by_reason"]);
        assert_eq!(t1, t2, "-w 1 and -w 2 differ (batch {batch})");
        assert_eq!(t1.unordered(), expected.tables.unordered());
    }
}

/// The views are replaced, not appended to: replaying again gives the same tables, and
/// replaying another log leaves only that log's views.
#[test]
fn replaying_into_the_same_db_replaces_the_views() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&a, join_lines(&tricky_log())).unwrap();
    run_ok(&[
        "gen",
        "--blobs",
        "5",
        "--deltas",
        "60",
        "--seed",
        "3",
        "-o",
        p(&b),
    ]);
    let db = dir.path().join("views.sqlite");

    replay_json(&a, &db, &[]);
    let first = read_tables(&db).unwrap();
    assert!(!first.blobs.is_empty() && !first.dead_letters.is_empty());
    replay_json(&a, &db, &[]);
    let second = read_tables(&db).unwrap();
    assert_eq!(first, second);

    replay_json(&b, &db, &[]);
    let other = read_tables(&db).unwrap();
    let fresh_db = dir.path().join("fresh.sqlite");
    replay_json(&b, &fresh_db, &[]);
    assert_eq!(other, read_tables(&fresh_db).unwrap());
    assert!(other.dead_letters.is_empty(), "{:?}", other.dead_letters);
}

/// The tricky log end to end: every table is the model's.
#[test]
fn tricky_log_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let log: PathBuf = dir.path().join("log.jsonl");
    let db = dir.path().join("views.sqlite");
    let lines = tricky_log();
    std::fs::write(&log, join_lines(&lines)).unwrap();
    let summary = replay_json(&log, &db, &[]);
    let tables = read_tables(&db).unwrap();
    check_summary(&summary, &tables, lines.len());
    let expected = model::run(&lines);
    assert_eq!(tables.unordered(), expected.tables.unordered());
    assert_eq!(count(&summary, "duplicates"), 1);
    let blob1 = &tables.blobs[0];
    assert_eq!(blob1.doc, r#"{"a":1,"b":2}"#);
    assert_eq!(blob1.version, 5);
    assert_eq!(blob1.deleted_at, None);
}

/// `studio query` answers the DAG questions (issue 4): descendants and ancestors with
/// distances, depth by user and by blob; the summary counts edges.
#[test]
fn query_answers_descendants_ancestors_and_depth() {
    let dir = tempfile::tempdir().unwrap();
    let (log, db) = (dir.path().join("dag.jsonl"), dir.path().join("dag.sqlite"));
    let b = |n: u64| uuid_text(0xb, n);
    // 1 -> 2 -> 3, a shortcut 1 -> 3, and 3 -> 1 (refused: it closes a cycle).
    let lines = [
        delta(1, 1, "create", 1, ""),
        delta(2, 2, "create", 1, &format!(r#","parent_id":"{}""#, b(1))),
        delta(3, 3, "create", 1, &format!(r#","parent_id":"{}""#, b(2))),
        delta(
            4,
            1,
            "update",
            2,
            &format!(r#","patch":{{"a":1}},"child_ids":["{}"]"#, b(3)),
        ),
        delta(
            5,
            3,
            "update",
            2,
            &format!(r#","patch":{{"b":1}},"child_ids":["{}"]"#, b(1)),
        ),
    ];
    std::fs::write(&log, lines.join("\n")).unwrap();
    let summary = replay_json(&log, &db, &[]);
    assert_eq!(count(&summary, "accepted"), 5);
    assert_eq!(count(&summary, "edges_accepted"), 3);
    assert_eq!(count(&summary, "edges_rejected"), 1);

    let json = |args: &[&str]| -> Value {
        let mut all = vec!["query", "--db", p(&db)];
        all.extend_from_slice(args);
        all.push("--json");
        serde_json::from_str(&run_ok(&all)).unwrap()
    };
    let descendants = json(&["descendants", &b(1).to_uppercase()]);
    let pairs: Vec<(String, i64)> = descendants
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["blob_id"].as_str().unwrap().to_owned(),
                r["distance"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        vec![(b(2), 1), (b(3), 1)],
        "the shortcut makes 3 one step from 1"
    );
    let ancestors = json(&["ancestors", &b(3)]);
    assert_eq!(ancestors.as_array().unwrap().len(), 2);
    let user = json(&["depth", "--user", &uuid_text(0xa, 1)]);
    assert_eq!(user[0]["max_depth"], 2, "1 -> 2 -> 3 is the longest path");
    let blob = json(&["depth", "--blob", &b(2)]);
    assert_eq!(blob[0]["depth"], 1);

    let out = run(&[
        "query",
        "--db",
        p(&db),
        "depth",
        "--user",
        &uuid_text(0xa, 9),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("owns no blob"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["query", "--db", p(&db), "descendants", "not-a-uuid"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a UUID"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn replay_with_providers_then_a_standalone_worker_on_the_requests() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = root.join("samples/providers.toml");
    let docs = root.join("samples/documents.jsonl");
    let db = dir.path().join("views.sqlite");
    let requests = dir.path().join("requests.jsonl");

    // Without --providers nothing is requested; --provider-log needs --providers.
    let summary = replay_json(&docs, &db, &[]);
    assert!(summary.get("providers").is_none());
    let out = run(&[
        "replay",
        p(&docs),
        "--db",
        p(&db),
        "--provider-log",
        p(&config),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(&["replay", p(&docs), "--db", p(&db), "--providers"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no provider is registered"),
        "{}",
        text(&out.stderr)
    );

    // The whole loop in one process.
    let stdout = run_ok(&[
        "--config",
        p(&config),
        "replay",
        p(&docs),
        "--db",
        p(&db),
        "--json",
        "--providers",
        "--requests-out",
        p(&requests),
    ]);
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    let providers = &summary["providers"];
    assert_eq!(providers["requests"], 7, "{providers}");
    assert_eq!(providers["completed"], 7);
    assert_eq!(providers["failed"], 0);
    assert_eq!(providers["cascade_depth"], 2);
    assert_eq!(
        count(&summary, "accepted")
            + count(&summary, "duplicates")
            + count(&summary, "dead_letters"),
        count(&summary, "records_read")
    );
    let lines = std::fs::read_to_string(&requests).unwrap();
    assert_eq!(lines.lines().count(), 7, "each request once");

    // A standalone worker answers the same requests from the file; its output deltas
    // appended to the log and replayed give what the in-process loop gave for them.
    let outputs = dir.path().join("outputs.jsonl");
    let results = dir.path().join("results.jsonl");
    let stdout = run_ok(&[
        "--config",
        p(&config),
        "worker",
        "--requests",
        p(&requests),
        "--out",
        p(&outputs),
        "--results",
        p(&results),
    ]);
    assert!(
        stdout.contains("7 requests read: 0 superseded, 7 completed, 0 failed"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&outputs).unwrap().lines().count(),
        7
    );
    let db2 = dir.path().join("views2.sqlite");
    let summary = replay_json(&docs, &db2, &[]);
    let both = run_ok(&["replay", p(&docs), p(&outputs), "--db", p(&db2), "--json"]);
    let replayed: Value = serde_json::from_str(&both).unwrap();
    assert_eq!(
        count(&summary, "accepted") + 7,
        count(&replayed, "accepted")
    );
    let a = read_tables(&db).unwrap();
    let b = read_tables(&db2).unwrap();
    assert_eq!(a.blobs.len(), b.blobs.len());
    let docs_of = |t: &Tables| {
        let mut d: Vec<(String, i64, String)> = t
            .blobs
            .iter()
            .map(|b| (b.blob_id.clone(), b.version, b.doc.clone()))
            .collect();
        d.sort();
        d
    };
    assert_eq!(
        docs_of(&a),
        docs_of(&b),
        "the same blobs, versions and documents"
    );
}
