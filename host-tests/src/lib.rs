//! A mock proxy-wasm host on wasmtime that loads the built resetguard `.wasm` and drives it the
//! way Envoy 1.40 does (each modelled behaviour is pinned by a test in
//! `tests/suite/host_envoy.rs` and checked against the real Envoy by `envoy/tests`), with Kong- and APISIX-like profiles.
//!
//! `Host` holds the process (workers, shared data, metrics, clock, log); `Vm` one worker's
//! instance; `exchange` plays a stream (`request_side`, the `router` model, `response_side`); `scenario`
//! runs the JSON corpus in `scenarios/`; `etcd` is an etcd v3 JSON gateway behind `proxy_http_call`.

pub mod abi;
pub mod callout;
pub mod etcd;
pub mod events;
pub mod exchange;
pub mod faults;
pub mod fuel;
pub mod host;
pub mod imports;
pub mod memory;
pub mod profiles;
pub mod properties;
pub mod request;
pub mod request_side;
pub mod response_side;
pub mod router;
pub mod scenario;
pub mod shared_data;
pub mod state;
pub mod vm;
pub mod wasm;

pub use abi::LogLevel;
pub use callout::ClusterBehaviour;
pub use etcd::Etcd;
pub use host::Host;
pub use profiles::Profile;
pub use request::{Callback, Exchange, Request};
pub use request_side::InFlight;
pub use router::UpstreamAction;
pub use vm::{Vm, VmError};
