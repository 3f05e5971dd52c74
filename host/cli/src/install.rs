//! The operator's side of packages: `toka trust add|list|remove`,
//! `toka install PKG`, `toka uninstall NAME` (docs/packages.md). Each
//! change is one record in the log; bad input records nothing.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use toka_host::{Approval, Package, PublisherKey, Right};
use toka_kernel::WorldState;
use toka_server::views::{InstalledView, ReviewView};

use crate::output::out;
use crate::render::text;
use crate::{CliResult, Failure, Place, drive};

/// `toka trust` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust a publisher's public key (as `toka package keygen` or the
    /// `wasmsign2` CLI write it) to sign packages, under NAME.
    Add {
        /// The operator's name for the publisher.
        name: String,
        /// The publisher's public key file.
        key: PathBuf,
    },
    /// Print the trusted publishers and their installed packages.
    List,
    /// Stop trusting a publisher: its packages' install tokens are revoked (its agents are denied from their next
    /// operation on).
    Remove {
        /// The publisher's name.
        name: String,
    },
}

/// Arguments of `toka install`.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// The signed package (`.wasm`, from `toka package build`).
    package: PathBuf,
    /// Grant this right (repeatable): one the package requests, or a
    /// narrower one (`fs.read /data/in` for a requested `fs.read /data`).
    /// Requested rights not approved are not granted.
    #[arg(long = "approve", value_name = "RIGHT")]
    approve: Vec<String>,
    /// Approve every right the package requests, without asking.
    #[arg(long, conflicts_with = "approve")]
    yes: bool,
}

/// Arguments of `toka uninstall`.
#[derive(Debug, clap::Args)]
pub(crate) struct UninstallArgs {
    /// The installed package's name.
    name: String,
}

pub(crate) async fn trust(place: &Place, command: TrustCommand) -> CliResult {
    match command {
        TrustCommand::List => {
            let state = read_state(place)?;
            print_trust(&state);
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Add { name, key } => {
            let key = PublisherKey::from_file(&key).map_err(Failure::input)?;
            toka_kernel::validate_name("publisher", &name, &toka_kernel::Limits::default())
                .map_err(Failure::input)?;
            if let Some(client) = drive::server(place).await? {
                crate::remote::trust(&client, &name, &key).await?;
            } else {
                let opened = drive::open(place).await?;
                let result = opened.host.as_host().trust(&name, &key).await;
                finish(opened, place, result.map_err(Failure::from)).await?;
            }
            out!(
                "trusted publisher `{}` ({})",
                text(&name),
                key.fingerprint()
            );
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Remove { name } => {
            let removed = if let Some(client) = drive::server(place).await? {
                crate::remote::distrust(&client, &name).await?
            } else {
                let opened = drive::open(place).await?;
                let result = opened.host.as_host().distrust(&name).await;
                finish(opened, place, result.map_err(Failure::from)).await?
            };
            out!("publisher `{}` is no longer trusted", text(&name));
            for package in removed {
                out!(
                    "  package `{}`: its install token is revoked (its agents are denied from their next operation on; `toka uninstall` removes it)",
                    text(&package)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) async fn install(place: &Place, args: InstallArgs) -> CliResult {
    let bytes = crate::package::read(&args.package)?;
    let at = |e: &dyn std::fmt::Display| Failure::input(format!("{}: {e}", args.package.display()));
    // What can be checked without the data dir is checked first.
    Package::read(bytes.clone()).map_err(|e| at(&e))?;
    let approve = args
        .approve
        .iter()
        .map(|r| r.parse::<Right>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::input)?;
    let approval = if args.yes {
        Some(Approval::All)
    } else if approve.is_empty() {
        None
    } else {
        Some(Approval::Rights(approve))
    };
    if let Some(client) = drive::server(place).await? {
        let review = crate::remote::review(&client, &bytes)
            .await
            .map_err(|e| at(&e.message))?;
        eprint!("{}", summary(&review));
        let approval = approval.map_or_else(|| confirm(&review.new_rights), Ok)?;
        let installed = crate::remote::install_package(&client, bytes, &approval)
            .await
            .map_err(|e| at(&e.message))?;
        out!("{}", installed_line(&installed));
        return Ok(ExitCode::SUCCESS);
    }
    let opened = drive::open(place).await?;
    let result = async {
        let review = opened.host.as_host().review(bytes).map_err(|e| at(&e))?;
        let view = toka_server::review_view(&review);
        eprint!("{}", summary(&view));
        let approval = approval.map_or_else(|| confirm(&view.new_rights), Ok)?;
        let installed = opened
            .host
            .as_host()
            .install_package(&review, &approval)
            .await
            .map_err(|e| at(&e))?;
        Ok::<_, Failure>(toka_server::installed_view(&installed))
    }
    .await;
    let installed = finish(opened, place, result).await?;
    out!("{}", installed_line(&installed));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn uninstall(place: &Place, args: UninstallArgs) -> CliResult {
    if let Some(client) = drive::server(place).await? {
        crate::remote::uninstall(&client, &args.name).await?;
    } else {
        let opened = drive::open(place).await?;
        let result = opened.host.as_host().uninstall(&args.name).await;
        finish(opened, place, result.map_err(Failure::from)).await?;
    }
    out!(
        "package `{}` uninstalled: its agents are terminated and its install token revoked",
        text(&args.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// What `install` shows before it asks: the package, its signer, what it
/// requests, and for an upgrade what it requests anew.
fn summary(review: &ReviewView) -> String {
    let mut out = format!(
        "package {} {} signed by trusted publisher `{}` (digest {})\n",
        text(&review.name),
        text(&review.version),
        text(&review.publisher),
        review.digest.get(..12).unwrap_or(&review.digest)
    );
    if !review.description.is_empty() {
        out.push_str(&format!("  {}\n", text(&review.description)));
    }
    out.push_str(&format!("  requests rights: {}\n", list(&review.requested)));
    out.push_str(&format!("  budgets:         {}\n", list(&review.budgets)));
    if let Some(previous) = &review.previous {
        out.push_str(&format!(
            "  upgrades {} (its agents keep their state); new rights: {}\n",
            text(previous),
            list(&review.new_rights)
        ));
    }
    out
}

/// The line an install ends with.
fn installed_line(installed: &InstalledView) -> String {
    let package = &installed.package;
    let what = match &installed.previous {
        Some(old) => format!(
            "upgraded from {} ({} agent(s) rebound)",
            text(old),
            installed.rebound
        ),
        None => "installed".to_owned(),
    };
    format!(
        "package {} {} {what}; granted: {}; run it with `toka run {}`",
        text(&package.name),
        text(&package.version),
        list(&installed.granted),
        text(&package.name)
    )
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        text(&items.join(", "))
    }
}

/// Asks the operator to approve `new` rights on the terminal; refuses
/// without one (a script passes --yes or --approve).
fn confirm(new: &[String]) -> Result<Approval, Failure> {
    if new.is_empty() {
        return Ok(Approval::Held);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::input(format!(
            "the package requests {} and no approval was given: pass --yes to approve every requested right, or --approve RIGHT for each one to grant",
            new.join(", ")
        )));
    }
    eprint!("grant {}? [y/N] ", new.join(", "));
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::input(format!("reading the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(Approval::All)
    } else {
        Err(Failure::work("not installed: the rights were not approved"))
    }
}

/// Shuts the host down after `result`; on failure removes what opening
/// the data dir created.
pub(crate) async fn finish<T>(
    opened: drive::Opened,
    place: &Place,
    result: Result<T, Failure>,
) -> Result<T, Failure> {
    match result {
        Ok(value) => {
            opened.host.shutdown().await?;
            Ok(value)
        }
        Err(e) => {
            drive::discard(opened, place).await;
            Err(e)
        }
    }
}

/// The state of the data dir, read without opening a host (empty when
/// the data dir does not exist yet).
pub(crate) fn read_state(place: &Place) -> Result<WorldState, Failure> {
    if place.cluster.is_none() && !place.dir().exists() {
        return Ok(WorldState::default());
    }
    let store = crate::cluster::read_store(place)?;
    let (kernel, _) = toka_host::recover(store.as_ref())?;
    Ok(kernel.state().clone())
}

fn print_trust(state: &WorldState) {
    if state.publishers().len() == 0 {
        out!("no trusted publishers (`toka trust add NAME KEYFILE` adds one)");
    }
    let package = |p: &toka_kernel::PackageRecord| {
        out!(
            "  {} {}  component {}  approved: {}{}",
            text(&p.name),
            text(&p.version),
            p.component.short(),
            list(&p.approved),
            if state.package_revoked(p) {
                "  (token revoked)"
            } else {
                ""
            }
        );
    };
    for publisher in state.publishers() {
        let fingerprint = PublisherKey::from_bytes(&publisher.key)
            .map_or_else(|_| "unreadable key".to_owned(), |k| k.fingerprint());
        out!("{}  {}", text(&publisher.name), fingerprint);
        state
            .packages()
            .filter(|p| p.publisher == publisher.name)
            .for_each(package);
    }
    let mut orphans = state
        .packages()
        .filter(|p| state.publisher(&p.publisher).is_none())
        .peekable();
    if orphans.peek().is_some() {
        out!("packages of removed publishers (`toka uninstall NAME` removes them):");
        orphans.for_each(package);
    }
}
