//! Load for the bus connectors: a delta log held in memory with each record's key (its
//! `blob_id`), generated ([`generate_keyed`]) or read from files ([`read_keyed`]), and a
//! paced publisher loop. `studio loadgen` and the `studio-bus-bench` baseline share it,
//! so that both send the same records.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use studio_model::generate::{GenSpec, GenStats, generate};

use crate::{OutputStream, RecordPublisher, SinkError};

/// One record to publish: its key and its bytes.
#[derive(Clone, Debug)]
pub struct KeyedRecord {
    /// The record's `blob_id` (empty when the record has none, e.g. a malformed line).
    pub key: Vec<u8>,
    /// The record, one JSON object without its line terminator.
    pub bytes: Vec<u8>,
}

/// Generates the log of `spec` (`studio_model::generate`) into memory, one record per
/// line, keyed by `blob_id`.
pub fn generate_keyed(spec: &GenSpec) -> std::io::Result<(Vec<KeyedRecord>, GenStats)> {
    let mut text = Vec::new();
    let stats = generate(spec, &mut text)?;
    let records = text
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| KeyedRecord {
            key: key_of(line),
            bytes: line.to_vec(),
        })
        .collect();
    Ok((records, stats))
}

/// Reads delta logs into memory as one log, in the order given, one record per line
/// exactly as `studio replay` reads them (`FileSource`: a line without its `\n`, every
/// byte kept, empty and malformed lines included), each keyed by its `blob_id`
/// ([`key_of`]).
#[cfg(feature = "file")]
pub fn read_keyed(paths: &[std::path::PathBuf]) -> Result<Vec<KeyedRecord>, crate::SourceError> {
    let mut source = crate::file::FileSource::open(paths)?;
    let mut records = Vec::new();
    while let Some(record) = source.next_record()? {
        records.push(KeyedRecord {
            key: key_of(record.bytes),
            bytes: record.bytes.to_vec(),
        });
    }
    Ok(records)
}

/// A record's key: the string value of its top-level `blob_id`, as UTF-8 bytes; empty
/// when it has none that can be read (a malformed line, not a JSON object, no `blob_id`,
/// or one that is not a string). Only `blob_id` is kept while parsing.
pub fn key_of(line: &[u8]) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        blob_id: Option<Cow<'a, str>>, // Cow: an id with escapes cannot be borrowed
    }
    serde_json::from_slice::<Key<'_>>(line)
        .ok()
        .and_then(|k| k.blob_id)
        .map(|id| id.into_owned().into_bytes())
        .unwrap_or_default()
}

/// What [`publish_paced`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PublishStats {
    /// Records published.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Seconds from the first publish to the last one handed to the client.
    pub send_seconds: f64,
    /// Seconds from the first publish until the bus acknowledged every record.
    pub seconds: f64,
    /// `records / seconds`: the rate achieved, acknowledgements included.
    pub records_per_second: f64,
}

/// Publishes `records` to `stream` at `rate` records per second (0: as fast as the
/// publisher takes them), then flushes (waiting at most `flush_timeout`). `progress` is
/// called every 1,024 records with the number sent so far; `sent_at`, when given,
/// gets the instant each record was handed to the client.
pub fn publish_paced(
    publisher: &mut dyn RecordPublisher,
    stream: OutputStream,
    records: &[KeyedRecord],
    rate: f64,
    flush_timeout: Duration,
    progress: &mut dyn FnMut(u64),
    mut sent_at: Option<&mut Vec<Instant>>,
) -> Result<PublishStats, SinkError> {
    let started = Instant::now();
    let mut bytes = 0u64;
    for (i, record) in records.iter().enumerate() {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        publisher.publish(stream, &record.key, &record.bytes)?;
        if let Some(sent_at) = sent_at.as_deref_mut() {
            sent_at.push(Instant::now());
        }
        bytes += record.bytes.len() as u64;
        if i % 1024 == 1023 {
            progress(i as u64 + 1);
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    publisher.flush(flush_timeout)?;
    progress(records.len() as u64);
    let seconds = started.elapsed().as_secs_f64();
    Ok(PublishStats {
        records: records.len() as u64,
        bytes,
        send_seconds,
        seconds,
        records_per_second: records.len() as f64 / seconds.max(1e-9),
    })
}

/// End-to-end latencies, publish to view commit, in microseconds: record `i` was
/// sent at `sent_at[i]`, and `commits` lists when the service's committed record count
/// (its checkpoint's `next_seq`, less `base`) reached each value, in time order.
/// Record `i` counts as committed at the first commit whose count exceeds `i`: exact
/// when the service reads records in the order they were sent (one partition), an
/// approximation across partitions. Records never committed are left out.
pub fn end_to_end_micros(sent_at: &[Instant], commits: &[(Instant, u64)], base: u64) -> Vec<u64> {
    let mut latencies = Vec::with_capacity(sent_at.len());
    let mut next = commits.iter().peekable();
    for (i, sent) in sent_at.iter().enumerate() {
        while next
            .peek()
            .is_some_and(|(_, count)| count.saturating_sub(base) <= i as u64)
        {
            next.next();
        }
        let Some((at, _)) = next.peek() else { break };
        latencies.push(at.saturating_duration_since(*sent).as_micros() as u64);
    }
    latencies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_blob_ids_or_empty() {
        assert_eq!(key_of(br#"{"blob_id":"b1","version":1}"#), b"b1");
        assert_eq!(
            key_of(br#"{"op":"x","blob_id":"bl\u00f6b"}"#),
            "blöb".as_bytes()
        );
        assert_eq!(
            key_of(r#"{"blob_id":"blöb"}"#.as_bytes()),
            "blöb".as_bytes()
        );
        for unreadable in [
            &b"{not json"[..],
            b"",
            b"[1,2]",
            br#"{"blob_id":7}"#,
            br#"{"version":1}"#,
            b"\xff\xfe",
        ] {
            assert_eq!(key_of(unreadable), b"", "{unreadable:?}");
        }
    }

    #[test]
    #[cfg(feature = "file")]
    fn read_keyed_keeps_every_line_and_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        std::fs::write(&a, "{\"blob_id\":\"x\"}\r\n{oops\n\n").unwrap();
        std::fs::write(&b, "{\"blob_id\":\"é\",\"t\":\"ü\"}").unwrap();
        let got: Vec<(Vec<u8>, Vec<u8>)> = read_keyed(&[a, b])
            .unwrap()
            .into_iter()
            .map(|r| (r.key, r.bytes))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"x".to_vec(), b"{\"blob_id\":\"x\"}\r".to_vec()),
            (vec![], b"{oops".to_vec()),
            (vec![], vec![]),
            (
                "é".as_bytes().to_vec(),
                "{\"blob_id\":\"é\",\"t\":\"ü\"}".as_bytes().to_vec(),
            ),
        ];
        assert_eq!(got, want);
        assert!(read_keyed(&[dir.path().join("none.jsonl")]).is_err());
    }

    #[test]
    fn each_record_takes_the_first_commit_that_covers_it() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let sent = [ms(0), ms(1), ms(2), ms(3)];
        // Counts from a base of 10: records 0-1 commit at 5 ms, 2-3 at 9 ms.
        let commits = [(ms(5), 12), (ms(9), 14)];
        assert_eq!(
            end_to_end_micros(&sent, &commits, 10),
            vec![5000, 4000, 7000, 6000]
        );
        // A record never committed has no latency.
        assert_eq!(
            end_to_end_micros(&sent, &commits[..1], 10),
            vec![5000, 4000]
        );
    }
}
