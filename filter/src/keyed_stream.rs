//! Carries out what the keyed-stream machine (`resetguard_core::keyed`) decides: counts, sends
//! its answers, runs its store calls on the shared-data store (which answers within the same
//! callback), and settles the claim when the stream ends.

use crate::host::{self, BufferType, MapType};
use crate::local_response;
use crate::logger;
use crate::metrics::{Counter, Metrics};
use crate::remote_store::Remote;
use crate::root::Shared;
use proxy_wasm::types::Action;
use resetguard_core::config::OnUnavailable;
use resetguard_core::etcd::ops::{ClaimFailure, ClaimOp, Progress, Settle, SettleOp};
use resetguard_core::idempotency::index::{Fingerprint, Identity};
use resetguard_core::idempotency::recorded::RecordedResponse;
use resetguard_core::idempotency::scope::{Hashing, RequestHead};
use resetguard_core::idempotency::store::{
    Completion, Finish, IdempotencyStore, Report, StoreError, StoreResult,
};
use resetguard_core::idempotency::verdict::Judgement;
use resetguard_core::idempotency::Idempotency;
use resetguard_core::keyed::{
    self, settled_counters, Answer, Command, KeyedStream, Settlement, Step, StoreAnswer, StoreCall,
    StreamFacts, VIA_UPSTREAM,
};
use resetguard_core::outcome;

fn action(a: keyed::Action) -> Action {
    match a {
        keyed::Action::Continue => Action::Continue,
        keyed::Action::Pause => Action::Pause,
    }
}

fn now_ms() -> StoreResult<u64> {
    host::now_nanos()
        .map(|ns| ns / 1_000_000)
        .map_err(|e| StoreError::Unavailable(e.name()))
}

/// One keyed stream: the machine, the etcd claim it is waiting for, and the replay it sent.
pub struct Keyed {
    pub machine: KeyedStream,
    pending: Option<PendingClaim>,
    /// The replay this stream answered with, when Envoy edits such a local reply's headers (a
    /// `content-type: text/plain` for a body without one, no `content-type` for an empty body):
    /// they are put back as stored when the reply passes this filter's response callback.
    replayed: Option<RecordedResponse>,
}

/// A claim sent to etcd whose answer has not come yet.
struct PendingClaim {
    token: u32,
    op: ClaimOp,
    lease: String,
}

/// Where a store call went.
enum Executed {
    /// Answered within this callback (the shared-data store).
    Now(StoreAnswer),
    /// Sent to etcd: the answer comes in a later callback (`on_http_call_response`).
    Later(PendingClaim),
}

/// Runs `step`'s commands; a store call answered at once has its answer's step run next, one
/// sent to etcd pauses the stream until it comes back. `later`: this runs in a callback after
/// the one that paused the stream, so a `Resume` resumes it through the host. Returns the action
/// of the last step: the current callback's.
fn run(mut keyed: Option<&mut Keyed>, shared: &Shared, mut step: Step, later: bool) -> Action {
    let metrics = &shared.metrics;
    let Some(idem) = shared.policy.idempotency.as_ref() else {
        return action(step.action);
    };
    loop {
        let mut answer = None;
        for command in std::mem::take(&mut step.commands) {
            match command {
                Command::Count(counter, n) => metrics.add(counter, i64::from(n)),
                Command::ReportOnly(would) => log::info!(
                    "resetguard: idempotency report-only: {} would have been answered {would}",
                    logger::request_line(),
                ),
                Command::Answer(reply) => {
                    let sent = send(&reply);
                    if let (Ok(()), Answer::Replay(r), Some(k)) =
                        (&sent, reply, keyed.as_deref_mut())
                    {
                        // Only a reply Envoy edits needs its headers put back (README, replay
                        // fidelity): one without a content-type, or with an empty body.
                        let typed = r
                            .headers
                            .iter()
                            .any(|(n, _)| n.as_slice() == b"content-type");
                        if !typed || r.body.is_empty() {
                            k.replayed = Some(r);
                        }
                    }
                    if let Err(e) = sent {
                        // Could not answer: let the request through rather than leave it hanging.
                        metrics.inc(Counter::HostErrors);
                        log::warn!(
                            "resetguard: cannot send the idempotency answer ({e}); passing through"
                        );
                        if let Some(k) = keyed.as_deref_mut() {
                            k.machine.on_answer_failed();
                        }
                        step.action = keyed::Action::Continue;
                        if later {
                            resume(metrics);
                        }
                    }
                }
                // Within the callback that paused, returning the new action resumes.
                Command::Resume if later => resume(metrics),
                Command::Resume => {}
                Command::Store(call) => answer = Some(execute(shared, idem, call)),
            }
        }
        match (answer, keyed.as_deref_mut()) {
            (Some(Executed::Now(answer)), Some(k)) => step = k.machine.on_store(idem, answer),
            (Some(Executed::Later(pending)), Some(k)) => {
                k.pending = Some(pending);
                return Action::Pause;
            }
            _ => return action(step.action),
        }
    }
}

fn resume(metrics: &Metrics) {
    if let Err(e) = host::resume_request() {
        metrics.inc(Counter::HostErrors);
        log::debug!("resetguard: cannot resume the request ({e})");
    }
}

fn send(reply: &Answer) -> host::HostResult<()> {
    match reply {
        Answer::Problem {
            problem,
            detail,
            retry_after_s,
            upstream_status,
        } => local_response::send_problem(*problem, detail, *retry_after_s, *upstream_status),
        Answer::Replay(response) => local_response::send_replay(response),
    }
}

fn owner_token() -> StoreResult<u64> {
    getrandom::u64().map_err(|_| StoreError::Unavailable("no random source"))
}

fn execute(shared: &Shared, idem: &Idempotency, call: StoreCall) -> Executed {
    match (&shared.remote, call) {
        (
            Some(remote),
            StoreCall::Claim {
                identity,
                fingerprint,
            },
        ) => claim_remotely(remote, idem, identity, fingerprint),
        (_, call) => Executed::Now(execute_locally(idem, call)),
    }
}

/// The shared-data store answers within the callback.
fn execute_locally(idem: &Idempotency, call: StoreCall) -> StoreAnswer {
    let store = idem.store.as_deref().ok_or(StoreError::NotInitialized);
    match call {
        StoreCall::Peek { identity } => {
            StoreAnswer::Peek(store.and_then(|s| s.peek(&identity, now_ms()?)))
        }
        StoreCall::Claim {
            identity,
            fingerprint,
        } => {
            let claim =
                store.and_then(|s| s.claim(&identity, &fingerprint, owner_token()?, now_ms()?));
            if let Err(e) = &claim {
                log::debug!("resetguard: idempotency store error {e:?}");
            }
            StoreAnswer::Claim(claim)
        }
    }
}

fn claim_remotely(
    remote: &Remote,
    idem: &Idempotency,
    identity: Identity,
    fingerprint: Fingerprint,
) -> Executed {
    let now = match now_ms() {
        Ok(now) => now,
        Err(e) => return Executed::Now(StoreAnswer::Claim(Err(e))),
    };
    let (Some(lease), Ok(owner)) = (remote.claim_lease(now), owner_token()) else {
        return unavailable(remote, idem, identity, fingerprint, "no etcd lease yet");
    };
    let deadline = now.saturating_add(remote.lock_timeout_ms);
    let (op, request) = ClaimOp::start(
        &remote.config.prefix,
        identity,
        fingerprint,
        owner,
        &lease,
        deadline,
    );
    match remote.send(&request) {
        Ok(token) => Executed::Later(PendingClaim { token, op, lease }),
        Err(_) => unavailable(
            remote,
            idem,
            identity,
            fingerprint,
            "the etcd callout was refused",
        ),
    }
}

/// etcd cannot answer this claim: `on_unavailable: local` claims in this proxy's own store;
/// otherwise the store error goes to the rules (`reject` or `pass`).
fn unavailable(
    remote: &Remote,
    idem: &Idempotency,
    identity: Identity,
    fingerprint: Fingerprint,
    why: &'static str,
) -> Executed {
    log::debug!("resetguard: etcd unavailable for a claim ({why})");
    if remote.config.on_unavailable == OnUnavailable::Local && idem.store.is_some() {
        remote.fell_back_locally();
        return Executed::Now(execute_locally(
            idem,
            StoreCall::Claim {
                identity,
                fingerprint,
            },
        ));
    }
    Executed::Now(StoreAnswer::Claim(Err(StoreError::Unavailable(why))))
}

/// A callout's answer: the pending etcd claim's, which decides (or sends the next request).
pub fn on_http_call_response(keyed: &mut Keyed, shared: &Shared, token: u32, body_size: usize) {
    let (Some(remote), Some(idem)) = (&shared.remote, shared.policy.idempotency.as_ref()) else {
        return;
    };
    let Some(mut pending) = keyed.pending.take_if(|p| p.token == token) else {
        return;
    };
    remote.answered(token);
    let (status, body) = host::http_call_response(body_size);
    let (call, progress) = pending.op.on_answer(status, &body);
    remote.count(call);
    let identity = pending.op.identity();
    let fingerprint = pending.op.fingerprint();
    let answer = match progress {
        Progress::Send(request) => match remote.send(&request) {
            Ok(token) => {
                keyed.pending = Some(PendingClaim { token, ..pending });
                return;
            }
            Err(_) => unavailable(
                remote,
                idem,
                identity,
                fingerprint,
                "the etcd callout was refused",
            ),
        },
        Progress::Done(Ok(claim)) => Executed::Now(StoreAnswer::Claim(Ok(Report {
            value: claim,
            reclaimed: Default::default(),
            cas_conflicts: 0,
        }))),
        Progress::Done(Err(ClaimFailure::LeaseGone)) => {
            remote.lease_gone(&pending.lease);
            unavailable(
                remote,
                idem,
                identity,
                fingerprint,
                "the etcd lease is gone",
            )
        }
        Progress::Done(Err(ClaimFailure::Unavailable(failure))) => {
            unavailable(remote, idem, identity, fingerprint, failure.as_str())
        }
    };
    let Executed::Now(answer) = answer else {
        return;
    };
    let step = keyed.machine.on_store(idem, answer);
    run(Some(keyed), shared, step, true);
}

/// Answers (or, in report mode, counts) a request `decision::decide` refused before the store.
pub fn refuse(shared: &Shared, judgement: Judgement) -> Action {
    run(None, shared, keyed::refuse(judgement), false)
}

/// Starts deduping a request whose key `decision::decide` found valid (with a store; without
/// one the key was all there was to check).
pub fn begin(
    shared: &Shared,
    idem: &Idempotency,
    head: &RequestHead<'_>,
    key: &[u8],
    end_of_stream: bool,
) -> (Option<Box<Keyed>>, Action) {
    let (hashing, peek) = match (&shared.remote, idem.store.as_deref()) {
        // Every proxy of the fleet hashes alike; a peek would cost a round trip of its own.
        (Some(_), _) => (Ok(Hashing::Sha256), false),
        // The shared-data store peeks cheaply: an in-flight duplicate or a full shard is
        // answered before the headers reach the router.
        (None, Some(store)) => (store.seed().map(Hashing::Seeded), true),
        (None, None) => return (None, Action::Continue),
    };
    let (machine, step) = keyed::begin(idem, hashing, head, key, end_of_stream, peek);
    let mut keyed = machine.map(|machine| {
        Box::new(Keyed {
            machine,
            pending: None,
            replayed: None,
        })
    });
    let action = run(keyed.as_deref_mut(), shared, step, false);
    (keyed, action)
}

/// The whole buffered request body; NOT_FOUND or a short answer is an error, not a shorter body.
pub fn read_request_body(size: usize) -> StoreResult<Vec<u8>> {
    match host::buffer(BufferType::RequestBody, 0, size) {
        Ok(body) if body.as_ref().map_or(0, Vec::len) == size => Ok(body.unwrap_or_default()),
        Ok(_) => Err(StoreError::Unavailable(host::HostError::NOT_FOUND.name())),
        Err(e) => Err(StoreError::Unavailable(e.name())),
    }
}

pub fn on_request_body(
    keyed: &mut Keyed,
    shared: &Shared,
    idem: &Idempotency,
    size: usize,
    end_of_stream: bool,
) -> Action {
    log::debug!("resetguard: keyed request body: {size} bytes, end={end_of_stream}");
    let step = keyed
        .machine
        .on_request_body(idem, size, end_of_stream, read_request_body);
    run(Some(keyed), shared, step, false)
}

pub fn on_request_trailers(keyed: &mut Keyed, shared: &Shared, idem: &Idempotency) -> Action {
    let step = keyed.machine.on_request_trailers(idem, read_request_body);
    run(Some(keyed), shared, step, false)
}

/// Starts recording the upstream's answer to a request that owns its key. Returns the raw
/// `:status`, read from the same header map (one host call instead of two).
pub fn on_response_headers(machine: &mut KeyedStream, metrics: &Metrics) -> Option<Vec<u8>> {
    // Read in place: only the headers a replay keeps are copied.
    let via_upstream = || {
        host::property(&["response", "code_details"])
            .ok()
            .flatten()
            .is_some_and(|d| d == VIA_UPSTREAM)
    };
    match host::header_map(MapType::ResponseHeaders) {
        Ok(map) => {
            let raw_status = map
                .iter()
                .find(|(n, _)| *n == b":status")
                .map(|(_, v)| v.to_vec());
            let status = raw_status.as_deref().and_then(outcome::parse_status);
            machine.on_response_headers(status, map.iter(), via_upstream);
            raw_status
        }
        Err(_) => {
            metrics.inc(Counter::HostErrors);
            let raw_status = host::header(MapType::ResponseHeaders, ":status")
                .ok()
                .flatten();
            let status = raw_status.as_deref().and_then(outcome::parse_status);
            machine.on_response_headers(status, std::iter::empty(), via_upstream);
            raw_status
        }
    }
}

/// The replay this stream sent is passing its own response callback: its headers become exactly
/// the stored ones (in stored order), then `idempotent-replayed`, then the `content-length`
/// Envoy computed. Envoy adds `date` and rewrites `server` on every response after this; those
/// cannot be undone here (README, replay fidelity).
pub fn restore_replay_headers(keyed: &mut Keyed, metrics: &Metrics) -> bool {
    let Some(RecordedResponse {
        status, headers, ..
    }) = keyed.replayed.take()
    else {
        return false;
    };
    let length = host::header(MapType::ResponseHeaders, "content-length")
        .ok()
        .flatten();
    let status = status.to_string();
    let mut pairs: Vec<(&str, &[u8])> = Vec::with_capacity(headers.len() + 3);
    pairs.push((":status", status.as_bytes()));
    pairs.extend(
        headers
            .iter()
            .filter_map(|(n, v)| Some((std::str::from_utf8(n).ok()?, v.as_slice()))),
    );
    pairs.push((local_response::REPLAYED_HEADER, b"true"));
    if let Some(length) = &length {
        pairs.push(("content-length", length));
    }
    if let Err(e) = host::set_header_map(MapType::ResponseHeaders, &pairs) {
        // The replay goes as Envoy made it.
        metrics.inc(Counter::HostErrors);
        log::debug!("resetguard: cannot restore the replay's headers ({e})");
    }
    true
}

/// Copies a response chunk the machine records (read only then; the response never pauses).
pub fn on_response_body(machine: &mut KeyedStream, size: usize) {
    if machine.wants_response_body(size) {
        let chunk = host::buffer(BufferType::ResponseBody, 0, size)
            .ok()
            .map(Option::unwrap_or_default);
        machine.on_response_body(size, chunk);
    }
}

/// Settles the claim at stream end and counts what became of it: on the shared-data store now;
/// a claim in etcd is handed to the root context, which sends it (a stream's own callouts end
/// with it) and counts it when etcd answers.
pub fn on_stream_end(
    keyed: &mut Keyed,
    shared: &Shared,
    idem: &Idempotency,
    response_ended: bool,
    facts: &mut dyn StreamFacts,
) {
    let metrics = &shared.metrics;
    let Some(settlement) = keyed.machine.on_stream_end(idem, response_ended, facts) else {
        return;
    };
    if let Some(remote) = &shared.remote {
        let ticket = settlement.ticket();
        let settle = match &settlement {
            Settlement::Store { response, .. } => Settle::Complete {
                status: response.status,
                response: Some(response.clone()),
                why: None,
            },
            Settlement::CompleteUnreplayable { status, reason, .. } => Settle::Complete {
                status: *status,
                response: None,
                why: Some(*reason),
            },
            Settlement::Release { .. } => Settle::Release,
        };
        if let Some(op) = SettleOp::new(
            &remote.config.prefix,
            ticket,
            settle,
            ticket.lock_deadline_ms,
        ) {
            remote.hand_over(op);
            return;
        }
        // Claimed in the local fallback store: settled there, below.
    }
    let Some(store) = idem.store.as_deref() else {
        return;
    };
    let result = now_ms().and_then(|now| settle_on(store, &settlement, now));
    for (counter, n) in settled_counters(&result) {
        metrics.add(counter, i64::from(n));
    }
    match result {
        Ok(report) if report.value.is_unfinished() => log::info!(
            "resetguard: idempotency: could not finish a claimed key ({:?}); it frees after \
             lock_timeout_ms",
            report.value
        ),
        Err(e) => log::info!("resetguard: idempotency store error at completion: {e:?}"),
        Ok(_) => {}
    }
}

fn settle_on(
    store: &dyn IdempotencyStore,
    settlement: &Settlement,
    now: u64,
) -> StoreResult<Report<Finish>> {
    match settlement {
        Settlement::Store { ticket, response } => {
            store.complete(ticket, response.status, Completion::Response(response), now)
        }
        Settlement::CompleteUnreplayable {
            ticket,
            status,
            reason,
        } => store.complete(ticket, *status, Completion::Unreplayable(*reason), now),
        Settlement::Release { ticket } => store.release(ticket, now),
    }
}

/// What Envoy reported about the stream's end, each property read at most once and only when
/// asked (the keyed settlement and the outcome classification share the reads).
#[derive(Default)]
pub struct EndFacts {
    flags: Option<Option<u64>>,
    details: Option<Option<Vec<u8>>>,
    upstream_address: Option<bool>,
}

impl StreamFacts for EndFacts {
    fn code_details(&mut self) -> Option<Vec<u8>> {
        self.details
            .get_or_insert_with(|| host::property(&["response", "code_details"]).ok().flatten())
            .clone()
    }

    fn flags(&mut self) -> Option<u64> {
        *self.flags.get_or_insert_with(|| {
            host::property(&["response", "flags"])
                .ok()
                .flatten()
                .and_then(|raw| outcome::decode_u64(&raw))
        })
    }

    fn upstream_address(&mut self) -> bool {
        *self.upstream_address.get_or_insert_with(
            || matches!(host::property(&["upstream", "address"]), Ok(Some(a)) if !a.is_empty()),
        )
    }
}
