//! `toka archive`: move the beginning of the log to a file the operator
//! keeps, and drop it from the live store. With a server on the data dir
//! it archives through the server's API while agents run on; else it
//! opens the store itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use toka_server::client::Client;
use toka_server::views::{ArchiveJob, ArchiveRequest};

use crate::output::out;
use crate::{CliResult, Failure, Place};

/// How often the progress of a server's archive is asked for.
const POLL: Duration = Duration::from_millis(200);

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

pub(crate) async fn main(place: &Place, args: Args) -> CliResult {
    if args.to.exists() {
        return Err(Failure::input(toka_host::ArchiveFileError::Exists {
            path: args.to,
        }));
    }
    if let Some(client) = crate::drive::server(place).await? {
        return online(&client, &place.data, args).await;
    }
    // Opened for writing: no host may run on the data dir meanwhile.
    let mut store = toka_host::DataDir::new(&place.data)
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
    report(&archived);
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

/// Archives through the server holding the data dir, then moves the file
/// it wrote (in the data dir's `archives` directory) to `args.to`.
async fn online(client: &Client, data: &Path, args: Args) -> CliResult {
    if let Some(parent) = args.to.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(Failure::input(format!(
            "{}: no such directory to write the archive into",
            parent.display()
        )));
    }
    out!("archiving through the server on the data dir; agents run on");
    let mut job: ArchiveJob = client
        .post("/v1/archive", &ArchiveRequest { keep: args.keep })
        .await?;
    let mut progress = crate::verify::progress();
    while job.state == "running" {
        if job.total > 0 {
            progress(job.done, job.total);
        }
        tokio::time::sleep(POLL).await;
        job = client.get(&format!("/v1/archive/{}", job.id)).await?;
    }
    let problem = job.problem.clone().unwrap_or_default();
    let archived = match (job.state.as_str(), archived(data, &job)) {
        ("ok", Some(archived)) => archived,
        ("nothing", _) => return Err(Failure::input(problem)),
        ("ok", None) => {
            return Err(Failure::work(format!(
                "the server says it archived to {:?}, which is not a file in the data dir's archives directory; nothing was moved",
                job.file
            )));
        }
        _ => return Err(Failure::work(format!("nothing was archived: {problem}"))),
    };
    if job.total > 0 {
        progress(job.total, job.total);
    }
    let archived = toka_host::Archived {
        file: move_file(&archived.file, &args.to).map_err(|e| {
            Failure::work(format!(
                "the log was archived to {}, but moving it to {} failed: {e}; move it yourself and keep it",
                archived.file.display(),
                args.to.display()
            ))
        })?,
        ..archived
    };
    report(&archived);
    out!(
        "agents' operations waited {} ms at most; the server reuses the space the archived records took",
        archived.writer_wait.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

/// What a finished job archived, its file in the data dir `data`'s
/// `archives` directory (the server names it; nothing else is moved).
fn archived(data: &Path, job: &ArchiveJob) -> Option<toka_host::Archived> {
    use std::path::Component;
    let file = Path::new(job.file.as_ref()?);
    let mut parts = file.components();
    let (Some(Component::Normal(dir)), Some(Component::Normal(_)), None) =
        (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if dir != "archives" {
        return None;
    }
    Some(toka_host::Archived {
        file: data.join(file),
        first: job.first?,
        last: job.last?,
        bodies: job.bodies?,
        bytes: job.bytes?,
        anchor: toka_host::Anchor {
            snapshot: job.last?,
            kept_from: job.kept_from?,
        },
        blobs_dropped: usize::try_from(job.blobs_dropped?).ok()?,
        // A server from before tokens were dropped reports none.
        tokens_dropped: usize::try_from(job.tokens_dropped.unwrap_or(0)).ok()?,
        writer_wait: Duration::from_secs_f64(job.writer_wait_seconds?),
    })
}

/// Moves `from` to `to` (which must not exist), across file systems too:
/// copied and synced before the original goes.
fn move_file(from: &Path, to: &Path) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    if to.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "it exists already",
        ));
    }
    if std::fs::rename(from, to).is_ok() {
        return Ok(to.to_owned());
    }
    let mut out = std::fs::File::create_new(to)?;
    let copied = std::io::copy(&mut std::fs::File::open(from)?, &mut out)
        .and_then(|_| out.flush())
        .and_then(|()| out.sync_all());
    if let Err(e) = copied {
        let _ = std::fs::remove_file(to);
        return Err(e);
    }
    std::fs::remove_file(from)?;
    Ok(to.to_owned())
}

fn report(archived: &toka_host::Archived) {
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
    if archived.tokens_dropped > 0 {
        out!(
            "dropped {} tokens of agents and packages gone by then",
            archived.tokens_dropped
        );
    }
}

fn file_size(store: &toka_host::RedbStore) -> u64 {
    std::fs::metadata(store.path()).map_or(0, |m| m.len())
}
