//! Toka's example and test agents, compiled to `wasm32-wasip2` components.
//!
//! The build script compiles every agent under `agents/` during the normal
//! `cargo build`/`cargo test`; this crate exposes the results. Bundled
//! examples are embedded as bytes ([`BUNDLED`]); every artifact, test agents
//! included, is listed by path in [`ALL`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/agents.rs"));

/// The bytes of a bundled example agent, by name.
#[must_use]
pub fn bundled(name: &str) -> Option<&'static [u8]> {
    BUNDLED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// The path of any compiled agent, by name.
#[must_use]
pub fn path(name: &str) -> Option<&'static str> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, path)| *path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_is_bundled_as_a_component() {
        for name in ["hello", "planner", "worker", "counter", "llm-planner"] {
            let bytes = bundled(name).unwrap_or_else(|| panic!("{name} is not bundled"));
            // A component's preamble: magic, then version 0x0d and layer 1.
            assert_eq!(
                &bytes[..8],
                b"\0asm\x0d\0\x01\0",
                "{name} is not a component"
            );
            assert!(path(name).is_some());
        }
    }
}
