//! The NATS JetStream source and publisher against a real server (`nats-server -js`).
//! The server's address comes from `NATS_URL`; without it the tests start one for the
//! run (crate studio-test-env), and fail, saying why, if they cannot. Each test uses
//! streams and subjects of its own, so they run in parallel. The restart test runs a
//! server of its own (`NATS_SERVER_BIN`, or `nats-server`, installed when missing) so
//! that it can stop it.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use studio_config::{Config, NatsConfig};
use studio_connectors::nats::{NatsPublisher, NatsSource};
use studio_connectors::{OutputStream, OwnedRecord, RecordPublisher, Source};
use studio_model::SourcePos;

fn unique(test: &str) -> String {
    format!(
        "{test}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn config_at(url: &str, test: &str) -> NatsConfig {
    let u = unique(test);
    let mut c = Config::default().nats;
    c.url = url.to_owned();
    c.stream = format!("IN_{u}");
    c.output_stream = format!("OUT_{u}");
    c.durable = format!("d_{u}");
    c.subjects.deltas = format!("{u}.deltas");
    c.subjects.requests = format!("{u}.requests");
    c.subjects.events = format!("{u}.events");
    c.subjects.applied = format!("{u}.applied");
    c.subjects.dead_letters = format!("{u}.dead-letters");
    c
}

fn config(test: &str) -> NatsConfig {
    // Given, or a nats-server started for the test run (studio-test-env).
    let url = studio_test_env::service_env("NATS_URL");
    config_at(&url, test)
}

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
    let extra = source.poll(500, Duration::from_millis(1000)).unwrap();
    assert!(extra.is_empty(), "more records than published: {extra:?}");
    got
}

fn workload(n: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("{{\"seq\":{i}}}").into_bytes())
        .collect();
    out.push(vec![0xff, 0xfe, 0x00, 0x80]); // not UTF-8
    out.push(Vec::new()); // empty
    out.push(b"{\"truncated\": ".to_vec()); // not JSON
    out.push(b"line\nbreak\r\n".to_vec());
    out
}

fn publish_all(publisher: &mut impl RecordPublisher, records: &[Vec<u8>]) {
    for (i, bytes) in records.iter().enumerate() {
        let key = format!("blob-{}", i % 7);
        publisher
            .publish(OutputStream::Deltas, key.as_bytes(), bytes)
            .unwrap();
    }
    publisher.flush(Duration::from_secs(30)).unwrap();
}

fn assert_in_order(records: &[OwnedRecord]) {
    for pair in records.windows(2) {
        assert!(
            pair[1].pos.offset > pair[0].pos.offset,
            "{} after {}",
            pair[1].pos,
            pair[0].pos
        );
    }
    assert!(records.iter().all(|r| r.pos.part == 0));
}

#[test]
fn records_come_back_in_stream_order_with_poison_bytes() {
    let c = config("order");
    let mut publisher = NatsPublisher::open(&c, &[OutputStream::Deltas]).unwrap();
    let records = workload(300);
    publish_all(&mut publisher, &records);
    let mut source = NatsSource::open(&c, &[]).unwrap();
    let got = read_exactly(&mut source, records.len());
    assert_in_order(&got);
    let positions: Vec<u64> = got.iter().map(|r| r.pos.offset).collect();
    assert_eq!(positions, (1..=records.len() as u64).collect::<Vec<_>>());
    let bytes: Vec<Vec<u8>> = got.into_iter().map(|r| r.bytes).collect();
    assert_eq!(bytes, records, "every byte string, in publish order");
}

#[test]
fn commit_then_reopen_resumes_exactly_after_the_stored_position() {
    let c = config("resume");
    let mut publisher = NatsPublisher::open(&c, &[OutputStream::Deltas]).unwrap();
    let first = workload(100);
    publish_all(&mut publisher, &first);
    let mut source = NatsSource::open(&c, &[]).unwrap();
    let got = read_exactly(&mut source, first.len());
    let stored = got[got.len() / 2 - 1].pos;
    source.commit(&[stored]).unwrap();
    source.commit(&[stored]).unwrap(); // again: a no-op
    assert_eq!(
        source.lag().unwrap(),
        vec![(0, 0)],
        "everything was delivered"
    );
    drop(source);

    let more = workload(20);
    publish_all(&mut publisher, &more);
    let mut reopened = NatsSource::open(&c, &[stored]).unwrap();
    let unseen: Vec<&OwnedRecord> = got.iter().filter(|r| r.pos > stored).collect();
    assert_eq!(
        reopened.lag().unwrap(),
        vec![(0, (unseen.len() + more.len()) as u64)]
    );
    let resumed = read_exactly(&mut reopened, unseen.len() + more.len());
    assert_in_order(&resumed);
    assert_eq!(
        resumed[0].pos.offset,
        stored.offset + 1,
        "right after the stored one"
    );
    let mut want: Vec<Vec<u8>> = unseen.iter().map(|r| r.bytes.clone()).collect();
    want.extend(more);
    let bytes: Vec<Vec<u8>> = resumed.iter().map(|r| r.bytes.clone()).collect();
    assert_eq!(bytes, want);
    reopened.commit(&[resumed.last().unwrap().pos]).unwrap();
    assert_eq!(reopened.lag().unwrap(), vec![(0, 0)]);
}

#[test]
fn redeliveries_after_the_ack_wait_are_not_handed_out_twice() {
    let mut c = config("redeliver");
    c.ack_wait_s = 1;
    let mut publisher = NatsPublisher::open(&c, &[OutputStream::Deltas]).unwrap();
    let records = workload(50);
    publish_all(&mut publisher, &records);
    let mut source = NatsSource::open(&c, &[]).unwrap();
    let got = read_exactly(&mut source, records.len());
    // Nothing committed: the server redelivers everything after 1 s.
    std::thread::sleep(Duration::from_millis(2500));
    let again = source.poll(500, Duration::from_secs(2)).unwrap();
    assert!(
        again.is_empty(),
        "redelivered records handed out again: {}",
        again.len()
    );
    source.commit(&[got.last().unwrap().pos]).unwrap();
    publish_all(&mut publisher, &records[..5]);
    let next = read_exactly(&mut source, 5);
    assert_eq!(next[0].pos.offset, got.last().unwrap().pos.offset + 1);
}

#[test]
fn the_publisher_round_trips_raw_bytes_on_every_output_subject() {
    let c = config("outputs");
    let outputs = [
        OutputStream::Requests,
        OutputStream::Events,
        OutputStream::Applied,
        OutputStream::DeadLetters,
    ];
    let mut publisher = NatsPublisher::open(&c, &outputs).unwrap();
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
        // Read each subject from the output stream with a consumer filtered on it.
        let mut read = c.clone();
        read.stream = c.output_stream.clone();
        read.subjects.deltas = studio_connectors::nats::subject_of(&c, s).to_owned();
        read.durable = format!("{}_{s:?}", c.durable);
        let mut source = NatsSource::open(&read, &[]).unwrap();
        let bytes: Vec<Vec<u8>> = read_exactly(&mut source, 4)
            .into_iter()
            .map(|r| r.bytes)
            .collect();
        assert_eq!(bytes, payload(s), "{s:?}");
    }
}

#[test]
fn a_partition_other_than_zero_is_refused() {
    let c = config("refuse");
    let err = NatsSource::open(&c, &[SourcePos { part: 1, offset: 3 }])
        .err()
        .expect("JetStream has one partition");
    assert!(err.to_string().contains("1:3"), "{err}");
}

/// A `nats-server` of this test's own, on a free port, storing in `dir`.
struct Server {
    child: Child,
}

impl Server {
    fn start(port: u16, dir: &Path) -> Server {
        let bin = std::env::var("NATS_SERVER_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| studio_test_env::program("nats"));
        let log = std::fs::File::create(dir.join(format!("nats-{port}.log"))).unwrap();
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_source_recovers_when_the_server_restarts_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start(port, dir.path());
    let c = config_at(&format!("nats://127.0.0.1:{port}"), "restart");

    let mut publisher = NatsPublisher::open(&c, &[OutputStream::Deltas]).unwrap();
    let first = workload(200);
    publish_all(&mut publisher, &first);
    drop(publisher);
    let mut source = NatsSource::open(&c, &[]).unwrap();
    let mut got = Vec::new();
    while got.len() < 100 {
        got.extend(source.poll(50, Duration::from_millis(500)).unwrap());
    }
    source.commit(&[got[79].pos]).unwrap();

    server.stop();
    // Polling while the server is down: empty batches or records it had already sent,
    // never an error.
    for _ in 0..3 {
        got.extend(source.poll(500, Duration::from_millis(300)).unwrap());
    }
    let _server = Server::start(port, dir.path());

    let mut publisher = NatsPublisher::open(&c, &[OutputStream::Deltas]).unwrap();
    let more = workload(50);
    publish_all(&mut publisher, &more);
    let total = first.len() + more.len();
    let rest = read_exactly(&mut source, total - got.len());
    got.extend(rest);
    assert_in_order(&got);
    let positions: BTreeSet<u64> = got.iter().map(|r| r.pos.offset).collect();
    assert_eq!(
        positions,
        (1..=total as u64).collect(),
        "nothing lost, nothing twice"
    );
    let mut want = first;
    want.extend(more);
    let bytes: Vec<Vec<u8>> = got.into_iter().map(|r| r.bytes).collect();
    assert_eq!(bytes, want);
}
