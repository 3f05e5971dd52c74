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
//! - `install/signed-1MiB`: `toka install` of the 1 MiB package on a host
//!   (memory store): review against the trust store (read, verify),
//!   approval, compile, mint the install token, record — each iteration a
//!   new version, so nothing is cached.
//! - `install/unsigned-1MiB`: `toka run`'s install of the same component,
//!   unsigned (compile, record), each iteration new bytes.
//! - `spawn/package` and `spawn/grant`: spawning an agent from the
//!   installed package (its install token) and from a component with rights
//!   the host mints a token for.
//!
//! Goal (issue 13): verification ≤ 10% of the component's compile time.

#![allow(missing_docs, reason = "criterion generates the bench entry points")]

use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use toka_host::{
    Approval, Grant, Host, HostConfig, Manifest, MemoryStore, Package, PublisherKey, RootKey,
    SigningKey,
};

fn signed(component: &[u8], dir: &std::path::Path) -> (Vec<u8>, PublisherKey) {
    let (secret, public) = toka_host::keygen(&dir.join("bench")).unwrap();
    let key = SigningKey::from_file(&secret).unwrap();
    let public = PublisherKey::from_file(&public).unwrap();
    (
        Package::build(component, &manifest("1.0.0"), &key).unwrap(),
        public,
    )
}

fn manifest(version: &str) -> Manifest {
    Manifest::from_toml(&format!(
        "name = \"planner\"\nversion = \"{version}\"\npublisher = \"bench\"\nrights = [\"observe\", \"spawn worker\"]\n"
    ))
    .unwrap()
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
    install(c, planner);
}

/// Installing a signed package next to installing the same component
/// unsigned, and spawning from each.
fn install(c: &mut Criterion, planner: &[u8]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = toka_host::keygen(&dir.path().join("pub")).unwrap();
    let key = SigningKey::from_file(&secret).unwrap();
    let public = PublisherKey::from_file(&public).unwrap();
    let host = rt.block_on(async {
        let host = Host::open(
            Arc::new(MemoryStore::new(toka_kernel::Limits::default())),
            RootKey::generate(),
            HostConfig::default(),
        )
        .await
        .unwrap();
        host.as_host().trust("bench", &public).await.unwrap();
        host
    });
    let component = padded(planner, 1 << 20);
    let mut version = 0u64;
    let mut group = c.benchmark_group("package");
    group.sample_size(10);
    group.bench_function("install/signed-1MiB", |b| {
        b.iter_batched(
            || {
                version += 1;
                Package::build(&component, &manifest(&format!("1.0.{version}")), &key).unwrap()
            },
            |bytes| {
                rt.block_on(async {
                    let review = host.as_host().review(bytes).unwrap();
                    host.as_host()
                        .install_package(&review, &Approval::All)
                        .await
                        .unwrap()
                })
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("install/unsigned-1MiB", |b| {
        b.iter_batched(
            || {
                version += 1;
                let mut bytes = component.clone();
                bytes.extend_from_slice(&padded(&[], 32)[..]);
                let at = bytes.len() - 8;
                bytes[at..].copy_from_slice(&version.to_le_bytes());
                bytes
            },
            |bytes| rt.block_on(host.install("unsigned", bytes)).unwrap(),
            BatchSize::PerIteration,
        );
    });
    let digest = rt
        .block_on(host.install("plain", planner.to_vec()))
        .unwrap();
    let mut n = 0u64;
    group.measurement_time(std::time::Duration::from_secs(3));
    group.bench_function("spawn/package", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(
                host.as_host()
                    .spawn_package("planner", &format!("p{n}"), None, &[]),
            )
            .unwrap()
        });
    });
    group.bench_function("spawn/grant", |b| {
        b.iter(|| {
            n += 1;
            let grant = Grant::Rights(vec!["observe".parse().unwrap()]);
            rt.block_on(host.spawn(digest, &format!("g{n}"), grant))
                .unwrap()
        });
    });
    group.finish();
    rt.block_on(host.shutdown()).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
