//! The claim and settle operations against gateway answers of every shape etcd (and the proxy in
//! between) gives: the ones that decide, the ones that leave an outcome unknown, the garbage.

use super::*;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{json, Value};

const ID: Identity = [1; 16];
const FP: Fingerprint = [2; 16];
const OWNER: u64 = 77;

fn claim() -> (ClaimOp, Request) {
    ClaimOp::start("/rg/", ID, FP, OWNER, "555", 30_000)
}

fn kv(record: &Record, rev: u64) -> Value {
    json!({"key": "eA==", "mod_revision": rev.to_string(), "create_revision": "1",
           "version": "1", "value": B64.encode(record.encode(&ID).unwrap())})
}

fn won(rev: u64) -> Vec<u8> {
    json!({"header": {"revision": rev.to_string()}, "succeeded": true})
        .to_string()
        .into_bytes()
}

fn lost(existing: Option<Value>) -> Vec<u8> {
    let range = match existing {
        Some(kv) => json!({"kvs": [kv], "count": "1"}),
        None => json!({}),
    };
    json!({"header": {"revision": "50"}, "responses": [{"response_range": range}]})
        .to_string()
        .into_bytes()
}

fn range(existing: Option<Value>) -> Vec<u8> {
    match existing {
        Some(kv) => json!({"header": {"revision": "50"}, "kvs": [kv], "count": "1"}),
        None => json!({"header": {"revision": "50"}}),
    }
    .to_string()
    .into_bytes()
}

fn record(owner: u64, fingerprint: Fingerprint, status: u16, state: State) -> Record {
    Record {
        fingerprint,
        owner,
        status,
        state,
    }
}

const QUORUM_LOST: &[u8] = br#"{"code":14,"error":"etcdserver: request timed out"}"#;
const RESET: &[u8] =
    b"upstream connect error or disconnect/reset before headers. reset reason: connection termination";

#[test]
fn the_claim_is_a_create_if_absent_on_the_in_flight_lease_under_a_hashed_key() {
    let (_, request) = claim();
    let v: Value = serde_json::from_str(&request.body).unwrap();
    let key = String::from_utf8(
        B64.decode(v["compare"][0]["key"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(key, key_of("/rg/", &ID));
    assert!(key.starts_with("/rg/k/") && !key.contains('='));
    assert_eq!(v["success"][0]["request_put"]["lease"], "555");
    let value = B64
        .decode(v["success"][0]["request_put"]["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        Record::decode(&value, &ID),
        Some(record(OWNER, FP, 0, State::InFlight))
    );
}

#[test]
fn a_won_claim_holds_the_revision_it_was_written_at() {
    let (mut op, _) = claim();
    let (call, progress) = op.on_answer(200, &won(42));
    assert_eq!(call, Call::Ok);
    let Progress::Done(Ok(Claim::Claimed(t))) = progress else {
        panic!("{progress:?}");
    };
    assert_eq!(t.place, Place::Etcd { revision: 42 });
    assert_eq!((t.identity, t.fingerprint, t.owner), (ID, FP, OWNER));
}

#[test]
fn an_existing_key_answers_from_its_record() {
    let response = RecordedResponse {
        status: 201,
        headers: vec![],
        body: b"made".to_vec(),
    };
    let cases = [
        (record(9, FP, 0, State::InFlight), Ok(Claim::InFlight)),
        (
            record(9, [3; 16], 0, State::InFlight),
            Ok(Claim::PayloadMismatch),
        ),
        (
            record(9, FP, 201, State::Replayable(response.clone())),
            Ok(Claim::Replay(response)),
        ),
        (
            record(9, FP, 0, State::Unreplayable(Unreplayable::OutcomeUnknown)),
            Ok(Claim::NotReplayable {
                status: 0,
                reason: Unreplayable::OutcomeUnknown,
            }),
        ),
    ];
    for (existing, expected) in cases {
        let (mut op, _) = claim();
        let (call, progress) = op.on_answer(200, &lost(Some(kv(&existing, 40))));
        assert_eq!(call, Call::Conflict);
        assert_eq!(progress, Progress::Done(expected), "{existing:?}");
    }
    // A failed create never reads the record as ours, even with our owner token (64 random bits
    // that happen to match, or a mock host seeded alike): it was there before we wrote.
    let (mut op, _) = claim();
    let same_token = kv(&record(OWNER, FP, 0, State::InFlight), 40);
    assert_eq!(
        op.on_answer(200, &lost(Some(same_token))).1,
        Progress::Done(Ok(Claim::InFlight))
    );
    // A value under our prefix this filter did not write: left alone, the store cannot answer.
    let (mut op, _) = claim();
    let garbage = json!({"key": "eA==", "mod_revision": "3", "value": B64.encode("junk")});
    assert_eq!(
        op.on_answer(200, &lost(Some(garbage))).1,
        Progress::Done(Err(ClaimFailure::Unavailable(Failure::BadAnswer)))
    );
}

#[test]
fn an_unknown_outcome_is_read_back_and_our_owner_token_means_we_hold_it() {
    for failure in [
        (503, QUORUM_LOST),
        (503, RESET),
        (504, b"upstream request timeout" as &[u8]),
        (200, b"{" as &[u8]),
    ] {
        // The write committed after all: our token is there.
        let (mut op, _) = claim();
        let (call, progress) = op.on_answer(failure.0, failure.1);
        assert!(matches!(call, Call::Failed(_)), "{call:?}");
        let Progress::Send(read) = progress else {
            panic!("{progress:?}")
        };
        assert_eq!(read.path, gateway::RANGE);
        let ours = kv(&record(OWNER, FP, 0, State::InFlight), 61);
        let (_, progress) = op.on_answer(200, &range(Some(ours)));
        let Progress::Done(Ok(Claim::Claimed(t))) = progress else {
            panic!("{progress:?}")
        };
        assert_eq!(t.place, Place::Etcd { revision: 61 });
        // It did not (or not yet): the store is unavailable for this request.
        let (mut op, _) = claim();
        op.on_answer(failure.0, failure.1);
        assert!(matches!(
            op.on_answer(200, &range(None)).1,
            Progress::Done(Err(ClaimFailure::Unavailable(_)))
        ));
        // The read fails too.
        let (mut op, _) = claim();
        op.on_answer(failure.0, failure.1);
        assert!(matches!(
            op.on_answer(503, QUORUM_LOST).1,
            Progress::Done(Err(ClaimFailure::Unavailable(Failure::Unavailable)))
        ));
        // Someone else won meanwhile: answered from their record.
        let (mut op, _) = claim();
        op.on_answer(failure.0, failure.1);
        let theirs = kv(&record(8, FP, 0, State::InFlight), 62);
        assert_eq!(
            op.on_answer(200, &range(Some(theirs))).1,
            Progress::Done(Ok(Claim::InFlight))
        );
    }
}

#[test]
fn definite_failures_are_not_read_back() {
    let (mut op, _) = claim();
    assert_eq!(
        op.on_answer(
            404,
            br#"{"code":5,"error":"etcdserver: requested lease not found"}"#
        )
        .1,
        Progress::Done(Err(ClaimFailure::LeaseGone))
    );
    let (mut op, _) = claim();
    assert_eq!(
        op.on_answer(
            400,
            br#"{"code":3,"error":"etcdserver: request is too large"}"#
        )
        .1,
        Progress::Done(Err(ClaimFailure::Unavailable(Failure::TooLarge)))
    );
}

fn ticket(revision: u64) -> Ticket {
    Ticket {
        identity: ID,
        fingerprint: FP,
        owner: OWNER,
        slot: NO_SLOT,
        lock_deadline_ms: 30_000,
        place: Place::Etcd { revision },
    }
}

fn completing(response: Option<RecordedResponse>) -> SettleOp {
    let why = response.is_none().then_some(Unreplayable::CutOff);
    SettleOp::new(
        "/rg/",
        &ticket(42),
        Settle::Complete {
            status: 201,
            response,
            why,
        },
        30_000,
    )
    .unwrap()
}

fn done(finish: Finish) -> Progress<Result<Finish, SettleWait>> {
    Progress::Done(Ok(finish))
}

#[test]
fn a_completion_replaces_the_claim_at_its_revision_on_the_retention_lease() {
    let response = RecordedResponse {
        status: 201,
        headers: vec![],
        body: b"made".to_vec(),
    };
    let mut op = completing(Some(response.clone()));
    assert_eq!(op.request(None), Err(SettleWait::Lease));
    let request = op.request(Some("999")).unwrap();
    let v: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(v["compare"][0]["mod_revision"], "42");
    assert_eq!(v["success"][0]["request_put"]["lease"], "999");
    let value = B64
        .decode(v["success"][0]["request_put"]["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        Record::decode(&value, &ID),
        Some(record(OWNER, FP, 201, State::Replayable(response)))
    );
    assert_eq!(
        op.on_answer(200, &won(43)),
        (Call::Ok, done(Finish::Stored))
    );
    let mut op = completing(None);
    op.request(Some("999")).unwrap();
    assert_eq!(
        op.on_answer(200, &won(43)).1,
        done(Finish::StoredNotReplayable)
    );
    // A release deletes at the revision, and needs no lease.
    let mut op = SettleOp::new("/rg/", &ticket(42), Settle::Release, 30_000).unwrap();
    let v: Value = serde_json::from_str(&op.request(None).unwrap().body).unwrap();
    assert!(v["success"][0]["request_delete_range"].is_object());
    assert_eq!(op.on_answer(200, &won(43)).1, done(Finish::Released));
    // A ticket of the local store is not etcd's to settle.
    let local = Ticket {
        place: Place::Local,
        ..ticket(0)
    };
    assert!(SettleOp::new("/rg/", &local, Settle::Release, 0).is_none());
}

#[test]
fn an_unknown_settlement_is_read_back_never_assumed() {
    let mine_in_flight = kv(&record(OWNER, FP, 0, State::InFlight), 42);
    let mine_done = kv(
        &record(OWNER, FP, 201, State::Unreplayable(Unreplayable::CutOff)),
        43,
    );
    let theirs = kv(&record(5, FP, 0, State::InFlight), 44);
    type Case = (Option<Value>, Progress<Result<Finish, SettleWait>>);
    let cases: [Case; 4] = [
        (Some(mine_done), done(Finish::StoredNotReplayable)),
        (Some(mine_in_flight), Progress::Done(Err(SettleWait::Later))),
        (Some(theirs), done(Finish::Lost)),
        (None, done(Finish::Lost)),
    ];
    for (found, expected) in cases {
        let mut op = completing(None);
        op.request(Some("9")).unwrap();
        let (_, progress) = op.on_answer(503, QUORUM_LOST);
        assert!(matches!(
            progress,
            Progress::Send(Request {
                path: gateway::RANGE,
                ..
            })
        ));
        assert_eq!(
            op.on_answer(200, &range(found.clone())).1,
            expected,
            "{found:?}"
        );
    }
    // A release whose key is gone is released (by it, or by the lease: either way free).
    let mut op = SettleOp::new("/rg/", &ticket(42), Settle::Release, 30_000).unwrap();
    op.request(None).unwrap();
    op.on_answer(504, b"upstream request timeout");
    assert_eq!(op.on_answer(200, &range(None)).1, done(Finish::Released));
    // A failed compare reads like the read-back.
    let mut op = completing(None);
    op.request(Some("9")).unwrap();
    let (call, progress) = op.on_answer(200, &lost(None));
    assert_eq!((call, progress), (Call::Conflict, done(Finish::Lost)));
}

#[test]
fn a_response_etcd_will_not_take_completes_the_key_without_a_replay() {
    let big = RecordedResponse {
        status: 201,
        headers: vec![],
        body: vec![b'x'; 100],
    };
    let mut op = completing(Some(big));
    op.request(Some("9")).unwrap();
    let (_, progress) = op.on_answer(
        400,
        br#"{"code":3,"error":"etcdserver: request is too large"}"#,
    );
    let Progress::Send(retry) = progress else {
        panic!("{progress:?}")
    };
    let v: Value = serde_json::from_str(&retry.body).unwrap();
    let value = B64
        .decode(v["success"][0]["request_put"]["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        Record::decode(&value, &ID).unwrap().state,
        State::Unreplayable(Unreplayable::TooLarge)
    );
    assert_eq!(
        op.on_answer(200, &won(50)).1,
        done(Finish::StoredNotReplayable)
    );
    // A lease etcd lost: wait for another.
    let mut op = completing(None);
    op.request(Some("9")).unwrap();
    assert_eq!(
        op.on_answer(
            404,
            br#"{"code":5,"error":"etcdserver: requested lease not found"}"#
        )
        .1,
        Progress::Done(Err(SettleWait::Lease))
    );
}

proptest::proptest! {
    /// Whatever comes back, in any order, the operations answer without panicking, and a claim
    /// never says "claimed" unless an answer said the write succeeded or a read showed our token.
    #[test]
    fn arbitrary_answers_never_panic_or_invent_a_claim(
        answers in proptest::collection::vec((100u16..600, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)), 1..5),
    ) {
        let (mut op, _) = claim();
        for (status, body) in &answers {
            match op.on_answer(*status, body).1 {
                Progress::Send(_) => continue,
                Progress::Done(Ok(Claim::Claimed(_))) => proptest::prop_assert!(false, "claimed from garbage"),
                Progress::Done(_) => break,
            }
        }
        let mut settle = completing(None);
        let _ = settle.request(Some("1"));
        for (status, body) in &answers {
            if let Progress::Done(_) = settle.on_answer(*status, body).1 {
                break;
            }
        }
    }
}
