//! End-to-end tests of `studio run` against the real brokers (`KAFKA_BROKERS`,
//! `NATS_URL`; without them the tests start their own for the run, see
//! `studio_test_env`, and fail, saying why, if they cannot).
//!
//! Each test publishes a generated log with faults (duplicates, malformed records,
//! out-of-order arrival, poison bytes) to its own topic or stream, runs the service
//! (killing it with SIGKILL at random points, or stopping it with SIGTERM), and holds
//! the final views to a `studio replay` of the same log: identical tables, so no delta
//! was applied twice and none was lost. Topics have one partition so that the log
//! order the replay sees is the order the service reads (S4.3 orders per partition).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;
use studio_config::Config;
use studio_connectors::kafka::{KafkaPublisher, KafkaSource};
use studio_connectors::nats::{NatsPublisher, NatsSource};
use studio_connectors::{OutputStream, RecordPublisher, Source};
use studio_tests::services::{OwnServices, fresh_database, program, service_env, unique_name};
use studio_tests::views::{assert_same_tables, dump, read_tables, text_rows};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bus {
    Kafka,
    Nats,
}

/// One test's bus: its own topics (or streams and subjects), as a config for this
/// process and as `STUDIO_*` variables for the service.
struct Setup {
    bus: Bus,
    config: Config,
    vars: Vec<(String, String)>,
}

impl Setup {
    /// A setup on the test run's broker (given or started).
    fn new(bus: Bus, test: &str) -> Setup {
        let address = match bus {
            Bus::Kafka => service_env("KAFKA_BROKERS"),
            Bus::Nats => service_env("NATS_URL"),
        };
        Setup::at(bus, test, address)
    }

    /// A setup on the broker at `address` (brokers for Kafka, a URL for NATS).
    fn at(bus: Bus, test: &str, address: String) -> Setup {
        let name = unique_name(test);
        let mut config = Config::default();
        let mut vars = vec![
            ("STUDIO_RUN__LISTEN".to_owned(), String::new()),
            ("STUDIO_RUN__MAX_BATCH_RECORDS".into(), "400".into()),
            // No gap in these logs stays open; a restart must not expire any.
            ("STUDIO_RUN__GAP_TIMEOUT_MS".into(), "600000".into()),
        ];
        let mut set = |key: &str, value: String| vars.push((key.to_owned(), value));
        match bus {
            Bus::Kafka => {
                let k = &mut config.kafka;
                k.brokers = address;
                k.partitions = 1;
                k.group_id = name.clone();
                k.topics.deltas = format!("{name}.deltas");
                k.topics.requests = format!("{name}.requests");
                k.topics.events = format!("{name}.events");
                k.topics.applied = format!("{name}.applied");
                k.topics.dead_letters = format!("{name}.dead");
                k.topics.results = format!("{name}.results");
                set("STUDIO_RUN__SOURCE", "kafka".into());
                set("STUDIO_KAFKA__BROKERS", k.brokers.clone());
                set("STUDIO_KAFKA__PARTITIONS", "1".into());
                set("STUDIO_KAFKA__GROUP_ID", k.group_id.clone());
                set("STUDIO_KAFKA__TOPICS__DELTAS", k.topics.deltas.clone());
                set("STUDIO_KAFKA__TOPICS__REQUESTS", k.topics.requests.clone());
                set("STUDIO_KAFKA__TOPICS__EVENTS", k.topics.events.clone());
                set("STUDIO_KAFKA__TOPICS__APPLIED", k.topics.applied.clone());
                set(
                    "STUDIO_KAFKA__TOPICS__DEAD_LETTERS",
                    k.topics.dead_letters.clone(),
                );
                set("STUDIO_KAFKA__TOPICS__RESULTS", k.topics.results.clone());
                set("STUDIO_WORKER__GROUP_ID", format!("{name}.workers"));
            }
            Bus::Nats => {
                let n = &mut config.nats;
                let id = name.replace(['-', '.'], "_");
                n.url = address;
                n.stream = format!("IN_{id}");
                n.output_stream = format!("OUT_{id}");
                n.durable = format!("d_{id}");
                n.subjects.deltas = format!("{id}.deltas");
                n.subjects.requests = format!("{id}.requests");
                n.subjects.events = format!("{id}.events");
                n.subjects.applied = format!("{id}.applied");
                n.subjects.dead_letters = format!("{id}.dead");
                n.subjects.results = format!("{id}.results");
                set("STUDIO_RUN__SOURCE", "nats".into());
                set("STUDIO_NATS__URL", n.url.clone());
                set("STUDIO_NATS__STREAM", n.stream.clone());
                set("STUDIO_NATS__OUTPUT_STREAM", n.output_stream.clone());
                set("STUDIO_NATS__DURABLE", n.durable.clone());
                set("STUDIO_NATS__SUBJECTS__DELTAS", n.subjects.deltas.clone());
                set(
                    "STUDIO_NATS__SUBJECTS__REQUESTS",
                    n.subjects.requests.clone(),
                );
                set("STUDIO_NATS__SUBJECTS__EVENTS", n.subjects.events.clone());
                set("STUDIO_NATS__SUBJECTS__APPLIED", n.subjects.applied.clone());
                set(
                    "STUDIO_NATS__SUBJECTS__DEAD_LETTERS",
                    n.subjects.dead_letters.clone(),
                );
                set("STUDIO_NATS__SUBJECTS__RESULTS", n.subjects.results.clone());
                set("STUDIO_WORKER__DURABLE", format!("w_{id}"));
            }
        }
        Setup { bus, config, vars }
    }

    /// Publishes `lines` to the deltas topic, keyed by blob id (malformed ones by "").
    fn publish(&self, lines: &[Vec<u8>]) {
        self.publish_to(OutputStream::Deltas, lines);
    }

    /// Publishes `lines` to the topic of `stream`, keyed by blob id (malformed ones by "").
    fn publish_to(&self, stream: OutputStream, lines: &[Vec<u8>]) {
        let mut publisher: Box<dyn RecordPublisher> = match self.bus {
            Bus::Kafka => Box::new(KafkaPublisher::open(&self.config.kafka, &[stream]).unwrap()),
            Bus::Nats => Box::new(NatsPublisher::open(&self.config.nats, &[stream]).unwrap()),
        };
        for line in lines {
            let key = serde_json::from_slice::<Value>(line)
                .ok()
                .and_then(|v| v.get("blob_id").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            publisher.publish(stream, key.as_bytes(), line).unwrap();
        }
        publisher.flush(Duration::from_secs(60)).unwrap();
    }

    /// Reads every record of an output stream (waiting up to a few seconds for more).
    fn read_output(&self, stream: OutputStream) -> Vec<Vec<u8>> {
        let mut source: Box<dyn Source> = match self.bus {
            Bus::Kafka => {
                let mut kafka = self.config.kafka.clone();
                kafka.topics.deltas = studio_connectors::kafka::topic_of(&kafka, stream).to_owned();
                kafka.group_id = unique_name("reader");
                Box::new(KafkaSource::open(&kafka, &[]).unwrap())
            }
            Bus::Nats => {
                let mut nats = self.config.nats.clone();
                nats.stream = nats.output_stream.clone();
                nats.subjects.deltas =
                    studio_connectors::nats::subject_of(&nats, stream).to_owned();
                nats.durable = unique_name("reader").replace(['-', '.'], "_");
                Box::new(NatsSource::open(&nats, &[]).unwrap())
            }
        };
        let mut got = Vec::new();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(3) {
            let batch = source.poll(10_000, Duration::from_millis(500)).unwrap();
            if !batch.is_empty() {
                quiet_since = Instant::now();
            }
            got.extend(batch.into_iter().map(|r| r.bytes));
        }
        got
    }

    /// `studio SUBCOMMAND` with this setup's variables (and no others of Studio's).
    fn studio(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_studio"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STUDIO_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env_remove("KAFKA_BROKERS")
            .env_remove("NATS_URL")
            .arg(subcommand);
        cmd
    }

    fn service(&self, db: impl AsRef<OsStr>, extra: &[&str]) -> Command {
        let mut cmd = self.studio("run");
        cmd.arg("--db").arg(db).args(extra);
        cmd
    }

    /// Runs the service until it has been idle for 3 s; returns its report.
    fn run_to_idle(&self, db: impl AsRef<OsStr>) -> Value {
        let out = self
            .service(db, &["--exit-when-idle", "3000", "--json"])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "studio run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn spawn(&self, db: impl AsRef<OsStr>) -> Running {
        self.spawn_with(db, &[])
    }

    fn spawn_with(&self, db: impl AsRef<OsStr>, extra: &[&str]) -> Running {
        Running(
            self.service(db, extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

/// A service process, killed (SIGKILL) when dropped, so that a failing test does not
/// leave it running.
struct Running(Child);

impl Running {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A generated log with every kind of fault, plus poison records.
fn faulty_log(deltas: u64, seed: u64) -> Vec<Vec<u8>> {
    let out = Command::new(env!("CARGO_BIN_EXE_studio"))
        .args(["gen", "--blobs", &(deltas / 10).to_string()])
        .args(["--deltas", &deltas.to_string(), "--seed", &seed.to_string()])
        .args(["--duplicate-rate", "0.05", "--malformed-rate", "0.02"])
        .args(["--shuffle-window", "8"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut lines: Vec<Vec<u8>> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    // Poison: bytes that are not UTF-8, a truncated record, an empty one, a huge one.
    let third = lines.len() / 3;
    lines.insert(third, vec![0xff, 0xfe, 0x00, 0x7b]);
    let victim = &lines[third + 5];
    let truncated = victim[..victim.len() / 2].to_vec();
    lines.insert(third + 1, truncated);
    lines.insert(2 * third, Vec::new());
    lines.insert(
        2 * third + 1,
        format!("{{\"id\":\"{}\"}}", "x".repeat(200_000)).into_bytes(),
    );
    lines
}

/// Replays `lines` into a fresh database, keeping the records as the service does.
fn replay(lines: &[Vec<u8>], dir: &Path) -> std::path::PathBuf {
    replay_to(lines, &dir.join("replay.sqlite"), &["--store-records"])
}

/// Replays `lines` into `db` with `extra` flags.
fn replay_to(lines: &[Vec<u8>], db: &Path, extra: &[&str]) -> std::path::PathBuf {
    let log = db.with_extension("jsonl");
    std::fs::write(&log, lines.join(&b'\n')).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_studio"))
        .env_clear()
        .arg("replay")
        .arg(&log)
        .arg("--db")
        .arg(db)
        .arg("--no-progress")
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.to_path_buf()
}

/// Every view of the service's database equals the replay's (the dead letters as a
/// multiset: each is decided once either way, but batches cut them differently).
fn assert_same_views(service: &Path, replay: &Path) {
    let (got, want) = (read_tables(service).unwrap(), read_tables(replay).unwrap());
    assert_eq!(got.blobs, want.blobs, "blobs");
    assert_eq!(got.applied, want.applied, "deltas_applied");
    assert_eq!(got.processed, want.processed, "processed_by");
    assert_eq!(
        got.unordered().dead_letters,
        want.unordered().dead_letters,
        "dead letters"
    );
    for sql in [
        "SELECT parent_id, child_id, delta_id FROM blob_edges ORDER BY 1, 2",
        "SELECT ancestor_id, descendant_id, CAST(distance AS TEXT) FROM blob_reach ORDER BY 1, 2",
        "SELECT blob_id, CAST(depth AS TEXT) FROM blob_depth ORDER BY 1",
        "SELECT user_id, CAST(max_depth AS TEXT) FROM user_depth ORDER BY 1",
        "SELECT delta_id, parent_id, child_id, reason FROM rejected_edges ORDER BY 1, 2, 3",
        "SELECT delta_id, record FROM deltas ORDER BY 1",
    ] {
        assert_eq!(text_rows(service, sql), text_rows(replay, sql), "{sql}");
    }
    let waiting = text_rows(service, "SELECT CAST(count(*) AS TEXT) FROM deltas_waiting");
    assert_eq!(
        waiting,
        vec![vec![Some("0".to_owned())]],
        "every gap filled"
    );
}

fn checkpoint(db: &Path) -> Vec<Vec<Option<String>>> {
    text_rows(
        db,
        "SELECT source, positions, CAST(next_seq AS TEXT) FROM checkpoints",
    )
}

/// Publishes a faulty log, runs the service to idle, and checks everything it owes:
/// the views of a replay, counts that add up, the output streams, and positions
/// committed to the bus.
fn run_matches_replay(bus: Bus) {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(bus, "e2e");
    let lines = faulty_log(6_000, 7);
    setup.publish(&lines);
    let db = dir.path().join("service.sqlite");
    let report = setup.run_to_idle(&db);
    let n = |key: &str| report[key].as_u64().unwrap();
    assert_eq!(n("records_read"), lines.len() as u64, "{report}");
    assert_eq!(
        n("accepted") + n("duplicates") + n("dead_letters"),
        n("records_read"),
        "counts add up: {report}"
    );
    assert!(
        n("dead_letters") >= 4,
        "poison records are dead letters: {report}"
    );
    assert_same_views(&db, &replay(&lines, dir.path()));

    // Outputs: one applied delta per accepted delta, one dead letter per rejection,
    // each carrying what it should.
    let applied = setup.read_output(OutputStream::Applied);
    // Accepted grant records count as accepted but are not applied deltas.
    let grants = read_tables(&db).unwrap().grants_accepted;
    assert_eq!(applied.len() as u64 + grants, n("accepted"));
    let first: Value = serde_json::from_slice(&applied[0]).unwrap();
    assert!(
        first["applied_at"].is_string() && first["id"].is_string(),
        "{first}"
    );
    let dead = setup.read_output(OutputStream::DeadLetters);
    assert_eq!(dead.len() as u64, n("dead_letters"));
    let raws: Vec<Vec<u8>> = dead
        .iter()
        .map(|d| {
            let d: Value = serde_json::from_slice(d).unwrap();
            assert!(d["rule"].as_str().unwrap().starts_with('S'), "{d}");
            studio_model::dead_letter::raw_bytes(d["raw"].as_str().unwrap()).unwrap()
        })
        .collect();
    assert!(
        raws.contains(&vec![0xff, 0xfe, 0x00, 0x7b]),
        "raw bytes kept"
    );

    // The stored position is the last record's, and the bus was told.
    let last = (lines.len() - 1) as u64;
    let stored = checkpoint(&db);
    let positions = stored[0][1].clone().unwrap();
    match bus {
        Bus::Kafka => {
            assert_eq!(positions, format!("[[0,{last}]]"));
            let source = KafkaSource::open(&setup.config.kafka, &[]).unwrap();
            let on_broker = source.committed_on_broker().unwrap();
            assert_eq!(on_broker, vec![studio_model::SourcePos::at(last)]);
        }
        // Stream sequences start at 1.
        Bus::Nats => assert_eq!(positions, format!("[[0,{}]]", last + 1)),
    }

    // A restart recovers everything and reads nothing new.
    let again = setup.run_to_idle(&db);
    assert_eq!(again["records_read"], 0, "{again}");
    assert!(
        again["recovered"].as_u64().unwrap() >= n("accepted"),
        "{again}"
    );
    assert_eq!(checkpoint(&db), stored);
}

/// Kills the service with SIGKILL at random points while it works through a log,
/// restarts it each time, and requires the views of an uninterrupted replay.
fn crash_loop(bus: Bus, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(bus, "crash");
    let lines = faulty_log(20_000, seed);
    setup.publish(&lines);
    let db = dir.path().join("service.sqlite");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut progress = Vec::new();
    for _ in 0..5 {
        let mut child = setup.spawn(&db);
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2500)));
        child.kill(); // SIGKILL
        if db.exists() {
            progress.push(checkpoint(&db));
        }
    }
    let report = setup.run_to_idle(&db);
    assert_same_views(&db, &replay(&lines, dir.path()));
    let stored = checkpoint(&db);
    assert_eq!(stored.len(), 1);
    eprintln!("checkpoints after each kill: {progress:?}; final report: {report}");
}

/// SIGTERM stops the service gracefully: it exits 0, what it read is committed (the
/// checkpoint and the bus agree), and a restart finishes the log.
fn graceful_stop(bus: Bus) {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(bus, "sigterm");
    let lines = faulty_log(20_000, 3);
    setup.publish(&lines);
    let db = dir.path().join("service.sqlite");
    let child = setup
        .service(&db, &["--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first commit, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(db.exists() && text_rows_or_empty(&db).is_some_and(|n| n > 0)) {
        assert!(Instant::now() < deadline, "no commit within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "a graceful stop exits 0");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let read = report["records_read"].as_u64().unwrap();
    assert!(read > 0, "{report}");
    let stored = checkpoint(&db);
    let next_seq: u64 = stored[0][2].clone().unwrap().parse().unwrap();
    assert_eq!(next_seq, read, "every record read is committed: {report}");
    if bus == Bus::Kafka {
        let source = KafkaSource::open(&setup.config.kafka, &[]).unwrap();
        let on_broker = source.committed_on_broker().unwrap();
        assert_eq!(
            on_broker,
            vec![studio_model::SourcePos::at(read - 1)],
            "the bus follows"
        );
    }
    setup.run_to_idle(&db);
    assert_same_views(&db, &replay(&lines, dir.path()));
}

/// Rows of `deltas_applied`, when the database can be read yet.
fn text_rows_or_empty(db: &Path) -> Option<u64> {
    std::panic::catch_unwind(|| text_rows(db, "SELECT CAST(count(*) AS TEXT) FROM checkpoints"))
        .ok()
        .and_then(|rows| rows.first()?.first()?.clone()?.parse().ok())
}

/// `GET path` on a loopback port: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// `/healthz` answers while the service runs; `/metrics` has the seed's metrics and
/// counts what was read.
#[test]
fn metrics_and_health_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(Bus::Kafka, "metrics");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    setup.vars.retain(|(k, _)| k != "STUDIO_RUN__LISTEN");
    setup
        .vars
        .push(("STUDIO_RUN__LISTEN".into(), format!("127.0.0.1:{port}")));
    setup
        .vars
        .push(("STUDIO_API__JWT_SECRET".into(), "run-secret".into()));
    let lines = faulty_log(2_000, 5);
    setup.publish(&lines);
    let db = dir.path().join("service.sqlite");
    let mut child = setup.spawn(&db);
    let names = [
        "studio_deltas_applied_total",
        "studio_blob_processing_duration_seconds_bucket",
        "studio_dag_depth",
        "studio_dead_letters_total{reason=\"S1.1 malformed\"}",
        "studio_consumer_lag{partition=\"0\"}",
        "studio_batch_latency_seconds_bucket",
    ];
    // Everything read and committed: every metric is there.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            continue;
        }
        let (_, body) = http_get(port, "/metrics");
        let read = body
            .lines()
            .find_map(|l| l.strip_prefix("studio_records_read_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !body.contains(*n))
            .copied()
            .collect();
        if read == Some(lines.len() as u64) && missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after a minute: read {read:?} of {}, missing {missing:?} from:\n{body}",
            lines.len()
        );
    }
    let (status, health) = http_get(port, "/healthz");
    assert!(status.contains("200"), "{status} {health}");
    assert!(health.contains("\"running\""), "{health}");
    let (status, _) = http_get(port, "/nope");
    assert!(status.contains("404"), "{status}");
    // The query API on the same listener (S6.3): a token of the first blob's owner.
    let create: Value = lines
        .iter()
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .find(|v| v["operation"] == "create" && v["version"] == 1)
        .unwrap();
    let url = format!(
        "http://127.0.0.1:{port}/v1/blobs/{}",
        create["blob_id"].as_str().unwrap()
    );
    let client = reqwest::blocking::Client::new();
    assert_eq!(client.get(&url).send().unwrap().status(), 401);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": create["user_id"], "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"run-secret"),
    )
    .unwrap();
    let answer = client.get(&url).bearer_auth(token).send().unwrap();
    assert_eq!(answer.status(), 200);
    let blob: Value = answer.json().unwrap();
    assert_eq!(blob["user_id"], create["user_id"]);
    child.kill();
}

#[test]
fn kafka_run_matches_replay() {
    run_matches_replay(Bus::Kafka);
}

#[test]
fn nats_run_matches_replay() {
    run_matches_replay(Bus::Nats);
}

#[test]
fn kafka_survives_kill_9() {
    crash_loop(Bus::Kafka, 11);
}

#[test]
fn nats_survives_kill_9() {
    crash_loop(Bus::Nats, 12);
}

#[test]
fn kafka_graceful_stop_commits_everything() {
    graceful_stop(Bus::Kafka);
}

#[test]
fn nats_graceful_stop_commits_everything() {
    graceful_stop(Bus::Nats);
}

/// One delta record of blob `blob` (ids and times from small numbers).
fn delta(id: u64, blob: u64, op: &str, version: u64, patch: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"0000000d-0000-4000-8000-{id:012x}","blob_id":"0000000b-0000-4000-8000-{blob:012x}","user_id":"0000000a-0000-4000-8000-000000000001","operation":"{op}","version":{version},"created_at":"2026-01-01T00:00:{:02}Z","patch":{patch}}}"#,
        id % 60
    )
    .into_bytes()
}

/// Issue 13: records that pass the S1 parser's syntax check but hold values Studio
/// cannot (a number out of range, nesting past serde_json's limit, a lone surrogate)
/// used to panic the worker, so the service never committed and crash-looped. Over
/// Kafka they are dead letters, the records after them apply, and a restart is clean.
#[test]
fn kafka_hostile_records_are_dead_letters_and_the_service_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(Bus::Kafka, "hostile");
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let lines = vec![
        delta(1, 1, "create", 1, r#"{"content":"first"}"#),
        delta(2, 2, "create", 1, r#"{"content": 1e400}"#),
        delta(3, 3, "create", 1, &format!(r#"{{"content": {deep}}}"#)),
        delta(4, 4, "create", 1, r#"{"content": "\ud800"}"#),
        delta(5, 1, "update", 2, r#"{"content":"after"}"#),
        delta(6, 5, "create", 1, r#"{"content":"later"}"#),
    ];
    setup.publish(&lines);
    let db = dir.path().join("service.sqlite");
    let report = setup.run_to_idle(&db);
    let n = |key: &str| report[key].as_u64().unwrap();
    assert_eq!(
        (n("records_read"), n("accepted"), n("dead_letters")),
        (6, 3, 3),
        "{report}"
    );
    let reasons = text_rows(&db, "SELECT reason FROM dead_letters ORDER BY seq");
    for reason in &reasons {
        let reason = reason[0].as_deref().unwrap_or_default();
        assert!(
            reason.starts_with("S1.1 malformed: field \"patch\""),
            "{reason}"
        );
    }
    assert_same_views(&db, &replay(&lines, dir.path()));
    let dead = setup.read_output(OutputStream::DeadLetters);
    assert_eq!(dead.len(), 3);
    // A restart recovers and reads nothing new: no crash loop.
    let again = setup.run_to_idle(&db);
    assert_eq!(again["records_read"], 0, "{again}");
}

/// S4.4 in the service, with a short `gap_timeout_ms`: a delta whose gap stays open
/// becomes a dead letter `S4.4 version gap` while the service runs; a re-sent copy of
/// it is a duplicate (S4.2), before a restart and after one alike, and the delta that
/// fills the gap late applies.
#[test]
fn kafka_gap_timeout_is_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(Bus::Kafka, "gaps");
    setup
        .vars
        .push(("STUDIO_RUN__GAP_TIMEOUT_MS".into(), "300".into()));
    let create = delta(1, 1, "create", 1, r#"{"n":1}"#);
    let v3 = delta(3, 1, "update", 3, r#"{"n":3}"#);
    let v2 = delta(2, 1, "update", 2, r#"{"n":2}"#);
    setup.publish(&[create, v3.clone()]);
    let db = dir.path().join("service.sqlite");
    let child = setup
        .service(&db, &["--exit-when-idle", "3000", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past the timeout, while the service runs: the re-sent copy.
    std::thread::sleep(Duration::from_millis(1500));
    setup.publish(std::slice::from_ref(&v3));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |r: &Value, key: &str| r[key].as_u64().unwrap();
    assert_eq!(n(&first, "records_read"), 3, "{first}");
    assert_eq!(n(&first, "accepted"), 1, "{first}");
    assert_eq!(n(&first, "dead_letters"), 1, "{first}");
    assert_eq!(
        n(&first, "duplicates"),
        1,
        "the copy before a restart: {first}"
    );
    let reasons = text_rows(&db, "SELECT reason FROM dead_letters");
    assert!(
        reasons[0][0]
            .as_deref()
            .unwrap()
            .starts_with("S4.4 version gap"),
        "{reasons:?}"
    );

    // After a restart: the copy is still a duplicate, and the late version 2 applies.
    setup.publish(&[v3, v2]);
    let second = setup.run_to_idle(&db);
    assert_eq!(n(&second, "records_read"), 2, "{second}");
    assert_eq!(
        n(&second, "duplicates"),
        1,
        "the copy after a restart: {second}"
    );
    assert_eq!(n(&second, "accepted"), 1, "{second}");
    assert_eq!(n(&second, "dead_letters"), 0, "{second}");
    let blob = text_rows(&db, "SELECT CAST(version AS TEXT) FROM blobs");
    assert_eq!(blob, vec![vec![Some("2".to_owned())]]);
    let letters = text_rows(&db, "SELECT CAST(count(*) AS TEXT) FROM dead_letters");
    assert_eq!(
        letters,
        vec![vec![Some("1".to_owned())]],
        "no second dead letter"
    );
}

/// A nats-server of the test's own (file storage, so that it keeps its streams across
/// a restart), on a free loopback port.
struct OwnNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnNats {
    fn start() -> OwnNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = OwnNats {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        nats.restart();
        nats
    }

    fn restart(&mut self) {
        let child = Command::new(program("nats"))
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The NATS server restarts under the running service: it waits, resumes, and ends
/// with the views of a replay.
#[test]
fn nats_server_restart_under_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = OwnNats::start();
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let setup = Setup::at(Bus::Nats, "restart", url);
    let lines = faulty_log(8_000, 21);
    let db = dir.path().join("service.sqlite");
    let report =
        restart_under_the_service(&setup, &lines, db.as_os_str(), &|| committed(&db), || {
            nats.stop();
            std::thread::sleep(Duration::from_secs(2));
            nats.restart();
        });
    assert_counts(&report, lines.len());
    assert_same_views(&db, &replay(&lines, dir.path()));
}

/// Records committed so far (`next_seq` of the checkpoint), 0 before the first commit.
fn committed(db: &Path) -> u64 {
    std::panic::catch_unwind(|| checkpoint(db))
        .ok()
        .and_then(|rows| rows.first()?.get(2)?.clone()?.parse().ok())
        .unwrap_or(0)
}

/// Publishes the first half of `lines`, starts the service on `db`, waits for its first
/// commit, runs `restart` (a service restarting under it), publishes the second half,
/// waits until every record is committed, stops the service with SIGTERM and returns
/// its report.
fn restart_under_the_service(
    setup: &Setup,
    lines: &[Vec<u8>],
    db: &OsStr,
    committed: &dyn Fn() -> u64,
    restart: impl FnOnce(),
) -> Value {
    let half = lines.len() / 2;
    setup.publish(&lines[..half]);
    // The log to a file: a pipe nobody reads while it waits could fill and stall it.
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = setup
        .service(db, &["--json"])
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let wait_for = |child: &mut Running, n: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while committed() < n {
            if let Ok(Some(status)) = child.0.try_wait() {
                let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
                panic!("{what}: the service exited ({status}): {stderr}");
            }
            if Instant::now() > deadline {
                let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
                let tail: String = stderr
                    .chars()
                    .rev()
                    .take(4000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "{what}: {} of {n} committed; the end of its log:\n{tail}",
                    committed()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(&mut child, 1, "before the restart");
    restart();
    setup.publish(&lines[half..]);
    wait_for(&mut child, lines.len() as u64, "after the restart");
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let mut stdout = Vec::new();
    use std::io::Read;
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let status = child.0.wait().unwrap();
    let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(status.success(), "{status}: {stderr}");
    serde_json::from_slice(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

/// Every record was read once and decided once.
fn assert_counts(report: &Value, lines: usize) {
    let n = |key: &str| report[key].as_u64().unwrap();
    assert_eq!(n("records_read"), lines as u64, "read once: {report}");
    assert_eq!(
        n("accepted") + n("duplicates") + n("dead_letters"),
        n("records_read"),
        "counts add up: {report}"
    );
}

/// A tansu of the test's own whose topics survive its restart (`s3://` storage on a moto
/// of its own) restarts under the running service: the service waits, resumes, and ends
/// with the views of a replay, every record read once.
#[test]
// Not run by CI: there the restarted tansu never listens again (connection refused for
// two minutes, alone or beside other tests, 2026-12-07); by hand it passes. Run it with
// `--run-ignored only`. The PostgreSQL and nats-server restart tests do run.
#[ignore = "fails in CI: the restarted tansu never listens again; run by hand (--run-ignored only)"]
fn kafka_broker_restart_under_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut own = OwnServices::start_with(&["s3", "kafka"], &[("CI_TANSU_STORAGE", "s3")]);
    let setup = Setup::at(Bus::Kafka, "brokerrestart", own.var("KAFKA_BROKERS"));
    let lines = faulty_log(8_000, 22);
    let db = dir.path().join("service.sqlite");
    let report =
        restart_under_the_service(&setup, &lines, db.as_os_str(), &|| committed(&db), || {
            own.stop(&["kafka"]);
            std::thread::sleep(Duration::from_secs(2));
            own.restart(&["kafka"]);
        });
    assert_counts(&report, lines.len());
    assert_same_views(&db, &replay(&lines, dir.path()));
}

/// PostgreSQL (a cluster of the test's own) restarts under `studio run --db
/// postgres://...`: the service waits, resumes, and ends with the tables of a SQLite
/// replay of the same log, every record read once.
#[test]
fn postgres_restart_under_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut own = OwnServices::start(&["postgres"]);
    let url = own.var("DATABASE_URL");
    let mut setup = Setup::new(Bus::Kafka, "pgrestart");
    let large = dir.path().join("large");
    setup.vars.extend([
        ("STUDIO_RUN__EVENTS".to_owned(), "false".to_owned()),
        ("STUDIO_CONTENT__DIR".into(), large.display().to_string()),
    ]);
    let lines = faulty_log(8_000, 23);
    let committed = || {
        std::panic::catch_unwind(|| {
            studio_tests::services::pg_texts(&url, "SELECT next_seq::text FROM checkpoints")
        })
        .ok()
        .and_then(|rows| rows.first()?.parse().ok())
        .unwrap_or(0)
    };
    let report = restart_under_the_service(&setup, &lines, OsStr::new(&url), &committed, || {
        own.stop(&["postgres"]);
        std::thread::sleep(Duration::from_secs(3));
        own.restart(&["postgres"]);
    });
    assert_counts(&report, lines.len());
    assert_pg_matches_replay(&url, &lines, dir.path());
}

/// The tables of the Postgres database at `url` equal a SQLite replay of `lines`.
fn assert_pg_matches_replay(url: &str, lines: &[Vec<u8>], dir: &Path) {
    let replayed = replay(lines, dir);
    let without_checkpoints = |tables: Vec<(String, studio_connectors::Rows)>| {
        tables
            .into_iter()
            .filter(|(t, _)| t != "checkpoints")
            .collect::<Vec<_>>()
    };
    let local = studio_connectors::content::ContentReader::local;
    let sqlite =
        dump(&mut studio_connectors::sqlite::SqliteReader::open(&replayed, local()).unwrap());
    let pg = dump(
        &mut studio_connectors::postgres::PgReader::open(url, Duration::from_secs(20), local())
            .unwrap(),
    );
    assert_same_tables(
        &without_checkpoints(sqlite),
        &without_checkpoints(pg),
        "a SQLite replay vs the Postgres service",
    );
}

/// A database replayed with `--store-records` is one the service can take over: it
/// continues with the rest of the log from the bus and ends with the views of a replay
/// of the whole log. Without `--store-records` it refuses, saying what to do.
#[test]
fn the_service_takes_over_a_replayed_database() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(Bus::Kafka, "takeover");
    // In order (no shuffle): no gap is open where the log is cut.
    let out = Command::new(env!("CARGO_BIN_EXE_studio"))
        .args(["gen", "--blobs", "300", "--deltas", "3000", "--seed", "9"])
        .args(["--duplicate-rate", "0.05", "--malformed-rate", "0.02"])
        .output()
        .unwrap();
    let lines: Vec<Vec<u8>> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let half = lines.len() / 2;

    let bare = replay_to(&lines[..half], &dir.path().join("bare.sqlite"), &[]);
    let refused = setup
        .service(&bare, &["--exit-when-idle", "1000"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("--store-records"), "{message}");

    let db = replay_to(
        &lines[..half],
        &dir.path().join("taken.sqlite"),
        &["--store-records"],
    );
    setup.publish(&lines[half..]);
    let report = setup.run_to_idle(&db);
    assert_eq!(
        report["records_read"].as_u64(),
        Some((lines.len() - half) as u64)
    );
    assert_same_views(&db, &replay(&lines, dir.path()));
}

/// `studio run --db postgres://...`: killed with SIGKILL and restarted while it works
/// through a log, it ends with the tables of a SQLite replay of the same log (every
/// view, the delta store, the dead letters with their numbering).
#[test]
fn postgres_service_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(Bus::Kafka, "pgservice");
    let large = dir.path().join("large");
    setup.vars.extend([
        ("STUDIO_RUN__EVENTS".to_owned(), "false".to_owned()),
        ("STUDIO_CONTENT__DIR".into(), large.display().to_string()),
    ]);
    let lines = faulty_log(8_000, 31);
    setup.publish(&lines);
    let url = fresh_database("service");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(31);
    for _ in 0..3 {
        let mut child = setup.spawn(&url);
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2500)));
        child.kill();
    }
    let report = setup.run_to_idle(&url);
    assert!(report["records_read"].as_u64().is_some(), "{report}");
    assert_pg_matches_replay(&url, &lines, dir.path());
}

// ---- Providers on the bus (issue 18): `studio run` + two `studio worker`s ----

/// A stand-in for a paid chat-completions API (the content expander's): answers every
/// call after `delay_ms`, so a worker can be caught in the middle of a request, and
/// tells how many calls it served (GET).
struct SlowApi {
    child: Child,
    url: String,
}

impl SlowApi {
    fn start(dir: &Path, delay_ms: u64) -> SlowApi {
        let script = dir.join("slow_api.py");
        std::fs::write(
            &script,
            r#"import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
calls = 0
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(calls).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        global calls
        calls += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(int(sys.argv[1]) / 1000)
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "More words."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"#,
        )
        .unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(delay_ms.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the API stand-in");
        let mut port = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        SlowApi {
            child,
            url: format!("http://127.0.0.1:{}/v1", port.trim()),
        }
    }
}

impl SlowApi {
    /// The calls served so far.
    fn calls(&self) -> u64 {
        let base = self.url.trim_end_matches("/v1");
        let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        use std::io::{Read, Write};
        write!(stream, "GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
            .rsplit("\r\n\r\n")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for SlowApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The providers of these tests: two offline built-ins, a slow one (the expander on
/// [`SlowApi`]) and one that fails every attempt (the expander on a closed port).
fn bus_providers(dir: &Path, slow_api: &str) -> std::path::PathBuf {
    let path = dir.join("providers.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[providers]]
id = "grammar-checker"
blob_types = ["text/plain"]

[[providers]]
id = "render-html"
blob_types = ["text/markdown"]

[[providers]]
id = "slow-expander"
worker = "content-expander"
blob_types = ["text/x-expand"]
timeout_ms = 20000
config = {{ base_url = "{slow_api}" }}

[[providers]]
id = "always-fails"
worker = "content-expander"
blob_types = ["text/x-fail"]
max_attempts = 2
backoff_ms = 50
timeout_ms = 5000
config = {{ base_url = "http://127.0.0.1:9/v1" }}
"#
        ),
    )
    .unwrap();
    path
}

/// A `create` of blob `n` with `content_type` and `content`.
fn document(n: u64, content_type: &str, content: &str) -> Vec<u8> {
    serde_json::json!({
        "id": format!("0000000d-0000-4000-8000-{n:012x}"),
        "blob_id": format!("0000000b-0000-4000-8000-{n:012x}"),
        "user_id": "0000000a-0000-4000-8000-000000000001",
        "operation": "create",
        "version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "patch": {"content": content},
        "metadata": {"content_type": content_type},
    })
    .to_string()
    .into_bytes()
}

/// The `fields` of a worker's JSON log lines whose message is `message`.
fn logged(log: &Path, message: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|line| line["fields"].clone())
        .filter(|fields| fields["message"] == message)
        .collect()
}

/// A request the worker logging to `log` started and has not answered, of `provider`.
fn in_the_middle(log: &Path, provider: &str) -> Option<String> {
    let answered: Vec<Value> = logged(log, "answered");
    logged(log, "running")
        .into_iter()
        .filter(|f| f["provider"] == provider)
        .map(|f| f["request"].as_str().unwrap_or_default().to_owned())
        .find(|id| !answered.iter().any(|a| a["request"] == id.as_str()))
}

/// Waits until the service created its views (the last table of all included).
fn wait_for_views(db: &Path) {
    wait_until(60, "the service did not create its views", || {
        db.exists()
            && std::panic::catch_unwind(|| {
                text_rows(db, "SELECT CAST(count(*) AS TEXT) FROM result_log")
            })
            .is_ok()
    });
}

/// The number a `SELECT count(*) ...` answers.
fn count(db: &Path, sql: &str) -> u64 {
    text_rows(db, &format!("SELECT CAST(({sql}) AS TEXT)"))[0][0]
        .clone()
        .unwrap_or_default()
        .parse()
        .unwrap()
}

/// Documents go in; two workers answer; one is killed with SIGKILL in the middle of a
/// request, and the other answers it; every output lands once; a provider that fails
/// every attempt ends `failed` with a `processing.failed` event; counts add up.
fn providers_on_the_bus(bus: Bus) {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(bus, "providers");
    setup
        .vars
        .push(("STUDIO_WORKER__MAX_BATCH_REQUESTS".into(), "2".into()));
    // A dead NATS worker's requests go to the other after this long.
    setup
        .vars
        .push(("STUDIO_NATS__ACK_WAIT_S".into(), "4".into()));
    if bus == Bus::Kafka {
        // Requests spread over four partitions, shared by the workers' group.
        let mut kafka = setup.config.kafka.clone();
        kafka.partitions = 4;
        studio_connectors::kafka::ensure_topics(&kafka, &[&kafka.topics.requests]).unwrap();
    }
    let api = SlowApi::start(dir.path(), 400);
    let providers = bus_providers(dir.path(), &api.url);
    let providers = providers.to_str().unwrap();
    let db = dir.path().join("views.sqlite");
    let service = setup
        .service(&db, &["--config", providers, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_views(&db);
    let worker = |name: &str| {
        let log = dir.path().join(format!("{name}.log"));
        let child = setup
            .studio("worker")
            .args(["--config", providers, "--log-format", "json", "--source"])
            .arg(match bus {
                Bus::Kafka => "kafka",
                Bus::Nats => "nats",
            })
            .arg("--memo")
            .arg(dir.path().join(format!("{name}.memo.sqlite")))
            .env("RUST_LOG", "info,studio_dataflow::worker=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (Running(child), log)
    };
    let mut workers = [worker("a"), worker("b")];

    let text = "We discussed the the roadmap. Their is a lot to do.";
    let mut lines = Vec::new();
    for n in 1..=6 {
        lines.push(document(n, "text/plain", text));
    }
    lines.push(document(
        7,
        "text/markdown",
        "# Notes\n\nship *providers*\n",
    ));
    lines.push(document(8, "text/x-fail", "nobody can expand this"));
    for n in 10..22 {
        lines.push(document(n, "text/x-expand", "Expand me."));
    }
    // Not a request: a dead letter of the worker that takes it, which goes on.
    setup.publish_to(OutputStream::Requests, &[b"not a request".to_vec()]);
    setup.publish(&lines);

    // Catch a worker in the middle of a slow request, and kill it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (killed, request) = loop {
        assert!(
            Instant::now() < deadline,
            "no worker started a slow request"
        );
        let caught = workers
            .iter()
            .enumerate()
            .find_map(|(i, (_, log))| Some((i, in_the_middle(log, "slow-expander")?)));
        if let Some((i, request)) = caught {
            workers[i].0.kill();
            break (i, request);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let survivor = &workers[1 - killed].1;

    let settled = |db: &Path| {
        db.exists()
            && count(
                db,
                "SELECT count(*) FROM transform_requests WHERE status IN ('completed', 'failed')",
            ) >= 20
            && count(
                db,
                "SELECT count(*) FROM transform_requests WHERE status = 'pending'",
            ) == 0
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !settled(&db) {
        assert!(
            Instant::now() < deadline,
            "requests still unsettled: {:?}",
            text_rows(
                &db,
                "SELECT provider_id, blob_id, status FROM transform_requests ORDER BY 1, 2"
            )
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The killed worker's request was answered by the other one, once.
    assert!(
        logged(survivor, "answered")
            .iter()
            .any(|a| a["request"] == request.as_str()),
        "the surviving worker answered {request}"
    );
    let status = text_rows(
        &db,
        &format!("SELECT status FROM processing WHERE request_id = '{request}'"),
    );
    assert_eq!(status, vec![vec![Some("completed".to_owned())]]);
    for n in 10..22 {
        let blob = format!("0000000b-0000-4000-8000-{n:012x}");
        let outputs = count(
            &db,
            &format!(
                "SELECT count(*) FROM deltas_applied WHERE blob_id = '{blob}' AND provider_id = 'slow-expander'"
            ),
        );
        assert_eq!(outputs, 1, "exactly one output version of {blob}");
        let expanded = count(
            &db,
            &format!(
                "SELECT count(*) FROM blobs WHERE blob_id = '{blob}' AND version = 2 AND json_extract(doc, '$.expanded') IS NOT NULL"
            ),
        );
        assert_eq!(expanded, 1, "{blob} expanded");
    }
    // Grammar annotations on every text, the Markdown rendered to a derived blob.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM blobs WHERE content_type = 'text/plain' AND json_array_length(doc, '$.grammar') > 0"
        ),
        6
    );
    let html = text_rows(
        &db,
        "SELECT json_extract(doc, '$.content') FROM blobs WHERE parent_id = '0000000b-0000-4000-8000-000000000007' AND content_type = 'text/html'",
    );
    assert_eq!(html.len(), 1, "one derived blob");
    assert!(
        html[0][0]
            .as_deref()
            .unwrap_or_default()
            .contains("<h1>Notes</h1>"),
        "{html:?}"
    );
    // The failing provider: `failed` after its attempts, and one processing.failed.
    let failed = text_rows(
        &db,
        "SELECT status, CAST(attempts AS TEXT) FROM processing WHERE provider_id = 'always-fails'",
    );
    assert_eq!(failed, vec![vec![Some("failed".into()), Some("2".into())]]);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM events WHERE type = 'processing.failed' AND provider_id = 'always-fails'"
        ),
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM transform_requests WHERE provider_id = 'always-fails' AND status = 'failed'"
        ),
        1
    );

    let letters: Vec<Value> = setup
        .read_output(OutputStream::DeadLetters)
        .iter()
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect();
    assert!(
        letters
            .iter()
            .any(|l| l["raw"] == "not a request" && l["rule"] == "S1.1 malformed"),
        "{letters:?}"
    );

    // A graceful stop; every record read was decided once.
    let status = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = service.wait_with_output().unwrap();
    assert!(out.status.success(), "a graceful stop exits 0");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |key: &str| report[key].as_u64().unwrap();
    assert_eq!(
        n("accepted") + n("duplicates") + n("dead_letters"),
        n("records_read"),
        "counts add up: {report}"
    );
    assert_eq!(n("dead_letters"), 0, "{report}");
}

#[test]
fn kafka_providers_on_the_bus() {
    providers_on_the_bus(Bus::Kafka);
}

#[test]
fn nats_providers_on_the_bus() {
    providers_on_the_bus(Bus::Nats);
}

/// Waits (up to `secs`) until `done` holds, saying `what` when it never does.
fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The events of `kind` about blob `n` ([`document`]).
fn events_of(db: &Path, kind: &str, n: u64) -> u64 {
    count(
        db,
        &format!(
            "SELECT count(*) FROM events WHERE type = '{kind}' AND blob_id = '0000000b-0000-4000-8000-{n:012x}'"
        ),
    )
}

/// No worker runs: the service issues the request `max_attempts` times, then fails it
/// (`processing.failed`). The failure is a result like any other: after a SIGKILL and
/// a restart it is still there, once, and the request is not issued again.
fn silent_workers(bus: Bus) {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(bus, "silent");
    setup
        .vars
        .push(("STUDIO_RUN__WORKER_GRACE_MS".into(), "300".into()));
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        r#"
[[providers]]
id = "nobody-runs-me"
worker = "content-expander"
blob_types = ["text/x-expand"]
timeout_ms = 200
max_attempts = 2
backoff_ms = 10
config = { base_url = "http://127.0.0.1:9/v1" }
"#,
    )
    .unwrap();
    let providers = providers.to_str().unwrap();
    let db = dir.path().join("views.sqlite");
    let mut service = setup.spawn_with(&db, &["--config", providers]);
    wait_for_views(&db);
    setup.publish(&[document(1, "text/x-expand", "Expand me.")]);
    let failed = |db: &Path| db.exists() && events_of(db, "processing.failed", 1) > 0;
    wait_until(120, "the unanswered request never failed", || failed(&db));
    let error = text_rows(&db, "SELECT status, error FROM processing");
    assert_eq!(error.len(), 1, "{error:?}");
    assert_eq!(error[0][0].as_deref(), Some("failed"));
    assert!(
        error[0][1]
            .as_deref()
            .unwrap_or_default()
            .contains("no worker answered: issued 2 times"),
        "{error:?}"
    );

    // A restart replays the failure: the request stays failed, and is not issued again
    // (a second document, published after the restart, fails after the same wait).
    service.kill();
    let service = setup
        .service(&db, &["--config", providers, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    setup.publish(&[document(2, "text/x-expand", "Expand me too.")]);
    wait_until(120, "the second request never failed", || {
        events_of(&db, "processing.failed", 2) > 0
    });
    assert_eq!(events_of(&db, "processing.failed", 1), 1, "failed once");
    let issued = setup.read_output(OutputStream::Requests);
    let of = |n: u64| {
        let blob = format!("0000000b-0000-4000-8000-{n:012x}");
        issued
            .iter()
            .filter(|r| serde_json::from_slice::<Value>(r).unwrap()["blob_id"] == blob.as_str())
            .count()
    };
    assert_eq!((of(1), of(2)), (2, 2), "each issued max_attempts times");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM transform_requests WHERE status = 'failed'"
        ),
        2
    );

    // Bad records on the results topic are dead letters with their bytes; a result
    // again is a duplicate; nothing stops the service.
    let mut results = setup.read_output(OutputStream::Results);
    assert_eq!(results.len(), 2, "the service's two failures");
    results.truncate(1); // published again: a duplicate
    results.push(br#"{"kind":"result","request_id":"not-a-uuid"}"#.to_vec());
    results.push(vec![0xff, 0xfe, 0x00]);
    setup.publish_to(OutputStream::Results, &results);
    wait_until(60, "the bad results were not dead-lettered", || {
        count(&db, "SELECT count(*) FROM dead_letters") == 2
    });
    let raw = text_rows(&db, "SELECT reason, raw FROM dead_letters ORDER BY seq");
    assert!(raw[0][0].as_deref().unwrap().starts_with("S1.1"), "{raw:?}");
    assert!(
        raw[0][1].as_deref().unwrap().contains("not-a-uuid"),
        "{raw:?}"
    );
    assert_eq!(raw[1][1].as_deref(), Some("base64://4A"), "{raw:?}");
    let status = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = service.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |key: &str| report[key].as_u64().unwrap();
    assert_eq!(
        n("accepted") + n("duplicates") + n("dead_letters"),
        n("records_read"),
        "counts add up: {report}"
    );
    assert_eq!(n("duplicates"), 1, "{report}");
    assert_eq!(
        events_of(&db, "processing.failed", 1),
        1,
        "still failed once"
    );
}

#[test]
fn kafka_silent_workers_make_the_request_fail_after_max_attempts() {
    silent_workers(Bus::Kafka);
}

#[test]
fn nats_silent_workers_make_the_request_fail_after_max_attempts() {
    silent_workers(Bus::Nats);
}

/// A worker restarted with its memo file answers what it answered before without
/// calling the provider again (the memo is keyed by provider, version and fingerprint,
/// not by blob: the same text in another blob is the same answer).
#[test]
fn kafka_worker_memo_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(Bus::Kafka, "memo");
    let api = SlowApi::start(dir.path(), 0);
    let providers = bus_providers(dir.path(), &api.url);
    let providers = providers.to_str().unwrap();
    let db = dir.path().join("views.sqlite");
    let _service = setup.spawn_with(&db, &["--config", providers]);
    wait_for_views(&db);
    let memo = dir.path().join("memo.sqlite");
    let worker = || {
        setup
            .studio("worker")
            .args(["--config", providers, "--source", "kafka", "--json"])
            .args(["--exit-when-idle", "8000", "--memo"])
            .arg(&memo)
            .stderr(Stdio::null())
            .output()
            .unwrap()
    };
    let expanded = |db: &Path| {
        db.exists()
            && count(
                db,
                "SELECT count(*) FROM blobs WHERE json_extract(doc, '$.expanded') IS NOT NULL",
            ) == 1
    };
    let requested = |n: u64| {
        move |db: &Path| {
            db.exists()
                && count(
                    db,
                    &format!(
                        "SELECT count(*) FROM transform_requests WHERE blob_id = '0000000b-0000-4000-8000-{n:012x}'"
                    ),
                ) == 1
        }
    };
    setup.publish(&[document(1, "text/x-expand", "Expand me.")]);
    wait_until(60, "no request for the first document", || {
        requested(1)(&db)
    });
    let first = worker();
    assert!(first.status.success());
    wait_until(60, "the first document was not expanded", || expanded(&db));
    assert_eq!(api.calls(), 1);

    setup.publish(&[document(2, "text/x-expand", "Expand me.")]);
    wait_until(60, "no request for the second document", || {
        requested(2)(&db)
    });
    let second = worker();
    assert!(second.status.success());
    let report: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(report["memo_hits"], 1, "{report}");
    assert_eq!(report["calls"], 0, "{report}");
    assert_eq!(api.calls(), 1, "the provider was not called again");
    let blob2 = "0000000b-0000-4000-8000-000000000002";
    wait_until(60, "the second document was not expanded", || {
        count(
            &db,
            &format!(
                "SELECT count(*) FROM blobs WHERE blob_id = '{blob2}' AND json_extract(doc, '$.expanded') IS NOT NULL"
            ),
        ) == 1
    });
}

/// A provider's output cascades down the DAG over the bus: Markdown → HTML (derived) →
/// HTML of the HTML (derived from the derived). An edit whose HTML is unchanged stops
/// at the first derived blob: it gets no new version, and nothing below it runs.
#[test]
fn kafka_a_cascade_runs_down_and_stops_at_an_unchanged_branch() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(Bus::Kafka, "cascade");
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        r#"
[[providers]]
id = "render-html"
blob_types = ["text/markdown"]

[[providers]]
id = "render-again"
worker = "render-html"
blob_types = ["text/html"]
"#,
    )
    .unwrap();
    let providers = providers.to_str().unwrap();
    let db = dir.path().join("views.sqlite");
    let _service = setup.spawn_with(&db, &["--config", providers]);
    wait_for_views(&db);
    let _worker = Running(
        setup
            .studio("worker")
            .args(["--config", providers, "--source", "kafka", "--memo", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let root = "0000000b-0000-4000-8000-000000000001";
    let child_of = |parent: &str| {
        let rows = text_rows(
            &db,
            &format!(
                "SELECT blob_id, CAST(version AS TEXT), json_extract(doc, '$.content') FROM blobs WHERE parent_id = '{parent}'"
            ),
        );
        rows.first().map(|r| {
            let text = |i: usize| r[i].clone().unwrap_or_default();
            (text(0), text(1).parse::<u64>().unwrap(), text(2))
        })
    };
    let edit = |version: u64, content: &str| {
        serde_json::json!({
            "id": format!("0000000d-0000-4000-8000-{version:012x}"),
            "blob_id": root,
            "user_id": "0000000a-0000-4000-8000-000000000001",
            "operation": if version == 1 { "create" } else { "update" },
            "version": version,
            "created_at": "2026-01-01T00:00:00Z",
            "patch": {"content": content},
            "metadata": {"content_type": "text/markdown"},
        })
        .to_string()
        .into_bytes()
    };
    let settled = |version: u64| {
        count(
            &db,
            &format!(
                "SELECT count(*) FROM transform_requests WHERE blob_id = '{root}' AND version = {version} AND status = 'completed'"
            ),
        ) == 1
            && count(
                &db,
                "SELECT count(*) FROM transform_requests WHERE status = 'pending'",
            ) == 0
    };

    setup.publish(&[edit(1, "# Title\n\nSome text.\n")]);
    wait_until(90, "no grandchild was derived", || {
        db.exists() && child_of(root).is_some_and(|(d, _, _)| child_of(&d).is_some())
    });
    let (derived, v1, _) = child_of(root).unwrap();
    let (_, w1, _) = child_of(&derived).unwrap();

    // An edit that changes the HTML runs down both levels.
    setup.publish(&[edit(2, "# Title\n\nOther text.\n")]);
    wait_until(90, "the edit did not cascade", || {
        settled(2)
            && child_of(&derived).is_some_and(|(_, w, html)| w > w1 && html.contains("Other text"))
    });
    let (_, v2, html) = child_of(root).unwrap();
    assert_eq!(v2, v1 + 1);
    assert!(html.contains("<p>Other text.</p>"), "{html}");
    let (_, w2, _) = child_of(&derived).unwrap();

    // An edit whose HTML is the same stops at the first derived blob.
    setup.publish(&[edit(3, "# Title\n\n\nOther text.\n")]);
    wait_until(90, "the unchanged edit was not processed", || settled(3));
    assert_eq!(
        child_of(root).unwrap().1,
        v2,
        "the derived blob is unchanged"
    );
    assert_eq!(child_of(&derived).unwrap().1, w2, "nothing below it ran");
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM processing WHERE provider_id = 'render-again' AND blob_id = '{derived}'"
            ),
        ),
        2,
        "render-again ran twice on the derived blob, not three times"
    );
}
