//! Where the log lives: the [`EventStore`](event_store::EventStore) trait —
//! the seam a replicated log plugs into, which assumes no local file — its
//! redb and in-memory implementations, the data directory, snapshots, the
//! archive file the log's beginning goes to, and the secrets beside the log
//! (never in it).

pub(crate) mod archive_file;
pub(crate) mod data_dir;
pub(crate) mod event_store;
pub(crate) mod frame;
pub(crate) mod memory;
pub(crate) mod redb;
pub(crate) mod secrets;
pub(crate) mod snapshot;
