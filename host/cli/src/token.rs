//! `toka token`: issue, attenuate, inspect and revoke capability tokens.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use toka_host::{Budget, Right, Token};
use toka_kernel::{Limits, Timestamp};

use crate::output::out;
use crate::render::hex;
use crate::{CliResult, Failure, Place, drive};

/// `toka token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Print the root public key (`ed25519/<hex>`), creating the key on first use.
    PublicKey,
    /// Mint a token granting rights, signed by the root key; prints it as base64.
    Issue {
        /// A right to grant (repeatable), e.g. `observe`, `schedule children`, `spawn worker`.
        #[arg(
            long = "right",
            value_name = "RIGHT",
            required_unless_present = "operator"
        )]
        rights: Vec<String>,
        /// An operator token for the API of `toka serve`: `read`, `write`
        /// or `admin` (each includes the ones before it; docs/capabilities.md).
        #[arg(long, value_name = "LEVEL", value_parser = ["read", "write", "admin"])]
        operator: Option<String>,
        /// A budget (repeatable): `memory=SIZE`, `fuel=N`, `deadline=DURATION`,
        /// `observations=SIZE`, e.g. `memory=16MiB`, `deadline=5s`.
        #[arg(long = "budget", value_name = "NAME=VALUE")]
        budgets: Vec<String>,
        /// Make it expire after this long, in the host's logical time
        /// (e.g. `90s`, `15m`, `12h`, `7d`).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Restrict a token to some of the rights it grants, or to smaller
    /// budgets; prints the new token.
    #[command(group = clap::ArgGroup::new("narrowing").required(true).multiple(true).args(["rights", "budgets"]))]
    Attenuate {
        /// The token (base64 or raw).
        file: PathBuf,
        /// A right to keep (repeatable); each must be one the token grants.
        /// Without any, the token keeps all its rights.
        #[arg(long = "right", value_name = "RIGHT")]
        rights: Vec<String>,
        /// A budget to lower (repeatable), e.g. `memory=16MiB`; a budget
        /// above the token's own changes nothing.
        #[arg(long = "budget", value_name = "NAME=VALUE")]
        budgets: Vec<String>,
    },
    /// Show a token's blocks (facts and checks) and revocation ids.
    Inspect {
        /// The token (base64 or raw).
        file: PathBuf,
    },
    /// Revoke every token carrying a revocation id (see `inspect`), and every
    /// token attenuated from one.
    Revoke {
        /// The revocation id: 128 hex digits.
        id: String,
        /// Revoke it even if no token stored here carries it.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) async fn main(place: &Place, command: Command) -> CliResult {
    match command {
        Command::PublicKey => {
            out!("{}", place.root_key(true)?.public_string());
        }
        Command::Issue {
            rights,
            budgets,
            expires,
            operator,
        } => {
            let mut rights = parse_rights(&rights)?;
            if let Some(level) = operator {
                rights.push(parse_rights(&[format!("operator {level}")])?.remove(0));
            }
            let budgets = parse_budgets(&budgets)?;
            let expires = expires.map(|d| expiry(&d)).transpose()?;
            for right in &rights {
                toka_host::check_fs_right(right, &place.protected_paths())
                    .map_err(Failure::input)?;
            }
            let root = place.root_key(true)?;
            let token = Token::issue(&root, &rights, &budgets, expires).map_err(Failure::work)?;
            out!("{}", token.to_base64());
        }
        Command::Attenuate {
            file,
            rights,
            budgets,
        } => {
            let keep_rights = rights.is_empty();
            let rights = parse_rights(&rights)?;
            let budgets = parse_budgets(&budgets)?;
            let token = read_token(place, &file)?;
            let now = now();
            for right in &rights {
                token
                    .grants(right, now)
                    .map_err(|why| Failure::input(format!("cannot keep `{right}`: {why}")))?;
            }
            let attenuated = if keep_rights {
                token.limit(&budgets)
            } else {
                token.attenuate(&rights, &budgets)
            }
            .map_err(Failure::work)?;
            out!("{}", attenuated.to_base64());
        }
        Command::Inspect { file } => inspect(place, &file)?,
        Command::Revoke { id, force } => {
            let bytes = parse_revocation_id(&id)?;
            if let Some(client) = drive::server(place).await? {
                return crate::remote::revoke(&client, &id, force).await;
            }
            if !place.dir().exists() {
                return Err(Failure::input(toka_host::DataDirError::Missing(
                    place.data.clone(),
                )));
            }
            let opened = drive::open(place).await?;
            let result = opened.host.revoke(bytes, force).await;
            opened.host.shutdown().await?;
            result?;
            out!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The time a token given `--expires DURATION` expires at.
fn expiry(duration: &str) -> Result<SystemTime, Failure> {
    let d = toka_host::parse_duration(duration).map_err(Failure::input)?;
    SystemTime::now()
        .checked_add(d)
        .filter(|at| {
            // Biscuit dates are seconds in an i64.
            at.duration_since(SystemTime::UNIX_EPOCH)
                .is_ok_and(|since| since.as_secs() < i64::MAX as u64)
        })
        .ok_or_else(|| Failure::input(format!("--expires {duration} is too far in the future")))
}

fn parse_rights(rights: &[String]) -> Result<Vec<Right>, Failure> {
    rights
        .iter()
        .map(|r| r.parse::<Right>())
        .collect::<Result<_, _>>()
        .map_err(Failure::input)
}

fn parse_budgets(budgets: &[String]) -> Result<Vec<Budget>, Failure> {
    budgets
        .iter()
        .map(|b| b.parse::<Budget>())
        .collect::<Result<_, _>>()
        .map_err(Failure::input)
}

fn read_token(place: &Place, file: &Path) -> Result<Token, Failure> {
    let bytes =
        std::fs::read(file).map_err(|e| Failure::input(format!("{}: {e}", file.display())))?;
    let root = place.root_key(false)?;
    Token::parse(&bytes, root.public(), Limits::default().max_token as usize)
        .map_err(|e| Failure::input(format!("{}: {e}", file.display())))
}

fn inspect(place: &Place, file: &Path) -> Result<(), Failure> {
    let bytes =
        std::fs::read(file).map_err(|e| Failure::input(format!("{}: {e}", file.display())))?;
    let inspection = Token::inspect_unverified(&bytes)
        .map_err(|e| Failure::input(format!("{}: {e}", file.display())))?;
    let verdict = match place.root_key(false) {
        Ok(root) => match Token::parse(&bytes, root.public(), Limits::default().max_token as usize)
        {
            Ok(token) => format!(
                "valid for root key {} (token id {})",
                root.public_string(),
                token.digest()
            ),
            Err(e) => format!("NOT valid here: {e}"),
        },
        Err(_) => "not checked (no root key here)".to_owned(),
    };
    let ids = &inspection.revocation_ids;
    out!(
        "token: {} bytes, {} blocks",
        inspection.size,
        inspection.blocks.len()
    );
    out!("signature: {verdict}");
    for (i, source) in inspection.blocks.iter().enumerate() {
        out!("block {i}{}:", if i == 0 { " (authority)" } else { "" });
        for line in source.lines() {
            out!("    {line}");
        }
        out!(
            "    revocation id: {}",
            ids.get(i).map_or_else(String::new, |id| hex(id))
        );
    }
    Ok(())
}

fn parse_revocation_id(id: &str) -> Result<Vec<u8>, Failure> {
    let bad = || {
        Failure::input(format!(
            "`{id}` is not a revocation id: expected 128 hex digits (see `toka token inspect`)"
        ))
    };
    if id.len() != 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    (0..id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&id[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// `90s`, `15m`, `12h`, `7d`.
fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_ids_parse_or_say_why_not() {
        assert_eq!(
            parse_revocation_id(&"ab".repeat(64)).unwrap(),
            vec![0xab; 64]
        );
        assert!(parse_revocation_id("abc").is_err());
    }
}
