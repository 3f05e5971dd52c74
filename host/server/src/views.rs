//! What the API sends and receives: the JSON shapes, with their schemas
//! (collected into `/v1/openapi.json`). Clients (the CLI, the tests) use
//! the same types.
//!
//! Ids are lowercase hex (agents and tasks 32 digits, digests 64). Bytes a
//! guest chose (outputs, state values) are sent as text when they are
//! UTF-8, else as hex in a `*_hex` field.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Declares a page of a list: the items and where the next page starts.
macro_rules! page {
    ($(#[$doc:meta])* $name:ident of $item:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
        pub struct $name {
            /// The items, in id (or key) order.
            pub items: Vec<$item>,
            /// Pass as `cursor` for the next page; absent on the last one.
            pub next_cursor: Option<String>,
        }
    };
}

page!(
    /// A page of components.
    ComponentPage of ComponentView
);
page!(
    /// A page of agents.
    AgentPage of AgentView
);
page!(
    /// A page of tasks.
    TaskPage of TaskView
);
page!(
    /// A page of an agent's state.
    StatePage of StateEntry
);

/// An installed component.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ComponentView {
    /// BLAKE3 of its bytes.
    pub digest: String,
    /// The name it was installed under (the latest install of a name wins
    /// when spawning by name).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// An agent, as lists show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AgentView {
    /// Its id.
    pub id: String,
    /// Its display name (chosen by whoever spawned it: treat as untrusted
    /// text).
    pub name: String,
    /// The agent that spawned it; absent for a root agent (spawned by an
    /// operator).
    pub parent: Option<String>,
    /// The digest of the component it runs.
    pub component: String,
    /// `active`, `quarantined` or `terminated`.
    pub status: String,
    /// Why it is quarantined or terminated.
    pub reason: Option<String>,
    /// Tasks waiting in its queue.
    pub queued: u64,
    /// The task it is running.
    pub running: Option<String>,
    /// Tasks it completed.
    pub completed: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Faults in a row (quarantine comes after a few).
    pub consecutive_faults: u32,
    /// Keys in its state.
    pub state_keys: u64,
    /// Bytes of its state.
    pub state_bytes: u64,
    /// The digest of the capability token it is bound to.
    pub token: String,
    /// The installed package whose component it runs, if any.
    pub package: Option<PackageLabel>,
}

/// Which package an agent runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PackageLabel {
    /// The package's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The trusted publisher that signed it.
    pub publisher: String,
}

/// One agent in full: its record, its unfinished tasks, its state keys
/// and what its token grants.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentDetail {
    /// The agent.
    #[serde(flatten)]
    pub agent: AgentView,
    /// Its running and queued tasks, running first: the first 100 (all of
    /// them: `GET /v1/tasks?agent=`).
    pub tasks: Vec<TaskView>,
    /// Its state keys (values: `GET /v1/agents/{id}/state`), the first
    /// 1000.
    pub keys: Vec<String>,
    /// What its token grants.
    pub grants: Grants,
}

/// What a token grants, read from it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
pub struct Grants {
    /// The rights of its first block.
    pub rights: Vec<String>,
    /// The rights its delegation blocks narrow it to, when it has any.
    pub delegated: Option<Vec<String>>,
    /// Its budgets (`name=value`).
    pub budgets: Vec<String>,
    /// Its revocation ids (hex), one per block.
    pub revocation_ids: Vec<String>,
    /// Whether one of them was revoked.
    pub revoked: bool,
}

/// A request to spawn a root agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// The component: an installed name or digest (or give `package`).
    #[serde(default)]
    pub component: String,
    /// An installed package instead of `component`: the agent runs its
    /// component with its install token, attenuated to `rights` and
    /// `budgets` when given (needs `operator write`).
    #[serde(default)]
    pub package: Option<String>,
    /// The agent's name.
    pub name: String,
    /// Rights the host mints a token with (needs `operator admin`); or
    /// give `token`.
    #[serde(default)]
    pub rights: Vec<String>,
    /// Budgets for the minted token (`name=value`).
    #[serde(default)]
    pub budgets: Vec<String>,
    /// A token rooted in this host's key for the agent (needs `operator
    /// write`).
    pub token: Option<String>,
}

/// A request to terminate an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TerminateRequest {
    /// Why (recorded in the log).
    #[serde(default)]
    pub reason: Option<String>,
}

/// A request to schedule a task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// What the agent should do.
    pub description: String,
}

/// A task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TaskView {
    /// Its id.
    pub id: String,
    /// The agent that runs it.
    pub agent: String,
    /// `queued`, `running`, `completed` or `failed`; `sent` when it was
    /// just sent to another cell of a cluster (ask that cell for it).
    pub status: String,
    /// What to do (known while the task is unfinished).
    pub description: Option<String>,
    /// The output of a completed task, when it is UTF-8.
    pub output: Option<String>,
    /// The output of a completed task, in hex, when it is not UTF-8.
    pub output_hex: Option<String>,
    /// Why a failed task failed.
    pub reason: Option<String>,
    /// The record that scheduled it (while unfinished).
    pub scheduled_seq: Option<u64>,
    /// The record that ended it.
    pub ended_seq: Option<u64>,
}

/// One key of an agent's state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StateEntry {
    /// The key.
    pub key: String,
    /// The value, when it is UTF-8.
    pub value: Option<String>,
    /// The value in hex, when it is not.
    pub value_hex: Option<String>,
    /// Its size in bytes.
    pub size: u64,
}

/// A request to mint a token (`operator admin`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// Rights, e.g. `observe`, `schedule children`, `operator read`.
    #[serde(default)]
    pub rights: Vec<String>,
    /// Budgets (`name=value`).
    #[serde(default)]
    pub budgets: Vec<String>,
    /// An operator level to grant: `read`, `write` or `admin`.
    pub operator: Option<String>,
    /// Expire after this long (`90s`, `15m`, `12h`, `7d`).
    pub expires: Option<String>,
}

/// A request to narrow a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttenuateRequest {
    /// The token (base64).
    pub token: String,
    /// Rights to keep (each one the token grants); none: keep them all.
    #[serde(default)]
    pub rights: Vec<String>,
    /// Budgets to lower.
    #[serde(default)]
    pub budgets: Vec<String>,
    /// An operator level to narrow to.
    pub operator: Option<String>,
}

/// A token to look at.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectRequest {
    /// The token (base64).
    pub token: String,
}

/// A minted or narrowed token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenIssued {
    /// The token, base64.
    pub token: String,
    /// BLAKE3 of its bytes.
    pub digest: String,
    /// Its revocation ids (hex), one per block.
    pub revocation_ids: Vec<String>,
}

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInspection {
    /// BLAKE3 of its bytes.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is rooted in this host's key (its signatures verify).
    pub rooted_here: bool,
    /// Each block's Datalog source, the authority block first.
    pub blocks: Vec<String>,
    /// What it grants, when it is rooted here.
    pub grants: Option<Grants>,
}

/// A request to revoke tokens.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The revocation id to revoke (hex, see inspect).
    pub revocation_id: Option<String>,
    /// Or a token: its first block's revocation id is revoked (and with
    /// it every token attenuated from it).
    pub token: Option<String>,
    /// Revoke an id no stored token carries.
    #[serde(default)]
    pub force: bool,
}

/// What was revoked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    /// The revocation id (hex).
    pub revocation_id: String,
}

/// Where the log is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Head {
    /// The last committed record's sequence number (0: empty log).
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
}

/// One event of a committed record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EventView {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's logical time (ms since the Unix epoch).
    pub time: u64,
    /// The event's kind, e.g. `task_completed`, `capability_denied`.
    pub kind: String,
    /// Who submitted the record: an agent id, or 32 zeros for the host.
    pub origin: String,
    /// The task and operation index, when an agent submitted it in a task
    /// (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// The kind's own fields (as `toka events --json` prints them).
    #[serde(flatten)]
    #[schema(value_type = Object, additional_properties = true)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Which task operation produced a record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Cause {
    /// The task.
    pub task: String,
    /// The operation's index in the task.
    pub index: u32,
}

/// A page of events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// The events, in log order.
    pub events: Vec<EventView>,
    /// The sequence number to continue from (`from`); absent once the
    /// page reached the head.
    pub next_from: Option<u64>,
    /// The head when the page was read.
    pub head: u64,
}

/// Raw committed records, for tools that replay the log themselves (the
/// CLI does, to print and check exactly what a local log would give).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecordPage {
    /// `(seq, base64 of the postcard record)`, in order.
    pub records: Vec<RawRecord>,
    /// The head when the page was read.
    pub head: Head,
}

/// One raw record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RawRecord {
    /// Its sequence number.
    pub seq: u64,
    /// The record's bytes, base64 (standard alphabet, padded).
    pub bytes: String,
}

/// The committed state, encoded as a snapshot (see docs/format.md).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EncodedState {
    /// The record it is the state after.
    pub head: Head,
    /// The snapshot bytes, base64.
    pub snapshot: String,
    /// The data dir's kernel limits (replaying records needs them).
    #[schema(value_type = Object)]
    pub limits: toka_kernel::Limits,
    /// The cluster cell the log is, if it is one's (replaying records
    /// needs it too: ids carry it, tasks for other cells are sent).
    #[serde(default)]
    pub cell: Option<CellView>,
}

/// A cell of a cluster.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct CellView {
    /// Its index.
    pub index: u16,
    /// How many cells the cluster has.
    pub cells: u16,
}

impl From<toka_kernel::Cell> for CellView {
    fn from(cell: toka_kernel::Cell) -> Self {
        CellView {
            index: cell.index,
            cells: cell.cells,
        }
    }
}

impl From<CellView> for toka_kernel::Cell {
    fn from(cell: CellView) -> Self {
        toka_kernel::Cell {
            index: cell.index,
            cells: cell.cells,
        }
    }
}

/// A verification of the log, running or done.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyJob {
    /// Its id.
    pub id: u64,
    /// `running`, `ok` or `failed`.
    pub state: String,
    /// Whether authorization decisions are re-checked too.
    pub auth: bool,
    /// Records checked so far.
    pub done: u64,
    /// Records in the log when it started.
    pub total: u64,
    /// The state digest the log replays to (when ok).
    pub state_digest: Option<String>,
    /// Snapshots compared with the replay.
    pub snapshots: Option<u64>,
    /// Decisions re-checked (with `auth`): allowed, denied, operators'.
    pub decisions: Option<u64>,
    /// What does not verify or reproduce.
    pub problems: Vec<String>,
    /// Seconds it took (when done).
    pub seconds: Option<f64>,
}

/// A request to verify the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Also re-check every recorded authorization decision.
    #[serde(default)]
    pub auth: bool,
}

/// An archive of the log being made while the server runs, or made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArchiveJob {
    /// Its id.
    pub id: u64,
    /// `running`, `ok`, `nothing` (nothing to archive), `stopped` (the
    /// server stopped before the cut: nothing was archived) or `failed`.
    pub state: String,
    /// Records before the head kept in the live log.
    pub keep: u64,
    /// Records archived so far.
    pub done: u64,
    /// The last record it archives (known once it started reading).
    pub total: u64,
    /// The archive file, relative to the data dir: in its `archives`
    /// directory (when ok). Move it where you keep archives.
    pub file: Option<String>,
    /// The first record in it (when ok).
    pub first: Option<u64>,
    /// The last record in it: the live log starts at a snapshot after it
    /// (when ok).
    pub last: Option<u64>,
    /// The first record the live log keeps: before `last` when tasks
    /// running at the cut keep their records (when ok).
    pub kept_from: Option<u64>,
    /// Response bodies in it (when ok).
    pub bodies: Option<u64>,
    /// Its size in bytes (when ok).
    pub bytes: Option<u64>,
    /// Blobs deleted from the live store because nothing kept refers to
    /// them (when ok).
    pub blobs_dropped: Option<u64>,
    /// Tokens deleted from the live store: those of agents and packages
    /// gone by the cut (when ok).
    pub tokens_dropped: Option<u64>,
    /// The longest the log writer waited for the archive, in seconds:
    /// for the cut, or for one of the short transactions deleting what was
    /// archived (agents' operations waited as long; when ok).
    pub writer_wait_seconds: Option<f64>,
    /// Why it did not archive (`nothing`, `failed`).
    pub problem: Option<String>,
    /// Seconds it took (when done).
    pub seconds: Option<f64>,
}

/// A finished archive file in the data dir's `archives` directory.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArchiveFile {
    /// Its name (`log-SECONDS-JOB.toka-archive`).
    pub name: String,
    /// Its size.
    pub bytes: u64,
}

/// The archive files, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArchiveFiles {
    /// The files.
    pub items: Vec<ArchiveFile>,
}

/// A request to archive the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRequest {
    /// Records before the head to keep in the live log (records of tasks
    /// still running at the cut stay too).
    #[serde(default)]
    pub keep: u64,
}

/// What forgetting the terminated agents forgot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ForgottenView {
    /// Terminated agents whose records left the state.
    pub agents: u64,
    /// Bytes of state keys and values they held.
    pub state_bytes: u64,
}

/// A snapshot written.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotTaken {
    /// The record it was taken after.
    pub seq: u64,
}

/// A single-use ticket to open the event stream where a header cannot be
/// set (a browser's `EventSource`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ticket {
    /// Pass as `?ticket=`; good once, within `expires_in_seconds`.
    pub ticket: String,
    /// Seconds it stays valid.
    pub expires_in_seconds: u64,
}

/// The host at a glance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// The server's version.
    pub version: String,
    /// The log's head.
    pub head: Head,
    /// The first record the live log holds: 1, or the one after the
    /// anchor once the log's beginning is archived (`toka archive`).
    #[serde(default)]
    pub log_start: u64,
    /// The root public key tokens must be rooted in.
    pub root_public_key: String,
    /// Agents by status.
    pub agents: AgentCounts,
    /// Tasks queued, all agents together.
    pub queued_tasks: u64,
    /// Tasks running.
    pub running_tasks: u64,
    /// Installed components.
    pub components: u64,
    /// The operator level of the token that asked.
    pub operator: String,
}

/// Agents by status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
pub struct AgentCounts {
    /// Active.
    pub active: u64,
    /// Quarantined.
    pub quarantined: u64,
    /// Terminated.
    pub terminated: u64,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` while the host runs, `stopping` during a shutdown.
    pub status: String,
}

/// A secret's value to set.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretRequest {
    /// The value (printable ASCII, at most 8 KiB).
    pub value: String,
}

impl std::fmt::Debug for SecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRequest").finish_non_exhaustive()
    }
}

/// A secret, as listed: never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SecretView {
    /// Its name.
    pub name: String,
    /// The value's length in bytes.
    pub len: u64,
    /// When it was set, in milliseconds since the Unix epoch.
    pub set_at: u64,
}

/// A publisher to trust.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrustRequest {
    /// The operator's name for it.
    pub name: String,
    /// Its public key, hex (the bytes of a `.pub` file `toka package
    /// keygen` or the `wasmsign2` CLI writes).
    pub key: String,
}

/// A trusted publisher.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PublisherView {
    /// Its trust-store name.
    pub name: String,
    /// Its public key, hex.
    pub key: String,
    /// A short fingerprint of the key, as `toka package inspect` prints it.
    pub fingerprint: String,
    /// Its installed packages.
    pub packages: Vec<String>,
}

/// A publisher removed from the trust store.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Distrusted {
    /// Its name.
    pub name: String,
    /// Its packages, whose install tokens are now revoked.
    pub packages: Vec<String>,
}

/// An installed package.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PackageView {
    /// Its name (`toka run NAME`).
    pub name: String,
    /// Its version.
    pub version: String,
    /// The trusted publisher that signed it.
    pub publisher: String,
    /// Its component's digest.
    pub component: String,
    /// The hash its signature covers.
    pub signed_hash: String,
    /// The rights the operator approved.
    pub approved: Vec<String>,
    /// Its install token's digest.
    pub token: String,
}

/// A package reviewed against the trust store.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewView {
    /// The manifest's name.
    pub name: String,
    /// The manifest's version.
    pub version: String,
    /// The trusted publisher whose key verified the signature.
    pub publisher: String,
    /// The manifest's description (the publisher's words: untrusted text).
    pub description: String,
    /// The component's digest.
    pub digest: String,
    /// The hash the signature covers.
    pub signed_hash: String,
    /// The rights it requests.
    pub requested: Vec<String>,
    /// The budgets it requests.
    pub budgets: Vec<String>,
    /// The installed version it would upgrade.
    pub previous: Option<String>,
    /// The requested rights that need an approval (all of them for a new
    /// install; for an upgrade, those the installed version lacks).
    pub new_rights: Vec<String>,
}

/// A package installed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstalledView {
    /// The package.
    pub package: PackageView,
    /// What its install token grants.
    pub granted: Vec<String>,
    /// The version it replaced, for an upgrade.
    pub previous: Option<String>,
    /// The agents of the previous version now running this one.
    pub rebound: usize,
}
