//! The Toka host: runs WebAssembly agents against the deterministic kernel.
//!
//! A [`Host`] opens an [`EventStore`] (a [`RedbStore`] file in a [`DataDir`],
//! or a [`MemoryStore`] in tests), replays and verifies its log, and runs
//! agents — `wasm32-wasip2` components of the `toka:agent` world — as actors
//! on tokio. Every operation an agent submits goes through one sequencer,
//! which applies it with [`toka_kernel::Kernel`] in one total order; a writer
//! thread commits the resulting records in durable batches, and only then
//! are they published ([`Host::subscribe`]) and acted on.
//!
//! The modules, leaves first (no module imports from one after it):
//!
//! | module | concern |
//! |---|---|
//! | `text` | sizes, durations, clipping, hex |
//! | `capability` | rights, budgets, tokens, the policy, the gate, the root key |
//! | `store` | the [`EventStore`] seam, redb and in-memory stores, the data dir, snapshots |
//! | `log` | reading a log back: recovery, events from a point on, [`verify`], [`audit`], [`archive`] |
//! | `sandbox` | an instance's limits, directories, HTTP, captured output, components |
//! | `runtime` | [`Host`]: the guest interface, the sequencer, the bus, the actors |

#![warn(clippy::unwrap_used)]
#![deny(missing_docs)]

mod capability;
mod cluster;
mod log;
mod package;
mod runtime;
mod sandbox;
mod store;
mod text;
mod throttle;

#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench_support;

pub use biscuit_auth::{Algorithm, PublicKey};
pub use capability::budget::{Budget, BudgetError};
pub use capability::policy::Denied;
pub use capability::rights::{
    MAX_SECRET_NAME, OperatorLevel, Right, RightError, RightOp, SecretBinding,
};
pub use capability::root_key::{KeyError, RootKey};
pub use capability::token::{Inspection, Token, TokenError};
pub use cluster::cell_store::CellStore;
pub use cluster::connection::{Cluster, ClusterConfig, ClusterError, MAX_CELLS};
pub use cluster::lease::{Holder, Lease, LeaseGuard, announce, holder, hosts};
pub use cluster::mail::Mailroom;
pub use log::LogError;
pub use log::archive::{ArchiveError, ArchiveVerified, Archived, archive, verify_archive};
pub use log::audit::{AuditMismatch, AuditReport, audit, audit_reporting};
pub use log::committed::{Committed, CommittedRecord};
pub use log::recovery::{LogReader, origin, read_events, recover, replay};
pub use log::verify::{PROGRESS_EVERY, Verified, verify, verify_reporting};
pub use package::approval::{covers, intersect, meet};
pub use package::manifest::{MAX_MANIFEST, Manifest, ManifestError};
pub use package::review::{Approval, Review};
pub use package::signed::{
    MANIFEST_SECTION, Package, PackageError, PublisherKey, SigningKey, keygen,
};
pub use runtime::acting::{Acting, Forgotten, Grant};
pub use runtime::bus::Subscription;
pub use runtime::clock::{Clock, ManualClock, SystemClock};
pub use runtime::config::HostConfig;
pub use runtime::error::HostError;
pub use runtime::host::Host;
pub use runtime::installing::Installed;
pub use runtime::mail::CellMail;
pub use runtime::metrics::{Histogram, HostMetrics};
pub use runtime::sequencer::{StateRefusal, StateUsage, Stopped};
pub use runtime::tasks::{TaskFound, TaskInfo, TaskState};
pub use sandbox::components::ComponentError;
pub use sandbox::dirs::{ProtectedPathError, check_fs_right};
pub use sandbox::limits::{AgentLimits, LimitsError};
pub use sandbox::memory::MemoryUsage;
pub use store::archive_file::ArchiveFileError;
pub use store::data_dir::{DataDir, DataDirError};
pub use store::event_store::{
    Anchor, Batch, CHECKPOINT_BYTES_PER_RECORD, Cut, DATA_FORMAT, EventStore, Records,
    SNAPSHOTS_KEPT, SNAPSHOTS_LOOKED_AT, StoreError, snapshot_dropped,
};
pub use store::memory::MemoryStore;
pub use store::redb::RedbStore;
pub use store::secrets::{
    MAX_SECRET_VALUE, SecretError, SecretInfo, SecretStore, check_secret_name,
};
pub use store::snapshot::{decode_snapshot, encode_state as encode_snapshot};
pub use text::{Size, UnitError, approx_size, clip, parse_duration, parse_size};
pub use throttle::Throttle;
pub use toka_kernel;
