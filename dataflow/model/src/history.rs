//! [`History`]: where the ledgers of one fold keep the texts a `revert` reads back
//! (each create's document, each patch, the periodic snapshots).
//!
//! A revert needs old documents, so every accepted patch must stay readable; but most
//! are never read again. A ledger keeps only a [`TextRef`] per step (12 bytes) and the
//! texts go to a [`TextStore`] shared by all the ledgers of a fold: [`InMemory`] (one
//! contiguous buffer, no allocation per text) by default, or a spill file (the
//! operators' `SpillFile`) so that the history of a long log does not stay in memory.
//! The delta store remains the record of every delta; this is a working copy.

use std::cell::RefCell;
use std::rc::Rc;

/// Where one text is in a [`TextStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextRef {
    offset: u64,
    len: u32,
}

impl TextRef {
    /// The text at `offset`, `len` bytes long (for stores).
    pub fn new(offset: u64, len: u32) -> Self {
        TextRef { offset, len }
    }

    /// Its first byte's offset.
    pub fn offset(self) -> u64 {
        self.offset
    }

    /// Its length in bytes.
    pub fn len(self) -> u32 {
        self.len
    }

    /// True for the empty text.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
}

/// An append-only store of texts.
pub trait TextStore {
    /// Keeps `text`; returns where it is.
    fn append(&mut self, text: &str) -> TextRef;
    /// Reads a text back. An error means the store itself failed (a spill file
    /// unreadable), never that the text was bad.
    fn read(&self, at: TextRef) -> std::io::Result<String>;
}

/// Texts in one growing buffer.
#[derive(Debug, Default)]
pub struct InMemory {
    bytes: Vec<u8>,
}

impl TextStore for InMemory {
    fn append(&mut self, text: &str) -> TextRef {
        let at = TextRef::new(self.bytes.len() as u64, text_len(text));
        self.bytes.extend_from_slice(text.as_bytes());
        at
    }

    fn read(&self, at: TextRef) -> std::io::Result<String> {
        let start = at.offset as usize;
        let bytes = self
            .bytes
            .get(start..start + at.len as usize)
            .ok_or_else(|| std::io::Error::other("a history reference past the end"))?;
        String::from_utf8(bytes.to_vec()).map_err(std::io::Error::other)
    }
}

/// Texts in an anonymous temporary file (removed by the OS when closed), written in
/// blocks of [`SpillFile::BLOCK`] bytes; the block being filled is read from memory.
/// Should the file stop taking writes (a full disk), the texts stay in memory from
/// then on: the fold goes on, only its memory grows.
#[derive(Debug)]
pub struct SpillFile {
    file: std::fs::File,
    /// Bytes in the file; the texts after them are in `tail`.
    written: u64,
    tail: Vec<u8>,
    /// The file refused a write: keep everything in `tail`.
    failed: bool,
}

impl SpillFile {
    /// Bytes kept in memory before they are written to the file.
    pub const BLOCK: usize = 1 << 20;

    /// A spill file in the system's temporary directory (`TMPDIR`).
    pub fn new() -> std::io::Result<Self> {
        Ok(SpillFile {
            file: tempfile::tempfile()?,
            written: 0,
            tail: Vec::with_capacity(Self::BLOCK),
            failed: false,
        })
    }

    fn write_tail(&mut self) {
        use std::os::unix::fs::FileExt;
        match self.file.write_all_at(&self.tail, self.written) {
            Ok(()) => {
                self.written += self.tail.len() as u64;
                self.tail.clear();
            }
            Err(_) => self.failed = true,
        }
    }
}

impl TextStore for SpillFile {
    fn append(&mut self, text: &str) -> TextRef {
        let at = TextRef::new(self.written + self.tail.len() as u64, text_len(text));
        self.tail.extend_from_slice(text.as_bytes());
        if self.tail.len() >= Self::BLOCK && !self.failed {
            self.write_tail();
        }
        at
    }

    fn read(&self, at: TextRef) -> std::io::Result<String> {
        use std::os::unix::fs::FileExt;
        // A text is appended whole to the tail and the tail is written whole, so a
        // text is either in the file or in the tail.
        let bytes = if at.offset >= self.written {
            let start = (at.offset - self.written) as usize;
            self.tail
                .get(start..start + at.len as usize)
                .ok_or_else(|| std::io::Error::other("a history reference past the end"))?
                .to_vec()
        } else {
            let mut bytes = vec![0; at.len as usize];
            self.file.read_exact_at(&mut bytes, at.offset)?;
            bytes
        };
        String::from_utf8(bytes).map_err(std::io::Error::other)
    }
}

/// The length of a text as a [`TextRef`] holds it: records are far below 4 GiB (the
/// parser bounds them), so this never truncates.
pub fn text_len(text: &str) -> u32 {
    u32::try_from(text.len()).expect("a record's text is under 4 GiB")
}

/// The history shared by the ledgers of one fold (one worker's operator): cloning it
/// shares the store.
#[derive(Clone)]
pub struct History(Rc<RefCell<dyn TextStore>>);

impl History {
    /// A history kept in `store`.
    pub fn new(store: impl TextStore + 'static) -> Self {
        History(Rc::new(RefCell::new(store)))
    }

    /// A history in memory.
    pub fn in_memory() -> Self {
        History::new(InMemory::default())
    }

    /// A history in a [`SpillFile`], or in memory when no temporary file can be made.
    pub fn spilled() -> Self {
        match SpillFile::new() {
            Ok(file) => History::new(file),
            Err(_) => History::in_memory(),
        }
    }

    /// Keeps `text`.
    pub fn append(&self, text: &str) -> TextRef {
        self.0.borrow_mut().append(text)
    }

    /// Reads a text back.
    pub fn read(&self, at: TextRef) -> Result<String, String> {
        self.0
            .borrow()
            .read(at)
            .map_err(|e| format!("the revert history could not be read back: {e}"))
    }
}

impl Default for History {
    fn default() -> Self {
        History::in_memory()
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("History")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_read_back_as_written() {
        let history = History::in_memory();
        let shared = history.clone();
        let a = history.append(r#"{"a":1}"#);
        let empty = shared.append("");
        let b = shared.append("[\"é\"]");
        assert_eq!(history.read(a).unwrap(), r#"{"a":1}"#);
        assert_eq!(history.read(empty).unwrap(), "");
        assert_eq!(history.read(b).unwrap(), "[\"é\"]");
        assert!(history.read(TextRef::new(1 << 40, 1)).is_err());
    }

    /// Texts read back whether they are still in the block being filled or already in
    /// the file, across several blocks.
    #[test]
    fn a_spill_file_reads_back_from_the_file_and_the_tail() {
        let history = History::new(SpillFile::new().unwrap());
        let texts: Vec<String> = (0..3000)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 1500)))
            .collect();
        let refs: Vec<TextRef> = texts.iter().map(|t| history.append(t)).collect();
        assert!(refs.last().unwrap().offset() > 2 * SpillFile::BLOCK as u64);
        for (text, at) in texts.iter().zip(&refs).rev() {
            assert_eq!(&history.read(*at).unwrap(), text);
        }
    }
}
