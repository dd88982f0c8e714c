//! A mock proxy-wasm host on wasmtime that loads the built resetguard `.wasm` and drives it the
//! way Envoy 1.40 does (see shared/envoy-facts.md), with Kong- and APISIX-like profiles.
//!
//! `Host` holds the process (workers, shared data, metrics, clock, log); `Vm` one worker's
//! instance; `exchange` plays a stream through the filter and the `router` model; `scenario`
//! runs the JSON corpus in `scenarios/`.

pub mod abi;
pub mod callout;
pub mod events;
pub mod exchange;
pub mod faults;
pub mod host;
pub mod imports;
pub mod memory;
pub mod profiles;
pub mod properties;
pub mod request;
pub mod router;
pub mod scenario;
pub mod shared_data;
pub mod state;
pub mod vm;
pub mod wasm;

pub use abi::LogLevel;
pub use callout::ClusterBehaviour;
pub use host::Host;
pub use profiles::Profile;
pub use request::{Exchange, Request};
pub use router::UpstreamAction;
pub use vm::{Vm, VmError};
