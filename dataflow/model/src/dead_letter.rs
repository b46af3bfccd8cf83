//! Dead letters: every record Studio rejects, with the SPEC rule it broke and its raw
//! bytes (SPEC S1.1, S4.3-S4.5). Errors are data here: they flow beside the good output.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Operation, SourcePos};

/// Why a record was rejected. `Display` gives the reason text written to the dead
/// letters, always starting with the rule it cites (`S4.3 version conflict: ...`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// S1.1: not JSON, a required field missing, or a field of the wrong type.
    Malformed(String),
    /// S3.1: a `create` whose version is not 1.
    CreateVersion {
        /// The version it claimed.
        version: u64,
    },
    /// S3.1: a delta other than `create` for a blob that does not exist yet, at version 1.
    NotCreated {
        /// Its operation.
        operation: Operation,
    },
    /// S3.2/S3.3: an `update` without a patch.
    MissingPatch {
        /// Its operation.
        operation: Operation,
    },
    /// S3.2/S3.3: the patch does not apply; the blob is unchanged.
    PatchFailed {
        /// Its operation.
        operation: Operation,
        /// What failed.
        detail: String,
    },
    /// S3.4: the blob is deleted and only `revert` applies.
    Deleted {
        /// Its operation.
        operation: Operation,
    },
    /// S3.5: the revert patch is not `{"to_version": k}`.
    RevertShape,
    /// S3.5: `to_version` outside `1..current`.
    RevertRange {
        /// The version asked for.
        to_version: u64,
        /// The blob's version when the revert applied.
        current: u64,
    },
    /// S4.3: another delta already holds this blob's version.
    VersionConflict {
        /// The contested version.
        version: u64,
    },
    /// S4.4: the delta waited for a version that never came.
    VersionGap {
        /// The blob's version when the wait ended.
        current: u64,
        /// The version the delta claimed.
        version: u64,
    },
    /// S6.1: a grant or revoke that its author may not make (see `access`).
    GrantNotAuthorized(String),
    /// S6.2: a delta whose user may not do its operation (see `access`).
    NotAuthorized {
        /// Its operation.
        operation: Operation,
        /// Which right was missing.
        detail: String,
    },
}

impl Reason {
    /// The reason's kind, without details: what summaries and metrics group by
    /// (`S4.3 version conflict`).
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Malformed(_) => "S1.1 malformed",
            Reason::CreateVersion { .. } => "S3.1 create must have version 1",
            Reason::NotCreated { .. } => "S3.1 blob does not exist",
            Reason::MissingPatch { .. } => "S3.2 update without patch",
            Reason::PatchFailed {
                operation: Operation::Transform,
                ..
            } => "S3.3 patch does not apply",
            Reason::PatchFailed { .. } => "S3.2 patch does not apply",
            Reason::Deleted { .. } => "S3.4 blob is deleted",
            Reason::RevertShape => "S3.5 revert patch invalid",
            Reason::RevertRange { .. } => "S3.5 revert target out of range",
            Reason::VersionConflict { .. } => "S4.3 version conflict",
            Reason::VersionGap { .. } => "S4.4 version gap",
            Reason::GrantNotAuthorized(_) => "S6.1 not authorized",
            Reason::NotAuthorized { .. } => "S6.2 not authorized",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind();
        match self {
            Reason::Malformed(what) => write!(f, "{kind}: {what}"),
            Reason::CreateVersion { version } => write!(f, "{kind}: got version {version}"),
            Reason::NotCreated { operation } => write!(
                f,
                "{kind}: {} at version 1; only a create may start a blob",
                operation.as_str()
            ),
            Reason::MissingPatch { operation } => {
                write!(f, "{kind}: {} needs a patch", operation.as_str())
            }
            Reason::PatchFailed { detail, .. } => write!(f, "{kind}: {detail}"),
            Reason::Deleted { operation } => write!(
                f,
                "{kind}: {} refused; a deleted blob accepts only revert",
                operation.as_str()
            ),
            Reason::RevertShape => write!(f, "{kind}: the patch must be {{\"to_version\": k}}"),
            Reason::RevertRange {
                to_version,
                current,
            } => write!(
                f,
                "{kind}: to_version {to_version} is not in 1..{current} (1 <= k < current version)"
            ),
            Reason::VersionConflict { version } => write!(
                f,
                "{kind}: version {version} is already held by an earlier delta in log order"
            ),
            Reason::VersionGap { current, version } => write!(
                f,
                "{kind}: claims version {version} but the blob stayed at version {current}"
            ),
            Reason::GrantNotAuthorized(detail) => write!(f, "{kind}: {detail}"),
            Reason::NotAuthorized { operation, detail } => {
                write!(f, "{kind}: {} refused; {detail}", operation.as_str())
            }
        }
    }
}

/// A rejected record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it was read; dead letters are written in this order.
    pub pos: SourcePos,
    /// Its delta id, when the record parsed that far.
    pub delta_id: Option<Uuid>,
    /// Its blob id, when the record parsed that far.
    pub blob_id: Option<Uuid>,
    /// Why it was rejected.
    pub reason: Reason,
    /// The record's bytes, exactly as read.
    pub raw: Vec<u8>,
}

/// The prefix of a `raw` text that holds base64 rather than the record itself.
pub const BASE64_PREFIX: &str = "base64:";

impl DeadLetter {
    /// A record at `pos` that could not be read (S1.1): `what` says why.
    pub fn malformed(pos: SourcePos, raw: &[u8], what: String) -> Box<Self> {
        Box::new(DeadLetter {
            pos,
            delta_id: None,
            blob_id: None,
            reason: Reason::Malformed(what),
            raw: raw.to_vec(),
        })
    }

    /// The lossless text form of the raw bytes written to the `raw` column: the
    /// record itself when it is UTF-8 and does not start with [`BASE64_PREFIX`];
    /// otherwise the prefix followed by the standard base64 of the bytes.
    pub fn raw_text(&self) -> std::borrow::Cow<'_, str> {
        raw_text(&self.raw)
    }
}

/// See [`DeadLetter::raw_text`].
pub fn raw_text(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(text) if !text.starts_with(BASE64_PREFIX) => std::borrow::Cow::Borrowed(text),
        _ => std::borrow::Cow::Owned(format!(
            "{BASE64_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )),
    }
}

/// Inverse of [`raw_text`]: the original bytes.
pub fn raw_bytes(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    match text.strip_prefix(BASE64_PREFIX) {
        Some(encoded) => base64::engine::general_purpose::STANDARD.decode(encoded),
        None => Ok(text.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_text_round_trips_every_input() {
        for raw in [
            b"{\"id\":1}".to_vec(),
            vec![0xff, 0xfe, b'{'],
            b"base64:looks-encoded".to_vec(),
            Vec::new(),
        ] {
            let text = raw_text(&raw).into_owned();
            assert_eq!(raw_bytes(&text).unwrap(), raw, "{text}");
        }
        assert_eq!(raw_text(b"plain"), "plain");
    }

    #[test]
    fn reasons_cite_their_rule() {
        let r = Reason::Malformed("missing field \"version\"".into());
        assert_eq!(r.to_string(), "S1.1 malformed: missing field \"version\"");
        let r = Reason::VersionConflict { version: 3 };
        assert!(r.to_string().starts_with("S4.3 version conflict"));
    }
}
