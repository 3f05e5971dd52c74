//! Compiles every agent under `agents/` to a `wasm32-wasip2` component.
//!
//! A nested `cargo build --release --target wasm32-wasip2` runs with its own
//! target directory (beside the outer one, shared by all outer profiles so
//! the agents compile once), and `OUT_DIR/agents.rs` gets a constant per
//! artifact. The pattern is wasmtime's `crates/test-programs/artifacts`.
//!
//! An agent is a sub-directory with a `Cargo.toml` whose package is named
//! `toka-agent-NAME` and whose cdylib is named NAME (with `-` as `_`).
//! Directories starting with `hostile-` or `test-` are test agents: built and
//! listed, but not bundled into the `toka` binary.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    println!("cargo:rerun-if-changed={}", manifest_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../guest-sdk").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../wit").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../Cargo.lock").display()
    );

    let agents = find_agents(&manifest_dir);
    let wasm_target_dir = wasm_target_dir(&out_dir);
    ensure_target_installed();
    build(&agents, &wasm_target_dir);

    let release = wasm_target_dir.join(TARGET).join("release");
    let mut code = String::new();
    let mut bundled = String::new();
    let mut all = String::new();
    for name in &agents {
        // A cdylib's file has `_` for `-`; a binary's keeps its name.
        let file = [name.replace('-', "_"), name.clone()]
            .iter()
            .map(|stem| release.join(format!("{stem}.wasm")))
            .find(|f| f.exists())
            .unwrap_or_else(|| {
                panic!(
                    "the build did not produce {name}.wasm in {}",
                    release.display()
                )
            });
        let upper = name.to_uppercase().replace('-', "_");
        writeln!(code, "/// Path of the compiled `{name}` agent component.").unwrap();
        writeln!(
            code,
            "pub const {upper}_PATH: &str = {:?};",
            file.display().to_string()
        )
        .unwrap();
        writeln!(all, "    ({name:?}, {upper}_PATH),").unwrap();
        if !is_test_agent(name) {
            writeln!(code, "/// The compiled `{name}` agent component.").unwrap();
            writeln!(
                code,
                "pub const {upper}: &[u8] = include_bytes!({:?});",
                file.display().to_string()
            )
            .unwrap();
            writeln!(bundled, "    ({name:?}, {upper}),").unwrap();
        }
    }
    writeln!(
        code,
        "/// The example agents bundled into the `toka` binary, by name."
    )
    .unwrap();
    writeln!(
        code,
        "pub const BUNDLED: &[(&str, &[u8])] = &[\n{bundled}];"
    )
    .unwrap();
    writeln!(
        code,
        "/// Every compiled agent (examples and test agents), by name, with its path."
    )
    .unwrap();
    writeln!(code, "pub const ALL: &[(&str, &str)] = &[\n{all}];").unwrap();
    fs::write(out_dir.join("agents.rs"), code).expect("write agents.rs");
}

fn is_test_agent(name: &str) -> bool {
    name.starts_with("hostile-") || name.starts_with("test-")
}

/// The agent directories, sorted.
fn find_agents(dir: &Path) -> Vec<String> {
    let mut agents: Vec<String> = fs::read_dir(dir)
        .expect("read agents/")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    agents.sort();
    agents
}

/// `target/toka-agents`: beside the outer profiles' dirs, so debug, release
/// and clippy builds share one compilation of the agents.
fn wasm_target_dir(out_dir: &Path) -> PathBuf {
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is nested inside a target directory");
    target.join("toka-agents")
}

/// Makes sure the standard library for [`TARGET`] is installed.
///
/// rustup installs the targets of `rust-toolchain.toml` only when it installs
/// the toolchain itself; on a machine that already had `stable`, the target
/// is missing and the nested build fails with "can't find crate for `core`".
/// When rustup manages the toolchain, add the target through it (once; later
/// builds find it); otherwise stop with the exact step to take.
fn ensure_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let installed = |root: &Path| root.join("lib/rustlib").join(TARGET).join("lib").is_dir();
    if sysroot.as_deref().is_some_and(installed) {
        return;
    }
    // Under rustup, RUSTUP_TOOLCHAIN names the toolchain this build uses.
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    println!(
        "cargo:warning=the {TARGET} target is not installed; adding it with `rustup target add {TARGET}`"
    );
    match rustup.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "`rustup target add {TARGET}` failed ({status}); the agents need the {TARGET} \
             standard library. Run it by hand and build again."
        ),
        Err(e) => panic!(
            "the {TARGET} target is not installed for {} and rustup could not be run ({e}). \
             Install the {TARGET} standard library for this toolchain (with rustup: \
             `rustup target add {TARGET}`) and build again.",
            sysroot.map_or_else(|| "this toolchain".to_owned(), |s| s.display().to_string()),
        ),
    }
}

fn build(agents: &[String], target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET])
        .env("CARGO_TARGET_DIR", target_dir)
        // Small components: no DWARF (the name section stays, so traps still
        // name the guest function).
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        // Flags meant for the outer build (e.g. host-specific codegen) and a
        // workspace wrapper such as clippy-driver do not apply to the agents.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    for name in agents {
        cmd.arg("-p").arg(format!("toka-agent-{name}"));
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the agents: {e}"));
    assert!(
        status.success(),
        "building the agents for {TARGET} failed; the compiler output above names the problem"
    );
}
