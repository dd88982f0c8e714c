//! The fleet-wide store on etcd, as this worker's contexts use it: callouts to the configured
//! Envoy cluster carrying `resetguard_core::etcd` requests, the leases the root context grants,
//! and the settlements streams hand to the root context (a stream's own callouts are cancelled
//! when it ends, so what must outlive it is sent by the root).

use crate::host;
use crate::metrics::{Counter, Metrics};
use resetguard_core::config::StoreConfig;
use resetguard_core::counter::STORE_ROUND_TRIP_MS;
use resetguard_core::etcd::gateway::{self, Failure, Request};
use resetguard_core::etcd::leases::{LeaseKind, Leases};
use resetguard_core::etcd::ops::{Call, SettleOp};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

/// The root context ticks this often with the etcd store: how long a finished stream's
/// settlement may wait in the queue, and how often grants and retries are looked at.
pub const TICK_MS: u32 = 50;

/// A call not answered this long after its timeout never will be (its stream ended, and Envoy
/// cancelled it): its send time is forgotten.
const FORGET_AFTER_MS: u64 = 5_000;

/// How long after the first refusal a cluster Envoy keeps refusing callouts to is reported (a
/// health-checked cluster becomes usable after its first check round), and how often after that.
const CLUSTER_REPORT_MS: u64 = 10_000;

pub struct Remote {
    pub config: StoreConfig,
    /// When Envoy first refused a callout to the cluster, and when that was last reported.
    refused_since: Cell<Option<(u64, u64)>>,
    pub leases: RefCell<Leases>,
    /// Settlements the streams handed over, sent (and retried) by the root context.
    pub settles: RefCell<VecDeque<SettleOp>>,
    pub lock_timeout_ms: u64,
    metrics: Metrics,
    /// The round-trip histogram (`None` on a host without histograms).
    round_trip: Option<u32>,
    /// Calls waiting for their answer: token and send time (ns).
    sent_at: RefCell<Vec<(u32, u64)>>,
}

impl Remote {
    pub fn new(config: StoreConfig, lock_timeout_ms: u64, ttl_ms: u64, metrics: Metrics) -> Remote {
        Remote {
            config,
            leases: RefCell::new(Leases::new(lock_timeout_ms, ttl_ms)),
            settles: RefCell::default(),
            refused_since: Cell::new(None),
            lock_timeout_ms,
            metrics,
            round_trip: host::define_histogram(STORE_ROUND_TRIP_MS).ok(),
            sent_at: RefCell::default(),
        }
    }

    /// Sends a gateway request from the current context (its answer comes back to it).
    pub fn send(&self, request: &Request) -> host::HostResult<u32> {
        // A member that refuses the connection (or the stream) never got the request: Envoy's
        // client tries another at once, as the router does for a proxied request.
        let headers = [
            (":method", "POST"),
            (":path", request.path),
            (":authority", self.config.authority.as_str()),
            ("content-type", "application/json"),
            ("x-envoy-retry-on", "connect-failure,refused-stream"),
            ("x-envoy-max-retries", "2"),
        ];
        let sent = host::http_call(
            &self.config.cluster,
            &headers,
            request.body.as_bytes(),
            self.config.timeout_ms,
        );
        match sent {
            Ok(token) => self.note_sent(token),
            // Not even sent: as if etcd were unreachable.
            Err(_) => self.count(Call::Failed(Failure::Unavailable)),
        }
        sent
    }

    fn note_sent(&self, token: u32) {
        let (Some(_), Ok(now), Ok(mut sent_at)) = (
            self.round_trip,
            host::now_nanos(),
            self.sent_at.try_borrow_mut(),
        ) else {
            return;
        };
        let forget_ns = (self.config.timeout_ms + FORGET_AFTER_MS) * 1_000_000;
        sent_at.retain(|&(_, at)| now.saturating_sub(at) < forget_ns);
        sent_at.push((token, now));
    }

    /// A call's answer came back: its round trip goes to the histogram.
    pub fn answered(&self, token: u32) {
        let (Some(id), Ok(mut sent_at)) = (self.round_trip, self.sent_at.try_borrow_mut()) else {
            return;
        };
        let Some(at) = sent_at.iter().position(|&(t, _)| t == token) else {
            return;
        };
        let (_, sent_ns) = sent_at.swap_remove(at);
        if let Ok(now) = host::now_nanos() {
            // Whole milliseconds, as Envoy's own request-time histograms.
            let _ = host::record_metric(id, now.saturating_sub(sent_ns) / 1_000_000);
        }
    }

    pub fn cluster_usable(&self) {
        if self.refused_since.take().is_some() {
            log::info!(
                "resetguard: the etcd cluster {} takes callouts now",
                self.config.cluster
            );
        }
    }

    /// Envoy refused a callout to the cluster (BAD_ARGUMENT: unknown, or not usable yet).
    pub fn cluster_refused(&self, now_ms: u64) {
        let (since, reported) = self.refused_since.get().unwrap_or((now_ms, now_ms));
        if now_ms.saturating_sub(since) >= CLUSTER_REPORT_MS
            && now_ms.saturating_sub(reported) >= CLUSTER_REPORT_MS
        {
            log::error!(
                "resetguard: `idempotency.store.cluster`: Envoy has refused every callout to \
                 cluster {:?} for {} s (no such cluster, or none of its hosts usable); keyed \
                 requests get on_unavailable={:?}",
                self.config.cluster,
                now_ms.saturating_sub(since) / 1000,
                self.config.on_unavailable,
            );
            self.refused_since.set(Some((since, now_ms)));
        } else {
            self.refused_since.set(Some((since, reported)));
        }
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
