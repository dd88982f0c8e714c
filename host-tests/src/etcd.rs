//! A deterministic in-memory etcd v3 behind the mock host's `proxy_http_call`, speaking the JSON
//! gateway the way etcd 3.4.23 does (every shape pinned against a real etcd by
//! `host-tests/etcd/gateway_cases.json`, which `envoy/tests/test_etcd_gateway.py` runs against
//! the installed etcd and `tests/suite/host_etcd.rs` against this model).
//!
//! One [`Etcd`] is one etcd cluster. Register it on any number of hosts (each `Host` is one
//! Envoy process; its worker VMs share the cluster like they share the network), optionally
//! under a client label naming the proxy:
//!
//! ```ignore
//! let etcd = Etcd::new();
//! let mut a = Host::builder().cluster("etcd", etcd.client("proxy-a").behaviour()).start()?;
//! let mut b = Host::builder().cluster("etcd", etcd.client("proxy-b").behaviour()).start()?;
//! let quorum = etcd.fail(Fault::QuorumLost);      // switch a fault on …
//! etcd.heal(quorum);                              // … and off; etcd.hits(quorum) counts it
//! etcd.get(b"key"); etcd.stats(b"key"); etcd.leases(); etcd.requests();
//! ```
//!
//! Semantics: keys and values base64, int64s as JSON strings, a global revision bumped once per
//! write that changed something, per-key create/mod revision and version; `kv/range`, `kv/put`,
//! `kv/deleterange`, `kv/txn` (compares on VERSION/CREATE/MOD/VALUE/LEASE with
//! EQUAL/GREATER/LESS/NOT_EQUAL; a failed compare has no `succeeded` field), `lease/grant`,
//! `revoke`, `keepalive`, `timetolive`; leases expire on the hosts' clock (the model's clock is the
//! latest time any host showed it) and take their keys with them; request limits and the
//! gateway's error shapes. A request's effect happens when it is dispatched; its reply arrives
//! after `latency_ms` (or a fault's delay), or as Envoy's 504 at the call's timeout, while etcd
//! goes on with it.

pub mod wire;

use crate::callout::{CalloutReply, ClusterBehaviour, REFUSED_BODY, RESET_BODY, TIMEOUT_BODY};
use crate::state::EPOCH_NS;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
pub use wire::{b64, unb64};
use wire::{
    bytes_field, int_field, invalid, len_field, oneof_int_field, raft_request_size, Fields,
    WireError, WireResult,
};

/// `--max-request-bytes` default: a write whose raft request is larger answers 400 code 3
/// "etcdserver: request is too large".
pub const MAX_REQUEST_BYTES: usize = 1_572_864;
/// gRPC's receive limit is `--max-request-bytes` + 512 KiB: above it 429 code 8.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// How long etcd waits for a quorum before answering (measured: 7.0 s).
pub const QUORUM_TIMEOUT_MS: u64 = 7_000;
/// etcd 3.4's smallest lease TTL with the default election timeout (measured: TTL 1 → 2).
pub const MIN_LEASE_TTL: i64 = 2;
/// etcd's `MaxLeaseTTL`: above it 400 code 11 "etcdserver: too large lease TTL".
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// etcd's `--max-txn-ops` default.
pub const MAX_TXN_OPS: usize = 128;

pub const TIMED_OUT: &str = "etcdserver: request timed out";
pub const DEADLINE_EXCEEDED: &str = "context deadline exceeded";
pub const NO_LEADER: &str = "etcdserver: no leader";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const TOO_LARGE: &str = "etcdserver: request is too large";

#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub cluster_id: u64,
    /// The answering member; its low 16 bits size the raft request ID (see `wire`).
    pub member_id: u64,
    pub max_request_bytes: usize,
    /// Every reply's delay (loopback etcd answered in 1–7 ms).
    pub latency_ms: u64,
    /// How long a request waits for a lost quorum before its error (measured 7 s).
    pub quorum_timeout_ms: u64,
    pub min_lease_ttl: i64,
    /// The first lease ID granted (IDs are above 2^53, as etcd's are: read them as strings).
    pub first_lease_id: i64,
}

impl Default for EtcdConfig {
    fn default() -> EtcdConfig {
        EtcdConfig {
            cluster_id: 15_805_716_388_011_412_297,
            member_id: 10_401_734_237_712_960_067,
            max_request_bytes: MAX_REQUEST_BYTES,
            latency_ms: 1,
            quorum_timeout_ms: QUORUM_TIMEOUT_MS,
            min_lease_ttl: MIN_LEASE_TTL,
            first_lease_id: 7_587_869_482_934_091_001,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// A live lease as a test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    pub expires_ns: u64,
    pub keys: Vec<Vec<u8>>,
}

/// How often requests named a key (`txns`: transactions that compared or touched it) and how
/// often it was actually written (`writes`: applied puts and deletes, from any request kind,
/// lease expiry and revocation included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyStats {
    pub ranges: u32,
    pub puts: u32,
    pub deletes: u32,
    pub txns: u32,
    pub writes: u32,
}

/// A failure a test switches on (`Etcd::fail`, `inject`) and off (`heal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 2 of 3 members gone, the old leader not yet stepped down (the first ~2 s, measured):
    /// writes and linearizable reads answer 503 code 14 "request timed out" after
    /// `quorum_timeout_ms`; serializable ranges, lease keep-alives and time-to-live answer. The
    /// writes stay in the leader's log and are applied when the fault is healed (measured: a
    /// txn answered 503 was committed once one member returned). Leases do not expire meanwhile
    /// and are renewed to their full TTL on heal (measured: a new leader refreshes them).
    QuorumLost,
    /// 2 of 3 members gone and no leader: writes (put, txn, deleterange, lease grant/revoke)
    /// answer 500 code 2 "context deadline exceeded" after the delay and are never applied;
    /// linearizable reads 503 code 14 "request timed out"; time-to-live 503 code 14 "no
    /// leader"; keep-alive 503 with the streaming error shape; serializable ranges answer.
    NoLeader,
    /// The write is applied, the answer is 503 code 14 "request timed out" after the delay (what
    /// a client sees when the quorum came back just too late). Reads answer normally.
    CommitThenTimeout,
    /// The connection resets before response headers: Envoy's synthetic 503 with the reset body
    /// at once. `applied`: whether etcd had executed the request.
    Reset { applied: bool },
    /// Nothing listens: Envoy's synthetic 503 "remote connection failure"; never applied.
    Refuse,
    /// No answer: Envoy's 504 at the call's timeout (never, for a call without a timeout).
    Hang { applied: bool },
    /// An answer that is not etcd's: this status and body after the usual latency.
    Garbage {
        status: u16,
        body: Vec<u8>,
        applied: bool,
    },
    /// etcd no longer knows any lease the request names (e.g. it lost them): puts and txns with a
    /// lease 404 code 5, revoke 404, time-to-live TTL -1, keep-alive without a TTL. State is not
    /// touched; `Etcd::expire_all_leases` is the stateful version.
    LeaseGone,
}

impl Fault {
    fn is_quorum(&self) -> bool {
        matches!(self, Fault::QuorumLost | Fault::NoLeader)
    }
}

/// Which requests an injection applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    /// put, deleterange, a txn that writes, lease grant and revoke.
    Writes,
    /// ranges and read-only txns.
    Reads,
    /// Requests to this path (`/v3/kv/txn`).
    Path(String),
    /// Requests naming this key (in the key, a compare or an op).
    Key(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    pub fault: Fault,
    pub scope: Scope,
    /// How many matching requests it hits before switching itself off (None: until healed).
    pub times: Option<u32>,
}

impl Injection {
    pub fn new(fault: Fault) -> Injection {
        Injection {
            fault,
            scope: Scope::All,
            times: None,
        }
    }

    pub fn on(mut self, scope: Scope) -> Injection {
        self.scope = scope;
        self
    }

    pub fn times(mut self, n: u32) -> Injection {
        self.times = Some(n);
        self
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultId(usize);

/// One request as etcd received it, and what was answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub seq: u64,
    pub at_ns: u64,
    /// The client label of the handle it came through (`Etcd::client`).
    pub client: String,
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    pub json: Option<Value>,
    /// What the caller got (after Envoy's timeout, if it fired first).
    pub status: u16,
    pub fault: Option<Fault>,
}

impl Recorded {
    /// Every base64 string of the request decoded (keys, values, range ends, compare values).
    pub fn decoded(&self) -> Vec<Vec<u8>> {
        fn walk(v: &Value, out: &mut Vec<Vec<u8>>) {
            match v {
                Value::String(s) => {
                    if let Ok(b) = unb64(s) {
                        if !b.is_empty() {
                            out.push(b);
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                Value::Object(m) => m.values().for_each(|i| walk(i, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if let Some(j) = &self.json {
            walk(j, &mut out);
        }
        out
    }

    /// Whether `needle` appears in the path, the raw body, or any decoded base64 field.
    pub fn contains(&self, needle: &[u8]) -> bool {
        let has = |hay: &[u8]| !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle);
        has(self.path.as_bytes()) || has(&self.body) || self.decoded().iter().any(|d| has(d))
    }
}

/// A gateway answer: status, headers, body, and after how many ms it arrives (None: never).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub after_ms: Option<u64>,
}

impl Reply {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json_body(status: u16, body: &Value, after_ms: u64) -> Reply {
        Reply::with_type(
            status,
            "application/json",
            serde_json::to_vec(body).unwrap_or_default(),
            Some(after_ms),
        )
    }

    fn with_type(status: u16, content_type: &str, body: Vec<u8>, after_ms: Option<u64>) -> Reply {
        let mut headers = vec![("content-type".to_string(), content_type.to_string())];
        if content_type == "application/json" {
            headers.push((
                "grpc-metadata-content-type".to_string(),
                "application/grpc".to_string(),
            ));
        }
        headers.push(("content-length".to_string(), body.len().to_string()));
        Reply {
            status,
            headers,
            body,
            after_ms,
        }
    }

    fn error(code: u32, message: &str, after_ms: u64) -> Reply {
        let m = Value::String(message.to_string());
        let body = format!(r#"{{"error":{m},"message":{m},"code":{code}}}"#);
        Reply::with_type(
            http_status(code),
            "application/json",
            body.into_bytes(),
            Some(after_ms),
        )
    }

    fn synthetic(status: u16, body: &str, after_ms: Option<u64>) -> Reply {
        let mut r = Reply::with_type(status, "text/plain", body.as_bytes().to_vec(), after_ms);
        r.headers.retain(|(k, _)| k != "grpc-metadata-content-type");
        r
    }

    /// The reply as Envoy's async client hands it to the filter.
    pub fn to_callout(&self) -> CalloutReply {
        let mut headers = vec![(b":status".to_vec(), self.status.to_string().into_bytes())];
        headers.extend(
            self.headers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        if let Some(ms) = self.after_ms {
            headers.push((
                b"x-envoy-upstream-service-time".to_vec(),
                ms.to_string().into_bytes(),
            ));
        }
        CalloutReply {
            headers,
            body: self.body.clone(),
            trailers: Vec::new(),
        }
    }
}

/// grpc-gateway v1's status for a gRPC code.
fn http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        9 => 412,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

// -- requests --------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct RangeReq {
    key: Vec<u8>,
    range_end: Vec<u8>,
    limit: i64,
    revision: i64,
    serializable: bool,
    keys_only: bool,
    count_only: bool,
    other_size: usize,
}

#[derive(Clone, Debug, Default)]
struct PutReq {
    key: Vec<u8>,
    value: Vec<u8>,
    lease: i64,
    prev_kv: bool,
    ignore: bool,
}

#[derive(Clone, Debug, Default)]
struct DeleteReq {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
}

#[derive(Clone, Debug)]
enum Target {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}

#[derive(Clone, Debug)]
struct Compare {
    result: i64,
    target: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    against: Option<Target>,
}

#[derive(Clone, Debug)]
enum Op {
    Range(RangeReq),
    Put(PutReq),
    Delete(DeleteReq),
    Txn(TxnReq),
}

#[derive(Clone, Debug, Default)]
struct TxnReq {
    compare: Vec<Compare>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

#[derive(Clone, Debug)]
enum Call {
    Range(RangeReq),
    Put(PutReq),
    Delete(DeleteReq),
    Txn(TxnReq),
    Grant { ttl: i64, id: i64 },
    Revoke { id: i64 },
    KeepAlive { id: i64 },
    TimeToLive { id: i64, keys: bool },
    Health,
    Version,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Class {
    Write,
    LinearRead,
    SerialRead,
    KeepAlive,
    TimeToLive,
    Other,
}

const RESULTS: &[&str] = &["EQUAL", "GREATER", "LESS", "NOT_EQUAL"];
const TARGETS: &[&str] = &["VERSION", "CREATE", "MOD", "VALUE", "LEASE"];

fn parse_range(m: &Map<String, Value>) -> WireResult<RangeReq> {
    let f = Fields(m);
    let other = [
        ("sort_order", 5),
        ("sort_target", 6),
        ("min_mod_revision", 10),
        ("max_mod_revision", 11),
        ("min_create_revision", 12),
        ("max_create_revision", 13),
    ];
    let mut other_size = 0;
    for (name, field) in other {
        let v = if name.starts_with("sort") {
            f.enumeration(
                name,
                if name == "sort_order" {
                    &["NONE", "ASCEND", "DESCEND"]
                } else {
                    &["KEY", "VERSION", "CREATE", "MOD", "VALUE"]
                },
                "etcdserverpb.RangeRequest",
            )?
        } else {
            f.int(name)?
        };
        other_size += int_field(field, v);
    }
    Ok(RangeReq {
        key: f.bytes("key")?,
        range_end: f.bytes("range_end")?,
        limit: f.int("limit")?,
        revision: f.int("revision")?,
        serializable: f.bool("serializable")?,
        keys_only: f.bool("keys_only")?,
        count_only: f.bool("count_only")?,
        other_size,
    })
}

fn parse_put(m: &Map<String, Value>) -> WireResult<PutReq> {
    let f = Fields(m);
    Ok(PutReq {
        key: f.bytes("key")?,
        value: f.bytes("value")?,
        lease: f.int("lease")?,
        prev_kv: f.bool("prev_kv")?,
        ignore: f.bool("ignore_value")? || f.bool("ignore_lease")?,
    })
}

fn parse_delete(m: &Map<String, Value>) -> WireResult<DeleteReq> {
    let f = Fields(m);
    Ok(DeleteReq {
        key: f.bytes("key")?,
        range_end: f.bytes("range_end")?,
        prev_kv: f.bool("prev_kv")?,
    })
}

fn parse_compare(m: &Map<String, Value>) -> WireResult<Compare> {
    let f = Fields(m);
    let against = if f.has("version") {
        Some(Target::Version(f.int("version")?))
    } else if f.has("create_revision") {
        Some(Target::Create(f.int("create_revision")?))
    } else if f.has("mod_revision") {
        Some(Target::Mod(f.int("mod_revision")?))
    } else if f.has("value") {
        Some(Target::Value(f.bytes("value")?))
    } else if f.has("lease") {
        Some(Target::Lease(f.int("lease")?))
    } else {
        None
    };
    Ok(Compare {
        result: f.enumeration("result", RESULTS, "etcdserverpb.Compare_CompareResult")?,
        target: f.enumeration("target", TARGETS, "etcdserverpb.Compare_CompareTarget")?,
        key: f.bytes("key")?,
        range_end: f.bytes("range_end")?,
        against,
    })
}

fn parse_op(m: &Map<String, Value>) -> WireResult<Op> {
    let f = Fields(m);
    if let Some(r) = f.object("request_range")? {
        Ok(Op::Range(parse_range(r)?))
    } else if let Some(p) = f.object("request_put")? {
        Ok(Op::Put(parse_put(p)?))
    } else if let Some(d) = f.object("request_delete_range")? {
        Ok(Op::Delete(parse_delete(d)?))
    } else if let Some(t) = f.object("request_txn")? {
        Ok(Op::Txn(parse_txn(t)?))
    } else {
        // Measured: a RequestOp with no request answers this.
        Err(invalid("etcdserver: key not found"))
    }
}

fn parse_txn(m: &Map<String, Value>) -> WireResult<TxnReq> {
    let f = Fields(m);
    let compare = f
        .list("compare")?
        .into_iter()
        .map(parse_compare)
        .collect::<WireResult<_>>()?;
    let ops = |name| -> WireResult<Vec<Op>> { f.list(name)?.into_iter().map(parse_op).collect() };
    Ok(TxnReq {
        compare,
        success: ops("success")?,
        failure: ops("failure")?,
    })
}

/// The gateway's validation before a request reaches the server (etcd's v3rpc checks).
fn check_key(key: &[u8]) -> WireResult<()> {
    if key.is_empty() {
        Err(invalid("etcdserver: key is not provided"))
    } else {
        Ok(())
    }
}

fn check_txn(t: &TxnReq) -> WireResult<()> {
    if t.compare.len() > MAX_TXN_OPS
        || t.success.len() > MAX_TXN_OPS
        || t.failure.len() > MAX_TXN_OPS
    {
        return Err(invalid("etcdserver: too many operations in txn request"));
    }
    for c in &t.compare {
        check_key(&c.key)?;
    }
    for branch in [&t.success, &t.failure] {
        let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
        let mut dels: Vec<(&[u8], &[u8])> = Vec::new();
        for op in branch {
            match op {
                Op::Range(r) => check_key(&r.key)?,
                Op::Put(p) => {
                    check_key(&p.key)?;
                    if !puts.insert(&p.key) {
                        return Err(invalid("etcdserver: duplicate key given in txn request"));
                    }
                }
                Op::Delete(d) => {
                    check_key(&d.key)?;
                    dels.push((&d.key, &d.range_end));
                }
                Op::Txn(inner) => check_txn(inner)?,
            }
        }
        if puts
            .iter()
            .any(|k| dels.iter().any(|(key, end)| in_range(k, key, end)))
        {
            return Err(invalid("etcdserver: duplicate key given in txn request"));
        }
    }
    Ok(())
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

// -- protobuf sizes of the decoded requests --------------------------------------------------------

fn range_size(r: &RangeReq) -> usize {
    bytes_field(1, r.key.len())
        + bytes_field(2, r.range_end.len())
        + int_field(3, r.limit)
        + int_field(4, r.revision)
        + int_field(7, r.serializable as i64)
        + int_field(8, r.keys_only as i64)
        + int_field(9, r.count_only as i64)
        + r.other_size
}

fn put_size(p: &PutReq) -> usize {
    bytes_field(1, p.key.len())
        + bytes_field(2, p.value.len())
        + int_field(3, p.lease)
        + int_field(4, p.prev_kv as i64)
}

fn delete_size(d: &DeleteReq) -> usize {
    bytes_field(1, d.key.len()) + bytes_field(2, d.range_end.len()) + int_field(3, d.prev_kv as i64)
}

fn compare_size(c: &Compare) -> usize {
    int_field(1, c.result)
        + int_field(2, c.target)
        + bytes_field(3, c.key.len())
        + match &c.against {
            None => 0,
            Some(Target::Version(v)) => oneof_int_field(4, *v),
            Some(Target::Create(v)) => oneof_int_field(5, *v),
            Some(Target::Mod(v)) => oneof_int_field(6, *v),
            Some(Target::Value(v)) => len_field(7, v.len()),
            Some(Target::Lease(v)) => oneof_int_field(8, *v),
        }
        + bytes_field(64, c.range_end.len())
}

fn op_size(op: &Op) -> usize {
    match op {
        Op::Range(r) => len_field(1, range_size(r)),
        Op::Put(p) => len_field(2, put_size(p)),
        Op::Delete(d) => len_field(3, delete_size(d)),
        Op::Txn(t) => len_field(4, txn_size(t)),
    }
}

fn txn_size(t: &TxnReq) -> usize {
    t.compare
        .iter()
        .map(|c| len_field(1, compare_size(c)))
        .sum::<usize>()
        + t.success
            .iter()
            .map(|o| len_field(2, op_size(o)))
            .sum::<usize>()
        + t.failure
            .iter()
            .map(|o| len_field(3, op_size(o)))
            .sum::<usize>()
}

fn call_size(c: &Call) -> usize {
    match c {
        Call::Range(r) => range_size(r),
        Call::Put(p) => put_size(p),
        Call::Delete(d) => delete_size(d),
        Call::Txn(t) => txn_size(t),
        Call::Grant { ttl, id } => int_field(1, *ttl) + int_field(2, *id),
        Call::Revoke { id } | Call::KeepAlive { id } => int_field(1, *id),
        Call::TimeToLive { id, keys } => int_field(1, *id) + int_field(2, *keys as i64),
        Call::Health | Call::Version => 0,
    }
}

fn txn_readonly(t: &TxnReq) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match op {
        Op::Range(_) => true,
        Op::Txn(inner) => txn_readonly(inner),
        _ => false,
    })
}

fn txn_serializable(t: &TxnReq) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match op {
        Op::Range(r) => r.serializable,
        Op::Txn(inner) => txn_serializable(inner),
        _ => false,
    })
}

fn class(c: &Call) -> Class {
    match c {
        Call::Range(r) if r.serializable => Class::SerialRead,
        Call::Range(_) => Class::LinearRead,
        Call::Txn(t) if txn_readonly(t) && txn_serializable(t) => Class::SerialRead,
        Call::Txn(t) if txn_readonly(t) => Class::LinearRead,
        Call::Put(_)
        | Call::Delete(_)
        | Call::Txn(_)
        | Call::Grant { .. }
        | Call::Revoke { .. } => Class::Write,
        Call::KeepAlive { .. } => Class::KeepAlive,
        Call::TimeToLive { .. } => Class::TimeToLive,
        Call::Health | Call::Version => Class::Other,
    }
}

fn op_keys(op: &Op, out: &mut Vec<Vec<u8>>) {
    match op {
        Op::Range(r) => out.push(r.key.clone()),
        Op::Put(p) => out.push(p.key.clone()),
        Op::Delete(d) => out.push(d.key.clone()),
        Op::Txn(t) => txn_keys(t, out),
    }
}

fn txn_keys(t: &TxnReq, out: &mut Vec<Vec<u8>>) {
    out.extend(t.compare.iter().map(|c| c.key.clone()));
    for op in t.success.iter().chain(&t.failure) {
        op_keys(op, out);
    }
}

fn call_keys(c: &Call) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    match c {
        Call::Range(r) => out.push(r.key.clone()),
        Call::Put(p) => out.push(p.key.clone()),
        Call::Delete(d) => out.push(d.key.clone()),
        Call::Txn(t) => txn_keys(t, &mut out),
        _ => {}
    }
    out.sort();
    out.dedup();
    out
}

fn names_lease(c: &Call) -> bool {
    fn op(o: &Op) -> bool {
        match o {
            Op::Put(p) => p.lease != 0,
            Op::Txn(t) => t.success.iter().chain(&t.failure).any(op),
            _ => false,
        }
    }
    match c {
        Call::Put(p) => p.lease != 0,
        Call::Txn(t) => t.success.iter().chain(&t.failure).any(op),
        Call::Revoke { .. } | Call::KeepAlive { .. } | Call::TimeToLive { .. } => true,
        _ => false,
    }
}

/// What a request path and method route to: a call, or the gateway's plain-text 404/405.
enum Routed {
    Call(Call),
    Text(u16, &'static str),
    Bad(WireError),
}

fn route(method: &str, path: &str, body: &[u8], parsed: Option<&Value>) -> Routed {
    let path = path.split('?').next().unwrap_or("");
    if path == "/health" || path == "/version" {
        return if method == "GET" {
            Routed::Call(if path == "/health" {
                Call::Health
            } else {
                Call::Version
            })
        } else {
            Routed::Text(405, "Method Not Allowed\n")
        };
    }
    let rest = if let Some(r) = path.strip_prefix("/v3/") {
        r
    } else if let Some(r) = path.strip_prefix("/v3beta/") {
        r
    } else {
        return Routed::Text(404, "404 page not found\n");
    };
    const KNOWN: &[&str] = &[
        "kv/range",
        "kv/put",
        "kv/deleterange",
        "kv/txn",
        "lease/grant",
        "lease/revoke",
        "kv/lease/revoke",
        "lease/keepalive",
        "lease/timetolive",
        "kv/lease/timetolive",
    ];
    if !KNOWN.contains(&rest) {
        return Routed::Text(404, "Not Found\n");
    }
    if method != "POST" {
        return Routed::Text(405, "Method Not Allowed\n");
    }
    let parsed = (|| -> WireResult<Call> {
        let m = wire::body_object_parsed(body, parsed)?;
        let f = Fields(&m);
        Ok(match rest {
            "kv/range" => Call::Range(parse_range(&m)?),
            "kv/put" => Call::Put(parse_put(&m)?),
            "kv/deleterange" => Call::Delete(parse_delete(&m)?),
            "kv/txn" => Call::Txn(parse_txn(&m)?),
            "lease/grant" => Call::Grant {
                ttl: f.int("TTL")?,
                id: f.int("ID")?,
            },
            "lease/revoke" | "kv/lease/revoke" => Call::Revoke { id: f.int("ID")? },
            "lease/keepalive" => Call::KeepAlive { id: f.int("ID")? },
            _ => Call::TimeToLive {
                id: f.int("ID")?,
                keys: f.bool("keys")?,
            },
        })
    })();
    let call = match parsed {
        Ok(c) => c,
        Err(e) => return Routed::Bad(e),
    };
    let checked = match &call {
        Call::Range(r) => check_key(&r.key),
        Call::Put(p) => check_key(&p.key),
        Call::Delete(d) => check_key(&d.key),
        Call::Txn(t) => check_txn(t),
        _ => Ok(()),
    };
    match checked {
        Ok(()) => Routed::Call(call),
        Err(e) => Routed::Bad(e),
    }
}

// -- the model -------------------------------------------------------------------------------------

struct Rule {
    injection: Injection,
    hits: u32,
    active: bool,
    /// A quorum rule whose end was processed (held writes applied).
    settled: bool,
}

/// Why a request did not get etcd's normal answer.
enum Failure {
    Reply(Reply),
    /// The answer never comes (Envoy answers 504 at the timeout, if any).
    Never,
}

struct Model {
    config: EtcdConfig,
    now_ns: u64,
    revision: i64,
    raft_term: i64,
    kv: BTreeMap<Vec<u8>, KeyValue>,
    /// Lease id → (granted TTL, expiry ns).
    leases: BTreeMap<i64, (i64, u64)>,
    next_lease: i64,
    rules: Vec<Rule>,
    /// Writes a stale leader holds while the quorum is lost, applied when it returns.
    pending: Vec<Call>,
    stats: BTreeMap<Vec<u8>, KeyStats>,
    log: Vec<Recorded>,
    seq: u64,
}

struct NotModelled(String);

impl Model {
    fn new(config: EtcdConfig) -> Model {
        Model {
            next_lease: config.first_lease_id,
            config,
            now_ns: EPOCH_NS,
            revision: 1,
            raft_term: 2,
            kv: BTreeMap::new(),
            leases: BTreeMap::new(),
            rules: Vec::new(),
            pending: Vec::new(),
            stats: BTreeMap::new(),
            log: Vec::new(),
            seq: 0,
        }
    }

    fn quorum_lost(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.active && r.injection.fault.is_quorum())
    }

    /// Moves the clock forward (never back) and expires leases that ran out.
    fn observe(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        if self.quorum_lost() {
            return;
        }
        loop {
            let due = self
                .leases
                .iter()
                .filter(|(_, (_, at))| *at <= self.now_ns)
                .min_by_key(|(id, (_, at))| (*at, **id))
                .map(|(id, _)| *id);
            let Some(id) = due else { break };
            self.revoke(id);
        }
    }

    fn header(&self) -> Value {
        json!({
            "cluster_id": self.config.cluster_id.to_string(),
            "member_id": self.config.member_id.to_string(),
            "revision": self.revision.to_string(),
            "raft_term": self.raft_term.to_string(),
        })
    }

    fn kv_json(kv: &KeyValue, keys_only: bool) -> Value {
        let mut m = Map::new();
        m.insert("key".into(), b64(&kv.key).into());
        m.insert(
            "create_revision".into(),
            kv.create_revision.to_string().into(),
        );
        m.insert("mod_revision".into(), kv.mod_revision.to_string().into());
        m.insert("version".into(), kv.version.to_string().into());
        if !kv.value.is_empty() && !keys_only {
            m.insert("value".into(), b64(&kv.value).into());
        }
        if kv.lease != 0 {
            m.insert("lease".into(), kv.lease.to_string().into());
        }
        Value::Object(m)
    }

    fn matching(&self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        if end.is_empty() {
            return self.kv.get(key).cloned().into_iter().collect();
        }
        self.kv
            .range(key.to_vec()..)
            .take_while(|(k, _)| end == [0] || k.as_slice() < end)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn stat(&mut self, key: &[u8]) -> &mut KeyStats {
        self.stats.entry(key.to_vec()).or_default()
    }

    fn revoke(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<Vec<u8>> = self
            .kv
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        if !keys.is_empty() {
            self.revision += 1;
        }
        for k in keys {
            self.kv.remove(&k);
            self.stat(&k).writes += 1;
        }
    }

    // -- execution --------------------------------------------------------------------------------

    fn range(&self, r: &RangeReq) -> Result<Value, NotModelled> {
        if r.revision != 0 && r.revision != self.revision {
            return Err(NotModelled("range at a past revision".into()));
        }
        let all = self.matching(&r.key, &r.range_end);
        let mut m = Map::new();
        m.insert("header".into(), self.header());
        let shown: Vec<&KeyValue> = if r.limit > 0 {
            all.iter().take(r.limit as usize).collect()
        } else {
            all.iter().collect()
        };
        if !r.count_only && !shown.is_empty() {
            m.insert(
                "kvs".into(),
                shown
                    .iter()
                    .map(|kv| Self::kv_json(kv, r.keys_only))
                    .collect(),
            );
        }
        if shown.len() < all.len() {
            m.insert("more".into(), true.into());
        }
        if !all.is_empty() {
            m.insert("count".into(), all.len().to_string().into());
        }
        Ok(Value::Object(m))
    }

    /// Applies a put at revision `rev` (the write's new revision); answers prev_kv.
    fn apply_put(&mut self, p: &PutReq, rev: i64) -> Option<KeyValue> {
        let prev = self.kv.get(&p.key).cloned();
        let (create, version) = match &prev {
            Some(kv) => (kv.create_revision, kv.version + 1),
            None => (rev, 1),
        };
        self.kv.insert(
            p.key.clone(),
            KeyValue {
                key: p.key.clone(),
                value: p.value.clone(),
                create_revision: create,
                mod_revision: rev,
                version,
                lease: p.lease,
            },
        );
        self.stat(&p.key).writes += 1;
        prev
    }

    fn apply_delete(&mut self, d: &DeleteReq) -> Vec<KeyValue> {
        let gone = self.matching(&d.key, &d.range_end);
        for kv in &gone {
            self.kv.remove(&kv.key);
            self.stat(&kv.key).writes += 1;
        }
        gone
    }

    fn compare(&self, c: &Compare) -> Result<bool, NotModelled> {
        if !c.range_end.is_empty() {
            return Err(NotModelled("compare over a key range".into()));
        }
        let kv = self.kv.get(&c.key);
        // etcd: a missing key compares as all-zero, except on VALUE, which is false.
        if kv.is_none() && c.target == 3 {
            return Ok(false);
        }
        let zero = KeyValue {
            key: c.key.clone(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: 0,
            version: 0,
            lease: 0,
        };
        let kv = kv.unwrap_or(&zero);
        let ordering = match (c.target, &c.against) {
            (3, Some(Target::Value(v))) => kv.value.as_slice().cmp(v.as_slice()),
            (3, _) => kv.value.as_slice().cmp(&[][..]),
            (t, against) => {
                let mine = match t {
                    0 => kv.version,
                    1 => kv.create_revision,
                    2 => kv.mod_revision,
                    4 => kv.lease,
                    _ => return Err(NotModelled(format!("compare target {t}"))),
                };
                // etcd reads the union member that matches the target, else 0.
                let theirs = match (t, against) {
                    (0, Some(Target::Version(v)))
                    | (1, Some(Target::Create(v)))
                    | (2, Some(Target::Mod(v)))
                    | (4, Some(Target::Lease(v))) => *v,
                    _ => 0,
                };
                mine.cmp(&theirs)
            }
        };
        use std::cmp::Ordering::*;
        Ok(match c.result {
            0 => ordering == Equal,
            1 => ordering == Greater,
            2 => ordering == Less,
            3 => ordering != Equal,
            r => return Err(NotModelled(format!("compare result {r}"))),
        })
    }

    fn lease_missing(&self, ops: &[Op]) -> bool {
        ops.iter().any(|op| match op {
            Op::Put(p) => p.lease != 0 && !self.leases.contains_key(&p.lease),
            _ => false,
        })
    }

    /// Runs a txn: answers its body (without the top header) or an error.
    fn txn(&mut self, t: &TxnReq) -> Result<Result<Value, WireError>, NotModelled> {
        let mut ok = true;
        for c in &t.compare {
            ok &= self.compare(c)?;
        }
        let branch = if ok { &t.success } else { &t.failure };
        if self.lease_missing(branch) {
            return Ok(Err(WireError {
                code: 5,
                message: LEASE_NOT_FOUND.into(),
            }));
        }
        if branch
            .iter()
            .any(|op| matches!(op, Op::Txn(_) | Op::Put(PutReq { ignore: true, .. })))
        {
            return Err(NotModelled(
                "nested txn or ignore_value/ignore_lease".into(),
            ));
        }
        let rev = self.revision + 1;
        let mut changed = false;
        let mut responses = Vec::new();
        for op in branch {
            responses.push(match op {
                Op::Put(p) => {
                    let prev = self.apply_put(p, rev);
                    changed = true;
                    let mut r = Map::new();
                    if let (true, Some(prev)) = (p.prev_kv, prev) {
                        r.insert("prev_kv".into(), Self::kv_json(&prev, false));
                    }
                    ("response_put", r)
                }
                Op::Delete(d) => {
                    let gone = self.apply_delete(d);
                    changed |= !gone.is_empty();
                    ("response_delete_range", Self::delete_body(&gone, d.prev_kv))
                }
                Op::Range(r) => {
                    // A range after a write in the same txn sees it (at the new revision).
                    let saved = self.revision;
                    if changed {
                        self.revision = rev;
                    }
                    let mut body = self.range(&RangeReq {
                        revision: 0,
                        ..r.clone()
                    })?;
                    self.revision = saved;
                    let body = body.as_object_mut().map(std::mem::take).unwrap_or_default();
                    ("response_range", body)
                }
                Op::Txn(_) => return Err(NotModelled("nested txn".into())),
            });
        }
        if changed {
            self.revision = rev;
        }
        let shown_rev = self.revision.to_string();
        let mut m = Map::new();
        m.insert("header".into(), self.header());
        if ok {
            m.insert("succeeded".into(), true.into());
        }
        if !responses.is_empty() {
            let list = responses
                .into_iter()
                .map(|(name, mut body)| {
                    body.insert("header".into(), json!({ "revision": shown_rev }));
                    json!({ name: Value::Object(body) })
                })
                .collect::<Vec<_>>();
            m.insert("responses".into(), Value::Array(list));
        }
        Ok(Ok(Value::Object(m)))
    }

    fn delete_body(gone: &[KeyValue], prev_kv: bool) -> Map<String, Value> {
        let mut r = Map::new();
        if !gone.is_empty() {
            r.insert("deleted".into(), gone.len().to_string().into());
            if prev_kv {
                r.insert(
                    "prev_kvs".into(),
                    gone.iter().map(|kv| Self::kv_json(kv, false)).collect(),
                );
            }
        }
        r
    }

    /// etcd's normal answer to a validated call (state changes happen here).
    fn execute(&mut self, call: &Call) -> Reply {
        let latency = self.config.latency_ms;
        let ok = |m: Map<String, Value>| Reply::json_body(200, &Value::Object(m), latency);
        let with_header = |this: &Model, mut m: Map<String, Value>| {
            m.insert("header".into(), this.header());
            m
        };
        let not_modelled = |what: NotModelled| {
            Reply::synthetic(
                501,
                &format!("resetguard etcd model: {} is not modelled", what.0),
                Some(0),
            )
        };
        match call {
            Call::Range(r) => match self.range(r) {
                Ok(v) => Reply::json_body(200, &v, latency),
                Err(e) => not_modelled(e),
            },
            Call::Put(p) => {
                if p.ignore {
                    return not_modelled(NotModelled("ignore_value/ignore_lease".into()));
                }
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    return Reply::error(5, LEASE_NOT_FOUND, latency);
                }
                let rev = self.revision + 1;
                let prev = self.apply_put(p, rev);
                self.revision = rev;
                let mut m = Map::new();
                if let (true, Some(prev)) = (p.prev_kv, prev) {
                    m.insert("prev_kv".into(), Self::kv_json(&prev, false));
                }
                ok(with_header(self, m))
            }
            Call::Delete(d) => {
                let gone = self.apply_delete(d);
                if !gone.is_empty() {
                    self.revision += 1;
                }
                let m = Self::delete_body(&gone, d.prev_kv);
                ok(with_header(self, m))
            }
            Call::Txn(t) => match self.txn(t) {
                Ok(Ok(v)) => Reply::json_body(200, &v, latency),
                Ok(Err(e)) => Reply::error(e.code, &e.message, latency),
                Err(e) => not_modelled(e),
            },
            Call::Grant { ttl, id } => {
                if *ttl > MAX_LEASE_TTL {
                    return Reply::error(11, "etcdserver: too large lease TTL", latency);
                }
                let id = if *id != 0 {
                    if self.leases.contains_key(id) {
                        return Reply::error(9, "etcdserver: lease already exists", latency);
                    }
                    *id
                } else {
                    while self.leases.contains_key(&self.next_lease) {
                        self.next_lease += 1;
                    }
                    self.next_lease += 2;
                    self.next_lease - 2
                };
                let ttl = (*ttl).max(self.config.min_lease_ttl);
                self.leases
                    .insert(id, (ttl, self.now_ns + ttl as u64 * 1_000_000_000));
                let mut m = Map::new();
                m.insert("ID".into(), id.to_string().into());
                m.insert("TTL".into(), ttl.to_string().into());
                ok(with_header(self, m))
            }
            Call::Revoke { id } => {
                if !self.leases.contains_key(id) {
                    return Reply::error(5, LEASE_NOT_FOUND, latency);
                }
                self.revoke(*id);
                ok(with_header(self, Map::new()))
            }
            Call::KeepAlive { id } => {
                let mut m = Map::new();
                m.insert("ID".into(), id.to_string().into());
                if let Some((ttl, at)) = self.leases.get_mut(id) {
                    *at = self.now_ns + *ttl as u64 * 1_000_000_000;
                    m.insert("TTL".into(), ttl.to_string().into());
                }
                let m = with_header(self, m);
                let mut body =
                    serde_json::to_vec(&json!({ "result": Value::Object(m) })).unwrap_or_default();
                body.push(b'\n');
                Reply::with_type(200, "application/json", body, Some(latency))
            }
            Call::TimeToLive { id, keys } => {
                let mut m = Map::new();
                m.insert("ID".into(), id.to_string().into());
                match self.leases.get(id) {
                    Some((ttl, at)) => {
                        let left = at.saturating_sub(self.now_ns) / 1_000_000_000;
                        m.insert("TTL".into(), left.to_string().into());
                        m.insert("grantedTTL".into(), ttl.to_string().into());
                        let attached: Vec<Value> = self
                            .kv
                            .values()
                            .filter(|kv| kv.lease == *id)
                            .map(|kv| b64(&kv.key).into())
                            .collect();
                        if *keys && !attached.is_empty() {
                            m.insert("keys".into(), attached.into());
                        }
                    }
                    None => {
                        m.insert("TTL".into(), "-1".into());
                    }
                }
                ok(with_header(self, m))
            }
            Call::Health => Reply::json_body(200, &json!({"health": "true"}), latency),
            Call::Version => Reply::json_body(
                200,
                &json!({"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}),
                latency,
            ),
        }
    }

    /// The request limits: gRPC's receive limit on every call, etcd's raft limit on writes.
    fn too_large(&self, call: &Call, class: Class) -> Option<Reply> {
        let size = call_size(call);
        let grpc = self.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let latency = self.config.latency_ms;
        if size > grpc {
            return Some(Reply::error(
                8,
                &format!("grpc: received message larger than max ({size} vs. {grpc})"),
                latency,
            ));
        }
        if class == Class::Write
            && raft_request_size(self.config.member_id, size) > self.config.max_request_bytes
        {
            return Some(Reply::error(3, TOO_LARGE, latency));
        }
        None
    }

    /// A quorum or lease fault's answer, or None to execute normally.
    fn quorum_answer(&mut self, fault: &Fault, call: &Call, class: Class) -> Option<Failure> {
        let wait = self.config.quorum_timeout_ms;
        let latency = self.config.latency_ms;
        match (fault, class) {
            (Fault::QuorumLost, Class::Write) => {
                self.pending.push(call.clone());
                Some(Failure::Reply(Reply::error(14, TIMED_OUT, wait)))
            }
            (Fault::QuorumLost | Fault::NoLeader, Class::LinearRead) => {
                Some(Failure::Reply(Reply::error(14, TIMED_OUT, wait)))
            }
            (Fault::NoLeader, Class::Write) => {
                Some(Failure::Reply(Reply::error(2, DEADLINE_EXCEEDED, wait)))
            }
            (Fault::NoLeader, Class::TimeToLive) => {
                Some(Failure::Reply(Reply::error(14, NO_LEADER, wait)))
            }
            (Fault::NoLeader, Class::KeepAlive) => {
                let body = json!({"error": {"grpc_code": 14, "http_code": 503,
                    "message": NO_LEADER, "http_status": "Service Unavailable"}});
                Some(Failure::Reply(Reply::json_body(503, &body, wait)))
            }
            (Fault::CommitThenTimeout, Class::Write) => {
                let _ = self.execute(call);
                Some(Failure::Reply(Reply::error(14, TIMED_OUT, wait)))
            }
            (Fault::LeaseGone, _) if names_lease(call) => Some(Failure::Reply(match call {
                Call::KeepAlive { id } => {
                    let mut body = serde_json::to_vec(&json!({"result": {
                        "header": self.header(), "ID": id.to_string()}}))
                    .unwrap_or_default();
                    body.push(b'\n');
                    Reply::with_type(200, "application/json", body, Some(latency))
                }
                Call::TimeToLive { id, .. } => Reply::json_body(
                    200,
                    &json!({"header": self.header(), "ID": id.to_string(), "TTL": "-1"}),
                    latency,
                ),
                _ => Reply::error(5, LEASE_NOT_FOUND, latency),
            })),
            _ => None,
        }
    }

    fn pick_rule(&self, class: Option<Class>, path: &str, keys: &[Vec<u8>]) -> Option<usize> {
        self.rules.iter().position(|r| {
            r.active
                && match &r.injection.scope {
                    Scope::All => true,
                    Scope::Writes => class == Some(Class::Write),
                    Scope::Reads => {
                        matches!(class, Some(Class::LinearRead | Class::SerialRead))
                    }
                    Scope::Path(p) => p == path,
                    Scope::Key(k) => keys.contains(k),
                }
        })
    }

    /// Counts a request the rule's fault changed the answer of; `times` runs down on those.
    fn hit(&mut self, i: usize) {
        let rule = &mut self.rules[i];
        rule.hits += 1;
        if let Some(left) = rule.injection.times.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                rule.active = false;
            }
        }
    }

    /// A quorum came back: held writes are applied in order, leases renewed to their full TTL
    /// (a new leader's lessor refreshes them), a new raft term. Runs once per outage.
    fn after_rules_changed(&mut self) {
        if self.quorum_lost() {
            return;
        }
        let mut healed = false;
        for r in &mut self.rules {
            if r.injection.fault.is_quorum() && !r.active && !r.settled {
                r.settled = true;
                healed = true;
            }
        }
        if !healed {
            return;
        }
        self.raft_term += 1;
        for call in std::mem::take(&mut self.pending) {
            let _ = self.execute(&call);
        }
        let now = self.now_ns;
        for (ttl, at) in self.leases.values_mut() {
            *at = now + *ttl as u64 * 1_000_000_000;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        client: &str,
        now_ns: u64,
        method: &str,
        path: &str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Reply {
        self.observe(now_ns);
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let routed = route(method, path, body, parsed.as_ref());
        let (class, keys) = match &routed {
            Routed::Call(c) => (Some(class(c)), call_keys(c)),
            _ => (None, Vec::new()),
        };
        if let Routed::Call(c) = &routed {
            for k in &keys {
                let s = self.stat(k);
                match c {
                    Call::Range(_) => s.ranges += 1,
                    Call::Put(_) => s.puts += 1,
                    Call::Delete(_) => s.deletes += 1,
                    Call::Txn(_) => s.txns += 1,
                    _ => {}
                }
            }
        }
        let path_only = path.split('?').next().unwrap_or("").to_string();
        let rule = self.pick_rule(class, &path_only, &keys);
        let fault = rule.map(|i| self.rules[i].injection.fault.clone());
        let latency = self.config.latency_ms;
        // etcd's answer, and whether `fault` changed it.
        let normal = |this: &mut Model, fault: Option<&Fault>| -> (Failure, bool) {
            match &routed {
                Routed::Text(status, text) => (
                    Failure::Reply(Reply::synthetic(*status, text, Some(latency))),
                    false,
                ),
                Routed::Bad(e) => (
                    Failure::Reply(Reply::error(e.code, &e.message, latency)),
                    false,
                ),
                Routed::Call(call) => {
                    let class = class.unwrap_or(Class::Other);
                    if let Some(r) = this.too_large(call, class) {
                        return (Failure::Reply(r), false);
                    }
                    if let Some(f) = fault {
                        if let Some(answer) = this.quorum_answer(f, call, class) {
                            return (answer, true);
                        }
                    }
                    if matches!(call, Call::Health) && this.quorum_lost() {
                        let body = json!({"health": "false"});
                        return (Failure::Reply(Reply::json_body(503, &body, latency)), true);
                    }
                    (Failure::Reply(this.execute(call)), false)
                }
            }
        };
        let (outcome, affected) = match &fault {
            Some(Fault::Refuse) => (
                Failure::Reply(Reply::synthetic(503, REFUSED_BODY, Some(0))),
                true,
            ),
            Some(Fault::Reset { applied }) => {
                if *applied {
                    let _ = normal(self, None);
                }
                (
                    Failure::Reply(Reply::synthetic(503, RESET_BODY, Some(0))),
                    true,
                )
            }
            Some(Fault::Hang { applied }) => {
                if *applied {
                    let _ = normal(self, None);
                }
                (Failure::Never, true)
            }
            Some(Fault::Garbage {
                status,
                body,
                applied,
            }) => {
                if *applied {
                    let _ = normal(self, None);
                }
                let garbage =
                    Reply::with_type(*status, "application/json", body.clone(), Some(latency));
                (Failure::Reply(garbage), true)
            }
            other => normal(self, other.as_ref()),
        };
        let rule = rule.filter(|_| affected);
        let fault = rule.and(fault);
        if let Some(i) = rule {
            self.hit(i);
        }
        // Envoy's timeout fires first when the answer is later (0: no timeout).
        let reply = match outcome {
            Failure::Reply(r) if timeout_ms == 0 || r.after_ms.unwrap_or(0) <= timeout_ms => r,
            Failure::Reply(_) | Failure::Never if timeout_ms > 0 => {
                Reply::synthetic(504, TIMEOUT_BODY, Some(timeout_ms))
            }
            Failure::Reply(_) | Failure::Never => Reply {
                status: 0,
                headers: Vec::new(),
                body: Vec::new(),
                after_ms: None,
            },
        };
        self.seq += 1;
        self.log.push(Recorded {
            seq: self.seq,
            at_ns: self.now_ns,
            client: client.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            body: body.to_vec(),
            json: parsed,
            status: reply.status,
            fault,
        });
        if rule.is_some_and(|i| !self.rules[i].active) {
            self.after_rules_changed();
        }
        reply
    }
}

// -- the handle tests hold -------------------------------------------------------------------------

/// One etcd cluster, shared by every host and VM it is registered on. Cloning shares it.
#[derive(Clone)]
pub struct Etcd {
    model: Arc<Mutex<Model>>,
    label: String,
}

impl PartialEq for Etcd {
    fn eq(&self, other: &Etcd) -> bool {
        Arc::ptr_eq(&self.model, &other.model) && self.label == other.label
    }
}

impl Eq for Etcd {}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Etcd({})", self.label)
    }
}

impl Default for Etcd {
    fn default() -> Etcd {
        Etcd::new()
    }
}

impl Etcd {
    pub fn new() -> Etcd {
        Etcd::with_config(EtcdConfig::default())
    }

    pub fn with_config(config: EtcdConfig) -> Etcd {
        Etcd {
            model: Arc::new(Mutex::new(Model::new(config))),
            label: "etcd-client".into(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The same cluster seen through another client (a proxy's name in `requests()`).
    pub fn client(&self, label: &str) -> Etcd {
        Etcd {
            model: self.model.clone(),
            label: label.to_string(),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The cluster behaviour to register on a host (`HostBuilder::cluster`).
    pub fn behaviour(&self) -> ClusterBehaviour {
        ClusterBehaviour::Etcd(self.clone())
    }

    /// What `proxy_http_call` does: the request arrives at `now_ns` (the model's clock moves to
    /// it), takes effect now, and is answered after `Reply::after_ms`.
    pub fn dispatch(
        &self,
        now_ns: u64,
        method: &str,
        path: &str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Reply {
        self.lock()
            .dispatch(&self.label, now_ns, method, path, body, timeout_ms)
    }

    /// A POST at the model's current time, without a timeout (the tests' direct API).
    pub fn post(&self, path: &str, body: &Value) -> Reply {
        let raw = serde_json::to_vec(body).unwrap_or_default();
        self.post_raw(path, &raw)
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> Reply {
        let now = self.now_ns();
        self.dispatch(now, "POST", path, body, 0)
    }

    pub fn now_ns(&self) -> u64 {
        self.lock().now_ns
    }

    /// Shows the model a host's clock (never moves it back); expires leases that ran out.
    pub fn observe(&self, now_ns: u64) {
        self.lock().observe(now_ns);
    }

    /// Moves the model's own clock (tests that use the direct API without a host).
    pub fn advance(&self, ms: u64) {
        let now = self.now_ns() + ms * 1_000_000;
        self.observe(now);
    }

    // -- faults -----------------------------------------------------------------------------------

    pub fn inject(&self, injection: Injection) -> FaultId {
        let mut m = self.lock();
        m.rules.push(Rule {
            injection,
            hits: 0,
            active: true,
            settled: false,
        });
        FaultId(m.rules.len() - 1)
    }

    /// Switches a fault on for every request until healed.
    pub fn fail(&self, fault: Fault) -> FaultId {
        self.inject(Injection::new(fault))
    }

    /// Switches a fault on for the next `n` requests.
    pub fn fail_next(&self, n: u32, fault: Fault) -> FaultId {
        self.inject(Injection::new(fault).times(n))
    }

    /// Switches a fault off (a quorum loss healed applies the writes it held).
    pub fn heal(&self, id: FaultId) {
        let mut m = self.lock();
        if let Some(r) = m.rules.get_mut(id.0) {
            r.active = false;
        }
        m.after_rules_changed();
    }

    pub fn heal_all(&self) {
        let mut m = self.lock();
        for r in &mut m.rules {
            r.active = false;
        }
        m.after_rules_changed();
    }

    /// How many requests the fault answered.
    pub fn hits(&self, id: FaultId) -> u32 {
        self.lock().rules.get(id.0).map_or(0, |r| r.hits)
    }

    pub fn active(&self, id: FaultId) -> bool {
        self.lock().rules.get(id.0).is_some_and(|r| r.active)
    }

    /// Writes a stale leader holds (answered 503, applied when the quorum returns).
    pub fn held_writes(&self) -> usize {
        self.lock().pending.len()
    }

    // -- state actions ----------------------------------------------------------------------------

    /// Every lease expires now (their keys go, as when a proxy stopped keeping them alive).
    pub fn expire_all_leases(&self) {
        let mut m = self.lock();
        let ids: Vec<i64> = m.leases.keys().copied().collect();
        for id in ids {
            m.revoke(id);
        }
    }

    /// A fresh, empty etcd (data lost): keys, leases, revision 1. Faults and the log stay.
    pub fn wipe(&self) {
        let mut m = self.lock();
        m.kv.clear();
        m.leases.clear();
        m.pending.clear();
        m.revision = 1;
        m.raft_term = 2;
    }

    // -- inspection -------------------------------------------------------------------------------

    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.lock().kv.get(key).cloned()
    }

    pub fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get(key).map(|kv| kv.value)
    }

    pub fn kvs(&self) -> Vec<KeyValue> {
        self.lock().kv.values().cloned().collect()
    }

    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.lock().kv.keys().cloned().collect()
    }

    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    pub fn stats(&self, key: &[u8]) -> KeyStats {
        self.lock().stats.get(key).cloned().unwrap_or_default()
    }

    pub fn all_stats(&self) -> BTreeMap<Vec<u8>, KeyStats> {
        self.lock().stats.clone()
    }

    pub fn leases(&self) -> Vec<Lease> {
        let m = self.lock();
        m.leases
            .iter()
            .map(|(id, (ttl, at))| Lease {
                id: *id,
                ttl: *ttl,
                expires_ns: *at,
                keys: m
                    .kv
                    .values()
                    .filter(|kv| kv.lease == *id)
                    .map(|kv| kv.key.clone())
                    .collect(),
            })
            .collect()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().log.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Requests that carried `needle` in clear (path, raw body, or a decoded base64 field).
    pub fn requests_containing(&self, needle: &[u8]) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.contains(needle))
            .collect()
    }

    pub fn clear_requests(&self) {
        self.lock().log.clear();
    }
}
