//! `PendingTriggers` on real timely workers (1 and 2): the registry changes the
//! pending requests incrementally (S5.3) — a provider registered mid-stream gets
//! requests for the blobs that already exist, a changed provider is re-evaluated, a
//! removed one retracts its requests — and settlements and new versions retract or
//! replace them (S5.4, S5.5).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::consolidation::consolidate_updates;
use serde_json::json;
use studio_model::{
    BlobFacts, BlobRow, Doc, Operation, Provider, Settled, Timestamp, TransformRequest, Uuid,
};
use studio_operators::{PendingTriggers, ProviderChange};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::capture::{Capture, Extract};
use timely::dataflow::operators::vec::input::Input;

type Time = u64;

/// What is fed at one time.
#[derive(Clone, Default)]
struct Step {
    facts: Vec<BlobFacts>,
    settled: Vec<Settled>,
    providers: Vec<ProviderChange>,
}

fn facts(blob: u128, version: u64, content_type: &str, content: &str) -> BlobFacts {
    let t = Timestamp::parse_rfc3339("2026-11-01T10:00:00Z").unwrap();
    BlobFacts {
        row: BlobRow {
            blob_id: Uuid::from_u128(blob),
            user_id: Uuid::from_u128(99),
            version,
            content_type: content_type.into(),
            doc: Doc::new(json!({"content": content})),
            parent_id: None,
            created_at: t,
            updated_at: t,
            deleted_at: None,
        },
        last_operation: if version == 1 {
            Operation::Create
        } else {
            Operation::Update
        },
        last_delta_id: Uuid::from_u128(blob * 1000 + u128::from(version)),
        last_user_id: Uuid::from_u128(99),
        last_provider: None,
        last_metadata_keys: Vec::new(),
        created_by: None,
    }
}

fn provider(id: &str, types: &[&str]) -> Provider {
    serde_json::from_value(json!({"id": id, "blob_types": types})).unwrap()
}

/// Runs the steps (step i at time i) on `workers` workers, feeding from worker 0, and
/// returns the pending set after each time: (provider, blob, version) sorted.
fn run(steps: Vec<Step>, workers: usize) -> Vec<Vec<(String, u128, u64)>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let n = steps.len() as Time;
    timely::execute(timely::Config::process(workers), move |worker| {
        let tx = tx.lock().unwrap().clone();
        let probe = ProbeHandle::new();
        let (mut facts_in, mut settled_in, mut providers_in) =
            worker.dataflow::<Time, _, _>(|scope| {
                let (facts_in, facts) = scope.new_input::<BlobFacts>();
                let (settled_in, settled) = scope.new_input::<Settled>();
                let (providers_in, providers) = scope.new_input::<ProviderChange>();
                facts
                    .pending_triggers(settled, providers)
                    .inner
                    .probe_with(&probe)
                    .capture_into(tx);
                (facts_in, settled_in, providers_in)
            });
        for (t, step) in steps.iter().enumerate() {
            let t = t as Time;
            if worker.index() == 0 {
                step.facts.iter().cloned().for_each(|f| facts_in.send(f));
                step.settled
                    .iter()
                    .cloned()
                    .for_each(|s| settled_in.send(s));
                step.providers
                    .iter()
                    .cloned()
                    .for_each(|p| providers_in.send(p));
            }
            facts_in.advance_to(t + 1);
            settled_in.advance_to(t + 1);
            providers_in.advance_to(t + 1);
            worker.step_while(|| probe.less_than(&(t + 1)));
        }
    })
    .unwrap()
    .join()
    .into_iter()
    .for_each(|r| r.unwrap());
    let mut updates: Vec<(TransformRequest, Time, isize)> = rx
        .extract()
        .into_iter()
        .flat_map(|(_, data)| data)
        .collect();
    consolidate_updates(&mut updates);
    (0..n)
        .map(|t| {
            let mut state: BTreeMap<(String, u128, u64), isize> = BTreeMap::new();
            for (r, time, diff) in &updates {
                if *time <= t {
                    *state
                        .entry((r.provider_id.clone(), r.blob_id.as_u128(), r.version))
                        .or_default() += diff;
                }
            }
            assert!(state.values().all(|d| *d == 0 || *d == 1), "{state:?}");
            state
                .into_iter()
                .filter(|(_, d)| *d == 1)
                .map(|(k, _)| k)
                .collect()
        })
        .collect()
}

fn p(id: &str, blob: u128, version: u64) -> (String, u128, u64) {
    (id.to_string(), blob, version)
}

#[test]
fn the_registry_changes_pending_triggers_incrementally() {
    let steps = vec![
        // t0: two blobs exist before any provider.
        Step {
            facts: vec![
                facts(1, 1, "text/plain", "a"),
                facts(2, 1, "text/markdown", "b"),
            ],
            ..Step::default()
        },
        // t1: a provider for text/* registers mid-stream: both blobs become pending.
        Step {
            providers: vec![("g".into(), Some(provider("g", &["text/*"])))],
            ..Step::default()
        },
        // t2: it changes to markdown only: blob 1's request is retracted.
        Step {
            providers: vec![("g".into(), Some(provider("g", &["text/markdown"])))],
            ..Step::default()
        },
        // t3: a second provider registers; blob 2 gets a new version (g's request moves).
        Step {
            providers: vec![("h".into(), Some(provider("h", &[])))],
            facts: vec![facts(2, 2, "text/markdown", "b2")],
            ..Step::default()
        },
        // t4: g is removed; h settles blob 1 at its current content.
        Step {
            providers: vec![("g".into(), None)],
            settled: vec![Settled {
                provider_id: "h".into(),
                blob_id: Uuid::from_u128(1),
                fingerprint: provider("h", &[]).fingerprint(&json!({"content": "a"})),
                output_fingerprint: None,
            }],
            ..Step::default()
        },
    ];
    for workers in [1, 2] {
        let pending = run(steps.clone(), workers);
        assert_eq!(pending[0], vec![], "no provider yet");
        assert_eq!(pending[1], vec![p("g", 1, 1), p("g", 2, 1)]);
        assert_eq!(pending[2], vec![p("g", 2, 1)]);
        assert_eq!(
            pending[3],
            vec![p("g", 2, 2), p("h", 1, 1), p("h", 2, 2)],
            "the new version superseded g's older request"
        );
        assert_eq!(
            pending[4],
            vec![p("h", 2, 2)],
            "g removed, h settled on blob 1"
        );
    }
}
