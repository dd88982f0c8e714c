//! The `env` imports of proxy-wasm ABI 0.2.1 and the WASI preview-1 calls, linked by name. A
//! module that imports anything else fails to load with the list of what is missing.

mod context;
mod data;
mod http;
mod wasi;

use crate::abi::status;
use crate::memory::MemError;
use crate::state::VmState;
use std::collections::BTreeSet;
use wasmtime::{Caller, Linker, Module};

/// Counts a call and answers whether the host has this capability at all.
pub(crate) fn enter(caller: &mut Caller<'_, VmState>, name: &'static str) {
    *caller.data_mut().calls.entry(name).or_insert(0) += 1;
}

/// Turns a guest-memory failure into the status the call answers.
pub(crate) fn code(result: Result<(), MemError>) -> i32 {
    match result {
        Ok(()) => status::OK,
        Err(MemError(c)) => c,
    }
}

/// Builds a linker with every import this host provides.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<VmState>> {
    let mut linker = Linker::new(engine);
    http::link(&mut linker)?;
    data::link(&mut linker)?;
    context::link(&mut linker)?;
    wasi::link(&mut linker)?;
    Ok(linker)
}

/// Imports of `module` the host does not provide (module, name).
pub fn missing_imports(
    linker: &Linker<VmState>,
    store: &mut wasmtime::Store<VmState>,
    module: &Module,
) -> Vec<String> {
    let provided: BTreeSet<(String, String)> = linker
        .iter(&mut *store)
        .map(|(m, n, _)| (m.to_string(), n.to_string()))
        .collect();
    module
        .imports()
        .filter(|i| !provided.contains(&(i.module().to_string(), i.name().to_string())))
        .map(|i| format!("{}.{}", i.module(), i.name()))
        .collect()
}

/// Every `env` function of the ABI 0.2.1 (plus the 0.1 stream calls Envoy still answers).
pub const ENV_IMPORTS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_add_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
];

/// The WASI preview-1 functions provided (deterministic clock and random, captured output).
pub const WASI_IMPORTS: &[&str] = wasi::PROVIDED;
