//! End-to-end tests of `studio loadgen` against the real brokers (`KAFKA_BROKERS`,
//! `NATS_URL`; `.ci/run` starts them, and the tests fail saying so when they are not
//! set): what it publishes is exactly `studio gen`'s log with the same flags, keyed so
//! that every blob's deltas share a partition in version order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use studio_config::Config;
use studio_connectors::kafka::KafkaSource;
use studio_connectors::nats::NatsSource;
use studio_connectors::{OwnedRecord, Source};
use studio_tests::services::{required_env, unique_name};

fn studio() -> std::process::Command {
    studio_tests::studio_command(env!("CARGO_BIN_EXE_studio"))
}

fn gen_lines(args: &[&str]) -> Vec<Vec<u8>> {
    let out = studio().arg("gen").args(args).output().unwrap();
    assert!(out.status.success());
    out.stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn loadgen(args: &[&str]) -> Value {
    let out = studio()
        .arg("loadgen")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn read_all(source: &mut dyn Source, n: usize) -> Vec<OwnedRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(source.poll(1000, Duration::from_millis(500)).unwrap());
    }
    got.extend(source.poll(1000, Duration::from_millis(1000)).unwrap());
    got
}

/// The records are the generated log, and each blob's deltas sit in one partition in
/// version order.
fn check(got: &[OwnedRecord], want: &[Vec<u8>]) {
    let mut a: Vec<&Vec<u8>> = got.iter().map(|r| &r.bytes).collect();
    let mut b: Vec<&Vec<u8>> = want.iter().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "exactly the generated log");
    let mut blobs: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    for r in got {
        let v: Value = serde_json::from_slice(&r.bytes).unwrap();
        if v.get("kind").is_some() {
            continue; // a grant record (S6.4): no version
        }
        let blob = v["blob_id"].as_str().unwrap().to_owned();
        let version = v["version"].as_u64().unwrap();
        let (part, last) = blobs.entry(blob).or_insert((r.pos.part, 0));
        assert_eq!(*part, r.pos.part, "a blob's deltas share a partition");
        assert_eq!(version, *last + 1, "in version order");
        *last = version;
    }
}

#[test]
fn loadgen_to_kafka_publishes_the_generated_log_keyed_by_blob() {
    let brokers = required_env("KAFKA_BROKERS");
    let topic = unique_name("loadgen");
    let flags = ["--deltas", "600", "--blobs", "40", "--seed", "7"];
    let summary = loadgen(
        &[
            &[
                "--to",
                "kafka",
                "--brokers",
                &brokers,
                "--topic",
                &topic,
                "--rate",
                "5000",
            ][..],
            &flags[..],
        ]
        .concat(),
    );
    // 600 deltas and the read grants before their edges across owners (S6.4).
    let want = gen_lines(&flags);
    assert_eq!(summary["records"], want.len());
    let rate = summary["records_per_second"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 5000.0 * 1.2, "paced: {rate}");
    let mut c = Config::default().kafka;
    c.brokers = brokers;
    c.topics.deltas = topic;
    let mut source = KafkaSource::open(&c, &[]).unwrap();
    check(&read_all(&mut source, want.len()), &want);
}

#[test]
fn loadgen_to_nats_publishes_the_generated_log() {
    let url = required_env("NATS_URL");
    let name = unique_name("loadgen").replace('-', "_");
    let subject = format!("{name}.deltas");
    let stream = format!("S_{name}");
    let flags = ["--deltas", "600", "--blobs", "40", "--seed", "7"];
    let summary = loadgen(
        &[
            &[
                "--to", "nats", "--url", &url, "--topic", &subject, "--stream", &stream,
            ][..],
            &flags[..],
        ]
        .concat(),
    );
    // 600 deltas and the read grants before their edges across owners (S6.4).
    let want = gen_lines(&flags);
    assert_eq!(summary["records"], want.len());
    let mut c = Config::default().nats;
    c.url = url;
    c.stream = stream;
    c.subjects.deltas = subject;
    c.durable = "check".into();
    let mut source = NatsSource::open(&c, &[]).unwrap();
    let got = read_all(&mut source, want.len());
    let bytes: Vec<Vec<u8>> = got.iter().map(|r| r.bytes.clone()).collect();
    assert_eq!(bytes, want, "one stream: the log's own order");
    check(&got, &want);
}

/// A user's own log: generated deltas with, among them, a blob id and text outside ASCII
/// (once plain, once written with JSON escapes: the same key), malformed lines, an empty
/// line and a line ending in `\r`.
fn own_log() -> Vec<Vec<u8>> {
    let mut lines = gen_lines(&["--deltas", "40", "--blobs", "5", "--seed", "3"]);
    let extra: [&[u8]; 6] = [
        r#"{"blob_id":"blöb-✓","text":"naïve café, 東京"}"#.as_bytes(),
        br#"{"blob_id":"broken"#,
        b"not json at all \xff",
        b"",
        br#"{"blob_id":"bl\u00f6b-\u2713","n":2}"#,
        b"{\"blob_id\":\"crlf\"}\r",
    ];
    for (i, line) in extra.into_iter().enumerate() {
        lines.insert(3 + i * 7, line.to_vec());
    }
    lines
}

/// The key loadgen should give a line: its blob_id, or empty when it has no readable one.
fn expected_key(line: &[u8]) -> Vec<u8> {
    serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|v| v["blob_id"].as_str().map(|s| s.as_bytes().to_vec()))
        .unwrap_or_default()
}

fn write_log(dir: &std::path::Path, lines: &[Vec<u8>]) -> std::path::PathBuf {
    let path = dir.join("own.jsonl");
    let mut text = lines.join(&b'\n');
    text.push(b'\n');
    std::fs::write(&path, text).unwrap();
    path
}

/// `got` (partition, key, bytes) in each partition's order holds exactly the lines of
/// `want`, each with its key, and every key's lines sit in one partition in file order.
fn check_keyed(got: &[(i32, Vec<u8>, Vec<u8>)], want: &[Vec<u8>]) {
    let mut a: Vec<(&[u8], &[u8])> = got.iter().map(|(_, k, b)| (&k[..], &b[..])).collect();
    let keys: Vec<Vec<u8>> = want.iter().map(|l| expected_key(l)).collect();
    let mut b: Vec<(&[u8], &[u8])> = keys
        .iter()
        .zip(want)
        .map(|(k, l)| (&k[..], &l[..]))
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "every line, byte for byte, with its key");
    assert!(keys.iter().any(|k| k == "blöb-✓".as_bytes()));
    assert!(keys.iter().filter(|k| k.is_empty()).count() >= 3);
    for key in keys.iter().filter(|k| !k.is_empty()) {
        let mine: Vec<&(i32, Vec<u8>, Vec<u8>)> = got.iter().filter(|(_, k, _)| k == key).collect();
        let parts: std::collections::BTreeSet<i32> = mine.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(parts.len(), 1, "one key, one partition: {key:?}");
        let bytes: Vec<&Vec<u8>> = mine.iter().map(|(_, _, b)| b).collect();
        let lines: Vec<&Vec<u8>> = keys
            .iter()
            .zip(want)
            .filter(|(k, _)| *k == key)
            .map(|(_, l)| l)
            .collect();
        assert_eq!(bytes, lines, "a key's lines in file order: {key:?}");
    }
}

#[test]
fn loadgen_log_to_kafka_publishes_the_file_keyed_by_blob() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    let brokers = required_env("KAFKA_BROKERS");
    let topic = unique_name("loadgen-log");
    let dir = tempfile::tempdir().unwrap();
    let lines = own_log();
    let log = write_log(dir.path(), &lines);
    let log = log.to_str().unwrap();

    // --log and the generator's flags exclude each other.
    let out = studio()
        .args(["loadgen", "--to", "kafka", "--log", log, "--deltas", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let summary = loadgen(&[
        "--to",
        "kafka",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--rate",
        "400",
        "--log",
        log,
    ]);
    assert_eq!(summary["records"], lines.len());
    let bytes: usize = lines.iter().map(Vec::len).sum();
    assert_eq!(summary["bytes"], bytes);
    let rate = summary["records_per_second"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 400.0 * 1.2, "paced: {rate}");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "loadgen-log-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 1, "keys matter with several partitions");
    let mut assignment = TopicPartitionList::new();
    for part in 0..partitions {
        assignment
            .add_partition_offset(&topic, part, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_until = None;
    while Instant::now() < deadline && quiet_until.is_none_or(|t| Instant::now() < t) {
        if got.len() >= lines.len() && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(1)); // any extra?
        }
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let m = message.unwrap();
            got.push((
                m.partition(),
                m.offset(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    got.sort_by_key(|(part, offset, _, _)| (*part, *offset));
    let got: Vec<(i32, Vec<u8>, Vec<u8>)> = got.into_iter().map(|(p, _, k, b)| (p, k, b)).collect();
    check_keyed(&got, &lines);
}

#[test]
fn loadgen_log_to_nats_publishes_the_file_in_order_with_keys() {
    let url = required_env("NATS_URL");
    let name = unique_name("loadgen_log").replace('-', "_");
    let subject = format!("{name}.deltas");
    let stream = format!("S_{name}");
    let dir = tempfile::tempdir().unwrap();
    let lines = own_log();
    let log = write_log(dir.path(), &lines);
    let summary = loadgen(&[
        "--to",
        "nats",
        "--url",
        &url,
        "--topic",
        &subject,
        "--stream",
        &stream,
        "--log",
        log.to_str().unwrap(),
    ]);
    assert_eq!(summary["records"], lines.len());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got: Vec<(i32, Vec<u8>, Vec<u8>)> = runtime.block_on(async {
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(&stream).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(
            info.state.messages,
            lines.len() as u64,
            "nothing more, nothing less"
        );
        let mut got = Vec::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            let m = stream.get_raw_message(seq).await.unwrap();
            let key = match m.headers.get(studio_connectors::nats::KEY_HEADER) {
                None => Vec::new(),
                Some(v) => match v.as_str().strip_prefix("hex:") {
                    Some(hex) => (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect(),
                    None => v.as_str().as_bytes().to_vec(),
                },
            };
            got.push((0, key, m.payload.to_vec()));
        }
        got
    });
    let bytes: Vec<&Vec<u8>> = got.iter().map(|(_, _, b)| b).collect();
    assert_eq!(
        bytes,
        lines.iter().collect::<Vec<_>>(),
        "one stream: the file's order"
    );
    check_keyed(&got, &lines);
}
