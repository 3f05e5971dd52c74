//! The host side of `wit/agent.wit`, generated once.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "agent",
    imports: {
        // `submit` may wait (backpressure when the log writer falls behind);
        // the reads are synchronous.
        "toka:agent/kernel.submit": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub(crate) use toka::agent::types as wit;
