//! `toka component`: operator actions on installed components.

use std::process::ExitCode;

use toka_kernel::{ComponentSpec, WorldState};

use crate::output::out;
use crate::render::text;
use crate::{CliResult, Failure, Place, drive};

/// `toka component` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Remove an installed component no agent runs any more: it can no
    /// longer be spawned, and its bytes leave the store with the archive
    /// that takes the removal (`toka archive`). Refused while a package
    /// ships it or an agent that is not terminated runs it.
    Remove {
        /// The component: its installed name, or its digest (64 hex digits).
        component: String,
    },
}

pub(crate) async fn main(place: &Place, command: Command) -> CliResult {
    match command {
        Command::Remove { component } => remove(place, &component).await,
    }
}

async fn remove(place: &Place, which: &str) -> CliResult {
    let (name, digest) = if let Some(client) = drive::server(place).await? {
        let removed = crate::remote::remove_component(&client, which).await?;
        (removed.name, removed.digest)
    } else {
        if !place.dir().exists() {
            return Err(Failure::input(toka_host::DataDirError::Missing(
                place.data.clone(),
            )));
        }
        let opened = drive::open(place).await?;
        let result = match opened.host.state(|s| find(s, which)).await {
            Ok(found) => opened
                .host
                .as_host()
                .remove_component(found.digest)
                .await
                .map(|()| found)
                .map_err(Failure::from),
            Err(e) => Err(e),
        };
        let removed = crate::install::finish(opened, place, result).await?;
        (removed.name, removed.digest.to_string())
    };
    out!(
        "component `{}` ({}) removed: it can no longer be spawned; its bytes leave the store with the next `toka archive` that takes this record",
        text(&name),
        digest.get(..12).unwrap_or(&digest)
    );
    Ok(ExitCode::SUCCESS)
}

/// The installed component `which` names: a digest, else a name.
fn find(state: &WorldState, which: &str) -> Result<ComponentSpec, Failure> {
    state
        .component_by(which)
        .cloned()
        .ok_or_else(|| Failure::input(format!("no component `{}` is installed", text(which))))
}
