//! etcd's gateway answers (or anything pretending to be them) fed to the claim and settle
//! operations: whatever comes back, in any order, nothing panics, a claim is "ours" only when an
//! answer said the create succeeded or a read-back after an unanswered write found our token,
//! and a settlement never reports a key released that a read showed completed by us.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resetguard_core::etcd::gateway;
use resetguard_core::etcd::ops::{ClaimOp, Progress, Settle, SettleOp};
use resetguard_core::etcd::record::{Record, State};
use resetguard_core::idempotency::index::NO_SLOT;
use resetguard_core::idempotency::store::{Claim, Place, Ticket};
use resetguard_fuzz::Input;

const ID: [u8; 16] = [1; 16];
const FP: [u8; 16] = [2; 16];

/// One answer: a crafted etcd shape (so the fuzzer reaches deep branches) or raw bytes.
fn answer(input: &mut Input<'_>) -> (u16, Vec<u8>) {
    let status = [200, 200, 200, 404, 400, 429, 500, 503, 504][usize::from(input.u8()) % 9];
    let owner = if input.bool() { 77 } else { input.u64() };
    let state = match input.u8() % 3 {
        0 => State::InFlight,
        _ => State::Unreplayable(resetguard_core::idempotency::index::Unreplayable::ALL[usize::from(input.u8()) % 5]),
    };
    let record = Record { fingerprint: if input.bool() { FP } else { [3; 16] }, owner, status: input.u16(), state };
    let value = record.encode(&ID).unwrap_or_default();
    let b64 = |b: &[u8]| base64_encode(b);
    let kv = format!(
        r#"{{"key":"eA==","mod_revision":"{}","value":"{}"}}"#,
        input.u8(),
        b64(&value)
    );
    let body = match input.u8() % 5 {
        0 => format!(r#"{{"header":{{"revision":"{}"}},"succeeded":true}}"#, input.u8()),
        1 => format!(r#"{{"header":{{"revision":"9"}},"responses":[{{"response_range":{{"kvs":[{kv}]}}}}]}}"#),
        2 => format!(r#"{{"header":{{"revision":"9"}},"kvs":[{kv}]}}"#),
        3 => r#"{"header":{"revision":"9"}}"#.to_string(),
        _ => String::from_utf8_lossy(input.bytes(64)).into_owned(),
    };
    (status, body.into_bytes())
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (mut claim, _) = ClaimOp::start("/rg/", ID, FP, 77, "5", 1_000);
    let mut claimed = false;
    for _ in 0..4 {
        let (status, body) = answer(&mut input);
        let succeeded = gateway::parse_txn(status, &body).is_ok_and(|t| t.succeeded);
        let read_ours = gateway::parse_range(status, &body)
            .ok()
            .flatten()
            .and_then(|kv| Record::decode(&kv.value, &ID))
            .is_some_and(|r| r.owner == 77 && r.state == State::InFlight);
        match claim.on_answer(status, &body).1 {
            Progress::Send(_) => continue,
            Progress::Done(Ok(Claim::Claimed(_))) => {
                assert!(succeeded || read_ours, "claimed from {status} {:?}", String::from_utf8_lossy(&body));
                claimed = true;
                break;
            }
            Progress::Done(_) => break,
        }
    }
    let _ = claimed;
    let ticket = Ticket {
        identity: ID,
        fingerprint: FP,
        owner: 77,
        slot: NO_SLOT,
        lock_deadline_ms: 1_000,
        place: Place::Etcd { revision: 9 },
    };
    let settle = if input.bool() {
        Settle::Release
    } else {
        Settle::Complete { status: 201, response: None, why: Some(resetguard_core::idempotency::index::Unreplayable::CutOff) }
    };
    let Some(mut op) = SettleOp::new("/rg/", &ticket, settle, 1_000) else {
        return;
    };
    let _ = op.request(Some("5"));
    for _ in 0..4 {
        let (status, body) = answer(&mut input);
        if let Progress::Done(_) = op.on_answer(status, &body).1 {
            break;
        }
    }
});
