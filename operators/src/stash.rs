//! [`Stash`]: input held back until its timestamp is complete.
//!
//! Every operator here must see all the records of a timestamp before it can put them
//! in log order; the stash keeps them, with a capability per output port, until the
//! input frontier has passed their time.

use std::collections::BTreeMap;

use timely::communication::Pull;
use timely::dataflow::channels::Message;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::InputHandleCore;
use timely::order::TotalOrder;
use timely::progress::Timestamp;
use timely::progress::frontier::MutableAntichain;

/// Records grouped by timestamp, each group with capabilities for `ports` outputs.
pub struct Stash<T: Timestamp, D> {
    ports: usize,
    /// The messages of each time as they came: appending them to one vector would
    /// regrow (copy) it over and over in a large timestamp.
    by_time: BTreeMap<T, (Vec<Capability<T>>, Vec<Vec<D>>)>,
}

/// One completed timestamp: its capabilities (one per output port) and its records.
pub type Complete<T, D> = (Vec<Capability<T>>, Vec<D>);

impl<T: Timestamp + TotalOrder, D> Stash<T, D> {
    /// A stash for an operator with `ports` outputs.
    pub fn new(ports: usize) -> Self {
        Stash {
            ports,
            by_time: BTreeMap::new(),
        }
    }

    /// Moves everything waiting at `input` into the stash.
    pub fn absorb<P: Pull<Message<T, Vec<D>>>>(
        &mut self,
        input: &mut InputHandleCore<T, Vec<D>, P>,
    ) {
        let ports = self.ports;
        input.for_each_stamp(|cap, data| {
            let time = cap
                .least()
                .expect("Studio's streams always carry a timestamp")
                .clone();
            let entry = self.by_time.entry(time).or_insert_with_key(|time| {
                (
                    (0..ports).map(|p| cap.delayed(time, p)).collect(),
                    Vec::new(),
                )
            });
            entry
                .1
                .extend(data.map(std::mem::take).filter(|batch| !batch.is_empty()));
        });
    }

    /// Removes and returns, in time order, the groups whose time the frontier has passed.
    pub fn take_complete(&mut self, frontier: &MutableAntichain<T>) -> Vec<Complete<T, D>> {
        let mut done = Vec::new();
        while let Some(entry) = self.by_time.first_entry() {
            if frontier.less_equal(entry.key()) {
                break;
            }
            let (caps, chunks) = entry.remove();
            done.push((caps, concat(chunks)));
        }
        done
    }

    /// Removes and returns, in time order, the groups whose time `is_complete` says is.
    pub fn take_where(&mut self, is_complete: impl Fn(&T) -> bool) -> Vec<(T, Complete<T, D>)> {
        let mut done = Vec::new();
        while let Some(entry) = self.by_time.first_entry() {
            if !is_complete(entry.key()) {
                break;
            }
            let time = entry.key().clone();
            let (caps, chunks) = entry.remove();
            done.push((time, (caps, concat(chunks))));
        }
        done
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }
}

/// The chunks' records in one vector, allocated once.
fn concat<D>(mut chunks: Vec<Vec<D>>) -> Vec<D> {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk");
    }
    let mut all = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for mut chunk in chunks {
        all.append(&mut chunk);
    }
    all
}
