//! The Kafka source and publisher against a real broker (tansu). The broker's address
//! comes from `KAFKA_BROKERS`; without it the tests start one for the run (crate
//! studio-test-env), and fail, saying why, if they cannot. Each test uses topics of its
//! own, so they run in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use studio_config::{Config, KafkaConfig};
use studio_connectors::kafka::{KafkaPublisher, KafkaSource};
use studio_connectors::{OutputStream, OwnedRecord, RecordPublisher, Source};
use studio_model::SourcePos;

fn config(test: &str) -> KafkaConfig {
    // Given, or a tansu started for the test run (studio-test-env).
    let brokers = studio_test_env::service_env("KAFKA_BROKERS");
    let unique = format!(
        "{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut c = Config::default().kafka;
    c.brokers = brokers;
    c.group_id = format!("g-{unique}");
    c.partitions = 3;
    c.request_timeout_ms = 10_000;
    c.topics.deltas = format!("{unique}.deltas");
    c.topics.requests = format!("{unique}.requests");
    c.topics.events = format!("{unique}.events");
    c.topics.applied = format!("{unique}.applied");
    c.topics.dead_letters = format!("{unique}.dead-letters");
    c
}

/// Polls until `n` records came (failing after 60 s), then makes sure no more come.
fn read_exactly(source: &mut impl Source, n: usize) -> Vec<OwnedRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records arrived within 60 s",
            got.len()
        );
        got.extend(source.poll(500, Duration::from_millis(500)).unwrap());
    }
    let extra = source.poll(500, Duration::from_millis(1500)).unwrap();
    assert!(extra.is_empty(), "more records than published: {extra:?}");
    got
}

/// Positions strictly increase within each partition.
fn assert_partition_order(records: &[OwnedRecord]) {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for r in records {
        if let Some(&prev) = last.get(&r.pos.part) {
            assert!(r.pos.offset > prev, "{} after {}:{prev}", r.pos, r.pos.part);
        }
        last.insert(r.pos.part, r.pos.offset);
    }
}

/// `(key, payload)` records: per key a numbered sequence, then poison records.
fn workload(keys: usize, per_key: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..per_key {
        for k in 0..keys {
            out.push((
                format!("blob-{k}"),
                format!("{{\"key\":{k},\"seq\":{i}}}").into_bytes(),
            ));
        }
    }
    out.push(("blob-0".into(), vec![0xff, 0xfe, 0x00, 0x80])); // not UTF-8
    out.push(("blob-1".into(), Vec::new())); // empty
    out.push(("blob-2".into(), b"{\"truncated\": ".to_vec())); // not JSON
    out.push(("blob-3".into(), b"line\nbreak\r\n".to_vec()));
    out
}

fn publish_all(publisher: &mut impl RecordPublisher, records: &[(String, Vec<u8>)]) {
    for (key, bytes) in records {
        publisher
            .publish(OutputStream::Deltas, key.as_bytes(), bytes)
            .unwrap();
    }
    publisher.flush(Duration::from_secs(30)).unwrap();
}

fn sorted_payloads(records: &[OwnedRecord]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = records.iter().map(|r| r.bytes.clone()).collect();
    v.sort();
    v
}

#[test]
fn keyed_records_come_back_in_partition_order_with_poison_bytes() {
    let c = config("order");
    let mut publisher = KafkaPublisher::open(&c, &[OutputStream::Deltas]).unwrap();
    let records = workload(8, 40);
    publish_all(&mut publisher, &records);

    let mut source = KafkaSource::open(&c, &[]).unwrap();
    assert_eq!(source.partitions(), vec![0, 1, 2]);
    let got = read_exactly(&mut source, records.len());
    assert_partition_order(&got);

    let mut want: Vec<Vec<u8>> = records.iter().map(|(_, b)| b.clone()).collect();
    want.sort();
    assert_eq!(
        sorted_payloads(&got),
        want,
        "every byte string exactly once"
    );

    // A key's records share a partition and keep their order (S4.3).
    let mut partition_of: BTreeMap<u64, u32> = BTreeMap::new();
    let mut last_seq: BTreeMap<u64, i64> = BTreeMap::new();
    for r in &got {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.bytes) else {
            continue;
        };
        let key = v["key"].as_u64().unwrap();
        let seq = v["seq"].as_i64().unwrap();
        assert_eq!(*partition_of.entry(key).or_insert(r.pos.part), r.pos.part);
        let last = last_seq.entry(key).or_insert(-1);
        assert_eq!(seq, *last + 1, "key {key} out of order");
        *last = seq;
    }
    assert_eq!(partition_of.len(), 8);
    assert!(
        partition_of.values().collect::<BTreeSet<_>>().len() > 1,
        "keys spread over partitions"
    );
}

#[test]
fn commit_then_reopen_resumes_exactly_after_the_stored_positions() {
    let c = config("resume");
    let mut publisher = KafkaPublisher::open(&c, &[OutputStream::Deltas]).unwrap();
    let first = workload(6, 20);
    publish_all(&mut publisher, &first);

    let mut source = KafkaSource::open(&c, &[]).unwrap();
    let got = read_exactly(&mut source, first.len());
    // Studio committed the views of the first half of what it read: per partition, the
    // last position in that half.
    let mut stored: BTreeMap<u32, u64> = BTreeMap::new();
    for r in &got[..got.len() / 2] {
        stored.insert(r.pos.part, r.pos.offset);
    }
    let stored: Vec<SourcePos> = stored
        .into_iter()
        .map(|(part, offset)| SourcePos { part, offset })
        .collect();
    source.commit(&stored).unwrap();
    source.commit(&stored).unwrap(); // again: a no-op
    drop(source);

    let more: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("blob-{}", i % 6), format!("more-{i}").into_bytes()))
        .collect();
    publish_all(&mut publisher, &more);

    let mut reopened = KafkaSource::open(&c, &stored).unwrap();
    // The group's offsets on the broker follow the commit (lag monitoring, tools).
    assert_eq!(reopened.committed_on_broker().unwrap(), stored);
    let after = |r: &OwnedRecord| {
        stored
            .iter()
            .find(|s| s.part == r.pos.part)
            .is_none_or(|s| r.pos.offset > s.offset)
    };
    let unseen: Vec<OwnedRecord> = got.iter().filter(|r| after(r)).cloned().collect();
    let resumed = read_exactly(&mut reopened, unseen.len() + more.len());
    assert_partition_order(&resumed);
    assert!(
        resumed.iter().all(after),
        "nothing at or before a stored position"
    );
    let positions: BTreeSet<SourcePos> = resumed.iter().map(|r| r.pos).collect();
    assert_eq!(positions.len(), resumed.len(), "no position twice");
    for r in &unseen {
        assert!(positions.contains(&r.pos), "{} lost", r.pos);
    }
    let mut want = sorted_payloads(&unseen);
    want.extend(more.iter().map(|(_, b)| b.clone()));
    want.sort();
    assert_eq!(sorted_payloads(&resumed), want);

    // After reading everything, the lag is zero on every partition.
    let lag = reopened.lag().unwrap();
    assert_eq!(lag.len(), 3);
    assert!(lag.iter().all(|&(_, l)| l == 0), "{lag:?}");
}

#[test]
fn lag_counts_what_was_not_read() {
    let c = config("lag");
    let mut publisher = KafkaPublisher::open(&c, &[OutputStream::Deltas]).unwrap();
    // One record per produce call and per key, so that the broker's batches are single
    // records (tansu reports the high watermark as the start of the last batch + 1).
    for i in 0..12 {
        publisher
            .publish(OutputStream::Deltas, format!("k{i}").as_bytes(), b"x")
            .unwrap();
        publisher.flush(Duration::from_secs(10)).unwrap();
    }
    let mut source = KafkaSource::open(&c, &[]).unwrap();
    let lag: u64 = source.lag().unwrap().iter().map(|&(_, l)| l).sum();
    assert_eq!(lag, 12);
    read_exactly(&mut source, 12);
    let lag: u64 = source.lag().unwrap().iter().map(|&(_, l)| l).sum();
    assert_eq!(lag, 0);
}

#[test]
fn the_publisher_round_trips_raw_bytes_on_every_output_topic() {
    let c = config("outputs");
    let outputs = [
        OutputStream::Requests,
        OutputStream::Events,
        OutputStream::Applied,
        OutputStream::DeadLetters,
    ];
    let mut publisher = KafkaPublisher::open(&c, &outputs).unwrap();
    let payload = |s: OutputStream| -> Vec<Vec<u8>> {
        vec![
            format!("{s:?} first").into_bytes(),
            vec![0xc3, 0x28, 0xff],
            Vec::new(),
            br#"{"reason":"S1.1 malformed: empty record","raw":""}"#.to_vec(),
        ]
    };
    for s in outputs {
        for bytes in payload(s) {
            publisher.publish(s, b"blob-x", &bytes).unwrap();
        }
    }
    publisher.flush(Duration::from_secs(30)).unwrap();
    for s in outputs {
        let mut read = c.clone();
        read.topics.deltas = studio_connectors::kafka::topic_of(&c, s).to_owned();
        let mut source = KafkaSource::open(&read, &[]).unwrap();
        let got = read_exactly(&mut source, 4);
        // One key: one partition, in order.
        let parts: BTreeSet<u32> = got.iter().map(|r| r.pos.part).collect();
        assert_eq!(parts.len(), 1);
        let bytes: Vec<Vec<u8>> = got.into_iter().map(|r| r.bytes).collect();
        assert_eq!(bytes, payload(s), "{s:?}");
    }
}

#[test]
fn a_partition_the_topic_lacks_is_refused_and_shutdown_is_bounded() {
    let c = config("refuse");
    let err = KafkaSource::open(&c, &[SourcePos { part: 7, offset: 1 }])
        .err()
        .expect("partition 7 does not exist");
    assert!(
        err.to_string().contains("0:") || err.to_string().contains("7"),
        "{err}"
    );

    let mut source = KafkaSource::open(&c, &[]).unwrap();
    assert!(
        source
            .poll(10, Duration::from_millis(200))
            .unwrap()
            .is_empty()
    );
    source.commit(&[SourcePos { part: 0, offset: 0 }]).unwrap();
    let started = Instant::now();
    drop(source);
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "close took {:?}",
        started.elapsed()
    );
}

#[test]
fn an_unreachable_broker_fails_open_with_its_address() {
    let mut c = config("unreachable");
    c.brokers = "127.0.0.1:1".into();
    c.request_timeout_ms = 2000;
    c.create_topics = false;
    let err = KafkaSource::open(&c, &[])
        .err()
        .expect("nothing listens on port 1");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}
