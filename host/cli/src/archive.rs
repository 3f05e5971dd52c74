//! `toka archive`: move the beginning of the log to a file the operator
//! keeps, and drop it from the live store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::output::out;
use crate::{CliResult, Failure};

/// Arguments of `toka archive`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The archive file to write (it must not exist). Keep it: `toka verify
    /// --archive FILE` checks it against the live log.
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// Records before the head to keep in the live log (records of tasks
    /// still running at the cut are kept too).
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep: u64,
}

pub(crate) fn main(data: &Path, args: Args) -> CliResult {
    // Opened for writing: no host may run on the data dir meanwhile.
    let mut store = toka_host::DataDir::new(data)
        .open_existing()
        .map_err(Failure::input)?;
    let before = file_size(&store);
    let mut progress = crate::verify::progress();
    let archived =
        toka_host::archive(&store, &args.to, args.keep, &mut progress).map_err(|e| match e {
            toka_host::ArchiveError::Nothing(_) | toka_host::ArchiveError::File(_) => {
                Failure::input(e)
            }
            other => Failure::work(format!("nothing was archived: {other}")),
        })?;
    out!(
        "archived records {}..={} ({} response bodies, {}) to {}",
        archived.first,
        archived.last,
        archived.bodies,
        toka_host::approx_size(archived.bytes),
        archived.file.display()
    );
    let anchor = archived.anchor;
    if anchor.kept_from <= anchor.snapshot {
        out!(
            "the live log starts at the snapshot after record {}; records {}..={} stay for tasks still running",
            anchor.snapshot,
            anchor.kept_from,
            anchor.snapshot
        );
    } else {
        out!(
            "the live log starts at the snapshot after record {}",
            anchor.snapshot
        );
    }
    if archived.blobs_dropped > 0 {
        out!(
            "dropped {} blobs nothing kept refers to",
            archived.blobs_dropped
        );
    }
    // Give the space back; the archive is already safe if this fails.
    match store.compact() {
        Ok(_) => out!(
            "{}: {} -> {}",
            store.path().display(),
            toka_host::approx_size(before),
            toka_host::approx_size(file_size(&store))
        ),
        Err(e) => tracing::warn!(error = %e, "compacting after the archive failed"),
    }
    Ok(ExitCode::SUCCESS)
}

fn file_size(store: &toka_host::RedbStore) -> u64 {
    std::fs::metadata(store.path()).map_or(0, |m| m.len())
}
