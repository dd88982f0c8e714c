//! Hostile traffic and host faults through the real .wasm, with an oracle for the contract.
//!
//! Thousands of generated cases: huge and repeated headers, non-UTF-8 names and values, 10 KB,
//! empty and quoted keys, bodies in odd chunks, client retry headers, aborts at every phase,
//! two racing requests on one key, and random host faults (failing header, buffer, property,
//! shared-data, metric and log calls; CAS mismatches) switched between a stream's request and
//! response phases. The module must never trap, and every answer must be one the contract allows:
//!
//! * a status from the upstream's plan, the router's own 502/503/504, or the filter's
//!   400/409/413/422/503, whose bodies are problem+json with a matching `status`;
//! * a replay only of a response the upstream gave for the same client scope, authority, method,
//!   path, key and payload, and never with hop-by-hop headers;
//! * a request that is not idempotent never executed twice upstream because of client headers;
//! * two racing requests on one key never both executed upstream;
//! * no key and no scope value in any log line; the store's key count within its bound.
//!
//! `RESETGUARD_HOSTILE_SEED` (default fixed) and `RESETGUARD_HOSTILE_CASES` (default 4,000)
//! choose the run; a failure prints the seed and the case, and rerunning with that seed replays it.
//! The two bugs it found, and each SECURITY.md claim, are proven case by case in `security_claims`.

use crate::fuzz::Rng;
use host_tests::faults::Faults;
use host_tests::{Exchange, Host, LogLevel, Request, UpstreamAction};
use std::collections::HashMap;
use std::time::Instant;

struct Profile {
    config: &'static str,
    idempotency: bool,
    enforce: bool,
    pass_through: bool,
    trusted: bool,
    retry_keyed: bool,
    max_retries: u32,
    scope: &'static [&'static str],
    /// (shards, entries per shard) of the store.
    store: (usize, usize),
}

const PROFILES: &[Profile] = &[
    Profile {
        config: r#"{"idempotency":{}}"#,
        idempotency: true,
        enforce: true,
        pass_through: false,
        trusted: false,
        retry_keyed: false,
        max_retries: 2,
        scope: &["authorization"],
        store: (1024, 10),
    },
    Profile {
        config: r#"{"retry":{"max_retries":3,"on":["reset","5xx","connect-failure"]},
            "idempotency":{"max_entries":8,"shards":2,"max_response_body_bytes":64,
            "max_request_body_bytes":256,"ttl_seconds":2,"lock_timeout_ms":200,
            "retry_keyed_requests":true}}"#,
        idempotency: true,
        enforce: true,
        pass_through: false,
        trusted: false,
        retry_keyed: true,
        max_retries: 3,
        scope: &["authorization"],
        store: (2, 4),
    },
    Profile {
        config: r#"{"idempotency":{"mode":"report","when_full":"pass_through","max_entries":4,
            "shards":1}}"#,
        idempotency: true,
        enforce: false,
        pass_through: true,
        trusted: false,
        retry_keyed: false,
        max_retries: 2,
        scope: &["authorization"],
        store: (1, 4),
    },
    Profile {
        config: r#"{"retry":{"trust_client_retry_headers":true},"idempotency":{
            "unknown_outcome":"complete","scope_headers":["authorization","x-tenant"]}}"#,
        idempotency: true,
        enforce: true,
        pass_through: false,
        trusted: true,
        retry_keyed: false,
        max_retries: 2,
        scope: &["authorization", "x-tenant"],
        store: (1024, 10),
    },
    Profile {
        config: r#"{"retry":{"max_retries":1,"on":["reset","5xx"]}}"#,
        idempotency: false,
        enforce: false,
        pass_through: false,
        trusted: false,
        retry_keyed: false,
        max_retries: 1,
        scope: &[],
        store: (0, 0),
    },
];

/// Credentials and keys carry markers, so a log line that leaked one is found.
const TOKENS: &[&str] = &["Bearer tok-alice", "Bearer tok-bob", "tok-carol"];
const KEYS: &[&str] = &[
    "idk-1",
    "\"idk-1\"",
    "  idk-1 ",
    "idk-2",
    "\"idk-\\\"3\\\\\"",
    "\"idk-4",
    "\"\"",
    "",
    "idk 5",
    "idk-6,idk-7",
    "\"idk-8\";p=1",
];
const PAYLOADS: &[&[u8]] = &[b"", b"{\"n\":1}", b"{\"n\":2}", b"x"];
const METHODS: &[&str] = &[
    "GET", "POST", "POST", "POST", "PUT", "PATCH", "DELETE", "HEAD",
];
const IDEMPOTENT: &[&str] = &["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-hop-secret",
];

fn flag(rng: &mut Rng, one_in: u64) -> bool {
    rng.below(one_in) == 0
}

pub(crate) fn header(name: &str, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.to_vec())
}

/// The key as the filter stores it: trimmed, and an sf-string unquoted (valid keys only reach the
/// store, so malformed forms need no care here).
fn model_key(raw: &[u8]) -> Vec<u8> {
    let raw = raw.trim_ascii();
    match raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) {
        Some(inner) => {
            let mut out = Vec::new();
            let mut escaped = false;
            for &b in inner {
                if b == b'\\' && !escaped {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(b);
            }
            out
        }
        None => raw.to_vec(),
    }
}

/// What one generated request is, for the oracle.
#[derive(Clone)]
struct Case {
    request: Request,
    method: String,
    /// The values of each scope header, in request order.
    scope_values: Vec<Vec<Vec<u8>>>,
    /// (authority, method, path, key) when the request is keyed.
    resource: Option<Vec<Vec<u8>>>,
    payload: Vec<u8>,
    plan_statuses: Vec<u16>,
    client_retry_headers: bool,
    key_header: bool,
    /// The host faults of this case, for the failure message.
    faults: String,
}

fn upstream_headers(rng: &mut Rng) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h = vec![header("content-type", b"application/json")];
    if flag(rng, 2) {
        // Hop-by-hop headers, one of them named by Connection only.
        h.push(header("connection", b"keep-alive, X-Hop-Secret"));
        h.push(header("x-hop-secret", b"s"));
        h.push(header("keep-alive", b"timeout=5"));
        h.push(header("transfer-encoding", b"chunked"));
        h.push(header("upgrade", b"h2c"));
        h.push(header("x-envoy-upstream-service-time", b"3"));
    }
    if flag(rng, 3) {
        h.push(header("set-cookie", b"a=1"));
        h.push(header("set-cookie", b"b=2"));
    }
    if flag(rng, 20) {
        h.push(header("x-big", &vec![b'v'; 20_000]));
    }
    h
}

fn upstream_plan(rng: &mut Rng) -> Vec<UpstreamAction> {
    (0..1 + rng.below(3))
        .map(|_| match rng.below(9) {
            0 => UpstreamAction::ResetBeforeHeaders,
            1 => UpstreamAction::Refuse,
            2 => UpstreamAction::RefusedStream,
            3 => UpstreamAction::ResetMidBody {
                status: 200,
                headers: upstream_headers(rng),
                body_prefix: b"part".to_vec(),
            },
            _ => UpstreamAction::Respond {
                status: [200, 201, 201, 204, 404, 429, 500, 503][rng.below(8) as usize],
                headers: upstream_headers(rng),
                body: if flag(rng, 8) {
                    vec![b'b'; 100 + rng.below(5_000) as usize]
                } else {
                    format!("resp-{}", rng.below(1_000_000)).into_bytes()
                },
                delay_ms: [0, 0, 5, 50, 400][rng.below(5) as usize],
            },
        })
        .collect()
}

/// The statuses an upstream plan can put on a response.
fn plan_statuses(plan: &[UpstreamAction]) -> Vec<u16> {
    plan.iter()
        .filter_map(|a| match a {
            UpstreamAction::Respond { status, .. }
            | UpstreamAction::ResetMidBody { status, .. } => Some(*status),
            _ => None,
        })
        .collect()
}

fn garbage(rng: &mut Rng, max: u64) -> Vec<u8> {
    let mut b = rng.bytes(max);
    if b.is_empty() {
        b.push(0xff);
    }
    b
}

fn generate(rng: &mut Rng, profile: &Profile) -> Case {
    let method = rng.pick(METHODS).to_string();
    let path = match rng.below(10) {
        0 => garbage(rng, 40),
        1 => [b"/orders/".as_slice(), &vec![b'p'; 9_000]].concat(),
        _ => format!("/orders/{}", rng.below(3)).into_bytes(),
    };
    let authority = if flag(rng, 8) {
        b"other.example".to_vec()
    } else {
        b"example.com".to_vec()
    };
    let mut headers = Vec::new();
    // Only POSTs with a :method and no gRPC content-type are keyed (the profiles' scope).
    let mut keyed = method == "POST";
    if flag(rng, 40) {
        keyed = false;
    } else {
        headers.push(header(":method", method.as_bytes()));
    }
    headers.push(header(":path", &path));
    headers.push(header(":authority", &authority));
    headers.push(header(":scheme", b"http"));

    // Scope: none, one, two, or non-UTF-8 credentials; a tenant for the profile that scopes on it.
    let mut scope_values: Vec<Vec<Vec<u8>>> = vec![Vec::new(); profile.scope.len()];
    for _ in 0..[0, 1, 1, 1, 2][rng.below(5) as usize] {
        let value = if flag(rng, 10) {
            [b"tok-\xff\xfe".as_slice(), &garbage(rng, 8)].concat()
        } else {
            rng.pick(TOKENS).as_bytes().to_vec()
        };
        headers.push(header("authorization", &value));
        if let Some(i) = profile.scope.iter().position(|s| *s == "authorization") {
            scope_values[i].push(value);
        }
    }
    if flag(rng, 3) {
        let tenant = format!("tok-tenant-{}", rng.below(2)).into_bytes();
        headers.push(header("x-tenant", &tenant));
        if let Some(i) = profile.scope.iter().position(|s| *s == "x-tenant") {
            scope_values[i].push(tenant);
        }
    }

    // The key: a pool (so replays, conflicts and races happen), 10 KB, non-UTF-8, or repeated.
    let mut key_header = false;
    let mut key = None;
    match rng.below(10) {
        0 => {}
        1 => {
            key_header = true;
            headers.push(header("idempotency-key", &vec![b'k'; 10 * 1024]));
        }
        2 => {
            key_header = true;
            headers.push(header("idempotency-key", b"idk-\xc3\x28"));
        }
        3 => {
            key_header = true;
            headers.push(header("idempotency-key", b"idk-1"));
            headers.push(header("idempotency-key", b"idk-2"));
        }
        _ => {
            key_header = true;
            let raw = rng.pick(KEYS).as_bytes();
            headers.push(header("idempotency-key", raw));
            key = Some(model_key(raw));
        }
    }

    // Hostile extras: client retry controls, huge and repeated headers, non-UTF-8 names/values.
    let mut client_retry_headers = false;
    for _ in 0..rng.below(6) {
        match rng.below(9) {
            0 => {
                client_retry_headers = true;
                headers.push(header("x-envoy-retry-on", b"5xx,reset,retriable-4xx"));
                headers.push(header("X-Envoy-Max-Retries", b"10"));
            }
            1 => {
                client_retry_headers = true;
                headers.push(header("x-envoy-retriable-status-codes", b"200,201,404"));
                headers.push(header("x-envoy-retry-on", b"retriable-status-codes"));
            }
            2 => headers.push(header("x-huge", &vec![b'h'; 64 * 1024])),
            3 => {
                for i in 0..200 {
                    headers.push(header("x-repeated", format!("{i}").as_bytes()));
                }
            }
            4 => headers.push((garbage(rng, 16), garbage(rng, 32))),
            5 => headers.push(header("content-length", b"99999999999999999999999")),
            6 => {
                keyed = false;
                headers.push(header("content-type", b"application/grpc"));
            }
            7 => headers.push(header("x-value", b"\x00\r\n\xff")),
            _ => headers.push((Vec::new(), b"empty-name".to_vec())),
        }
    }

    let payload = if flag(rng, 10) {
        vec![b'z'; 1_000 + rng.below(2_000) as usize]
    } else {
        PAYLOADS[rng.below(PAYLOADS.len() as u64) as usize].to_vec()
    };
    // Odd chunking: one chunk, single bytes, empty chunks in between, or random cuts.
    let chunks: Vec<Vec<u8>> = match rng.below(4) {
        0 => payload.iter().map(|b| vec![*b]).collect(),
        1 => payload
            .chunks(3)
            .flat_map(|c| [Vec::new(), c.to_vec()])
            .collect(),
        2 => {
            let mut out = Vec::new();
            let mut rest = payload.as_slice();
            while !rest.is_empty() {
                let n = (1 + rng.below(rest.len() as u64)) as usize;
                out.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            out
        }
        _ => vec![payload.clone()],
    };

    let plan = upstream_plan(rng);
    let plan_statuses = plan_statuses(&plan);
    let mut request = Request::raw(headers).chunks(chunks).upstream(plan);
    if flag(rng, 10) {
        request = request.trailers(&[("x-trailer", "t")]);
    }
    if flag(rng, 6) {
        request = request.response_chunks_of(1 + rng.below(7) as usize);
    }
    request = match rng.below(14) {
        0 => request.abort_after(rng.below(500)),
        1 => request.abort_mid_request(rng.below(4) as usize),
        2 => request.abort_mid_response(rng.below(4) as usize),
        _ => request,
    };
    let resource = key
        .filter(|_| keyed)
        .map(|key| vec![authority, method.as_bytes().to_vec(), path, key]);
    Case {
        request,
        method,
        scope_values,
        resource,
        payload,
        plan_statuses,
        client_retry_headers,
        key_header,
        faults: String::new(),
    }
}

impl Case {
    /// The store's identity in clear: each scope header's values (counted), then the resource.
    fn identity(&self) -> Option<Vec<Vec<u8>>> {
        let resource = self.resource.as_ref()?;
        let mut id = Vec::new();
        for values in &self.scope_values {
            id.push(values.len().to_le_bytes().to_vec());
            id.extend(values.iter().cloned());
        }
        id.extend(resource.iter().cloned());
        Some(id)
    }
}

/// An earlier keyed request again (what a client retrying after a reset does): as it was, with
/// another payload (a 422), or with another client's credentials (never a replay of the first).
fn resend(rng: &mut Rng, profile: &Profile, mut case: Case) -> Case {
    case.request.abort_after_ms = None;
    case.request.abort_after_body_chunks = None;
    case.request.abort_after_response_chunks = None;
    case.request.upstream = upstream_plan(rng);
    case.plan_statuses = plan_statuses(&case.request.upstream);
    match rng.below(4) {
        0 => {
            case.payload = b"{\"changed\":1}".to_vec();
            case.request = case.request.body(&case.payload);
        }
        1 => {
            case.request
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case(b"authorization"));
            case.request
                .headers
                .push(header("authorization", b"Bearer tok-mallory"));
            if let Some(i) = profile.scope.iter().position(|s| *s == "authorization") {
                case.scope_values[i] = vec![b"Bearer tok-mallory".to_vec()];
            }
        }
        _ => {}
    }
    case
}

/// Responses the upstream gave keyed requests, by identity: what a replay may serve.
type Upstreamed = HashMap<Vec<Vec<u8>>, Vec<(Vec<u8>, u16, Vec<u8>)>>;

struct Run {
    seed: u64,
    case: usize,
}

impl Run {
    fn fail(&self, what: String) -> ! {
        panic!(
            "hostile case {} violates the contract: {what}\n(reproduce: \
             RESETGUARD_HOSTILE_SEED={:#x} cargo test -p host-tests --test suite hostile)",
            self.case, self.seed
        )
    }

    fn ensure(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what())
        }
    }
}

pub(crate) fn is_problem(x: &Exchange) -> bool {
    x.header("content-type") == Some(b"application/problem+json".as_slice())
}

/// The oracle for one finished exchange.
fn check(run: &Run, profile: &Profile, case: &Case, x: &Exchange, faults: bool, seen: &Upstreamed) {
    let replay = x.filter_local_reply && x.header("idempotent-replayed") == Some(b"true");
    run.ensure(!x.stalled, || {
        format!("the filter stalled the stream: {x:?}")
    });
    match x.status {
        None => run.ensure(x.client_aborted, || {
            format!("no response and no abort: {x:?}")
        }),
        Some(status) if x.filter_local_reply && !replay => {
            run.ensure(is_problem(x), || {
                format!("a local {status} is not a problem: {x:?}")
            });
            run.ensure([400, 409, 413, 422, 503].contains(&status), || {
                format!("problem status {status}")
            });
            // A client that left mid-body has no whole body to judge.
            if x.complete {
                check_problem_body(run, profile, case, x, status);
            }
        }
        Some(status) if replay => {
            run.ensure(profile.enforce, || "a replay in report mode".into());
            let earlier = case.identity().and_then(|id| seen.get(&id));
            run.ensure(
                earlier.is_some_and(|list| {
                    list.iter().any(|(p, s, b)| {
                        *p == case.payload
                            && *s == status
                            && (*b == x.body || !x.complete && b.starts_with(&x.body))
                    })
                }),
                || {
                    format!(
                        "a replay ({status}, {:?}) the upstream never gave this identity and \
                         payload {:?} (it gave {:?}): {}",
                        String::from_utf8_lossy(&case.payload),
                        String::from_utf8_lossy(&x.body),
                        earlier.map(|l| l
                            .iter()
                            .map(|e| (
                                String::from_utf8_lossy(&e.0).into_owned(),
                                e.1,
                                String::from_utf8_lossy(&e.2).into_owned()
                            ))
                            .collect::<Vec<_>>()),
                        describe(profile, case, x)
                    )
                },
            );
            for (name, _) in &x.headers {
                let lower = name.to_ascii_lowercase();
                run.ensure(
                    !HOP_BY_HOP.iter().any(|h| h.as_bytes() == lower.as_slice())
                        && !lower.starts_with(b"x-envoy-"),
                    || format!("a replay carries {:?}", String::from_utf8_lossy(name)),
                );
            }
        }
        Some(status) => {
            let router = x.router_local_reply && [502, 503, 504].contains(&status);
            run.ensure(router || case.plan_statuses.contains(&status), || {
                format!(
                    "status {status} is not in the plan {:?}",
                    case.plan_statuses
                )
            });
        }
    }
    for (name, value) in &x.filter_state {
        let value = String::from_utf8_lossy(value);
        run.ensure(!value.contains("tok-") && !value.contains("idk-"), || {
            format!("filter state {name} carries a key or credential: {value:?}")
        });
    }
    // Client retry headers never make a non-idempotent request run twice (unless trusted).
    let executed = executions(case, x);
    let unsafe_method = !IDEMPOTENT.contains(&case.method.as_str());
    let keyed_retries = profile.retry_keyed && case.key_header;
    if unsafe_method && !profile.trusted && !faults && !keyed_retries {
        run.ensure(executed <= 1, || {
            format!(
                "{} executed {executed} times (client retry headers: {}): {}",
                case.method,
                case.client_retry_headers,
                describe(profile, case, x)
            )
        });
    }
    if !profile.trusted && !faults {
        run.ensure(x.router_attempts <= 1 + profile.max_retries, || {
            format!("{} attempts beyond max_retries", x.router_attempts)
        });
    }
}

fn check_problem_body(run: &Run, profile: &Profile, case: &Case, x: &Exchange, status: u16) {
    let body: serde_json::Value = serde_json::from_slice(&x.body).unwrap_or_else(|e| {
        run.fail(format!(
            "a problem body that is not JSON ({e}): {}",
            describe(profile, case, x)
        ))
    });
    run.ensure(body["status"] == status, || format!("problem body {body}"));
    run.ensure(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:resetguard:problem:")),
        || format!("problem type {body}"),
    );
}

/// Attempts the upstream application processed: not refused connections, not refused streams.
fn executions(case: &Case, x: &Exchange) -> usize {
    let plan = &case.request.upstream;
    (0..x.router_attempts as usize)
        .filter_map(|i| plan.get(i).or(plan.last()))
        .filter(|a| !matches!(a, UpstreamAction::Refuse | UpstreamAction::RefusedStream))
        .count()
}

/// A failing case in a few lines: the config, what was sent, what the upstream and client saw.
fn describe(profile: &Profile, case: &Case, x: &Exchange) -> String {
    let short = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.chars().take(60).collect::<String>()
    };
    let sent: Vec<String> = case
        .request
        .headers
        .iter()
        .map(|(n, v)| format!("{}: {}", short(n), short(v)))
        .collect();
    format!(
        "\nconfig {}\nsent {sent:?}\nfaults {}\nplan {:?}\nstatus {:?} upstream {} attempts {} flags {:#x} \
         details {} local {}/{}",
        profile.config,
        case.faults,
        case.request.upstream,
        x.status,
        x.upstream.len(),
        x.router_attempts,
        x.flags,
        x.details,
        x.filter_local_reply,
        x.router_local_reply
    )
}

fn record(case: &Case, x: &Exchange, seen: &mut Upstreamed) {
    let (Some(id), Some(status)) = (case.identity(), x.status) else {
        return;
    };
    if x.filter_local_reply || x.router_local_reply {
        return;
    }
    // The whole body the upstream sent (the client may have left before it all arrived).
    for action in &case.request.upstream {
        if let UpstreamAction::Respond {
            status: s, body, ..
        } = action
        {
            if *s == status {
                seen.entry(id.clone()).or_default().push((
                    case.payload.clone(),
                    status,
                    body.clone(),
                ));
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => raw.parse().ok(),
    }
}

/// The host's end-of-life checks: nothing secret logged, the store within its key bound.
fn audit(run: &Run, profile: &Profile, host: &Host) {
    for line in host.logs() {
        run.ensure(
            !line.message.contains("tok-") && !line.message.contains("idk-"),
            || format!("a key or credential reached the log: {:?}", line.message),
        );
    }
    if profile.idempotency {
        let (shards, per_shard) = profile.store;
        let keys = host.shared().shared.len("resetguard");
        run.ensure(keys <= 1 + shards + shards * per_shard, || {
            format!("{keys} shared-data keys, beyond the store's bound")
        });
    }
}

#[test]
fn hostile_requests_and_host_faults_get_only_contract_answers() {
    let seed = env_u64("RESETGUARD_HOSTILE_SEED").unwrap_or(0x0bad_5eed_0f00_0001);
    let cases = env_u64("RESETGUARD_HOSTILE_CASES").unwrap_or(4_000) as usize;
    let mut rng = Rng::seeded(seed);
    let started = Instant::now();
    let mut run = Run { seed, case: 0 };
    let (mut faulted, mut races, mut replays, mut problems) = (0, 0, 0, 0);
    let mut p = 0;
    let mut host = Host::builder().config(PROFILES[0].config).start().unwrap();
    let mut seen = Upstreamed::new();
    let mut recent: Vec<Case> = Vec::new();
    for case_no in 0..cases {
        run.case = case_no;
        if case_no % 250 == 0 {
            if case_no > 0 {
                audit(&run, &PROFILES[p], &host);
            }
            p = rng.below(PROFILES.len() as u64) as usize;
            host = Host::builder()
                .config(PROFILES[p].config)
                .workers(1 + rng.below(2) as usize)
                .log_level(LogLevel::Trace)
                .seed(rng.next())
                .start()
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(host.configured(), "{:?}", host.logs());
            seen.clear();
            recent.clear();
        }
        let profile = &PROFILES[p];
        if flag(&mut rng, 50) {
            host.advance(rng.below(3_000))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let worker = rng.below(host.vms.len() as u64) as usize;

        if flag(&mut rng, 12) {
            // Two requests on one key racing: the second arrives while the first is upstream.
            races += 1;
            let mut a = generate(&mut rng, profile);
            a.request.abort_after_ms = None;
            a.request.abort_after_body_chunks = None;
            a.request.abort_after_response_chunks = None;
            let b_payload = if flag(&mut rng, 2) {
                a.payload.clone()
            } else {
                b"{\"other\":true}".to_vec()
            };
            let b = Case {
                request: a
                    .request
                    .clone()
                    .body(&b_payload)
                    .upstream(vec![UpstreamAction::ok("second")]),
                method: a.method.clone(),
                scope_values: a.scope_values.clone(),
                resource: a.resource.clone(),
                payload: b_payload,
                plan_statuses: vec![200],
                client_retry_headers: a.client_retry_headers,
                key_header: a.key_header,
                faults: String::new(),
            };
            let other = (worker + 1) % host.vms.len();
            let fa = host.vms[worker].begin(a.request.clone());
            let fb = host.vms[other].begin(b.request.clone());
            let (fa, fb) = match (fa, fb) {
                (Ok(fa), Ok(fb)) => (fa, fb),
                (Err(e), _) | (_, Err(e)) => run.fail(format!("trap: {e}")),
            };
            let xb = host.vms[other].finish(fb);
            let xa = host.vms[worker].finish(fa);
            let (xa, xb) = match (xa, xb) {
                (Ok(xa), Ok(xb)) => (xa, xb),
                (Err(e), _) | (_, Err(e)) => run.fail(format!("trap: {e}")),
            };
            check(&run, profile, &b, &xb, false, &seen);
            check(&run, profile, &a, &xa, false, &seen);
            if profile.enforce && !profile.pass_through && a.resource.is_some() {
                run.ensure(executions(&a, &xa) == 0 || executions(&b, &xb) == 0, || {
                    format!(
                        "two racing {} requests on one key both executed ({:?} / {:?})",
                        a.method, xa.status, xb.status
                    )
                });
            }
            record(&a, &xa, &mut seen);
            record(&b, &xb, &mut seen);
            continue;
        }

        let mut case = match recent.len() {
            0 => generate(&mut rng, profile),
            n if flag(&mut rng, 3) => {
                let earlier = recent[rng.below(n as u64) as usize].clone();
                resend(&mut rng, profile, earlier)
            }
            _ => generate(&mut rng, profile),
        };
        if case.resource.is_some() && recent.len() < 16 {
            recent.push(case.clone());
        }
        // Host faults: none most of the time; else a random set, possibly changing between the
        // request phase and the response phase, plus forced CAS mismatches on shared data.
        let before = if flag(&mut rng, 3) {
            Faults::sample(rng.next())
        } else {
            Faults::default()
        };
        let after = if flag(&mut rng, 4) {
            Faults::sample(rng.next())
        } else {
            before.clone()
        };
        let cas_mismatches = if flag(&mut rng, 8) {
            rng.below(40) as u32
        } else {
            0
        };
        let faults = before.any() || after.any() || cas_mismatches > 0;
        faulted += usize::from(faults);
        case.faults = format!("{before:?} then {after:?}, {cas_mismatches} CAS mismatches");
        host.shared().faults = before;
        host.shared().shared.forced_cas_mismatches = cas_mismatches;
        let vm = &mut host.vms[worker];
        let flight = match vm.begin(case.request.clone()) {
            Ok(f) => f,
            Err(e) => run.fail(format!("trap in the request phase: {e}")),
        };
        vm.state().shared().faults = after;
        let result = vm.finish(flight);
        {
            let mut shared = host.shared();
            shared.faults = Faults::default();
            shared.shared.forced_cas_mismatches = 0;
        }
        let x = match result {
            Ok(x) => x,
            Err(e) => run.fail(format!("trap in the response phase: {e}")),
        };
        run.ensure(host.vms[worker].trapped().is_none(), || "trapped".into());
        check(&run, profile, &case, &x, faults, &seen);
        replays += usize::from(x.header("idempotent-replayed").is_some());
        problems += usize::from(is_problem(&x));
        record(&case, &x, &mut seen);
    }
    audit(&run, &PROFILES[p], &host);
    println!(
        "hostile: {cases} cases ({faulted} with host faults, {races} races, {replays} replays, \
         {problems} problems) in {:.1?}, seed {seed:#x}",
        started.elapsed()
    );
    // The generator must reach the interesting answers, or the oracle proves nothing.
    assert!(cases < 1_000 || (replays > 20 && problems > 200 && faulted > 300 && races > 100));
}
