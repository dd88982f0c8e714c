//! The root context: validates the plugin configuration and hands it to every HTTP stream.

use crate::host::{self, BufferType};
use crate::host_kv::HostKv;
use crate::http::HttpFilter;
use crate::logger;
use crate::metrics::{Counter, Metrics, FLUSH_PERIOD_MS};
use crate::route_policy::RouteOverrides;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use resetguard_core::config::{self, Config, IdempotencyConfig};
use resetguard_core::decision::Policy;
use resetguard_core::idempotency;
use resetguard_core::idempotency::store::{IdempotencyStore, ShardedStore, SEED_LEN};
use std::cell::RefCell;
use std::rc::Rc;

/// Everything a stream needs: the plugin's policy, or a route's effective policy.
pub struct Shared {
    pub policy: Policy,
    pub metrics: Metrics,
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
        }
    }
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
}

impl Context for Root {
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
        let metrics = self.metrics.get_or_insert_with(|| {
            let (metrics, refused) = Metrics::define(ticking);
            if refused > 0 {
                log::info!(
                    "resetguard: the host refused {refused} metric definitions; counting is off"
                );
            }
            metrics
        });
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
        let store = if config.idempotency.enabled {
            match open_store(&config.idempotency) {
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
        let base = Rc::new(Shared {
            policy: Policy::with_store(config, store),
            metrics: metrics.clone(),
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
