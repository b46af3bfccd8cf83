//! External providers through the built binary: `studio replay --providers` runs the
//! sample provider (samples/providers/word_count.py) as a sandboxed process and its
//! output lands in the views, while providers that loop forever, allocate without
//! bound or print 100 MB fail with their reason and one that looks for credentials
//! finds none; `studio worker` runs the same provider on a request file; a config
//! whose `api_key_env` is off the allow-list is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use studio_tests::views::text_rows;

fn studio() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_studio"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STUDIO_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The interpreter itself (`python3` may be a wrapper script adding its own variables).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is installed");
    text(&out.stdout).trim().to_owned()
}

/// A `[[providers]]` table of a provider running `script` with `args`.
fn provider_table(id: &str, script: &Path, args: &[&str], extra: &str) -> String {
    let mut command = vec![python(), script.display().to_string()];
    command.extend(args.iter().map(|a| a.to_string()));
    format!(
        "[[providers]]\nid = \"{id}\"\nversion = \"1\"\nblob_types = [\"text/*\"]\nmax_attempts = 1\ncommand = {}\n{extra}\n",
        json!(command)
    )
}

fn misbehaving(mode: &str, extra: &str) -> String {
    let script = root().join("connectors/providers/tests/providers/misbehaving.py");
    provider_table(mode, &script, &[mode], extra)
}

fn word_count(extra: &str) -> String {
    let script = root().join("samples/providers/word_count.py");
    provider_table("word-count", &script, &[], extra)
}

/// A log of two text blobs.
fn write_log(dir: &Path) -> PathBuf {
    let log = dir.join("log.jsonl");
    let lines: Vec<String> = [(1, "three short words"), (2, "a b c d e")]
        .iter()
        .map(|(n, content)| {
            json!({
                "id": format!("00000000-0000-4000-8000-00000000000{n}"),
                "blob_id": format!("00000000-0000-4000-8000-0000000000b{n}"),
                "user_id": "00000000-0000-4000-8000-0000000000aa",
                "operation": "create", "version": 1,
                "created_at": "2026-11-01T10:00:00Z",
                "patch": {"content": content},
                "metadata": {"content_type": "text/plain"},
            })
            .to_string()
        })
        .collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    log
}

fn doc_of(db: &Path, blob: u32) -> Value {
    let rows = text_rows(
        db,
        &format!(
            "SELECT doc FROM blobs WHERE blob_id = '00000000-0000-4000-8000-0000000000b{blob}'"
        ),
    );
    serde_json::from_str(rows[0][0].as_deref().unwrap()).unwrap()
}

/// (status, error) of each processing of `provider`.
fn processing(db: &Path, provider: &str) -> Vec<(String, String)> {
    text_rows(
        db,
        &format!(
            "SELECT status, COALESCE(error, '') FROM processing WHERE provider_id = '{provider}' ORDER BY blob_id"
        ),
    )
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect()
}

#[test]
fn replay_runs_external_providers_and_stops_the_misbehaving_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = write_log(dir.path());
    let db = dir.path().join("views.sqlite");
    let config = dir.path().join("studio.toml");
    let tables = [
        word_count(""),
        misbehaving("forever", "timeout_ms = 1500"),
        misbehaving("allocate", "[providers.sandbox]\naddress_space_mib = 200"),
        misbehaving("spew", ""),
        misbehaving(
            "environment",
            "[providers.sandbox]\nenv_allow = [\"PATH\", \"MY_PROVIDER_SETTING\"]",
        ),
    ];
    std::fs::write(&config, tables.concat()).unwrap();

    let out = studio()
        .env("AWS_SECRET_ACCESS_KEY", "do-not-leak")
        .env("STUDIO_API__JWT_SECRET", "do-not-leak-either")
        .env("MY_PROVIDER_SETTING", "visible")
        .args(["--config", config.to_str().unwrap(), "replay"])
        .arg(&log)
        .args(["--db", db.to_str().unwrap(), "--providers", "--json"])
        .output()
        .unwrap();
    let summary: Value = serde_json::from_str(&succeeded(out, "studio replay")).unwrap();
    let providers = &summary["providers"];
    assert_eq!(
        providers["providers_built_in"], 5,
        "all five run here: {providers}"
    );
    assert_eq!(providers["failed"], 6, "{providers}");

    // The sample provider's output landed as a delta of each blob.
    assert_eq!(doc_of(&db, 1)["word_count"], 3);
    assert_eq!(doc_of(&db, 2)["word_count"], 5);
    assert!(
        processing(&db, "word-count")
            .iter()
            .all(|(status, _)| status == "completed")
    );

    // The misbehaving ones failed with their reason.
    for (provider, reason) in [
        ("forever", "timed out after 1500 ms"),
        ("allocate", "MemoryError"),
        ("spew", "more than 16777216 bytes to standard output"),
    ] {
        let rows = processing(&db, provider);
        assert_eq!(rows.len(), 2, "{provider}: {rows:?}");
        for (status, error) in rows {
            assert_eq!(status, "failed", "{provider}");
            assert!(error.contains(reason), "{provider}: {error}");
        }
    }
    let events = text_rows(
        &db,
        "SELECT CAST(COUNT(*) AS TEXT) FROM events WHERE type = 'processing.failed'",
    );
    assert_eq!(events[0][0].as_deref(), Some("6"));

    // The environment provider saw its allowed variable and no credential.
    let env = doc_of(&db, 1)["sandbox"]["env"].clone();
    assert_eq!(env["MY_PROVIDER_SETTING"], "visible", "{env}");
    let names: Vec<&String> = env.as_object().unwrap().keys().collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("AWS_") && !n.starts_with("STUDIO_")),
        "{names:?}"
    );
}

#[test]
fn a_standalone_worker_runs_an_external_provider_on_a_request_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = write_log(dir.path());
    let db = dir.path().join("views.sqlite");
    let requests = dir.path().join("requests.jsonl");
    // The replay only emits the requests: word-count has no implementation here.
    let waiting = dir.path().join("waiting.toml");
    std::fs::write(
        &waiting,
        "[[providers]]\nid = \"word-count\"\nversion = \"1\"\nblob_types = [\"text/*\"]\n",
    )
    .unwrap();
    succeeded(
        studio()
            .args(["--config", waiting.to_str().unwrap(), "replay"])
            .arg(&log)
            .args([
                "--db",
                db.to_str().unwrap(),
                "--providers",
                "--requests-out",
            ])
            .arg(&requests)
            .output()
            .unwrap(),
        "studio replay",
    );

    let config = dir.path().join("studio.toml");
    std::fs::write(&config, word_count("")).unwrap();
    let outputs = dir.path().join("outputs.jsonl");
    let stdout = succeeded(
        studio()
            .args(["--config", config.to_str().unwrap(), "worker", "--requests"])
            .arg(&requests)
            .arg("--out")
            .arg(&outputs)
            .output()
            .unwrap(),
        "studio worker",
    );
    assert!(
        stdout.contains("2 requests read: 0 superseded, 2 completed, 0 failed"),
        "{stdout}"
    );
    let db2 = dir.path().join("views2.sqlite");
    succeeded(
        studio()
            .arg("replay")
            .args([&log, &outputs])
            .args(["--db", db2.to_str().unwrap()])
            .output()
            .unwrap(),
        "studio replay of the log and the outputs",
    );
    assert_eq!(doc_of(&db2, 1)["word_count"], 3);
    assert_eq!(doc_of(&db2, 2)["word_count"], 5);
}

#[test]
fn an_api_key_env_off_the_allow_list_is_refused_when_the_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let log = write_log(dir.path());
    let db = dir.path().join("views.sqlite");
    let config = dir.path().join("studio.toml");
    for (variable, expected) in [
        ("AWS_SECRET_ACCESS_KEY", "is never given to a provider"),
        ("MY_API_KEY", "is not on provider_runtime.api_key_env_allow"),
    ] {
        std::fs::write(
            &config,
            format!(
                "[[providers]]\nid = \"content-expander\"\n\
                 config = {{ base_url = \"http://127.0.0.1:9\", api_key_env = \"{variable}\" }}\n"
            ),
        )
        .unwrap();
        let out = studio()
            .args(["--config", config.to_str().unwrap(), "replay"])
            .arg(&log)
            .args(["--db", db.to_str().unwrap(), "--providers"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{variable}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{variable}: {stderr}");
    }
    // Allowed in the config, the same variable passes.
    std::fs::write(
        &config,
        "[provider_runtime]\napi_key_env_allow = [\"MY_API_KEY\"]\n\
         [[providers]]\nid = \"content-expander\"\nmax_attempts = 1\n\
         config = { base_url = \"http://127.0.0.1:9\", api_key_env = \"MY_API_KEY\" }\n",
    )
    .unwrap();
    succeeded(
        studio()
            .args(["--config", config.to_str().unwrap(), "replay"])
            .arg(&log)
            .args(["--db", db.to_str().unwrap(), "--providers"])
            .output()
            .unwrap(),
        "studio replay with an allowed api_key_env",
    );
}
