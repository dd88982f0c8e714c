//! The upstream response kept for replay: status, end-to-end headers and body, as one binary
//! value in a slot. The value carries the identity and owner token of the claim that wrote it, so
//! a replay can prove the slot still holds this key's response (a slot is reused once its entry
//! expires, and a late writer could in theory clobber it).
//!
//! Layout: `RGS1` | identity (16) | owner (u64) | status (u16) | header count (u16) |
//! per header: name len (u16), name, value len (u32), value | body len (u32), body.

use super::index::Identity;

const MAGIC: &[u8; 4] = b"RGS1";
/// Headers of a stored response are bounded too: beyond this the response is not replayable.
pub const MAX_STORED_HEADER_BYTES: usize = 16 * 1024;
/// Fixed bytes of a slot value besides header and body bytes.
pub const SLOT_OVERHEAD_BYTES: usize = 4 + 16 + 8 + 2 + 2 + 4;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedResponse {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Headers that describe one hop or one framing, not the response: never stored or replayed.
/// `content-length` and `transfer-encoding` are recomputed by the proxy for the replay, and the
/// proxy's own `x-envoy-*` annotations (e.g. upstream service time) describe the original trip.
pub fn is_stored_header(name: &[u8]) -> bool {
    const DROPPED: [&[u8]; 10] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ];
    let proxy_annotation = name
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"x-envoy-"));
    !name.starts_with(b":")
        && !proxy_annotation
        && !DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name))
}

/// Names a response's `Connection` header marks as hop-by-hop (lower-cased).
pub fn connection_tokens<'a>(headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<Vec<u8>> {
    headers
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

impl RecordedResponse {
    /// Keeps the end-to-end headers of a response header map.
    pub fn from_headers(status: u16, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> RecordedResponse {
        Self::from_borrowed_headers(status, pairs.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// `from_headers` over borrowed pairs (e.g. `host::header_map`): copies only what it keeps.
    pub fn from_borrowed_headers<'a, I>(status: u16, pairs: I) -> RecordedResponse
    where
        I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    {
        let hop = connection_tokens(pairs.clone());
        let headers = pairs
            .filter(|(n, _)| is_stored_header(n) && !hop.iter().any(|h| h.eq_ignore_ascii_case(n)))
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        RecordedResponse {
            status,
            headers,
            body: Vec::new(),
        }
    }

    pub fn header_bytes(&self) -> usize {
        self.headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 6)
            .sum()
    }

    pub fn encode(&self, identity: &Identity, owner: u64) -> Option<Vec<u8>> {
        let mut out =
            Vec::with_capacity(SLOT_OVERHEAD_BYTES + self.header_bytes() + self.body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(identity);
        out.extend_from_slice(&owner.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&u16::try_from(self.headers.len()).ok()?.to_le_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(&u16::try_from(name.len()).ok()?.to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&u32::try_from(self.body.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&self.body);
        Some(out)
    }

    /// Decodes a slot, answering `None` unless it is intact and written by this very claim.
    pub fn decode(raw: &[u8], identity: &Identity, owner: u64) -> Option<RecordedResponse> {
        let mut r = Reader { raw };
        if r.take(4)? != MAGIC || r.take(16)? != identity || r.u64()? != owner {
            return None;
        }
        let status = r.u16()?;
        let count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let name_len = usize::from(r.u16()?);
            let name = r.take(name_len)?.to_vec();
            let value_len = usize::try_from(r.u32()?).ok()?;
            headers.push((name, r.take(value_len)?.to_vec()));
        }
        let body_len = usize::try_from(r.u32()?).ok()?;
        let body = r.take(body_len)?.to_vec();
        r.raw.is_empty().then_some(RecordedResponse {
            status,
            headers,
            body,
        })
    }
}

struct Reader<'a> {
    raw: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.raw.len() {
            return None;
        }
        let (head, rest) = self.raw.split_at(n);
        self.raw = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn keeps_only_end_to_end_headers() {
        let r = RecordedResponse::from_headers(
            201,
            pairs(&[
                (":status", "201"),
                ("content-type", "application/json"),
                ("content-length", "12"),
                ("transfer-encoding", "chunked"),
                ("connection", "keep-alive, X-Hop"),
                ("x-hop", "1"),
                ("x-envoy-upstream-service-time", "3"),
                ("keep-alive", "timeout=5"),
                ("location", "/orders/1"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
            ]),
        );
        assert_eq!(
            r.headers,
            pairs(&[
                ("content-type", "application/json"),
                ("location", "/orders/1"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
            ])
        );
    }

    #[test]
    fn round_trips_only_for_its_own_claim() {
        let r = RecordedResponse {
            status: 201,
            headers: pairs(&[("content-type", "text/plain"), ("x-empty", "")]),
            body: b"created".to_vec(),
        };
        let raw = r.encode(&[3; 16], 42).unwrap();
        assert_eq!(
            RecordedResponse::decode(&raw, &[3; 16], 42),
            Some(r.clone())
        );
        assert_eq!(
            RecordedResponse::decode(&raw, &[4; 16], 42),
            None,
            "other identity"
        );
        assert_eq!(
            RecordedResponse::decode(&raw, &[3; 16], 43),
            None,
            "other owner"
        );
        for cut in 0..raw.len() {
            assert_eq!(RecordedResponse::decode(&raw[..cut], &[3; 16], 42), None);
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(RecordedResponse::decode(&longer, &[3; 16], 42), None);
        assert_eq!(
            RecordedResponse::decode(b"", &[3; 16], 42),
            None,
            "a blanked slot"
        );
    }

    fn valid_slot() -> Vec<u8> {
        RecordedResponse {
            status: 200,
            headers: pairs(&[("a", "b")]),
            body: b"xyz".to_vec(),
        }
        .encode(&[3; 16], 42)
        .unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5_000))]

        /// Shared data is writable by any plugin with the same `vm_id`: whatever bytes a slot or
        /// an index holds, decoding answers `None` or a value, never a panic (which would trap the
        /// VM). Valid slots with a few bytes changed (sizes and counts included), and random ones.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                0..6,
            ),
            from_valid in proptest::prelude::any::<bool>(),
        ) {
            let mut raw = if from_valid { valid_slot() } else { random };
            for (at, byte) in edits {
                if !raw.is_empty() {
                    let i = at.index(raw.len());
                    raw[i] = byte;
                }
            }
            let _ = RecordedResponse::decode(&raw, &[3; 16], 42);
            let _ = crate::idempotency::index::ShardIndex::decode(&raw);
        }
    }
}
