//! Printing to stdout when the reader may go away (`toka events | head`).

use std::io::Write;

/// Prints one line. When stdout is closed (a broken pipe), exits quietly:
/// everything printed so far was already durable, so nothing is lost.
pub(crate) fn line(text: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` that exits quietly on a closed stdout (see [`line()`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use out;
