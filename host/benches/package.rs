//! Signed packages: what checking a publisher's signature costs next to
//! compiling the component it covers.
//!
//! `cargo bench -p toka-host --bench package`
//!
//! - `read+verify/planner`: [`Package::read`] and [`Package::verify`] of the
//!   bundled `planner` agent packaged and signed (the largest example).
//! - `compile/planner`: `wasmtime::component::Component::new` of the same
//!   bytes with a default engine (what installing a component costs first).
//! - `read+verify/1MiB`: the same package padded to 1 MiB with a custom
//!   section (signature checking is linear in the bytes).
//!
//! Goal (issue 13): verification ≤ 10% of the component's compile time.

#![allow(missing_docs, reason = "criterion generates the bench entry points")]

use criterion::{Criterion, criterion_group, criterion_main};
use toka_host::{Manifest, Package, PublisherKey, SigningKey};

fn signed(component: &[u8], dir: &std::path::Path) -> (Vec<u8>, PublisherKey) {
    let (secret, public) = toka_host::keygen(&dir.join("bench")).unwrap();
    let manifest = Manifest::from_toml(
        "name = \"planner\"\nversion = \"1.0.0\"\npublisher = \"bench\"\nrights = [\"observe\", \"spawn worker\"]\n",
    )
    .unwrap();
    let key = SigningKey::from_file(&secret).unwrap();
    let public = PublisherKey::from_file(&public).unwrap();
    (Package::build(component, &manifest, &key).unwrap(), public)
}

/// `bytes` with a custom section that brings it to `size`.
fn padded(bytes: &[u8], size: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let payload = size.saturating_sub(bytes.len() + 16);
    let name = b"padding";
    let mut section = Vec::new();
    leb(&mut section, name.len() as u64);
    section.extend_from_slice(name);
    section.resize(section.len() + payload, 0);
    out.push(0);
    leb(&mut out, section.len() as u64);
    out.extend_from_slice(&section);
    out
}

fn leb(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let planner = toka_agents::bundled("planner").unwrap();
    let (package, public) = signed(planner, dir.path());
    let big_dir = tempfile::tempdir().unwrap();
    let (big, big_public) = signed(&padded(planner, 1 << 20), big_dir.path());
    let mut group = c.benchmark_group("package");
    group.sample_size(20);
    group.bench_function("read+verify/planner", |b| {
        b.iter(|| {
            let read = Package::read(package.clone()).unwrap();
            read.verify(&public).unwrap();
        });
    });
    group.bench_function("read+verify/1MiB", |b| {
        b.iter(|| {
            let read = Package::read(big.clone()).unwrap();
            read.verify(&big_public).unwrap();
        });
    });
    let engine = wasmtime::Engine::default();
    group.bench_function("compile/planner", |b| {
        b.iter(|| wasmtime::component::Component::new(&engine, &package).unwrap());
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
