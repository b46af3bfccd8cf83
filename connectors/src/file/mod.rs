//! The file source: one or more JSONL delta logs, read as one log in the order given.
//!
//! A record is a line without its `\n` (a `\r` before it is kept: the record's bytes are
//! kept exactly). Positions are `SourcePos { part: 0, offset }` with `offset` counting
//! lines across all the files from 0, so "log order" is the order of the files and then
//! of their lines. A final line without `\n` is a record too; an empty line is a record
//! (and a dead letter: nothing is dropped unseen).
//!
//! As a [`Source`] it is bounded: [`Source::poll`] hands out up to `max` records
//! without waiting, and [`Source::at_end`] says when the last file is read. It has
//! nothing to acknowledge and no lag.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use studio_model::SourcePos;

use crate::{OwnedRecord, Record, Source, SourceError};

/// Reads JSONL files in order.
pub struct FileSource {
    paths: Vec<PathBuf>,
    current: Option<(usize, BufReader<File>)>,
    next_file: usize,
    offset: u64,
    line: Vec<u8>,
    bytes_read: u64,
    at_end: bool,
}

impl FileSource {
    /// Opens the first file; fails at once when any file cannot be opened.
    pub fn open(paths: &[PathBuf]) -> Result<Self, SourceError> {
        for path in paths {
            File::open(path).map_err(|source| io_error(path, source))?;
        }
        Ok(FileSource {
            paths: paths.to_vec(),
            current: None,
            next_file: 0,
            offset: 0,
            line: Vec::with_capacity(4096),
            bytes_read: 0,
            at_end: false,
        })
    }

    /// Total size of the files, for progress.
    pub fn total_bytes(paths: &[PathBuf]) -> u64 {
        paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Bytes read so far, for progress reporting.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
}

impl FileSource {
    /// The next record, borrowed until the next call, or `None` after the last file.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, SourceError> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.paths.get(self.next_file) else {
                    self.at_end = true;
                    return Ok(None);
                };
                let file = File::open(path).map_err(|source| io_error(path, source))?;
                self.current = Some((self.next_file, BufReader::with_capacity(1 << 20, file)));
                self.next_file += 1;
            }
            let (index, reader) = self.current.as_mut().expect("just opened");
            self.line.clear();
            let n = reader
                .read_until(b'\n', &mut self.line)
                .map_err(|source| io_error(&self.paths[*index], source))?;
            if n == 0 {
                self.current = None;
                continue;
            }
            self.bytes_read += n as u64;
            if self.line.last() == Some(&b'\n') {
                self.line.pop();
            }
            let pos = SourcePos::at(self.offset);
            self.offset += 1;
            return Ok(Some(Record {
                pos,
                bytes: &self.line,
            }));
        }
    }
}

impl Source for FileSource {
    fn poll(&mut self, max: usize, _timeout: Duration) -> Result<Vec<OwnedRecord>, SourceError> {
        let mut records = Vec::with_capacity(max.min(1 << 16));
        while records.len() < max {
            let Some(record) = self.next_record()? else {
                break;
            };
            records.push(OwnedRecord {
                pos: record.pos,
                bytes: record.bytes.to_vec(),
            });
        }
        Ok(records)
    }

    fn at_end(&self) -> bool {
        self.at_end
    }

    fn commit(&mut self, _upto: &[SourcePos]) -> Result<(), SourceError> {
        Ok(()) // a file is not told what was read
    }

    fn lag(&mut self) -> Result<Vec<(u32, u64)>, SourceError> {
        Ok(Vec::new())
    }
}

fn io_error(path: &Path, source: std::io::Error) -> SourceError {
    SourceError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(paths: &[PathBuf]) -> Vec<(u64, Vec<u8>)> {
        let mut source = FileSource::open(paths).unwrap();
        let mut out = Vec::new();
        while let Some(r) = source.next_record().unwrap() {
            out.push((r.pos.offset, r.bytes.to_vec()));
        }
        out
    }

    #[test]
    fn reads_files_as_one_log_keeping_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        std::fs::write(&a, b"one\r\n\ntwo\n").unwrap();
        std::fs::write(&b, b"three\n\xfffour").unwrap();
        let got = read_all(&[a, b]);
        let want: Vec<(u64, Vec<u8>)> = vec![
            (0, b"one\r".to_vec()),
            (1, b"".to_vec()),
            (2, b"two".to_vec()),
            (3, b"three".to_vec()),
            (4, b"\xfffour".to_vec()),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn as_a_source_it_hands_out_batches_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        std::fs::write(&a, b"1\n2\n3\n4\n5").unwrap();
        let mut source = FileSource::open(&[a]).unwrap();
        let mut batches = Vec::new();
        while !source.at_end() {
            let batch = source.poll(2, Duration::ZERO).unwrap();
            batches.push(batch.iter().map(|r| r.pos.offset).collect::<Vec<_>>());
        }
        assert_eq!(batches, vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn a_missing_file_fails_at_open() {
        let err = FileSource::open(&[PathBuf::from("/nonexistent/x.jsonl")])
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/x.jsonl"), "{err}");
    }
}
