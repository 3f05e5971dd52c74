//! `toka package`: the publisher's tools — keys, building a signed
//! package, reading one, verifying one (docs/packages.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use toka_host::{Manifest, Package, PublisherKey, SigningKey};

use crate::output::out;
use crate::{CliResult, Failure};

/// The largest package file read.
const MAX_PACKAGE: u64 = 256 << 20;

/// `toka package` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Make a publisher key pair: NAME.key (secret, owner-only) and NAME.pub,
    /// in the raw format the `wasmsign2` CLI reads.
    Keygen {
        /// The path and name of the pair, without extension.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
    /// Embed a manifest in a component and sign both.
    Build {
        /// The agent component (`.wasm`).
        component: PathBuf,
        /// The manifest (`toka.toml`).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// The publisher's secret key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where to write the package.
        #[arg(short = 'o', long = "output", value_name = "PKG")]
        output: PathBuf,
    },
    /// Show a package's manifest, digests and signature.
    Inspect {
        /// The package.
        package: PathBuf,
        /// A publisher key to check the signature with.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Check a package's signature with a publisher's public key.
    Verify {
        /// The package.
        package: PathBuf,
        /// The publisher's public key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

pub(crate) fn main(place: &crate::Place, command: Command) -> CliResult {
    match command {
        Command::Keygen { out: name } => {
            let (secret, public) = toka_host::keygen(&name).map_err(Failure::input)?;
            out!("secret key: {} (keep it to yourself)", secret.display());
            out!("public key: {} (give it to operators)", public.display());
            let key = PublisherKey::from_file(&public).map_err(Failure::input)?;
            out!("fingerprint: {}", key.fingerprint());
        }
        Command::Build {
            component,
            manifest,
            key,
            output,
        } => {
            let bytes = read(&component)?;
            let text = std::fs::read_to_string(&manifest)
                .map_err(|e| Failure::input(format!("{}: {e}", manifest.display())))?;
            let manifest = Manifest::from_toml(&text)
                .map_err(|e| Failure::input(format!("{}: {e}", manifest.display())))?;
            let key = SigningKey::from_file(&key).map_err(Failure::input)?;
            let package = Package::build(&bytes, &manifest, &key)
                .map_err(|e| Failure::input(format!("{}: {e}", component.display())))?;
            write_atomic(&output, &package)?;
            let read = Package::read(package).map_err(Failure::work)?;
            out!(
                "{}: {} {} by {}, digest {}, signed hash {}",
                output.display(),
                read.manifest().name,
                read.manifest().version,
                read.manifest().publisher,
                read.digest(),
                read.signed_hash()
            );
        }
        Command::Inspect { package, key } => {
            let read = Package::read(read(&package)?)
                .map_err(|e| Failure::input(format!("{}: {e}", package.display())))?;
            out!("{}", read.manifest().describe());
            out!(
                "size:        {}",
                toka_host::approx_size(read.bytes().len() as u64)
            );
            out!("digest:      {}", read.digest());
            out!("signed hash: {}", read.signed_hash());
            out!(
                "signature:   {}",
                if read.is_signed() { "present" } else { "none" }
            );
            if let Some(key) = key {
                let public = PublisherKey::from_file(&key).map_err(Failure::input)?;
                match read.verify(&public) {
                    Ok(()) => out!("signed by:   {} ({})", key.display(), public.fingerprint()),
                    Err(e) => out!("not signed by {}: {e}", key.display()),
                }
            }
            // Which publisher of the data dir's trust store signed it, when
            // there is a data dir (it is never created here).
            if place.dir().exists() {
                let state = crate::install::read_state(place)?;
                let keys: Vec<(&str, PublisherKey)> = state
                    .publishers()
                    .filter_map(|p| Some((p.name.as_str(), PublisherKey::from_bytes(&p.key).ok()?)))
                    .collect();
                match read.signed_by(keys.iter().map(|(n, k)| (*n, k))) {
                    Some(name) => out!("trusted:     signed by trusted publisher `{name}`"),
                    None => out!(
                        "trusted:     no ({} trusts {} publisher(s); none signed it)",
                        place.data.display(),
                        keys.len()
                    ),
                }
            }
        }
        Command::Verify { package, key } => {
            let read = Package::read(read(&package)?)
                .map_err(|e| Failure::input(format!("{}: {e}", package.display())))?;
            let public = PublisherKey::from_file(&key).map_err(Failure::input)?;
            read.verify(&public)
                .map_err(|e| Failure::work(format!("{}: {e}", package.display())))?;
            out!(
                "ok: {} {} by {}, signed by {}",
                read.manifest().name,
                read.manifest().version,
                read.manifest().publisher,
                public.fingerprint()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A package file's bytes, refusing one larger than a package may be.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    let fail = |e: std::io::Error| Failure::input(format!("{}: {e}", path.display()));
    let size = std::fs::metadata(path).map_err(fail)?.len();
    if size > MAX_PACKAGE {
        return Err(Failure::input(format!(
            "{}: {} is larger than the {} a package may be",
            path.display(),
            toka_host::approx_size(size),
            toka_host::approx_size(MAX_PACKAGE)
        )));
    }
    std::fs::read(path).map_err(fail)
}

/// Writes `bytes` to `path` through a temporary file and a rename: a
/// failure leaves no half-written package.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::input(format!("{}: {e}", path.display()));
    let temp = path.with_extension("wasm.partial");
    std::fs::write(&temp, bytes).map_err(fail)?;
    std::fs::rename(&temp, path).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        fail(e)
    })
}
