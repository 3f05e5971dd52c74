//! Write Toka agents in Rust.
//!
//! An agent is a WebAssembly component (`wasm32-wasip2`) that handles tasks
//! one at a time. Everything it wants done — emit an observation, keep state,
//! spawn a sub-agent, schedule work — goes through the [`Context`] as an
//! operation the host checks against the agent's capability token and applies
//! in order with every other agent's operations.
//!
//! This crate is the only dependency an agent needs. Implement [`Agent`],
//! export it with [`export_agent!`], build a `cdylib` for `wasm32-wasip2`:
//!
//! ```no_run
//! use toka_guest::{Agent, Context, Task};
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Agent for Hello {
//!     fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
//!         let greeting = format!("Hello, {}!", task.description);
//!         ctx.observe(&greeting).map_err(|e| e.to_string())?;
//!         Ok(greeting.into_bytes())
//!     }
//! }
//!
//! toka_guest::export_agent!(Hello);
//! ```
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//! ```
//!
//! `cargo build --target wasm32-wasip2 --release` then gives a component that
//! `toka run target/wasm32-wasip2/release/NAME.wasm --task world` runs.
//!
//! [`http`] sends outbound requests (`http::get`, `http::post_json`, ...),
//! where the agent's token grants `http HOST`.

// `deny`, not `forbid`: the bindings wit-bindgen generates are ABI glue with
// `unsafe` blocks, and that one module is exempted below. Hand-written code
// in this crate has no `unsafe`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod agent;
mod context;
mod error;
pub mod http;
mod id;

pub use agent::{Agent, Task};
pub use context::{Context, Level, Operation, Receipt};
pub use error::Error;
pub use id::{AgentId, EntityId, ParseIdError, TaskId};

/// Waits `duration` of wall-clock time (e.g. before retrying a request);
/// the task's deadline keeps running meanwhile.
pub fn sleep(duration: std::time::Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    wasip2::clocks::monotonic_clock::subscribe_duration(nanos).block();
}

/// The raw bindings generated from `wit/agent.wit`; used by [`export_agent!`].
/// Not part of the API: use [`Agent`] and [`Context`].
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs, reason = "generated code")]
    #![allow(unsafe_code, reason = "generated ABI glue")]
    #![allow(unreachable_pub, reason = "generated code")]
    #![allow(clippy::all, reason = "generated code")]

    wit_bindgen::generate!({
        path: "../wit",
        world: "agent",
        pub_export_macro: true,
        default_bindings_module: "toka_guest::bindings",
    });
}

/// Support code for [`export_agent!`]. Not part of the API.
#[doc(hidden)]
pub mod __export {
    pub use crate::agent::{handle_task, init};
    pub use crate::bindings::exports::toka::agent::handler::Guest;
    pub use crate::bindings::toka::agent::types::Task as WitTask;
}

/// Exports an [`Agent`] type as the component's `handler` interface.
///
/// Use it once, at the crate root of a `cdylib`. The host calls
/// [`Agent::init`] once per instance (on a value made with `Default`), then
/// [`Agent::handle_task`] for each task; the value lives as long as the
/// instance, so fields can cache things between tasks (durable state belongs
/// in [`Context::put`]).
///
/// ```no_run
/// #[derive(Default)]
/// struct Noop;
///
/// impl toka_guest::Agent for Noop {
///     fn handle_task(
///         &mut self,
///         _ctx: &mut toka_guest::Context,
///         _task: toka_guest::Task,
///     ) -> Result<Vec<u8>, String> {
///         Ok(Vec::new())
///     }
/// }
///
/// toka_guest::export_agent!(Noop);
/// ```
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        const _: () = {
            ::std::thread_local! {
                static TOKA_AGENT: ::core::cell::RefCell<::core::option::Option<$agent>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct TokaAgentExport;

            impl $crate::__export::Guest for TokaAgentExport {
                fn init() -> ::core::result::Result<(), ::std::string::String> {
                    TOKA_AGENT.with(|cell| $crate::__export::init::<$agent>(cell))
                }

                fn handle_task(
                    task: $crate::__export::WitTask,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    TOKA_AGENT.with(|cell| $crate::__export::handle_task::<$agent>(cell, task))
                }
            }

            // Only a WebAssembly build exports the component's functions. A
            // native build of the same crate (`cargo build`, `cargo test` at
            // the workspace root) type-checks the agent but exports nothing:
            // the component ABI's symbol names (`toka:agent/handler@0.1.0#…`)
            // are not valid in a native linker's version script.
            #[cfg(target_family = "wasm")]
    $crate::bindings::export!(TokaAgentExport with_types_in $crate::bindings);
            // Natively, keep the agent reachable so the compiler still checks
            // (and lints) it as used code.
            #[cfg(not(target_family = "wasm"))]
            const _: (
                fn() -> ::core::result::Result<(), ::std::string::String>,
                fn(
                    $crate::__export::WitTask,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String>,
            ) = (
                <TokaAgentExport as $crate::__export::Guest>::init,
                <TokaAgentExport as $crate::__export::Guest>::handle_task,
            );
        };
    };
}
