//! The root context: validates the plugin configuration and hands it to every HTTP stream.

use crate::config::Config;
use crate::host::{self, BufferType};
use crate::http::HttpFilter;
use crate::logger;
use crate::metrics::{Counter, Metrics};
use crate::retry_policy::RetryPolicy;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;

/// Everything a stream needs, built once per accepted configuration.
pub struct Shared {
    pub config: Config,
    pub retry: RetryPolicy,
    pub metrics: Metrics,
}

#[derive(Default)]
pub struct Root {
    metrics: Option<Metrics>,
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        logger::install();
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        logger::refresh();
        let metrics = self.metrics.get_or_insert_with(|| {
            let (metrics, refused) = Metrics::define();
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
                metrics.inc(Counter::ConfigRejected);
                return false;
            }
        };
        let config = match Config::parse(&raw) {
            Ok(config) => config,
            Err(e) => {
                // One line naming the field: Envoy refuses to start (or keeps the old config).
                log::error!("resetguard: {e}");
                metrics.inc(Counter::ConfigRejected);
                return false;
            }
        };
        for warning in config.warnings() {
            log::warn!("resetguard: {warning}");
        }
        log::info!(
            "resetguard: configured: max_retries={} on={:?} idempotent_methods={:?}",
            config.retry.max_retries,
            config
                .retry
                .on
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>(),
            config.retry.idempotent_methods,
        );
        let retry = RetryPolicy::new(&config.retry);
        self.shared = Some(Rc::new(Shared {
            config,
            retry,
            metrics: metrics.clone(),
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK would panic. Without a configuration the stream passes through.
        Some(Box::new(HttpFilter::new(self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
