//! Capabilities: what an agent may do, as biscuit tokens rooted in the
//! host's key, and the gate that decides each operation.
//!
//! - `rights`, `budget`: what a token grants and limits, as people write them;
//! - `token`: minting, attenuating, admitting and reading tokens;
//! - `shape`: what the blocks a holder appends may ask of an evaluation;
//! - `policy`: the facts and policies an operation is decided with;
//! - `gate`: verified tokens and cached decisions, in the sequencer's order;
//! - `presented`: tokens API clients present, verified once;
//! - `root_key`: the key every token is rooted in.
//!
//! A leaf: nothing here knows wasmtime, the store or the sequencer.

pub(crate) mod budget;
pub(crate) mod gate;
pub(crate) mod policy;
pub(crate) mod presented;
pub(crate) mod rights;
pub(crate) mod root_key;
pub(crate) mod shape;
pub(crate) mod token;
