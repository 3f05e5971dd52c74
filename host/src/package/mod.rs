//! Signed agent packages, for plugin marketplaces: one `.wasm` file with
//! the agent component, its manifest (who publishes it, which version,
//! the rights and budgets it asks for) and the publisher's signature over
//! both. This module is the package format and the publisher's side
//! (keys, building, reading, verifying), and the operator's review of
//! what a package requests against what is approved; see docs/packages.md.

pub(crate) mod approval;
mod lengths;
pub(crate) mod manifest;
pub(crate) mod review;
pub(crate) mod signed;
