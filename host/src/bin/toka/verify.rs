//! `toka verify`: replay the log and check it.

use std::path::Path;
use std::process::ExitCode;

use crate::{CliResult, Failure};

/// Arguments of `toka verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

pub(crate) fn main(data: &Path, _args: Args) -> CliResult {
    let store = toka_host::DataDir::new(data)
        .open_existing()
        .map_err(Failure::input)?;
    let kernel = toka_host::replay(&store, |_| {})
        .map_err(|e| Failure::work(format!("verification failed: {e}")))?;
    println!("ok {} {}", kernel.head().seq, kernel.state().digest());
    Ok(ExitCode::SUCCESS)
}
