//! Loading agent components: validate, compile once, instantiate fast.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use toka_kernel::Digest;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::sandbox::bindings::AgentPre;

/// The export every agent must have (any 0.1.x version).
const HANDLER_EXPORT: &str = "toka:agent/handler@0.1.";

/// Import prefixes the host provides. WASI here is deny-by-default at run
/// time (only granted directories, no env, HTTP only to granted hosts):
/// these are the interfaces a Rust `std` guest links against, plus outgoing
/// `wasi:http`. Anything else, e.g. `wasi:sockets`, is refused at install.
const ALLOWED_IMPORTS: &[&str] = &[
    "toka:agent/kernel@0.1.",
    "toka:agent/types@0.1.",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:http/types@0.2.",
    "wasi:http/outgoing-handler@0.2.",
];

/// Why bytes are not a component this host can run as an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (it does not start with the `\\0asm` magic)")]
    NotWasm,
    /// A core module, e.g. built for `wasm32-wasip1` or `wasm32-unknown-unknown`.
    #[error(
        "a core WebAssembly module, not a component; build the agent with `cargo build --target wasm32-wasip2`"
    )]
    CoreModule,
    /// Malformed or not compilable.
    #[error("not a valid component: {0}")]
    Invalid(String),
    /// A component of another world, e.g. a `wasi:cli` command.
    #[error(
        "not a Toka agent: it does not export `toka:agent/handler@0.1.0` (it exports {exports})"
    )]
    NotAnAgent {
        /// What it exports instead.
        exports: String,
    },
    /// It imports interfaces the host does not provide.
    #[error("imports {}, which the host does not provide", .imports.join(", "))]
    UnsupportedImports {
        /// The offending imports.
        imports: Vec<String>,
    },
    /// The handler export has the wrong shape (e.g. built against another
    /// version of the WIT).
    #[error("does not match the toka:agent world: {0}")]
    Mismatch(String),
}

/// Digests being compiled, each with the turn to compile it.
type Compiling = Mutex<BTreeMap<Digest, Arc<tokio::sync::Mutex<()>>>>;

/// The turn to compile one digest: while it is held, others asking for
/// the digest wait for it. Dropped (also when its holder is cancelled),
/// it leaves the map of digests being compiled, then lets the next in.
struct Turn<'a> {
    compiling: &'a Compiling,
    digest: Digest,
    slot: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl<'a> Turn<'a> {
    /// Waits for the turn to compile `digest`.
    async fn take(compiling: &'a Compiling, digest: Digest) -> Turn<'a> {
        let slot = Arc::clone(
            compiling
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(digest)
                .or_default(),
        );
        let held = Arc::clone(&slot).lock_owned().await;
        Turn {
            compiling,
            digest,
            slot,
            _held: held,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut compiling = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        if compiling
            .get(&self.digest)
            .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot))
        {
            compiling.remove(&self.digest);
        }
    }
}

/// Why [`Components::prepare`] has no compiled component to give.
#[derive(Debug)]
pub(crate) enum Unprepared<E> {
    /// The component's bytes could not be loaded.
    Load(E),
    /// They are not a component this host runs.
    Invalid(ComponentError),
    /// The compiler panicked (the message).
    Panicked(String),
}

/// Slots of wasmtime's pooling allocator, sized for the host's cap on live
/// instances: memories, tables, stacks and instance data are allocated
/// once and reused, so starting and ending an instance maps and unmaps
/// nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool {
    /// Component instances alive at once (the host's cap).
    pub(crate) instances: u32,
    /// The largest linear memory an agent may have.
    pub(crate) memory_bytes: u64,
    /// The most elements a table may have.
    pub(crate) table_elements: usize,
    /// Core instances one component may make.
    pub(crate) per_component: u32,
}

/// Linear memories one agent's component may have (a Rust component has
/// one). Each slot reserves address space: see [`Pool::config`].
const MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables one agent's component may have (its module's and the shims'
/// for indirect calls).
const TABLES_PER_COMPONENT: u32 = 4;

impl Pool {
    fn config(&self) -> PoolingAllocationConfig {
        let mut pool = PoolingAllocationConfig::new();
        let times = |n: u32| self.instances.saturating_mul(n);
        pool.total_component_instances(self.instances)
            .total_stacks(self.instances)
            .total_core_instances(times(self.per_component))
            .total_memories(times(MEMORIES_PER_COMPONENT))
            .total_tables(times(TABLES_PER_COMPONENT))
            .max_core_instances_per_component(self.per_component)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_memory_size(usize::try_from(self.memory_bytes).unwrap_or(usize::MAX))
            .table_elements(self.table_elements)
            // Pages an instance touched stay mapped for the next one (reset
            // to zero, not returned to the kernel): most agents are small.
            .linear_memory_keep_resident(64 << 10)
            .table_keep_resident(16 << 10)
            .async_stack_keep_resident(64 << 10)
            // Where Linux has PAGEMAP_SCAN (6.7+), only the pages an
            // instance touched are reset, not the whole kept-resident
            // prefix: 2 500-2 770 -> 3 000-3 230 agents spawned and run per
            // second (BENCHMARKS.md, the scale bench at 20 000).
            .pagemap_scan(wasmtime::Enabled::Auto);
        pool
    }
}

/// The wasmtime engine, the linker with the host's imports, and the compiled
/// components by digest; `T` is the data of an agent's store.
pub(crate) struct Components<T: 'static> {
    engine: Engine,
    linker: Arc<Linker<T>>,
    cache: Arc<Mutex<Cache<T>>>,
    /// A turn per digest being compiled: one compile serves everyone
    /// asking for it meanwhile (many agents of one component starting at
    /// once after a restart would otherwise each read its bytes and
    /// compile it on a blocking thread of its own).
    compiling: Arc<Compiling>,
    /// The turn to compile at all: one compile at a time (Cranelift uses
    /// every core for one), held by the compile itself, so a caller that
    /// goes away (an API client closing its connection mid-upload) leaves
    /// its compile holding the turn until it ends, and the next caller's
    /// waits: abandoned compiles cannot pile up.
    compile_turn: Arc<tokio::sync::Semaphore>,
    /// Compilations run.
    compiles: Arc<AtomicU64>,
    /// Compilations running now, and the most that ran at once.
    running: Arc<(AtomicUsize, AtomicUsize)>,
}

impl<T: 'static> Clone for Components<T> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            linker: Arc::clone(&self.linker),
            cache: Arc::clone(&self.cache),
            compiling: Arc::clone(&self.compiling),
            compile_turn: Arc::clone(&self.compile_turn),
            compiles: Arc::clone(&self.compiles),
            running: Arc::clone(&self.running),
        }
    }
}

impl<T: 'static> Components<T> {
    /// An engine with epoch interruption (deadlines, fair yielding), if
    /// `fuel`, fuel metering, and with `pool`, the pooling allocator;
    /// `imports` adds what the host provides to the linker (WASI, outgoing
    /// HTTP, the `toka:agent` kernel).
    ///
    /// When the pool's address space cannot be reserved (e.g. under
    /// `ulimit -v`), the engine allocates on demand instead, with a warning:
    /// the host still runs, each instance mapping its own memory.
    pub(crate) fn new(
        fuel: bool,
        pool: Option<Pool>,
        imports: impl FnOnce(&mut Linker<T>) -> wasmtime::Result<()>,
    ) -> wasmtime::Result<Self> {
        let config = |pool: Option<Pool>| {
            let mut config = Config::new();
            if let Some(pool) = pool {
                config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool.config()));
            }
            config.wasm_component_model(true);
            // Guests yield to the scheduler at epoch ticks, so a busy agent
            // does not hold a worker thread, and a task past its deadline is
            // stopped.
            config.epoch_interruption(true);
            config.consume_fuel(fuel);
            config
        };
        let engine = match Engine::new(&config(pool)) {
            Err(error) if pool.is_some() => {
                tracing::warn!(
                    %error,
                    "the pooling allocator could not reserve its address space; allocating each instance on demand"
                );
                Engine::new(&config(None))?
            }
            engine => engine?,
        };
        let mut linker = Linker::new(&engine);
        imports(&mut linker)?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            cache: Arc::new(Mutex::new(Cache::new(DEFAULT_KEPT))),
            compiling: Arc::default(),
            compile_turn: Arc::new(tokio::sync::Semaphore::new(1)),
            compiles: Arc::default(),
            running: Arc::default(),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Keeps at most `bytes` of compiled code (at least the component
    /// compiled last), letting the least recently used components go
    /// first: they compile again from their stored bytes when an agent of
    /// theirs next starts.
    #[must_use]
    pub(crate) fn keeping(self, bytes: usize) -> Self {
        self.cache().limit = bytes;
        self
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache<T>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The components kept now.
    #[cfg(test)]
    pub(crate) fn holds(&self) -> std::collections::BTreeSet<Digest> {
        self.cache().entries.keys().copied().collect()
    }

    /// Bytes of compiled code kept now, and how many components.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> (usize, usize) {
        let cache = self.cache();
        (cache.bytes, cache.entries.len())
    }

    /// The compiled component for `digest`: from the cache, or else
    /// validated and compiled (on a blocking thread) from the bytes `load`
    /// gives, and cached. Callers asking for a digest while it compiles
    /// wait for that compile, holding no thread and loading nothing; a
    /// failed compile is not cached (the next caller tries again). One
    /// compile runs at a time, to its end even when its caller is gone
    /// (its result then is not cached: the caller may never have installed
    /// it). `usage` says who asks: an agent's start, or an install (see
    /// [`Use::Install`]).
    pub(crate) async fn prepare<B, E>(
        &self,
        usage: Use,
        digest: Digest,
        load: impl FnOnce() -> Result<B, E>,
    ) -> Result<AgentPre<T>, Unprepared<E>>
    where
        T: Send,
        B: AsRef<[u8]> + Send + 'static,
    {
        if let Some(pre) = self.cache().get(&digest, usage) {
            return Ok(pre);
        }
        let _turn = Turn::take(&self.compiling, digest).await;
        // The compile this caller waited for may have served it.
        if let Some(pre) = self.cache().get(&digest, usage) {
            return Ok(pre);
        }
        let turn = Arc::clone(&self.compile_turn)
            .acquire_owned()
            .await
            .expect("the compile turn's semaphore is never closed");
        let bytes = load().map_err(Unprepared::Load)?;
        let this = self.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            // A component of another world is refused from its outline
            // (read here too, off the async threads: up to 64 MiB of
            // sections), before the compiler spends a core on it.
            check_outline(bytes.as_ref())?;
            this.compiles.fetch_add(1, Ordering::Relaxed);
            let (now, most) = &*this.running;
            most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            let compiled = this.compile(bytes.as_ref());
            now.fetch_sub(1, Ordering::SeqCst);
            compiled
        })
        .await
        .map_err(|e| Unprepared::Panicked(e.to_string()))?
        .map_err(Unprepared::Invalid)?;
        self.cache().insert(digest, compiled.clone(), usage);
        Ok(compiled)
    }

    /// Compilations run so far, and digests being compiled now.
    #[cfg(test)]
    pub(crate) fn compiles(&self) -> (u64, usize) {
        let compiling = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        (self.compiles.load(Ordering::Relaxed), compiling.len())
    }

    /// Compilations running now, and the most that ran at once.
    #[cfg(test)]
    pub(crate) fn running(&self) -> (usize, usize) {
        let (now, most) = &*self.running;
        (now.load(Ordering::SeqCst), most.load(Ordering::SeqCst))
    }

    /// The compiled component for `digest`, if it is kept (which counts
    /// as a use by an agent).
    #[cfg(test)]
    pub(crate) fn cached(&self, digest: &Digest) -> Option<AgentPre<T>> {
        self.cache().get(digest, Use::Run)
    }

    /// Drops the compiled component for `digest` (it left the state: no
    /// agent runs it any more). Instances made from it keep what they
    /// hold.
    pub(crate) fn forget(&self, digest: &Digest) {
        self.cache().remove(digest);
    }

    fn compile(&self, bytes: &[u8]) -> Result<AgentPre<T>, ComponentError> {
        let component = Component::from_binary(&self.engine, bytes)
            .map_err(|e| ComponentError::Invalid(format!("{e:#}")))?;
        let ty = component.component_type();

        check_world(
            ty.exports(&self.engine).map(|(n, _)| n),
            ty.imports(&self.engine).map(|(n, _)| n),
        )?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ComponentError::Mismatch(format!("{e:#}")))?;
        AgentPre::new(pre).map_err(|e| ComponentError::Mismatch(format!("{e:#}")))
    }
}

/// Compiled code kept by default: see [`Components::keeping`].
pub(crate) const DEFAULT_KEPT: usize = 512 << 20;

/// The compiled components kept, by digest, under a bound on their
/// compiled code: a client installing component after component must not
/// grow the host's memory with each (an instance made from one keeps its
/// code however the cache lets it go).
struct Cache<T: 'static> {
    entries: HashMap<Digest, Kept<T>, toka_kernel::IdHash>,
    /// Bytes of compiled code the entries hold.
    bytes: usize,
    /// The most bytes kept (the last component compiled for an agent is
    /// kept anyway).
    limit: usize,
    /// Counts uses, to find the least recently used.
    uses: u64,
}

struct Kept<T: 'static> {
    pre: AgentPre<T>,
    bytes: usize,
    /// When an agent last used it, in `uses`; 0: none has since it was
    /// installed.
    used: u64,
}

/// Who asks for a compiled component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// An agent of it starts: it is kept as the most recently used.
    Run,
    /// It is being installed: the compiled code is kept only in room no
    /// code an agent ran needs (it lets only other installed code that no
    /// agent ran go), and a component kept already is not made recent. A
    /// client installing component after component (an API client with
    /// the `write` right) then cannot push the code agents run out of the
    /// cache, to be compiled again.
    Install,
}

impl<T: 'static> Cache<T> {
    fn new(limit: usize) -> Cache<T> {
        Cache {
            entries: HashMap::default(),
            bytes: 0,
            limit,
            uses: 0,
        }
    }

    fn get(&mut self, digest: &Digest, usage: Use) -> Option<AgentPre<T>> {
        let kept = self.entries.get_mut(digest)?;
        if usage == Use::Run {
            self.uses += 1;
            kept.used = self.uses;
        }
        Some(kept.pre.clone())
    }

    /// Keeps `pre`, letting the least recently used go to make room: for
    /// an install, only code no agent ran, and nothing is kept when that
    /// does not make room.
    fn insert(&mut self, digest: Digest, pre: AgentPre<T>, usage: Use) {
        self.remove(&digest);
        let range = pre.instance_pre().component().image_range();
        let bytes = (range.end as usize).saturating_sub(range.start as usize);
        while self.bytes.saturating_add(bytes) > self.limit {
            let Some(oldest) = self
                .entries
                .iter()
                .filter(|(_, kept)| usage == Use::Run || kept.used == 0)
                .min_by_key(|(_, kept)| kept.used)
                .map(|(digest, _)| *digest)
            else {
                break;
            };
            self.remove(&oldest);
        }
        let used = match usage {
            Use::Run => {
                self.uses += 1;
                self.uses
            }
            Use::Install if self.bytes.saturating_add(bytes) > self.limit => return,
            Use::Install => 0,
        };
        self.bytes += bytes;
        self.entries.insert(digest, Kept { pre, bytes, used });
    }

    fn remove(&mut self, digest: &Digest) {
        if let Some(kept) = self.entries.remove(digest) {
            self.bytes -= kept.bytes;
        }
    }
}

/// Refuses a component that does not export the agent's handler, or
/// imports what the host does not provide, by the names of its exports and
/// imports.
fn check_world<'a>(
    exports: impl Iterator<Item = &'a str>,
    imports: impl Iterator<Item = &'a str>,
) -> Result<(), ComponentError> {
    let exports: Vec<&str> = exports.collect();
    if !exports.iter().any(|e| e.starts_with(HANDLER_EXPORT)) {
        return Err(ComponentError::NotAnAgent {
            exports: if exports.is_empty() {
                "nothing".into()
            } else {
                exports.join(", ")
            },
        });
    }
    let unsupported: Vec<String> = imports
        .filter(|n| !ALLOWED_IMPORTS.iter().any(|p| n.starts_with(p)))
        .map(str::to_owned)
        .collect();
    if !unsupported.is_empty() {
        return Err(ComponentError::UnsupportedImports {
            imports: unsupported,
        });
    }
    Ok(())
}

/// The component's preamble and, read from its sections without
/// compiling anything, its world ([`check_world`] on its top-level exports
/// and imports). Bytes that do not parse pass here: the compiler says
/// what is wrong with them.
fn check_outline(bytes: &[u8]) -> Result<(), ComponentError> {
    use wasmparser::{Parser, Payload};
    check_preamble(bytes)?;
    let (mut exports, mut imports) = (Vec::new(), Vec::new());
    // Sections of nested modules and components come between their start
    // and their `End`; only the outermost are the component's own.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    let Ok(export) = export else { return Ok(()) };
                    exports.push(export.name.name);
                }
            }
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let Ok(import) = import else { return Ok(()) };
                    imports.push(import.name.name);
                }
            }
            _ => {}
        }
    }
    check_world(exports.into_iter(), imports.into_iter())
}

/// Tells a component from a core module from something else by the preamble.
fn check_preamble(bytes: &[u8]) -> Result<(), ComponentError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ComponentError::NotWasm);
    }
    // Bytes 4..8: version and layer; layer 0 is a core module, 1 a component.
    if bytes[6..8] == [0, 0] {
        return Err(ComponentError::CoreModule);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_tells_modules_from_components() {
        assert_eq!(check_preamble(b"hello world"), Err(ComponentError::NotWasm));
        assert_eq!(check_preamble(b"\0asm"), Err(ComponentError::NotWasm));
        assert_eq!(
            check_preamble(b"\0asm\x01\0\0\0"),
            Err(ComponentError::CoreModule)
        );
        assert_eq!(check_preamble(b"\0asm\x0d\0\x01\0"), Ok(()));
    }
}
