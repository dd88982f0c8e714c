//! The emulator's state: what every VM of one host shares (`HostShared`), and what one VM's
//! wasmtime store holds (`VmState`). Tests drive and inspect both; nothing is global.

use crate::abi::{LogLevel, Pairs};
use crate::callout::{Callout, ClusterBehaviour};
use crate::faults::Faults;
use crate::profiles::Profile;
use crate::shared_data::SharedData;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// 2023-11-14T22:13:20Z: a plausible wall clock that never moves unless a test advances it.
pub const EPOCH_NS: u64 = 1_700_000_000_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub vm: u32,
    pub level: LogLevel,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    pub kind: i32,
    pub value: i64,
    /// A histogram's recorded values, in order.
    pub samples: Vec<i64>,
}

/// State shared by every VM (worker) of one host, like Envoy's process-wide stores.
pub struct HostShared {
    pub profile: Profile,
    pub now_ns: u64,
    pub log_level: LogLevel,
    pub logs: Vec<LogLine>,
    /// Everything the modules wrote to stdout/stderr through WASI.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub shared: SharedData,
    /// By name: Envoy merges same-named metrics of all workers.
    pub metrics: BTreeMap<String, Metric>,
    pub faults: Faults,
    pub clusters: HashMap<String, ClusterBehaviour>,
    pub rng: rand::rngs::StdRng,
    pub next_vm: u32,
}

impl HostShared {
    pub fn new(profile: Profile, seed: u64) -> HostShared {
        HostShared {
            profile,
            now_ns: EPOCH_NS,
            log_level: LogLevel::Info,
            logs: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            shared: SharedData::default(),
            metrics: BTreeMap::new(),
            faults: Faults::default(),
            clusters: HashMap::new(),
            rng: rand::SeedableRng::seed_from_u64(seed),
            next_vm: 0,
        }
    }

    /// Seeded, so `random_get` is reproducible per test.
    pub fn next_random(&mut self) -> u64 {
        rand::RngExt::random(&mut self.rng)
    }
}

pub type SharedHandle = Arc<Mutex<HostShared>>;

/// Locks the shared state; a test that panicked while holding it must not hide other failures.
pub fn lock(handle: &SharedHandle) -> MutexGuard<'_, HostShared> {
    handle.lock().unwrap_or_else(|e| e.into_inner())
}

/// The phase a stream is in, which decides which maps and buffers exist (as in Envoy).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    Log,
}

/// One HTTP stream as the host holds it.
#[derive(Clone, Debug)]
pub struct StreamData {
    pub phase: Phase,
    pub request_headers: Pairs,
    pub request_trailers: Option<Pairs>,
    pub response_headers: Option<Pairs>,
    pub response_trailers: Option<Pairs>,
    /// The body data currently visible to the filter (the current chunk, or all buffered).
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    /// Stream-info properties the host fills in as the stream progresses, by dotted path.
    pub info: HashMap<String, Vec<u8>>,
    /// `proxy_set_property` results: Envoy's filter state `wasm.NAME`.
    pub filter_state: BTreeMap<String, Vec<u8>>,
    /// Every `proxy_get_property` on this stream: the phase it ran in and the dotted path.
    pub property_reads: Vec<(Phase, String)>,
    /// The route this request matched, when the test names one (else the host's default route).
    pub route: Option<Route>,
}

impl StreamData {
    pub fn new(request_headers: Pairs) -> StreamData {
        StreamData {
            phase: Phase::RequestHeaders,
            request_headers,
            request_trailers: None,
            response_headers: None,
            response_trailers: None,
            request_body: Vec::new(),
            response_body: Vec::new(),
            info: HashMap::new(),
            filter_state: BTreeMap::new(),
            property_reads: Vec::new(),
            route: None,
        }
    }
}

/// Something a host call asked for that takes effect after the current callback returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Continue {
        context: u32,
        stream: i32,
    },
    LocalResponse {
        context: u32,
        status: u32,
        details: String,
        body: Vec<u8>,
        headers: Pairs,
    },
    Close {
        context: u32,
        stream: i32,
    },
}

/// The route a request matched: its name and `xds.route_metadata.filter_metadata` (filter name
/// → JSON struct), served per request.
#[derive(Clone, Debug, Default)]
pub struct Route {
    pub name: String,
    pub filter_metadata: serde_json::Map<String, serde_json::Value>,
}

/// Per-VM configuration handed over at start-up.
#[derive(Clone, Debug, Default)]
pub struct PluginSetup {
    pub vm_id: String,
    pub plugin_name: String,
    pub root_id: String,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub route_name: Option<String>,
    /// `xds.route_metadata.filter_metadata`: filter name → JSON struct.
    pub route_metadata: serde_json::Map<String, serde_json::Value>,
}

/// What one VM's wasmtime store holds.
pub struct VmState {
    pub host: SharedHandle,
    pub vm: u32,
    pub setup: PluginSetup,
    pub root_context: u32,
    /// The context host calls act on (Envoy's effective context).
    pub current: u32,
    /// Live contexts: id → root id (0 for a root context itself).
    pub contexts: BTreeMap<u32, u32>,
    pub streams: HashMap<u32, StreamData>,
    pub pending: Vec<Pending>,
    pub callouts: Vec<Callout>,
    /// The reply being delivered in `proxy_on_http_call_response`.
    pub callout_reply: Option<crate::callout::CalloutReply>,
    pub next_token: u32,
    /// Root context → (period ms, next due ns).
    pub ticks: BTreeMap<u32, (u64, u64)>,
    pub metric_ids: HashMap<u32, String>,
    pub next_metric: u32,
    /// Contexts that called `proxy_done`.
    pub done: Vec<u32>,
    /// How often the module called each import: lets tests see what was used.
    pub calls: BTreeMap<&'static str, u64>,
}

impl VmState {
    pub fn new(host: SharedHandle, vm: u32, setup: PluginSetup) -> VmState {
        VmState {
            host,
            vm,
            setup,
            root_context: 0,
            current: 0,
            contexts: BTreeMap::new(),
            streams: HashMap::new(),
            pending: Vec::new(),
            callouts: Vec::new(),
            callout_reply: None,
            next_token: 1,
            ticks: BTreeMap::new(),
            metric_ids: HashMap::new(),
            next_metric: 1,
            done: Vec::new(),
            calls: BTreeMap::new(),
        }
    }

    pub fn shared(&self) -> MutexGuard<'_, HostShared> {
        lock(&self.host)
    }

    /// The root context of the effective context (ticks and metrics belong there).
    pub fn root_of_current(&self) -> u32 {
        match self.contexts.get(&self.current) {
            Some(0) | None => self.current,
            Some(root) => *root,
        }
    }

    pub fn stream(&self) -> Option<&StreamData> {
        self.streams.get(&self.current)
    }

    pub fn stream_mut(&mut self) -> Option<&mut StreamData> {
        self.streams.get_mut(&self.current)
    }
}
