//! What the host's parts share: the sequencer, the compiled components,
//! the bus, the actors; and routing each committed batch to the agents it
//! gives work.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use toka_kernel::{Digest, Event};

use crate::log::committed::Committed;
use crate::runtime::bus::Bus;
use crate::runtime::guest::AgentCtx;
use crate::runtime::sequencer::Sequencer;
use crate::sandbox::bindings::AgentPre;
use crate::sandbox::components::{Components, Unprepared, Use};
use crate::sandbox::limits::AgentLimits;
use crate::store::event_store::EventStore;
use crate::text::clip;

/// What actors share with the host.
pub(crate) struct HostInner {
    pub(crate) sequencer: Sequencer,
    /// What agents' sandboxes ask of the runtime (the sequencer, the
    /// secrets, the data dir's id).
    pub(crate) outbound: Arc<crate::runtime::outbound::Outbound>,
    pub(crate) components: Components<AgentCtx>,
    pub(crate) agent_limits: AgentLimits,
    /// Places for running instances ([`HostConfig::max_instances`](crate::HostConfig::max_instances),
    /// [`HostConfig::places_per_tree`](crate::HostConfig::places_per_tree)).
    pub(crate) places: Arc<crate::sandbox::places::Places>,
    /// Instances kept for agents that just ran out of work.
    pub(crate) warm: crate::runtime::instance::Warm,
    /// Agents' paces of reading their state and being refused, kept past
    /// their instances.
    pub(crate) kept_paces: Arc<crate::runtime::paces::Kept>,
    /// The live instances' memories together ([`HostConfig::memory_budget`](crate::HostConfig::memory_budget)).
    pub(crate) memory: Arc<crate::sandbox::memory::MemoryBudget>,
    /// Set by [`Host::drain`](crate::Host::drain): start no more tasks.
    pub(crate) draining: AtomicBool,
    /// Wakes the actors whose task waits for its tree's log-bytes debt
    /// (they sleep all of it, see `Sequencer::task_hold`) when the host
    /// drains or stops.
    pub(crate) held: tokio::sync::Notify,
    /// Callers waiting for tasks to end.
    pub(crate) waiters: crate::runtime::tasks::Waiters,
    /// Held while the log is being archived ([`Host::archive`](crate::Host::archive)).
    pub(crate) archiving: std::sync::Mutex<()>,
    /// Operator tokens presented to the host, verified.
    pub(crate) operator_tokens: crate::capability::presented::PresentedTokens,
    /// See [`HostConfig::protected_paths`](crate::HostConfig::protected_paths).
    pub(crate) protected_paths: Vec<std::path::PathBuf>,
    /// Whether agents run ([`HostConfig::start_agents`](crate::HostConfig::start_agents), [`Host::start_agents`](crate::Host::start_agents)).
    pub(crate) agents_started: AtomicBool,
    /// Keys the guests' per-task randomness (derived from the root key).
    pub(crate) entropy: [u8; 32],
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) bus: Arc<Bus>,
    /// Agents whose actor is running (it ends when the agent has no work).
    pub(crate) actors: crate::runtime::roster::Roster,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl HostInner {
    /// Publishes a durable batch and hands scheduled tasks to their agents.
    pub(crate) fn route(self: &Arc<Self>, batch: Arc<Committed>) {
        for record in &batch.records {
            for event in &record.events {
                match event {
                    Event::TaskScheduled { agent, .. } | Event::AgentResumed { agent } => {
                        self.wake(*agent);
                    }
                    Event::AgentTerminated { agent, .. } => {
                        self.wake(*agent);
                        // Its actor may be waiting on a held task (see
                        // `actor::run`), as for the two below.
                        self.actors.nudge(*agent);
                    }
                    Event::AgentQuarantined { agent, .. } | Event::BudgetsSet { agent, .. } => {
                        self.actors.nudge(*agent);
                    }
                    Event::ComponentRemoved { component, .. } => {
                        self.components.forget(component);
                    }
                    _ => {}
                }
            }
        }
        self.waiters.committed(&batch.records);
        self.bus.send(batch);
    }

    /// The log writer has ended (the host shut down, or its log failed):
    /// nothing more is published, so subscribers end once they have read
    /// what is held, and callers waiting for a task's end stop waiting.
    pub(crate) fn writer_ended(&self) {
        self.bus.close();
        self.waiters.close();
    }

    /// The compiled component, compiling it from the stored blob if needed
    /// (once, however many agents of it start meanwhile).
    pub(crate) async fn prepared(&self, digest: Digest) -> Result<AgentPre<AgentCtx>, String> {
        let load = || {
            self.store
                .blob(&digest)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("component {} is missing from the store", digest.short()))
        };
        self.components
            .prepare(Use::Run, digest, load)
            .await
            .map_err(|unprepared| match unprepared {
                Unprepared::Load(why) => why,
                Unprepared::Invalid(e) => e.to_string(),
                Unprepared::Panicked(e) => format!("compiling the component panicked: {e}"),
            })
    }

    /// Cuts a reason to the kernel's limit (on a character boundary).
    pub(crate) fn clip_reason(&self, reason: &str) -> String {
        let max = self.sequencer.read(|k| k.limits().max_reason as usize);
        clip(reason, max)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use toka_kernel::Digest;

    use crate::runtime::guest::{AgentCtx, add_imports};
    use crate::sandbox::components::{Components, Unprepared, Use};

    fn read(name: &str) -> Arc<[u8]> {
        std::fs::read(toka_agents::path(name).unwrap())
            .unwrap()
            .into()
    }

    fn fresh() -> Components<AgentCtx> {
        Components::<AgentCtx>::new(false, None, add_imports).unwrap()
    }

    /// Prepares `bytes` in `components` for an agent: its digest.
    async fn prepared(components: &Components<AgentCtx>, bytes: &Arc<[u8]>) -> Digest {
        prepared_for(Use::Run, components, bytes).await
    }

    /// Prepares `bytes` in `components` for `usage`: its digest.
    async fn prepared_for(
        usage: Use,
        components: &Components<AgentCtx>,
        bytes: &Arc<[u8]>,
    ) -> Digest {
        let digest = Digest::of(bytes);
        let bytes = Arc::clone(bytes);
        components
            .prepare(usage, digest, || Ok::<_, Infallible>(bytes))
            .await
            .unwrap();
        digest
    }

    /// Three components, and the bytes of compiled code each takes.
    async fn three() -> ([Arc<[u8]>; 3], [usize; 3]) {
        let bytes = ["hello", "counter", "test-bench"].map(read);
        let mut sizes = [0; 3];
        for (size, bytes) in sizes.iter_mut().zip(&bytes) {
            let alone = fresh();
            prepared(&alone, bytes).await;
            *size = alone.kept().0;
        }
        assert!(sizes.iter().all(|&s| s > 0));
        (bytes, sizes)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compiled_code_kept_is_bounded_and_the_least_recently_used_goes_first() {
        let ([a, b, c], sizes) = three().await;
        let [sa, sb, sc] = sizes;
        // Room for any two of them, not three.
        let limit = sa + sb + sc - sa.min(sb).min(sc);
        let components = fresh().keeping(limit);
        let prepare = |bytes| prepared(&components, bytes);
        let (da, db) = (prepare(&a).await, prepare(&b).await);
        assert_eq!(components.kept(), (sa + sb, 2));
        // `a` used since `b` was compiled: `b` goes when `c` comes.
        assert!(components.cached(&da).is_some());
        let dc = prepare(&c).await;
        assert!(
            components.cached(&db).is_none(),
            "the least recently used goes"
        );
        assert!(components.cached(&da).is_some() && components.cached(&dc).is_some());
        assert_eq!(components.kept(), (sa + sc, 2));
        assert_eq!(components.compiles().0, 3);
        // Asked for again, `b` compiles again from its bytes.
        prepare(&b).await;
        assert_eq!(components.compiles().0, 4);
        assert!(components.kept().0 <= limit);
        // Kept past the bound, one component alone: the last compiled.
        let tight = fresh().keeping(1);
        prepared(&tight, &a).await;
        assert_eq!(tight.kept(), (sa, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn installing_components_does_not_push_out_the_code_agents_run() {
        let ([a, b, c], [sa, sb, sc]) = three().await;
        // Room for any two of them, not three.
        let components = fresh().keeping(sa + sb + sc - sa.min(sb).min(sc));
        let da = prepared(&components, &a).await;
        let db = prepared_for(Use::Install, &components, &b).await;
        assert_eq!(components.kept(), (sa + sb, 2));
        // A second install lets only the code no agent ran go.
        let dc = prepared_for(Use::Install, &components, &c).await;
        assert_eq!(components.holds(), [da, dc].into());
        // An agent of `b` starts: its code is compiled again and kept; the
        // installed code no agent ran goes first.
        prepared(&components, &b).await;
        assert_eq!(components.holds(), [da, db].into());
        // With the room taken by code agents ran, an install is compiled
        // (so checked) but not kept, and a component kept is not made
        // recent by installing it again.
        prepared_for(Use::Install, &components, &c).await;
        prepared_for(Use::Install, &components, &a).await;
        assert_eq!(components.holds(), [da, db].into());
        assert_eq!(components.compiles().0, 5);
        prepared(&components, &c).await;
        assert_eq!(
            components.holds(),
            [db, dc].into(),
            "`a` ran least recently"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_compile_serves_everyone_asking_for_a_component_meanwhile() {
        let components = Components::<AgentCtx>::new(false, None, add_imports).unwrap();
        let bytes: Arc<[u8]> = std::fs::read(toka_agents::path("test-bench").unwrap())
            .unwrap()
            .into();
        let digest = toka_kernel::Digest::of(&bytes);
        let loads = Arc::new(AtomicU32::new(0));
        let asking: Vec<_> = (0..8)
            .map(|_| {
                let (components, bytes, loads) =
                    (components.clone(), Arc::clone(&bytes), Arc::clone(&loads));
                tokio::spawn(async move {
                    let load = || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(bytes)
                    };
                    components.prepare(Use::Run, digest, load).await.is_ok()
                })
            })
            .collect();
        for asked in asking {
            assert!(asked.await.unwrap());
        }
        assert_eq!(
            components.compiles(),
            (1, 0),
            "one compile, none left running"
        );
        assert_eq!(loads.load(Ordering::SeqCst), 1, "the bytes loaded once");

        // A component that does not compile is refused to each caller, and
        // not cached; a load that fails is the caller's error.
        let bad = toka_kernel::Digest::of(b"not wasm");
        for _ in 0..2 {
            let refused = components
                .prepare(Use::Run, bad, || {
                    Ok::<_, Infallible>(b"not wasm".as_slice())
                })
                .await;
            assert!(
                matches!(refused, Err(Unprepared::Invalid(_))),
                "{:?}",
                refused.err()
            );
        }
        assert!(components.cached(&bad).is_none());
        let missing = components
            .prepare(Use::Run, bad, || Err::<&[u8], _>("gone"))
            .await;
        assert!(
            matches!(missing, Err(Unprepared::Load("gone"))),
            "{:?}",
            missing.err()
        );
        // Not WebAssembly: refused by its preamble, nothing compiled.
        assert_eq!(components.compiles(), (1, 0));

        // A caller dropped while it compiles (its task aborted) leaves no
        // turn behind, and the next caller gets the component.
        let hello: Arc<[u8]> = std::fs::read(toka_agents::path("hello").unwrap())
            .unwrap()
            .into();
        let digest = toka_kernel::Digest::of(&hello);
        let dropped = {
            let (components, hello) = (components.clone(), Arc::clone(&hello));
            tokio::spawn(async move {
                let load = || Ok::<_, Infallible>(hello);
                components.prepare(Use::Run, digest, load).await.is_ok()
            })
        };
        tokio::task::yield_now().await;
        dropped.abort();
        let _ = dropped.await;
        assert_eq!(components.compiles().1, 0, "no turn left behind");
        let load = || Ok::<_, Infallible>(hello);
        assert!(components.prepare(Use::Run, digest, load).await.is_ok());
        assert_eq!(components.compiles().1, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compile_whose_caller_went_away_runs_alone_to_its_end() {
        let components = Components::<AgentCtx>::new(false, None, add_imports).unwrap();
        let read = |name: &str| -> Arc<[u8]> {
            std::fs::read(toka_agents::path(name).unwrap())
                .unwrap()
                .into()
        };
        let (first, second) = (read("test-bench"), read("hello"));
        // The first caller goes away once its compile has begun (an API
        // client closing its connection mid-install).
        let gone = {
            let (components, first) = (components.clone(), Arc::clone(&first));
            let digest = toka_kernel::Digest::of(&first);
            tokio::spawn(async move {
                let load = || Ok::<_, Infallible>(first);
                components.prepare(Use::Run, digest, load).await.is_ok()
            })
        };
        while components.running().0 == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert_eq!(components.running().0, 1, "the compile runs on");

        // The next compile waits for it: never two at once.
        let digest = toka_kernel::Digest::of(&second);
        let load = || Ok::<_, Infallible>(Arc::clone(&second));
        assert!(components.prepare(Use::Run, digest, load).await.is_ok());
        assert_eq!(components.compiles().0, 2);
        assert_eq!(components.running().1, 1, "one compile at a time");
        // The abandoned one's result is not kept: its caller never had it.
        assert!(
            components
                .cached(&toka_kernel::Digest::of(&first))
                .is_none()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_component_of_another_world_is_refused_before_it_compiles() {
        let components = Components::<AgentCtx>::new(false, None, add_imports).unwrap();
        for (name, refused) in [
            (
                "test-cli",
                "not a Toka agent: it does not export `toka:agent/handler@0.1.0` (it exports wasi:cli/run@0.2.",
            ),
            ("hostile-sockets", "imports wasi:sockets/"),
        ] {
            let bytes = std::fs::read(toka_agents::path(name).unwrap()).unwrap();
            let digest = toka_kernel::Digest::of(&bytes);
            let load = || Ok::<_, Infallible>(bytes);
            let Err(Unprepared::Invalid(why)) = components.prepare(Use::Run, digest, load).await
            else {
                panic!("{name} was prepared");
            };
            assert!(why.to_string().contains(refused), "{name}: {why}");
        }
        assert_eq!(components.compiles(), (0, 0), "nothing was compiled");
    }
}
