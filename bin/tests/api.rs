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

/// One JSON line of the log, numbered `n` (its id and `created_at` follow from `n`).
fn record(n: u32, mut fields: Value) -> String {
    fields["id"] = json!(format!("0000000d-0000-4000-8000-{n:012x}"));
    fields["created_at"] = json!(format!("2026-01-01T00:00:{:02}Z", n % 60));
    fields.to_string()
}

fn log_records() -> Vec<String> {
    let mut fields = Vec::new();
    for b in 1..=5 {
        fields.push(
            json!({"blob_id": blob(b), "user_id": user(A), "operation": "create", "version": 1,
            "patch": {"content": format!("blob {b}")}}),
        );
    }
    fields.push(
        json!({"blob_id": blob(1), "user_id": user(A), "operation": "update", "version": 2,
        "patch": {"content": "second"}}),
    );
    fields.push(
        json!({"blob_id": blob(1), "user_id": user(A), "operation": "update", "version": 3,
        "patch": {"content": "third"}}),
    );
    fields.push(
        json!({"blob_id": blob(6), "user_id": user(A), "operation": "create", "version": 1,
        "parent_id": blob(1), "patch": {"content": "derived"}}),
    );
    fields.push(
        json!({"kind": "grant", "blob_id": blob(1), "user_id": user(B), "permission": "read",
        "granted_by": user(A)}),
    );
    (1..).zip(fields).map(|(n, f)| record(n, f)).collect()
}

fn log() -> String {
    log_records().join("\n") + "\n"
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

/// A `studio serve` (or `studio run`) process; killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(db: &str) -> Server {
        Server::start_with(db, &[])
    }

    /// `studio serve` on a free port, with more `STUDIO_*` variables.
    fn start_with(db: &str, env: &[(&str, String)]) -> Server {
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
            .envs(env.iter().map(|(k, v)| (k, v)))
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

    /// The value of a counter on `/metrics` (0 when not yet counted).
    fn counter(&self, name: &str) -> u64 {
        let text = Client::new()
            .get(format!("{}/metrics", self.base))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
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

// ---------------------------------------------------------------------------------
// The Redis cache of GET /v1/blobs/{id} (issue 17, docs/access.md "The Redis cache"),
// against a real redis-server (`REDIS_URL`, or one started for the run; a test that
// stops Redis starts one of its own). Each test has a key prefix of its own.

/// `[redis]` for a server process: the URL and a prefix of this test's own.
fn cache_env(url: &str, prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STUDIO_REDIS__URL", url.to_owned()),
        ("STUDIO_REDIS__KEY_PREFIX", prefix.to_owned()),
    ]
}

/// A connection to look into Redis.
fn redis_connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection()
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {url}: {e}"))
}

/// The cache's keys under `prefix` matching `pattern`, with their values.
fn cached(url: &str, prefix: &str, pattern: &str) -> Vec<(String, String)> {
    let mut c = redis_connection(url);
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:{pattern}"))
        .query(&mut c)
        .unwrap();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v: String = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
            (k, v)
        })
        .collect()
}

/// Waits (up to a minute) until `done` holds; panics saying `what` otherwise.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "after a minute: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Cached answers equal uncached ones, per user: an owner's, a reader's, a stranger's
/// 404 and a missing blob's 404 are each cached under the asking user's own key, and
/// none is served to another user. Then Redis stops: the API answers the same from the
/// view store, and a replay (a view writer) still completes; Redis back, caching
/// resumes.
#[test]
fn the_cache_answers_as_the_store_per_user_and_redis_down_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = replay(dir.path());
    let mut redis = studio_tests::services::OwnServices::start(&["redis"]);
    let url = redis.var("REDIS_URL");
    let prefix = studio_tests::services::unique_name("api");
    let cachedserver = Server::start_with(&db, &cache_env(&url, &prefix));
    let plain = Server::start(&db);
    let questions = [
        (A, blob(1)),
        (C, blob(1)), // after A's answer is cached: C must still get 404
        (B, blob(1)),
        (B, blob(6)),
        (A, blob(6)),
        (C, blob(99)),
    ];
    let ask_all = |s: &Server| -> Vec<(StatusCode, Value)> {
        questions
            .iter()
            .map(|(u, b)| as_user(s, *u, &format!("/v1/blobs/{b}")))
            .collect()
    };
    let uncached = ask_all(&plain);
    assert_eq!(uncached[0].0, StatusCode::OK);
    assert_eq!(uncached[1].0, StatusCode::NOT_FOUND);
    assert_eq!(
        ask_all(&cachedserver),
        uncached,
        "the first answers (misses)"
    );
    // The entries are stored after the answers (in the background): wait for all six.
    wait_for("six cached answers", || {
        cached(&url, &prefix, "blob:*").len() == questions.len()
    });
    let hits = cachedserver.counter("studio_api_cache_hits_total");
    assert_eq!(ask_all(&cachedserver), uncached, "the cached answers");
    assert_eq!(
        cachedserver.counter("studio_api_cache_hits_total") - hits,
        questions.len() as u64,
        "every second answer came from Redis"
    );
    // One key per user and blob: A's answer is under A's key, C's under C's ("": 404).
    let entries = cached(&url, &prefix, "blob:*");
    let entry = |u: u32, b: u32| -> String {
        let head = format!("{prefix}:blob:{}:{}:g", user(u), blob(b));
        let found: Vec<&String> = entries
            .iter()
            .filter(|(k, _)| k.starts_with(&head))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one entry for user {u}, blob {b}: {entries:?}"
        );
        found[0].clone()
    };
    let a1: Value = serde_json::from_str(&entry(A, 1)).unwrap();
    assert_eq!(a1, uncached[0].1);
    assert_eq!(
        entry(C, 1),
        "",
        "the stranger's entry is a 404, not A's blob"
    );
    assert_eq!(entry(B, 6), "", "B may read 1, not 6");

    // Redis stops: the same answers, from the view store; the failures are counted.
    redis.stop(&["redis"]);
    assert_eq!(ask_all(&cachedserver), uncached, "Redis down");
    assert!(cachedserver.counter("studio_api_cache_errors_total") >= 1);
    // A view writer does not stop either: a replay invalidating into a dead Redis.
    let out = studio()
        .args(["replay", dir.path().join("log.jsonl").to_str().unwrap()])
        .args(["--db", dir.path().join("again.sqlite").to_str().unwrap()])
        .args(["--no-progress", "--redis", &url])
        .env("STUDIO_REDIS__KEY_PREFIX", &prefix)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot invalidate the Redis cache"),
        "{stderr}"
    );

    // Redis back (empty: it keeps nothing): answers are cached again.
    redis.restart(&["redis"]);
    assert_eq!(cached(&url, &prefix, "blob:*"), vec![]);
    wait_for("answers cached again once Redis is back", || {
        assert_eq!(ask_all(&cachedserver), uncached, "Redis back");
        cached(&url, &prefix, "blob:*").len() == questions.len()
    });
}

/// `studio run` over NATS, on a stream of its own holding this file's log, with the
/// cache at `redis_url` (key prefix `prefix`), and its API on a free port.
struct CachedService {
    server: Server,
    nats: studio_config::NatsConfig,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl CachedService {
    fn start(redis_url: &str) -> CachedService {
        let prefix = studio_tests::services::unique_name("cache").replace(['-', '.'], "_");
        let mut nats = studio_config::Config::default().nats;
        nats.url = studio_tests::services::service_env("NATS_URL");
        nats.stream = format!("IN_{prefix}");
        nats.output_stream = format!("OUT_{prefix}");
        nats.durable = format!("d_{prefix}");
        nats.subjects.deltas = format!("{prefix}.deltas");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = studio()
            .args([
                "run",
                "--db",
                dir.path().join("run.sqlite").to_str().unwrap(),
            ])
            .args(["--source", "nats", "--url", &nats.url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("STUDIO_API__JWT_SECRET", SECRET)
            .env("STUDIO_RUN__PUBLISH", "[]")
            .env("STUDIO_NATS__STREAM", &nats.stream)
            .env("STUDIO_NATS__OUTPUT_STREAM", &nats.output_stream)
            .env("STUDIO_NATS__DURABLE", &nats.durable)
            .env("STUDIO_NATS__SUBJECTS__DELTAS", &nats.subjects.deltas)
            .envs(cache_env(redis_url, &prefix))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let service = CachedService {
            server: Server {
                child,
                base: format!("http://127.0.0.1:{port}"),
            },
            nats,
            prefix,
            _dir: dir,
        };
        service.publish(&log_records());
        wait_for("the log applied", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && service.version(B, 1) == Some(3)
        });
        service
    }

    /// Publishes `lines` to the service's input.
    fn publish(&self, lines: &[String]) {
        use studio_connectors::nats::NatsPublisher;
        use studio_connectors::{OutputStream, RecordPublisher};
        let mut publisher = NatsPublisher::open(&self.nats, &[OutputStream::Deltas]).unwrap();
        for line in lines {
            publisher
                .publish(OutputStream::Deltas, b"", line.as_bytes())
                .unwrap();
        }
        publisher.flush(std::time::Duration::from_secs(30)).unwrap();
    }

    /// The version of blob `b` that user `u` is answered; `None`: 404.
    fn version(&self, u: u32, b: u32) -> Option<u64> {
        let (status, body) = as_user(&self.server, u, &format!("/v1/blobs/{}", blob(b)));
        (status == StatusCode::OK).then(|| body["version"].as_u64().unwrap())
    }

    /// A counter of the cache in Redis at `redis_url` (`epoch`, `gen:BLOB_ID`).
    fn redis_counter(&self, redis_url: &str, key: &str) -> Option<u64> {
        redis::cmd("GET")
            .arg(format!("{}:{key}", self.prefix))
            .query(&mut redis_connection(redis_url))
            .unwrap()
    }

    /// Waits until asking `u` for blob `b` again is a cache hit.
    fn wait_until_cached(&self, u: u32, b: u32) {
        wait_for("an answer cached", || {
            let hits = self.server.counter("studio_api_cache_hits_total");
            self.version(u, b);
            self.server.counter("studio_api_cache_hits_total") - hits == 1
        });
    }
}

/// `studio run` over NATS with the cache: a cached answer is replaced after the commit
/// of an update, of a revoke (the reader gets 404) and of a grant (a cached 404
/// becomes the blob). The test waits until the writer has bumped the blob's
/// generation, which it does only after its commit; from then on the API must answer
/// the new state, at once, with no retry.
#[test]
fn the_service_invalidates_cached_answers_after_its_commits() {
    let redis_url = studio_tests::services::service_env("REDIS_URL");
    let svc = CachedService::start(&redis_url);
    let s = &svc.server;
    let publish = |lines: &[String]| svc.publish(lines);
    let one = format!("/v1/blobs/{}", blob(1));
    let version = |u: u32| svc.version(u, 1);
    let generation = || svc.redis_counter(&redis_url, &format!("gen:{}", blob(1)));
    // Cached: asked again, both answers are hits.
    svc.wait_until_cached(A, 1);
    svc.wait_until_cached(B, 1);
    assert_eq!((version(A), version(B)), (Some(3), Some(3)));

    // Publishes `fields` and waits until the writer has invalidated blob `b`, reading
    // as `u` meanwhile: answers may be old until then, never after.
    let mut n = 100;
    let mut change = |fields: Value, b: u32, u: u32| {
        let bump_key = format!("gen:{}", blob(b));
        let before = svc.redis_counter(&redis_url, &bump_key);
        n += 1;
        publish(&[record(n, fields)]);
        wait_for("the writer's invalidation", || {
            svc.version(u, b); // keeps the old answer cached until the bump
            svc.redis_counter(&redis_url, &bump_key) != before
        });
    };

    // An update: the new version for both, at once.
    change(
        json!({"blob_id": blob(1), "user_id": user(A), "operation": "update", "version": 4,
        "patch": {"content": "fourth"}}),
        1,
        B,
    );
    assert_eq!(version(B), Some(4), "B's cached version 3 was dropped");
    assert_eq!(version(A), Some(4), "A's cached version 3 was dropped");
    assert_eq!(as_user(s, A, &one).1["doc"], json!({"content": "fourth"}));

    // A revoke: B's cached blob becomes a 404, A keeps reading it.
    assert!(generation().is_some());
    change(
        json!({"kind": "revoke", "blob_id": blob(1), "user_id": user(B), "permission": "read",
        "granted_by": user(A)}),
        1,
        B,
    );
    assert_eq!(version(B), None, "B lost read: 404 after the commit");
    assert_eq!(version(A), Some(4));

    // A grant: C's cached 404 on blob 2 becomes the blob.
    let two = format!("/v1/blobs/{}", blob(2));
    assert_eq!(svc.version(C, 2), None);
    svc.wait_until_cached(C, 2);
    change(
        json!({"kind": "grant", "blob_id": blob(2), "user_id": user(C), "permission": "read",
        "granted_by": user(A)}),
        2,
        C,
    );
    let (status, body) = as_user(s, C, &two);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["doc"], json!({"content": "blob 2"}));
    assert!(s.counter("studio_cache_invalidations_total") >= 3);
}

/// The writer cannot reach Redis (a network cut, Redis itself keeps its entries):
/// the API answers from the view store meanwhile, the writer's commit stands and its
/// failed invalidation is counted; once Redis is reachable again the writer drops
/// every cached answer (bumps the epoch), after which no stale answer is served.
#[test]
fn a_writer_cut_off_from_redis_drops_every_cached_answer_once_back() {
    let redis_url = studio_tests::services::service_env("REDIS_URL");
    let proxy =
        studio_tests::services::FlakyProxy::start(studio_tests::services::host_port(&redis_url));
    let svc = CachedService::start(&format!("redis://{}", proxy.addr()));
    svc.wait_until_cached(B, 1);
    let epoch = svc.redis_counter(&redis_url, "epoch");
    assert!(epoch.is_some());
    let generation_key = format!("gen:{}", blob(1));
    let generation = svc.redis_counter(&redis_url, &generation_key);

    proxy.cut();
    svc.publish(&[record(
        100,
        json!({"blob_id": blob(1), "user_id": user(A), "operation": "update", "version": 4,
        "patch": {"content": "fourth"}}),
    )]);
    // Redis out of reach: answered from the store, so the commit shows at once.
    wait_for("the update committed, answered from the store", || {
        svc.version(B, 1) == Some(4)
    });
    wait_for("the failed invalidation counted", || {
        svc.server.counter("studio_cache_invalidation_errors_total") >= 1
    });
    assert_eq!(
        svc.redis_counter(&redis_url, &generation_key),
        generation,
        "the invalidation did not reach Redis: B's version 3 is still under its stamp"
    );

    proxy.restore();
    wait_for("the writer's epoch bump once Redis is back", || {
        svc.redis_counter(&redis_url, "epoch") != epoch
    });
    assert_eq!(svc.version(B, 1), Some(4), "B's cached version 3 is gone");
    assert_eq!(svc.version(A, 1), Some(4));
}
