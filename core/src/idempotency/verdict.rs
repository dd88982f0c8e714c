//! Turns what the key check and the store said into what happens to the request, per `mode` and
//! `when_full`, and which counters record it. In report mode nothing is ever rejected or replayed:
//! the request proceeds and `report_only` counts what enforce mode would have done.

use super::index::Unreplayable;
use super::key::KeyError;
use super::problem::Problem;
use super::recorded::RecordedResponse;
use super::store::{Claim, StoreError, Ticket};
use crate::config::{IdempotencyMode, OnUnavailable, WhenFull};
use crate::counter::Counter;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the request upstream; with a ticket when it owns its key.
    Proceed(Option<Ticket>),
    Reject {
        problem: Problem,
        detail: String,
        retry_after_s: Option<u32>,
        /// The status the upstream sent for the key's request, when one is known.
        upstream_status: Option<u16>,
    },
    Replay(RecordedResponse),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub counters: Vec<Counter>,
    /// In report mode, what enforce mode would have answered (a problem type, or "replay").
    pub would_have: Option<&'static str>,
}

#[derive(Copy, Clone, Debug)]
pub struct Rules {
    pub mode: IdempotencyMode,
    pub when_full: WhenFull,
    /// A shared store's `on_unavailable` (`None` for the local store, whose errors follow
    /// `when_full`). `Local` never reaches the rules: the glue claims locally instead.
    pub on_unavailable: Option<OnUnavailable>,
}

impl Rules {
    fn enforce(&self, verdict: Verdict, mut counters: Vec<Counter>) -> Judgement {
        match (self.mode, &verdict) {
            (IdempotencyMode::Report, Verdict::Reject { .. } | Verdict::Replay(_)) => {
                counters.push(Counter::IdemReportOnly);
                let would_have = match &verdict {
                    Verdict::Reject { problem, .. } => problem.type_uri(),
                    _ => "replay",
                };
                Judgement {
                    verdict: Verdict::Proceed(None),
                    counters,
                    would_have: Some(would_have),
                }
            }
            _ => Judgement {
                verdict,
                counters,
                would_have: None,
            },
        }
    }

    pub fn key_error(&self, error: KeyError, header: &str, max_length: usize) -> Judgement {
        let (problem, counter, detail) = match error {
            KeyError::Missing => (
                Problem::KeyMissing,
                Counter::IdemMissing,
                format!("this request must carry an {header} header"),
            ),
            KeyError::Malformed(why) => (
                Problem::KeyMalformed,
                Counter::IdemMalformed,
                format!(
                    "{header} must be a quoted string or a token of 1 to {max_length} visible \
                     ASCII characters: {why}"
                ),
            ),
        };
        self.enforce(reject(problem, detail, None), vec![counter])
    }

    pub fn body_too_large(&self, limit: usize) -> Judgement {
        self.enforce(
            reject(
                Problem::BodyTooLarge,
                format!("a keyed request body may be at most {limit} bytes"),
                None,
            ),
            vec![Counter::IdemBodyTooLarge],
        )
    }

    /// The store could not take the claim (full, contended or failing): `when_full` decides.
    fn store_cannot_claim(
        &self,
        problem: Problem,
        detail: &str,
        retry_after_s: u32,
        counter: Counter,
    ) -> Judgement {
        match self.when_full {
            WhenFull::Reject => self.enforce(
                reject(problem, detail.to_string(), Some(retry_after_s)),
                vec![counter],
            ),
            WhenFull::PassThrough => Judgement {
                verdict: Verdict::Proceed(None),
                counters: vec![counter],
                would_have: None,
            },
        }
    }

    pub fn store_error(&self, _error: StoreError) -> Judgement {
        let reject = || {
            self.enforce(
                reject(
                    Problem::StoreUnavailable,
                    "the idempotency store is unavailable; retry later".to_string(),
                    Some(1),
                ),
                vec![Counter::IdemStoreErrors],
            )
        };
        match self.on_unavailable {
            None => self.store_cannot_claim(
                Problem::StoreUnavailable,
                "the idempotency store is unavailable; retry later",
                1,
                Counter::IdemStoreErrors,
            ),
            Some(OnUnavailable::Reject) => {
                let mut j = reject();
                j.counters.push(Counter::StoreFallbackReject);
                j
            }
            Some(OnUnavailable::Pass | OnUnavailable::Local) => Judgement {
                verdict: Verdict::Proceed(None),
                counters: vec![Counter::IdemStoreErrors, Counter::StoreFallbackPass],
                would_have: None,
            },
        }
    }

    pub fn claim(&self, claim: Claim) -> Judgement {
        match claim {
            Claim::Claimed(ticket) => Judgement {
                verdict: Verdict::Proceed(Some(ticket)),
                counters: vec![Counter::IdemClaimed],
                would_have: None,
            },
            Claim::InFlight => self.enforce(
                reject(
                    Problem::InFlight,
                    "a request with this key is still being processed; retry after it completes"
                        .to_string(),
                    Some(1),
                ),
                vec![Counter::IdemInFlightConflicts],
            ),
            Claim::PayloadMismatch => self.enforce(
                reject(
                    Problem::PayloadMismatch,
                    "this key was used with a different request body; use a new key".to_string(),
                    None,
                ),
                vec![Counter::IdemPayloadMismatches],
            ),
            Claim::Replay(response) => {
                self.enforce(Verdict::Replay(response), vec![Counter::IdemReplays])
            }
            Claim::NotReplayable { status, reason } => {
                let (problem, detail) = not_replayable(status, reason);
                let verdict = Verdict::Reject {
                    problem,
                    detail,
                    retry_after_s: None,
                    upstream_status: (status != 0).then_some(status),
                };
                self.enforce(verdict, vec![Counter::IdemNotReplayable])
            }
            Claim::Full { retry_after_s } => self.store_cannot_claim(
                Problem::StoreFull,
                "the idempotency store is full; retry later",
                retry_after_s,
                Counter::IdemStoreFull,
            ),
            Claim::Busy => self.store_cannot_claim(
                Problem::StoreBusy,
                "the idempotency store is busy; retry shortly",
                1,
                Counter::IdemStoreContention,
            ),
        }
    }
}

fn reject(problem: Problem, detail: String, retry_after_s: Option<u32>) -> Verdict {
    Verdict::Reject {
        problem,
        detail,
        retry_after_s,
        upstream_status: None,
    }
}

/// What a key without a replayable response answers: the problem of its reason, and a detail
/// that names only what the upstream actually sent (status 0: no upstream response came back)
/// and says what the client can do. No `Retry-After`: the same key gets this answer until it
/// expires.
fn not_replayable(status: u16, reason: Unreplayable) -> (Problem, String) {
    const NEVER_AGAIN: &str = "it will not be executed again under this key";
    const FIND_OUT: &str = "check the resource's state (e.g. with a GET) before sending the \
                            request again under a new key";
    let answered = |what: &str| format!("the upstream answered {status}, {what}");
    match reason {
        Unreplayable::TooLarge => (
            Problem::ResponseNotReplayable,
            format!(
                "the request with this key was executed ({}); {NEVER_AGAIN}",
                answered("but the response was too large to keep")
            ),
        ),
        Unreplayable::NotStorable => (
            Problem::ResponseNotReplayable,
            format!(
                "the request with this key was executed ({}); {NEVER_AGAIN}",
                answered("but the response could not be kept (trailers, or a body the proxy could not copy)")
            ),
        ),
        Unreplayable::CutOff => (
            Problem::ResponseCutOff,
            format!(
                "the request with this key was executed, but {} was cut off before its end and \
                 not kept; {NEVER_AGAIN}; {FIND_OUT}",
                if status == 0 {
                    "the upstream's response".to_string()
                } else {
                    format!("the upstream's response (status {status})")
                }
            ),
        ),
        Unreplayable::OutcomeUnknown => (
            Problem::OutcomeUnknown,
            format!(
                "the request with this key reached the upstream, but no response came back (the \
                 connection was reset, or the attempt timed out, after the request was sent), so \
                 whether it was applied is unknown; {NEVER_AGAIN}; {FIND_OUT}"
            ),
        ),
        Unreplayable::ClientLeft if status != 0 => (
            Problem::ClientLeft,
            format!(
                "the client disconnected during the response to the request with this key \
                 ({}); {NEVER_AGAIN}; {FIND_OUT}",
                answered("and the response was not kept")
            ),
        ),
        Unreplayable::ClientLeft => (
            Problem::ClientLeft,
            format!(
                "the client disconnected while the upstream had the request with this key, so \
                 whether it was applied is unknown; {NEVER_AGAIN}; {FIND_OUT}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENFORCE: Rules = Rules {
        mode: IdempotencyMode::Enforce,
        when_full: WhenFull::Reject,
        on_unavailable: None,
    };
    const REPORT: Rules = Rules {
        mode: IdempotencyMode::Report,
        when_full: WhenFull::Reject,
        on_unavailable: None,
    };

    fn problem(j: &Judgement) -> Option<(Problem, Option<u32>)> {
        match &j.verdict {
            Verdict::Reject {
                problem,
                retry_after_s,
                ..
            } => Some((*problem, *retry_after_s)),
            _ => None,
        }
    }

    #[test]
    fn enforce_mode_answers_each_case() {
        let j = ENFORCE.key_error(KeyError::Missing, "Idempotency-Key", 255);
        assert_eq!(problem(&j), Some((Problem::KeyMissing, None)));
        assert_eq!(j.counters, [Counter::IdemMissing]);
        let j = ENFORCE.key_error(KeyError::Malformed("x"), "Idempotency-Key", 255);
        assert_eq!(problem(&j), Some((Problem::KeyMalformed, None)));
        assert_eq!(
            problem(&ENFORCE.claim(Claim::InFlight)),
            Some((Problem::InFlight, Some(1)))
        );
        assert_eq!(
            problem(&ENFORCE.claim(Claim::PayloadMismatch)),
            Some((Problem::PayloadMismatch, None))
        );
        assert_eq!(
            problem(&ENFORCE.claim(Claim::Full { retry_after_s: 7 })),
            Some((Problem::StoreFull, Some(7)))
        );
        assert_eq!(
            problem(&ENFORCE.claim(Claim::Busy)),
            Some((Problem::StoreBusy, Some(1)))
        );
        assert_eq!(
            problem(&ENFORCE.body_too_large(10)),
            Some((Problem::BodyTooLarge, None))
        );
        let replay = ENFORCE.claim(Claim::Replay(RecordedResponse::default()));
        assert!(matches!(replay.verdict, Verdict::Replay(_)));
        assert_eq!(replay.counters, [Counter::IdemReplays]);
    }

    #[test]
    fn report_mode_never_interferes_but_counts() {
        for j in [
            REPORT.key_error(KeyError::Missing, "Idempotency-Key", 255),
            REPORT.claim(Claim::InFlight),
            REPORT.claim(Claim::PayloadMismatch),
            REPORT.claim(Claim::Replay(RecordedResponse::default())),
            REPORT.claim(Claim::Full { retry_after_s: 1 }),
            REPORT.body_too_large(1),
        ] {
            assert_eq!(j.verdict, Verdict::Proceed(None));
            assert_eq!(j.counters.last(), Some(&Counter::IdemReportOnly), "{j:?}");
            assert!(j.would_have.is_some());
        }
    }

    #[test]
    fn pass_through_when_full_sends_unprotected() {
        let rules = Rules {
            mode: IdempotencyMode::Enforce,
            when_full: WhenFull::PassThrough,
            on_unavailable: None,
        };
        let j = rules.claim(Claim::Full { retry_after_s: 3 });
        assert_eq!(j.verdict, Verdict::Proceed(None));
        assert_eq!(j.counters, [Counter::IdemStoreFull]);
        assert_eq!(rules.claim(Claim::Busy).verdict, Verdict::Proceed(None));
        assert_eq!(
            rules.store_error(StoreError::NotInitialized).verdict,
            Verdict::Proceed(None)
        );
        // Conflicts are not capacity problems: still rejected.
        assert!(problem(&rules.claim(Claim::InFlight)).is_some());
    }
}
