//! The Extism host: loads the plugin and times one invocation making N host
//! calls (8-byte payloads), for N = 1 000 and 10 000. The host function
//! counts the bytes it is given and does nothing else: not durable, not
//! authorized.
//!
//! `peer-host PLUGIN.wasm` prints, per N, the median of 7 rounds in µs per
//! host call.

use std::time::Instant;

use extism::{Manifest, PTR, PluginBuilder, UserData, Wasm, host_fn};

host_fn!(op(received: u64; payload: Vec<u8>) {
    let received = received.get()?;
    *received.lock().expect("the counter") += payload.len() as u64;
    Ok(())
});

fn main() -> Result<(), extism::Error> {
    let path = std::env::args()
        .nth(1)
        .expect("usage: peer-host PLUGIN.wasm");
    let received = UserData::new(0u64);
    let mut plugin = PluginBuilder::new(Manifest::new([Wasm::file(&path)]))
        .with_wasi(false)
        .with_function("op", [PTR], [], received.clone(), op)
        .build()?;
    for n in [1_000u64, 10_000] {
        let arg = n.to_string();
        // Warm up, and check the plugin did what it says.
        let answer = plugin.call::<&str, String>("run", &arg)?;
        assert_eq!(answer, arg);
        let invocations = (100_000 / n).max(5);
        let mut rounds: Vec<f64> = (0..7)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..invocations {
                    plugin
                        .call::<&str, String>("run", &arg)
                        .expect("an invocation");
                }
                start.elapsed().as_secs_f64() * 1e6 / (invocations * n) as f64
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        println!("extism host call, N={n}: {:.3} µs/call", rounds[3]);
    }
    let received = *received.get()?.lock().expect("the counter");
    assert!(received > 0, "the host function received the payloads");
    Ok(())
}
