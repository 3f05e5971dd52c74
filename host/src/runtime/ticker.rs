//! The epoch ticker: the clock that lets guests yield and stops tasks past
//! their deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often guests are interrupted to yield to other agents.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Increments the engine's epoch every tick until told to stop and no
/// instance holds one of `places` any more: the instances still computing
/// when the host stops need ticks to yield, so the check that ends them
/// (`actor::abandoned`) runs.
pub(crate) fn start_ticker(
    engine: wasmtime::Engine,
    places: Arc<crate::sandbox::places::Places>,
) -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("toka-epoch".into())
        .spawn(move || {
            while !(flag.load(Ordering::Relaxed) && places.idle()) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
    Ok(stop)
}
