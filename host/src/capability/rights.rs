//! Rights: what a capability token grants, as people write them and as
//! Datalog facts.
//!
//! A right is an operation class and, for most classes, a target:
//!
//! | right                     | allows                                             | fact in the token                 |
//! |---------------------------|----------------------------------------------------|-----------------------------------|
//! | `observe`                 | emitting observations                              | `right("observe")`                |
//! | `state`                   | reading and writing the agent's own state          | `right("state")`                  |
//! | `schedule TARGET`         | queueing tasks for TARGET                          | `right("schedule", "TARGET")`     |
//! | `terminate TARGET`        | terminating TARGET                                 | `right("terminate", "TARGET")`    |
//! | `spawn COMPONENT`         | spawning sub-agents of an installed component      | `right("spawn", "COMPONENT")`     |
//! | `extension FAMILY`        | operations of a registered extension family        | `right("extension", "FAMILY")`    |
//! | `fs.read PATH`            | reading the host directory PATH (preopened read-only) | `right("fs.read", "PATH")`     |
//! | `fs.write PATH`           | reading and writing the host directory PATH        | `right("fs.write", "PATH")`       |
//! | `http HOST`               | outgoing HTTP requests to HOST (`name` or `name:port`) | `right("http", "HOST")`       |
//! | `secret NAME HOST [HEADER]` | the host injects secret NAME into requests to HOST (the agent never sees it) | `right("secret", "NAME HOST")` or `right("secret", "NAME HOST HEADER")` |
//! | `operator LEVEL`          | the HTTP API of `toka serve`, at LEVEL (`read`, `write`, `admin`) | `right("operator", "LEVEL")` |
//!
//! TARGET is `self`, `children` (the agent's own sub-agents), an agent id
//! (32 hex digits), or `*` (any). COMPONENT is an installed component's name
//! or 64-hex-digit digest, or `*`. PATH is an absolute path without `..`.
//! Targets are relative to the token's holder: `schedule children` lets any
//! agent holding it schedule onto *its own* children. Operator rights are
//! for people and programs calling the API, never for agents: each level
//! includes the ones below it (`admin` ⊇ `write` ⊇ `read`), see
//! [`OperatorLevel`].
//!
//! A `secret` right's target is the binding, `NAME HOST` or `NAME HOST
//! HEADER` (one string, words separated by one space, the header in lower
//! case): without a header the value goes into `Authorization: Bearer
//! VALUE`, with one it is the header's whole value (`x-api-key` for APIs
//! that take a bare key). See [`SecretBinding`].

use std::fmt;
use std::str::FromStr;

/// An operation class a right can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RightOp {
    /// Emit observations.
    Observe,
    /// Read and write the agent's own state.
    State,
    /// Schedule tasks.
    Schedule,
    /// Terminate agents.
    Terminate,
    /// Spawn sub-agents.
    Spawn,
    /// Extension operations.
    Extension,
    /// Reading a host directory.
    FsRead,
    /// Reading and writing a host directory.
    FsWrite,
    /// Outgoing HTTP to a host.
    Http,
    /// A secret injected into requests to a host.
    Secret,
    /// Calling the API of `toka serve` at a level.
    Operator,
}

impl RightOp {
    const ALL: [RightOp; 11] = [
        RightOp::Observe,
        RightOp::State,
        RightOp::Schedule,
        RightOp::Terminate,
        RightOp::Spawn,
        RightOp::Extension,
        RightOp::FsRead,
        RightOp::FsWrite,
        RightOp::Http,
        RightOp::Secret,
        RightOp::Operator,
    ];

    /// The name used in rights and in the `operation` fact.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            RightOp::Observe => "observe",
            RightOp::State => "state",
            RightOp::Schedule => "schedule",
            RightOp::Terminate => "terminate",
            RightOp::Spawn => "spawn",
            RightOp::Extension => "extension",
            RightOp::FsRead => "fs.read",
            RightOp::FsWrite => "fs.write",
            RightOp::Http => "http",
            RightOp::Secret => "secret",
            RightOp::Operator => "operator",
        }
    }

    /// Whether a right of this class names a target.
    #[must_use]
    pub const fn takes_target(self) -> bool {
        !matches!(self, RightOp::Observe | RightOp::State)
    }

    /// The class with this name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<RightOp> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    fn usage(self) -> &'static str {
        match self {
            RightOp::Observe => "observe",
            RightOp::State => "state",
            RightOp::Schedule => "schedule self|children|*|AGENT-ID",
            RightOp::Terminate => "terminate self|children|*|AGENT-ID",
            RightOp::Spawn => "spawn COMPONENT|*",
            RightOp::Extension => "extension FAMILY|*",
            RightOp::FsRead => "fs.read /ABSOLUTE/PATH",
            RightOp::FsWrite => "fs.write /ABSOLUTE/PATH",
            RightOp::Http => "http HOST[:PORT]|*",
            RightOp::Secret => "secret NAME HOST[:PORT] [HEADER]",
            RightOp::Operator => "operator read|write|admin",
        }
    }
}

/// What an operator's token lets its holder do through the API; each
/// level includes the ones below it.
///
/// # Examples
///
/// ```
/// use toka_host::OperatorLevel;
///
/// assert!(OperatorLevel::Admin.includes(OperatorLevel::Write));
/// assert!(!OperatorLevel::Read.includes(OperatorLevel::Write));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperatorLevel {
    /// Read everything: agents, tasks, state, the log, metrics.
    Read,
    /// Also change what runs: install components, spawn agents with a
    /// token, schedule tasks, terminate and resume agents.
    Write,
    /// Also mint authority: issue and revoke tokens, spawn agents with
    /// rights the host mints, take snapshots.
    Admin,
}

impl OperatorLevel {
    /// Every level, lowest first.
    pub const ALL: [OperatorLevel; 3] = [
        OperatorLevel::Read,
        OperatorLevel::Write,
        OperatorLevel::Admin,
    ];

    /// `read`, `write` or `admin`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            OperatorLevel::Read => "read",
            OperatorLevel::Write => "write",
            OperatorLevel::Admin => "admin",
        }
    }

    /// The level with this name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<OperatorLevel> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Whether holding `self` allows what `needed` allows.
    #[must_use]
    pub fn includes(self, needed: OperatorLevel) -> bool {
        self >= needed
    }

    /// The right granting this level.
    #[must_use]
    pub fn right(self) -> Right {
        Right {
            op: RightOp::Operator,
            target: Some(self.name().to_owned()),
        }
    }
}

impl fmt::Display for OperatorLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OperatorLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OperatorLevel::from_name(s)
            .ok_or_else(|| format!("`{s}` is not an operator level (read, write, admin)"))
    }
}

/// One right, e.g. `schedule children`.
///
/// # Examples
///
/// ```
/// use toka_host::Right;
///
/// let right: Right = "schedule children".parse().unwrap();
/// assert_eq!(right.to_string(), "schedule children");
/// assert!("schedule".parse::<Right>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Right {
    op: RightOp,
    target: Option<String>,
}

/// Why a string is not a right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a right: {problem} (rights: {})", RightOp::ALL.map(RightOp::usage).join(", "))]
pub struct RightError {
    input: String,
    problem: String,
}

impl Right {
    /// The operation class.
    #[must_use]
    pub fn op(&self) -> RightOp {
        self.op
    }

    /// The target, for classes that take one.
    #[must_use]
    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// The rights `toka run` grants when told nothing: observe, keep state,
    /// schedule tasks for itself.
    #[must_use]
    pub fn defaults() -> Vec<Right> {
        ["observe", "state", "schedule self"]
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect()
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some(target) => write!(f, "{} {target}", self.op.name()),
            None => f.write_str(self.op.name()),
        }
    }
}

impl FromStr for Right {
    type Err = RightError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |problem: String| RightError {
            input: s.chars().take(100).collect(),
            problem,
        };
        let mut words = s.split_whitespace();
        let name = words.next().ok_or_else(|| fail("it is empty".into()))?;
        let op =
            RightOp::from_name(name).ok_or_else(|| fail(format!("unknown operation `{name}`")))?;
        if op == RightOp::Secret {
            let binding: Vec<&str> = words.collect();
            let target = SecretBinding::parse(&binding).map_err(fail)?.to_string();
            return Ok(Right {
                op,
                target: Some(target),
            });
        }
        let target = words.next();
        if words.next().is_some() {
            return Err(fail("too many words".into()));
        }
        let target = match (op.takes_target(), target) {
            (false, None) => None,
            (false, Some(_)) => return Err(fail(format!("`{}` takes no target", op.name()))),
            (true, None) => {
                return Err(fail(format!(
                    "`{}` needs a target: {}",
                    op.name(),
                    op.usage()
                )));
            }
            (true, Some(t)) => Some(check_target(op, t).map_err(fail)?),
        };
        Ok(Right { op, target })
    }
}

fn check_target(op: RightOp, target: &str) -> Result<String, String> {
    let is_hex = |n: usize| target.len() == n && target.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = match op {
        RightOp::Schedule | RightOp::Terminate => {
            matches!(target, "self" | "children" | "*") || is_hex(32)
        }
        RightOp::Spawn | RightOp::Extension => target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-*:/".contains(&b)),
        RightOp::FsRead | RightOp::FsWrite => {
            target.starts_with('/')
                && !target.split('/').any(|part| part == "..")
                && !target.chars().any(|c| c.is_control() || c == '"')
        }
        RightOp::Http => target == "*" || is_host(target),
        // Parsed whole by `SecretBinding::parse`.
        RightOp::Secret => false,
        RightOp::Operator => OperatorLevel::from_name(target).is_some(),
        RightOp::Observe | RightOp::State => false,
    };
    if !ok {
        return Err(format!("bad target `{target}` for {}", op.usage()));
    }
    // Agent ids and digests are compared as the lowercase hex Toka prints.
    Ok(if is_hex(32) || is_hex(64) {
        target.to_ascii_lowercase()
    } else {
        target.to_owned()
    })
}

/// The longest secret name.
pub const MAX_SECRET_NAME: usize = 64;

/// Whether `name` may name a secret: 1 to [`MAX_SECRET_NAME`] letters,
/// digits, `_`, `-` or `.`.
pub(crate) fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// A host as rights name it: `name` or `name:port`.
fn is_host(target: &str) -> bool {
    !target.is_empty()
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
}

/// What a `secret` right binds: a secret, a host, and the header that
/// carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretBinding {
    /// The secret's name (as `toka secret set` stored it).
    pub name: String,
    /// The host: `name` (any port) or `name:port`.
    pub host: String,
    /// The header, in lower case; `None`: `Authorization: Bearer VALUE`.
    pub header: Option<String>,
}

/// Headers a secret may not go into: the host sets them itself.
const RESERVED_HEADERS: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "idempotency-key",
];

impl SecretBinding {
    /// The binding a `secret` right names (`NAME HOST [HEADER]`, as words).
    fn parse(words: &[&str]) -> Result<SecretBinding, String> {
        let (name, host, header) = match *words {
            [name, host] => (name, host, None),
            [name, host, header] => (name, host, Some(header)),
            [] | [_] => {
                return Err(format!(
                    "`secret` needs a name and a host: {}",
                    RightOp::Secret.usage()
                ));
            }
            _ => return Err("too many words".into()),
        };
        if !is_secret_name(name) {
            return Err(format!(
                "`{name}` is not a secret name (1 to {MAX_SECRET_NAME} letters, digits, `_`, `-` or `.`)"
            ));
        }
        if !is_host(host) {
            return Err(format!(
                "bad host `{host}` for {} (a secret goes to one named host, never `*`)",
                RightOp::Secret.usage()
            ));
        }
        let header = match header {
            None => None,
            Some(h) => {
                let lower = h.to_ascii_lowercase();
                if !lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    || lower.len() > 64
                {
                    return Err(format!("`{h}` is not a header name"));
                }
                if RESERVED_HEADERS.contains(&lower.as_str()) {
                    return Err(format!("the host sets `{h}` itself; pick another header"));
                }
                Some(lower)
            }
        };
        Ok(SecretBinding {
            name: name.to_owned(),
            host: host.to_ascii_lowercase(),
            header,
        })
    }

    /// The binding a `secret` right's target names, if it is one.
    #[must_use]
    pub fn of(right: &Right) -> Option<SecretBinding> {
        if right.op() != RightOp::Secret {
            return None;
        }
        let words: Vec<&str> = right.target()?.split(' ').collect();
        SecretBinding::parse(&words).ok()
    }

    /// Whether the binding applies to a request whose host is `host` and
    /// port `port`.
    #[must_use]
    pub fn matches(&self, host: &str, port: u16) -> bool {
        match self.host.split_once(':') {
            Some((h, p)) => h == host && p.parse() == Ok(port),
            None => self.host == host,
        }
    }

    /// The header the value goes into, and the value as sent.
    #[must_use]
    pub fn header_value(&self, value: &str) -> (String, String) {
        match &self.header {
            Some(header) => (header.clone(), value.to_owned()),
            None => ("authorization".to_owned(), format!("Bearer {value}")),
        }
    }
}

impl fmt::Display for SecretBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.host)?;
        if let Some(header) = &self.header {
            write!(f, " {header}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_round_trip_through_text() {
        for text in [
            "observe",
            "state",
            "schedule self",
            "schedule children",
            "schedule *",
            "terminate 0123456789abcdef0123456789abcdef",
            "spawn worker",
            "spawn *",
            "extension kv",
            "fs.read /srv/data",
            "fs.write /tmp/out",
            "http example.com",
            "http localhost:8080",
            "operator read",
            "operator admin",
            "secret OPENAI_API_KEY api.openai.com",
            "secret anthropic api.anthropic.com:443 x-api-key",
        ] {
            let right: Right = text.parse().unwrap();
            assert_eq!(right.to_string(), text);
        }
        let header: Right = "secret K Example.com X-Api-Key".parse().unwrap();
        assert_eq!(header.to_string(), "secret K example.com x-api-key");
        let binding = SecretBinding::of(&header).unwrap();
        assert!(binding.matches("example.com", 443) && !binding.matches("other.com", 443));
        assert_eq!(binding.header_value("v"), ("x-api-key".into(), "v".into()));
        let port: Right = "secret K localhost:8080".parse().unwrap();
        let binding = SecretBinding::of(&port).unwrap();
        assert!(binding.matches("localhost", 8080) && !binding.matches("localhost", 8081));
        assert_eq!(
            binding.header_value("v"),
            ("authorization".into(), "Bearer v".into())
        );
        let upper: Right = "schedule 0123456789ABCDEF0123456789ABCDEF".parse().unwrap();
        assert_eq!(upper.target(), Some("0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn malformed_rights_name_the_problem() {
        let cases = [
            ("", "it is empty"),
            ("fly away", "unknown operation `fly`"),
            ("observe everything", "`observe` takes no target"),
            ("schedule", "`schedule` needs a target"),
            ("schedule others", "bad target `others`"),
            ("spawn a b", "too many words"),
            ("spawn wor\"ker", "bad target"),
            ("fs.read relative/path", "bad target"),
            ("fs.write /tmp/../etc", "bad target"),
            ("http https://example.com/", "bad target"),
            ("operator root", "bad target `root`"),
            ("operator *", "bad target"),
            ("secret KEY", "needs a name and a host"),
            ("secret KEY *", "never `*`"),
            ("secret bad/name host", "not a secret name"),
            (
                "secret KEY host content-length",
                "sets `content-length` itself",
            ),
            ("secret KEY host x-key extra", "too many words"),
        ];
        for (input, problem) in cases {
            let err = input.parse::<Right>().unwrap_err().to_string();
            assert!(err.contains(problem), "{input:?}: {err}");
        }
    }
}
