//! Keeping a secret's value out of what an agent reads and the log holds.
//!
//! A server the secret is sent to may echo it back (a debugging endpoint,
//! an error message quoting the request). Before a response reaches the
//! journal or the agent, every occurrence of the value is replaced by
//! `[redacted]`: as sent, JSON-escaped, base64-encoded at any of the three
//! alignments it can start at inside a longer encoded text (standard and
//! URL-safe alphabets: the forms of `Basic` credentials and of echoed
//! headers as bytes), and percent-encoded (upper or lower case hex). A server that transforms the value otherwise (reversing
//! it, encrypting it) is beyond what a host can recognize: bind secrets
//! only to hosts you trust with them.

/// What replaces a secret.
pub(crate) const REDACTED: &[u8] = b"[redacted]";

/// The forms of the secrets to look for.
pub(crate) struct Redactor {
    needles: Vec<Vec<u8>>,
}

impl Redactor {
    /// The forms of each of `secrets` (never empty: the store refuses
    /// empty values).
    pub(crate) fn of<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut needles = Vec::new();
        for secret in secrets {
            let raw = secret.as_bytes();
            let mut forms = vec![
                raw.to_vec(),
                json_escaped(raw),
                percent(raw, false),
                percent(raw, true),
            ];
            for alphabet in [STANDARD, URL_SAFE] {
                for offset in 0..3 {
                    forms.push(base64_inside(raw, alphabet, offset));
                }
            }
            // A base64 form of a very short value would match by chance.
            forms.retain(|n| n.len() >= raw.len().min(4));
            needles.extend(forms);
        }
        // The longest first: a form inside a longer one goes with it.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self { needles }
    }

    /// `bytes` with every form of the secret replaced; `None` when there
    /// was nothing to replace (the common case: no copy is made).
    pub(crate) fn redact(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for needle in &self.needles {
            let current = out.as_deref().unwrap_or(bytes);
            if let Some(replaced) = replace_all(current, needle) {
                out = Some(replaced);
            }
        }
        out
    }

    /// `text` redacted, as text.
    pub(crate) fn redact_str(&self, text: &str) -> String {
        match self.redact(text.as_bytes()) {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => text.to_owned(),
        }
    }
}

fn replace_all(haystack: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    let first = find(haystack, needle, 0)?;
    let mut out = Vec::with_capacity(haystack.len());
    let mut from = 0;
    let mut at = Some(first);
    while let Some(i) = at {
        out.extend_from_slice(&haystack[from..i]);
        out.extend_from_slice(REDACTED);
        from = i + needle.len();
        at = find(haystack, needle, from);
    }
    out.extend_from_slice(&haystack[from..]);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < from + needle.len() {
        return None;
    }
    memchr::memmem::find(&haystack[from..], needle).map(|i| i + from)
}

/// The base64 symbols that encode `bytes` alone when they start `offset`
/// bytes (0 to 2) into a longer encoded text: the symbols shared with the
/// bytes before or after are left out.
fn base64_inside(bytes: &[u8], alphabet: &[u8; 64], offset: usize) -> Vec<u8> {
    let padded = [vec![0; offset], bytes.to_vec()].concat();
    let encoded = base64(&padded, alphabet, false);
    let first = (offset * 8).div_ceil(6);
    let last = (padded.len() * 8) / 6;
    encoded
        .get(first..last)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// `bytes` as a JSON string holds them (quotes and backslashes escaped).
fn json_escaped(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = chunk.len() + 1;
        for i in 0..4 {
            if i < symbols {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
            } else if pad {
                out.push(b'=');
            }
        }
    }
    out
}

fn percent(bytes: &[u8], lower: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else if lower {
            out.extend_from_slice(format!("%{b:02x}").as_bytes());
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes(), STANDARD, true), encoded.as_bytes());
        }
        assert_eq!(base64(&[0xfb, 0xff], URL_SAFE, false), b"-_8");
    }

    #[test]
    fn every_form_of_the_secret_is_redacted() {
        let secret = "sk-live/abc+def==";
        let redactor = Redactor::of([secret]);
        let b64 = |text: &str, alphabet| {
            String::from_utf8(base64(text.as_bytes(), alphabet, true)).unwrap()
        };
        let echoed = format!(
            "{{\"auth\":\"Bearer {secret}\",\"b64\":\"{}\",\"header\":\"{}\",\"basic\":\"{}\",\"url\":\"{}\",\"u\":\"{}\",\"l\":\"{}\"}}",
            b64(secret, STANDARD),
            b64(&format!("Bearer {secret}"), STANDARD),
            b64(&format!("user:{secret}"), URL_SAFE),
            String::from_utf8(base64(secret.as_bytes(), URL_SAFE, false)).unwrap(),
            String::from_utf8(percent(secret.as_bytes(), false)).unwrap(),
            String::from_utf8(percent(secret.as_bytes(), true)).unwrap(),
        );
        let clean = redactor.redact_str(&echoed);
        assert!(!clean.contains(secret), "{clean}");
        for (what, form) in [
            ("base64", b64(secret, STANDARD)),
            (
                "base64 of the header",
                b64(&format!("Bearer {secret}"), STANDARD),
            ),
            ("basic", b64(&format!("user:{secret}"), URL_SAFE)),
        ] {
            // No run of the encoded value survives (the symbols at its ends
            // are shared with what surrounds it).
            let inner = &form[4..form.len() - 4];
            assert!(!clean.contains(inner), "{what}: {clean}");
        }
        assert!(
            !clean.contains("abc%2Bdef") && !clean.contains("abc%2bdef"),
            "{clean}"
        );
        assert_eq!(clean.matches("[redacted]").count(), 7, "{clean}");
        assert_eq!(redactor.redact(b"nothing to see"), None);
    }

    #[test]
    fn several_secrets_are_redacted_at_once() {
        // "Bearer " is 7 bytes: the second secret starts 1 byte into a
        // base64 group, so its symbols start at the 11th ("QmVhcmVyIH" is
        // the prefix's own).
        let redactor = Redactor::of(["sk-first-1234", "second-5678"]);
        let text = format!(
            "a sk-first-1234 b second-5678 c {}",
            String::from_utf8(base64(b"Bearer second-5678", STANDARD, true)).unwrap()
        );
        assert_eq!(
            redactor.redact_str(&text),
            "a [redacted] b [redacted] c QmVhcmVyIH[redacted]"
        );
    }
}
