//! Carries out what the keyed-stream machine (`resetguard_core::keyed`) decides: counts, sends
//! its answers, runs its store calls on the shared-data store (which answers within the same
//! callback), and settles the claim when the stream ends.

use crate::host::{self, BufferType, MapType};
use crate::local_response;
use crate::logger;
use crate::metrics::{Counter, Metrics};
use proxy_wasm::types::Action;
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

/// Runs `step`'s commands; a store call is answered at once and its answer's step runs next.
/// Returns the action of the last step: the current callback's.
fn run(
    mut machine: Option<&mut KeyedStream>,
    idem: &Idempotency,
    mut step: Step,
    metrics: &Metrics,
) -> Action {
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
                    if let Err(e) = send(&reply) {
                        // Could not answer: let the request through rather than leave it hanging.
                        metrics.inc(Counter::HostErrors);
                        log::warn!(
                            "resetguard: cannot send the idempotency answer ({e}); passing through"
                        );
                        if let Some(m) = machine.as_deref_mut() {
                            m.on_answer_failed();
                        }
                        step.action = keyed::Action::Continue;
                    }
                }
                // The store answered within this callback, which returns the new action itself.
                Command::Resume => {}
                Command::Store(call) => answer = Some(execute(idem, call)),
            }
        }
        match (answer, machine.as_deref_mut()) {
            (Some(answer), Some(m)) => step = m.on_store(idem, answer),
            _ => return action(step.action),
        }
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

fn execute(idem: &Idempotency, call: StoreCall) -> StoreAnswer {
    let store = idem.store.as_deref().ok_or(StoreError::NotInitialized);
    match call {
        StoreCall::Peek { identity } => {
            StoreAnswer::Peek(store.and_then(|s| s.peek(&identity, now_ms()?)))
        }
        StoreCall::Claim {
            identity,
            fingerprint,
        } => {
            let claim = store.and_then(|s| {
                let owner =
                    getrandom::u64().map_err(|_| StoreError::Unavailable("no random source"))?;
                s.claim(&identity, &fingerprint, owner, now_ms()?)
            });
            if let Err(e) = &claim {
                log::debug!("resetguard: idempotency store error {e:?}");
            }
            StoreAnswer::Claim(claim)
        }
    }
}

/// Answers (or, in report mode, counts) a request `decision::decide` refused before the store.
pub fn refuse(idem: &Idempotency, judgement: Judgement, metrics: &Metrics) -> Action {
    run(None, idem, keyed::refuse(judgement), metrics)
}

/// Starts deduping a request whose key `decision::decide` found valid (with a store; without
/// one the key was all there was to check).
pub fn begin(
    idem: &Idempotency,
    head: &RequestHead<'_>,
    key: &[u8],
    end_of_stream: bool,
    metrics: &Metrics,
) -> (Option<Box<KeyedStream>>, Action) {
    let Some(store) = idem.store.as_deref() else {
        return (None, Action::Continue);
    };
    // The shared-data store peeks cheaply: an in-flight duplicate or a full shard is answered
    // before the headers reach the router.
    let (machine, step) = keyed::begin(
        idem,
        store.seed().map(Hashing::Seeded),
        head,
        key,
        end_of_stream,
        true,
    );
    let mut machine = machine.map(Box::new);
    let action = run(machine.as_deref_mut(), idem, step, metrics);
    (machine, action)
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
    machine: &mut KeyedStream,
    idem: &Idempotency,
    size: usize,
    end_of_stream: bool,
    metrics: &Metrics,
) -> Action {
    log::debug!("resetguard: keyed request body: {size} bytes, end={end_of_stream}");
    let step = machine.on_request_body(idem, size, end_of_stream, read_request_body);
    run(Some(machine), idem, step, metrics)
}

pub fn on_request_trailers(
    machine: &mut KeyedStream,
    idem: &Idempotency,
    metrics: &Metrics,
) -> Action {
    let step = machine.on_request_trailers(idem, read_request_body);
    run(Some(machine), idem, step, metrics)
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

/// Copies a response chunk the machine records (read only then; the response never pauses).
pub fn on_response_body(machine: &mut KeyedStream, size: usize) {
    if machine.wants_response_body(size) {
        let chunk = host::buffer(BufferType::ResponseBody, 0, size)
            .ok()
            .map(Option::unwrap_or_default);
        machine.on_response_body(size, chunk);
    }
}

/// Settles the claim at stream end on the store and counts what became of it.
pub fn on_stream_end(
    machine: &mut KeyedStream,
    idem: &Idempotency,
    response_ended: bool,
    facts: &mut dyn StreamFacts,
    metrics: &Metrics,
) {
    let (Some(settlement), Some(store)) = (
        machine.on_stream_end(idem, response_ended, facts),
        idem.store.as_deref(),
    ) else {
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
