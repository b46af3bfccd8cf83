//! [`DedupById`]: the same delta id again is a duplicate (SPEC S4.2); so is a second
//! processing result for one request (the first in log order settles it).
//!
//! Deltas are exchanged by id, so every copy of an id meets on one worker; within a
//! timestamp the first copy in log order passes and later copies come out on the
//! duplicates stream, to be counted, never dead-lettered. An id counts as seen from
//! its first well-formed record on, whether that delta is later accepted or rejected:
//! a re-sent delta never gets a second chance or a second dead letter.
//!
//! A second input carries ids that are known without their deltas: at a restart, the
//! service hands over the ids of deltas that expired in a gap (S4.4), which must stay
//! duplicates (S4.2) but must not wait for their gap again.

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use studio_model::delta::route;
use studio_model::{Delta, ResultLogRow, SourcePos, Uuid};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::stash::Stash;

/// A record dropped as a duplicate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Duplicate {
    /// The repeated delta id.
    pub id: Uuid,
    /// Where the repeat was read.
    pub pos: SourcePos,
}

/// A record with an identity: a repeat of its id is a duplicate.
pub trait Identified {
    /// Its id.
    fn id(&self) -> Uuid;
    /// Where it was read (log order decides which copy is first).
    fn pos(&self) -> SourcePos;
}

impl Identified for Delta {
    fn id(&self) -> Uuid {
        self.id
    }
    fn pos(&self) -> SourcePos {
        self.pos
    }
}

/// A result is identified by its request: the first result of a request settles it.
impl Identified for ResultLogRow {
    fn id(&self) -> Uuid {
        self.result.request_id
    }
    fn pos(&self) -> SourcePos {
        self.pos
    }
}

/// Removes repeated ids.
pub trait DedupById<'scope, T: Timestamp, D> {
    /// Returns the first record of each id, and the repeats. Ids in `known` count as
    /// seen from their timestamp on.
    fn dedup_by_id(
        self,
        known: StreamVec<'scope, T, Uuid>,
    ) -> (StreamVec<'scope, T, D>, StreamVec<'scope, T, Duplicate>);
}

impl<'scope, T, D> DedupById<'scope, T, D> for StreamVec<'scope, T, D>
where
    T: Timestamp + TotalOrder,
    D: Identified + timely::ExchangeData,
{
    fn dedup_by_id(
        self,
        known: StreamVec<'scope, T, Uuid>,
    ) -> (StreamVec<'scope, T, D>, StreamVec<'scope, T, Duplicate>) {
        let mut builder = OperatorBuilder::new("DedupById".to_owned(), self.scope());
        let mut input = builder.new_input(self, Exchange::new(|d: &D| route(d.id())));
        let mut known = builder.new_input(known, Exchange::new(|id: &Uuid| route(*id)));
        let (unique_out, unique) = builder.new_output();
        let (dups_out, dups) = builder.new_output();
        let mut unique_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<D>>>::from(unique_out);
        let mut dups_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<Duplicate>>>::from(dups_out);

        builder.build(move |_initial_caps| {
            let mut stash = Stash::new(2);
            let mut known_stash: Stash<T, Uuid> = Stash::new(0);
            let mut seen: FxHashSet<Uuid> = FxHashSet::default();
            move |frontiers| {
                stash.absorb(&mut input);
                known_stash.absorb(&mut known);
                let mut unique_session = unique_out.activate();
                let mut dups_session = dups_out.activate();
                // A time is complete when both inputs have passed it; known ids of a
                // time count before the deltas of that time.
                let complete = |t: &T| !frontiers[0].less_equal(t) && !frontiers[1].less_equal(t);
                for (_, (_, ids)) in known_stash.take_where(complete) {
                    seen.extend(ids);
                }
                for (_, (caps, mut records)) in stash.take_where(complete) {
                    records.sort_by_key(Identified::pos);
                    let mut pass = unique_session.session(&caps[0]);
                    let mut drop = dups_session.session(&caps[1]);
                    for record in records {
                        if seen.insert(record.id()) {
                            pass.give(record);
                        } else {
                            drop.give(Duplicate {
                                id: record.id(),
                                pos: record.pos(),
                            });
                        }
                    }
                }
            }
        });
        (unique, dups)
    }
}
