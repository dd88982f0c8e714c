//! resetguard's decision logic, without the proxy: everything here is plain Rust over values the
//! glue hands in (header pairs, body bytes, the clock, what the host reported at stream end), so
//! it builds natively and for `wasm32-unknown-unknown`, and is unit tested natively.
//!
//! * [`config`]: the plugin JSON contract (strict reader, field paths, defaults, route overrides).
//! * [`decision`]: what the filter does with a request head (router headers, stripped client
//!   headers, the key verdict), for the filter and for tools alike.
//! * [`retry_policy`], [`outcome`]: retry plans per method class; how a stream ended.
//! * [`idempotency`]: keys, scopes, problems, the stored-response and shard-index codecs, the
//!   sharded store over any key-value space with Envoy's shared-data semantics.
//! * [`keyed`]: the keyed stream as a state machine: events in, the stream action and commands
//!   out; and the decision at stream end whether a keyed request may run again.
//! * [`etcd`]: the fleet-wide store on etcd's JSON gateway: records, requests and answers,
//!   leases, the claim and settle operations.
//! * [`counter`]: the names of everything the filter counts.

pub mod config;
pub mod counter;
pub mod decision;
pub mod etcd;
pub mod idempotency;
pub mod keyed;
pub mod outcome;
pub mod retry_policy;
