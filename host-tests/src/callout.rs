//! `proxy_http_call`: validation, and the replies Envoy's async client produces for each cluster
//! behaviour (measured on Envoy 1.40: resets and refusals become synthetic 503s, a timeout 504).

use crate::abi::Pairs;

/// How a callout cluster behaves; clusters not registered on the host do not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterBehaviour {
    Respond {
        status: u16,
        headers: Pairs,
        body: Vec<u8>,
        delay_ms: u64,
    },
    /// The connection resets before response headers.
    Reset,
    /// Nothing listens on the cluster's port.
    Refuse,
    /// Never answers (the call's timeout fires).
    Hang,
    /// An etcd v3 JSON gateway (`crate::etcd`): the reply depends on the request, and the
    /// cluster's state is shared by every host and VM that registered the same `Etcd`.
    Etcd(crate::etcd::Etcd),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalloutReply {
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub trailers: Pairs,
}

/// A dispatched call waiting for its reply.
#[derive(Clone, Debug)]
pub struct Callout {
    pub token: u32,
    pub context: u32,
    pub cluster: String,
    pub request_headers: Pairs,
    pub request_body: Vec<u8>,
    pub due_ns: u64,
    pub reply: CalloutReply,
}

pub const RESET_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
pub const REFUSED_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
pub const TIMEOUT_BODY: &str = "upstream request timeout";

fn synthetic(status: u16, body: &str) -> CalloutReply {
    CalloutReply {
        headers: crate::abi::local_reply_headers(status, body),
        body: body.as_bytes().to_vec(),
        trailers: Vec::new(),
    }
}

/// Whether a callout's headers are complete enough for Envoy (`:method`, `:path`, `:authority`).
pub fn headers_valid(headers: &Pairs) -> bool {
    [&b":method"[..], b":path", b":authority"]
        .iter()
        .all(|name| headers.iter().any(|(k, v)| k == name && !v.is_empty()))
}

/// The reply and after how many ms it arrives.
pub fn reply_for(behaviour: &ClusterBehaviour, timeout_ms: u64) -> (CalloutReply, u64) {
    match behaviour {
        ClusterBehaviour::Respond {
            status,
            headers,
            body,
            delay_ms,
        } if *delay_ms <= timeout_ms => {
            let mut all = vec![(b":status".to_vec(), status.to_string().into_bytes())];
            all.extend(headers.iter().cloned());
            all.push((
                b"x-envoy-upstream-service-time".to_vec(),
                delay_ms.to_string().into_bytes(),
            ));
            (
                CalloutReply {
                    headers: all,
                    body: body.clone(),
                    trailers: Vec::new(),
                },
                *delay_ms,
            )
        }
        ClusterBehaviour::Respond { .. } | ClusterBehaviour::Hang => {
            (synthetic(504, TIMEOUT_BODY), timeout_ms)
        }
        ClusterBehaviour::Reset => (synthetic(503, RESET_BODY), 0),
        ClusterBehaviour::Refuse => (synthetic(503, REFUSED_BODY), 0),
        // Answered by `dispatch`, which sees the request; reaching here means a caller skipped it.
        ClusterBehaviour::Etcd(_) => (synthetic(503, REFUSED_BODY), 0),
    }
}

fn header<'a>(headers: &'a Pairs, name: &[u8]) -> &'a [u8] {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or(&[][..], |(_, v)| v.as_slice())
}

/// The reply to a dispatched call and when it is due (ns; `u64::MAX`: never). Request-aware
/// behaviours (etcd) see the method, path and body; an etcd call without a timeout (0, which
/// Envoy takes as none) waits as long as etcd does.
pub fn dispatch(
    behaviour: &ClusterBehaviour,
    headers: &Pairs,
    body: &[u8],
    now_ns: u64,
    timeout_ms: u64,
) -> (CalloutReply, u64) {
    match behaviour {
        ClusterBehaviour::Etcd(etcd) => {
            let method = String::from_utf8_lossy(header(headers, b":method")).into_owned();
            let path = String::from_utf8_lossy(header(headers, b":path")).into_owned();
            let reply = etcd.dispatch(now_ns, &method, &path, body, timeout_ms);
            let due = reply
                .after_ms
                .map_or(u64::MAX, |ms| now_ns.saturating_add(ms * 1_000_000));
            (reply.to_callout(), due)
        }
        other => {
            let (reply, after_ms) = reply_for(other, timeout_ms);
            (reply, now_ns + after_ms * 1_000_000)
        }
    }
}
