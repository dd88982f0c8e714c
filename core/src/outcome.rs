//! How a request ended, from what the filter saw of the response plus (only when the response did
//! not end cleanly) Envoy's response flags. A client that went away is a client abort, not an error.

/// Envoy's `response.flags` bits that matter here (StreamInfo::ResponseFlag).
pub mod flags {
    /// UH: no healthy upstream host.
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    /// UT: the upstream request timed out.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const LOCAL_RESET: u64 = 0x8;
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    pub const UPSTREAM_OVERFLOW: u64 = 0x80;
    /// NR: no route matched.
    pub const NO_ROUTE_FOUND: u64 = 0x100;
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 0x8000;
    /// DR: an HTTP/2 or HTTP/3 client reset its stream (RST_STREAM), keeping the connection.
    pub const DOWNSTREAM_REMOTE_RESET: u64 = 0x1000_0000;
    /// UPE: the upstream broke the protocol.
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;

    /// The client went away: its connection closed (DC) or it cancelled its stream (DR).
    pub const CLIENT_LEFT: u64 = DOWNSTREAM_CONNECTION_TERMINATION | DOWNSTREAM_REMOTE_RESET;

    /// Flags meaning "the upstream connection failed or reset". Retry-limit (URX) and overflow
    /// (UO) flags are left out: alone they mark the upstream's own answer (e.g. a retriable 503
    /// that exhausted its retries) or a circuit breaker, not a reset; after a reset Envoy sets a
    /// reset flag too.
    pub const UPSTREAM_RESET_ANY: u64 = LOCAL_RESET
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_CONNECTION_TERMINATION;
}

/// Flags proving the upstream never received the request (connect failure, overflow, no healthy
/// host, no route), unless a flag says an upstream request did start.
pub fn proves_request_unsent(f: u64) -> bool {
    const UNSENT: u64 = flags::UPSTREAM_CONNECTION_FAILURE
        | flags::UPSTREAM_OVERFLOW
        | flags::NO_HEALTHY_UPSTREAM
        | flags::NO_ROUTE_FOUND;
    const MAYBE_SENT: u64 = flags::LOCAL_RESET
        | flags::UPSTREAM_REMOTE_RESET
        | flags::UPSTREAM_CONNECTION_TERMINATION
        | flags::UPSTREAM_REQUEST_TIMEOUT
        | flags::UPSTREAM_PROTOCOL_ERROR;
    f & UNSENT != 0 && f & MAYBE_SENT == 0
}

/// `response.code_details` Envoy sets when the client disconnected.
pub const DOWNSTREAM_DISCONNECT_DETAILS: &[u8] = b"downstream_remote_disconnect";

/// Whether `response.code_details` says the client left: its connection closed, or its HTTP/2 or
/// HTTP/3 stream was reset by the client (upstream resets read `upstream_reset_…` instead).
pub fn client_left_details(details: &[u8]) -> bool {
    details == DOWNSTREAM_DISCONNECT_DETAILS
        || details == b"http2.remote_reset"
        || details == b"http3.remote_reset"
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response reached the client in full.
    Completed,
    /// The client went away before the response completed (a 499-style abort).
    ClientAbort,
    /// The upstream reset, refused or failed the connection and the client got a proxy error.
    UpstreamReset,
    /// The response started but ended early, and not because the client left.
    Truncated,
    /// It did not end cleanly after a response started, and the host cannot say why (no
    /// `response.flags` or `response.code_details`).
    Incomplete,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ClientAbort => "client_abort",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::Truncated => "truncated",
            Outcome::Incomplete => "incomplete",
        }
    }
}

/// What the filter observed of the response without asking the host anything extra.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseSeen {
    pub status: Option<u16>,
    pub headers: bool,
    pub ended: bool,
}

impl ResponseSeen {
    /// Whether classifying needs Envoy's response flags (only for unclean or 5xx endings).
    pub fn needs_flags(&self) -> bool {
        !self.ended || self.status.is_some_and(|s| s >= 500)
    }

    /// Whether it also needs `response.code_details`: when the host gave no flags, or a stream
    /// that ended early carries no flag that explains it.
    pub fn needs_details(&self, flags: Option<u64>) -> bool {
        match flags {
            None => self.needs_flags(),
            Some(f) => !self.ended && f & (flags::CLIENT_LEFT | flags::UPSTREAM_RESET_ANY) == 0,
        }
    }
}

/// Classifies a finished stream. `flags`/`details` are `None` when the host does not provide them.
pub fn classify(seen: ResponseSeen, flags: Option<u64>, details: Option<&[u8]>) -> Outcome {
    let client_left = flags.is_some_and(|f| f & flags::CLIENT_LEFT != 0)
        || details.is_some_and(client_left_details);
    if !seen.ended {
        return if client_left {
            Outcome::ClientAbort
        } else if flags.is_none() && details.is_none() {
            lifecycle_outcome(seen)
        } else if seen.headers {
            Outcome::Truncated
        } else if flags.is_some_and(|f| f & flags::UPSTREAM_RESET_ANY != 0) {
            Outcome::UpstreamReset
        } else {
            Outcome::Incomplete
        };
    }
    match flags {
        Some(f) if seen.status.is_some_and(|s| s >= 500) && f & flags::UPSTREAM_RESET_ANY != 0 => {
            Outcome::UpstreamReset
        }
        _ => Outcome::Completed,
    }
}

/// The fallback for hosts that report neither `response.flags` nor `response.code_details`
/// (the mock host's Kong and APISIX profiles): only the stream's lifecycle is known. A stream
/// logged before any response reached the filter lost its client, since the proxy's own error
/// replies (502, 504, …) pass through the response callbacks too. A response cut after it
/// started could be the client leaving or the upstream dying: not guessed.
fn lifecycle_outcome(seen: ResponseSeen) -> Outcome {
    if seen.headers {
        Outcome::Incomplete
    } else {
        Outcome::ClientAbort
    }
}

/// Whether the classification had only the stream's lifecycle to go on (see `lifecycle_outcome`).
pub fn inferred_from_lifecycle(flags: Option<u64>, details: Option<&[u8]>) -> bool {
    flags.is_none() && details.is_none()
}

/// Where the stream was when its client left, from what the filter saw (no host call).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AbortPhase {
    /// The request had not fully arrived (its body was still coming): the upstream never got all
    /// of it, so it cannot have executed it.
    BeforeRequestComplete,
    /// The request was complete and no response had started: whether the upstream executed it
    /// is unknown.
    AwaitingUpstream,
    /// The response had started (its headers passed the filter) and did not complete.
    DuringResponse,
}

impl AbortPhase {
    pub const ALL: [AbortPhase; 3] = [
        AbortPhase::BeforeRequestComplete,
        AbortPhase::AwaitingUpstream,
        AbortPhase::DuringResponse,
    ];

    pub fn of(request_complete: bool, response: ResponseSeen) -> AbortPhase {
        if response.headers {
            AbortPhase::DuringResponse
        } else if request_complete {
            AbortPhase::AwaitingUpstream
        } else {
            AbortPhase::BeforeRequestComplete
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AbortPhase::BeforeRequestComplete => "before_request_complete",
            AbortPhase::AwaitingUpstream => "awaiting_upstream",
            AbortPhase::DuringResponse => "during_response",
        }
    }

    /// The counter this phase of client abort is counted under.
    pub fn counter(self) -> crate::counter::Counter {
        use crate::counter::Counter;
        match self {
            AbortPhase::BeforeRequestComplete => Counter::ClientAbortBeforeRequestComplete,
            AbortPhase::AwaitingUpstream => Counter::ClientAbortAwaitingUpstream,
            AbortPhase::DuringResponse => Counter::ClientAbortDuringResponse,
        }
    }

    /// The reason given in the log line.
    pub fn describe(self) -> &'static str {
        match self {
            AbortPhase::BeforeRequestComplete => {
                "the client disconnected before its request was complete"
            }
            AbortPhase::AwaitingUpstream => {
                "the client disconnected while waiting for the upstream's response"
            }
            AbortPhase::DuringResponse => "the client disconnected during the response",
        }
    }
}

/// The status code published for access logs (`wasm.resetguard_code`): 499, nginx's "client
/// closed request", for every client abort. Other outcomes publish none: `%RESPONSE_CODE%`
/// already tells what the client got (the router's 503 for a reset, the upstream's status for a
/// truncated response).
pub const CLIENT_ABORT_CODE: &str = "499";

impl Outcome {
    pub fn access_log_code(self) -> Option<&'static str> {
        match self {
            Outcome::ClientAbort => Some(CLIENT_ABORT_CODE),
            _ => None,
        }
    }
}

/// Decodes an integer property: 8 bytes, little-endian (as Envoy serialises them).
pub fn decode_u64(raw: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = raw.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Parses a `:status` header value.
pub fn parse_status(raw: &[u8]) -> Option<u16> {
    if raw.len() != 3 {
        return None;
    }
    std::str::from_utf8(raw)
        .ok()?
        .parse()
        .ok()
        .filter(|s| (100..=599).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK_200: ResponseSeen = ResponseSeen {
        status: Some(200),
        headers: true,
        ended: true,
    };
    const NOTHING: ResponseSeen = ResponseSeen {
        status: None,
        headers: false,
        ended: false,
    };

    #[test]
    fn a_clean_response_needs_no_property_reads() {
        assert!(!OK_200.needs_flags());
        assert_eq!(classify(OK_200, None, None), Outcome::Completed);
        let not_found = ResponseSeen {
            status: Some(404),
            ..OK_200
        };
        assert!(!not_found.needs_flags());
    }

    #[test]
    fn client_disconnect_is_an_abort_whatever_else_is_set() {
        assert!(NOTHING.needs_flags());
        assert_eq!(classify(NOTHING, Some(0x4000), None), Outcome::ClientAbort);
        let mid_body = ResponseSeen {
            status: Some(200),
            headers: true,
            ended: false,
        };
        assert_eq!(
            classify(mid_body, Some(0x4000 | 0x40), None),
            Outcome::ClientAbort
        );
        // Hosts without flags but with code details (Envoy always has both; others may not).
        assert_eq!(
            classify(NOTHING, None, Some(DOWNSTREAM_DISCONNECT_DETAILS)),
            Outcome::ClientAbort
        );
    }

    #[test]
    fn reset_replies_are_upstream_resets() {
        let reply_503 = ResponseSeen {
            status: Some(503),
            headers: true,
            ended: true,
        };
        assert_eq!(
            classify(
                reply_503,
                Some(flags::UPSTREAM_CONNECTION_TERMINATION),
                None
            ),
            Outcome::UpstreamReset
        );
        assert_eq!(
            classify(reply_503, Some(flags::UPSTREAM_CONNECTION_FAILURE), None),
            Outcome::UpstreamReset
        );
        // A 503 the upstream itself sent is a completed exchange, also when it used up retries.
        assert_eq!(classify(reply_503, Some(0), None), Outcome::Completed);
        assert_eq!(
            classify(reply_503, Some(flags::UPSTREAM_RETRY_LIMIT_EXCEEDED), None),
            Outcome::Completed
        );
        // Resets that used up the retries carry both flags.
        let exhausted =
            flags::UPSTREAM_CONNECTION_TERMINATION | flags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        assert_eq!(
            classify(reply_503, Some(exhausted), None),
            Outcome::UpstreamReset
        );
    }

    #[test]
    fn a_response_cut_mid_body_is_truncated_not_success() {
        let mid_body = ResponseSeen {
            status: Some(200),
            headers: true,
            ended: false,
        };
        assert_eq!(
            classify(mid_body, Some(flags::UPSTREAM_REMOTE_RESET), None),
            Outcome::Truncated
        );
        assert_eq!(classify(mid_body, None, None), Outcome::Incomplete);
    }

    #[test]
    fn only_connect_failures_and_the_like_prove_a_request_unsent() {
        assert!(proves_request_unsent(flags::UPSTREAM_CONNECTION_FAILURE));
        assert!(proves_request_unsent(flags::UPSTREAM_OVERFLOW));
        assert!(proves_request_unsent(
            0x2 | flags::UPSTREAM_RETRY_LIMIT_EXCEEDED
        ));
        assert!(!proves_request_unsent(0));
        assert!(!proves_request_unsent(
            flags::UPSTREAM_CONNECTION_TERMINATION
        ));
        assert!(!proves_request_unsent(
            flags::DOWNSTREAM_CONNECTION_TERMINATION
        ));
        // A first attempt reset after sending, a retry that could not connect: maybe applied.
        let mixed = flags::UPSTREAM_CONNECTION_TERMINATION | flags::UPSTREAM_CONNECTION_FAILURE;
        assert!(!proves_request_unsent(mixed));
    }

    #[test]
    fn the_abort_phase_follows_what_the_filter_saw() {
        let mid_body = ResponseSeen {
            status: Some(200),
            headers: true,
            ended: false,
        };
        assert_eq!(
            AbortPhase::of(false, NOTHING),
            AbortPhase::BeforeRequestComplete
        );
        assert_eq!(AbortPhase::of(true, NOTHING), AbortPhase::AwaitingUpstream);
        assert_eq!(AbortPhase::of(true, mid_body), AbortPhase::DuringResponse);
        // A reply sent before the request was in (a 413, a 409) is still a response.
        assert_eq!(AbortPhase::of(false, mid_body), AbortPhase::DuringResponse);
        let names: Vec<&str> = AbortPhase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "before_request_complete",
                "awaiting_upstream",
                "during_response"
            ]
        );
    }

    #[test]
    fn without_flags_or_details_the_lifecycle_decides_what_it_can() {
        assert!(inferred_from_lifecycle(None, None));
        assert!(!inferred_from_lifecycle(Some(0), None));
        assert!(!inferred_from_lifecycle(None, Some(b"via_upstream")));
        // Logged before any response reached the filter: the client left.
        assert_eq!(classify(NOTHING, None, None), Outcome::ClientAbort);
        // A response that started and was cut: the client or the upstream, unknown.
        let mid_body = ResponseSeen {
            status: Some(200),
            headers: true,
            ended: false,
        };
        assert_eq!(classify(mid_body, None, None), Outcome::Incomplete);
        // Hosts that do report something are never second-guessed by the lifecycle.
        assert_eq!(classify(NOTHING, Some(0), None), Outcome::Incomplete);
        assert_eq!(classify(OK_200, None, None), Outcome::Completed);
    }

    #[test]
    fn only_a_client_abort_has_an_access_log_code() {
        assert_eq!(Outcome::ClientAbort.access_log_code(), Some("499"));
        for other in [
            Outcome::Completed,
            Outcome::UpstreamReset,
            Outcome::Truncated,
            Outcome::Incomplete,
        ] {
            assert_eq!(other.access_log_code(), None, "{other:?}");
        }
    }

    #[test]
    fn decoding_is_total() {
        assert_eq!(decode_u64(&0x4000u64.to_le_bytes()), Some(0x4000));
        assert_eq!(decode_u64(b"1234"), None);
        assert_eq!(parse_status(b"503"), Some(503));
        for bad in [&b"50"[..], b"5033", b"abc", b"099", b"\xff\xff\xff"] {
            assert_eq!(parse_status(bad), None);
        }
    }
}
