//! An empty proxy-wasm HTTP filter, kept as the benchmark's floor (variant B in bench/bench.py).
//!
//! It is built with the same SDK and release profile as resetguard and makes no host call: what
//! Envoy spends on it per request (VM entry for each callback, context create/delete) is the cost
//! of having any proxy-wasm filter at all, which resetguard cannot go below.

use proxy_wasm::traits::{Context, HttpContext};

struct PassThrough;

impl Context for PassThrough {}

impl HttpContext for PassThrough {}

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
        Box::new(PassThrough)
    });
}}
