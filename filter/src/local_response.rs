//! Answers the filter sends itself: RFC 9457 problems and idempotent replays.

use crate::host::{self, HostResult};
use resetguard_core::idempotency::problem::{Problem, CONTENT_TYPE};
use resetguard_core::idempotency::recorded::RecordedResponse;

/// Marks a response served from the idempotency store rather than by the upstream.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
const REPLAY_DETAILS: &str = "resetguard_idempotency_replay";

pub fn send_problem(
    problem: Problem,
    detail: &str,
    retry_after_s: Option<u32>,
    upstream_status: Option<u16>,
) -> HostResult<()> {
    let retry_after = retry_after_s.map(|s| s.to_string());
    let mut headers: Vec<(&str, &[u8])> = vec![("content-type", CONTENT_TYPE.as_bytes())];
    if let Some(value) = &retry_after {
        headers.push(("retry-after", value.as_bytes()));
    }
    host::send_local_response(
        problem.status(),
        problem.details(),
        &problem.body(detail, upstream_status),
        &headers,
    )
}

pub fn send_replay(response: &RecordedResponse) -> HostResult<()> {
    let mut headers: Vec<(&str, &[u8])> = response
        .headers
        .iter()
        .filter_map(|(name, value)| Some((std::str::from_utf8(name).ok()?, value.as_slice())))
        .collect();
    headers.push((REPLAYED_HEADER, b"true"));
    host::send_local_response(
        u32::from(response.status),
        REPLAY_DETAILS,
        &response.body,
        &headers,
    )
}
