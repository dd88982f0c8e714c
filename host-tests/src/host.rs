//! The host: one proxy process with N worker VMs of the same plugin sharing shared data, metrics,
//! the clock and the log. Built per test; nothing is global.

use crate::abi::LogLevel;
use crate::callout::ClusterBehaviour;
use crate::profiles::Profile;
use crate::request::{Exchange, Request};
use crate::state::{lock, HostShared, LogLine, PluginSetup, SharedHandle};
use crate::vm::{Vm, VmError, VmResult};
use crate::wasm;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime::Module;

pub struct HostBuilder {
    profile: Profile,
    seed: u64,
    workers: usize,
    log_level: LogLevel,
    setup: PluginSetup,
    clusters: Vec<(String, ClusterBehaviour)>,
}

impl HostBuilder {
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Worker VMs (Envoy's `--concurrency`).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    pub fn config(mut self, json: &str) -> Self {
        self.setup.plugin_config = json.as_bytes().to_vec();
        self
    }

    pub fn config_bytes(mut self, raw: &[u8]) -> Self {
        self.setup.plugin_config = raw.to_vec();
        self
    }

    pub fn vm_config(mut self, raw: &[u8]) -> Self {
        self.setup.vm_config = raw.to_vec();
        self
    }

    pub fn route(mut self, name: &str, filter_metadata: serde_json::Value) -> Self {
        self.setup.route_name = Some(name.to_string());
        if let serde_json::Value::Object(map) = filter_metadata {
            self.setup.route_metadata = map;
        }
        self
    }

    pub fn cluster(mut self, name: &str, behaviour: ClusterBehaviour) -> Self {
        self.clusters.push((name.to_string(), behaviour));
        self
    }

    /// An etcd cluster reachable as callout cluster `name` (`crate::etcd`); register the same
    /// `Etcd` (or its `client(..)`) on several hosts to have several proxies share it.
    pub fn etcd(self, name: &str, etcd: &crate::etcd::Etcd) -> Self {
        self.cluster(name, etcd.behaviour())
    }

    /// Starts the host on the filter's release .wasm.
    pub fn start(self) -> VmResult<Host> {
        let module = wasm::filter_module().map_err(VmError::Load)?;
        self.start_module(module)
    }

    /// Starts the host on any module (host self-tests use hand-written WAT).
    pub fn start_module(self, module: &Module) -> VmResult<Host> {
        let mut shared = HostShared::new(self.profile, self.seed);
        shared.log_level = self.log_level;
        shared.clusters = self.clusters.into_iter().collect();
        let shared: SharedHandle = Arc::new(Mutex::new(shared));
        let mut vms = Vec::with_capacity(self.workers);
        for i in 0..self.workers {
            lock(&shared).next_vm = i as u32 + 1;
            vms.push(Vm::start(
                shared.clone(),
                i as u32,
                self.setup.clone(),
                module,
            )?);
        }
        Ok(Host { shared, vms })
    }
}

pub struct Host {
    shared: SharedHandle,
    pub vms: Vec<Vm>,
}

impl Host {
    pub fn builder() -> HostBuilder {
        HostBuilder {
            profile: Profile::Envoy,
            seed: 0x5eed,
            workers: 1,
            log_level: LogLevel::Info,
            setup: PluginSetup {
                vm_id: "resetguard".into(),
                plugin_name: "resetguard".into(),
                root_id: "resetguard".into(),
                ..PluginSetup::default()
            },
            clusters: Vec::new(),
        }
    }

    /// An Envoy host with one worker and this plugin config; panics with the load error.
    pub fn envoy(config: &str) -> Host {
        Host::builder()
            .config(config)
            .start()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether every VM accepted the plugin configuration.
    pub fn configured(&self) -> bool {
        self.vms.iter().all(|vm| vm.configured)
    }

    pub fn vm(&mut self, index: usize) -> &mut Vm {
        &mut self.vms[index]
    }

    /// Runs a request on worker 0; panics if the module traps (the tests' main assertion).
    pub fn exchange(&mut self, request: Request) -> Exchange {
        self.exchange_on(0, request)
    }

    pub fn exchange_on(&mut self, worker: usize, request: Request) -> Exchange {
        self.vms[worker]
            .exchange(request)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_exchange(&mut self, request: Request) -> VmResult<Exchange> {
        self.vms[0].exchange(request)
    }

    pub fn shared(&self) -> MutexGuard<'_, HostShared> {
        lock(&self.shared)
    }

    pub fn handle(&self) -> SharedHandle {
        self.shared.clone()
    }

    /// A metric as Envoy's `/stats` shows it once every worker's pending counts reached it (the
    /// filter flushes on its root context's tick: fired here, at the current time).
    pub fn metric(&mut self, name: &str) -> Option<i64> {
        self.flush_ticks();
        self.shared().metrics.get(name).map(|m| m.value)
    }

    /// A histogram's recorded values (histograms are not batched: no tick needed).
    pub fn histogram(&self, name: &str) -> Vec<i64> {
        self.shared()
            .metrics
            .get(name)
            .map(|m| m.samples.clone())
            .unwrap_or_default()
    }

    /// Every metric, after each worker's tick (see `metric`).
    pub fn metrics(&mut self) -> BTreeMap<String, i64> {
        self.flush_ticks();
        self.shared()
            .metrics
            .iter()
            .map(|(k, m)| (k.clone(), m.value))
            .collect()
    }

    /// The metrics exactly as the host holds them, without firing any tick.
    pub fn metrics_unflushed(&self) -> BTreeMap<String, i64> {
        self.shared()
            .metrics
            .iter()
            .map(|(k, m)| (k.clone(), m.value))
            .collect()
    }

    /// Fires every registered root-context tick once, now (a trapped VM is left alone).
    pub fn flush_ticks(&mut self) {
        for vm in &mut self.vms {
            if vm.trapped().is_some() {
                continue;
            }
            let roots: Vec<u32> = vm.state().ticks.keys().copied().collect();
            for root in roots {
                let _ = vm.call(root, "proxy_on_tick", &[root as i32]);
            }
        }
    }

    pub fn logs(&self) -> Vec<LogLine> {
        self.shared().logs.clone()
    }

    /// Log lines at `level` or above.
    pub fn logs_at(&self, level: LogLevel) -> Vec<String> {
        self.shared()
            .logs
            .iter()
            .filter(|l| l.level >= level)
            .map(|l| l.message.clone())
            .collect()
    }

    /// Advances the clock on every worker, firing ticks and callout replies.
    pub fn advance(&mut self, ms: u64) -> VmResult<()> {
        let start = self.shared().now_ns;
        for vm in &mut self.vms {
            lock(&vm.state().host).now_ns = start;
            crate::events::advance(vm, ms)?;
        }
        // etcd clusters live on this clock too: leases that ran out expire now.
        let (now, etcds) = {
            let s = self.shared();
            let etcds: Vec<crate::etcd::Etcd> = s
                .clusters
                .values()
                .filter_map(|b| match b {
                    ClusterBehaviour::Etcd(e) => Some(e.clone()),
                    _ => None,
                })
                .collect();
            (s.now_ns, etcds)
        };
        for e in etcds {
            e.observe(now);
        }
        Ok(())
    }
}
