//! The query API (S6.3) over HTTP: a real `studio serve` process on a replayed
//! database, asked with a real client (reqwest). Authentication (401), blobs the
//! caller may not read answering like missing ones (404), pagination cursors, past
//! versions, relatives filtered by access.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const SECRET: &str = "test-secret";
const A: u32 = 1; // owns blobs 1..=6
const B: u32 = 2; // holds read on blob 1
const C: u32 = 3; // a stranger

fn user(n: u32) -> String {
    format!("00000005-0000-4000-8000-{n:012x}")
}

fn blob(n: u32) -> String {
    format!("0000000b-0000-4000-8000-{n:012x}")
}

fn log() -> String {
    let mut lines = Vec::new();
    let mut id = 0;
    let mut push = |fields: Value| {
        id += 1;
        let mut f = fields;
        f["id"] = json!(format!("0000000d-0000-4000-8000-{id:012x}"));
        f["created_at"] = json!(format!("2026-01-01T00:00:{:02}Z", id % 60));
        lines.push(f.to_string());
    };
    for b in 1..=5 {
        push(
            json!({"blob_id": blob(b), "user_id": user(A), "operation": "create", "version": 1,
            "patch": {"content": format!("blob {b}")}}),
        );
    }
    push(
        json!({"blob_id": blob(1), "user_id": user(A), "operation": "update", "version": 2,
        "patch": {"content": "second"}}),
    );
    push(
        json!({"blob_id": blob(1), "user_id": user(A), "operation": "update", "version": 3,
        "patch": {"content": "third"}}),
    );
    push(
        json!({"blob_id": blob(6), "user_id": user(A), "operation": "create", "version": 1,
        "parent_id": blob(1), "patch": {"content": "derived"}}),
    );
    push(
        json!({"kind": "grant", "blob_id": blob(1), "user_id": user(B), "permission": "read",
        "granted_by": user(A)}),
    );
    lines.join("\n") + "\n"
}

fn studio() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_studio"));
    c.env_clear();
    c
}

fn replay(dir: &Path) -> String {
    let log_path = dir.join("log.jsonl");
    std::fs::write(&log_path, log()).unwrap();
    let db = dir.join("views.sqlite").display().to_string();
    let out = studio()
        .args(["replay", log_path.to_str().unwrap(), "--db", &db])
        .args(["--store-records", "--no-progress"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db
}

/// A `studio serve` process on a free port; killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(db: &str) -> Server {
        let mut child = studio()
            .args([
                "serve",
                "--db",
                db,
                "--listen",
                "127.0.0.1:0",
                "--readers",
                "2",
            ])
            .env("STUDIO_API__JWT_SECRET", SECRET)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines.next().expect("serve printed its address").unwrap();
            if let Some(url) = line.strip_prefix("serving the query API on ") {
                break url.trim().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token_with(sub: &str, exp: u64, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token(u: u32) -> String {
    token_with(&user(u), now() + 600, SECRET)
}

fn get(s: &Server, path: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let mut req = Client::new().get(format!("{}{path}", s.base));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().unwrap();
    let status = resp.status();
    (status, resp.json().unwrap_or(Value::Null))
}

fn as_user(s: &Server, u: u32, path: &str) -> (StatusCode, Value) {
    get(s, path, Some(&token(u)))
}

#[test]
fn the_api_answers_only_what_the_caller_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = replay(dir.path());
    let s = Server::start(&db);
    let one = format!("/v1/blobs/{}", blob(1));

    // S6.3 authentication: no token, a bad one, another secret's, an expired one.
    assert_eq!(get(&s, &one, None).0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&s, &one, Some("not-a-jwt")).0, StatusCode::UNAUTHORIZED);
    let forged = token_with(&user(A), now() + 600, "another-secret");
    assert_eq!(get(&s, &one, Some(&forged)).0, StatusCode::UNAUTHORIZED);
    let expired = token_with(&user(A), now() - 10, SECRET);
    assert_eq!(get(&s, &one, Some(&expired)).0, StatusCode::UNAUTHORIZED);
    let not_a_user = token_with("alice", now() + 600, SECRET);
    assert_eq!(get(&s, &one, Some(&not_a_user)).0, StatusCode::UNAUTHORIZED);

    // The owner and the reader see it; the stranger gets what a missing blob gets.
    let (status, body) = as_user(&s, A, &one);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 3);
    assert_eq!(body["doc"], json!({"content": "third"}));
    assert_eq!(body["user_id"], user(A));
    assert_eq!(as_user(&s, B, &one).1, body);
    let (status, hidden) = as_user(&s, C, &one);
    let (missing_status, missing) = as_user(&s, C, &format!("/v1/blobs/{}", blob(99)));
    assert_eq!(
        (status, missing_status),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
    );
    assert_eq!(
        hidden["error"].as_str().unwrap().replace(&blob(1), "ID"),
        missing["error"].as_str().unwrap().replace(&blob(99), "ID"),
        "an unreadable blob answers like a missing one"
    );
    // B may read blob 1 only.
    assert_eq!(
        as_user(&s, B, &format!("/v1/blobs/{}", blob(2))).0,
        StatusCode::NOT_FOUND
    );

    // Versions, from the delta store.
    let (status, v1) = as_user(&s, B, &format!("{one}/versions/1"));
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(v1["doc"], json!({"content": "blob 1"}));
    assert_eq!(
        as_user(&s, A, &format!("{one}/versions/2")).1["doc"],
        json!({"content": "second"})
    );
    assert_eq!(
        as_user(&s, A, &format!("{one}/versions/4")).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        as_user(&s, C, &format!("{one}/versions/1")).0,
        StatusCode::NOT_FOUND
    );

    // Deltas and relatives: blob 6 derives from 1; B may not read 6.
    let (status, d) = as_user(&s, B, &format!("{one}/deltas"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(d["deltas"].as_array().unwrap().len(), 3);
    assert_eq!(
        as_user(&s, C, &format!("{one}/deltas")).0,
        StatusCode::NOT_FOUND
    );
    let ids = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["blob_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&as_user(&s, A, &format!("{one}/descendants")).1, "blobs"),
        vec![blob(6)]
    );
    assert!(ids(&as_user(&s, B, &format!("{one}/descendants")).1, "blobs").is_empty());
    let six = format!("/v1/blobs/{}/ancestors", blob(6));
    assert_eq!(ids(&as_user(&s, A, &six).1, "blobs"), vec![blob(1)]);
    assert_eq!(as_user(&s, B, &six).0, StatusCode::NOT_FOUND);

    // The description needs no token.
    let (status, api) = get(&s, "/v1/openapi.json", None);
    assert_eq!(status, StatusCode::OK);
    assert!(api["paths"]["/v1/blobs/{blob_id}"].is_object());
}

#[test]
fn pagination_walks_every_readable_blob_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = replay(dir.path());
    let s = Server::start(&db);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(cursor) => format!("/v1/blobs?limit=4&after={cursor}"),
            None => "/v1/blobs?limit=4".to_owned(),
        };
        let (status, page) = as_user(&s, A, &path);
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let blobs = page["blobs"].as_array().unwrap();
        assert!(blobs.len() <= 4);
        seen.extend(
            blobs
                .iter()
                .map(|b| b["blob_id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(
        seen,
        (1..=6).map(blob).collect::<Vec<_>>(),
        "each once, by id"
    );
    // B sees one blob, C none.
    let b = as_user(&s, B, "/v1/blobs").1;
    assert_eq!(b["blobs"].as_array().unwrap().len(), 1);
    assert_eq!(b["next"], Value::Null);
    assert!(
        as_user(&s, C, "/v1/blobs").1["blobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        as_user(&s, A, "/v1/blobs?after=nope").0,
        StatusCode::BAD_REQUEST
    );
}

/// `studio query --as` filters the CLI the same way.
#[test]
fn query_as_a_user_sees_only_readable_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let db = replay(dir.path());
    let ask = |u: u32, args: &[&str]| {
        studio()
            .args(["query", "--db", &db, "--as", &user(u), "--json"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ask(B, &["blob", &blob(1)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ask(C, &["blob", &blob(1)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no blob"));
    let out = ask(B, &["blobs"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
}
