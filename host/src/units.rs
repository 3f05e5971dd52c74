//! Sizes and durations as people write them: `16MiB`, `500ms`, `12h`.

use std::fmt;
use std::time::Duration;

/// Bytes, printed with the largest binary unit that divides them.
pub(crate) struct Size(pub(crate) u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A whole number (`_` separators allowed).
pub(crate) fn parse_count(text: &str) -> Result<u64, String> {
    let text = text.trim().replace('_', "");
    text.parse()
        .map_err(|_| format!("`{text}` is not a whole number"))
}

/// Bytes: a whole number with an optional unit `B`, `KiB`, `MiB`, `GiB`
/// (or `K`, `M`, `G`, also binary).
///
/// # Errors
///
/// A message naming the text and the expected form.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => {
            return Err(format!(
                "`{text}` is not a size (e.g. 4096, 64KiB, 16MiB, 1GiB)"
            ));
        }
    };
    let n = parse_count(number)
        .map_err(|_| format!("`{text}` is not a size (e.g. 4096, 64KiB, 16MiB, 1GiB)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A duration: a whole number of `ms`, `s`, `m`, `h` or `d`.
///
/// # Errors
///
/// A message naming the text and the expected form.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("`{text}` is not a duration (e.g. 500ms, 30s, 15m, 12h, 7d)");
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n = parse_count(number).map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" | "h" | "d" => {
            let unit = match unit {
                "m" => 60,
                "h" => 3600,
                _ => 86_400,
            };
            n.checked_mul(unit).map(Duration::from_secs).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1_000B"), Ok(1000));
        assert!(parse_size("1.5GiB").is_err());
        assert!(
            parse_size("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "5", "s", "5w", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(Size(3 << 20).to_string(), "3MiB");
        assert_eq!(Size(1000).to_string(), "1000B");
    }
}
