//! The kernel stays pure: its normal dependencies are a closed, reviewed list.
//!
//! Guards against a heavy or effectful crate (tokio, wasmtime, redb, biscuit,
//! rand, getrandom, ...) slipping into the deterministic core.

/// The only crates the kernel may depend on (DESIGN.md §3).
const ALLOWED: &[&str] = &["serde", "postcard", "blake3", "thiserror"];

#[test]
fn kernel_depends_only_on_the_allowed_crates() {
    let manifest = include_str!("../Cargo.toml");
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            deps.push(name.trim().split('.').next().unwrap_or_default().to_owned());
        }
    }
    assert!(
        !deps.is_empty(),
        "no [dependencies] found in kernel/Cargo.toml"
    );
    for dep in &deps {
        assert!(
            ALLOWED.contains(&dep.as_str()),
            "toka-kernel depends on `{dep}`, which is not in the allowed list {ALLOWED:?}"
        );
    }
}
