//! The lengths a package declares, checked before `wasmsign2` reads it.
//!
//! `wasmsign2` allocates a buffer of each length a file declares (a
//! section's, a custom section's name's, each slice of the signature
//! section) before it reads a byte of it: a 13-byte file declaring a 4 GiB
//! section made it ask for 4 GiB (under `ulimit -v`, or with overcommit
//! off, the allocation fails and the process aborts). Every length the
//! structure `wasmsign2` reads declares is checked here against the bytes
//! that hold it first.

/// The custom section holding the signatures (`wasmsign2`'s name).
const SIGNATURE_SECTION: &str = "signature";

/// Checks that every length `bytes` declares fits in what holds it: each
/// section's in the file, a custom section's name's in the section, and
/// in the signature section each set of signed hashes and each signature.
/// A file that merely ends early is `wasmsign2`'s to refuse.
///
/// # Errors
///
/// The first length that passes the end of what holds it, in words.
pub(super) fn check(bytes: &[u8]) -> Result<(), String> {
    let mut file = Bytes {
        rest: bytes,
        at: 0,
        what: "the file",
    };
    match sections(&mut file) {
        Err(Bad::Past(why)) => Err(why),
        Ok(()) | Err(Bad::Ends) => Ok(()),
    }
}

/// The file's sections, after its header (magic and version).
fn sections(file: &mut Bytes<'_>) -> Result<(), Bad> {
    file.take(8)?;
    while !file.rest.is_empty() {
        let id = file.leb()?;
        let mut section = file.slice("a section")?;
        if id != 0 {
            continue;
        }
        let name = section.slice("a custom section's name")?;
        if name.rest == SIGNATURE_SECTION.as_bytes() {
            section.what = "the signature section";
            signatures(&mut section)?;
        }
    }
    Ok(())
}

/// The signature section's data: three version bytes, then sets of signed
/// hashes, each holding signatures. A count past `wasmsign2`'s own limit
/// is its to refuse.
fn signatures(data: &mut Bytes<'_>) -> Result<(), Bad> {
    for _ in 0..3 {
        data.leb()?;
    }
    for _ in 0..data.leb()?.min(MAX_HASHES) {
        let mut set = data.slice("a set of signed hashes")?;
        let hashes = set.leb()?;
        if hashes > MAX_HASHES {
            return Ok(());
        }
        set.take(32 * hashes as usize)?;
        for _ in 0..set.leb()?.min(MAX_SIGNATURES) {
            let mut signature = set.slice("a signature")?;
            signature.slice("a key id")?;
            signature.take(1)?;
            signature.slice("the signature's bytes")?;
        }
    }
    Ok(())
}

/// `wasmsign2`'s bound on the sets of signed hashes, and on hashes in one.
const MAX_HASHES: u32 = 64;

/// `wasmsign2`'s bound on the signatures of a set.
const MAX_SIGNATURES: u32 = 256;

/// What is wrong with the bytes read.
enum Bad {
    /// They end before what is read (`wasmsign2` says so itself).
    Ends,
    /// A declared length passes the end of what holds it (in words).
    Past(String),
}

/// Bytes being read, at offset `at` of the file, inside `what`.
struct Bytes<'a> {
    rest: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Bytes<'a> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.rest.len() {
            return Err(Bad::Ends);
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        self.at += n;
        Ok(taken)
    }

    /// An unsigned LEB128 number of at most 32 bits, as `wasmsign2` reads
    /// it (a longer one it refuses).
    fn leb(&mut self) -> Result<u32, Bad> {
        let mut value = 0u32;
        for shift in 0..5 {
            let byte = self.take(1)?[0];
            value |= u32::from(byte & 0x7f) << (shift * 7);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Bad::Ends)
    }

    /// A slice its length comes before, named `what`.
    fn slice(&mut self, what: &'static str) -> Result<Bytes<'a>, Bad> {
        let len = self.leb()? as usize;
        let at = self.at;
        let rest = self.take(len).map_err(|_| {
            Bad::Past(format!(
                "{what} at byte {at} declares {len} bytes, past the end of {}",
                self.what
            ))
        })?;
        Ok(Bytes { rest, at, what })
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn a_length_past_what_holds_it_is_refused_before_it_is_allocated() {
        const HEADER: &[u8] = b"\0asm\x0d\0\x01\0";
        let file = |rest: &[u8]| [HEADER, rest].concat();
        // A section of 4 GiB - 1 in a 13-byte file.
        let error = check(&file(b"\x01\xff\xff\xff\xff\x0f")).unwrap_err();
        assert_eq!(
            error,
            "a section at byte 14 declares 4294967295 bytes, past the end of the file"
        );
        // A custom section's name past its section.
        let error = check(&file(b"\x00\x02\x7f\x00")).unwrap_err();
        assert!(error.contains("a custom section's name"), "{error}");
        // In the signature section: a set of hashes, then a signature,
        // past what holds it.
        let signature = |data: &[u8]| {
            let mut section = vec![9];
            section.extend_from_slice(b"signature");
            section.extend_from_slice(data);
            let mut out = vec![0, u8::try_from(section.len()).unwrap()];
            out.extend(section);
            file(&out)
        };
        let error = check(&signature(b"\x01\x01\x01\x01\xff\xff\x03")).unwrap_err();
        assert!(error.contains("a set of signed hashes"), "{error}");
        let error = check(&signature(b"\x01\x01\x01\x01\x04\x00\x01\x7f\x00")).unwrap_err();
        assert!(error.contains("a signature at byte"), "{error}");
        // Cut short (not a length past its end): `wasmsign2`'s to refuse.
        assert_eq!(check(&signature(b"\x01\x02\x03")), Ok(()));
        assert_eq!(check(&file(b"\x01\x80")), Ok(()));
        // Well formed: nothing refused.
        assert_eq!(
            check(&signature(
                b"\x01\x01\x01\x01\x07\x00\x01\x04\x00\x01\x01\x07"
            )),
            Ok(())
        );
        assert_eq!(check(&file(b"\x01\x01\x00")), Ok(()));
        assert_eq!(check(HEADER), Ok(()));
    }
}
