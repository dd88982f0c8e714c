//! The keyed stream: what happens to a request whose `Idempotency-Key` is valid, as a state
//! machine without I/O. The glue feeds it events (request body, store answers, response head and
//! body, stream end) and carries out the [`Step`] each returns: the stream action for the current
//! callback, then commands in order (count, ask the store, answer, resume, finish the claim).
//!
//! Host data the machine may not need is handed in as closures or as [`StreamFacts`], so the glue
//! reads a body, a chunk or a property only when the machine asks for it; tests hand in values.
//!
//! ```text
//! begin(idem, seed, head, key, end_of_stream, peek) -> (Option<KeyedStream>, Step)
//!   request headers: no body -> claim now; a body follows -> peek (answer an in-flight duplicate
//!   or a full store before the headers leave), then buffer the body
//! on_request_body(size, end_of_stream, read_body) / on_request_trailers(read_body) -> Step
//!   the body's end -> fingerprint, claim
//! on_store(answer) -> Step                      a peek's or a claim's answer, now or later
//! on_answer_failed()                            the glue could not send an Answer: pass through
//! on_response_headers(status, headers, via_upstream) / on_response_body / on_response_trailers
//!   record the upstream's answer while it passes (only when this request owns its key)
//! on_stream_end(response_ended, facts) -> Option<Settlement>
//!   store the response, complete the key unreplayable, or release it (see `settle.rs`)
//! ```
//!
//! The store may answer in the same callback (the shared-data store) or in a later one (a
//! callout): a step whose action is [`Action::Pause`] while [`KeyedStream::waiting`] is true is
//! resumed by the [`Command::Resume`] of the step that carries the answer.

mod settle;
#[cfg(test)]
mod tests;

pub use settle::{
    settle, settled_counters, Recorded, Settlement, StreamFacts, RETRY_LATER, VIA_UPSTREAM,
};

use crate::counter::Counter;
use crate::idempotency::index::{Fingerprint, Identity, Peek, Unreplayable};
use crate::idempotency::problem::Problem;
use crate::idempotency::recorded::{RecordedResponse, MAX_STORED_HEADER_BYTES};
use crate::idempotency::scope::{fingerprint, identity, Hashing, RequestHead};
use crate::idempotency::store::{Claim, Report, StoreError, Ticket};
use crate::idempotency::verdict::{Judgement, Verdict};
use crate::idempotency::Idempotency;
use smallvec::{smallvec, SmallVec};

/// What the current callback returns to the host.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// At headers: stop (a store answer is pending, or the filter answered); at the body: keep
    /// buffering it (or: stop, after an answer).
    Pause,
}

/// One thing for the glue to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Count(Counter, u32),
    /// Ask the store; feed its answer to [`KeyedStream::on_store`], now or when it arrives.
    Store(StoreCall),
    /// Answer the client instead of the upstream (then the stream stays paused).
    Answer(Answer),
    /// Report mode: log that enforce mode would have answered this (a problem type or "replay").
    ReportOnly(&'static str),
    /// Continue a stream paused while the store answered.
    Resume,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreCall {
    /// A read-only look before the body is known.
    Peek { identity: Identity },
    /// Claim the key for this request (the store draws the claim's owner token).
    Claim {
        identity: Identity,
        fingerprint: Fingerprint,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAnswer {
    Peek(Result<Peek, StoreError>),
    Claim(Result<Report<Claim>, StoreError>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Problem {
        problem: Problem,
        detail: String,
        retry_after_s: Option<u32>,
        upstream_status: Option<u16>,
    },
    Replay(RecordedResponse),
}

/// A step's commands: a handful, kept inline (no allocation per callback).
pub type Commands = SmallVec<[Command; 4]>;

/// What a callback returns: the action, then the commands to carry out in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    pub commands: Commands,
}

impl Step {
    fn with(action: Action) -> Step {
        Step {
            action,
            commands: Commands::new(),
        }
    }

    /// The store call this step makes, if any (at most one).
    pub fn store_call(&self) -> Option<&StoreCall> {
        self.commands.iter().find_map(|c| match c {
            Command::Store(call) => Some(call),
            _ => None,
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// The headers passed; the body is being buffered (`seen` bytes so far).
    AwaitingBody { seen: usize },
    /// A peek at headers is pending.
    Peeking,
    /// A claim is pending; `resume` when the stream was paused waiting for it.
    Claiming,
    /// The request goes (or went) upstream.
    Upstream,
    /// The filter answered; the stream stays paused.
    Answered,
}

/// One keyed request, from its headers to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedStream {
    hashing: Hashing,
    identity: Identity,
    phase: Phase,
    /// Whether the current callback paused the stream while the store answers (so the answer
    /// must resume it) or returns after the answer came (the store answered at once).
    paused: bool,
    ticket: Option<Ticket>,
    recording: Option<Recorded>,
    max_request_body_bytes: usize,
    max_response_body_bytes: usize,
}

/// Turns a judgement into commands: its counters, then the answer (or, in report mode, what the
/// answer would have been). `Some(ticket)`-less proceeding is `Ok(None)`.
fn apply(judgement: Judgement, commands: &mut Commands) -> Result<Option<Ticket>, ()> {
    for counter in judgement.counters {
        commands.push(Command::Count(counter, 1));
    }
    if let Some(would) = judgement.would_have {
        commands.push(Command::ReportOnly(would));
    }
    match judgement.verdict {
        Verdict::Proceed(ticket) => Ok(ticket),
        Verdict::Reject {
            problem,
            detail,
            retry_after_s,
            upstream_status,
        } => {
            commands.push(Command::Answer(Answer::Problem {
                problem,
                detail,
                retry_after_s,
                upstream_status,
            }));
            Err(())
        }
        Verdict::Replay(response) => {
            commands.push(Command::Answer(Answer::Replay(response)));
            Err(())
        }
    }
}

/// Answers (or, in report mode, counts) a request `decision::decide` refused before the store.
pub fn refuse(judgement: Judgement) -> Step {
    let mut step = Step::with(Action::Continue);
    if apply(judgement, &mut step.commands).is_err() {
        step.action = Action::Pause;
    }
    step
}

/// Counters for what a store operation observed besides its answer.
pub fn report_counters<T>(report: &Report<T>) -> impl Iterator<Item = (Counter, u32)> {
    let reclaimed = report.reclaimed;
    [
        (Counter::IdemExpired, reclaimed.expired),
        (Counter::IdemLockExpired, reclaimed.lock_expired),
        (Counter::IdemCasRetries, report.cas_conflicts),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
}

/// Starts deduping a request whose key `decision::decide` found valid, hashed as its store
/// hashes (or with the store's error reading its seed). `peek`: ask the store before the body is known (cheap on
/// the shared-data store; a round trip on a remote one). `None` when the request is not deduped.
pub fn begin(
    idem: &Idempotency,
    hashing: Result<Hashing, StoreError>,
    head: &RequestHead<'_>,
    key: &[u8],
    end_of_stream: bool,
    peek: bool,
) -> (Option<KeyedStream>, Step) {
    let hashing = match hashing {
        Ok(hashing) => hashing,
        Err(e) => return (None, refuse(idem.rules.store_error(e))),
    };
    let mut stream = KeyedStream {
        hashing,
        identity: identity(hashing, head, key, idem.scope.scope_headers.len()),
        phase: Phase::AwaitingBody { seen: 0 },
        paused: false,
        ticket: None,
        recording: None,
        max_request_body_bytes: idem.config.max_request_body_bytes,
        max_response_body_bytes: idem.config.max_response_body_bytes,
    };
    let step = if end_of_stream {
        // No body: decided now.
        stream.claim(&[])
    } else if peek {
        // The headers are held while the store looks, so that a duplicate of a request still in
        // flight, or a request its full shard cannot take, never reaches the upstream at all.
        stream.phase = Phase::Peeking;
        stream.paused = true;
        Step {
            action: Action::Pause,
            commands: smallvec![Command::Store(StoreCall::Peek {
                identity: stream.identity,
            })],
        }
    } else {
        Step::with(Action::Continue)
    };
    (Some(stream), step)
}

impl KeyedStream {
    /// Whether a store answer is pending.
    pub fn waiting(&self) -> bool {
        matches!(self.phase, Phase::Peeking | Phase::Claiming)
    }

    /// Whether the upstream's answer is recorded (the request owns its key).
    pub fn records(&self) -> bool {
        self.ticket.is_some()
    }

    fn claim(&mut self, body: &[u8]) -> Step {
        self.phase = Phase::Claiming;
        self.paused = true;
        Step {
            action: Action::Pause,
            commands: smallvec![Command::Store(StoreCall::Claim {
                identity: self.identity,
                fingerprint: fingerprint(self.hashing, body),
            })],
        }
    }

    /// Where a judgement leaves the request: answered, or on its way upstream.
    fn judged(&mut self, judgement: Judgement) -> Step {
        self.judged_after(judgement, Commands::new())
    }

    /// `judged`, after `commands` (what the store observed on the way).
    fn judged_after(&mut self, judgement: Judgement, mut commands: Commands) -> Step {
        let action = match apply(judgement, &mut commands) {
            Ok(ticket) => {
                self.ticket = ticket;
                self.phase = Phase::Upstream;
                if std::mem::take(&mut self.paused) {
                    commands.push(Command::Resume);
                }
                Action::Continue
            }
            Err(()) => {
                self.phase = Phase::Answered;
                self.paused = false;
                Action::Pause
            }
        };
        Step { action, commands }
    }

    /// The store's answer to this stream's pending call. `rules` decide what it means.
    pub fn on_store(&mut self, idem: &Idempotency, answer: StoreAnswer) -> Step {
        match (self.phase, answer) {
            (Phase::Peeking, StoreAnswer::Peek(peek)) => {
                let early = match peek {
                    Ok(Peek::InFlight) => Some(idem.rules.claim(Claim::InFlight)),
                    Ok(Peek::Full { retry_after_s }) => {
                        Some(idem.rules.claim(Claim::Full { retry_after_s }))
                    }
                    // Decided with the body: a completed key needs its fingerprint, and a store
                    // that cannot look now may still take the claim.
                    Ok(Peek::Absent | Peek::Completed) | Err(_) => None,
                };
                match early {
                    Some(judgement) => self.judged(judgement),
                    None => {
                        self.phase = Phase::AwaitingBody { seen: 0 };
                        let mut step = Step::with(Action::Continue);
                        if std::mem::take(&mut self.paused) {
                            step.commands.push(Command::Resume);
                        }
                        step
                    }
                }
            }
            (Phase::Claiming, StoreAnswer::Claim(claim)) => {
                let mut observed = Commands::new();
                let judgement = match claim {
                    Ok(report) => {
                        observed
                            .extend(report_counters(&report).map(|(c, n)| Command::Count(c, n)));
                        idem.rules.claim(report.value)
                    }
                    Err(e) => idem.rules.store_error(e),
                };
                self.judged_after(judgement, observed)
            }
            // An answer nobody waits for (the stream moved on): nothing to do.
            _ => Step::with(self.action_now()),
        }
    }

    /// The action for a callback that changes nothing.
    fn action_now(&self) -> Action {
        match self.phase {
            Phase::Upstream => Action::Continue,
            _ => Action::Pause,
        }
    }

    /// The glue could not send the answer: the request passes through, undeduped.
    pub fn on_answer_failed(&mut self) {
        self.phase = Phase::Upstream;
        self.ticket = None;
    }

    /// A request body chunk; `size` is everything buffered so far (Envoy reports the buffered
    /// total while a filter buffers). `read_body(size)` reads the whole buffered body.
    pub fn on_request_body(
        &mut self,
        idem: &Idempotency,
        size: usize,
        end_of_stream: bool,
        read_body: impl FnOnce(usize) -> Result<Vec<u8>, StoreError>,
    ) -> Step {
        if !matches!(self.phase, Phase::AwaitingBody { .. }) {
            return Step::with(self.action_now());
        }
        self.phase = Phase::AwaitingBody { seen: size };
        if size > self.max_request_body_bytes {
            return self.judged(idem.rules.body_too_large(self.max_request_body_bytes));
        }
        if !end_of_stream {
            return Step::with(Action::Pause);
        }
        let body = read_body(size);
        self.claim_with(idem, body)
    }

    /// A request with trailers ends here rather than in a body callback.
    pub fn on_request_trailers(
        &mut self,
        idem: &Idempotency,
        read_body: impl FnOnce(usize) -> Result<Vec<u8>, StoreError>,
    ) -> Step {
        match self.phase {
            Phase::AwaitingBody { seen } => {
                let body = read_body(seen);
                self.claim_with(idem, body)
            }
            _ => Step::with(self.action_now()),
        }
    }

    /// The whole body, or an error: a fingerprint over less than the body would let another
    /// payload match, and replay, a stored response.
    fn claim_with(&mut self, idem: &Idempotency, body: Result<Vec<u8>, StoreError>) -> Step {
        match body {
            Ok(body) => self.claim(&body),
            Err(e) => self.judged(idem.rules.store_error(e)),
        }
    }

    /// Starts recording the upstream's answer to a request that owns its key. `headers` are the
    /// response's header pairs; `via_upstream` says whether the host reports that they came from
    /// the upstream (Envoy: `response.code_details` is `via_upstream`), read only when recording.
    pub fn on_response_headers<'a, I>(
        &mut self,
        status: Option<u16>,
        headers: I,
        via_upstream: impl FnOnce() -> bool,
    ) where
        I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    {
        if !self.records() {
            return;
        }
        let response = RecordedResponse::from_borrowed_headers(status.unwrap_or(0), headers);
        let unreplayable = if status.is_none() {
            Some(Unreplayable::NotStorable)
        } else if response.header_bytes() > MAX_STORED_HEADER_BYTES {
            Some(Unreplayable::TooLarge)
        } else {
            None
        };
        // Response headers from the upstream prove it executed the request, whatever happens to
        // the body later (Envoy says `via_upstream` now and rewrites it if the stream is cut).
        self.recording = Some(Recorded {
            response,
            unreplayable,
            from_upstream: via_upstream(),
        });
    }

    /// Whether the response body chunk of `size` bytes is wanted (else the glue need not read it).
    pub fn wants_response_body(&mut self, size: usize) -> bool {
        let max = self.max_response_body_bytes;
        let Some(recording) = self.recording.as_mut().filter(|r| r.unreplayable.is_none()) else {
            return false;
        };
        if recording.response.body.len().saturating_add(size) > max {
            recording.unreplayable = Some(Unreplayable::TooLarge);
            recording.response.body = Vec::new();
            return false;
        }
        true
    }

    /// A response body chunk the host handed over (`None`: it failed to, or short of `size`).
    /// Copied as it passes; the response is never paused.
    pub fn on_response_body(&mut self, size: usize, chunk: Option<Vec<u8>>) {
        let Some(recording) = self.recording.as_mut().filter(|r| r.unreplayable.is_none()) else {
            return;
        };
        match chunk {
            Some(chunk) if chunk.len() == size => recording.response.body.extend_from_slice(&chunk),
            // A chunk the host did not hand over whole: a replay would serve another body than
            // the upstream sent.
            _ => {
                recording.unreplayable = Some(Unreplayable::NotStorable);
                recording.response.body = Vec::new();
            }
        }
    }

    /// Trailers are not stored: a response that has them completes the key unreplayable, since
    /// a replay without them would be a different answer.
    pub fn on_response_trailers(&mut self) {
        if let Some(recording) = self.recording.as_mut() {
            recording
                .unreplayable
                .get_or_insert(Unreplayable::NotStorable);
            recording.response.body = Vec::new();
        }
    }

    /// The stream ended: what becomes of its claim (none when the request did not own its key).
    pub fn on_stream_end(
        &mut self,
        idem: &Idempotency,
        response_ended: bool,
        facts: &mut dyn StreamFacts,
    ) -> Option<Settlement> {
        let ticket = self.ticket.take()?;
        Some(settle(
            ticket,
            self.recording.take(),
            response_ended,
            idem.config.unknown_outcome,
            facts,
        ))
    }
}
