//! What both view stores share about their tables: the rows that are not the
//! dataflow's (a checkpoint, a large document), and recovery's query and rows.

use studio_model::{Cell, Checkpoint, Row, SourcePos};

use crate::{RecoveredAs, SinkError, positions_json};

/// A checkpoint as the `checkpoints` table holds it.
pub(crate) struct StoredCheckpoint<'c>(pub(crate) &'c Checkpoint);

impl Row for StoredCheckpoint<'_> {
    fn cells<'a>(&'a self, each: &mut dyn FnMut(Cell<'a>)) {
        each(self.0.source.as_str().into());
        each(positions_json(&self.0.positions).into());
        each(self.0.next_seq.into());
    }
}

/// A row of `large_docs`: a large document under its reference.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct LargeDoc<'d> {
    pub(crate) doc_ref: &'d str,
    pub(crate) doc: &'d str,
}

impl Row for LargeDoc<'_> {
    fn cells<'a>(&'a self, each: &mut dyn FnMut(Cell<'a>)) {
        each(self.doc_ref.into());
        each(self.doc.into());
    }
}

/// Everything a restart replays: the accepted deltas, the waiting ones, the accepted
/// grant records, the accepted processing results, and the rejected deltas and grants
/// except expired gaps (see [`crate::ViewSink::recover`]). Columns: part, offset,
/// record, expired in a gap. SQL both stores run. Unordered: the lead feeds it all at
/// one timestamp, and the operators order a timestamp's records by their position, so
/// an `ORDER BY` would only make the store sort the whole history (a tenth of a
/// restart's time at 1M).
pub(crate) const RECOVERY_QUERY: &str = "SELECT pos_part, pos_offset, record, false FROM deltas \
     UNION ALL SELECT pos_part, pos_offset, record, false FROM deltas_waiting \
     UNION ALL SELECT pos_part, pos_offset, record, false FROM grant_log \
     UNION ALL SELECT pos_part, pos_offset, record, false FROM result_log \
     UNION ALL SELECT pos_part, pos_offset, raw, reason LIKE 'S4.4%' FROM dead_letters \
         WHERE delta_id IS NOT NULL";

/// One row of [`RECOVERY_QUERY`], handed to `each`; refuses a row without its record.
pub(crate) fn recovered(
    row: (Option<i64>, Option<i64>, Option<String>, bool),
    each: &mut dyn FnMut(SourcePos, &str, RecoveredAs),
) -> Result<(), SinkError> {
    let (Some(part), Some(offset), Some(record), expired) = row else {
        return Err(SinkError::Refused(crate::NO_RECORDS.into()));
    };
    let pos = SourcePos {
        part: part as u32,
        offset: offset as u64,
    };
    each(pos, &record, crate::recovered_as(expired));
    Ok(())
}
