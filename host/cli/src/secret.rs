//! `toka secret set|list|remove`: the values the host injects into agents'
//! outbound requests (docs/capabilities.md). A value is read from stdin,
//! never from the command line (where `ps` and shell history would see
//! it), and no command prints it.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::process::ExitCode;

use toka_host::{MAX_SECRET_VALUE, SecretStore, check_secret_name};
use toka_server::views::{SecretRequest, SecretView};

use crate::output::out;
use crate::render::text;
use crate::{CliResult, Failure, Place, drive};

/// `toka secret` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Set (or replace) secret NAME; the value is read from stdin (one
    /// trailing newline is dropped), e.g. `printf %s "$KEY" | toka secret
    /// set OPENAI_API_KEY`.
    Set {
        /// The name rights bind (`secret NAME HOST`).
        name: String,
    },
    /// Print the secrets' names, lengths and when they were set (never
    /// their values).
    List,
    /// Remove secret NAME: requests to the hosts it is bound to are refused
    /// from now on.
    Remove {
        /// The secret's name.
        name: String,
    },
}

pub(crate) async fn main(place: &Place, command: Command) -> CliResult {
    let server = drive::server(place).await?;
    match command {
        Command::Set { name } => {
            check_secret_name(&name).map_err(Failure::input)?;
            let value = read_value(&name)?;
            if let Some(client) = server {
                let path = format!("/v1/secrets/{}", crate::remote::percent(&name));
                let request = SecretRequest { value };
                let _: SecretView = client.put(&path, &request).await?;
            } else {
                local(place, true)?
                    .set(&name, &value)
                    .map_err(Failure::input)?;
            }
            out!("secret {} set", text(&name));
        }
        Command::List => {
            let secrets: Vec<SecretView> = match server {
                Some(client) => client.get("/v1/secrets").await?,
                None => local(place, false)?
                    .list()
                    .into_iter()
                    .map(|s| SecretView {
                        name: s.name,
                        len: s.len as u64,
                        set_at: s.set_at,
                    })
                    .collect(),
            };
            if secrets.is_empty() {
                out!("no secrets (`toka secret set NAME` reads one from stdin)");
            }
            for secret in secrets {
                out!(
                    "{}  {} bytes  set {}",
                    text(&secret.name),
                    secret.len,
                    utc(secret.set_at)
                );
            }
        }
        Command::Remove { name } => {
            if let Some(client) = server {
                let path = format!("/v1/secrets/{}", crate::remote::percent(&name));
                let _: SecretView = client.delete(&path).await?;
            } else {
                local(place, false)?.remove(&name).map_err(Failure::input)?;
            }
            out!("secret {} removed", text(&name));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The data dir's secrets (the directory is created for `set`).
fn local(place: &Place, create: bool) -> Result<SecretStore, Failure> {
    let dir = place.dir();
    if !dir.path().exists() && !create {
        return Err(Failure::input(toka_host::DataDirError::Missing(
            dir.path().to_owned(),
        )));
    }
    SecretStore::open(dir.path()).map_err(Failure::input)
}

/// The value from stdin: all of it, without one trailing newline.
fn read_value(name: &str) -> Result<String, Failure> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("value of secret {name} (shown as you type; pipe it in to avoid that): ");
        let _ = std::io::stderr().flush();
    }
    let mut bytes = Vec::new();
    stdin
        .by_ref()
        .take(MAX_SECRET_VALUE as u64 + 3)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::input(format!("reading the value from stdin: {e}")))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    String::from_utf8(bytes).map_err(|_| {
        Failure::input(format!(
            "the value of secret {name} is not text (only printable ASCII)"
        ))
    })
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(1_796_300_000_000), "2026-12-03 12:13 UTC");
    }
}
