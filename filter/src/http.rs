//! The per-stream glue: arms router retries on the request, hands keyed requests to the
//! idempotency layer, and classifies how the stream ended.

use crate::host::{self, MapType};
use crate::keyed_stream::{self, EndFacts, Keyed};
use crate::logger;
use crate::metrics::Counter;
use crate::root::{Plugin, Shared};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use resetguard_core::config::AbortLogLevel;
use resetguard_core::decision::{self, Arming, Decision, KeyDecision};
use resetguard_core::keyed::StreamFacts;
use resetguard_core::outcome::{self, AbortPhase, Outcome, ResponseSeen};
use resetguard_core::retry_policy::RetrySafety;
use std::rc::Rc;

pub struct HttpFilter {
    plugin: Option<Rc<Plugin>>,
    /// The stream's policy: the plugin's until the request headers name the route, then the
    /// route's (`None`: the route disables the filter, every callback passes through).
    shared: Option<Rc<Shared>>,
    /// The filter saw the request's end (end_of_stream or trailers): tells the abort phases apart.
    request_complete: bool,
    response: ResponseSeen,
    /// Only for requests the idempotency layer dedupes; unkeyed requests never allocate it.
    keyed: Option<Box<Keyed>>,
}

impl HttpFilter {
    pub fn new(plugin: Option<Rc<Plugin>>) -> HttpFilter {
        HttpFilter {
            shared: plugin.as_ref().map(|p| p.base.clone()),
            plugin,
            request_complete: false,
            response: ResponseSeen::default(),
            keyed: None,
        }
    }

    /// One read of the request headers; `decision::decide` says what to do, this carries it out.
    fn on_request_headers(&mut self, shared: &Shared, end_of_stream: bool) -> Action {
        // Borrowed from the host's buffer: no copy per header.
        let headers = match host::header_map(MapType::RequestHeaders) {
            Ok(headers) => headers,
            Err(e) => {
                // Fail open: the request goes on unarmed rather than failing.
                shared.metrics.inc(Counter::HostErrors);
                log::debug!("resetguard: request headers unavailable ({e}); passing through");
                return Action::Continue;
            }
        };
        let decision = decision::decide(shared.policy.as_ref(), headers.iter(), end_of_stream);
        for name in decision.stripped() {
            if let Err(e) = host::remove_header(MapType::RequestHeaders, name) {
                shared.metrics.inc(Counter::HostErrors);
                log::debug!("resetguard: cannot strip a client retry header ({e})");
            }
        }
        let action = match (&decision.key, shared.policy.idempotency.as_ref()) {
            (KeyDecision::Refused { judgement, .. }, Some(_)) => {
                keyed_stream::refuse(shared, judgement.clone())
            }
            (KeyDecision::Valid { key }, Some(idem)) => {
                let (keyed, action) =
                    keyed_stream::begin(shared, idem, &decision.head, key, end_of_stream);
                self.keyed = keyed;
                action
            }
            _ => Action::Continue,
        };
        self.arm_retries(shared, &decision);
        action
    }

    fn arm_retries(&self, shared: &Shared, decision: &Decision<'_, '_>) {
        if !decision.stripped().is_empty() {
            shared.metrics.inc(Counter::ClientRetryHeadersStripped);
        }
        let (class, armed) = match decision.safety {
            RetrySafety::Idempotent => (Counter::RequestsIdempotent, Counter::RetryArmedFull),
            // Not idempotent by method, made retry-safe by a validated key.
            RetrySafety::KeyedIdempotent => (Counter::RequestsKeyed, Counter::RetryArmedFull),
            RetrySafety::Unsafe => (
                Counter::RequestsNonIdempotent,
                Counter::RetryArmedUnsentOnly,
            ),
        };
        shared.metrics.inc(class);
        // A trusted client chose its own retry policy, or there is nothing to arm.
        let Arming::Headers(plan) = decision.arming else {
            return;
        };
        for (name, value) in &plan.headers {
            if let Err(e) = host::set_header(MapType::RequestHeaders, name, value.as_bytes()) {
                shared.metrics.inc(Counter::HostErrors);
                log::debug!("resetguard: cannot set {name} ({e}); retries not armed");
                return;
            }
        }
        shared.metrics.inc(armed);
    }

    fn report_outcome(&self, shared: &Shared, facts: &mut EndFacts) {
        let (flags, details) = if self.response.needs_flags() {
            let flags = facts.flags();
            let details = if self.response.needs_details(flags) {
                facts.code_details()
            } else {
                None
            };
            (flags, details)
        } else {
            (None, None)
        };
        let result = outcome::classify(self.response, flags, details.as_deref());
        shared.metrics.inc(match result {
            Outcome::Completed => Counter::OutcomeCompleted,
            Outcome::ClientAbort => Counter::OutcomeClientAbort,
            Outcome::UpstreamReset => Counter::OutcomeUpstreamReset,
            Outcome::Truncated => Counter::OutcomeTruncated,
            Outcome::Incomplete => Counter::OutcomeIncomplete,
        });
        if result == Outcome::Completed {
            return;
        }
        let phase = (result == Outcome::ClientAbort)
            .then(|| AbortPhase::of(self.request_complete, self.response));
        if let Some(phase) = phase {
            shared.metrics.inc(phase.counter());
        }
        let abort = &shared.policy.config.client_abort;
        if abort.filter_state {
            publish_outcome(result, phase);
        }
        let level = match (result, abort.log_level) {
            (Outcome::ClientAbort, AbortLogLevel::Off) => return,
            (Outcome::ClientAbort, AbortLogLevel::Debug) => log::Level::Debug,
            _ => log::Level::Info,
        };
        if log::log_enabled!(level) {
            let reason = match (result, phase) {
                (_, Some(phase)) => phase.describe(),
                (Outcome::UpstreamReset, _) => {
                    "the upstream reset or refused and no retry saved it"
                }
                (Outcome::Truncated, _) => "the response was cut off after it started",
                _ => "the stream ended early for a reason the host does not report",
            };
            let inferred = outcome::inferred_from_lifecycle(flags, details.as_deref());
            let how = if phase.is_some() && inferred {
                " (inferred from the stream's lifecycle: the host reports no response flags)"
            } else {
                ""
            };
            let phase = phase.map_or(String::new(), |p| format!(" [{}]", p.as_str()));
            let line = logger::request_line();
            log::log!(
                level,
                "resetguard: {}{phase} {line}: {reason}{how}",
                result.as_str()
            );
        }
    }
}

/// Filter state for access logs (Envoy: `%FILTER_STATE(wasm.NAME:PLAIN)%`). Hosts without
/// filter state refuse the writes; nothing else depends on them.
fn publish_outcome(result: Outcome, phase: Option<AbortPhase>) {
    let _ = host::set_property(&["resetguard_outcome"], result.as_str().as_bytes());
    if let Some(code) = result.access_log_code() {
        let _ = host::set_property(&["resetguard_code"], code.as_bytes());
    }
    if let Some(phase) = phase {
        let _ = host::set_property(&["resetguard_abort_phase"], phase.as_str().as_bytes());
    }
}

impl Context for HttpFilter {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let (Some(keyed), Some(shared)) = (self.keyed.as_mut(), self.shared.clone()) {
            keyed_stream::on_http_call_response(keyed, &shared, token_id, body_size);
        }
    }
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.request_complete = end_of_stream;
        if let Some(plugin) = &self.plugin {
            self.shared = plugin.policy_for_route();
        }
        match self.shared.clone() {
            Some(shared) => self.on_request_headers(&shared, end_of_stream),
            None => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.request_complete |= end_of_stream;
        let (Some(shared), Some(keyed)) = (self.shared.clone(), self.keyed.as_mut()) else {
            return Action::Continue;
        };
        match &shared.policy.idempotency {
            Some(idem) => {
                keyed_stream::on_request_body(keyed, &shared, idem, body_size, end_of_stream)
            }
            None => Action::Continue,
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.request_complete = true;
        let (Some(shared), Some(keyed)) = (self.shared.clone(), self.keyed.as_mut()) else {
            return Action::Continue;
        };
        match &shared.policy.idempotency {
            Some(idem) => keyed_stream::on_request_trailers(keyed, &shared, idem),
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.response.headers = true;
        self.response.ended |= end_of_stream;
        if let (Some(keyed), Some(shared)) = (self.keyed.as_mut(), self.shared.as_ref()) {
            if keyed_stream::restore_replay_headers(keyed, &shared.metrics) {
                return Action::Continue;
            }
        }
        // A recorded response reads its whole header map anyway: `:status` comes from it.
        let status = match (self.keyed.as_mut(), self.shared.as_ref()) {
            (Some(keyed), Some(shared)) if keyed.machine.records() => {
                keyed_stream::on_response_headers(&mut keyed.machine, &shared.metrics)
            }
            _ => host::header(MapType::ResponseHeaders, ":status")
                .ok()
                .flatten(),
        };
        if let Some(raw) = status {
            self.response.status = outcome::parse_status(&raw);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.response.ended |= end_of_stream;
        if let Some(keyed) = self.keyed.as_mut() {
            keyed_stream::on_response_body(&mut keyed.machine, body_size);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.response.ended = true;
        if let Some(keyed) = self.keyed.as_mut() {
            keyed.machine.on_response_trailers();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(shared) = self.shared.clone() {
            let mut facts = EndFacts::default();
            if let (Some(keyed), Some(idem)) = (self.keyed.as_mut(), &shared.policy.idempotency) {
                let ended = self.response.ended;
                keyed_stream::on_stream_end(keyed, &shared, idem, ended, &mut facts);
            }
            self.report_outcome(&shared, &mut facts);
        }
    }
}
