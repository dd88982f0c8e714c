//! What becomes of a claimed key when its stream ends: the one decision that says whether a keyed
//! request may run upstream again. Store the upstream's response (a retry is replayed), complete
//! the key without a replayable copy (a retry gets a 409 that says why, never a second
//! execution), or release it (a retry runs).
//!
//! The rule: a key is released only when the request provably never reached the upstream (a
//! connect failure, an overflowing circuit breaker, no healthy host, a refused stream, or an
//! answer given before the router forwarded anything), or when the upstream itself asked for a
//! retry later (429, 503). Every other failure after the request was sent may have applied it,
//! so the key completes unreplayable; `unknown_outcome: "release"` opts out of that for the
//! failures whose outcome is unknown, with the risk of a second execution.

use crate::config::UnknownOutcome;
use crate::counter::Counter;
use crate::idempotency::index::Unreplayable;
use crate::idempotency::recorded::RecordedResponse;
use crate::idempotency::store::{Finish, Report, StoreError, Ticket};
use crate::outcome::{self, flags};

/// `response.code_details` of a response the upstream sent (anything else the proxy made up).
pub const VIA_UPSTREAM: &[u8] = b"via_upstream";

/// `response.code_details` of an HTTP/2 or HTTP/3 upstream that refused the stream
/// (REFUSED_STREAM): the upstream did not process it (RFC 9113 §8.7).
const REFUSED_STREAM_DETAILS: &[u8] = b"remote_refused_stream_reset";

/// Upstream answers that ask the client to retry later (429 Too Many Requests, 503 Service
/// Unavailable): the key is released, not completed.
pub const RETRY_LATER: [u16; 2] = [429, 503];

/// The upstream's answer as it passed the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub response: RecordedResponse,
    /// Why the response cannot be replayed, once known: too large, or not storable (trailers, a
    /// chunk the host did not hand over).
    pub unreplayable: Option<Unreplayable>,
    /// The response headers came from the upstream, so the request was executed.
    pub from_upstream: bool,
}

/// What the host reports about how the stream ended, read only when the decision needs it.
pub trait StreamFacts {
    /// `response.code_details` (Envoy: `via_upstream`, `upstream_reset_before_response_started…`).
    fn code_details(&mut self) -> Option<Vec<u8>>;
    /// `response.flags` (Envoy's response-flag bits).
    fn flags(&mut self) -> Option<u64>;
    /// Whether an upstream request was made (`upstream.address` is set).
    fn upstream_address(&mut self) -> bool;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Store the response: a retry of the key is answered with it.
    Store {
        ticket: Ticket,
        response: RecordedResponse,
    },
    /// The request ran (or may have): complete the key without a replayable copy. `status` is
    /// the upstream's (0: no upstream response came back).
    CompleteUnreplayable {
        ticket: Ticket,
        status: u16,
        reason: Unreplayable,
    },
    /// The upstream did not get it, or asked to retry later: a retry runs.
    Release { ticket: Ticket },
}

impl Settlement {
    pub fn ticket(&self) -> &Ticket {
        match self {
            Settlement::Store { ticket, .. }
            | Settlement::CompleteUnreplayable { ticket, .. }
            | Settlement::Release { ticket } => ticket,
        }
    }
}

/// Whether the host says the client left (its connection closed, or it reset its stream).
fn client_left(facts: &mut dyn StreamFacts) -> bool {
    facts.flags().is_some_and(|f| f & flags::CLIENT_LEFT != 0)
        || facts
            .code_details()
            .is_some_and(|d| outcome::client_left_details(&d))
}

/// Decides what becomes of the claim (see the module docs). At `on_log` Envoy's code details
/// describe how the stream ended (a client that left after the response passed says
/// `downstream_remote_disconnect`); what the response headers said is in the recording, and
/// when that says "from the upstream" a complete response needs no property at all.
pub fn settle(
    ticket: Ticket,
    recording: Option<Recorded>,
    response_ended: bool,
    unknown_outcome: UnknownOutcome,
    facts: &mut dyn StreamFacts,
) -> Settlement {
    let complete = |status: u16, reason| Settlement::CompleteUnreplayable {
        ticket,
        status,
        reason,
    };
    match recording {
        Some(r) if r.from_upstream => {
            let status = r.response.status;
            // "Try again later" from the upstream: storing it would answer every retry of this
            // key with the same refusal for the whole TTL.
            if RETRY_LATER.contains(&status) {
                return Settlement::Release { ticket };
            }
            if !response_ended {
                // It ran; its answer was cut, by the client leaving or on the upstream's side.
                let why = if client_left(facts) {
                    Unreplayable::ClientLeft
                } else {
                    Unreplayable::CutOff
                };
                return complete(status, why);
            }
            match r.unreplayable {
                None => Settlement::Store {
                    ticket,
                    response: r.response,
                },
                Some(why) => complete(status, why),
            }
        }
        // No response from the upstream passed the filter (the proxy's own reply may have).
        _ => {
            if never_reached_the_upstream(facts) {
                return Settlement::Release { ticket };
            }
            // The upstream answered after all (headers it sent never reached the filter's
            // response callbacks): it ran, with an answer nobody saw.
            let answered = facts.code_details().is_some_and(|d| d == VIA_UPSTREAM);
            let why = if client_left(facts) {
                Unreplayable::ClientLeft
            } else if answered {
                Unreplayable::CutOff
            } else {
                Unreplayable::OutcomeUnknown
            };
            match unknown_outcome {
                UnknownOutcome::Release if !answered => Settlement::Release { ticket },
                _ => complete(0, why),
            }
        }
    }
}

/// Whether the request provably never reached the upstream: no upstream request was made, a
/// flag proves it was never sent, or the upstream refused the stream.
fn never_reached_the_upstream(facts: &mut dyn StreamFacts) -> bool {
    if facts
        .code_details()
        .is_some_and(|d| contains(&d, REFUSED_STREAM_DETAILS))
    {
        return true;
    }
    let flags = facts.flags().unwrap_or(0);
    outcome::proves_request_unsent(flags) || !facts.upstream_address()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The counters for what the store made of a settlement.
pub fn settled_counters(result: &Result<Report<Finish>, StoreError>) -> Vec<(Counter, u32)> {
    match result {
        Ok(report) => {
            let mut counters: Vec<(Counter, u32)> = super::report_counters(report).collect();
            counters.push((
                match report.value {
                    Finish::Stored | Finish::StoredNotReplayable => Counter::IdemStored,
                    Finish::Released => Counter::IdemReleased,
                    Finish::Lost => Counter::IdemLost,
                    Finish::Busy => Counter::IdemStoreContention,
                },
                1,
            ));
            counters
        }
        Err(_) => vec![(Counter::IdemStoreErrors, 1)],
    }
}
