//! The per-stream glue of the idempotency layer: checks the key at request headers, buffers the
//! body, asks the store, answers or resumes, records the upstream response, and at `on_log`
//! stores it or releases the key. The decisions themselves live in `idempotency`.

use crate::host::{self, BufferType, MapType};
use crate::logger;
use crate::metrics::{Counter, Metrics};
use proxy_wasm::types::Action;
use resetguard_core::config::UnknownOutcome;
use resetguard_core::idempotency::index::Identity;
use resetguard_core::idempotency::index::Peek;
use resetguard_core::idempotency::recorded::{RecordedResponse, MAX_STORED_HEADER_BYTES};
use resetguard_core::idempotency::scope::{fingerprint, identity, RequestHead};
use resetguard_core::idempotency::store::{Claim, Finish, Report, StoreError, Ticket};
use resetguard_core::idempotency::verdict::{Judgement, Verdict};
use resetguard_core::idempotency::Idempotency;
use resetguard_core::outcome;

/// `response.code_details` of a response the upstream sent (anything else the proxy made up).
const VIA_UPSTREAM: &[u8] = b"via_upstream";

/// Upstream answers that ask the client to retry later (429 Too Many Requests, 503 Service
/// Unavailable): the key is released, not completed.
const RETRY_LATER: [u16; 2] = [429, 503];

/// What the key check at request headers decided.
pub struct KeyCheck {
    pub action: Action,
    /// Present while the request is deduped through the store.
    pub stream: Option<KeyedStream>,
}

enum Phase {
    AwaitingBody { seen: usize },
    Upstream,
    Answered,
}

pub struct KeyedStream {
    seed: [u8; 16],
    identity: Identity,
    phase: Phase,
    ticket: Option<Ticket>,
    recording: Option<Recording>,
}

struct Recording {
    response: RecordedResponse,
    /// False once the response exceeded what may be stored: the key completes unreplayable.
    keep: bool,
    /// The response headers came from the upstream, so the request was executed.
    from_upstream: bool,
}

/// Where a judgement left the request.
enum Applied {
    Proceed(Option<Ticket>),
    Answered,
}

fn apply(judgement: Judgement, metrics: &Metrics) -> Applied {
    for counter in &judgement.counters {
        metrics.inc(*counter);
    }
    if let Some(would) = judgement.would_have {
        log::info!(
            "resetguard: idempotency report-only: {} would have been answered {would}",
            logger::request_line(),
        );
    }
    let sent = match &judgement.verdict {
        Verdict::Proceed(ticket) => return Applied::Proceed(*ticket),
        Verdict::Reject {
            problem,
            detail,
            retry_after_s,
        } => crate::local_response::send_problem(*problem, detail, *retry_after_s),
        Verdict::Replay(response) => crate::local_response::send_replay(response),
    };
    match sent {
        Ok(()) => Applied::Answered,
        Err(e) => {
            // Could not answer: let the request through rather than leave it hanging.
            metrics.inc(Counter::HostErrors);
            log::warn!("resetguard: cannot send the idempotency answer ({e}); passing through");
            Applied::Proceed(None)
        }
    }
}

fn action_of(applied: &Applied) -> Action {
    match applied {
        Applied::Proceed(_) => Action::Continue,
        Applied::Answered => Action::Pause,
    }
}

fn now_ms() -> Result<u64, StoreError> {
    host::now_nanos()
        .map(|ns| ns / 1_000_000)
        .map_err(|e| StoreError::Unavailable(e.name()))
}

fn count_report<T>(report: &Report<T>, metrics: &Metrics) {
    let reclaimed = report.reclaimed;
    for (counter, n) in [
        (Counter::IdemExpired, reclaimed.expired),
        (Counter::IdemLockExpired, reclaimed.lock_expired),
        (Counter::IdemCasRetries, report.cas_conflicts),
    ] {
        if n > 0 {
            metrics.add(counter, i64::from(n));
        }
    }
}

/// Answers (or, in report mode, counts) a request `decision::decide` refused before the store.
pub fn refuse(judgement: Judgement, metrics: &Metrics) -> Action {
    action_of(&apply(judgement, metrics))
}

/// Starts deduping a request whose key `decision::decide` found valid (with a store; without
/// one the key was all there was to check).
pub fn check(
    idem: &Idempotency,
    head: &RequestHead<'_>,
    key: &[u8],
    end_of_stream: bool,
    metrics: &Metrics,
) -> KeyCheck {
    let Some(store) = &idem.store else {
        return KeyCheck {
            action: Action::Continue,
            stream: None,
        };
    };
    let seed = match store.seed() {
        Ok(seed) => seed,
        Err(e) => {
            let applied = apply(idem.rules.store_error(e), metrics);
            return KeyCheck {
                action: action_of(&applied),
                stream: None,
            };
        }
    };
    let identity = identity(&seed, head, key, idem.scope.scope_headers.len());
    if !end_of_stream {
        // The headers will reach the router before the body is in (see below): answer what needs
        // no body — a duplicate of a request still in flight, a full shard — right now, so that
        // the upstream never sees such a request at all.
        let early = match now_ms().and_then(|now| store.peek(&identity, now)) {
            Ok(Peek::InFlight) => Some(idem.rules.claim(Claim::InFlight)),
            Ok(Peek::Full { retry_after_s }) => {
                Some(idem.rules.claim(Claim::Full { retry_after_s }))
            }
            Ok(Peek::Absent | Peek::Completed) | Err(_) => None,
        };
        if let Some(judgement) = early {
            let applied = apply(judgement, metrics);
            return KeyCheck {
                action: action_of(&applied),
                stream: None,
            };
        }
    }
    let mut stream = KeyedStream {
        seed,
        identity,
        phase: Phase::AwaitingBody { seen: 0 },
        ticket: None,
        recording: None,
    };
    // A request without a body is decided now. Otherwise the headers go on and the body is
    // buffered: proxy-wasm hosts turn a headers pause into "stop all", which would withhold the
    // body from this filter too. The router may thus open the upstream request of a replay or a
    // 422, but the upstream never gets its body (Envoy resets that upstream stream).
    let action = if end_of_stream {
        stream.decide(idem, Ok(Vec::new()), metrics)
    } else {
        Action::Continue
    };
    KeyCheck {
        action,
        stream: Some(stream),
    }
}

impl KeyedStream {
    fn decide(
        &mut self,
        idem: &Idempotency,
        body: Result<Vec<u8>, StoreError>,
        metrics: &Metrics,
    ) -> Action {
        let claim = body.and_then(|body| {
            let fingerprint = fingerprint(&self.seed, &body);
            let owner =
                getrandom::u64().map_err(|_| StoreError::Unavailable("no random source"))?;
            let store = idem.store.as_ref().ok_or(StoreError::NotInitialized)?;
            store.claim(&self.identity, &fingerprint, owner, now_ms()?)
        });
        let judgement = match claim {
            Ok(report) => {
                count_report(&report, metrics);
                idem.rules.claim(report.value)
            }
            Err(e) => {
                log::debug!("resetguard: idempotency store error {e:?}");
                idem.rules.store_error(e)
            }
        };
        let applied = apply(judgement, metrics);
        match &applied {
            Applied::Proceed(ticket) => {
                self.ticket = *ticket;
                self.phase = Phase::Upstream;
            }
            Applied::Answered => self.phase = Phase::Answered,
        }
        action_of(&applied)
    }

    /// Buffers the request body (StopIterationAndBuffer) until its end, then decides.
    pub fn on_request_body(
        &mut self,
        idem: &Idempotency,
        body_size: usize,
        end_of_stream: bool,
        metrics: &Metrics,
    ) -> Action {
        match self.phase {
            Phase::AwaitingBody { .. } => {}
            Phase::Upstream => return Action::Continue,
            Phase::Answered => return Action::Pause,
        }
        log::debug!("resetguard: keyed request body: {body_size} bytes, end={end_of_stream}");
        // While buffering, Envoy reports the size of everything buffered so far.
        self.phase = Phase::AwaitingBody { seen: body_size };
        if body_size > idem.config.max_request_body_bytes {
            let applied = apply(
                idem.rules
                    .body_too_large(idem.config.max_request_body_bytes),
                metrics,
            );
            self.phase = match applied {
                Applied::Proceed(_) => Phase::Upstream,
                Applied::Answered => Phase::Answered,
            };
            return action_of(&applied);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.decide(idem, read_request_body(body_size), metrics)
    }

    /// A request with trailers ends here rather than in a body callback.
    pub fn on_request_trailers(&mut self, idem: &Idempotency, metrics: &Metrics) -> Action {
        match self.phase {
            Phase::AwaitingBody { seen } => self.decide(idem, read_request_body(seen), metrics),
            Phase::Upstream => Action::Continue,
            Phase::Answered => Action::Pause,
        }
    }

    /// Whether the upstream's answer is recorded (the request owns its key).
    pub fn records(&self) -> bool {
        self.ticket.is_some()
    }

    /// Starts recording the upstream's answer to a request that owns its key. Returns the raw
    /// `:status`, read from the same header map (one host call instead of two).
    pub fn on_response_headers(&mut self, metrics: &Metrics) -> Option<Vec<u8>> {
        // Read in place: only the headers a replay keeps are copied.
        let map = host::header_map(MapType::ResponseHeaders);
        let raw_status = match &map {
            Ok(map) => map
                .iter()
                .find(|(n, _)| *n == b":status")
                .map(|(_, v)| v.to_vec()),
            Err(_) => {
                metrics.inc(Counter::HostErrors);
                host::header(MapType::ResponseHeaders, ":status")
                    .ok()
                    .flatten()
            }
        };
        let status = raw_status.as_deref().and_then(outcome::parse_status);
        let code = status.unwrap_or(0);
        let response = match &map {
            Ok(map) => RecordedResponse::from_borrowed_headers(code, map.iter()),
            Err(_) => RecordedResponse::from_headers(code, Vec::new()),
        };
        let keep = status.is_some() && response.header_bytes() <= MAX_STORED_HEADER_BYTES;
        // Response headers from the upstream prove it executed the request, whatever happens to
        // the body later (Envoy says `via_upstream` now and rewrites it if the stream is cut).
        let from_upstream = host::property(&["response", "code_details"])
            .ok()
            .flatten()
            .is_some_and(|d| d == VIA_UPSTREAM);
        self.recording = Some(Recording {
            response,
            keep,
            from_upstream,
        });
        raw_status
    }

    /// Trailers are not stored: a response that has them completes the key unreplayable, since
    /// a replay without them would be a different answer.
    pub fn on_response_trailers(&mut self) {
        if let Some(recording) = self.recording.as_mut() {
            recording.keep = false;
            recording.response.body = Vec::new();
        }
    }

    /// Copies each response chunk as it passes (never pausing the response).
    pub fn on_response_body(&mut self, idem: &Idempotency, body_size: usize) {
        let Some(recording) = self.recording.as_mut().filter(|r| r.keep) else {
            return;
        };
        let total = recording.response.body.len().saturating_add(body_size);
        if total > idem.config.max_response_body_bytes {
            recording.keep = false;
            recording.response.body = Vec::new();
            return;
        }
        match host::buffer(BufferType::ResponseBody, 0, body_size) {
            Ok(Some(chunk)) if chunk.len() == body_size => {
                recording.response.body.extend_from_slice(&chunk)
            }
            Ok(None) if body_size == 0 => {}
            // A chunk the host did not hand over whole (an error, NOT_FOUND, short): a replay
            // would serve another body than the upstream sent.
            _ => recording.keep = false,
        }
    }

    /// Stores the upstream's complete response (also when the client left after all of it passed
    /// the filter: a retry gets the replay); completes the key unreplayable when the upstream
    /// answered but the response was cut (truncated, or the client left mid-response: it ran
    /// upstream, so it must not run again); releases the key when the proxy answered (reset,
    /// timeout, local reply) or the client left before the upstream answered (`unknown_outcome`
    /// decides that case). A client that left before its request was complete holds no claim:
    /// the claim is taken at the request's end, so there is nothing to release.
    pub fn on_log(&mut self, idem: &Idempotency, response_ended: bool, metrics: &Metrics) {
        let (Some(ticket), Some(store)) = (self.ticket.take(), idem.store.as_ref()) else {
            return;
        };
        let recording = self.recording.take();
        // At on_log Envoy's details describe how the stream ended (a client that left after the
        // response passed says `downstream_remote_disconnect`); what the response headers said
        // is kept in the recording, and when it says "from the upstream" the details cannot
        // change the answer: read them (a host call) only when they can.
        let via_upstream = recording.as_ref().is_some_and(|r| r.from_upstream)
            || host::property(&["response", "code_details"])
                .ok()
                .flatten()
                .is_some_and(|d| d == VIA_UPSTREAM);
        let answered = |r: &Recording| via_upstream || r.from_upstream;
        let result = now_ms().and_then(|now| match &recording {
            // "Try again later" from the upstream: storing it would answer every retry of this
            // key with the same refusal for the whole TTL.
            Some(r) if answered(r) && RETRY_LATER.contains(&r.response.status) => {
                store.release(&ticket, now)
            }
            Some(r) if answered(r) && response_ended => {
                let kept = r.keep.then_some(&r.response);
                store.complete(&ticket, r.response.status, kept, now)
            }
            Some(r) if r.from_upstream => store.complete(&ticket, r.response.status, None, now),
            _ if idem.config.unknown_outcome == UnknownOutcome::Complete && may_have_run() => {
                let status = recording.as_ref().map_or(0, |r| r.response.status);
                store.complete(&ticket, status, None, now)
            }
            _ => store.release(&ticket, now),
        });
        match result {
            Ok(report) => {
                count_report(&report, metrics);
                metrics.inc(match report.value {
                    Finish::Stored | Finish::StoredNotReplayable => Counter::IdemStored,
                    Finish::Released => Counter::IdemReleased,
                    Finish::Lost => Counter::IdemLost,
                    Finish::Busy => Counter::IdemStoreContention,
                });
                if matches!(report.value, Finish::Lost | Finish::Busy) {
                    log::info!(
                        "resetguard: idempotency: could not finish a claimed key ({:?}); it frees \
                         after lock_timeout_ms",
                        report.value
                    );
                }
            }
            Err(e) => {
                metrics.inc(Counter::IdemStoreErrors);
                log::info!("resetguard: idempotency store error at completion: {e:?}");
            }
        }
    }
}

/// Whether a request that got no upstream answer may still have been applied: an upstream
/// request was made (`upstream.address` is set) and no flag proves it was never sent.
fn may_have_run() -> bool {
    let flags = host::property(&["response", "flags"])
        .ok()
        .flatten()
        .and_then(|raw| outcome::decode_u64(&raw))
        .unwrap_or(0);
    if outcome::proves_request_unsent(flags) {
        return false;
    }
    matches!(host::property(&["upstream", "address"]), Ok(Some(a)) if !a.is_empty())
}

/// The whole buffered body, or an error: a fingerprint over less than the body (a host that
/// answers NOT_FOUND or short) would let another payload match, and replay, a stored response.
fn read_request_body(size: usize) -> Result<Vec<u8>, StoreError> {
    match host::buffer(BufferType::RequestBody, 0, size) {
        Ok(body) if body.as_ref().map_or(0, Vec::len) == size => Ok(body.unwrap_or_default()),
        Ok(_) => Err(StoreError::Unavailable(host::HostError::NOT_FOUND.name())),
        Err(e) => Err(StoreError::Unavailable(e.name())),
    }
}
