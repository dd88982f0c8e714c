//! problem+json rendering: whatever the detail (client-influenced text such as a header name or a
//! parser's reason), the body is one JSON object with the problem's stable type, title and
//! status, and the detail comes back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resetguard_core::config::{IdempotencyMode, WhenFull};
use resetguard_core::idempotency::key::KeyError;
use resetguard_core::idempotency::problem::Problem;
use resetguard_core::idempotency::verdict::{Rules, Verdict};
use resetguard_fuzz::Input;

fn check(problem: Problem, detail: &str) {
    let body = problem.body(detail);
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => panic!("{problem:?} rendered invalid JSON ({e}): {body:?}"),
    };
    assert_eq!(v.as_object().map(|o| o.len()), Some(4));
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
    let detail = String::from_utf8_lossy(input.rest()).into_owned();
    check(problem, &detail);

    // The details the verdict rules write, with a configured header name in them.
    let rules = Rules {
        mode: IdempotencyMode::Enforce,
        when_full: WhenFull::Reject,
    };
    for error in [KeyError::Missing, KeyError::Malformed("a reason")] {
        match rules.key_error(error, &header, max_length).verdict {
            Verdict::Reject {
                problem, detail, ..
            } => check(problem, &detail),
            other => panic!("a key error in enforce mode answered {other:?}"),
        }
    }
    if let Verdict::Reject {
        problem, detail, ..
    } = rules.body_too_large(max_length).verdict
    {
        check(problem, &detail);
    }
});
