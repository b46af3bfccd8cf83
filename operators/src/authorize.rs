//! [`Authorize`]: access control (SPEC S6) in front of [`ApplyDeltas`](crate::ApplyDeltas).
//!
//! ```text
//!  deltas (deduplicated) + grant records --exchange to worker 0--> [ Authorize: AccessControl ]
//!      --> authorized deltas (to ApplyDeltas, which exchanges them by blob)
//!      --> dead letters (S6.1, S6.2; S4.4 for deltas of blobs never created)
//!      --> grants, grant_log, waiting (deltas held until their blob is created)
//!      --> repeated grant ids (S4.2)
//! ```
//!
//! One worker decides, like the cycle guard, because a decision can read another
//! blob's grants: an edge needs `read` on its other end (S6.4), and that blob's owner
//! and grants may have been decided earlier in the same timestamp. A join by the other
//! blob would need a round trip per timestamp, and a fixed point when a chain of blobs
//! is created in one batch; a lookup in one map needs neither. The check is a few hash
//! lookups per record; parsing and applying stay on every worker.

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::{FxHashMap, FxHashSet};
use studio_model::access::{AccessControl, AccessEffects, GrantLogRow, GrantRow, InputRecord};
use studio_model::{DeadLetter, Delta, Uuid, WaitingRow};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::order::TotalOrder;
use timely::progress::{PathSummary, Timestamp};

use crate::ports::{Records, Updates, give, give_updates, ports};
use crate::stash::Stash;

/// The outputs of [`Authorize`].
pub struct AuthorizedStreams<'scope, T: Timestamp> {
    /// Deltas whose user may do them (or that the ledger rejects anyway).
    pub deltas: StreamVec<'scope, T, Delta>,
    /// Rejected deltas and grant records.
    pub dead_letters: VecCollection<'scope, T, DeadLetter>,
    /// The `grants` view.
    pub grants: VecCollection<'scope, T, GrantRow>,
    /// Accepted grant records (`grant_log`), insert-only.
    pub grant_log: VecCollection<'scope, T, GrantLogRow>,
    /// Deltas held until their blob is created (`deltas_waiting`).
    pub waiting: VecCollection<'scope, T, WaitingRow>,
    /// Ids of repeated grant records.
    pub repeats: StreamVec<'scope, T, Uuid>,
}

/// Access control in log order.
pub trait Authorize<'scope, T: Timestamp> {
    /// Decides every record in log order. Deltas of a blob not created yet are held
    /// until its create (then judged as the creator's); held longer than `gap_timeout`
    /// (`None`: until the input ends) they become `S4.4 version gap` dead letters, as
    /// the ledger would make them.
    fn authorize(self, gap_timeout: Option<T::Summary>) -> AuthorizedStreams<'scope, T>;
}

ports! {
    AuthorizedStreams;
    /// Authorized deltas.
    deltas: Records<Delta> => std::convert::identity,
    /// Rejected deltas and grant records.
    dead_letters: Updates<DeadLetter, T> => AsCollection::as_collection,
    /// `grants`.
    grants: Updates<GrantRow, T> => AsCollection::as_collection,
    /// `grant_log`.
    grant_log: Updates<GrantLogRow, T> => AsCollection::as_collection,
    /// Deltas held until their create.
    waiting: Updates<WaitingRow, T> => AsCollection::as_collection,
    /// Repeated grant ids.
    repeats: Records<Uuid> => std::convert::identity,
}

impl<'scope, T: Timestamp + TotalOrder> Authorize<'scope, T> for StreamVec<'scope, T, InputRecord> {
    fn authorize(self, gap_timeout: Option<T::Summary>) -> AuthorizedStreams<'scope, T> {
        let mut builder = OperatorBuilder::new("Authorize".to_owned(), self.scope());
        let mut input = builder.new_input(self, Exchange::new(|_: &InputRecord| 0));
        let (mut ports, streams) = Ports::declare(&mut builder);
        let mut stash = Stash::new(builder.shape().outputs());

        builder.build(move |initial_caps| {
            let mut access = AccessControl::default();
            let mut holds = Holds::new(gap_timeout, initial_caps);
            move |frontiers| {
                stash.absorb(&mut input);
                let mut out = ports.activate();
                let mut emit = |caps: &[Capability<T>], fx: AccessEffects| {
                    let t = caps[0].time();
                    give(&mut out.deltas, caps, fx.passed);
                    give_updates(&mut out.dead_letters, caps, t, inserts(fx.dead_letters));
                    give_updates(&mut out.grants, caps, t, fx.grants);
                    give_updates(&mut out.grant_log, caps, t, inserts(fx.log));
                    give_updates(&mut out.waiting, caps, t, fx.waiting);
                    give(&mut out.repeats, caps, fx.duplicates);
                };
                for (caps, mut records) in stash.take_complete(&frontiers[0]) {
                    records.sort_by_key(InputRecord::pos);
                    let mut fx = AccessEffects::default();
                    for record in records {
                        access.offer(record, &mut fx);
                    }
                    holds.started(caps[0].time(), &access);
                    emit(&caps, fx);
                }
                let now = frontiers[0].frontier().first().cloned();
                if let Some((caps, fx)) = holds.expire(now.as_ref(), stash.is_empty(), &mut access)
                {
                    emit(&caps, fx);
                }
            }
        });
        streams
    }
}

/// Rows as insertions.
fn inserts<D>(rows: Vec<D>) -> impl Iterator<Item = (D, isize)> {
    rows.into_iter().map(|row| (row, 1))
}

/// Since when each blob not created yet has had deltas held, and the capabilities
/// (one per output) to dead-letter them later.
struct Holds<T: Timestamp> {
    timeout: Option<T::Summary>,
    caps: Option<Vec<Capability<T>>>,
    since: FxHashMap<Uuid, T>,
}

impl<T: Timestamp + TotalOrder> Holds<T> {
    fn new(timeout: Option<T::Summary>, caps: Vec<Capability<T>>) -> Self {
        Holds {
            timeout,
            caps: Some(caps),
            since: FxHashMap::default(),
        }
    }

    /// After a time's records: forgets blobs created since, starts the clock of new ones.
    fn started(&mut self, time: &T, access: &AccessControl) {
        let held: FxHashSet<Uuid> = access.deferred_blobs().collect();
        self.since.retain(|blob, _| held.contains(blob));
        for blob in held {
            self.since.entry(blob).or_insert_with(|| time.clone());
        }
    }

    /// The input reached `now` (`None`: it ended, once nothing is stashed): the held
    /// deltas whose wait is over become dead letters, at `now` or the last time reached.
    fn expire(
        &mut self,
        now: Option<&T>,
        drained: bool,
        access: &mut AccessControl,
    ) -> Option<(Vec<Capability<T>>, AccessEffects)> {
        let expired: Vec<Uuid> = match now {
            Some(now) => {
                for cap in self.caps.iter_mut().flatten() {
                    cap.downgrade(now);
                }
                let timeout = self.timeout.as_ref()?;
                self.since
                    .iter()
                    .filter(|(_, since)| {
                        timeout.results_in(since).is_some_and(|d| d.less_equal(now))
                    })
                    .map(|(blob, _)| *blob)
                    .collect()
            }
            None if drained => {
                let caps = self.caps.take()?;
                let mut fx = AccessEffects::default();
                let mut blobs: Vec<Uuid> = self.since.drain().map(|(b, _)| b).collect();
                blobs.sort_unstable();
                blobs.into_iter().for_each(|b| access.expire(b, &mut fx));
                return Some((caps, fx));
            }
            None => return None,
        };
        if expired.is_empty() {
            return None;
        }
        let mut fx = AccessEffects::default();
        for blob in &expired {
            self.since.remove(blob);
        }
        expired.into_iter().for_each(|b| access.expire(b, &mut fx));
        let caps = self.caps.clone()?;
        Some((caps, fx))
    }
}
