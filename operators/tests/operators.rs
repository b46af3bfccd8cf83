//! Tests of the timely operators `DedupById` and `ApplyDeltas` (SPEC S3, S4) run on
//! real timely workers (1 and 2), fed batch by batch the way a bounded replay feeds
//! them: inputs advance per batch, then to one final timestamp, and close.
//!
//! The outputs are captured on every worker and gathered here; collections are
//! compared after consolidation, per time where the time matters.

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::consolidation::{consolidate, consolidate_updates};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use studio_model::{
    AppliedRow, BlobLedger, BlobRow, DeadLetter, Delta, Effects, Operation, ProcessedRow, Reason,
    SourcePos, Uuid, parse_record,
};
use studio_operators::{ApplyDeltas, ApplyOptions, DedupById, Duplicate};
use timely::dataflow::operators::capture::Event;
use timely::dataflow::operators::vec::input::{Handle, Input};
use timely::dataflow::operators::{Capture, Probe};
use timely::dataflow::{ProbeHandle, StreamVec};
use timely::worker::Worker;

type Time = u64;

// ---------------------------------------------------------------------------------------
// Building deltas
// ---------------------------------------------------------------------------------------

/// Delta ids, blob ids and the user live in distinct ranges of UUIDs.
fn delta_id(n: u64) -> Uuid {
    Uuid::from_u128((0x1d << 120) | u128::from(n))
}

fn blob_id(n: u64) -> Uuid {
    Uuid::from_u128((0xb0 << 120) | u128::from(n))
}

fn user_id() -> Uuid {
    Uuid::from_u128(0xa1 << 120)
}

/// `created_at` of the record at `pos`: one second per position.
fn created_at(pos: u64) -> String {
    format!(
        "2026-01-01T{:02}:{:02}:{:02}Z",
        pos / 3600,
        pos / 60 % 60,
        pos % 60
    )
}

/// One wire record (SPEC S1); a `null` patch or provider is absent.
fn line(
    pos: u64,
    id: u64,
    blob: u64,
    op: &str,
    version: u64,
    patch: Value,
    provider: Option<&str>,
) -> String {
    let metadata = match op {
        "transform" => json!({ "source_version": version - 1 }),
        _ => json!({ "note": pos }),
    };
    json!({
        "id": delta_id(id).to_string(),
        "blob_id": blob_id(blob).to_string(),
        "user_id": user_id().to_string(),
        "operation": op,
        "version": version,
        "created_at": created_at(pos),
        "patch": patch,
        "provider_id": provider,
        "metadata": metadata,
    })
    .to_string()
}

fn parse(text: &str, pos: u64) -> Delta {
    parse_record(text.as_bytes(), SourcePos::at(pos))
        .unwrap_or_else(|dl| panic!("test record {text} is malformed: {}", dl.reason))
}

/// A delta read at `pos` (its own id unless said otherwise).
fn delta(pos: u64, id: u64, blob: u64, op: &str, version: u64, patch: Value) -> Delta {
    parse(&line(pos, id, blob, op, version, patch, None), pos)
}

/// A provider's output (S3.3).
fn transform(pos: u64, id: u64, blob: u64, version: u64, provider: &str, patch: Value) -> Delta {
    parse(
        &line(pos, id, blob, "transform", version, patch, Some(provider)),
        pos,
    )
}

// ---------------------------------------------------------------------------------------
// Running the operators
// ---------------------------------------------------------------------------------------

/// One record as fed: at `time`, by worker `feeder % workers`.
#[derive(Clone, Debug)]
struct Fed {
    time: Time,
    feeder: usize,
    delta: Delta,
}

fn fed(time: Time, feeder: usize, delta: Delta) -> Fed {
    Fed {
        time,
        feeder,
        delta,
    }
}

/// How the inputs are driven.
#[derive(Clone, Copy, Debug)]
struct Drive {
    workers: usize,
    /// The final timestamp the inputs advance to before closing.
    end: Time,
    /// Step the worker until each batch is complete before feeding the next.
    step_each_batch: bool,
}

type Tx<D> = Arc<Mutex<Sender<Event<Time, Vec<D>>>>>;
type Rx<D> = Receiver<Event<Time, Vec<D>>>;
type Updates<D> = Vec<(D, Time, isize)>;

fn tap<D>() -> (Tx<D>, Rx<D>) {
    let (tx, rx) = std::sync::mpsc::channel();
    (Arc::new(Mutex::new(tx)), rx)
}

/// Captures `stream` of this worker into the shared channel, probed by `probe`.
fn capture<D: Clone + Send + 'static>(
    stream: StreamVec<'_, Time, D>,
    tx: &Tx<D>,
    probe: &ProbeHandle<Time>,
) {
    let tx = tx.lock().expect("tap").clone();
    stream.probe_with(probe).capture_into(tx);
}

/// Everything sent on a tap, with the time of the message that carried it.
fn drain<D>(rx: &Rx<D>) -> Vec<(Time, D)> {
    let mut out = Vec::new();
    for event in rx.try_iter() {
        if let Event::Messages(stamp, data) = event {
            let time = *stamp.expect_singleton();
            out.extend(data.into_iter().map(|d| (time, d)));
        }
    }
    out
}

/// Collection updates gathered from all workers, consolidated per time.
fn drain_updates<D: Ord>(rx: &Rx<(D, Time, isize)>) -> Updates<D> {
    let mut updates: Updates<D> = drain(rx)
        .into_iter()
        .map(|(at, (d, time, diff))| {
            assert_eq!(at, time, "an update travels at its own time");
            (d, time, diff)
        })
        .collect();
    consolidate_updates(&mut updates);
    updates
}

/// The collection at the end: all times folded, consolidated.
fn final_rows<D: Ord + Clone>(updates: &Updates<D>) -> Vec<(D, isize)> {
    let mut rows: Vec<(D, isize)> = updates.iter().map(|(d, _, r)| (d.clone(), *r)).collect();
    consolidate(&mut rows);
    rows
}

/// Feeds this worker's share of `feed`, batch by batch, then advances to `drive.end`,
/// steps until every probed output has passed it, and closes the input.
fn feed_worker(
    worker: &mut Worker,
    mut input: Handle<Time, Delta>,
    probe: &ProbeHandle<Time>,
    feed: &[Fed],
    drive: Drive,
) {
    let (index, peers) = (worker.index(), worker.peers());
    for record in feed {
        if record.time != *input.time() {
            input.advance_to(record.time);
            if drive.step_each_batch {
                step_until(worker, probe, *input.time());
            }
        }
        if record.feeder % peers == index {
            input.send(record.delta.clone());
        }
    }
    assert!(drive.end >= *input.time(), "the final time is the last");
    input.advance_to(drive.end);
    step_until(worker, probe, drive.end);
    drop(input);
}

/// Steps until every probed output has reached `time`; fails (rather than hangs) when
/// an operator holds the frontier back.
fn step_until(worker: &mut Worker, probe: &ProbeHandle<Time>, time: Time) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.less_than(&time) {
        assert!(
            Instant::now() < deadline,
            "the outputs never reached time {time}"
        );
        worker.step();
    }
}

fn join_workers(guards: timely::communication::WorkerGuards<()>) {
    for result in guards.join() {
        result.expect("a worker failed");
    }
}

/// What `DedupById` emitted, from all workers.
#[derive(Debug, PartialEq)]
struct DedupOut {
    /// `(time, position, id, patch)` of each delta that passed, sorted.
    unique: Vec<(Time, SourcePos, Uuid, Option<String>)>,
    /// `(time, duplicate)`, sorted.
    duplicates: Vec<(Time, Duplicate)>,
}

fn run_dedup(feed: &[Fed], drive: Drive) -> DedupOut {
    let (unique_tx, unique_rx) = tap::<Delta>();
    let (dups_tx, dups_rx) = tap::<Duplicate>();
    let feed = Arc::new(feed.to_vec());
    let guards = timely::execute(timely::Config::process(drive.workers), move |worker| {
        let probe = ProbeHandle::new();
        let input = worker.dataflow::<Time, _, _>(|scope| {
            let (input, deltas) = scope.new_input::<Delta>();
            // No known ids: the handle is dropped, which closes that input.
            let (_, known) = scope.new_input::<Uuid>();
            let (unique, dups) = deltas.dedup_by_id(known);
            capture(unique, &unique_tx, &probe);
            capture(dups, &dups_tx, &probe);
            input
        });
        feed_worker(worker, input, &probe, &feed, drive);
    })
    .expect("start timely");
    join_workers(guards);
    let mut unique: Vec<_> = drain(&unique_rx)
        .into_iter()
        .map(|(t, d)| (t, d.pos, d.id, d.patch_json().map(str::to_owned)))
        .collect();
    unique.sort();
    let mut duplicates = drain(&dups_rx);
    duplicates.sort();
    DedupOut { unique, duplicates }
}

/// What `ApplyDeltas` emitted, from all workers, consolidated per time.
#[derive(Debug, PartialEq)]
struct Views {
    blobs: Updates<BlobRow>,
    processed: Updates<ProcessedRow>,
    applied: Updates<AppliedRow>,
    dead_letters: Updates<DeadLetter>,
    /// With `dedup`: the repeats, sorted.
    duplicates: Vec<(Time, Duplicate)>,
}

/// Runs `ApplyDeltas` on `feed`, behind `DedupById` when `dedup`.
fn run_apply(feed: &[Fed], drive: Drive, dedup: bool) -> Views {
    let (blobs_tx, blobs_rx) = tap();
    let (processed_tx, processed_rx) = tap();
    let (applied_tx, applied_rx) = tap();
    let (dead_tx, dead_rx) = tap();
    let (dups_tx, dups_rx) = tap::<Duplicate>();
    let feed = Arc::new(feed.to_vec());
    let guards = timely::execute(timely::Config::process(drive.workers), move |worker| {
        let probe = ProbeHandle::new();
        let input = worker.dataflow::<Time, _, _>(|scope| {
            let (input, deltas) = scope.new_input::<Delta>();
            let deltas = if dedup {
                let (_, known) = scope.new_input::<Uuid>();
                let (unique, dups) = deltas.dedup_by_id(known);
                capture(dups, &dups_tx, &probe);
                unique
            } else {
                deltas
            };
            // Records kept, as the service does: the fold's rows carry them too.
            let out = deltas.apply_deltas(ApplyOptions {
                store_records: true,
                ..ApplyOptions::default()
            });
            capture(out.blobs.inner, &blobs_tx, &probe);
            capture(out.processed.inner, &processed_tx, &probe);
            capture(out.applied.inner, &applied_tx, &probe);
            capture(out.dead_letters.inner, &dead_tx, &probe);
            input
        });
        feed_worker(worker, input, &probe, &feed, drive);
    })
    .expect("start timely");
    join_workers(guards);
    let mut duplicates = drain(&dups_rx);
    duplicates.sort();
    Views {
        blobs: drain_updates(&blobs_rx),
        processed: drain_updates(&processed_rx),
        applied: drain_updates(&applied_rx),
        dead_letters: drain_updates(&dead_rx),
        duplicates,
    }
}

fn drive(workers: usize, end: Time) -> Drive {
    Drive {
        workers,
        end,
        step_each_batch: true,
    }
}

/// `(time, blob, version, doc, diff)` of `blobs` updates, in that order.
fn blob_changes(views: &Views) -> Vec<(Time, Uuid, u64, Value, isize)> {
    let mut changes: Vec<_> = views
        .blobs
        .iter()
        .map(|(row, t, r)| (*t, row.blob_id, row.version, row.doc.value().clone(), *r))
        .collect();
    changes.sort_by_key(|c| (c.0, c.1, c.2, c.4));
    changes
}

/// `(time, delta, version)` of `applied`, checking every diff is +1.
fn applied_at(views: &Views) -> Vec<(Time, Uuid, u64)> {
    let mut out: Vec<_> = views
        .applied
        .iter()
        .map(|(row, t, r)| {
            assert_eq!(*r, 1, "deltas_applied is insert-only: {row:?}");
            (*t, row.delta_id, row.version)
        })
        .collect();
    out.sort();
    out
}

/// `(time, delta, reason)` of `dead_letters`, checking every diff is +1.
fn dead_at(views: &Views) -> Vec<(Time, Option<Uuid>, Reason)> {
    let mut out: Vec<_> = views
        .dead_letters
        .iter()
        .map(|(dl, t, r)| {
            assert_eq!(*r, 1, "dead letters are insert-only: {dl:?}");
            (*t, dl.delta_id, dl.reason.clone())
        })
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// 1. DedupById (S4.2)
// ---------------------------------------------------------------------------------------

#[test]
fn dedup_keeps_the_first_in_log_order_within_a_timestamp() {
    // The same id twice at t=0, with different contents; the later position is fed
    // first (and, with 2 workers, by another worker).
    let later = delta(7, 1, 1, "create", 1, json!({"copy": "later"}));
    let earlier = delta(3, 1, 1, "create", 1, json!({"copy": "earlier"}));
    let other = delta(5, 2, 2, "create", 1, json!({}));
    let feed = vec![fed(0, 0, later), fed(0, 1, other), fed(0, 1, earlier)];
    for workers in [1, 2] {
        let out = run_dedup(&feed, drive(workers, 1));
        assert_eq!(
            out.unique,
            vec![
                (
                    0,
                    SourcePos::at(3),
                    delta_id(1),
                    Some(r#"{"copy":"earlier"}"#.to_owned())
                ),
                (0, SourcePos::at(5), delta_id(2), Some("{}".to_owned())),
            ],
            "workers={workers}"
        );
        assert_eq!(
            out.duplicates,
            vec![(
                0,
                Duplicate {
                    id: delta_id(1),
                    pos: SourcePos::at(7)
                }
            )],
            "workers={workers}"
        );
    }
}

#[test]
fn dedup_drops_a_repeat_in_a_later_timestamp() {
    let feed = vec![
        fed(0, 0, delta(0, 1, 1, "create", 1, json!({}))),
        fed(1, 1, delta(4, 1, 1, "create", 1, json!({"again": true}))),
        fed(1, 0, delta(5, 2, 1, "update", 2, json!({"a": 1}))),
        fed(3, 1, delta(9, 2, 1, "update", 2, json!({"a": 1}))),
        fed(3, 0, delta(8, 1, 1, "create", 1, json!({}))),
    ];
    for workers in [1, 2] {
        let out = run_dedup(&feed, drive(workers, 4));
        let unique: Vec<_> = out.unique.iter().map(|u| (u.0, u.1, u.2)).collect();
        assert_eq!(
            unique,
            vec![
                (0, SourcePos::at(0), delta_id(1)),
                (1, SourcePos::at(5), delta_id(2)),
            ],
            "workers={workers}"
        );
        let dup = |id, pos| Duplicate {
            id: delta_id(id),
            pos: SourcePos::at(pos),
        };
        assert_eq!(
            out.duplicates,
            vec![(1, dup(1, 4)), (3, dup(1, 8)), (3, dup(2, 9))],
            "workers={workers}"
        );
    }
}

#[test]
fn dedup_gives_the_same_sets_on_one_and_two_workers() {
    // 60 records over 12 timestamps, ids drawn from 17 values: many repeats, within
    // and across timestamps. Within a timestamp records are fed in reverse log order.
    let mut feed = Vec::new();
    for time in 0..12u64 {
        let mut batch: Vec<Fed> = (0..5u64)
            .map(|k| {
                let pos = time * 5 + k;
                let id = (pos * 7 + pos / 3) % 17;
                fed(
                    time,
                    pos as usize,
                    delta(pos, id, id % 3, "create", 1, json!({"pos": pos})),
                )
            })
            .collect();
        batch.reverse();
        feed.extend(batch);
    }
    // Expected: the first occurrence of each id in log order passes.
    let mut seen = HashSet::new();
    let (mut unique, mut duplicates) = (Vec::new(), Vec::new());
    let mut in_log_order = feed.clone();
    in_log_order.sort_by_key(|f| f.delta.pos);
    for f in &in_log_order {
        if seen.insert(f.delta.id) {
            unique.push((f.time, f.delta.pos, f.delta.id));
        } else {
            duplicates.push((
                f.time,
                Duplicate {
                    id: f.delta.id,
                    pos: f.delta.pos,
                },
            ));
        }
    }
    unique.sort();
    duplicates.sort();
    assert_eq!(unique.len(), 17);

    let one = run_dedup(&feed, drive(1, 12));
    for (workers, step_each_batch) in [(1, false), (2, true), (2, false)] {
        let run = run_dedup(
            &feed,
            Drive {
                workers,
                end: 12,
                step_each_batch,
            },
        );
        assert_eq!(
            run, one,
            "workers={workers} step_each_batch={step_each_batch}"
        );
    }
    let got: Vec<_> = one.unique.iter().map(|u| (u.0, u.1, u.2)).collect();
    assert_eq!(got, unique);
    assert_eq!(one.duplicates, duplicates);
}

// ---------------------------------------------------------------------------------------
// 2. ApplyDeltas (S3, S4)
// ---------------------------------------------------------------------------------------

/// Two blobs over three timestamps: creates, an update and a transform in one
/// timestamp, a failing patch, a version conflict, a second transform.
fn three_batches() -> Vec<Fed> {
    vec![
        // t=0
        fed(0, 1, delta(1, 2, 2, "create", 1, json!({"content": "b"}))),
        fed(0, 0, delta(0, 1, 1, "create", 1, json!({"content": "a"}))),
        // t=1, fed in reverse log order
        fed(
            1,
            0,
            delta(
                4,
                5,
                2,
                "update",
                2,
                json!([{"op": "remove", "path": "/missing"}]),
            ),
        ),
        fed(1, 1, transform(3, 4, 1, 3, "p1", json!({"tags": ["x"]}))),
        fed(1, 0, delta(2, 3, 1, "update", 2, json!({"content": "a2"}))),
        // t=2
        fed(
            2,
            1,
            delta(5, 6, 1, "update", 3, json!({"content": "late"})),
        ),
        fed(2, 0, transform(6, 7, 1, 4, "p1", json!({"tags": ["y"]}))),
    ]
}

#[test]
fn apply_retracts_the_previous_row_when_a_blob_changes_again() {
    let (a, b) = (blob_id(1), blob_id(2));
    for workers in [1, 2] {
        let views = run_apply(&three_batches(), drive(workers, 3), false);
        let a1 = json!({"content": "a"});
        let a3 = json!({"content": "a2", "tags": ["x"]});
        let a4 = json!({"content": "a2", "tags": ["y"]});
        let b1 = json!({"content": "b"});
        let expected = vec![
            (0, a, 1, a1.clone(), 1),
            (0, b, 1, b1.clone(), 1),
            // Two deltas of A in t=1: one retraction, one insertion. B's failed
            // update changes nothing.
            (1, a, 1, a1, -1),
            (1, a, 3, a3.clone(), 1),
            (2, a, 3, a3, -1),
            (2, a, 4, a4.clone(), 1),
        ];
        assert_eq!(blob_changes(&views), expected, "workers={workers}");

        // Across all times the collection is exactly the final rows.
        let rows = final_rows(&views.blobs);
        assert_eq!(rows.len(), 2, "workers={workers}: {rows:?}");
        let (row_a, row_b) = (&rows[0].0, &rows[1].0);
        assert!(rows.iter().all(|(_, r)| *r == 1));
        assert_eq!((row_a.blob_id, row_a.version), (a, 4));
        assert_eq!(row_a.doc.value(), a4);
        assert_eq!(row_a.user_id, user_id());
        assert_eq!(row_a.content_type, "application/json");
        assert_eq!(row_a.created_at.to_rfc3339(), created_at(0));
        assert_eq!(row_a.updated_at.to_rfc3339(), created_at(6));
        assert_eq!(row_a.deleted_at, None);
        assert_eq!((row_b.blob_id, row_b.version), (b, 1));
        assert_eq!(row_b.doc.value(), b1);
        assert_eq!(row_b.updated_at.to_rfc3339(), created_at(1));
    }
}

#[test]
fn apply_emits_applied_dead_letters_and_processed() {
    let (a, b) = (blob_id(1), blob_id(2));
    for workers in [1, 2] {
        let views = run_apply(&three_batches(), drive(workers, 3), false);
        assert_eq!(
            applied_at(&views),
            vec![
                (0, delta_id(1), 1),
                (0, delta_id(2), 1),
                (1, delta_id(3), 2),
                (1, delta_id(4), 3),
                (2, delta_id(7), 4),
            ],
            "workers={workers}"
        );
        let transform_row = views
            .applied
            .iter()
            .find(|(row, _, _)| row.delta_id == delta_id(4))
            .expect("the transform applied");
        assert_eq!(transform_row.0.operation, Operation::Transform);
        assert_eq!(transform_row.0.provider_id.as_deref(), Some("p1"));
        assert_eq!(transform_row.0.blob_id, a);

        let dead = dead_at(&views);
        assert_eq!(dead.len(), 2, "workers={workers}: {dead:?}");
        assert_eq!((dead[0].0, dead[0].1), (1, Some(delta_id(5))));
        assert!(
            matches!(
                &dead[0].2,
                Reason::PatchFailed {
                    operation: Operation::Update,
                    ..
                }
            ),
            "{:?}",
            dead[0].2
        );
        assert_eq!(
            dead[1],
            (2, Some(delta_id(6)), Reason::VersionConflict { version: 3 })
        );
        let letter = &views.dead_letters[0].0;
        assert_eq!(letter.blob_id, Some(b));
        assert_eq!(letter.pos, SourcePos::at(4));
        assert!(
            std::str::from_utf8(&letter.raw)
                .expect("utf-8")
                .contains(&delta_id(5).to_string()),
            "the raw record is kept"
        );

        let processed = |version, id| ProcessedRow {
            blob_id: a,
            provider_id: "p1".to_owned(),
            version,
            delta_id: delta_id(id),
        };
        assert_eq!(
            views.processed,
            vec![
                (processed(3, 4), 1, 1),
                (processed(3, 4), 2, -1),
                (processed(4, 7), 2, 1),
            ],
            "workers={workers}"
        );
    }
}

#[test]
fn apply_fills_a_gap_split_across_timestamps() {
    let a = blob_id(1);
    let feed = vec![
        fed(0, 0, delta(0, 1, 1, "create", 1, json!({"n": 0}))),
        fed(0, 1, delta(1, 2, 1, "update", 3, json!({"n": 3}))),
        // Also waiting for version 2: the same version again, later in the log.
        fed(1, 0, delta(2, 3, 1, "update", 3, json!({"n": 33}))),
        fed(1, 1, delta(3, 4, 1, "update", 2, json!({"n": 2}))),
    ];
    for workers in [1, 2] {
        let views = run_apply(&feed, drive(workers, 2), false);
        assert_eq!(
            applied_at(&views),
            vec![
                (0, delta_id(1), 1),
                (1, delta_id(2), 3),
                (1, delta_id(4), 2),
            ],
            "workers={workers}"
        );
        assert_eq!(
            blob_changes(&views),
            vec![
                (0, a, 1, json!({"n": 0}), 1),
                (1, a, 1, json!({"n": 0}), -1),
                (1, a, 3, json!({"n": 3}), 1),
            ],
            "workers={workers}"
        );
        assert_eq!(
            dead_at(&views),
            vec![(1, Some(delta_id(3)), Reason::VersionConflict { version: 3 })],
            "workers={workers}"
        );
    }
}

#[test]
fn apply_dead_letters_an_unfilled_gap_at_the_final_time() {
    let end = 7;
    let feed = vec![
        fed(0, 0, delta(0, 1, 1, "create", 1, json!({}))),
        fed(1, 1, delta(1, 2, 1, "update", 3, json!({"n": 3}))),
        // A blob that is never created.
        fed(1, 0, delta(2, 3, 2, "update", 2, json!({"n": 2}))),
        fed(2, 1, delta(3, 4, 1, "update", 4, json!({"n": 4}))),
    ];
    let mut runs = Vec::new();
    for (workers, step_each_batch) in [(1, true), (1, false), (2, true), (2, false)] {
        let views = run_apply(
            &feed,
            Drive {
                workers,
                end,
                step_each_batch,
            },
            false,
        );
        let dead = dead_at(&views);
        assert_eq!(
            dead,
            vec![
                (
                    end,
                    Some(delta_id(2)),
                    Reason::VersionGap {
                        current: 1,
                        version: 3
                    }
                ),
                (
                    end,
                    Some(delta_id(3)),
                    Reason::VersionGap {
                        current: 0,
                        version: 2
                    }
                ),
                (
                    end,
                    Some(delta_id(4)),
                    Reason::VersionGap {
                        current: 1,
                        version: 4
                    }
                ),
            ],
            "workers={workers} step_each_batch={step_each_batch}"
        );
        for (dl, _, _) in &views.dead_letters {
            assert_eq!(dl.reason.kind(), "S4.4 version gap");
            assert!(dl.reason.to_string().starts_with("S4.4 version gap"));
        }
        assert_eq!(applied_at(&views), vec![(0, delta_id(1), 1)]);
        assert_eq!(blob_changes(&views), vec![(0, blob_id(1), 1, json!({}), 1)]);
        runs.push(views);
    }
    for run in &runs[1..] {
        assert_eq!(run, &runs[0]);
    }
}

#[test]
fn apply_resolves_conflicts_in_one_timestamp_by_log_order() {
    // S4.3 within one timestamp, every copy fed in reverse log order: the first in
    // log order wins, whether it applies at once or waits for a gap.
    let a = blob_id(1);
    let log = [
        delta(0, 1, 1, "create", 1, json!({})),
        delta(1, 2, 1, "update", 2, json!({"v2": "early"})),
        delta(2, 3, 1, "update", 2, json!({"v2": "late"})),
        delta(3, 4, 1, "update", 4, json!({"v4": "early"})),
        delta(4, 5, 1, "update", 4, json!({"v4": "late"})),
        delta(5, 6, 1, "update", 3, json!({"v3": true})),
    ];
    let feed: Vec<Fed> = log
        .iter()
        .enumerate()
        .rev()
        .map(|(k, d)| fed(0, k, d.clone()))
        .collect();
    for workers in [1, 2] {
        let views = run_apply(&feed, drive(workers, 1), false);
        assert_eq!(
            applied_at(&views),
            vec![
                (0, delta_id(1), 1),
                (0, delta_id(2), 2),
                (0, delta_id(4), 4),
                (0, delta_id(6), 3),
            ],
            "workers={workers}"
        );
        assert_eq!(
            dead_at(&views),
            vec![
                (0, Some(delta_id(3)), Reason::VersionConflict { version: 2 }),
                (0, Some(delta_id(5)), Reason::VersionConflict { version: 4 }),
            ],
            "workers={workers}"
        );
        assert_eq!(
            blob_changes(&views),
            vec![(
                0,
                a,
                4,
                json!({"v2": "early", "v3": true, "v4": "early"}),
                1
            )],
            "workers={workers}"
        );
    }
}

#[test]
fn apply_gives_the_same_collections_on_one_and_two_workers() {
    // Four blobs, every operation, deletes and reverts, gaps and conflicts, spread
    // over 6 timestamps and fed by alternating workers in reverse log order.
    let mut log = Vec::new();
    let mut next_id = 0;
    let mut add = |log: &mut Vec<Delta>, blob, op: &str, version, patch: Value| {
        let pos = log.len() as u64;
        next_id += 1;
        let d = if op == "transform" {
            transform(
                pos,
                next_id,
                blob,
                version,
                &format!("p{}", blob % 2),
                patch,
            )
        } else {
            delta(pos, next_id, blob, op, version, patch)
        };
        log.push(d);
    };
    for blob in 0..4u64 {
        add(&mut log, blob, "create", 1, json!({"content": blob}));
    }
    for blob in 0..4u64 {
        add(&mut log, blob, "update", 3, json!({"v": 3}));
        add(
            &mut log,
            blob,
            "update",
            2,
            json!([{"op": "add", "path": "/v", "value": 2}]),
        );
        add(&mut log, blob, "transform", 4, json!({"t": blob}));
        add(&mut log, blob, "delete", 5, Value::Null);
        add(&mut log, blob, "update", 6, json!({"after": "delete"}));
        add(
            &mut log,
            blob,
            "revert",
            6,
            json!({"to_version": 2 + blob % 3}),
        );
        add(&mut log, blob, "update", 7, json!({"v": 7}));
        add(&mut log, blob, "update", 9, json!({"never": true}));
    }
    let batches = 6u64;
    let per = log.len().div_ceil(batches as usize);
    let mut feed = Vec::new();
    for (t, chunk) in log.chunks(per).enumerate() {
        for (k, d) in chunk.iter().enumerate().rev() {
            feed.push(fed(t as Time, k, d.clone()));
        }
    }
    let one = run_apply(&feed, drive(1, batches), false);
    assert!(!one.blobs.is_empty() && !one.processed.is_empty());
    assert!(
        one.dead_letters
            .iter()
            .any(|(dl, _, _)| matches!(dl.reason, Reason::Deleted { .. }))
    );
    assert!(
        one.dead_letters
            .iter()
            .any(|(dl, t, _)| *t == batches && matches!(dl.reason, Reason::VersionGap { .. }))
    );
    for (workers, step_each_batch) in [(2, true), (2, false), (1, false)] {
        let run = run_apply(
            &feed,
            Drive {
                workers,
                end: batches,
                step_each_batch,
            },
            false,
        );
        assert_eq!(
            run, one,
            "workers={workers} step_each_batch={step_each_batch}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. The operators add nothing to the ledger: random logs, batchings, worker counts
// ---------------------------------------------------------------------------------------

/// One generated record, before it is put in log order.
#[derive(Clone, Debug)]
struct Gen {
    blob: u64,
    /// Noise: a random `version` instead of the blob's next one in its chain.
    noise: bool,
    version: u64,
    /// Moves the record later in the log (by up to 2.5 versions): ahead-of-gap deltas.
    jitter: u64,
    op: u8,
    patch: u8,
    n: u64,
    /// Below 2: repeat the id of an earlier record (`of`); 0: with its exact text.
    repeat: u8,
    of: usize,
    /// Start a new timestamp before this record, `gap` timestamps later.
    cut: bool,
    gap: u64,
    feeder: usize,
}

fn gen_record() -> impl Strategy<Value = Gen> {
    (
        (
            0..3u64,
            0..6u8,
            1..=6u64,
            0..25u64,
            0..10u8,
            0..8u8,
            0..4u64,
        ),
        (0..12u8, any::<usize>(), 0..3u8, 1..=2u64, 0..2usize),
    )
        .prop_map(
            |((blob, noise, version, jitter, op, patch, n), (repeat, of, cut, gap, feeder))| Gen {
                blob,
                noise: noise == 0,
                version,
                jitter,
                op,
                patch,
                n,
                repeat,
                of,
                cut: cut == 0,
                gap,
                feeder,
            },
        )
}

/// The wire text of a generated record (without its position and timestamp).
fn gen_line(g: &Gen, version: u64, pos: u64, id: u64) -> String {
    let op = if version == 1 {
        // Mostly a create; sometimes another operation at version 1 (S3.1).
        if g.op < 9 { "create" } else { "update" }
    } else {
        match g.op {
            0..=4 => "update",
            5 | 6 => "transform",
            7 => "delete",
            8 => "revert",
            // S3.1: a create must have version 1.
            _ => "create",
        }
    };
    let patch = match op {
        "revert" if g.n == 3 => json!({ "to_version": version }),
        "revert" => json!({ "to_version": 1 + g.n % (version - 1) }),
        "create" => json!({ "content": format!("c{}", g.n) }),
        _ => match g.patch {
            0..=2 => json!({ "content": format!("t{}", g.n), "k1": null }),
            3 | 4 => json!([{ "op": "add", "path": format!("/k{}", g.n % 2), "value": g.n }]),
            // Fails unless /nope exists: never.
            5 => json!([{ "op": "remove", "path": "/nope" }]),
            // Applies only when /k1 is 1.
            6 => {
                json!([{ "op": "test", "path": "/k1", "value": 1 }, { "op": "remove", "path": "/k1" }])
            }
            _ => Value::Null,
        },
    };
    let provider = format!("p{}", g.n % 2);
    let provider = (op == "transform").then_some(provider.as_str());
    line(pos, id, g.blob, op, version, patch, provider)
}

/// Puts generated records in log order: each blob's chain of versions 1, 2, ... with
/// records moved later by their jitter, noise records anywhere, repeats of earlier
/// ids, cut into timestamps. Returns `(time, feeder, text)` in log order.
fn build_log(gens: &[Gen]) -> Vec<(Time, usize, String)> {
    let mut next_version: BTreeMap<u64, u64> = BTreeMap::new();
    let mut keyed: Vec<(u64, usize, u64)> = Vec::new(); // (sort key, gen index, version)
    for (i, g) in gens.iter().enumerate() {
        let next = next_version.entry(g.blob).or_insert(1);
        let version = if g.noise || *next > 6 {
            g.version
        } else {
            *next += 1;
            *next - 1
        };
        keyed.push((version * 10 + g.jitter, i, version));
    }
    keyed.sort();
    let mut out: Vec<(Time, usize, String)> = Vec::new();
    let mut time = 0;
    for (pos, &(_, i, version)) in keyed.iter().enumerate() {
        let g = &gens[i];
        let pos = pos as u64;
        if g.cut && pos > 0 {
            time += g.gap;
        }
        let text = match (g.repeat, out.get(g.of % out.len().max(1))) {
            (0, Some((_, _, earlier))) => earlier.clone(),
            (1, Some((_, _, earlier))) => {
                // Same id as an earlier record, its own contents.
                let earlier: Value = serde_json::from_str(earlier).expect("json");
                let id = Uuid::parse_str(earlier["id"].as_str().expect("id")).expect("uuid");
                gen_line(g, version, pos, id.as_u128() as u64)
            }
            _ => gen_line(g, version, pos, 1000 + pos),
        };
        out.push((time, g.feeder, text));
    }
    out
}

/// The sequential fold: dedup in log order, one ledger per blob, expire, flush.
struct Folded {
    blobs: Vec<(BlobRow, isize)>,
    processed: Vec<(ProcessedRow, isize)>,
    applied: Vec<AppliedRow>,
    dead_letters: Vec<DeadLetter>,
    duplicates: Vec<Duplicate>,
}

fn fold(log: &[Delta]) -> Folded {
    let mut seen = HashSet::new();
    let mut ledgers: BTreeMap<Uuid, BlobLedger> = BTreeMap::new();
    let mut fx = Effects::default();
    let mut duplicates = Vec::new();
    for d in log {
        if !seen.insert(d.id) {
            duplicates.push(Duplicate {
                id: d.id,
                pos: d.pos,
            });
            continue;
        }
        ledgers
            .entry(d.blob_id)
            .or_default()
            .offer(d.clone(), &mut fx);
    }
    for ledger in ledgers.values_mut() {
        ledger.expire_pending(&mut fx);
    }
    let (mut blobs, mut processed) = (Vec::new(), Vec::new());
    for ledger in ledgers.values_mut() {
        ledger.flush(&mut blobs, &mut processed);
    }
    consolidate(&mut blobs);
    consolidate(&mut processed);
    fx.applied.sort();
    fx.dead_letters.sort();
    duplicates.sort();
    Folded {
        blobs,
        processed,
        applied: fx.applied,
        dead_letters: fx.dead_letters,
        duplicates,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn operators_agree_with_a_sequential_ledger_fold(
        gens in prop::collection::vec(gen_record(), 1..28),
        workers in 1..=2usize,
        step_each_batch in any::<bool>(),
        seed in any::<u64>(),
        extra in 1..3u64,
        dedup in any::<bool>(),
    ) {
        let lines = build_log(&gens);
        let mut log: Vec<Delta> = lines
            .iter()
            .enumerate()
            .map(|(pos, (_, _, text))| parse(text, pos as u64))
            .collect();
        let mut lines = lines;
        if !dedup {
            // ApplyDeltas alone, fed the first of each id (it expects deduplicated input).
            let mut seen = HashSet::new();
            let keep: Vec<bool> = log.iter().map(|d| seen.insert(d.id)).collect();
            let mut k = keep.iter();
            log.retain(|_| *k.next().expect("same length"));
            let mut k = keep.iter();
            lines.retain(|_| *k.next().expect("same length"));
        }
        // Feed each timestamp's records in a random order.
        let mut feed: Vec<Fed> = lines
            .iter()
            .zip(&log)
            .map(|((time, feeder, _), d)| fed(*time, *feeder, d.clone()))
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        for batch in feed.chunk_by_mut(|x, y| x.time == y.time) {
            batch.shuffle(&mut rng);
        }
        let end = feed.last().map_or(0, |f| f.time) + extra;
        let views = run_apply(&feed, Drive { workers, end, step_each_batch }, dedup);
        let expected = fold(&log);

        prop_assert_eq!(final_rows(&views.blobs), expected.blobs);
        prop_assert_eq!(final_rows(&views.processed), expected.processed);
        let mut applied = Vec::new();
        for (row, _, diff) in &views.applied {
            prop_assert_eq!(*diff, 1);
            applied.push(row.clone());
        }
        applied.sort();
        prop_assert_eq!(applied, expected.applied);
        let mut dead = Vec::new();
        for (dl, time, diff) in &views.dead_letters {
            prop_assert_eq!(*diff, 1);
            prop_assert!(*time <= end);
            if matches!(dl.reason, Reason::VersionGap { .. }) {
                prop_assert_eq!(*time, end, "gap letters come at the final time");
            }
            dead.push(dl.clone());
        }
        dead.sort();
        prop_assert_eq!(dead, expected.dead_letters);
        let mut duplicates: Vec<Duplicate> =
            views.duplicates.iter().map(|(_, d)| d.clone()).collect();
        duplicates.sort();
        prop_assert_eq!(duplicates, expected.duplicates);
        // Per blob, each time inserts at most one row, and versions only go up.
        let mut inserted: Vec<(Uuid, Time, u64)> = views
            .blobs
            .iter()
            .filter(|(_, _, diff)| *diff > 0)
            .map(|(row, time, _)| (row.blob_id, *time, row.version))
            .collect();
        inserted.sort();
        for pair in inserted.windows(2) {
            if pair[0].0 == pair[1].0 {
                prop_assert!(pair[0].1 < pair[1].1 && pair[0].2 < pair[1].2, "{:?}", inserted);
            }
        }
    }
}
