//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header) at the edge: enforce them, dedupe
//! and replay keyed requests, and let keyed requests be retried. Everything here is ABI-free; the
//! glue in `http.rs` feeds it header pairs, bodies and the clock.
//!
//! # The store
//!
//! Envoy's shared data is a process-wide map per `vm_id` with a CAS token per key, but a write to
//! an absent key always succeeds (so an absent key cannot be claimed atomically), and there is no
//! delete and no listing. The store therefore never creates keys while serving traffic:
//!
//! * **Keys.** `resetguard/v1/seed` (16 random bytes), and per shard `resetguard/v1/<S>/shard/<i>`
//!   (an index) and `resetguard/v1/<S>/shard/<i>/slot/<j>` (one stored response), `S` = `shards`.
//!   The seed and the indexes are created at `on_configure`, before traffic, if absent. After that
//!   an index is only ever written by read-modify-CAS, so every claim is atomic across workers.
//! * **Identity and shard.** identity = SipHash-2-4-128 (`keyed_hash`) keyed by the seed over (scope header
//!   values, `:authority`, method, `:path`, key), each length-prefixed; shard = identity mod `S`.
//!   Clients cannot aim keys at one shard or collide with another client's identity without the
//!   seed. The fingerprint is the same keyed hash over the request body.
//! * **Index.** Up to `C = ceil(max_entries / shards)` fixed 53-byte entries: identity,
//!   fingerprint, owner token (64 random bits per claim), slot, status, and InFlight{lock deadline}
//!   or Completed{expiry, replayable}. Every write first drops entries past their TTL (`expired`)
//!   or lock deadline (`lock_expired`: the worker vanished), so expired entries are reclaimed on
//!   every shard write without any sweeper.
//! * **Claim.** Read index + CAS token; reclaim; if the identity is present answer 422 (other
//!   fingerprint), 409 (in flight), or replay (completed); else if the shard has `C` entries answer
//!   full; else append InFlight with the lowest free slot and CAS-write. On CAS mismatch re-read and
//!   retry, at most 16 times, then answer busy (`store_contention`). Answers that need no write are
//!   read off one consistent snapshot.
//! * **Complete.** (on_log, response `via_upstream` and complete.) Check the claim is still held —
//!   renewing its lock by CAS if less than half the lock timeout is left; a claim whose deadline
//!   (kept in its ticket) is further away needs no read — then write the response
//!   into the claim's slot (unconditionally: a slot belongs to exactly one entry while it is
//!   referenced), then CAS the entry to Completed{now + ttl}. A response too large to keep
//!   completes the key without a slot (`not_replayable` answers later: never executed twice).
//!   Proxy-generated answers, resets and client aborts **release** the entry instead (CAS remove).
//! * **Replay.** The slot value carries the identity and owner token that wrote it; a replay
//!   serves it only if both match the index entry, so a reused or clobbered slot can never serve
//!   another client's response (it degrades to `not_replayable`).
//! * **Memory bound.** The number of keys is fixed: `1 + S + S·C`. Bytes ≤
//!   `S·(6 + 53·C) + S·C·(38 + 16 KiB headers + max_response_body_bytes)` plus Envoy's per-key
//!   overhead. Defaults (S=64, C=157): indexes 0.53 MB; slots hold at most 10,048 responses, i.e.
//!   ≤ 10,048 × (response size + 38 B): about 13 MB for 1 KiB bodies with 200 B of headers,
//!   0.82 GB in the worst case where every response has 16 KiB of headers and a 64 KiB body.
//!   Size `max_entries × max_response_body_bytes` to the memory you can give the proxy. (Measured
//!   in Envoy 1.40: 100,000 distinct keys against `max_entries` 20,000 grew RSS by 10 MiB.)
//! * **Full.** When the shard of a new key holds `C` live entries: `when_full: "reject"` answers
//!   503 problem+json `…-store-full` with `Retry-After` (seconds until the shard's next entry
//!   frees, 1..60); `"pass_through"` sends the request upstream unprotected. Both count
//!   `store_full`. Busy shards and store errors follow the same policy.
//! * **Seed.** Created at configure if absent, and read back per keyed request (16 bytes, one
//!   host call) rather than cached: if two VMs ever create it concurrently, the last write wins
//!   and every worker converges on it at once instead of keeping a private seed.
//!
//! # At the edge
//!
//! * A keyed request without a body is decided at its headers. With a body, the headers go on
//!   (proxy-wasm hosts turn a headers pause into stop-all, which would withhold the body from the
//!   filter too) and the body is buffered until its end, then decided: the router may already have
//!   opened the upstream request, but an answer given here resets it before the body is sent.
//! * Beyond `max_request_body_bytes`: 413 problem+json `…-body-too-large` (report mode: passes,
//!   not deduped). Beyond `max_response_body_bytes` (or 16 KiB of response headers): the key
//!   completes without a stored response; a retry gets 409 `…-response-not-replayable` and is
//!   never executed again within the TTL. Response trailers are not replayed.
//!
//! Residual races (documented, not silent): two VMs configuring concurrently on a fresh process
//! both see a shard absent and write it blind — harmless before traffic (Envoy configures the main
//! thread's VM before workers start); and a claim holder stalled past its lock deadline between its
//! ownership check and its slot write could overwrite a slot just reassigned — the slot's identity
//! check turns that into `not_replayable`, never into a cross-client replay. If a completion
//! loses 16 CAS rounds in a row (`store_contention`), its claim stays in flight and frees after
//! `lock_timeout_ms`, after which the key could run again. A configuration update that changes
//! `shards` starts a new key layout (`resetguard/v1/<S>`): claims and stored responses of the old
//! layout are not seen by the new one (and its keys stay allocated, there is no delete); changing
//! other settings keeps the layout and its entries.

pub mod index;
pub mod key;
pub mod keyed_hash;
pub mod problem;
pub mod recorded;
pub mod scope;
pub mod shared_kv;
pub mod store;
pub mod verdict;

#[cfg(test)]
mod store_tests;

use crate::config::{Backend, IdempotencyConfig};
use scope::KeyScope;
use store::{IdempotencyStore, StoreLimits};
use verdict::Rules;

/// The idempotency layer of one accepted configuration.
pub struct Idempotency {
    pub config: IdempotencyConfig,
    pub scope: KeyScope,
    pub rules: Rules,
    /// `None` on hosts without shared data: keys are still checked (400s), nothing is deduped.
    pub store: Option<Box<dyn IdempotencyStore>>,
}

impl Idempotency {
    pub fn new(config: IdempotencyConfig, store: Option<Box<dyn IdempotencyStore>>) -> Self {
        Idempotency {
            scope: KeyScope::new(&config),
            rules: Rules {
                mode: config.mode,
                when_full: config.when_full,
                on_unavailable: (config.store.backend == Backend::Etcd)
                    .then_some(config.store.on_unavailable),
            },
            store,
            config,
        }
    }
}

pub fn store_limits(config: &IdempotencyConfig) -> StoreLimits {
    StoreLimits {
        shards: config.shards,
        entries_per_shard: usize::try_from(config.entries_per_shard()).unwrap_or(usize::MAX),
        lock_timeout_ms: config.lock_timeout_ms,
        ttl_ms: config.ttl_seconds.saturating_mul(1000),
    }
}
