//! Synthetic delta logs that obey SPEC S3/S4, for the bundled sample, tests and load
//! tests (`studio gen`).
//!
//! Every blob gets a create and then a chain of versions using all five operations and
//! both patch formats; documents follow one shape
//! (`{"schema","title","content","tags","stats"}`) at every version, so every generated
//! JSON Patch applies whichever version a revert went back to. With [`Faults`] the log
//! also carries duplicates, malformed lines and local reordering: replaying it must
//! accept exactly the deltas of the fault-free log.

use std::io::{self, Write};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Timestamp;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenSpec {
    /// Number of blobs (each gets a create).
    pub blobs: u64,
    /// Number of valid deltas in all (at least `blobs`).
    pub deltas: u64,
    /// Seed: the same spec and seed give the same log.
    pub seed: u64,
    /// Faults mixed in.
    pub faults: Faults,
}

/// Bad input mixed into a generated log, each rate per valid delta.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Probability that a delta is sent again a little later (S4.2).
    pub duplicate_rate: f64,
    /// Probability that a malformed line is inserted (S1.1).
    pub malformed_rate: f64,
    /// Lines are shuffled within windows of this many lines (0 or 1: in order).
    pub shuffle_window: usize,
}

/// Counts of what a generated log holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Lines written.
    pub lines: u64,
    /// Valid records (all of them apply): deltas, and the `read` grants that make
    /// their edges to other users' blobs allowed (S6.4).
    pub valid: u64,
    /// Extra copies of valid deltas.
    pub duplicates: u64,
    /// Malformed lines.
    pub malformed: u64,
}

const WORDS: &[&str] = &[
    "stream", "delta", "blob", "version", "provider", "graph", "summary", "draft", "edit", "merge",
    "patch", "state", "order", "event", "query", "view", "index", "worker", "batch", "frontier",
    "the", "a", "of", "and", "to", "in", "is", "for", "with", "on", "that", "it", "quick", "brown",
    "fox", "jumps", "over", "lazy", "dog", "their", "there", "its", "it's",
];
const PROVIDERS: &[&str] = &["grammar-checker", "content-expander", "render-html"];
const CONTENT_TYPES: &[&str] = &["text/markdown", "text/plain", "application/json"];

struct Blob {
    id: Uuid,
    owner: Uuid,
    version: u64,
    deleted: bool,
}

/// Writes a log for `spec` to `out`, one JSON object per line.
pub fn generate(spec: &GenSpec, out: &mut impl Write) -> io::Result<GenStats> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let blob_count = spec.blobs.max(1) as usize;
    let total = spec.deltas.max(blob_count as u64) as usize;
    let users: Vec<Uuid> = (0..blob_count.div_ceil(10))
        .map(|_| uuid(&mut rng))
        .collect();
    let mut blobs: Vec<Blob> = (0..blob_count)
        .map(|_| Blob {
            id: uuid(&mut rng),
            owner: users[rng.random_range(0..users.len())],
            version: 0,
            deleted: false,
        })
        .collect();

    // Each blob's k-th appearance in the schedule is its version k.
    let mut schedule: Vec<u32> = (0..blob_count as u32).collect();
    schedule.extend((blob_count..total).map(|_| rng.random_range(0..blob_count as u32)));
    schedule.shuffle(&mut rng);

    let start_ms = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let mut stats = GenStats::default();
    let mut window: Vec<String> = Vec::new();
    let mut delayed: Vec<(usize, String)> = Vec::new();
    let mut created: Vec<usize> = Vec::new();
    // Blobs whose create is still in the shuffle window (it may yet land anywhere in it).
    let mut unwritten: Vec<usize> = Vec::new();
    for (i, &b) in schedule.iter().enumerate() {
        let at = Timestamp::from_unix_millis(start_ms + i as i64 * 250).expect("in range");
        let mut delta = next_delta(&mut rng, &mut blobs[b as usize], at);
        let grant = link(
            &mut rng,
            &mut delta,
            &blobs,
            b as usize,
            &mut created,
            &unwritten,
        );
        if blobs[b as usize].version == 1 {
            unwritten.push(b as usize);
        }
        let line = delta.to_string();
        let malformed_from = line.clone();
        // A grant stays right before its delta, whatever the shuffle (and so does a
        // duplicate's): one entry of two lines.
        let entry = match grant {
            Some(grant) => format!("{grant}\n{line}"),
            None => line,
        };
        let records = 1 + u64::from(entry.contains('\n'));
        stats.valid += records;
        if rng.random_bool(spec.faults.duplicate_rate) {
            delayed.push((i + rng.random_range(0..64), entry.clone()));
            stats.duplicates += records;
        }
        let malformed = rng
            .random_bool(spec.faults.malformed_rate)
            .then(|| malformed(&mut rng, &malformed_from));
        window.push(entry);
        if let Some(bad) = malformed {
            window.push(bad);
            stats.malformed += 1;
        }
        delayed.retain(|(due, line)| {
            let now = *due <= i;
            if now {
                window.push(line.clone());
            }
            !now
        });
        if window.len() >= spec.faults.shuffle_window.max(1) {
            stats.lines += flush(&mut rng, &mut window, spec.faults.shuffle_window, out)?;
            unwritten.clear();
        }
    }
    window.extend(delayed.into_iter().map(|(_, line)| line));
    stats.lines += flush(&mut rng, &mut window, spec.faults.shuffle_window, out)?;
    Ok(stats)
}

fn flush(
    rng: &mut StdRng,
    window: &mut Vec<String>,
    shuffle: usize,
    out: &mut impl Write,
) -> io::Result<u64> {
    if shuffle > 1 {
        window.shuffle(rng);
    }
    // An entry is one line, or a grant and its delta.
    let n = window
        .iter()
        .map(|l| 1 + l.matches('\n').count() as u64)
        .sum();
    for line in window.drain(..) {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(n)
}

fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

fn words(rng: &mut StdRng, lo: usize, hi: usize) -> String {
    let n = rng.random_range(lo..=hi);
    let mut text = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            text.push(if rng.random_ratio(1, 12) { '\n' } else { ' ' });
        }
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    text
}

/// The next valid delta of `blob`, advancing its version.
fn next_delta(rng: &mut StdRng, blob: &mut Blob, at: Timestamp) -> Value {
    blob.version += 1;
    let v = blob.version;
    let mut d = json!({
        "id": uuid(rng),
        "blob_id": blob.id,
        "user_id": blob.owner,
        "version": v,
        "created_at": at.to_rfc3339(),
    });
    let roll = rng.random_range(0..100);
    let (operation, patch, metadata) = if v == 1 {
        let content = words(rng, 30, 200);
        let doc = json!({
            "schema": "studio.doc/v1",
            "title": words(rng, 2, 6),
            "content": content,
            "tags": [WORDS[rng.random_range(0..WORDS.len())]],
            "stats": {"words": content.split_whitespace().count()},
        });
        let ct = CONTENT_TYPES[rng.random_range(0..CONTENT_TYPES.len())];
        ("create", Some(doc), Some(json!({"content_type": ct})))
    } else if blob.deleted {
        blob.deleted = false;
        // Back to a version before the delete (the delete made version v - 1).
        let to = rng.random_range(1..v - 1);
        ("revert", Some(json!({"to_version": to})), None)
    } else if roll < 35 {
        ("update", Some(json_patch_ops(rng, v)), None)
    } else if roll < 65 {
        let patch = if rng.random_bool(0.3) {
            json!({"content": words(rng, 20, 120), "draft": null})
        } else {
            json!({"title": words(rng, 2, 6), "stats": {"edits": v}, "draft": rng.random_bool(0.5)})
        };
        ("update", Some(patch), None)
    } else if roll < 70 {
        // A merge patch that is an array, forced by patch_format: replaces /tags.
        let tags = json!({"tags": [WORDS[rng.random_range(0..WORDS.len())], "edited"]});
        (
            "update",
            Some(tags),
            Some(json!({"patch_format": "merge-patch"})),
        )
    } else if roll < 88 {
        let provider = PROVIDERS[rng.random_range(0..PROVIDERS.len())];
        d["provider_id"] = json!(provider);
        let patch = (!rng.random_ratio(1, 6)).then(|| {
            json!({"annotations": {provider: {"source_version": v - 1, "issues": rng.random_range(0..5)}}})
        });
        ("transform", patch, Some(json!({"source_version": v - 1})))
    } else if roll < 93 && v > 2 {
        (
            "revert",
            Some(json!({"to_version": rng.random_range(1..v - 1)})),
            None,
        )
    } else if roll < 96 {
        blob.deleted = true;
        ("delete", None, None)
    } else {
        (
            "update",
            Some(json_patch_ops(rng, v)),
            Some(json!({"patch_format": "json-patch"})),
        )
    };
    d["operation"] = json!(operation);
    if let Some(patch) = patch {
        d["patch"] = patch;
    }
    if let Some(metadata) = metadata {
        d["metadata"] = metadata;
    }
    d
}

/// Adds DAG edges (S5.1): a third of the creates derive from an earlier blob
/// (`parent_id`), and one update in fifty links to another blob (`child_ids`), which
/// may not exist yet or may close a cycle (then the edge is refused, the delta applies).
/// Returns the grant record to write before the delta when the other end is an
/// existing blob of another user: its owner grants `read` (S6.4). The grant's id
/// derives from the delta's. An edge to another user's blob whose create is still in
/// the shuffle window (`unwritten`) is left out: the shuffle could put the grant
/// before that create, which would refuse it (S6.1) and the edge's delta (S6.2).
fn link(
    rng: &mut StdRng,
    delta: &mut Value,
    blobs: &[Blob],
    this: usize,
    created: &mut Vec<usize>,
    unwritten: &[usize],
) -> Option<Value> {
    let other = if delta["operation"] == "create" {
        let parent = (!created.is_empty() && rng.random_ratio(1, 3))
            .then(|| created[rng.random_range(0..created.len())]);
        if let Some(parent) = parent {
            delta["parent_id"] = json!(blobs[parent].id);
        }
        created.push(this);
        parent
    } else if delta["operation"] == "update" && rng.random_ratio(1, 50) {
        let child = rng.random_range(0..blobs.len());
        delta["child_ids"] = json!([blobs[child].id]);
        Some(child).filter(|&c| blobs[c].version > 0)
    } else {
        None
    };
    let other_index = other?;
    let (other, user) = (&blobs[other_index], blobs[this].owner);
    if other.owner == user {
        return None;
    }
    if unwritten.contains(&other_index) {
        let obj = delta.as_object_mut().expect("an object");
        obj.remove("parent_id");
        obj.remove("child_ids");
        return None;
    }
    Some({
        let delta_id: Uuid = serde_json::from_value(delta["id"].clone()).expect("a UUID");
        json!({
            "id": Uuid::new_v5(&delta_id, b"read grant"),
            "kind": "grant",
            "blob_id": other.id,
            "user_id": user,
            "permission": "read",
            "granted_by": other.owner,
            "created_at": delta["created_at"],
        })
    })
}

/// A JSON Patch that applies to every document of the generated shape.
fn json_patch_ops(rng: &mut StdRng, v: u64) -> Value {
    let mut ops = vec![json!({"op": "test", "path": "/schema", "value": "studio.doc/v1"})];
    for _ in 0..rng.random_range(1..=3) {
        ops.push(match rng.random_range(0..5) {
            0 => json!({"op": "replace", "path": "/content", "value": words(rng, 10, 80)}),
            1 => json!({"op": "add", "path": "/tags/-", "value": WORDS[rng.random_range(0..WORDS.len())]}),
            2 => json!({"op": "replace", "path": "/stats/words", "value": rng.random_range(1..500)}),
            3 => json!({"op": "copy", "from": "/title", "path": "/subtitle"}),
            _ => json!({"op": "add", "path": "/stats/revision", "value": v}),
        });
    }
    Value::Array(ops)
}

/// A malformed line derived from a valid one.
fn malformed(rng: &mut StdRng, valid: &str) -> String {
    match rng.random_range(0..6) {
        0 => valid[..valid.len() / 2].to_owned(),
        1 => valid.replacen("\"version\":", "\"version_\":", 1),
        2 => valid.replacen("\"blob_id\":\"", "\"blob_id\":\"x", 1),
        3 => "not json at all".to_owned(),
        4 => String::new(),
        _ => valid.replacen("\"created_at\":\"", "\"created_at\":\"yesterday ", 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_log() {
        let spec = GenSpec {
            blobs: 20,
            deltas: 300,
            seed: 7,
            faults: Faults::default(),
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let sa = generate(&spec, &mut a).unwrap();
        generate(&spec, &mut b).unwrap();
        assert_eq!(a, b);
        // 300 deltas, and a read grant before each edge to another user's blob.
        let grants = String::from_utf8(a.clone())
            .unwrap()
            .matches("\"kind\":\"grant\"")
            .count();
        assert!(grants > 0);
        assert_eq!(sa.valid, 300 + grants as u64);
        assert_eq!(sa.lines, sa.valid);
        assert_eq!(a.iter().filter(|&&c| c == b'\n').count() as u64, sa.lines);
    }

    #[test]
    fn faults_add_lines_and_are_counted() {
        let faults = Faults {
            duplicate_rate: 0.1,
            malformed_rate: 0.05,
            shuffle_window: 16,
        };
        let spec = GenSpec {
            blobs: 20,
            deltas: 1000,
            seed: 3,
            faults,
        };
        let mut out = Vec::new();
        let s = generate(&spec, &mut out).unwrap();
        assert!(s.duplicates > 0 && s.malformed > 0);
        assert_eq!(s.lines, s.valid + s.duplicates + s.malformed);
        assert_eq!(out.iter().filter(|&&c| c == b'\n').count() as u64, s.lines);
    }
}
