//! Frames: the rows of the redb store's `log` table.
//!
//! A frame holds consecutive log records, stored under the sequence number
//! of its first: each record as its length (`u32`, little-endian) and its
//! bytes. A batch of records becomes one or a few frames instead of one
//! row per record, so appending costs one B-tree insert per frame and
//! reading walks a few large rows.
//!
//! A frame is at most [`FRAME_BYTES`] long, unless one record alone is
//! longer: reading one record reads its whole frame, and a re-run of a
//! task reads its records one at a time.

/// The most bytes a frame holds (a longer record makes a frame of its own):
/// with its leaf page's header it fits a 16 KiB redb page. redb gives a
/// leaf a power-of-two number of 4 KiB pages, so a frame of a full 16 or
/// 32 KiB would take a page twice its size (measured on 150-byte records:
/// pages left unused came to 48 % of the bytes stored with 32 KiB frames,
/// 11 % with these).
pub(crate) const FRAME_BYTES: usize = 16 * 1024 - 256;

/// Bytes of the length before each record.
const LEN_BYTES: usize = 4;

/// Calls `put(first seq, frame bytes)` for each frame of `records`
/// (ascending), using `buf` to build them. A gap in the sequence numbers
/// starts a new frame, so a frame's records are always consecutive.
pub(crate) fn encode<E>(
    records: &[(u64, Vec<u8>)],
    buf: &mut Vec<u8>,
    mut put: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut first = None;
    let mut next = 0;
    for (seq, bytes) in records {
        let full = buf.len() + LEN_BYTES + bytes.len() > FRAME_BYTES;
        if let Some(start) = first
            && (*seq != next || (full && !buf.is_empty()))
        {
            put(start, buf)?;
            buf.clear();
            first = None;
        }
        first.get_or_insert(*seq);
        let len = u32::try_from(bytes.len()).expect("a log record is far below 4 GiB");
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(bytes);
        next = seq + 1;
    }
    if let Some(start) = first {
        put(start, buf)?;
    }
    buf.clear();
    Ok(())
}

/// A frame whose bytes do not split into records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the length at byte {at} runs past the frame's end ({len} bytes)")]
pub(crate) struct Torn {
    /// Where the bad length is.
    pub(crate) at: usize,
    /// The frame's length.
    pub(crate) len: usize,
}

/// The record at `*at` in `frame`, moving `at` past it; `None` at the end.
/// After an error `at` stays where it was: the caller stops there.
pub(crate) fn next<'a>(frame: &'a [u8], at: &mut usize) -> Option<Result<&'a [u8], Torn>> {
    let rest = frame.get(*at..).filter(|rest| !rest.is_empty())?;
    let torn = Torn {
        at: *at,
        len: frame.len(),
    };
    let Some((len, rest)) = rest.split_first_chunk::<LEN_BYTES>() else {
        return Some(Err(torn));
    };
    let len = u32::from_le_bytes(*len) as usize;
    let Some(record) = rest.get(..len) else {
        return Some(Err(torn));
    };
    *at += LEN_BYTES + len;
    Some(Ok(record))
}

/// The `index`th record of `frame` (from 0), if it has that many.
pub(crate) fn nth(frame: &[u8], index: u64) -> Result<Option<&[u8]>, Torn> {
    let mut at = 0;
    let mut seen = 0;
    while let Some(record) = next(frame, &mut at) {
        let record = record?;
        if seen == index {
            return Ok(Some(record));
        }
        seen += 1;
    }
    Ok(None)
}

/// The bytes of `frame` from its `index`th record on (empty when it has no
/// more), for a frame cut in two.
pub(crate) fn tail(frame: &[u8], index: u64) -> Result<&[u8], Torn> {
    let mut at = 0;
    for _ in 0..index {
        match next(frame, &mut at) {
            Some(record) => drop(record?),
            None => break,
        }
    }
    Ok(&frame[at.min(frame.len())..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(records: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        encode::<()>(records, &mut Vec::new(), |seq, bytes| {
            out.push((seq, bytes.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    fn decoded(frame: &[u8]) -> Vec<Vec<u8>> {
        let mut at = 0;
        std::iter::from_fn(|| next(frame, &mut at))
            .map(|r| r.unwrap().to_vec())
            .collect()
    }

    #[test]
    fn records_round_trip_through_frames_of_bounded_size() {
        let records: Vec<(u64, Vec<u8>)> = (1..=2_000u64)
            .map(|seq| (seq, vec![seq as u8; (seq % 97) as usize]))
            .collect();
        let out = frames(&records);
        assert!(
            out.len() > 1,
            "2 000 records of ~48 bytes fill several frames"
        );
        let mut all = Vec::new();
        for (first, frame) in &out {
            assert!(frame.len() <= FRAME_BYTES);
            assert_eq!(*first, all.len() as u64 + 1, "frames follow each other");
            all.extend(decoded(frame));
        }
        let expected: Vec<Vec<u8>> = records.into_iter().map(|(_, b)| b).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn a_gap_starts_a_new_frame_and_a_huge_record_has_its_own() {
        let huge = vec![9; FRAME_BYTES + 1];
        let records = vec![
            (5, vec![1]),
            (6, vec![2]),
            (8, vec![3]),
            (9, huge.clone()),
            (10, vec![4]),
        ];
        let out = frames(&records);
        let firsts: Vec<u64> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(firsts, [5, 8, 9, 10]);
        assert_eq!(decoded(&out[2].1), [huge]);
        assert_eq!(nth(&out[0].1, 1).unwrap(), Some(&[2u8][..]));
        assert_eq!(nth(&out[0].1, 2).unwrap(), None);
        assert_eq!(decoded(tail(&out[0].1, 1).unwrap()), [vec![2]]);
        assert!(tail(&out[0].1, 5).unwrap().is_empty());
    }

    #[test]
    fn a_torn_frame_is_an_error_not_a_panic() {
        let (_, frame) = frames(&[(1, vec![1, 2, 3]), (2, vec![4, 5])]).remove(0);
        // Cut anywhere but between the two records.
        for cut in (1..frame.len()).filter(|&cut| cut != LEN_BYTES + 3) {
            let short = &frame[..cut];
            let mut at = 0;
            let mut torn = false;
            while let Some(record) = next(short, &mut at) {
                if record.is_err() {
                    torn = true;
                    break;
                }
            }
            assert!(
                torn,
                "a frame cut at {cut} of {} must not read as whole",
                frame.len()
            );
        }
    }
}
