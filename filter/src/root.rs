//! The root context: validates the plugin configuration and hands it to every HTTP stream.

use crate::host::HostError;
use crate::host::{self, BufferType};
use crate::host_kv::HostKv;
use crate::http::HttpFilter;
use crate::logger;
use crate::metrics::{Counter, Metrics, FLUSH_PERIOD_MS};
use crate::remote_store::{self, Remote};
use crate::route_policy::RouteOverrides;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use resetguard_core::config::{self, Backend, Config, IdempotencyConfig, OnUnavailable};
use resetguard_core::decision::Policy;
use resetguard_core::etcd::gateway::Request;
use resetguard_core::etcd::leases::LeaseKind;
use resetguard_core::etcd::ops::{Progress, SettleOp, SettleWait};
use resetguard_core::idempotency;
use resetguard_core::idempotency::store::{Finish, Report, StoreError};
use resetguard_core::idempotency::store::{IdempotencyStore, ShardedStore, SEED_LEN};
use resetguard_core::keyed::settled_counters;
use std::cell::RefCell;
use std::rc::Rc;

/// Everything a stream needs: the plugin's policy, or a route's effective policy.
pub struct Shared {
    pub policy: Policy,
    pub metrics: Metrics,
    /// The fleet-wide store, when `idempotency.store.backend` is `etcd` (the policy's own store
    /// is then the local fallback of `on_unavailable: local`, or none).
    pub remote: Option<Rc<Remote>>,
}

impl Shared {
    /// A route's effective policy. Its store settings equal the plugin's (an override cannot
    /// change them), so it opens the same store, already created at configure time.
    pub fn for_route(&self, config: Config) -> Shared {
        let store_open = (self.policy.idempotency.as_ref()).is_some_and(|i| i.store.is_some());
        let store = (store_open && config.idempotency.enabled).then(|| {
            let limits = idempotency::store_limits(&config.idempotency);
            Box::new(ShardedStore::new(HostKv, limits)) as Box<dyn IdempotencyStore>
        });
        Shared {
            policy: Policy::with_store(config, store),
            metrics: self.metrics.clone(),
            remote: self.remote.clone(),
        }
    }
}

/// A callout the root context sent, by token.
enum RootCall {
    Grant(LeaseKind),
    Settle(SettleOp),
}

/// One accepted configuration: the plugin's policy, the plugin JSON that route overrides merge
/// onto, and the overrides resolved so far on this worker.
pub struct Plugin {
    pub base: Rc<Shared>,
    pub json: serde_json::Value,
    pub routes: RefCell<RouteOverrides>,
}

#[derive(Default)]
pub struct Root {
    metrics: Option<Metrics>,
    plugin: Option<Rc<Plugin>>,
    /// Callouts out, by token (a handful: a linear list).
    calls: Vec<(u32, RootCall)>,
}

impl Root {
    /// The etcd store's upkeep on every tick: leases due, and the settlements streams handed
    /// over (sent from here so that they outlive their streams), retried until they land or
    /// their claim's in-flight lease would have run out.
    fn tend(&mut self, remote: &Remote) {
        let now = now_ms();
        self.grant_due(remote, now);
        let queued: Vec<SettleOp> = remote.settles.borrow_mut().drain(..).collect();
        for op in queued {
            self.settle(remote, op, now);
        }
    }

    /// Sends the lease grants that are due; reports a cluster Envoy keeps refusing.
    fn grant_due(&mut self, remote: &Remote, now: u64) {
        let grants = remote.leases.borrow_mut().due(now);
        for (kind, request) in grants {
            match remote.send(&request) {
                Ok(token) => {
                    self.calls.push((token, RootCall::Grant(kind)));
                    remote.cluster_usable();
                }
                Err(e) => {
                    remote.leases.borrow_mut().on_grant_failed(kind);
                    if e == HostError::BAD_ARGUMENT {
                        remote.cluster_refused(now);
                    }
                }
            }
        }
    }

    fn settle(&mut self, remote: &Remote, mut op: SettleOp, now: u64) {
        if now >= op.give_up_at_ms {
            self.settled(Ok(Finish::Lost));
            return;
        }
        let lease = remote
            .leases
            .borrow()
            .lease_for(LeaseKind::Retention, now)
            .map(str::to_string);
        match op.request(lease.as_deref()) {
            Ok(request) => self.send_settle(remote, op, &request),
            // No retention lease yet: its grant is due; wait for it.
            Err(_) => remote.hand_over(op),
        }
    }

    fn send_settle(&mut self, remote: &Remote, op: SettleOp, request: &Request) {
        match remote.send(request) {
            Ok(token) => {
                self.calls.push((token, RootCall::Settle(op)));
            }
            Err(_) => remote.hand_over(op),
        }
    }

    fn settled(&self, result: Result<Finish, StoreError>) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let result = result.map(|value| Report {
            value,
            reclaimed: Default::default(),
            cas_conflicts: 0,
        });
        for (counter, n) in settled_counters(&result) {
            metrics.add(counter, i64::from(n));
        }
        if let Ok(Report {
            value: Finish::Lost,
            ..
        }) = result
        {
            log::info!(
                "resetguard: idempotency: a claimed key could not be settled in etcd before its \
                 in-flight lease ran out; it frees after lock_timeout_ms"
            );
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let (Some(call), Some(remote)) = (
            self.calls
                .iter()
                .position(|(t, _)| *t == token_id)
                .map(|at| self.calls.swap_remove(at).1),
            self.plugin.as_ref().and_then(|p| p.base.remote.clone()),
        ) else {
            return;
        };
        remote.answered(token_id);
        let (status, body) = host::http_call_response(body_size);
        let now = now_ms();
        match call {
            RootCall::Grant(kind) => remote.on_granted(kind, status, &body, now),
            RootCall::Settle(mut op) => {
                let (outcome, progress) = op.on_answer(status, &body);
                remote.count(outcome);
                match progress {
                    Progress::Send(request) => self.send_settle(&remote, op, &request),
                    Progress::Done(Ok(finish)) => self.settled(Ok(finish)),
                    Progress::Done(Err(SettleWait::Lease)) => {
                        if let Some(lease) = &op.lease {
                            remote.lease_gone(lease);
                        }
                        remote.hand_over(op);
                    }
                    Progress::Done(Err(SettleWait::Later)) => remote.hand_over(op),
                }
            }
        }
    }

    fn on_done(&mut self) -> bool {
        // The VM stops: nothing counted may be lost.
        if let Some(metrics) = &self.metrics {
            metrics.flush();
        }
        true
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        logger::install();
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        logger::refresh();
        // The tick flushes the counters and follows runtime log-level changes (Envoy's admin
        // `/logging`) without a per-request host call. Without ticks the level read here stays
        // and every count goes to the host at once.
        let ticking = host::set_tick_period_ms(FLUSH_PERIOD_MS).is_ok();
        let metrics = &self
            .metrics
            .get_or_insert_with(|| {
                let (metrics, refused) = Metrics::define(ticking);
                if refused > 0 {
                    log::info!(
                        "resetguard: the host refused {refused} metric definitions; counting is off"
                    );
                }
                metrics
            })
            .clone();
        let raw = match host::buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(raw) => raw.unwrap_or_default(),
            Err(e) => {
                log::error!("resetguard: cannot read the plugin configuration: host answered {e}");
                rejected(metrics);
                return false;
            }
        };
        let parsed = config::parse_json(&raw)
            .and_then(|json| Config::parse_value(&json).map(|config| (json, config)));
        let (json, config) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                // One line naming the field: Envoy refuses to start (or keeps the old config).
                log::error!("resetguard: {e}");
                rejected(metrics);
                return false;
            }
        };
        for warning in config.warnings() {
            log::warn!("resetguard: {warning}");
        }
        log::info!(
            "resetguard: configured: max_retries={} on={:?} idempotent_methods={:?}",
            config.retry.max_retries,
            config.retry.on_names(),
            config.retry.idempotent_methods,
        );
        let idem = &config.idempotency;
        let remote = (idem.enabled && idem.store.backend == Backend::Etcd).then(|| {
            let ttl_ms = idem.ttl_seconds.saturating_mul(1000);
            Rc::new(Remote::new(
                idem.store.clone(),
                idem.lock_timeout_ms,
                ttl_ms,
                metrics.clone(),
            ))
        });
        // The local store: the only one, or the fallback of `on_unavailable: local`.
        let local =
            idem.enabled && (remote.is_none() || idem.store.on_unavailable == OnUnavailable::Local);
        let store = if local {
            match open_store(idem) {
                Ok(store) => store,
                Err(e) => {
                    log::error!("resetguard: {e}");
                    rejected(metrics);
                    return false;
                }
            }
        } else {
            None
        };
        if let Some(remote) = &remote {
            // The tick also sends the settlements of finished streams: more often.
            let _ = host::set_tick_period_ms(remote_store::TICK_MS);
            // The first leases. A cluster Envoy cannot use yet (health-checked, still warming, or
            // a config check without a running proxy) refuses a callout just like an unknown one:
            // grants are asked again on every tick, and a cluster still refused after a while is
            // reported (`resetguard validate` checks the name against the bootstrap's clusters).
            self.grant_due(remote, now_ms());
            log::info!(
                "resetguard: idempotency store: etcd through cluster {} (prefix {}, timeout \
                 {}ms, on_unavailable={:?})",
                remote.config.cluster,
                remote.config.prefix,
                remote.config.timeout_ms,
                remote.config.on_unavailable,
            );
        }
        let base = Rc::new(Shared {
            policy: Policy::with_store(config, store),
            metrics: metrics.clone(),
            remote,
        });
        self.plugin = Some(Rc::new(Plugin {
            base,
            json,
            routes: RefCell::default(),
        }));
        true
    }

    fn on_tick(&mut self) {
        logger::refresh();
        if let Some(remote) = self.plugin.as_ref().and_then(|p| p.base.remote.clone()) {
            self.tend(&remote);
        }
        if let Some(metrics) = &self.metrics {
            metrics.flush();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK would panic. Without a configuration the stream passes through.
        Some(Box::new(HttpFilter::new(self.plugin.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Opens the shared store (creating its seed and shards before any traffic) and logs one line
/// describing the idempotency setup: `None` when the host has no shared data (keys are then only
/// checked). Fails only when `require_store` is set and there is no store.
fn open_store(config: &IdempotencyConfig) -> Result<Option<Box<dyn IdempotencyStore>>, String> {
    let store = ShardedStore::new(HostKv, idempotency::store_limits(config));
    let mut seed = [0u8; SEED_LEN];
    let opened = getrandom::fill(&mut seed)
        .map_err(|e| format!("no random source ({e})"))
        .and_then(|()| {
            store
                .init(seed)
                .map_err(|e| format!("shared data unavailable ({e:?})"))
        });
    let summary = format!(
        "mode={:?} methods={:?} path_prefixes={:?} header={} scope_headers={:?} \
         retry_keyed_requests={}",
        config.mode,
        config.required_methods,
        config.path_prefixes,
        config.header,
        config.scope_headers,
        config.retry_keyed_requests,
    );
    match opened {
        Ok(_) => {
            log::info!(
                "resetguard: idempotency on: {summary} store=shared data ({} shards x {} \
                 entries, ttl={}s, lock_timeout={}ms, max_request_body={}B, \
                 max_response_body={}B, when_full={:?})",
                config.shards,
                config.entries_per_shard(),
                config.ttl_seconds,
                config.lock_timeout_ms,
                config.max_request_body_bytes,
                config.max_response_body_bytes,
                config.when_full,
            );
            Ok(Some(Box::new(store)))
        }
        Err(why) if config.require_store => Err(format!(
            "invalid plugin configuration at `idempotency.require_store`: dedupe needs a store, \
             and this host has none: {why}"
        )),
        Err(why) => {
            log::info!(
                "resetguard: idempotency on: {summary} store=unavailable: {why}; keys are \
                 checked (400) but requests are not deduped or replayed (no 409/422)"
            );
            Ok(None)
        }
    }
}

/// Counts a refused configuration and hands it to the host at once: the VM may not live on.
fn rejected(metrics: &Metrics) {
    metrics.inc(Counter::ConfigRejected);
    metrics.flush();
}

fn now_ms() -> u64 {
    host::now_nanos().map_or(0, |ns| ns / 1_000_000)
}
