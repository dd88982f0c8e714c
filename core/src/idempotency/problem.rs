//! RFC 9457 problem details for every answer the idempotency layer gives instead of the upstream.
//! The `type` URNs are a stable contract: clients branch on them, not on `title` or `detail`.

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    KeyMissing,
    KeyMalformed,
    InFlight,
    PayloadMismatch,
    StoreFull,
    StoreBusy,
    /// The store could not be asked (etcd down, slow or answering garbage; shared data failing).
    StoreUnavailable,
    BodyTooLarge,
    /// The key completed but its response could not be kept (too large, trailers, lost in a race).
    ResponseNotReplayable,
    /// The key's request ran, and the upstream's response was cut off before its end.
    ResponseCutOff,
    /// The key's request reached the upstream and no response came back: applied or not, unknown.
    OutcomeUnknown,
    /// The client left while the key's request was upstream (or during its response).
    ClientLeft,
}

impl Problem {
    pub const ALL: [Problem; 12] = [
        Problem::KeyMissing,
        Problem::KeyMalformed,
        Problem::InFlight,
        Problem::PayloadMismatch,
        Problem::StoreFull,
        Problem::StoreBusy,
        Problem::StoreUnavailable,
        Problem::BodyTooLarge,
        Problem::ResponseNotReplayable,
        Problem::ResponseCutOff,
        Problem::OutcomeUnknown,
        Problem::ClientLeft,
    ];

    pub fn type_uri(self) -> &'static str {
        match self {
            Problem::KeyMissing => "urn:resetguard:problem:idempotency-key-missing",
            Problem::KeyMalformed => "urn:resetguard:problem:idempotency-key-malformed",
            Problem::InFlight => "urn:resetguard:problem:idempotency-key-in-flight",
            Problem::PayloadMismatch => "urn:resetguard:problem:idempotency-key-payload-mismatch",
            Problem::StoreFull => "urn:resetguard:problem:idempotency-store-full",
            Problem::StoreBusy => "urn:resetguard:problem:idempotency-store-busy",
            Problem::StoreUnavailable => "urn:resetguard:problem:idempotency-store-unavailable",
            Problem::BodyTooLarge => "urn:resetguard:problem:idempotency-body-too-large",
            Problem::ResponseNotReplayable => {
                "urn:resetguard:problem:idempotency-response-not-replayable"
            }
            Problem::ResponseCutOff => "urn:resetguard:problem:idempotency-response-cut-off",
            Problem::OutcomeUnknown => "urn:resetguard:problem:idempotency-outcome-unknown",
            Problem::ClientLeft => "urn:resetguard:problem:idempotency-client-left",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            Problem::KeyMissing | Problem::KeyMalformed => 400,
            Problem::InFlight
            | Problem::ResponseNotReplayable
            | Problem::ResponseCutOff
            | Problem::OutcomeUnknown
            | Problem::ClientLeft => 409,
            Problem::PayloadMismatch => 422,
            Problem::BodyTooLarge => 413,
            Problem::StoreFull | Problem::StoreBusy | Problem::StoreUnavailable => 503,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Problem::KeyMissing => "Idempotency-Key is missing",
            Problem::KeyMalformed => "Idempotency-Key is malformed",
            Problem::InFlight => "A request with this Idempotency-Key is still being processed",
            Problem::PayloadMismatch => "Idempotency-Key reused with a different payload",
            Problem::StoreFull => "Idempotency store is full",
            Problem::StoreBusy => "Idempotency store is busy",
            Problem::StoreUnavailable => "Idempotency store is unavailable",
            Problem::BodyTooLarge => "Request body too large for an idempotent request",
            Problem::ResponseNotReplayable => {
                "The response for this Idempotency-Key cannot be replayed"
            }
            Problem::ResponseCutOff => {
                "The response for this Idempotency-Key was cut off and cannot be replayed"
            }
            Problem::OutcomeUnknown => {
                "The outcome of the request with this Idempotency-Key is unknown"
            }
            Problem::ClientLeft => {
                "The client left before the response for this Idempotency-Key was complete"
            }
        }
    }

    /// The `Response.code_details` Envoy records for this local reply (no spaces allowed).
    pub fn details(self) -> &'static str {
        match self {
            Problem::KeyMissing => "resetguard_idempotency_key_missing",
            Problem::KeyMalformed => "resetguard_idempotency_key_malformed",
            Problem::InFlight => "resetguard_idempotency_in_flight",
            Problem::PayloadMismatch => "resetguard_idempotency_payload_mismatch",
            Problem::StoreFull => "resetguard_idempotency_store_full",
            Problem::StoreBusy => "resetguard_idempotency_store_busy",
            Problem::StoreUnavailable => "resetguard_idempotency_store_unavailable",
            Problem::BodyTooLarge => "resetguard_idempotency_body_too_large",
            Problem::ResponseNotReplayable => "resetguard_idempotency_not_replayable",
            Problem::ResponseCutOff => "resetguard_idempotency_response_cut_off",
            Problem::OutcomeUnknown => "resetguard_idempotency_outcome_unknown",
            Problem::ClientLeft => "resetguard_idempotency_client_left",
        }
    }

    /// The `application/problem+json` body (members in key order), with the status the upstream
    /// sent for the key's request as the extension member `upstream_status` when one is known.
    pub fn body(self, detail: &str, upstream_status: Option<u16>) -> Vec<u8> {
        let mut body = serde_json::json!({
            "type": self.type_uri(),
            "title": self.title(),
            "status": self.status(),
            "detail": detail,
        });
        if let (Some(status), Some(members)) = (upstream_status, body.as_object_mut()) {
            members.insert("upstream_status".to_string(), status.into());
        }
        body.to_string().into_bytes()
    }
}

pub const CONTENT_TYPE: &str = "application/problem+json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_rfc9457_with_stable_types() {
        for p in Problem::ALL {
            let v: serde_json::Value =
                serde_json::from_slice(&p.body("why \"quoted\"", None)).unwrap();
            assert_eq!(v["type"], p.type_uri());
            assert!(p
                .type_uri()
                .starts_with("urn:resetguard:problem:idempotency-"));
            assert_eq!(v["status"], p.status());
            assert_eq!(v["title"], p.title());
            assert_eq!(v["detail"], "why \"quoted\"");
            assert!(!p.details().contains(' '));
        }
        assert_eq!(
            String::from_utf8(Problem::KeyMissing.body("a\nb", None)).unwrap(),
            "{\"detail\":\"a\\nb\",\"status\":400,\"title\":\"Idempotency-Key is missing\",\
             \"type\":\"urn:resetguard:problem:idempotency-key-missing\"}"
        );
        assert_eq!(Problem::KeyMissing.status(), 400);
        assert_eq!(Problem::InFlight.status(), 409);
        assert_eq!(Problem::PayloadMismatch.status(), 422);
        let mut types: Vec<_> = Problem::ALL.iter().map(|p| p.type_uri()).collect();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), Problem::ALL.len());
        let v: serde_json::Value =
            serde_json::from_slice(&Problem::ResponseCutOff.body("d", Some(201))).unwrap();
        assert_eq!(v["upstream_status"], 201);
        assert!(v.get("upstream_status").is_some());
        let v: serde_json::Value =
            serde_json::from_slice(&Problem::OutcomeUnknown.body("d", None)).unwrap();
        assert!(v.get("upstream_status").is_none());
    }
}
