//! [`PendingTriggers`]: blobs × providers -> the pending transform requests (S5.3–S5.6).
//!
//! ```text
//!  blob facts     --exchange by blob------+
//!  derived blobs  --exchange by source----+--> [ PendingTriggers ] --> requests (collection)
//!  settlements    --exchange by blob------+     state per blob:
//!  provider changes --broadcast-----------+     facts, derived, settled fingerprints,
//!                                                the request emitted per provider
//! ```
//!
//! Each worker keeps, for the blobs routed to it, what [`Provider::trigger`] needs and
//! the request it last emitted per provider. When a timestamp completes it applies the
//! provider changes, settlements, derived blobs and facts of that time, re-evaluates
//! the touched (blob, provider) pairs, and emits the difference: `-old +new`. So a new
//! version supersedes the old request (S5.5), a settlement retracts it, and
//! registering, changing or removing a provider re-evaluates that provider alone
//! against the blobs (S5.3). A request whose derived blobs changed keeps its id and is
//! re-emitted with the new state.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use studio_model::delta::route;
use studio_model::{BlobFacts, DerivedRef, Fingerprint, Provider, Settled, TransformRequest, Uuid};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::stash::Stash;

/// A change to the registry: `(id, Some(provider))` registers or replaces it,
/// `(id, None)` removes it.
pub type ProviderChange = (String, Option<Provider>);

/// Computes the pending transform requests.
pub trait PendingTriggers<'scope, T: Timestamp> {
    /// `self` are the blob facts (from `ApplyDeltas` with `track_facts`).
    fn pending_triggers(
        self,
        settled: StreamVec<'scope, T, Settled>,
        providers: StreamVec<'scope, T, ProviderChange>,
    ) -> VecCollection<'scope, T, TransformRequest>;
}

/// What one worker knows of one blob.
#[derive(Default)]
struct BlobTriggers {
    facts: Option<BlobFacts>,
    /// Blobs derived from this one, by provider and derived blob.
    derived: Vec<DerivedRef>,
    /// Per provider, the fingerprints its latest processing settled (the latest
    /// settlement replaces the earlier ones: returning to an older content processes
    /// it again, so that annotations always describe the current content).
    settled: FxHashMap<String, Vec<Fingerprint>>,
    /// Per provider, the request emitted and not retracted.
    emitted: BTreeMap<String, TransformRequest>,
}

impl BlobTriggers {
    fn evaluate(&self, provider: &Provider) -> Option<TransformRequest> {
        let facts = self.facts.as_ref()?;
        let settled = self
            .settled
            .get(&provider.id)
            .map_or(&[][..], Vec::as_slice);
        provider.trigger(facts, settled, &self.derived).ok()
    }

    /// Makes `new` the request emitted for `provider_id`: `-old +new` into `changes`
    /// when they differ.
    fn replace(
        &mut self,
        provider_id: &str,
        new: Option<TransformRequest>,
        changes: &mut Vec<(TransformRequest, isize)>,
    ) {
        if self.emitted.get(provider_id) == new.as_ref() {
            return;
        }
        if let Some(old) = self.emitted.remove(provider_id) {
            changes.push((old, -1));
        }
        if let Some(new) = new {
            changes.push((new.clone(), 1));
            self.emitted.insert(provider_id.to_owned(), new);
        }
    }
}

impl<'scope, T: Timestamp + TotalOrder> PendingTriggers<'scope, T>
    for StreamVec<'scope, T, BlobFacts>
{
    fn pending_triggers(
        self,
        settled: StreamVec<'scope, T, Settled>,
        providers: StreamVec<'scope, T, ProviderChange>,
    ) -> VecCollection<'scope, T, TransformRequest> {
        let derived =
            timely::dataflow::operators::vec::Map::flat_map(self.clone(), |f| f.as_derived());
        let providers = providers.broadcast();
        let mut builder = OperatorBuilder::new("PendingTriggers".to_owned(), self.scope());
        let mut facts_in =
            builder.new_input(self, Exchange::new(|f: &BlobFacts| route(f.row.blob_id)));
        let mut derived_in = builder.new_input(
            derived,
            Exchange::new(|d: &DerivedRef| route(d.source_blob_id)),
        );
        let mut settled_in =
            builder.new_input(settled, Exchange::new(|s: &Settled| route(s.blob_id)));
        let mut providers_in =
            builder.new_input(providers, timely::dataflow::channels::pact::Pipeline);
        let (requests_out, requests) = builder.new_output();
        let mut requests_out = OutputBuilder::<
            _,
            CapacityContainerBuilder<Vec<(TransformRequest, T, isize)>>,
        >::from(requests_out);

        builder.build(move |_initial_caps| {
            let mut facts_stash = Stash::new(1);
            let mut derived_stash = Stash::new(1);
            let mut settled_stash = Stash::new(1);
            let mut providers_stash = Stash::new(1);
            let mut triggers = Triggers::default();

            move |frontiers| {
                facts_stash.absorb(&mut facts_in);
                derived_stash.absorb(&mut derived_in);
                settled_stash.absorb(&mut settled_in);
                providers_stash.absorb(&mut providers_in);
                let complete = |t: &T| frontiers.iter().all(|f| !f.less_equal(t));

                // Everything of each completed time, by time.
                let mut work: BTreeMap<T, Work<T>> = BTreeMap::new();
                for (t, (caps, data)) in providers_stash.take_where(complete) {
                    work.entry(t).or_insert_with(|| Work::new(caps)).providers = data;
                }
                for (t, (caps, data)) in settled_stash.take_where(complete) {
                    work.entry(t).or_insert_with(|| Work::new(caps)).settled = data;
                }
                for (t, (caps, data)) in derived_stash.take_where(complete) {
                    work.entry(t).or_insert_with(|| Work::new(caps)).derived = data;
                }
                for (t, (caps, data)) in facts_stash.take_where(complete) {
                    work.entry(t).or_insert_with(|| Work::new(caps)).facts = data;
                }

                let mut session = requests_out.activate();
                for (time, work) in work {
                    let cap = work.cap.clone();
                    let changes = triggers.apply_time(work);
                    session.session(&cap).give_iterator(
                        changes
                            .into_iter()
                            .map(|(request, diff)| (request, time.clone(), diff)),
                    );
                }
            }
        });
        requests.as_collection()
    }
}

/// What one worker knows: the registry, and the blobs routed to it.
#[derive(Default)]
struct Triggers {
    registry: BTreeMap<String, Provider>,
    blobs: FxHashMap<Uuid, BlobTriggers>,
}

impl Triggers {
    /// Applies one completed time's inputs; returns the requests' changes.
    fn apply_time<T: Timestamp>(&mut self, work: Work<T>) -> Vec<(TransformRequest, isize)> {
        // The registry first: a changed provider is re-evaluated on every blob.
        let changed_providers = self.register(work.providers);
        // Then the blob-side inputs; the touched blobs are re-evaluated.
        let touched = self.absorb(work.settled, work.derived, work.facts);
        let mut changes = Vec::new();
        for id in &changed_providers {
            let provider = self.registry.get(id);
            for state in self.blobs.values_mut() {
                let new = provider.and_then(|p| state.evaluate(p));
                state.replace(id, new, &mut changes);
            }
        }
        for blob in touched {
            let state = self.blobs.get_mut(&blob).expect("touched blobs have state");
            for provider in self.registry.values() {
                let new = state.evaluate(provider);
                state.replace(&provider.id, new, &mut changes);
            }
        }
        changes
    }

    /// Registers, replaces or removes providers; returns the ids changed, sorted.
    fn register(&mut self, changes: Vec<ProviderChange>) -> Vec<String> {
        let mut changed = Vec::new();
        for (id, provider) in changes {
            match provider {
                Some(p) => self.registry.insert(id.clone(), p),
                None => self.registry.remove(&id),
            };
            changed.push(id);
        }
        changed.sort();
        changed.dedup();
        changed
    }

    /// Records settlements, derived blobs and facts; returns the blobs touched, sorted.
    fn absorb(
        &mut self,
        settled: Vec<Settled>,
        derived: Vec<DerivedRef>,
        facts: Vec<BlobFacts>,
    ) -> Vec<Uuid> {
        let mut touched: Vec<Uuid> = Vec::new();
        for s in settled {
            touched.push(s.blob_id);
            let state = self.blobs.entry(s.blob_id).or_default();
            let fingerprints = s.fingerprints();
            state.settled.insert(s.provider_id, fingerprints);
        }
        for d in derived {
            touched.push(d.source_blob_id);
            let state = self.blobs.entry(d.source_blob_id).or_default();
            state.derived.retain(|old| {
                (old.provider_id.as_str(), old.blob_id) != (d.provider_id.as_str(), d.blob_id)
            });
            state.derived.push(d);
        }
        for f in facts {
            let blob = f.row.blob_id;
            touched.push(blob);
            self.blobs.entry(blob).or_default().facts = Some(f);
        }
        touched.sort_unstable();
        touched.dedup();
        touched
    }
}

/// The inputs of one completed time, and a capability to emit at it.
struct Work<T: Timestamp> {
    cap: timely::dataflow::operators::Capability<T>,
    providers: Vec<ProviderChange>,
    settled: Vec<Settled>,
    derived: Vec<DerivedRef>,
    facts: Vec<BlobFacts>,
}

impl<T: Timestamp> Work<T> {
    fn new(mut caps: Vec<timely::dataflow::operators::Capability<T>>) -> Self {
        Work {
            cap: caps.pop().expect("one port"),
            providers: Vec::new(),
            settled: Vec::new(),
            derived: Vec::new(),
            facts: Vec::new(),
        }
    }
}
