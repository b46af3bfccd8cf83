//! End-to-end tests of `studio loadgen` against the real brokers (`KAFKA_BROKERS`,
//! `NATS_URL`; `.ci/run` starts them, and the tests fail saying so when they are not
//! set): what it publishes is exactly `studio gen`'s log with the same flags, keyed so
//! that every blob's deltas share a partition in version order.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use studio_config::Config;
use studio_connectors::kafka::KafkaSource;
use studio_connectors::nats::NatsSource;
use studio_connectors::{LiveSource, OwnedRecord};
use studio_tests::services::{required_env, unique_name};

fn studio() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_studio"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STUDIO_") {
            cmd.env_remove(key);
        }
    }
    cmd
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

fn read_all(source: &mut dyn LiveSource, n: usize) -> Vec<OwnedRecord> {
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
    assert_eq!(summary["records"], 600);
    let rate = summary["records_per_second"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 5000.0 * 1.2, "paced: {rate}");
    let mut c = Config::default().kafka;
    c.brokers = brokers;
    c.topics.deltas = topic;
    let mut source = KafkaSource::open(&c, &[]).unwrap();
    check(&read_all(&mut source, 600), &gen_lines(&flags));
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
    assert_eq!(summary["records"], 600);
    let mut c = Config::default().nats;
    c.url = url;
    c.stream = stream;
    c.subjects.deltas = subject;
    c.durable = "check".into();
    let mut source = NatsSource::open(&c, &[]).unwrap();
    let got = read_all(&mut source, 600);
    let want = gen_lines(&flags);
    let bytes: Vec<Vec<u8>> = got.iter().map(|r| r.bytes.clone()).collect();
    assert_eq!(bytes, want, "one stream: the log's own order");
    check(&got, &want);
}
