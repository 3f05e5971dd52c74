//! `toka events`: print the event log.

use std::path::Path;
use std::process::ExitCode;

use crate::render::{self, Names};
use crate::{CliResult, Failure};

/// Arguments of `toka events`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// One JSON object per line instead of readable lines.
    #[arg(long)]
    json: bool,
    /// Start at this sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 1)]
    from: u64,
}

pub(crate) fn main(data: &Path, args: Args) -> CliResult {
    let store = toka_host::DataDir::new(data)
        .open_existing()
        .map_err(Failure::input)?;
    let mut names = Names::default();
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    toka_host::replay(&store, |applied| {
        for event in &applied.events {
            names.learn(event);
            if applied.seq < args.from || write_error.is_some() {
                continue;
            }
            let line = if args.json {
                render::json(applied.seq, applied.time, applied.origin, event).to_string()
            } else {
                render::human(applied.seq, applied.origin, event, &names)
            };
            if let Err(e) = std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes()) {
                write_error = Some(e);
            }
        }
    })?;
    match write_error {
        // A closed pipe (`toka events | head`) is not an error.
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::work(e)),
        _ => Ok(ExitCode::SUCCESS),
    }
}
