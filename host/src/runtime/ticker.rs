//! The epoch ticker: the clock that lets guests yield and stops tasks past
//! their deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often guests are interrupted to yield to other agents.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Increments the engine's epoch every tick, until told to stop.
pub(crate) fn start_ticker(
    engine: wasmtime::Engine,
) -> std::io::Result<(JoinHandle<()>, Arc<AtomicBool>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("toka-epoch".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
    Ok((handle, stop))
}
