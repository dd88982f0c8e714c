//! Every transition of the keyed stream, natively: the store's answers now and later, the
//! answers the filter gives itself, and at stream end the one question that matters: may this
//! request run upstream again? (Release: yes. Store / complete unreplayable: never.)

use super::settle::RETRY_LATER;
use super::*;
use crate::config::{Config, UnknownOutcome};
use crate::idempotency::index::{Reclaimed, Unreplayable};
use crate::idempotency::scope::Hashing;
use crate::idempotency::store::Place;
use crate::outcome::flags;

const SEED: [u8; 16] = [7; 16];
const KEY: &[u8] = b"k-1";

fn idem(json: &str) -> Idempotency {
    let config = Config::parse(json.as_bytes()).unwrap();
    Idempotency::new(config.idempotency, None)
}

fn enforce() -> Idempotency {
    idem(r#"{"idempotency": {"max_request_body_bytes": 100, "max_response_body_bytes": 10}}"#)
}

fn head() -> RequestHead<'static> {
    RequestHead {
        method: b"POST",
        path: b"/orders",
        authority: b"api.example",
        ..RequestHead::default()
    }
}

fn ticket() -> Ticket {
    Ticket {
        identity: [1; 16],
        fingerprint: [2; 16],
        owner: 42,
        slot: 3,
        lock_deadline_ms: 30_000,
        place: Place::Local,
    }
}

fn report<T>(value: T) -> Report<T> {
    Report {
        value,
        reclaimed: Reclaimed::default(),
        cas_conflicts: 0,
    }
}

fn body_ok(expected: usize) -> impl FnOnce(usize) -> Result<Vec<u8>, StoreError> {
    move |size| {
        assert_eq!(size, expected);
        Ok(vec![b'x'; size])
    }
}

fn counts(step: &Step) -> Vec<Counter> {
    step.commands
        .iter()
        .filter_map(|c| match c {
            Command::Count(counter, _) => Some(*counter),
            _ => None,
        })
        .collect()
}

fn answer(step: &Step) -> Option<&Answer> {
    step.commands.iter().find_map(|c| match c {
        Command::Answer(a) => Some(a),
        _ => None,
    })
}

fn problem(step: &Step) -> Option<(Problem, Option<u32>)> {
    match answer(step) {
        Some(Answer::Problem {
            problem,
            retry_after_s,
            ..
        }) => Some((*problem, *retry_after_s)),
        _ => None,
    }
}

/// A stream with a body, past its headers (no peek): the state before the body arrives.
fn awaiting_body(idem: &Idempotency) -> KeyedStream {
    let (stream, step) = begin(idem, Ok(Hashing::Seeded(SEED)), &head(), KEY, false, false);
    assert_eq!(step, Step::with(Action::Continue));
    stream.unwrap()
}

/// A stream that claimed its key (the store answered at once).
fn claimed(idem: &Idempotency) -> KeyedStream {
    let mut s = awaiting_body(idem);
    let step = s.on_request_body(idem, 5, true, body_ok(5));
    assert!(matches!(step.store_call(), Some(StoreCall::Claim { .. })));
    let step = s.on_store(
        idem,
        StoreAnswer::Claim(Ok(report(Claim::Claimed(ticket())))),
    );
    assert_eq!(step.action, Action::Continue);
    assert_eq!(counts(&step), [Counter::IdemClaimed]);
    assert!(step.commands.contains(&Command::Resume));
    assert!(s.records());
    s
}

/// A fake host that records which end-of-stream facts the machine asked for.
#[derive(Default)]
struct Facts {
    details: Option<&'static [u8]>,
    flags: Option<u64>,
    upstream_address: bool,
    asked: Vec<&'static str>,
}

impl Facts {
    /// Each fact is one host read (the glue caches what it read).
    fn ask(&mut self, what: &'static str) {
        if !self.asked.contains(&what) {
            self.asked.push(what);
        }
    }
}

impl StreamFacts for Facts {
    fn code_details(&mut self) -> Option<Vec<u8>> {
        self.ask("code_details");
        self.details.map(<[u8]>::to_vec)
    }
    fn flags(&mut self) -> Option<u64> {
        self.ask("flags");
        self.flags
    }
    fn upstream_address(&mut self) -> bool {
        self.ask("upstream_address");
        self.upstream_address
    }
}

fn response_headers(s: &mut KeyedStream, status: u16, from_upstream: bool) {
    let headers: [(&[u8], &[u8]); 3] = [
        (b":status", b"201"),
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
    ];
    s.on_response_headers(Some(status), headers.into_iter(), || from_upstream);
}

fn response_chunk(s: &mut KeyedStream, chunk: &[u8]) {
    if s.wants_response_body(chunk.len()) {
        s.on_response_body(chunk.len(), Some(chunk.to_vec()));
    }
}

#[test]
fn no_body_claims_at_the_headers_and_waits_for_the_store() {
    let idem = enforce();
    let (s, step) = begin(&idem, Ok(Hashing::Seeded(SEED)), &head(), KEY, true, true);
    let mut s = s.unwrap();
    assert_eq!(step.action, Action::Pause);
    let Some(StoreCall::Claim { identity, .. }) = step.store_call() else {
        panic!("{step:?}");
    };
    assert_eq!(*identity, s.identity);
    assert!(s.waiting());
    // The store answers in a later callback: the stream is resumed.
    let step = s.on_store(
        &idem,
        StoreAnswer::Claim(Ok(report(Claim::Claimed(ticket())))),
    );
    assert_eq!(
        step.commands.as_slice(),
        [Command::Count(Counter::IdemClaimed, 1), Command::Resume]
    );
    assert!(!s.waiting() && s.records());
}

#[test]
fn with_a_body_the_headers_wait_for_a_peek_that_answers_what_needs_no_body() {
    let idem = enforce();
    type Case = (Result<Peek, StoreError>, Option<(Problem, Option<u32>)>);
    let cases: [Case; 5] = [
        (Ok(Peek::InFlight), Some((Problem::InFlight, Some(1)))),
        (
            Ok(Peek::Full { retry_after_s: 7 }),
            Some((Problem::StoreFull, Some(7))),
        ),
        (Ok(Peek::Absent), None),
        (Ok(Peek::Completed), None),
        (Err(StoreError::NotInitialized), None),
    ];
    for (peek, answered) in cases {
        let (s, step) = begin(&idem, Ok(Hashing::Seeded(SEED)), &head(), KEY, false, true);
        let mut s = s.unwrap();
        assert_eq!(step.action, Action::Pause, "the headers wait for the peek");
        assert!(matches!(step.store_call(), Some(StoreCall::Peek { .. })));
        let step = s.on_store(&idem, StoreAnswer::Peek(peek));
        assert_eq!(problem(&step), answered, "{peek:?}");
        if answered.is_some() {
            assert_eq!(step.action, Action::Pause);
            assert!(!step.commands.contains(&Command::Resume));
            // Nothing more happens to an answered stream.
            let later = s.on_request_body(&idem, 3, true, |_| panic!("not read"));
            assert_eq!(later, Step::with(Action::Pause));
            assert!(s
                .on_stream_end(&idem, true, &mut Facts::default())
                .is_none());
        } else {
            assert_eq!(step.commands.as_slice(), [Command::Resume], "{peek:?}");
            assert_eq!(step.action, Action::Continue);
            let step = s.on_request_body(&idem, 3, true, body_ok(3));
            assert!(matches!(step.store_call(), Some(StoreCall::Claim { .. })));
        }
    }
}

#[test]
fn the_body_is_buffered_then_fingerprinted_whole() {
    let idem = enforce();
    let mut s = awaiting_body(&idem);
    let step = s.on_request_body(&idem, 40, false, |_| panic!("not read before the end"));
    assert_eq!(step, Step::with(Action::Pause), "buffered");
    let step = s.on_request_body(&idem, 90, true, body_ok(90));
    let Some(StoreCall::Claim { fingerprint: a, .. }) = step.store_call().cloned() else {
        panic!("{step:?}");
    };
    // Another body, another fingerprint (the store answers 422 on a reuse with it).
    let mut t = awaiting_body(&idem);
    let step = t.on_request_body(&idem, 91, true, body_ok(91));
    let Some(StoreCall::Claim { fingerprint: b, .. }) = step.store_call().cloned() else {
        panic!("{step:?}");
    };
    assert_ne!(a, b);
    // Trailers end a request whose last body callback did not say so.
    let mut u = awaiting_body(&idem);
    u.on_request_body(&idem, 90, false, |_| panic!("not read"));
    let step = u.on_request_trailers(&idem, body_ok(90));
    assert_eq!(
        step.store_call().cloned().map(|c| match c {
            StoreCall::Claim { fingerprint, .. } => fingerprint,
            _ => panic!(),
        }),
        Some(a)
    );
}

#[test]
fn a_body_over_the_limit_or_unreadable_is_answered_not_claimed() {
    let idem = enforce();
    let mut s = awaiting_body(&idem);
    let step = s.on_request_body(&idem, 101, false, |_| panic!("not read"));
    assert_eq!(problem(&step), Some((Problem::BodyTooLarge, None)));
    assert_eq!(counts(&step), [Counter::IdemBodyTooLarge]);
    assert_eq!(step.action, Action::Pause);
    // A host that hands over less than the body: never fingerprint a part of it.
    let mut s = awaiting_body(&idem);
    let step = s.on_request_body(&idem, 5, true, |_| {
        Err(StoreError::Unavailable("NOT_FOUND"))
    });
    assert_eq!(problem(&step), Some((Problem::StoreUnavailable, Some(1))));
    assert_eq!(counts(&step), [Counter::IdemStoreErrors]);
    assert!(step.store_call().is_none());
}

#[test]
fn each_claim_answer_becomes_its_reply() {
    let idem = enforce();
    let stored = RecordedResponse {
        status: 201,
        headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
        body: b"made".to_vec(),
    };
    type Case = (
        Result<Report<Claim>, StoreError>,
        Option<(Problem, Option<u32>)>,
        Counter,
    );
    let cases: [Case; 7] = [
        (
            Ok(report(Claim::InFlight)),
            Some((Problem::InFlight, Some(1))),
            Counter::IdemInFlightConflicts,
        ),
        (
            Ok(report(Claim::PayloadMismatch)),
            Some((Problem::PayloadMismatch, None)),
            Counter::IdemPayloadMismatches,
        ),
        (
            Ok(report(Claim::NotReplayable {
                status: 201,
                reason: Unreplayable::TooLarge,
            })),
            Some((Problem::ResponseNotReplayable, None)),
            Counter::IdemNotReplayable,
        ),
        (
            Ok(report(Claim::Full { retry_after_s: 9 })),
            Some((Problem::StoreFull, Some(9))),
            Counter::IdemStoreFull,
        ),
        (
            Ok(report(Claim::Busy)),
            Some((Problem::StoreBusy, Some(1))),
            Counter::IdemStoreContention,
        ),
        (
            Err(StoreError::Unavailable("UNIMPLEMENTED")),
            Some((Problem::StoreUnavailable, Some(1))),
            Counter::IdemStoreErrors,
        ),
        (
            Ok(report(Claim::Replay(stored.clone()))),
            None,
            Counter::IdemReplays,
        ),
    ];
    for (claim, reply, counter) in cases {
        let mut s = awaiting_body(&idem);
        s.on_request_body(&idem, 5, true, body_ok(5));
        let step = s.on_store(&idem, StoreAnswer::Claim(claim.clone()));
        assert_eq!(step.action, Action::Pause, "{claim:?}");
        assert_eq!(counts(&step), [counter], "{claim:?}");
        match reply {
            Some(p) => assert_eq!(problem(&step), Some(p), "{claim:?}"),
            None => assert_eq!(answer(&step), Some(&Answer::Replay(stored.clone()))),
        }
        assert!(!s.records(), "an answered request owns nothing");
        assert!(s
            .on_stream_end(&idem, true, &mut Facts::default())
            .is_none());
    }
}

#[test]
fn what_the_store_reclaimed_on_the_way_is_counted() {
    let idem = enforce();
    let mut s = awaiting_body(&idem);
    s.on_request_body(&idem, 5, true, body_ok(5));
    let answer = Report {
        value: Claim::Claimed(ticket()),
        reclaimed: Reclaimed {
            expired: 2,
            lock_expired: 1,
        },
        cas_conflicts: 3,
    };
    let step = s.on_store(&idem, StoreAnswer::Claim(Ok(answer)));
    assert_eq!(
        step.commands.as_slice(),
        [
            Command::Count(Counter::IdemExpired, 2),
            Command::Count(Counter::IdemLockExpired, 1),
            Command::Count(Counter::IdemCasRetries, 3),
            Command::Count(Counter::IdemClaimed, 1),
            Command::Resume,
        ]
    );
}

#[test]
fn when_full_pass_through_sends_unprotected_and_owns_nothing() {
    let idem = idem(r#"{"idempotency": {"when_full": "pass_through"}}"#);
    for claim in [
        Ok(report(Claim::Full { retry_after_s: 1 })),
        Ok(report(Claim::Busy)),
        Err(StoreError::NotInitialized),
    ] {
        let mut s = awaiting_body(&idem);
        s.on_request_body(&idem, 5, true, body_ok(5));
        let step = s.on_store(&idem, StoreAnswer::Claim(claim));
        assert_eq!(step.action, Action::Continue);
        assert!(answer(&step).is_none());
        assert!(!s.records());
    }
}

#[test]
fn report_mode_never_answers_but_says_what_it_would_have() {
    let idem = idem(r#"{"idempotency": {"mode": "report"}}"#);
    let mut s = awaiting_body(&idem);
    s.on_request_body(&idem, 5, true, body_ok(5));
    let step = s.on_store(
        &idem,
        StoreAnswer::Claim(Ok(report(Claim::PayloadMismatch))),
    );
    assert_eq!(step.action, Action::Continue);
    assert!(answer(&step).is_none());
    assert!(step
        .commands
        .contains(&Command::ReportOnly(Problem::PayloadMismatch.type_uri())));
    assert!(step
        .commands
        .contains(&Command::Count(Counter::IdemReportOnly, 1)));
}

#[test]
fn a_refusal_before_the_store_answers_or_reports() {
    let step = refuse(enforce().rules.body_too_large(1));
    assert_eq!(step.action, Action::Pause);
    assert_eq!(problem(&step), Some((Problem::BodyTooLarge, None)));
    let reporting = idem(r#"{"idempotency": {"mode": "report"}}"#);
    let step = refuse(reporting.rules.body_too_large(1));
    assert_eq!(step.action, Action::Continue);
    assert!(answer(&step).is_none());
}

#[test]
fn a_seed_the_store_cannot_give_is_a_store_error() {
    let idem = enforce();
    let (s, step) = begin(
        &idem,
        Err(StoreError::NotInitialized),
        &head(),
        KEY,
        true,
        true,
    );
    assert!(s.is_none());
    assert_eq!(problem(&step), Some((Problem::StoreUnavailable, Some(1))));
}

#[test]
fn an_answer_the_host_could_not_send_lets_the_request_through_unclaimed() {
    let idem = enforce();
    let mut s = awaiting_body(&idem);
    s.on_request_body(&idem, 5, true, body_ok(5));
    s.on_store(&idem, StoreAnswer::Claim(Ok(report(Claim::InFlight))));
    s.on_answer_failed();
    assert_eq!(
        s.on_request_body(&idem, 5, true, |_| panic!("not read")),
        Step::with(Action::Continue)
    );
    assert!(s
        .on_stream_end(&idem, true, &mut Facts::default())
        .is_none());
}

#[test]
fn an_answer_nobody_waits_for_changes_nothing() {
    let idem = enforce();
    let mut s = claimed(&idem);
    let step = s.on_store(&idem, StoreAnswer::Peek(Ok(Peek::InFlight)));
    assert_eq!(step, Step::with(Action::Continue));
    assert!(s.records());
}

#[test]
fn only_the_owner_records_and_it_keeps_only_what_fits() {
    let idem = enforce();
    // Not the owner (answered, or passed through): nothing recorded, nothing read.
    let mut s = awaiting_body(&idem);
    response_headers(&mut s, 201, true);
    assert!(!s.wants_response_body(3));
    // The owner keeps the end-to-end headers and the body up to max_response_body_bytes (10).
    let mut s = claimed(&idem);
    response_headers(&mut s, 201, true);
    response_chunk(&mut s, b"hello");
    response_chunk(&mut s, b"world");
    let Some(Settlement::Store { response, .. }) =
        s.on_stream_end(&idem, true, &mut Facts::default())
    else {
        panic!()
    };
    assert_eq!(response.body, b"helloworld");
    assert_eq!(
        response.headers,
        [
            (b"content-type".to_vec(), b"text/plain".to_vec()),
            (b"set-cookie".to_vec(), b"a=1".to_vec())
        ]
    );
    // One byte more and it is not replayable (and later chunks are not even read).
    let mut s = claimed(&idem);
    response_headers(&mut s, 201, true);
    response_chunk(&mut s, b"hello");
    assert!(!s.wants_response_body(6));
    assert!(!s.wants_response_body(1));
    assert!(matches!(
        s.on_stream_end(&idem, true, &mut Facts::default()),
        Some(Settlement::CompleteUnreplayable { status: 201, .. })
    ));
}

#[test]
fn a_chunk_the_host_did_not_hand_over_or_trailers_make_it_unreplayable() {
    let idem = enforce();
    let mut s = claimed(&idem);
    response_headers(&mut s, 200, true);
    assert!(s.wants_response_body(4));
    s.on_response_body(4, Some(b"ab".to_vec()));
    assert!(matches!(
        s.on_stream_end(&idem, true, &mut Facts::default()),
        Some(Settlement::CompleteUnreplayable { status: 200, .. })
    ));
    let mut s = claimed(&idem);
    response_headers(&mut s, 200, true);
    response_chunk(&mut s, b"ab");
    s.on_response_trailers();
    assert!(matches!(
        s.on_stream_end(&idem, true, &mut Facts::default()),
        Some(Settlement::CompleteUnreplayable { status: 200, .. })
    ));
}

/// How a stream that claimed its key ended, and what the host says about it.
struct End {
    name: &'static str,
    /// (status, came from the upstream) of the response headers that passed, if any.
    response: Option<(u16, bool)>,
    response_ended: bool,
    details: Option<&'static [u8]>,
    flags: Option<u64>,
    upstream_address: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Becomes {
    Stored,
    /// Completed without a replayable copy: a re-send gets 409, never a second execution.
    NeverAgain(u16, Unreplayable),
    Released,
}

const DC: u64 = flags::DOWNSTREAM_CONNECTION_TERMINATION;
const UC: u64 = flags::UPSTREAM_CONNECTION_TERMINATION;
const UF: u64 = flags::UPSTREAM_CONNECTION_FAILURE;
const UR: u64 = flags::UPSTREAM_REMOTE_RESET;
const UT: u64 = flags::UPSTREAM_REQUEST_TIMEOUT;
const UH: u64 = flags::NO_HEALTHY_UPSTREAM;

/// The ends of a claimed stream, each with what it becomes under `unknown_outcome` release and
/// complete (the default): the table that says whether a keyed POST may run twice. Released is
/// the only "yes", and under the default it is reached only when the request provably never
/// reached the upstream, or the upstream asked for a retry later.
fn ends() -> Vec<(End, Becomes, Becomes)> {
    use Becomes::*;
    use Unreplayable::*;
    let end = |name, response, response_ended, details, flags, upstream_address| End {
        name,
        response,
        response_ended,
        details,
        flags,
        upstream_address,
    };
    let upstream_reset: &[u8] = b"upstream_reset_before_response_started{connection_termination}";
    vec![
        (
            end(
                "completed by the upstream",
                Some((201, true)),
                true,
                Some(b"via_upstream"),
                Some(0),
                true,
            ),
            Stored,
            Stored,
        ),
        (
            end(
                "the upstream asked to retry later (503)",
                Some((503, true)),
                true,
                Some(b"via_upstream"),
                Some(0),
                true,
            ),
            Released,
            Released,
        ),
        (
            end(
                "the upstream asked to retry later (429)",
                Some((429, true)),
                true,
                Some(b"via_upstream"),
                Some(0),
                true,
            ),
            Released,
            Released,
        ),
        (
            end(
                "client left after the whole response passed",
                Some((201, true)),
                true,
                Some(b"downstream_remote_disconnect"),
                Some(DC),
                true,
            ),
            Stored,
            Stored,
        ),
        (
            end(
                "client abort during the response",
                Some((201, true)),
                false,
                Some(b"downstream_remote_disconnect"),
                Some(DC),
                true,
            ),
            NeverAgain(201, ClientLeft),
            NeverAgain(201, ClientLeft),
        ),
        (
            end(
                "truncated by the upstream",
                Some((200, true)),
                false,
                Some(b"upstream_reset_after_response_started{remote_reset}"),
                Some(UR),
                true,
            ),
            NeverAgain(200, CutOff),
            NeverAgain(200, CutOff),
        ),
        (
            end(
                "client abort while waiting for the upstream",
                None,
                false,
                Some(b"downstream_remote_disconnect"),
                Some(DC),
                true,
            ),
            Released,
            NeverAgain(0, ClientLeft),
        ),
        (
            end(
                "upstream reset after the request was sent (Envoy's own 503)",
                Some((503, false)),
                true,
                Some(upstream_reset),
                Some(UC),
                true,
            ),
            Released,
            NeverAgain(0, OutcomeUnknown),
        ),
        (
            end(
                "per-try timeout (Envoy's own 504)",
                Some((504, false)),
                true,
                Some(b"upstream_response_timeout"),
                Some(UT),
                true,
            ),
            Released,
            NeverAgain(0, OutcomeUnknown),
        ),
        (
            end(
                "upstream connect failure: provably never sent",
                Some((503, false)),
                true,
                Some(b"upstream_reset_before_response_started{connection_failure}"),
                Some(UF),
                true,
            ),
            Released,
            Released,
        ),
        (
            end(
                "refused stream: the upstream did not process it",
                Some((503, false)),
                true,
                Some(b"upstream_reset_before_response_started{remote_refused_stream_reset}"),
                Some(UR),
                true,
            ),
            Released,
            Released,
        ),
        (
            end(
                "no healthy upstream host",
                Some((503, false)),
                true,
                Some(b"no_healthy_upstream"),
                Some(UH),
                false,
            ),
            Released,
            Released,
        ),
        (
            end(
                "a later filter answered before forwarding (Envoy's 413)",
                Some((413, false)),
                true,
                Some(b"request_payload_too_large"),
                Some(0),
                false,
            ),
            Released,
            Released,
        ),
        (
            end(
                "the upstream answered, unseen by the filter",
                None,
                false,
                Some(b"via_upstream"),
                Some(0),
                true,
            ),
            NeverAgain(0, CutOff),
            NeverAgain(0, CutOff),
        ),
        (
            end(
                "a host without flags, details or addresses (nothing known)",
                None,
                false,
                None,
                None,
                false,
            ),
            Released,
            Released,
        ),
    ]
}

fn settle_end(end: &End, unknown: UnknownOutcome) -> (Becomes, Vec<&'static str>) {
    let json = match unknown {
        UnknownOutcome::Release => r#"{"idempotency": {"unknown_outcome": "release"}}"#,
        UnknownOutcome::Complete => r#"{"idempotency": {"unknown_outcome": "complete"}}"#,
    };
    let idem = self::idem(json);
    let mut s = claimed(&idem);
    if let Some((status, from_upstream)) = end.response {
        response_headers(&mut s, status, from_upstream);
        response_chunk(&mut s, b"ok");
    }
    let mut facts = Facts {
        details: end.details,
        flags: end.flags,
        upstream_address: end.upstream_address,
        asked: Vec::new(),
    };
    let settlement = s
        .on_stream_end(&idem, end.response_ended, &mut facts)
        .unwrap();
    let becomes = match settlement {
        Settlement::Store {
            ticket: t,
            response,
        } => {
            assert_eq!(t, ticket());
            assert_eq!(response.body, b"ok");
            Becomes::Stored
        }
        Settlement::CompleteUnreplayable {
            ticket: t,
            status,
            reason,
        } => {
            assert_eq!(t, ticket());
            Becomes::NeverAgain(status, reason)
        }
        Settlement::Release { ticket: t } => {
            assert_eq!(t, ticket());
            Becomes::Released
        }
    };
    (becomes, facts.asked)
}

#[test]
fn at_stream_end_a_claim_is_stored_completed_or_released_under_each_unknown_outcome() {
    for (end, release, complete) in ends() {
        let (got, _) = settle_end(&end, UnknownOutcome::Release);
        assert_eq!(got, release, "{} (unknown_outcome: release)", end.name);
        let (got, _) = settle_end(&end, UnknownOutcome::Complete);
        assert_eq!(got, complete, "{} (unknown_outcome: complete)", end.name);
    }
}

#[test]
fn a_complete_response_from_the_upstream_settles_without_reading_any_property() {
    for (end, _, _) in ends() {
        if end.response.is_some_and(|(_, from_upstream)| from_upstream) && end.response_ended {
            for unknown in [UnknownOutcome::Release, UnknownOutcome::Complete] {
                let (_, asked) = settle_end(&end, unknown);
                assert!(asked.is_empty(), "{}: asked {asked:?}", end.name);
            }
        }
    }
    // A cut response reads the flags (was it the client?); no upstream response, all three.
    let named = |name: &str| {
        ends()
            .into_iter()
            .find(|(e, _, _)| e.name == name)
            .unwrap()
            .0
    };
    let cut = named("client abort during the response");
    assert_eq!(settle_end(&cut, UnknownOutcome::Complete).1, ["flags"]);
    let waiting = named("client abort while waiting for the upstream");
    assert_eq!(
        settle_end(&waiting, UnknownOutcome::Complete).1,
        ["code_details", "flags", "upstream_address"]
    );
}

#[test]
fn the_default_never_releases_a_key_whose_request_may_have_run() {
    let default = idem(r#"{"idempotency": {}}"#);
    assert_eq!(default.config.unknown_outcome, UnknownOutcome::Complete);
    for (end, _, under_default) in ends() {
        if under_default == Becomes::Released {
            let never_sent = !end.upstream_address
                || end.flags.is_some_and(crate::outcome::proves_request_unsent)
                || end
                    .details
                    .is_some_and(|d| d.ends_with(b"remote_refused_stream_reset}"))
                || end
                    .response
                    .is_some_and(|(s, up)| up && RETRY_LATER.contains(&s));
            assert!(
                never_sent,
                "{} releases its key under the default",
                end.name
            );
        }
    }
}

#[test]
fn the_store_result_of_a_settlement_is_counted() {
    use crate::idempotency::store::Finish;
    for (finish, counter) in [
        (Finish::Stored, Counter::IdemStored),
        (Finish::StoredNotReplayable, Counter::IdemStored),
        (Finish::Released, Counter::IdemReleased),
        (Finish::Lost, Counter::IdemLost),
        (Finish::Busy, Counter::IdemStoreContention),
    ] {
        assert_eq!(settled_counters(&Ok(report(finish))), [(counter, 1)]);
    }
    assert_eq!(
        settled_counters(&Err(StoreError::NotInitialized)),
        [(Counter::IdemStoreErrors, 1)]
    );
}
