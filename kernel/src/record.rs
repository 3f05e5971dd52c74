//! Log records: the versioned, hash-chained encoding of applied commands.
//!
//! A record on disk is `body ‖ hash`, where `body` is the postcard encoding of
//! `(version, seq, prev_hash, command)` and `hash = BLAKE3(body)`. Because the
//! body contains `prev_hash`, the hash covers the previous record's hash: the
//! causal chain. The version comes first so a reader can refuse a record from
//! a newer release before trying to parse the rest.

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::id::Digest;

/// The record format this release writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;

/// Bytes of the hash that ends every record.
pub(crate) const HASH_LEN: usize = 32;

/// The position of the log's tip: the last record's sequence number and hash.
///
/// An empty log has `seq` 0 and the [`Digest::ZERO`] hash; the first record
/// gets `seq` 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChainHead {
    /// Sequence number of the last record (0 when there is none).
    pub seq: u64,
    /// Hash of the last record ([`Digest::ZERO`] when there is none).
    pub hash: Digest,
}

/// One decoded log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The format version it was written with.
    pub version: u16,
    /// Its position in the log, from 1.
    pub seq: u64,
    /// The previous record's hash.
    pub prev_hash: Digest,
    /// The applied command.
    pub command: Command,
    /// BLAKE3 of the encoded body (version, seq, prev_hash, command).
    pub hash: Digest,
}

#[derive(Serialize)]
struct BodyRef<'a> {
    version: u16,
    seq: u64,
    prev_hash: &'a Digest,
    command: &'a Command,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Too short to hold a version and a hash.
    #[error("record is truncated ({len} bytes)")]
    Truncated {
        /// The byte count.
        len: usize,
    },
    /// Written by a newer release (or not a record at all).
    #[error(
        "record format version {found} is not supported (this release reads up to {supported})"
    )]
    UnsupportedVersion {
        /// The version in the record.
        found: u16,
        /// [`FORMAT_VERSION`].
        supported: u16,
    },
    /// The stored hash is not the hash of the body.
    #[error("record hash mismatch: stored {stored}, computed {computed}")]
    HashMismatch {
        /// The hash stored in the record.
        stored: Digest,
        /// The hash of the stored body.
        computed: Digest,
    },
    /// The body does not decode.
    #[error("record body is malformed: {0}")]
    Malformed(String),
}

impl Record {
    /// Encodes the record for `command` at `seq` after `prev_hash` and
    /// returns its hash and bytes. `scratch` is the encoding buffer, so the
    /// bytes are allocated once, at their exact size.
    pub(crate) fn seal(
        seq: u64,
        prev_hash: &Digest,
        command: &Command,
        scratch: &mut Vec<u8>,
    ) -> (Digest, Vec<u8>) {
        let body = BodyRef {
            version: FORMAT_VERSION,
            seq,
            prev_hash,
            command,
        };
        scratch.clear();
        let mut buf = postcard::to_extend(&body, std::mem::take(scratch)).expect(
            "a command is plain data (strings, integers, byte strings): postcard encodes it",
        );
        let hash = Digest::of(&buf);
        buf.extend_from_slice(hash.as_bytes());
        let bytes = buf.as_slice().to_vec();
        *scratch = buf;
        (hash, bytes)
    }

    /// Where the operation's encoding starts in the body of the record
    /// `seal` makes for a command with these fields: postcard lays a struct
    /// out field after field, and the operation is the command's last.
    pub(crate) fn operation_offset(
        seq: u64,
        prev_hash: &Digest,
        origin: crate::EntityId,
        time: crate::Timestamp,
        auth: crate::Authorization,
        cause: Option<crate::OpKey>,
    ) -> usize {
        #[derive(Serialize)]
        struct Prefix<'a> {
            version: u16,
            seq: u64,
            prev_hash: &'a Digest,
            origin: crate::EntityId,
            time: crate::Timestamp,
            auth: crate::Authorization,
            cause: Option<crate::OpKey>,
        }
        postcard::to_allocvec(&Prefix {
            version: FORMAT_VERSION,
            seq,
            prev_hash,
            origin,
            time,
            auth,
            cause,
        })
        .expect("plain data: postcard encodes it")
        .len()
    }

    /// Decodes and checks one record: its version, its hash, and that no
    /// byte is left over.
    ///
    /// # Errors
    ///
    /// A [`RecordError`] naming what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        Self::decode_with(bytes, true)
    }

    /// Decodes a record without checking its hash (its version and that no
    /// byte is left over are still checked): for a store that vouches for
    /// its content. [`Record::decode`] checks the hash.
    ///
    /// # Errors
    ///
    /// A [`RecordError`] naming what is wrong.
    pub fn decode_unchecked(bytes: &[u8]) -> Result<Record, RecordError> {
        Self::decode_with(bytes, false)
    }

    /// Decodes a record, checking its hash only if `check_hash`.
    fn decode_with(bytes: &[u8], check_hash: bool) -> Result<Record, RecordError> {
        let parts = Parts::split(bytes, check_hash)?;
        Ok(Record {
            version: parts.version,
            seq: parts.seq,
            prev_hash: parts.prev_hash,
            command: parts.command()?,
            hash: parts.hash,
        })
    }
}

/// A record split into its parts, its command still encoded: what the
/// checks of its place in the chain need, before the command is decoded
/// (straight into the caller's hands: a whole [`Record`] is some 270
/// bytes, and moving it was a good part of decoding a small one).
pub(crate) struct Parts<'a> {
    /// The format version it was written with.
    pub(crate) version: u16,
    /// Its position in the log.
    pub(crate) seq: u64,
    /// The previous record's hash.
    pub(crate) prev_hash: Digest,
    /// The command's encoding, to its end.
    command: &'a [u8],
    /// The stored hash (of the body).
    pub(crate) hash: Digest,
}

impl<'a> Parts<'a> {
    /// Splits `bytes` into a record's parts, checking its version and, if
    /// `check_hash`, its hash.
    pub(crate) fn split(bytes: &'a [u8], check_hash: bool) -> Result<Parts<'a>, RecordError> {
        let truncated = || RecordError::Truncated { len: bytes.len() };
        let (version, _) = postcard::take_from_bytes::<u16>(bytes).map_err(|_| truncated())?;
        if version == 0 || version > FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let split = bytes.len().checked_sub(HASH_LEN).ok_or_else(truncated)?;
        let (body, stored) = bytes.split_at(split);
        let hash = Digest(
            stored
                .try_into()
                .expect("split HASH_LEN bytes from the end"),
        );
        if check_hash {
            let computed = Digest::of(body);
            if hash != computed {
                return Err(RecordError::HashMismatch {
                    stored: hash,
                    computed,
                });
            }
        }
        // The header as postcard lays it out: varints, then the previous
        // hash as a byte string (its length, then its bytes).
        let malformed = |what: &str| RecordError::Malformed(format!("its {what} does not decode"));
        let (_, rest) = postcard::take_from_bytes::<u16>(body).map_err(|_| malformed("version"))?;
        let (seq, rest) =
            postcard::take_from_bytes::<u64>(rest).map_err(|_| malformed("sequence number"))?;
        let Some((&[len], rest)) = rest.split_first_chunk::<1>() else {
            return Err(malformed("previous hash"));
        };
        let Some((prev_hash, command)) = rest.split_first_chunk::<HASH_LEN>() else {
            return Err(malformed("previous hash"));
        };
        if usize::from(len) != HASH_LEN {
            return Err(malformed("previous hash"));
        }
        Ok(Parts {
            version,
            seq,
            prev_hash: Digest(*prev_hash),
            command,
            hash,
        })
    }

    /// Decodes the command, which must end the body.
    pub(crate) fn command(&self) -> Result<Command, RecordError> {
        let (command, rest) = postcard::take_from_bytes::<Command>(self.command)
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(RecordError::Malformed(format!(
                "{} trailing bytes after the command",
                rest.len()
            )));
        }
        Ok(command)
    }
}
