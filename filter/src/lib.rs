//! resetguard: a proxy-wasm HTTP filter that makes connection resets harmless.
//!
//! Decision logic lives in ABI-free modules (`config`, `decision`, `retry_policy`, `outcome`) that
//! are unit tested natively; `decision::decide` is what the filter does with a request head, for
//! the filter and for tools alike. `host` wraps the ABI without panicking; `root`, `route_policy`
//! and `http` are the thin glue.

// First: its test-only `json!` macro is used by the modules below.
#[macro_use]
pub mod json;
pub mod config;
pub mod decision;
pub mod host;
mod http;
pub mod idempotency;
mod keyed_stream;
mod local_response;
mod logger;
pub mod metrics;
pub mod outcome;
pub mod retry_policy;
mod root;
mod route_policy;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_context_id| Box::new(root::Root::default()));
}}
