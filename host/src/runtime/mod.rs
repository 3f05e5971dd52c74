//! The runtime: [`Host`](host::Host) and what it runs — the data path from a
//! guest's `submit` to the bus.
//!
//! - `guest`: the store data of an agent's instance, and the host side of
//!   the `kernel` interface: where an operation *enters*;
//! - `sequencer/`: where it is *authorized* (through the capability gate),
//!   *ordered* and *applied* (through the kernel) under one lock, and
//!   *persisted* (`writer`: group commit to the store);
//! - `bus`: where committed batches are *published*;
//! - `outbound`: what the sandbox asks of the runtime (authorizing effects,
//!   journaling outbound requests, the secrets to inject);
//! - `inner`, `actor`, `roster`, `places`, `instance`: routing published
//!   work to agents, running each agent's tasks one at a time, which agents
//!   have an actor now, the places for running instances (shared fairly
//!   between agent trees), and their live (and warm) instances;
//! - `host`, `config`, `clock`, `ticker`, `error`: the entry point, its
//!   configuration, logical time, the epoch ticker, the umbrella error.

pub(crate) mod acting;
pub(crate) mod actor;
pub(crate) mod bus;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod guest;
pub(crate) mod host;
pub(crate) mod inner;
pub(crate) mod installing;
pub(crate) mod instance;
pub(crate) mod mail;
pub(crate) mod metrics;
pub(crate) mod outbound;
pub(crate) mod paces;
pub(crate) mod roster;
pub(crate) mod sequencer;
pub(crate) mod tasks;
pub(crate) mod ticker;
