//! Deterministic cost of one request: wasm instructions executed (wasmtime fuel) and crossings
//! between host and module (imports called, plus buffers the host allocated in the module).
//!
//! Opt-in: a second engine with fuel metering compiles its own copy of the module, so the rest of
//! the suite runs unmetered. Fuel counts wasm operators, not time, so it does not depend on the
//! machine or its load; crossings are what costs on Envoy (each is a V8 exit or entry).

use crate::memory::ALLOCATE;
use crate::request::{Exchange, Request};
use crate::vm::{Vm, VmResult};
use crate::wasm;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use wasmtime::{Config, Engine, Module};

/// What one request cost the module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Wasm instructions executed (wasmtime fuel: one unit per operator, roughly).
    pub fuel: u64,
    /// Calls per import, plus `proxy_on_memory_allocate` for every buffer the host handed over.
    pub calls: BTreeMap<&'static str, u64>,
}

impl Cost {
    /// Imports the module called (module → host crossings).
    pub fn host_calls(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(name, _)| **name != ALLOCATE)
            .map(|(_, n)| n)
            .sum()
    }

    /// Buffers the host allocated in the module (extra host → module crossings).
    pub fn allocations(&self) -> u64 {
        self.calls.get(ALLOCATE).copied().unwrap_or(0)
    }
}

fn metered_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        config.consume_fuel(true);
        Engine::new(&config).unwrap_or_else(|e| panic!("cannot create the metered engine: {e}"))
    })
}

/// Compiles any `.wasm` file for metering.
pub fn metered_module(path: &Path) -> Result<Module, String> {
    Module::from_file(metered_engine(), path)
        .map_err(|e| format!("cannot compile {}: {e:#}", path.display()))
}

/// The filter's release `.wasm` (the one the suite tests), compiled for metering once.
pub fn metered_filter() -> Result<&'static Module, String> {
    static MODULE: OnceLock<Result<Module, String>> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            // Same artefact and freshness check as the unmetered suite.
            wasm::filter_module()?;
            metered_module(&wasm::filter_path())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs one request and answers what it cost (the VM must run on a metered module).
pub fn measure(vm: &mut Vm, request: Request) -> VmResult<(Exchange, Cost)> {
    let fuel_before = vm.store.get_fuel().unwrap_or(0);
    let calls_before = vm.state().calls.clone();
    let exchange = vm.exchange(request)?;
    let fuel = fuel_before.saturating_sub(vm.store.get_fuel().unwrap_or(0));
    let calls = vm
        .state()
        .calls
        .iter()
        .map(|(name, n)| (*name, n - calls_before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    Ok((exchange, Cost { fuel, calls }))
}
