//! `toka events`: print the event log, or follow it as it grows.

use std::process::ExitCode;
use std::time::Duration;

use toka_host::EventStore;
use toka_kernel::{Applied, Kernel};

use crate::output::out;
use crate::render::{self, Names};
use crate::{CliResult, Failure};

/// How often `--follow` looks for new records.
const POLL: Duration = Duration::from_millis(100);

/// Arguments of `toka events`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// One JSON object per line instead of readable lines.
    #[arg(long)]
    json: bool,
    /// Start at this sequence number (default: the first record there is;
    /// the one after the anchor once the log's beginning is archived).
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
    /// Keep printing events as a running host commits them (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
}

pub(crate) async fn main(place: &crate::Place, args: Args) -> CliResult {
    // Read-only: a host may be writing the log at the same time.
    let store = crate::cluster::read_store(place)?;
    let store = &*store;
    // From the anchor snapshot when the log's beginning is archived.
    let (mut kernel, anchor) = toka_host::origin(store)?;
    let first = kernel.head().seq + 1;
    if let Some(from) = args.from
        && from < first
        && anchor.is_some()
    {
        return Err(Failure::input(toka_host::LogError::Archived {
            seq: from,
            first,
        }));
    }
    let from = args.from.unwrap_or(first);
    let mut names = Names::from_state(kernel.state());
    let mut print = |applied: &Applied| {
        for event in &applied.events {
            names.learn(event);
            if applied.seq < from {
                continue;
            }
            if args.json {
                out!("{}", render::json(applied, event));
            } else {
                out!(
                    "{}",
                    render::human(applied.seq, applied.origin, event, &names)
                );
            }
        }
    };
    catch_up(store, &mut kernel, &mut print)?;
    if !args.follow {
        let head = store.head().map_err(Failure::input)?;
        if head != kernel.head() {
            return Err(Failure::work(toka_host::LogError::HeadMismatch {
                expected: head.seq,
                found: kernel.head().seq,
            }));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(POLL) => catch_up(store, &mut kernel, &mut print)?,
        }
    }
}

/// Replays (and so verifies) the records after the kernel's head.
fn catch_up(
    store: &dyn EventStore,
    kernel: &mut Kernel,
    print: &mut impl FnMut(&Applied),
) -> Result<(), Failure> {
    let records = store
        .records(kernel.head().seq + 1)
        .map_err(Failure::input)?;
    for entry in records {
        let (_, bytes) = entry.map_err(Failure::input)?;
        let applied = kernel
            .replay(&bytes)
            .map_err(|e| Failure::work(format!("the log does not verify: {e}")))?;
        print(&applied);
    }
    Ok(())
}
