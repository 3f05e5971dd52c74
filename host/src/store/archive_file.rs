//! The file `toka archive` writes: the beginning of a log, for the operator
//! to keep once it is dropped from the live store.
//!
//! Layout: the magic `TOKA-ARCHIVE\0`, then frames, each a `u32` length
//! (little-endian) and a postcard [`Frame`]: one [`Header`], the records in
//! order, the response bodies they reference, and an [`End`] carrying the
//! BLAKE3 hash of every byte before it. The file is written beside its
//! final name (`NAME.partial`), synced, and renamed: an archive either
//! exists whole or not at all.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toka_kernel::{ChainHead, Digest, Limits};

use crate::store::snapshot::serde_bytes_vec;

const MAGIC: &[u8; 13] = b"TOKA-ARCHIVE\0";

/// The archive layout this release writes and reads.
pub(crate) const ARCHIVE_VERSION: u16 = 1;

/// No frame is larger: a record, a snapshot or a response body. A length
/// past it (or past the end of the file) is a damaged file, not an
/// allocation.
const MAX_FRAME: u64 = 1 << 30;

/// One frame of an archive.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// What the archive holds; always first.
    Header(Header),
    /// A log record.
    Record {
        /// Its sequence number.
        seq: u64,
        /// Its bytes, as the store held them.
        #[serde(with = "serde_bytes_vec")]
        bytes: Vec<u8>,
    },
    /// A response body one of the records references.
    Blob {
        /// Its BLAKE3 digest.
        digest: Digest,
        /// Its bytes.
        #[serde(with = "serde_bytes_vec")]
        bytes: Vec<u8>,
    },
    /// Where the records end; always last.
    End(End),
}

/// The first frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    /// [`ARCHIVE_VERSION`].
    pub(crate) version: u16,
    /// The data dir the records come from.
    pub(crate) data_id: [u8; 16],
    /// The limits the log was written under.
    pub(crate) limits: Limits,
    /// The snapshot the records continue (the previous archive's end), or
    /// `None` when they start at record 1.
    pub(crate) start: Option<Vec<u8>>,
    /// The first record's sequence number.
    pub(crate) first: u64,
    /// The last record's sequence number.
    pub(crate) last: u64,
}

/// The last frame.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct End {
    /// The chain head after the last record.
    pub(crate) head: ChainHead,
    /// The digest of the state after the last record.
    pub(crate) state: Digest,
    /// Records in the archive.
    pub(crate) records: u64,
    /// Response bodies in the archive.
    pub(crate) blobs: u64,
    /// The BLAKE3 hash of every byte before this frame.
    pub(crate) hash: Digest,
}

/// Why an archive could not be written or read. Every variant names the
/// file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveFileError {
    /// The file exists already: an archive is never overwritten.
    #[error("{path}: exists already; an archive is never overwritten, name a new file")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The archive cannot be created (its directory is missing or not
    /// writable, ...).
    #[error("{path}: cannot create the archive: {source}")]
    Create {
        /// The archive's name.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file is not an archive, or not one this release reads, or it is
    /// damaged.
    #[error("{path}: not a valid Toka archive: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
}

/// Writes an archive, frame by frame.
pub(crate) struct ArchiveWriter {
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    partial: PathBuf,
    path: PathBuf,
    bytes: u64,
    done: bool,
}

impl ArchiveWriter {
    /// Starts `path` (which must not exist) as `path.partial`.
    pub(crate) fn create(path: &Path) -> Result<Self, ArchiveFileError> {
        if path.exists() {
            return Err(ArchiveFileError::Exists {
                path: path.to_owned(),
            });
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|source| ArchiveFileError::Create {
                path: path.to_owned(),
                source,
            })?;
        let mut writer = Self {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            partial,
            path: path.to_owned(),
            bytes: 0,
            done: false,
        };
        writer.put(MAGIC)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ArchiveFileError> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).map_err(|source| self.io(source))
    }

    fn io(&self, source: io::Error) -> ArchiveFileError {
        ArchiveFileError::Io {
            path: self.partial.clone(),
            source,
        }
    }

    /// Appends one frame.
    pub(crate) fn write(&mut self, frame: &Frame) -> Result<(), ArchiveFileError> {
        let bytes = postcard::to_allocvec(frame).map_err(|e| self.io(io::Error::other(e)))?;
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|len| u64::from(*len) <= MAX_FRAME)
            .ok_or_else(|| self.io(io::Error::other("a frame over 1 GiB")))?;
        self.put(&len.to_le_bytes())?;
        self.put(&bytes)
    }

    /// Writes the end frame (with the hash of everything before it), syncs
    /// the file and gives it its name. Returns the archive's size in bytes.
    pub(crate) fn finish(mut self, mut end: End) -> Result<u64, ArchiveFileError> {
        end.hash = Digest(*self.hasher.finalize().as_bytes());
        self.write(&Frame::End(end))?;
        self.out.flush().map_err(|source| self.io(source))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|source| self.io(source))?;
        if self.path.exists() {
            return Err(ArchiveFileError::Exists {
                path: self.path.clone(),
            });
        }
        fs::rename(&self.partial, &self.path).map_err(|source| self.io(source))?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| ArchiveFileError::Io {
                path: dir.to_owned(),
                source,
            })?;
        self.done = true;
        Ok(self.bytes)
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        if !self.done {
            // Nothing half-written is left behind.
            let _ = fs::remove_file(&self.partial);
        }
    }
}

/// Reads an archive, frame by frame, checking its hash at the end.
pub(crate) struct ArchiveReader {
    input: BufReader<File>,
    hasher: blake3::Hasher,
    path: PathBuf,
    left: u64,
    ended: bool,
}

impl ArchiveReader {
    /// Opens `path` and reads its header.
    pub(crate) fn open(path: &Path) -> Result<(Self, Header), ArchiveFileError> {
        let io = |source| ArchiveFileError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut reader = Self {
            input: BufReader::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            path: path.to_owned(),
            left: len,
            ended: false,
        };
        let mut magic = [0; MAGIC.len()];
        if reader.take(&mut magic).is_err() || &magic != MAGIC {
            return Err(reader.invalid("it does not start with TOKA-ARCHIVE"));
        }
        match reader.next()? {
            Frame::Header(header) if header.version == ARCHIVE_VERSION => Ok((reader, header)),
            Frame::Header(header) => Err(reader.invalid(&format!(
                "archive format {} (this build reads {ARCHIVE_VERSION})",
                header.version
            ))),
            _ => Err(reader.invalid("its first frame is not a header")),
        }
    }

    fn invalid(&self, reason: &str) -> ArchiveFileError {
        ArchiveFileError::Invalid {
            path: self.path.clone(),
            reason: reason.to_owned(),
        }
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), ArchiveFileError> {
        if buf.len() as u64 > self.left {
            return Err(self.invalid("it ends in the middle of a frame (truncated?)"));
        }
        self.input
            .read_exact(buf)
            .map_err(|source| ArchiveFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.left -= buf.len() as u64;
        self.hasher.update(buf);
        Ok(())
    }

    /// The next frame. An [`End`] frame is returned only if the hash it
    /// carries is the hash of the file before it and nothing follows it.
    pub(crate) fn next(&mut self) -> Result<Frame, ArchiveFileError> {
        if self.ended {
            return Err(self.invalid("a frame after its end"));
        }
        let before = self.hasher.finalize();
        let mut len = [0; 4];
        if self.left == 0 {
            return Err(self.invalid("it ends before its end frame (truncated?)"));
        }
        self.take(&mut len)?;
        let len = u64::from(u32::from_le_bytes(len));
        if len > MAX_FRAME || len > self.left {
            return Err(self.invalid("a frame longer than the rest of the file (truncated?)"));
        }
        let mut bytes = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        self.take(&mut bytes)?;
        let frame: Frame = postcard::from_bytes(&bytes)
            .map_err(|e| self.invalid(&format!("a frame does not decode: {e}")))?;
        if let Frame::End(end) = &frame {
            if end.hash.0 != *before.as_bytes() {
                return Err(self.invalid("its bytes do not hash to the hash at its end (altered?)"));
            }
            if self.left != 0 {
                return Err(self.invalid("bytes after its end frame"));
            }
            self.ended = true;
        }
        Ok(frame)
    }
}
