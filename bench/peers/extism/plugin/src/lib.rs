//! The Extism plugin: `run N` makes N host calls, each carrying an 8-byte
//! payload, as the Toka agent `test-bench` does with `observe N 8`.

use extism_pdk::{FnResult, host_fn, plugin_fn};

#[host_fn]
extern "ExtismHost" {
    fn op(payload: Vec<u8>);
}

/// Makes `n` host calls with 8 bytes each; answers `n`.
#[plugin_fn]
pub fn run(n: String) -> FnResult<String> {
    let n: u64 = n.trim().parse()?;
    for i in 0..n {
        // SAFETY: `op` is the host's function, declared with its signature.
        unsafe { op(i.to_le_bytes().to_vec())? };
    }
    Ok(n.to_string())
}
