//! `toka verify`: replay the log and check it.

use std::path::PathBuf;
use std::process::ExitCode;

use toka_host::EventStore;

use crate::output::out;
use crate::{CliResult, Failure};

/// Arguments of `toka verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Also re-run every recorded authorization decision (allowed operations,
    /// delegations, denials) with the stored tokens, and report any that does
    /// not reproduce.
    #[arg(long)]
    auth: bool,
    /// An archive `toka archive` wrote, checked first and against the live
    /// log; give several oldest first.
    #[arg(long, value_name = "FILE")]
    archive: Vec<PathBuf>,
}

pub(crate) fn main(place: &crate::Place, args: Args) -> CliResult {
    if place.cluster.is_none() {
        let store = toka_host::DataDir::new(&place.data)
            .open_read_only()
            .map_err(Failure::input)?;
        return check(&store, &args);
    }
    if !args.archive.is_empty() {
        return Err(Failure::input(
            "--archive checks a data dir's archives, not a cluster's",
        ));
    }
    let cluster = crate::cluster::connect(place)?;
    for cell in crate::cluster::cells(place, &cluster)? {
        out!("cell {cell}:");
        let store = toka_host::CellStore::open_read_only(&cluster, cell).map_err(Failure::input)?;
        check(&store, &args).map_err(|e| Failure {
            message: format!("cell {cell}: {}", e.message),
            ..e
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies one store: its archives, its log, and with --auth its
/// authorization decisions.
fn check(store: &dyn EventStore, args: &Args) -> CliResult {
    let mut progress = progress();
    if !args.archive.is_empty() {
        let checked = toka_host::verify_archive(store, &args.archive, &mut progress).map_err(
            |e| match e {
                toka_host::ArchiveError::Mismatch { .. } => {
                    Failure::work(format!("archive verification failed: {e}"))
                }
                other => Failure::input(other),
            },
        )?;
        for (file, c) in args.archive.iter().zip(&checked) {
            out!(
                "archive ok: {} holds records {}..={} and {} response bodies{}",
                file.display(),
                c.first,
                c.last,
                c.bodies,
                if c.meets_anchor {
                    ", ending at the live log's anchor"
                } else {
                    ""
                }
            );
        }
    }
    let verified = toka_host::verify_reporting(store, &mut progress)
        .map_err(|e| Failure::work(format!("verification failed: {e}")))?;
    out!("ok {} {}", verified.records, verified.state_digest);
    if let Some(anchor) = verified.anchor {
        out!(
            "anchored at the snapshot after record {anchor}: records up to it are archived (check them with --archive FILE)"
        );
    }
    if verified.bodies > 0 {
        out!(
            "response bodies ok: {} journaled responses match their digests",
            verified.bodies
        );
    }
    if verified.snapshots > 0 {
        out!("snapshots ok: {} match the log", verified.snapshots);
    }
    if !args.auth {
        return Ok(ExitCode::SUCCESS);
    }
    let root = store
        .root_public_key()
        .map_err(Failure::input)?
        .and_then(|k| toka_host::PublicKey::from_bytes(&k, toka_host::Algorithm::Ed25519).ok())
        .ok_or_else(|| {
            Failure::input("the data dir records no root public key to check tokens against")
        })?;
    let report = toka_host::audit_reporting(store, root, &mut progress)
        .map_err(|e| Failure::work(format!("audit failed: {e}")))?;
    for m in &report.mismatches {
        out!("auth mismatch at record {}: {}", m.seq, m.problem);
    }
    if !report.mismatches.is_empty() {
        return Err(Failure::work(format!(
            "{} of {} authorization decisions do not reproduce",
            report.mismatches.len(),
            report.allowed + report.denied + report.operator
        )));
    }
    out!(
        "auth ok: {} allowed and {} denied decisions reproduced; {} operator commands and {} package installs re-checked",
        report.allowed,
        report.denied,
        report.operator,
        report.packages
    );
    Ok(ExitCode::SUCCESS)
}

/// Progress on stderr, when it is a terminal: long logs take a while.
pub(crate) fn progress() -> impl FnMut(u64, u64) {
    use std::io::{IsTerminal as _, Write as _};
    let shown = std::io::stderr().is_terminal();
    move |done, total| {
        if shown {
            let mut err = std::io::stderr();
            let _ = write!(err, "\rchecked {done} of {total} records");
            if done >= total {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        }
    }
}
