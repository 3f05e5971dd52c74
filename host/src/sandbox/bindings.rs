//! The host side of `wit/agent.wit`, generated once.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "agent",
    imports: {
        // `submit` may wait (backpressure when the log writer falls behind);
        // the reads may wait for their pace (`runtime::reads`).
        "toka:agent/kernel.submit": async | trappable,
        "toka:agent/kernel.get-state": async | trappable,
        "toka:agent/kernel.state-keys": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub(crate) use toka::agent::types as wit;
