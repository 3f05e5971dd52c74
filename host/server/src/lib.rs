//! `toka serve`: a Toka host that stays up, with an HTTP/JSON API, a live
//! event stream and a dashboard.
//!
//! The server is one more client of the [`toka_host::Host`] API: every
//! change is an operation through the host's sequencer, on the authority
//! of the operator token that asked (recorded in the log), and every read
//! is of committed state. See `docs/api.md` for a tour and
//! `/v1/openapi.json` on a running server for the schema of every
//! endpoint.
//!
//! | module | concern |
//! |---|---|
//! | `serve`, `config` | binding, TLS, registration, graceful shutdown |
//! | `connections`, `evict`, `pace`, `origin` | who may hold a connection, for how long, which gives way; clients and networks |
//! | `cells` | several cells of a cluster behind one address |
//! | `auth`, `rate`, `uploads` | operator tokens, levels, tickets, rate limits, uploads at once |
//! | `retention` | forgetting and archiving at intervals, by itself |
//! | `readers` | the low-priority threads replaying the log for read clients |
//! | `api/` | the `/v1` endpoints, one file per resource |
//! | `views`, `events`, `error`, `extract` | the JSON shapes in and out |
//! | `dashboard/` | the embedded dashboard |
//! | `client` | the client the CLI (and tests) use |

#![deny(missing_docs)]

pub mod client;
pub mod registration;
pub mod views;

mod api;
mod app;
mod auth;
mod cells;
mod config;
mod connections;
mod dashboard;
mod error;
mod events;
mod evict;
mod extract;
mod held;
mod jobs;
mod origin;
mod oversize;
mod pace;
mod rate;
mod readers;
mod retention;
mod serve;
mod uploads;

pub use api::packages::{installed_view, package_view, review_view};
pub use api::stream::StreamRecord;
pub use cells::{Cells, OneCell, OwnerOf};
pub use config::{DEFAULT_LISTEN, ServeConfig};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use events::{agents_of, event_view, view as event_view_of};
pub use rate::Rate;
pub use serve::{ServeError, Server, install_crypto, signal};
