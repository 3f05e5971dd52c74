//! Text helpers everyone uses: sizes and durations as people write them
//! (`16MiB`, `500ms`, `12h`), clipping, hex.

use std::fmt;
use std::time::Duration;

/// Bytes, printed exactly with the largest binary unit that divides them
/// (`16MiB`, `1000B`): the form [`parse_size`] reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// Bytes for people, rounded to one decimal (`73.2 KiB`).
#[must_use]
pub fn approx_size(bytes: u64) -> String {
    #[allow(
        clippy::cast_precision_loss,
        reason = "one decimal is all that is shown"
    )]
    let b = bytes as f64;
    match bytes {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", b / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MiB", b / f64::from(1u32 << 20)),
        _ => format!("{:.1} GiB", b / f64::from(1u32 << 30)),
    }
}

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

/// Text that is not the size, duration or number it should be; the message
/// names the text and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

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
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
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
            return Err(UnitError(format!(
                "`{text}` is not a size (e.g. 4096, 64KiB, 16MiB, 1GiB)"
            )));
        }
    };
    let n = parse_count(number).map_err(|_| {
        UnitError(format!(
            "`{text}` is not a size (e.g. 4096, 64KiB, 16MiB, 1GiB)"
        ))
    })?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| UnitError(format!("`{text}` is too large")))
}

/// A duration: a whole number of `ms`, `s`, `m`, `h` or `d`.
///
/// # Errors
///
/// A message naming the text and the expected form.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    let bad = || {
        UnitError(format!(
            "`{text}` is not a duration (e.g. 500ms, 30s, 15m, 12h, 7d)"
        ))
    };
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

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// `text` on one line: line breaks and the other control characters (but
/// tabs) written as escapes (`\n`, `\r`, `\u{1b}`), so what an agent
/// wrote cannot start a line of the host's log of its own.
#[must_use]
pub(crate) fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut line = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            c if c.is_control() && c != '\t' => line.extend(c.escape_unicode()),
            c => line.push(c),
        }
    }
    std::borrow::Cow::Owned(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_line_breaks_and_controls() {
        assert_eq!(one_line("plain\ttext"), "plain\ttext");
        assert_eq!(
            one_line("ok\n2026-12-07 ERROR toka: forged\r\u{1b}[2J"),
            "ok\\n2026-12-07 ERROR toka: forged\\r\\u{1b}[2J"
        );
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("hello", 10), "hello");
        assert_eq!(clip("hello world", 8), "hello...");
        let cut = clip("ééééé", 6);
        assert!(cut.len() <= 6 && cut.ends_with("..."), "{cut}");
        assert_eq!(approx_size(75_000), "73.2 KiB");
        assert_eq!(Size(16 << 20).to_string(), "16MiB");
    }

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
                .to_string()
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
