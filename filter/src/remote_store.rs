//! The fleet-wide store on etcd, as this worker's contexts use it: callouts to the configured
//! Envoy cluster carrying `resetguard_core::etcd` requests, the leases the root context grants,
//! and the settlements streams hand to the root context (a stream's own callouts are cancelled
//! when it ends, so what must outlive it is sent by the root).

use crate::host;
use crate::metrics::{Counter, Metrics};
use resetguard_core::config::StoreConfig;
use resetguard_core::etcd::gateway::{self, Failure, Request};
use resetguard_core::etcd::leases::{LeaseKind, Leases};
use resetguard_core::etcd::ops::{Call, SettleOp};
use std::cell::RefCell;
use std::collections::VecDeque;

/// The root context ticks this often with the etcd store: how long a finished stream's
/// settlement may wait in the queue, and how often grants and retries are looked at.
pub const TICK_MS: u32 = 50;

pub struct Remote {
    pub config: StoreConfig,
    pub leases: RefCell<Leases>,
    /// Settlements the streams handed over, sent (and retried) by the root context.
    pub settles: RefCell<VecDeque<SettleOp>>,
    pub lock_timeout_ms: u64,
    metrics: Metrics,
}

impl Remote {
    pub fn new(config: StoreConfig, lock_timeout_ms: u64, ttl_ms: u64, metrics: Metrics) -> Remote {
        Remote {
            config,
            leases: RefCell::new(Leases::new(lock_timeout_ms, ttl_ms)),
            settles: RefCell::default(),
            lock_timeout_ms,
            metrics,
        }
    }

    /// Sends a gateway request from the current context (its answer comes back to it).
    pub fn send(&self, request: &Request) -> host::HostResult<u32> {
        let headers = [
            (":method", "POST"),
            (":path", request.path),
            (":authority", self.config.authority.as_str()),
            ("content-type", "application/json"),
        ];
        let sent = host::http_call(
            &self.config.cluster,
            &headers,
            request.body.as_bytes(),
            self.config.timeout_ms,
        );
        if sent.is_err() {
            // Not even sent: as if etcd were unreachable.
            self.count(Call::Failed(Failure::Unavailable));
        }
        sent
    }

    pub fn count(&self, call: Call) {
        self.metrics.inc(match call {
            Call::Ok => Counter::StoreCallOk,
            Call::Conflict => Counter::StoreCallConflict,
            Call::Failed(Failure::Timeout) => Counter::StoreCallTimeout,
            Call::Failed(Failure::Unavailable) => Counter::StoreCallUnavailable,
            Call::Failed(Failure::BadAnswer) => Counter::StoreCallBadAnswer,
            Call::Failed(Failure::LeaseGone) => Counter::StoreCallLeaseGone,
            Call::Failed(Failure::TooLarge) => Counter::StoreCallTooLarge,
        });
    }

    /// The in-flight lease a claim sent now attaches to.
    pub fn claim_lease(&self, now_ms: u64) -> Option<String> {
        let leases = self.leases.try_borrow().ok()?;
        leases
            .lease_for(LeaseKind::InFlight, now_ms)
            .map(str::to_string)
    }

    pub fn lease_gone(&self, id: &str) {
        if let Ok(mut leases) = self.leases.try_borrow_mut() {
            leases.on_gone(id);
        }
    }

    /// `on_unavailable: local` took a claim etcd could not.
    pub fn fell_back_locally(&self) {
        self.metrics.inc(Counter::StoreFallbackLocal);
    }

    pub fn hand_over(&self, op: SettleOp) {
        if let Ok(mut settles) = self.settles.try_borrow_mut() {
            settles.push_back(op);
        }
    }

    /// A grant's answer.
    pub fn on_granted(&self, kind: LeaseKind, status: u16, body: &[u8], now_ms: u64) {
        let granted = gateway::parse_grant(status, body);
        self.count(match &granted {
            Ok(_) => Call::Ok,
            Err(f) => Call::Failed(*f),
        });
        let Ok(mut leases) = self.leases.try_borrow_mut() else {
            return;
        };
        match granted {
            Ok((id, _)) => {
                self.metrics.inc(Counter::StoreLeasesGranted);
                leases.on_granted(kind, id, now_ms);
            }
            Err(f) => {
                log::debug!("resetguard: etcd lease grant failed ({})", f.as_str());
                leases.on_grant_failed(kind);
            }
        }
    }
}
