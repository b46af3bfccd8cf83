//! [`Memo`]: the answers a provider already gave, by (provider, provider version,
//! fingerprint): the same input is never paid for twice. In memory, and optionally in
//! a SQLite file (`worker.memo`), so that a restarted worker keeps what it knew.
//!
//! Why a file of the worker's own rather than a compacted topic: the memo is a cache
//! private to one worker's host, read on every request before a paid call; a local
//! SQLite lookup needs no broker round trip, no replay of a topic at start, and no
//! retention settings (tansu ignores compaction). Workers that should share answers
//! can point at one file on a shared disk: SQLite locks it (WAL, busy timeout).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rustc_hash::FxHashMap;
use studio_model::Fingerprint;

use crate::ProviderOutput;

/// What the memo is keyed by: the provider's id, its version, and the fingerprint of
/// what it read.
pub type MemoKey = (String, String, Fingerprint);

/// The provider answers already known; see the module docs.
pub struct Memo {
    known: Mutex<FxHashMap<MemoKey, ProviderOutput>>,
    file: Option<Mutex<rusqlite::Connection>>,
}

/// The memo's file could not be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use the memo file {path}: {source} (set worker.memo to another path, or \"\" for a memo in memory)"
)]
pub struct MemoError {
    path: String,
    source: rusqlite::Error,
}

impl Memo {
    /// A memo in memory only.
    pub fn in_memory() -> Self {
        Memo {
            known: Mutex::default(),
            file: None,
        }
    }

    /// A memo kept in the SQLite file `path` (created when missing).
    pub fn open(path: &Path) -> Result<Self, MemoError> {
        let error = |source| MemoError {
            path: path.display().to_string(),
            source,
        };
        let conn = rusqlite::Connection::open(path).map_err(error)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS memo (
                 provider_id TEXT NOT NULL, provider_version TEXT NOT NULL,
                 fingerprint TEXT NOT NULL, output TEXT NOT NULL,
                 PRIMARY KEY (provider_id, provider_version, fingerprint));",
        )
        .map_err(error)?;
        Ok(Memo {
            known: Mutex::default(),
            file: Some(Mutex::new(conn)),
        })
    }

    /// The answer remembered for `key`, if any.
    pub fn get(&self, key: &MemoKey) -> Option<ProviderOutput> {
        if let Some(output) = self.known.lock().expect("memo lock").get(key) {
            return Some(output.clone());
        }
        let file = self.file.as_ref()?.lock().expect("memo file lock");
        let stored: Option<String> = file
            .query_row(
                "SELECT output FROM memo WHERE provider_id = ? AND provider_version = ? AND fingerprint = ?",
                rusqlite::params![key.0, key.1, key.2.to_string()],
                |row| row.get(0),
            )
            .map_err(|e| {
                if !matches!(e, rusqlite::Error::QueryReturnedNoRows) {
                    tracing::warn!(error = %e, "cannot read the memo file; calling the provider");
                }
            })
            .ok();
        let output: ProviderOutput = serde_json::from_str(&stored?).ok()?;
        self.known
            .lock()
            .expect("memo lock")
            .insert(key.clone(), output.clone());
        Some(output)
    }

    /// Remembers `output` for `key`. A file that refuses it is logged: the answer is
    /// still remembered in memory.
    pub fn insert(&self, key: MemoKey, output: &ProviderOutput) {
        if let Some(file) = &self.file {
            let text = serde_json::to_string(output).expect("an output serialises");
            let stored = file.lock().expect("memo file lock").execute(
                "INSERT OR REPLACE INTO memo VALUES (?, ?, ?, ?)",
                rusqlite::params![key.0, key.1, key.2.to_string(), text],
            );
            if let Err(e) = stored {
                tracing::warn!(error = %e, "cannot write the memo file; the answer is kept in memory");
            }
        }
        self.known
            .lock()
            .expect("memo lock")
            .insert(key, output.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_file_keeps_its_answers_across_openings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo.sqlite");
        let key = (
            "grammar-checker".to_owned(),
            "1".to_owned(),
            Fingerprint(42),
        );
        let answer = ProviderOutput::Annotate(serde_json::json!({"grammar": []}));
        {
            let memo = Memo::open(&path).unwrap();
            assert_eq!(memo.get(&key), None);
            memo.insert(key.clone(), &answer);
        }
        let reopened = Memo::open(&path).unwrap();
        assert_eq!(reopened.get(&key), Some(answer));
        let other_version = (
            "grammar-checker".to_owned(),
            "2".to_owned(),
            Fingerprint(42),
        );
        assert_eq!(reopened.get(&other_version), None, "keyed by version too");
        assert_eq!(Memo::in_memory().get(&key), None);
    }
}
