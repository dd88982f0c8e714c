//! problem+json rendering: whatever the detail (client-influenced text such as a header name or a
//! parser's reason), the body is one JSON object with the problem's stable type, title and
//! status, and the detail comes back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resetguard_core::config::{IdempotencyMode, WhenFull};
use resetguard_core::idempotency::key::KeyError;
use resetguard_core::idempotency::index::Unreplayable;
use resetguard_core::idempotency::problem::Problem;
use resetguard_core::idempotency::store::Claim;
use resetguard_core::idempotency::verdict::{Rules, Verdict};
use resetguard_fuzz::Input;

fn check(problem: Problem, detail: &str, upstream_status: Option<u16>) {
    let body = problem.body(detail, upstream_status);
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => panic!("{problem:?} rendered invalid JSON ({e}): {body:?}"),
    };
    let members = 4 + usize::from(upstream_status.is_some());
    assert_eq!(v.as_object().map(|o| o.len()), Some(members));
    if let Some(status) = upstream_status {
        assert_eq!(v["upstream_status"], status);
    }
    assert_eq!(v["type"], problem.type_uri());
    assert_eq!(v["title"], problem.title());
    assert_eq!(v["status"], problem.status());
    assert_eq!(v["detail"], detail);
    assert!((400..600).contains(&problem.status()));
    assert!(problem.details().bytes().all(|b| b.is_ascii_graphic()));
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let problem = Problem::ALL[usize::from(input.u8()) % Problem::ALL.len()];
    let header = String::from_utf8_lossy(input.bytes(64)).into_owned();
    let max_length = usize::from(input.u16());
    let upstream_status = input.bool().then(|| input.u16());
    let detail = String::from_utf8_lossy(input.rest()).into_owned();
    check(problem, &detail, upstream_status);

    // The details the verdict rules write, with a configured header name in them.
    let rules = Rules {
        mode: IdempotencyMode::Enforce,
        when_full: WhenFull::Reject,
        on_unavailable: None,
    };
    for error in [KeyError::Missing, KeyError::Malformed("a reason")] {
        match rules.key_error(error, &header, max_length).verdict {
            Verdict::Reject {
                problem,
                detail,
                upstream_status,
                ..
            } => check(problem, &detail, upstream_status),
            other => panic!("a key error in enforce mode answered {other:?}"),
        }
    }
    if let Verdict::Reject {
        problem,
        detail,
        upstream_status,
        ..
    } = rules.body_too_large(max_length).verdict
    {
        check(problem, &detail, upstream_status);
    }
    // Every reason a completed key has no replay, with the status the upstream sent (or none).
    let status = input.u16() % 600;
    for reason in Unreplayable::ALL {
        let claim = Claim::NotReplayable { status, reason };
        match rules.claim(claim).verdict {
            Verdict::Reject {
                problem,
                detail,
                upstream_status,
                ..
            } => {
                assert_eq!(upstream_status, (status != 0).then_some(status));
                check(problem, &detail, upstream_status);
            }
            other => panic!("an unreplayable key in enforce mode answered {other:?}"),
        }
    }
});
