//! resetguard's proxy-wasm glue: gathers facts from the host (header maps, bodies, properties,
//! shared data, the clock) and carries out what `resetguard_core` decides. `host` wraps the ABI
//! without panicking; `root`, `route_policy` and `http` are the contexts; `host_kv` backs the
//! idempotency store with the proxy's shared data.

pub mod host;
mod host_kv;
mod http;
mod keyed_stream;
mod local_response;
mod logger;
pub mod metrics;
mod remote_store;
mod root;
mod route_policy;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_context_id| Box::new(root::Root::default()));
}}
